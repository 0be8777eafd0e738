//! The move job: a container pvefleet made migrated to another node, run by the agent of the
//! node it is on (restart mode when it runs: LXC has no live migration). The migration is sent
//! once ([`Core::once`]); whatever happens to it, the container's marker in
//! `/cluster/resources` says where it is: on the target, the move is done; on this node, not
//! yet. An HA-managed container's `hamigrate` task only hands the request to the HA manager
//! and ends early, so the job waits until the container is on the target.
//!
//! | step    | does                                                                   | undo |
//! |---------|------------------------------------------------------------------------|------|
//! | finding | the container here, with its marker; PVE allows the target (`GET …/migrate`) | none |
//! | moving  | `POST …/migrate` once (`restart=1` when it runs, `target-storage`), then waits until it is on the target | none |

use pvefleet_schemas::{ErrorInfo, ErrorKind, JobResult, LogStream, MoveJob, Step, Vmid};
use tokio_util::sync::CancellationToken;

use super::Planned;
use crate::jobs::once::Once;
use crate::jobs::{Claimed, Core, Env, JobEnd, Saga, StepError, StepResult, StepRow, always};
use crate::proxmox::PveClient;
use crate::retry::{self, Wait};

const STEPS: [StepRow<MoveJob>; 2] = [
    StepRow { step: Step::Finding, percent: 5, what: "finding the container", runs: always },
    StepRow { step: Step::Moving, percent: 20, what: "moving it to the target node", runs: always },
];

pub async fn run(job: &MoveJob, claimed: Claimed, env: Env<'_>, cancel: &CancellationToken) -> JobEnd {
    let marker = super::marker_of(&job.target);
    let core = Core::new(job.job_id, &job.node, claimed, env, marker, job.options.task_timeout.0);
    let mut saga = MoveRun { core, job, already: false };
    crate::jobs::run_in_span(&mut saga, env.stop, cancel, "move").await
}

struct MoveRun<'a> {
    core: Core,
    job: &'a MoveJob,
    already: bool,
}

impl MoveRun<'_> {
    /// The node the container (by its marker, or by its vmid when the job names no create
    /// job) is on now, if it is anywhere.
    async fn whereabouts(&mut self, vmid: Vmid) -> Result<Option<String>, StepError> {
        if self.core.marker.is_empty() {
            return Ok(self.core.pve.guest_node(vmid).await?);
        }
        let marker = self.core.marker.clone();
        Ok(self.core.pve.guests_tagged(&marker).await?.into_iter().find(|(_, v)| *v == vmid).map(|(n, _)| n))
    }

    async fn find(&mut self) -> StepResult {
        let vmid = self.job.target.vmid;
        // A redelivery whose checkpoint was lost, after the move: done.
        if self.core.resumed && self.whereabouts(vmid).await?.as_deref() == Some(self.job.to.as_str()) {
            self.core.cp.vmid = Some(vmid);
            self.already = true;
            return Ok(());
        }
        super::find(&mut self.core, &self.job.target).await?;
        let check = self.core.pve.migrate_check(vmid, self.job.to.as_str()).await?;
        self.core.cp.was_running = Some(check.running);
        if !check.allowed_nodes.iter().any(|n| *n == self.job.to.as_str()) {
            let mut why = format!("to: PVE does not allow moving container {vmid} to {}", self.job.to);
            if !check.not_allowed.is_empty() {
                why.push_str(&format!(" ({})", check.not_allowed.join("; ")));
            }
            why.push_str(&format!("; the nodes it allows: {}", check.allowed_nodes.join(", ")));
            return Err(StepError::failed(ErrorKind::Validation, why));
        }
        Ok(())
    }

    async fn migrate(&mut self) -> StepResult {
        if self.already {
            return Ok(());
        }
        let vmid = self.core.vmid();
        let to = self.job.to.as_str();
        let sent = self.core.pending_task("vzmigrate").is_some()
            || self.core.pending_task("hamigrate").is_some()
            || self.core.asked("vzmigrate");
        if !sent {
            if self.whereabouts(vmid).await?.as_deref() == Some(to) {
                self.already = true;
                return Ok(());
            }
            super::ours(&mut self.core, vmid).await?;
        }
        let running = self.core.cp.was_running == Some(true);
        let restart = running.then_some(self.job.options.shutdown_timeout.0);
        let storage = self.job.target_storage.as_deref();
        let upid = self.core.once(vmid, Once::Migrate { to, restart, storage }).await?;
        if upid.kind() == "hamigrate" {
            self.core
                .events
                .log(LogStream::Task, format!("HA took the request; waiting for container {vmid} to arrive on {to}"))
                .await?;
        }
        self.arrived(vmid).await
    }

    /// Waits (within the task timeout) until the container is on the target.
    async fn arrived(&mut self, vmid: Vmid) -> StepResult {
        let to = self.job.to.as_str();
        let mut wait = Wait::new(retry::ARRIVAL, self.core.task_timeout);
        loop {
            let at = self.whereabouts(vmid).await?;
            if at.as_deref() == Some(to) {
                return Ok(());
            }
            if !wait.pause().await {
                return Err(StepError::failed(
                    ErrorKind::Timeout,
                    format!(
                        "container {vmid} is on {} after {:?}, not on {to}",
                        at.as_deref().unwrap_or("no node"),
                        wait.within
                    ),
                ));
            }
        }
    }
}

