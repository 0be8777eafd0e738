//! The day-two kinds, on the same engine as create and destroy: `update` (a config change,
//! then the restart its policy asks for; guarded by a snapshot if asked), `resize` (a disk
//! grown to an absolute size), `power` (start, shutdown, stop, reboot), `snapshot`,
//! `rollback`, `backup`, `restore` and `move`. Each begins with the same `finding` step here: the
//! container named by the job is on this node and carries its marker, or the job ends
//! (`moved` naming the node it is on now, `conflict` for a stranger's); every later step reads
//! the container again and writes only to one still carrying the marker.
//!
//! - [`update`]: finding → configuring → restarting → verifying.
//! - [`resize`]: finding → resizing.
//! - [`power`]: finding → powering.
//! - [`snapshot`]: finding → snapshotting or deleting.
//! - [`rollback`]: finding → rolling_back (sent once).
//! - [`backup`]: finding → backing_up (taken once, found by its notes).
//! - [`restore`]: finding → (stopping) → restoring (sent once).
//! - [`migrate`]: finding → moving (sent once, found by its marker on the target).
//! - [`plan`]: what one of them would find and send, changing nothing.

pub mod backup;
pub mod migrate;
pub mod plan;
pub mod power;
pub mod resize;
pub mod restore;
pub mod rollback;
pub mod snapshot;
pub mod update;

use pvefleet_schemas::trust::Grant;
use pvefleet_schemas::{
    ContainerTarget, DayTwoJob, ErrorInfo, ErrorKind, JobId, JobResult, LogStream, NodeName, PlanCheck, PlanReply,
    PlannedCall, V1, Vmid,
};
use serde_json::Value;

use crate::jobs::{Core, StepError, Whose};

/// The marker a day-two job's container must carry: its create job's, or (empty) any.
pub(crate) fn marker_of(target: &ContainerTarget) -> String {
    target.create_job.map(|j| j.marker_tag()).unwrap_or_default()
}

/// The `finding` step every day-two kind begins with: the container is here and carries the
/// marker. Its config is returned; its vmid is checkpointed.
pub(crate) async fn find(core: &mut Core, target: &ContainerTarget) -> Result<Value, StepError> {
    let vmid = target.vmid;
    let cfg = ours(core, vmid).await?;
    core.cp.vmid = Some(vmid);
    let name = cfg.get("hostname").and_then(Value::as_str).unwrap_or("?").to_owned();
    core.events.log(LogStream::Task, format!("found container {vmid} ({name}) on {}", core.node)).await?;
    Ok(cfg)
}

/// Container `vmid`'s config, read again and proven still the job's (by its marker, or any
/// pvefleet marker when the job names no create job): what every step reads before it writes.
/// A stranger's is `conflict`; one no longer on this node is `moved` (or gone).
pub(crate) async fn ours(core: &mut Core, vmid: Vmid) -> Result<Value, StepError> {
    let marker = core.marker.clone();
    let (whose, cfg) = core.owner_of(vmid, |cfg| crate::jobs::container::carries_marker(cfg, &marker)).await?;
    match (whose, cfg) {
        (Whose::Ours, Some(cfg)) => Ok(cfg),
        (Whose::Strangers, _) => Err(StepError::failed(
            ErrorKind::Conflict,
            format!(
                "container {vmid} on {} does not carry {}: pvefleet did not make it, and writes only to its own; left untouched",
                core.node,
                if marker.is_empty() { "a pvefleet marker".to_owned() } else { format!("the marker {marker}") }
            ),
        )),
        (Whose::Nobody, _) | (Whose::Ours, None) => Err(elsewhere(core, vmid).await),
    }
}

/// Why a container is not on this node: moved to another (by HA or by hand), or gone.
async fn elsewhere(core: &mut Core, vmid: Vmid) -> StepError {
    let node = core.node.clone();
    // By its marker first (the vmid stays the same on a migration, but a create job's marker
    // proves it is the same container).
    let found = if core.marker.is_empty() {
        core.pve.guest_node(vmid).await.map(|n| n.map(|n| (n, vmid)))
    } else {
        core.pve.guests_tagged(&core.marker).await.map(|g| g.into_iter().find(|(n, _)| *n != node.as_str()))
    };
    match found {
        Ok(Some((other, at))) if other != node.as_str() => StepError::failed(
            ErrorKind::Moved,
            format!(
                "container {vmid} is on {other} now (as {at}), not on {node}: nothing was touched; send the job to \
                 {other} (the coordinator routes by the inventory)"
            ),
        ),
        Ok(_) => StepError::failed(
            ErrorKind::Conflict,
            format!("container {vmid} does not exist on {node} or any other node of the cluster: it is gone"),
        ),
        Err(e) => e.into(),
    }
}

