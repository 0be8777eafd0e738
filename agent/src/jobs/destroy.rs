//! The destroy job, as a table of steps read top to bottom, run by the engine in [`crate::jobs`] like the
//! create job: each step idempotent and checkpointed, its events on the job's subject, exactly
//! one terminal event, resumed after an agent dies. It only ever removes a container that
//! carries a pvefleet marker: the create job's own when named by it, any pvefleet marker when
//! named by vmid. A stranger's container is refused (`conflict`), so is a protected one, and a
//! container already gone is success.
//!
//! | step     | does                                                                    | undo                 |
//! |----------|-------------------------------------------------------------------------|----------------------|
//! | finding  | the container, by the create job's marker or the vmid; ownership and protection checked | none: reads only |
//! | stopping | a clean shutdown within `shutdown_timeout`, then a hard stop if it still runs | none: a destroy is not undone |
//! | deleting | delete with `purge` and `destroy-unreferenced-disks`; already gone is success | none           |

use pvefleet_schemas::{DestroyJob, ErrorInfo, ErrorKind, JobResult, LogStream, Step, Vmid};
use tokio_util::sync::CancellationToken;

use crate::jobs::{Claimed, Core, Env, JobEnd, Saga, StepError, StepResult, StepRow, Undone, Whose, always};
use crate::proxmox::Refusal;

const STEPS: [StepRow<DestroyJob>; 3] = [
    StepRow { step: Step::Finding, percent: 5, what: "finding the container", runs: always },
    StepRow { step: Step::Stopping, percent: 30, what: "stopping the container", runs: always },
    StepRow { step: Step::Deleting, percent: 60, what: "deleting the container", runs: always },
];

/// Runs (or resumes) a claimed destroy job to its end.
pub async fn run(job: &DestroyJob, claimed: Claimed, env: Env<'_>, cancel: &CancellationToken) -> JobEnd {
    // The marker that proves the container is the create job's; none when named by vmid only.
    let marker = job.target.create_job.map(|j| j.marker_tag()).unwrap_or_default();
    let mut saga = DestroyRun {
        core: Core::new(job.job_id, &job.node, claimed, env, marker, job.options.task_timeout.0),
        job,
        gone: None,
    };
    crate::jobs::run_in_span(&mut saga, env.stop, cancel, "destroy").await
}

struct DestroyRun<'a> {
    core: Core,
    job: &'a DestroyJob,
    /// Why there was nothing to destroy, when finding found it gone.
    gone: Option<String>,
}