impl Saga for MoveRun<'_> {
    crate::jobs::saga_parts!(MoveJob);

    async fn step(&mut self, step: Step) -> StepResult {
        match step {
            Step::Finding => self.find().await,
            Step::Moving => self.migrate().await,
            other => unreachable!("{other} is not a step of a move job"),
        }
    }

    /// Its result names the node the container is on now.
    fn result(&mut self, error: Option<ErrorInfo>, _rolled_back: bool) -> JobResult {
        let moved_to = error.is_none().then(|| self.job.to.clone());
        JobResult { moved_to, ..super::result(self.job.job_id, &self.job.node, &self.core, error) }
    }

    fn completed(&mut self) -> String {
        let (vmid, from, to) = (self.core.vmid(), &self.job.node, &self.job.to);
        if self.already {
            format!("container {vmid} is on {to} already: moved")
        } else {
            format!("container {vmid} moved from {from} to {to}")
        }
    }
}
/// A move's plan, by the agent of the node it would go to: the container (on its node, with
/// its marker), PVE's own check of the migration, and room here: memory, its volumes'
/// storages (or the target storage), its NICs' bridges.
pub(crate) async fn plan_arrival(pve: &PveClient, job: &MoveJob, out: &mut Planned) {
    let (vmid, from, here) = (job.target.vmid, job.node.as_str(), job.to.as_str());
    let marker = super::marker_of(&job.target);
    let cfg = match pve.config_on(from, vmid).await {
        Ok(Some(cfg)) if crate::jobs::container::carries_marker(&cfg, &marker) => {
            out.check("container", true, format!("{vmid} on {from}, with its marker"));
            cfg
        }
        Ok(Some(_)) => return out.check("container", false, format!("{vmid} on {from} does not carry its marker")),
        Ok(None) => return out.check("container", false, format!("{vmid} is not on {from}")),
        Err(e) => return out.check("container", false, e.to_string()),
    };
    let running = match pve.migrate_check_from(from, vmid, here).await {
        Ok(check) if check.allowed_nodes.iter().any(|n| n == here) => {
            out.check("pve", true, format!("PVE allows {here}"));
            check.running
        }
        Ok(check) => {
            let why = if check.not_allowed.is_empty() {
                String::new()
            } else {
                format!(": {}", check.not_allowed.join("; "))
            };
            out.check("pve", false, format!("PVE does not allow {here}{why}"));
            check.running
        }
        Err(e) => {
            out.check("pve", false, e.to_string());
            false
        }
    };
    let memory = cfg.get("memory").and_then(|m| m.as_u64().or_else(|| m.as_str()?.parse().ok())).unwrap_or(512);
    match pve.node_status().await {
        Ok(s) => out.check(
            "memory",
            memory << 20 <= s.memory_free,
            format!("{memory} MB asked, {} MB free on {here}", s.memory_free >> 20),
        ),
        Err(e) => out.check("memory", false, e.to_string()),
    }
    let storages: Vec<String> = match pve.rootdir_storages().await {
        Ok(list) => list.into_iter().map(|s| s.storage).collect(),
        Err(e) => return out.check("storage", false, e.to_string()),
    };
    let volumes = cfg.as_object().into_iter().flatten().filter(|(k, _)| *k == "rootfs" || k.starts_with("mp"));
    for (key, value) in volumes {
        let Some(volume) = value.as_str().and_then(|v| v.split(',').next()) else { continue };
        let Some((storage, _)) = volume.split_once(':') else { continue };
        let storage = job.target_storage.as_deref().unwrap_or(storage);
        out.check(
            &format!("storage {key}"),
            storages.iter().any(|s| s == storage),
            format!("{storage} on {here} (its storages for containers: {})", storages.join(", ")),
        );
    }
    match pve.bridges().await {
        Ok(bridges) => {
            let nics = cfg.as_object().into_iter().flatten().filter(|(k, _)| k.starts_with("net"));
            for (key, value) in nics {
                let Some(bridge) = value.as_str().and_then(|v| v.split(',').find_map(|p| p.strip_prefix("bridge=")))
                else {
                    continue;
                };
                out.check(
                    &format!("bridge {key}"),
                    bridges.iter().any(|b| b.name == bridge),
                    format!("{bridge} on {here}"),
                );
            }
        }
        Err(e) => out.check("bridges", false, e.to_string()),
    }
    let mut params = vec![("target", here.to_owned())];
    if running {
        params.push(("restart", "1".to_owned()));
        params.push(("timeout", job.options.shutdown_timeout.0.as_secs().max(1).to_string()));
    }
    if let Some(s) = &job.target_storage {
        params.push(("target-storage", s.clone()));
    }
    out.call(format!("POST /nodes/{from}/lxc/{vmid}/migrate"), params);
}
