//! Plans: what a create job would find on this node and what it would send, without changing
//! anything in PVE (`control` answers the requests). A plan runs the validating step's checks
//! ([`super::checks`]) and a few only a plan needs (the vmid it would
//! take, free memory, the credential's privileges), all of them reads; it reserves no vmid and
//! makes no key.

use std::collections::BTreeMap;

use pvefleet_schemas::{Job, PlanCheck, PlanReply, PlannedCall, V1, Vmid};
use serde_json::Value;

use crate::config::Config;
use crate::jobs::StepError;
use crate::jobs::checks::{self, Check};
use crate::proxmox::PveClient;

/// A plan that could not be made, and why.
pub fn refused(node: &pvefleet_schemas::NodeName, why: String) -> PlanReply {
    PlanReply {
        v: V1,
        node: node.clone(),
        ok: false,
        checks: vec![PlanCheck { check: "request".into(), ok: false, detail: why }],
        vmid: None,
        calls: Vec::new(),
    }
}

fn said(check: &str, outcome: Check) -> PlanCheck {
    match outcome {
        Ok(detail) => PlanCheck { check: check.into(), ok: true, detail },
        Err(StepError::Failed { message, .. }) => PlanCheck { check: check.into(), ok: false, detail: message },
        Err(StepError::Bus(e)) => PlanCheck { check: check.into(), ok: false, detail: e.to_string() },
    }
}

/// Every check of `job` against this node, and the calls its create would make. The node's
/// facts may come from what the agent read lately; a plan that fails on them is made again on
/// fresh ones, so a stale fact never refuses.
pub async fn plan(pve: &PveClient, config: &Config, job: &Job, grant: &pvefleet_schemas::trust::Grant) -> PlanReply {
    let facts = pve.with_facts();
    let reply = plan_once(&facts, config, job, grant).await;
    if reply.ok {
        return reply;
    }
    facts.forget_facts();
    plan_once(&facts, config, job, grant).await
}

async fn plan_once(pve: &PveClient, config: &Config, job: &Job, grant: &pvefleet_schemas::trust::Grant) -> PlanReply {
    let spec = &job.container;
    let mut out = Vec::new();
    if job.node != config.node {
        return refused(&config.node, format!("the plan is for node {}, this agent runs {}", job.node, config.node));
    }
    out.push(said(
        "spec",
        job.validate()
            .map(|()| "valid".into())
            .map_err(|e| StepError::failed(pvefleet_schemas::ErrorKind::Validation, e.to_string())),
    ));
    out.push(PlanCheck {
        check: "policy".into(),
        ok: grant.allows_create(job).is_ok(),
        detail: match grant.allows_create(job) {
            Ok(()) => format!("{} may ask for this", grant.name),
            Err(refusal) => refusal.to_string(),
        },
    });
    out.push(said("files", checks::files(job, &config.files_dir)));
    out.push(said("rights", checks::rights(spec, pve.is_root_login())));
    out.push(said("storage", checks::storage(pve, job).await));
    let has_key = config.ssh.clone_key.is_some();
    let source = checks::source(pve, job, has_key, None, &config.allow, grant.clone_from).await;
    let clone_source = source.as_ref().ok().and_then(|(_, s)| *s);
    out.push(said("template", source.map(|(detail, _)| detail)));
    out.push(said("fetch", checks::fetch_target(pve, job, &config.allow).await));
    out.push(said("network", checks::network(pve, job).await));
    let (vmid, check) = vmid(pve, spec.vmid).await;
    out.push(said("vmid", check));
    out.push(said("volumes", checks::volumes(job, vmid, &config.allow)));
    out.push(said("memory", memory(pve, job, config.overcommit_memory).await));
    out.push(said("permissions", permissions(pve, job, vmid, clone_source).await));
    let calls = match vmid {
        Some(vmid) => calls(pve, job, vmid, clone_source).await,
        None => Vec::new(),
    };
    PlanReply { v: V1, node: config.node.clone(), ok: out.iter().all(|c| c.ok), checks: out, vmid, calls }
}