impl DestroyRun<'_> {
    /// Finds the container and proves it may be destroyed; none found is success.
    async fn find(&mut self) -> StepResult {
        let target = &self.job.target;
        let node = self.core.node.clone();
        let by_marker = match target.create_job {
            Some(create_job) => {
                let found = self.core.pve.guests_tagged(&self.core.marker).await?;
                let here: Vec<Vmid> = found.iter().filter(|(n, _)| n == node.as_str()).map(|(_, v)| *v).collect();
                if here.is_empty()
                    && let Some((other, vmid)) = found.iter().find(|(n, _)| n != node.as_str())
                {
                    // Migrated: saying "nothing to destroy" would mark the job destroyed.
                    return Err(StepError::failed(
                        ErrorKind::Conflict,
                        format!(
                            "job {create_job}'s container is {vmid} on {other}, not on {node}; destroy it there \
                             (pvefleet destroy --node {other} --vmid {vmid})"
                        ),
                    ));
                }
                match (here.as_slice(), target.vmid) {
                    ([one], Some(given)) if *one != given => {
                        return Err(StepError::failed(
                            ErrorKind::Conflict,
                            format!(
                                "job {create_job}'s container on {node} is {one}, not the vmid {given} given; nothing was touched"
                            ),
                        ));
                    }
                    ([one], _) => Some(*one),
                    ([], _) => None,
                    (many, _) => {
                        return Err(StepError::failed(
                            ErrorKind::Conflict,
                            format!(
                                "{} containers on {node} carry job {create_job}'s marker ({}); destroy them by vmid",
                                many.len(),
                                many.iter().map(Vmid::to_string).collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                }
            }
            None => None,
        };
        let Some(vmid) = by_marker.or(target.vmid) else {
            self.gone = Some(format!(
                "nothing to destroy: no container on {node} carries the marker of job {}",
                target.create_job.map(|j| j.to_string()).unwrap_or_default()
            ));
            return Ok(());
        };
        let marker = self.core.marker.clone();
        let (whose, cfg) = self.core.owner_of(vmid, |cfg| crate::jobs::container::carries_marker(cfg, &marker)).await?;
        match whose {
            Whose::Nobody => {
                self.gone = Some(format!("nothing to destroy: container {vmid} does not exist on {node}"));
                return Ok(());
            }
            Whose::Strangers => {
                let whose = match target.create_job {
                    Some(job) => format!("the marker of job {job}"),
                    None => format!("a pvefleet marker ({}…)", pvefleet_schemas::MARKER_TAG_PREFIX),
                };
                return Err(StepError::failed(
                    ErrorKind::Conflict,
                    format!(
                        "container {vmid} on {node} does not carry {whose}: pvefleet did not make it; left untouched"
                    ),
                ));
            }
            Whose::Ours => {}
        }
        let protected = cfg.as_ref().and_then(|c| c.get("protection")).is_some_and(|p| p == 1 || p == "1");
        if protected {
            return Err(StepError::failed(
                ErrorKind::Conflict,
                format!(
                    "container {vmid} is protected (protection: 1), so PVE will not remove it; lift it first \
                     (pct set {vmid} --protection 0) if it is really to go"
                ),
            ));
        }
        self.core.cp.vmid = Some(vmid);
        self.core.events.log(LogStream::Task, format!("container {vmid} on {node} is to be destroyed")).await?;
        Ok(())
    }

    /// Whether `vmid` still holds the container finding proved ours: a redelivered job acts on
    /// a vmid read from its checkpoint, and by then that container may be gone and the id
    /// given to someone else's. `false` when nothing is there; a stranger's is refused.
    async fn still_ours(&mut self, vmid: Vmid) -> Result<bool, StepError> {
        let marker = self.core.marker.clone();
        let (whose, _) = self.core.owner_of(vmid, |cfg| crate::jobs::container::carries_marker(cfg, &marker)).await?;
        match whose {
            Whose::Ours => Ok(true),
            Whose::Nobody => Ok(false),
            Whose::Strangers => Err(StepError::failed(
                ErrorKind::Conflict,
                format!("vmid {vmid} now holds a container pvefleet did not make (or another job's); left untouched"),
            )),
        }
    }

    /// A clean shutdown within the job's timeout, then a hard stop if it is still running.
    async fn stop(&mut self) -> StepResult {
        let Some(vmid) = self.core.cp.vmid else { return Ok(()) };
        if self.core.resumed && !self.still_ours(vmid).await? {
            return Ok(());
        }
        if let Some(upid) = self.core.pending_task("vzstop") {
            return self.core.wait_task(&upid).await;
        }
        if let Some(upid) = self.core.pending_task("vzshutdown") {
            // Resumed during the shutdown: let it finish, or give up on it and stop hard.
            if self.core.wait_task(&upid).await.is_ok() && !self.running(vmid).await? {
                return Ok(());
            }
        } else {
            match self.core.pve.status(vmid).await {
                Ok(s) if s.status != "running" => return Ok(()),
                Ok(_) => {}
                Err(e) if e.is_missing() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let within = self.job.options.shutdown_timeout.0;
            match self.core.pve.shutdown(vmid, within).await {
                Ok(upid) => {
                    self.core.cp.upid = Some(upid.to_string());
                    self.core.save().await?;
                    match self.core.wait_task(&upid).await {
                        Ok(()) if !self.running(vmid).await? => return Ok(()),
                        Ok(()) => {}
                        Err(StepError::Bus(e)) => return Err(StepError::Bus(e)),
                        Err(StepError::Failed { message, .. }) => {
                            tracing::info!(%message, "the clean shutdown did not end the container");
                        }
                    }
                }
                Err(e) if e.refusal() == Some(Refusal::NotRunning) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            self.core
                .events
                .warning(format!("container {vmid} did not shut down within {within:?}; stopping it"))
                .await?;
        }
        match self.core.pve.stop(vmid).await {
            Ok(upid) => {
                self.core.cp.upid = Some(upid.to_string());
                self.core.save().await?;
                self.core.wait_task(&upid).await
            }
            Err(e) if matches!(e.refusal(), Some(Refusal::NotRunning | Refusal::Missing)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn running(&self, vmid: Vmid) -> Result<bool, StepError> {
        match self.core.pve.status(vmid).await {
            Ok(s) => Ok(s.status == "running"),
            Err(e) if e.is_missing() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&mut self) -> StepResult {
        let Some(vmid) = self.core.cp.vmid else { return Ok(()) };
        if let Some(upid) = self.core.pending_task("vzdestroy") {
            // Resumed while our delete ran: its end is the step's end.
            return self.core.wait_task(&upid).await;
        }
        if !self.still_ours(vmid).await? {
            return Ok(());
        }
        self.core.delete(vmid).await
    }
}

impl Saga for DestroyRun<'_> {
    crate::jobs::saga_parts!(DestroyJob);

    async fn step(&mut self, step: Step) -> StepResult {
        match step {
            Step::Finding => self.find().await,
            Step::Stopping => self.stop().await,
            Step::Deleting => self.delete().await,
            other => unreachable!("{other} is not a step of a destroy job"),
        }
    }

    async fn undo(&mut self) -> Result<Undone, StepError> {
        // A destroy half done is not undone: the container stays as it was left (stopped,
        // perhaps), and running the job again finishes it.
        Ok(Undone::Nothing(None))
    }

    fn result(&mut self, error: Option<ErrorInfo>, rolled_back: bool) -> JobResult {
        JobResult {
            success: error.is_none(),
            job_id: self.job.job_id,
            node: self.job.node.clone(),
            vmid: self.core.cp.vmid,
            ip: None,
            error,
            rolled_back,
            host_key: None,
            moved_to: None,
        }
    }

    fn completed(&mut self) -> String {
        match (self.core.cp.vmid, &self.gone) {
            (_, Some(why)) => why.clone(),
            (Some(vmid), None) => format!("container {vmid} destroyed"),
            (None, None) => "nothing was left to destroy".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_table_finds_then_stops_then_deletes() {
        let steps: Vec<Step> = STEPS.iter().map(|r| r.step).collect();
        assert_eq!(steps, [Step::Finding, Step::Stopping, Step::Deleting]);
        assert!(STEPS.windows(2).all(|w| w[0].percent < w[1].percent && w[0].step < w[1].step));
    }
}
