//! The snapshot job: take one snapshot of a container pvefleet made, or delete one. A
//! snapshot this job takes carries the job's id and the container's marker in its description,
//! so a request whose answer was lost (or a redelivery) finds it made and never takes another;
//! one of that name made by anyone else is a `conflict`. A snapshot already gone is deleted.
//! Storage without snapshots is refused at finding (PVE's `GET …/feature`).
//!
//! | step         | does                                                                | undo |
//! |--------------|---------------------------------------------------------------------|------|
//! | finding      | the container here, with its marker; its storage takes snapshots (create) | none |
//! | snapshotting | (create) `POST …/snapshot`, unless the list shows this job's           | none |
//! | deleting     | (delete) `DELETE …/snapshot/{name}`, unless it is gone                 | none |
//!
//! [`take`] and [`delete`] are also a guarded update's first and last steps.

use pvefleet_schemas::day_two::{made_by, made_by_line};
use pvefleet_schemas::{ErrorInfo, ErrorKind, JobResult, LogStream, SnapshotAction, SnapshotJob, Step, Vmid};
use tokio_util::sync::CancellationToken;

use super::Planned;
use crate::jobs::once::Once;
use crate::jobs::{Claimed, Core, Env, JobEnd, Saga, StepError, StepResult, StepRow, always};
use crate::proxmox::{PveClient, Snapshot};
use crate::retry::{self, Wait};

fn taking(job: &SnapshotJob) -> bool {
    job.action == SnapshotAction::Create
}

fn deleting(job: &SnapshotJob) -> bool {
    job.action == SnapshotAction::Delete
}

const STEPS: [StepRow<SnapshotJob>; 3] = [
    StepRow { step: Step::Finding, percent: 5, what: "finding the container", runs: always },
    StepRow { step: Step::Snapshotting, percent: 30, what: "taking the snapshot", runs: taking },
    StepRow { step: Step::Deleting, percent: 30, what: "deleting the snapshot", runs: deleting },
];

pub async fn run(job: &SnapshotJob, claimed: Claimed, env: Env<'_>, cancel: &CancellationToken) -> JobEnd {
    let marker = super::marker_of(&job.target);
    let core = Core::new(job.job_id, &job.node, claimed, env, marker, job.options.task_timeout.0);
    let mut saga = SnapshotRun { core, job, already: false };
    crate::jobs::run_in_span(&mut saga, env.stop, cancel, "snapshot").await
}

struct SnapshotRun<'a> {
    core: Core,
    job: &'a SnapshotJob,
    already: bool,
}

/// Refuses a container whose volumes are on storage without snapshots, as PVE would only in
/// its task.
pub(crate) async fn can_snapshot(core: &mut Core, vmid: Vmid) -> StepResult {
    if core.pve.has_feature(vmid, "snapshot").await? {
        return Ok(());
    }
    Err(StepError::failed(
        ErrorKind::Validation,
        format!(
            "container {vmid}'s volumes are on storage without snapshots (PVE's feature check says no; lvmthin, zfs, \
             rbd and btrfs have them): nothing was taken"
        ),
    ))
}

/// The snapshot `name` of container `vmid`, once no task is making or deleting it (waited
/// out within the job's task timeout).
async fn settled(core: &mut Core, vmid: Vmid, name: &str) -> Result<Option<Snapshot>, StepError> {
    let mut wait = Wait::new(retry::CREATE_LOCK, core.task_timeout);
    loop {
        let found = core.pve.snapshots(vmid).await?.into_iter().find(|s| s.name == name);
        match found {
            Some(s) if s.snapstate.is_some() => {
                if !wait.pause().await {
                    return Err(StepError::failed(
                        ErrorKind::Timeout,
                        format!("snapshot {name} of container {vmid} still {:?} after {:?}", s.snapstate, wait.within),
                    ));
                }
            }
            other => return Ok(other),
        }
    }
}

/// Takes snapshot `name` of container `vmid` for this job, unless it has: the snapshot list
/// says whether this job took it (by its description), and a request whose answer was lost is
/// looked for among the node's tasks before it is sent again ([`Core::once`]). `Ok(true)` when
/// it was there already.
pub(crate) async fn take(core: &mut Core, vmid: Vmid, name: &str, note: Option<&str>) -> Result<bool, StepError> {
    if let Some(upid) = core.pending_task("vzsnapshot") {
        core.wait_task(&upid).await?;
        return Ok(false);
    }
    match settled(core, vmid, name).await? {
        Some(s) if made_by(&s.description, core.job_id) => return Ok(true),
        Some(_) => {
            return Err(StepError::failed(
                ErrorKind::Conflict,
                format!("container {vmid} has a snapshot named {name} already, not taken by this job: left as it is"),
            ));
        }
        None => {}
    }
    let mut description = made_by_line(core.job_id, &core.marker);
    if let Some(note) = note {
        description.push('\n');
        description.push_str(note);
    }
    core.once(vmid, Once::Snapshot { name, description: &description }).await?;
    Ok(false)
}