/// The vmid the job would take: the spec's, if it is free, or the next free one now.
async fn vmid(pve: &PveClient, fixed: Option<Vmid>) -> (Option<Vmid>, Check) {
    match fixed {
        Some(vmid) => match pve.vmid_is_free(vmid).await {
            Ok(true) => (Some(vmid), Ok(format!("{vmid} is free"))),
            Ok(false) => (
                Some(vmid),
                Err(StepError::failed(
                    pvefleet_schemas::ErrorKind::Conflict,
                    format!("container.vmid: {vmid} is taken in the cluster"),
                )),
            ),
            Err(e) => (Some(vmid), Err(e.into())),
        },
        None => match pve.next_vmid().await {
            Ok(vmid) => (Some(vmid), Ok(format!("would take {vmid}, the next free one now"))),
            Err(e) => (None, Err(e.into())),
        },
    }
}

/// The node has the memory the spec asks for free now. PVE lets container memory overcommit
/// (a container's memory is a limit, not a reservation): more than is free is a warning,
/// unless this agent's `overcommit_memory = false` says to refuse it.
async fn memory(pve: &PveClient, job: &Job, overcommit: bool) -> Check {
    let status = pve.node_status().await?;
    let need = u64::from(job.container.memory) << 20;
    let free_mb = status.memory_free >> 20;
    let asked = job.container.memory;
    if status.memory_free < need {
        if overcommit {
            return Ok(format!(
                "warning: {asked} MB asked, more than the {free_mb} MB {} has free now; PVE lets container memory \
                 overcommit (`overcommit_memory = false` on this agent refuses it)",
                job.node
            ));
        }
        return Err(StepError::failed(
            pvefleet_schemas::ErrorKind::Validation,
            format!(
                "container.memory: {asked} MB asked, {} has {free_mb} MB free (this agent does not overcommit)",
                job.node
            ),
        ));
    }
    Ok(format!("{asked} MB of {free_mb} MB free"))
}

/// The privileges the create needs, against what the credential holds (`GET /access/permissions`).
async fn permissions(pve: &PveClient, job: &Job, vmid: Option<Vmid>, clone_source: Option<Vmid>) -> Check {
    if pve.is_root_login() {
        return Ok("root@pam holds every privilege".into());
    }
    let held = pve.permissions().await?;
    let spec = &job.container;
    let mut needed: Vec<(String, &str)> = Vec::new();
    let guest = match (&spec.pool, vmid) {
        (Some(pool), _) => format!("/pool/{pool}"),
        (None, Some(vmid)) => format!("/vms/{vmid}"),
        (None, None) => "/vms".into(),
    };
    needed.push((guest.clone(), "VM.Allocate"));
    if spec.clone.is_none() {
        needed.push((format!("/storage/{}", spec.effective_rootfs().storage), "Datastore.AllocateSpace"));
    }
    for mp in &spec.mounts {
        if let pvefleet_schemas::lxc::MountPoint::Volume { storage, .. } = mp {
            needed.push((format!("/storage/{storage}"), "Datastore.AllocateSpace"));
        }
    }
    if let Some(source) = &spec.template {
        needed.push((format!("/storage/{}", source.storage()), "Datastore.AllocateTemplate"));
    }
    if let Some(from) = clone_source {
        needed.push((format!("/vms/{from}"), "VM.Clone"));
    }
    for nic in spec.effective_nics() {
        needed.push((format!("/sdn/zones/localnetwork/{}", nic.bridge), "SDN.Use"));
    }
    needed.dedup();
    let missing: Vec<String> = needed
        .iter()
        .filter(|(path, privilege)| !holds(&held, path, privilege))
        .map(|(p, v)| format!("{v} on {p}"))
        .collect();
    if !missing.is_empty() {
        return Err(StepError::failed(
            pvefleet_schemas::ErrorKind::Validation,
            format!("the agent's credential lacks {}", missing.join(", ")),
        ));
    }
    let mut said = format!("{} privileges held", needed.len());
    if let Some(more) = more_than_needed(&held) {
        said.push_str(&format!("; but it holds more than it needs: {more}"));
    }
    Ok(said)
}

/// What pvefleet's jobs use, all of it (deploy/README.md's `PVEFleetAgent` role and `VM.Clone`).
const USED: [&str; 16] = [
    "VM.Allocate",
    "VM.Audit",
    "VM.Clone",
    "VM.Config.Disk",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.PowerMgmt",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "SDN.Use",
    "SDN.Audit",
    "Sys.Audit",
    "Pool.Audit",
];