/// What a plan found and would send, as each kind's plan adds to it.
#[derive(Default)]
pub(crate) struct Planned {
    pub checks: Vec<PlanCheck>,
    pub calls: Vec<PlannedCall>,
}

impl Planned {
    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(PlanCheck { check: name.into(), ok, detail: detail.into() });
    }

    pub fn call(&mut self, call: String, parameters: Vec<(&str, String)>) {
        let parameters = parameters.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        self.calls.push(PlannedCall { call, parameters });
    }

    /// The spec and the policy, as every plan begins.
    pub(crate) fn admitted(&mut self, job: &DayTwoJob, grant: &Grant) {
        match job.validate() {
            Ok(()) => self.check("spec", true, "valid"),
            Err(e) => self.check("spec", false, e.to_string()),
        }
        match grant.allows_day_two(job) {
            Ok(()) => self.check("policy", true, format!("{} may ask for this", grant.name)),
            Err(refusal) => self.check("policy", false, refusal.to_string()),
        }
    }

    pub fn reply(self, node: &pvefleet_schemas::NodeName, vmid: Option<pvefleet_schemas::Vmid>) -> PlanReply {
        let ok = self.checks.iter().all(|c| c.ok);
        PlanReply { v: V1, node: node.clone(), ok, checks: self.checks, vmid, calls: self.calls }
    }
}

/// The result every day-two kind ends with.
pub(crate) fn result(job_id: JobId, node: &NodeName, core: &Core, error: Option<ErrorInfo>) -> JobResult {
    JobResult {
        success: error.is_none(),
        job_id,
        node: node.clone(),
        vmid: core.cp.vmid,
        ip: None,
        error,
        rolled_back: false,
        host_key: None,
        moved_to: None,
    }
}

/// A container's snapshots or backups, for `pvefleet snapshots|backups` (reads only).
pub async fn list(pve: &crate::proxmox::PveClient, req: &pvefleet_schemas::ListRequest) -> pvefleet_schemas::ListReply {
    use pvefleet_schemas::day_two::made_by_job;
    use pvefleet_schemas::{ListWhat, Listed};
    let vmid = req.vmid;
    let refused = |why: String| pvefleet_schemas::ListReply {
        v: pvefleet_schemas::V1,
        node: pve.node().clone(),
        error: Some(why),
        items: Vec::new(),
    };
    if let Err(e) = req.validate() {
        return refused(e.to_string());
    }
    // A stranger's container's snapshots and backups are none of pvefleet's business.
    match pve.container_config(vmid).await {
        Ok(Some(cfg)) if crate::jobs::container::has_any_marker(&cfg) => {}
        Ok(Some(_)) => return refused(format!("container {vmid} carries no pvefleet marker: not listed")),
        Ok(None) => return refused(format!("there is no container {vmid} on {}", pve.node())),
        Err(e) => return refused(e.to_string()),
    }
    let items: Result<Vec<Listed>, String> = match req.what {
        ListWhat::Snapshots => pve.snapshots(vmid).await.map_err(|e| e.to_string()).map(|list| {
            list.into_iter()
                .map(|s| Listed {
                    job: made_by_job(&s.description),
                    name: s.name,
                    time: s.snaptime,
                    description: s.description,
                    size: None,
                    protected: false,
                    state: s.snapstate,
                })
                .collect()
        }),
        ListWhat::Backups => {
            async {
                let storages = match &req.storage {
                    Some(s) => vec![s.clone()],
                    None => {
                        pve.backup_storages().await.map_err(|e| e.to_string())?.into_iter().map(|s| s.storage).collect()
                    }
                };
                let mut out = Vec::new();
                for storage in storages {
                    for b in pve.backups(&storage, Some(vmid)).await.map_err(|e| e.to_string())? {
                        out.push(Listed {
                            job: made_by_job(&b.notes),
                            name: b.volid,
                            time: b.ctime,
                            description: b.notes,
                            size: Some(b.size),
                            protected: b.protected,
                            state: None,
                        });
                    }
                }
                out.sort_by_key(|l| l.time);
                Ok(out)
            }
            .await
        }
    };
    let (items, error) = match items {
        Ok(items) => (items, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    pvefleet_schemas::ListReply { v: pvefleet_schemas::V1, node: pve.node().clone(), error, items }
}