/// Deletes snapshot `name` of container `vmid`; one already gone is done. `Ok(true)` when it
/// was gone.
pub(crate) async fn delete(core: &mut Core, vmid: Vmid, name: &str) -> Result<bool, StepError> {
    if let Some(upid) = core.pending_task("vzdelsnapshot") {
        core.wait_task(&upid).await?;
        return Ok(false);
    }
    if settled(core, vmid, name).await?.is_none() {
        return Ok(true);
    }
    core.once(vmid, Once::DeleteSnapshot { name }).await?;
    Ok(false)
}

impl SnapshotRun<'_> {
    async fn find(&mut self) -> StepResult {
        super::find(&mut self.core, &self.job.target).await?;
        let vmid = self.core.vmid();
        match self.job.action {
            SnapshotAction::Create => can_snapshot(&mut self.core, vmid).await,
            SnapshotAction::Delete => Ok(()),
        }
    }
}

impl Saga for SnapshotRun<'_> {
    crate::jobs::saga_parts!(SnapshotJob);

    async fn step(&mut self, step: Step) -> StepResult {
        let vmid = self.core.cp.vmid;
        let name = &self.job.name;
        match step {
            Step::Finding => self.find().await,
            Step::Snapshotting => {
                let vmid = vmid.expect("finding found it");
                self.already = take(&mut self.core, vmid, name, self.job.description.as_deref()).await?;
                if self.already {
                    self.core
                        .events
                        .log(LogStream::Task, format!("snapshot {name} is this job's, taken already"))
                        .await?;
                }
                Ok(())
            }
            Step::Deleting => {
                self.already = delete(&mut self.core, vmid.expect("finding found it"), name).await?;
                Ok(())
            }
            other => unreachable!("{other} is not a step of a snapshot job"),
        }
    }

    fn result(&mut self, error: Option<ErrorInfo>, _rolled_back: bool) -> JobResult {
        super::result(self.job.job_id, &self.job.node, &self.core, error)
    }

    fn completed(&mut self) -> String {
        let (vmid, name) = (self.core.vmid(), &self.job.name);
        match (self.job.action, self.already) {
            (SnapshotAction::Create, false) => format!("snapshot {name} of container {vmid} taken"),
            (SnapshotAction::Create, true) => format!("snapshot {name} of container {vmid} was taken already"),
            (SnapshotAction::Delete, false) => format!("snapshot {name} of container {vmid} deleted"),
            (SnapshotAction::Delete, true) => format!("container {vmid} has no snapshot {name}: nothing to delete"),
        }
    }
}

/// What a snapshot job would find and send.
pub(crate) async fn plan(pve: &PveClient, job: &SnapshotJob, out: &mut Planned) {
    let (vmid, name) = (job.target.vmid, &job.name);
    let path = format!("/nodes/{}/lxc/{vmid}/snapshot", job.node);
    let existing = match pve.snapshots(vmid).await {
        Ok(list) => list.into_iter().find(|s| s.name == *name),
        Err(e) => return out.check("snapshots", false, e.to_string()),
    };
    match job.action {
        SnapshotAction::Create => {
            match pve.has_feature(vmid, "snapshot").await {
                Ok(true) => out.check("storage", true, "its volumes' storage takes snapshots"),
                Ok(false) => out.check("storage", false, "its volumes are on storage without snapshots"),
                Err(e) => out.check("storage", false, e.to_string()),
            }
            match existing {
                Some(s) if made_by(&s.description, job.job_id) => {
                    out.check("name", true, format!("{name} was taken by this job already: nothing would be sent"))
                }
                Some(_) => out.check("name", false, format!("a snapshot named {name} exists already")),
                None => {
                    out.check("name", true, format!("{name} is free"));
                    let description = made_by_line(job.job_id, &super::marker_of(&job.target));
                    out.call(format!("POST {path}"), vec![("snapname", name.clone()), ("description", description)]);
                }
            }
        }
        SnapshotAction::Delete => match existing {
            Some(_) => {
                out.check("name", true, format!("{name} exists"));
                out.call(format!("DELETE {path}/{name}"), vec![]);
            }
            None => out.check("name", true, format!("there is no snapshot {name}: nothing would be sent")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_takes_or_deletes() {
        assert_eq!(STEPS.map(|r| r.step), [Step::Finding, Step::Snapshotting, Step::Deleting]);
    }
}