/// The privileges the credential holds that no job uses, and where: an agent's token should be
/// able to do what its jobs do and no more (one stolen token must not stop or delete every
/// guest in the cluster, or change who may do what).
fn more_than_needed(held: &BTreeMap<String, Vec<String>>) -> Option<String> {
    let mut extra: Vec<String> = held
        .iter()
        .flat_map(|(path, privs)| {
            privs.iter().filter(|p| !USED.contains(&p.as_str())).map(move |p| format!("{p} on {path}"))
        })
        .collect();
    extra.sort();
    extra.dedup();
    if extra.is_empty() {
        return None;
    }
    let shown = extra.len().min(8);
    let rest = if extra.len() > shown { format!(" and {} more", extra.len() - shown) } else { String::new() };
    Some(format!(
        "{}{rest} (deploy/README.md: a role of its own on a `pvefleet` pool, one token per node)",
        extra[..shown].join(", ")
    ))
}

/// Whether `privilege` is held on `path` or on a path above it.
fn holds(held: &BTreeMap<String, Vec<String>>, path: &str, privilege: &str) -> bool {
    let mut at = path.to_owned();
    loop {
        if held.get(&at).is_some_and(|p| p.iter().any(|p| p == privilege)) {
            return true;
        }
        if at == "/" {
            return false;
        }
        at = match at.rfind('/') {
            Some(0) | None => "/".into(),
            Some(i) => at[..i].to_owned(),
        };
    }
}

/// The PVE calls the create would make, with their parameters as they would be sent.
async fn calls(pve: &PveClient, job: &Job, vmid: Vmid, clone_source: Option<Vmid>) -> Vec<PlannedCall> {
    let node = &job.node;
    let marker = job.job_id.marker_tag();
    let spec = &job.container;
    let mut calls = Vec::new();
    let call = |call: String, parameters: Vec<(String, String)>| PlannedCall { call, parameters };
    let own = |v: &[(&str, String)]| v.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect::<Vec<_>>();
    if let Some(source) = &spec.template
        && !pve.template_exists(&source.volid()).await.unwrap_or(false)
    {
        let fetch = crate::proxmox::Fetch::of(source);
        calls.push(call(format!("POST /nodes/{node}{}", fetch.path), own(&fetch.params)));
    }
    // The job's own key is made at validating; its public half joins the spec's keys.
    let job_key = (!job.deploy.is_empty() && spec.clone.is_none()).then(|| "<the job's own ed25519 key>".to_owned());
    let password = spec.root_password.as_ref().map(|_| "********".to_owned());
    let create = crate::jobs::create::params::create_params(job, vmid, &marker, job_key, password);
    match clone_source {
        Some(from) => {
            calls.push(call(
                format!("POST /nodes/{node}/lxc/{from}/clone"),
                own(&crate::jobs::create::params::clone_params(job, vmid, &marker)),
            ));
            let source_cfg = pve.container_config(from).await.ok().flatten().unwrap_or(Value::Null);
            calls.push(call(
                format!("PUT /nodes/{node}/lxc/{vmid}/config"),
                crate::jobs::create::params::clone_config(create, job, &source_cfg, &source_cfg),
            ));
        }
        None => calls.push(call(format!("POST /nodes/{node}/lxc"), create)),
    }
    calls.push(call(format!("POST /nodes/{node}/lxc/{vmid}/status/start"), Vec::new()));
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_privilege_is_held_on_its_path_or_above() {
        let held: BTreeMap<String, Vec<String>> = [
            ("/vms".to_owned(), vec!["VM.Allocate".to_owned()]),
            ("/storage/local-lvm".to_owned(), vec!["Datastore.AllocateSpace".to_owned()]),
        ]
        .into();
        assert!(holds(&held, "/vms/100", "VM.Allocate"));
        assert!(holds(&held, "/storage/local-lvm", "Datastore.AllocateSpace"));
        assert!(!holds(&held, "/storage/fast", "Datastore.AllocateSpace"));
        assert!(!holds(&held, "/vms/100", "VM.Clone"));
    }
}
