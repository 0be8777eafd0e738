//! The rollback job: a container pvefleet made back to one of its snapshots. Whatever was
//! written since is lost, so the rollback is sent once whatever happens to its answer
//! ([`Core::once`]: the time it is asked is checkpointed before it is sent, its UPID when PVE
//! answers; a redelivery or a lost answer looks for the `vzrollback` task begun since).
//!
//! | step         | does                                                               | undo |
//! |--------------|--------------------------------------------------------------------|------|
//! | finding      | the container here, with its marker; the snapshot exists, complete  | none |
//! | rolling_back | `POST …/snapshot/{name}/rollback` (`start` if asked), once           | none |

use pvefleet_schemas::{ErrorInfo, ErrorKind, JobResult, RollbackJob, Step, Vmid};
use tokio_util::sync::CancellationToken;

use super::Planned;
use crate::jobs::once::Once;
use crate::jobs::{Claimed, Core, Env, JobEnd, Saga, StepError, StepResult, StepRow, always};
use crate::proxmox::PveClient;

const STEPS: [StepRow<RollbackJob>; 2] = [
    StepRow { step: Step::Finding, percent: 5, what: "finding the container and its snapshot", runs: always },
    StepRow { step: Step::RollingBack, percent: 30, what: "rolling back to the snapshot", runs: always },
];

pub async fn run(job: &RollbackJob, claimed: Claimed, env: Env<'_>, cancel: &CancellationToken) -> JobEnd {
    let marker = super::marker_of(&job.target);
    let core = Core::new(job.job_id, &job.node, claimed, env, marker, job.options.task_timeout.0);
    let mut saga = RollbackRun { core, job };
    crate::jobs::run_in_span(&mut saga, env.stop, cancel, "rollback").await
}

struct RollbackRun<'a> {
    core: Core,
    job: &'a RollbackJob,
}

/// The snapshot exists and is complete (PVE refuses an incomplete one only in its task).
pub(crate) async fn snapshot_is_there(core: &mut Core, vmid: Vmid, name: &str) -> StepResult {
    let snapshots = core.pve.snapshots(vmid).await?;
    match snapshots.iter().find(|s| s.name == name) {
        Some(s) if s.snapstate.is_none() => Ok(()),
        Some(s) => Err(StepError::failed(
            ErrorKind::Conflict,
            format!("snapshot {name} of container {vmid} is incomplete ({})", s.snapstate.as_deref().unwrap_or("?")),
        )),
        None => {
            let names: Vec<&str> = snapshots.iter().map(|s| s.name.as_str()).collect();
            Err(StepError::failed(
                ErrorKind::Validation,
                format!(
                    "name: container {vmid} has no snapshot {name} (it has: {})",
                    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
                ),
            ))
        }
    }
}

impl RollbackRun<'_> {
    async fn find(&mut self) -> StepResult {
        super::find(&mut self.core, &self.job.target).await?;
        let vmid = self.core.vmid();
        snapshot_is_there(&mut self.core, vmid, &self.job.name).await
    }

    async fn roll_back(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        let (name, start) = (self.job.name.as_str(), self.job.start);
        // Only when this job has not sent it: a resumed rollback finds its task (`once`).
        if self.core.pending_task("vzrollback").is_none() && !self.core.asked("vzrollback") {
            super::ours(&mut self.core, vmid).await?;
            snapshot_is_there(&mut self.core, vmid, name).await?;
        }
        self.core.once(vmid, Once::Rollback { name, start }).await.map(drop)
    }
}

impl Saga for RollbackRun<'_> {
    crate::jobs::saga_parts!(RollbackJob);

    async fn step(&mut self, step: Step) -> StepResult {
        match step {
            Step::Finding => self.find().await,
            Step::RollingBack => self.roll_back().await,
            other => unreachable!("{other} is not a step of a rollback job"),
        }
    }

    fn result(&mut self, error: Option<ErrorInfo>, _rolled_back: bool) -> JobResult {
        super::result(self.job.job_id, &self.job.node, &self.core, error)
    }

    fn completed(&mut self) -> String {
        let started = if self.job.start { " and started" } else { "" };
        format!("container {} rolled back to snapshot {}{started}", self.core.vmid(), self.job.name)
    }
}
/// What a rollback job would find and send.
pub(crate) async fn plan(pve: &PveClient, job: &RollbackJob, out: &mut Planned) {
    let (vmid, name) = (job.target.vmid, &job.name);
    match pve.snapshots(vmid).await {
        Ok(list) => match list.iter().find(|s| s.name == *name) {
            Some(s) if s.snapstate.is_none() => out.check(
                "snapshot",
                true,
                format!("{name} exists; whatever was written since it was taken (at {}) would be lost", s.snaptime),
            ),
            Some(_) => out.check("snapshot", false, format!("{name} is incomplete")),
            None => out.check("snapshot", false, format!("container {vmid} has no snapshot {name}")),
        },
        Err(e) => out.check("snapshot", false, e.to_string()),
    }
    let params = if job.start { vec![("start", "1".to_owned())] } else { vec![] };
    out.call(format!("POST /nodes/{}/lxc/{vmid}/snapshot/{name}/rollback", job.node), params);
}
