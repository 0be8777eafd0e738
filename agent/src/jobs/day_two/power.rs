//! The power job: start, shutdown, stop or reboot a container pvefleet made. Already in the
//! asked state is success; a reboot is sent once whatever happens to its answer.
//!
//! | step     | does                                                                 | undo |
//! |----------|----------------------------------------------------------------------|------|
//! | finding  | the container here, with its marker                                   | none |
//! | powering | the action, waiting for its task; a shutdown past its timeout stops hard only with `force` | none |

use pvefleet_schemas::{ErrorInfo, ErrorKind, JobResult, PowerAction, PowerJob, Step};
use tokio_util::sync::CancellationToken;

use crate::jobs::{Claimed, Core, Env, JobEnd, Saga, StepError, StepResult, StepRow, always};
use crate::proxmox::Refusal;

const STEPS: [StepRow<PowerJob>; 2] = [
    StepRow { step: Step::Finding, percent: 5, what: "finding the container", runs: always },
    StepRow { step: Step::Powering, percent: 30, what: "changing its power state", runs: always },
];

pub async fn run(job: &PowerJob, claimed: Claimed, env: Env<'_>, cancel: &CancellationToken) -> JobEnd {
    let marker = super::marker_of(&job.target);
    let core = Core::new(job.job_id, &job.node, claimed, env, marker, job.options.task_timeout.0);
    let mut saga = PowerRun { core, job, already: false };
    crate::jobs::run_in_span(&mut saga, env.stop, cancel, "power").await
}

struct PowerRun<'a> {
    core: Core,
    job: &'a PowerJob,
    /// It was in the asked state already.
    already: bool,
}

impl PowerRun<'_> {
    async fn running(&mut self) -> Result<bool, StepError> {
        let vmid = self.core.vmid();
        super::ours(&mut self.core, vmid).await?;
        Ok(self.core.pve.status(vmid).await?.status == "running")
    }

    async fn power(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        let action = self.job.action;
        // A task this job sent before its agent stopped: its end is the step's end.
        for kind in ["vzstart", "vzstop", "vzshutdown"] {
            if let Some(upid) = self.core.pending_task(kind) {
                let waited = self.core.wait_task(&upid).await;
                if kind == "vzshutdown" && waited.is_err() && self.job.force && self.running().await? {
                    return self.stop_after_timeout().await;
                }
                return waited;
            }
        }
        if action == PowerAction::Reboot {
            if self.core.pending_task("vzreboot").is_none() && !self.core.asked("vzreboot") && !self.running().await? {
                return Err(StepError::failed(
                    ErrorKind::Conflict,
                    format!("container {vmid} is not running, so there is nothing to reboot; start it instead"),
                ));
            }
            let within = self.job.options.shutdown_timeout.0;
            if !self.core.reboot_once(vmid, within).await? {
                return Err(StepError::failed(ErrorKind::Conflict, format!("container {vmid} stopped meanwhile")));
            }
            return Ok(());
        }
        let running = self.running().await?;
        let sent = match action {
            PowerAction::Start if running => None,
            PowerAction::Start => Some(self.core.pve.start(vmid).await),
            PowerAction::Stop | PowerAction::Shutdown if !running => None,
            PowerAction::Stop => Some(self.core.pve.stop(vmid).await),
            PowerAction::Shutdown => Some(self.core.pve.shutdown(vmid, self.job.options.shutdown_timeout.0).await),
            PowerAction::Reboot => unreachable!("a reboot is sent above"),
        };
        let upid = match sent {
            None => {
                self.already = true;
                return Ok(());
            }
            Some(Ok(upid)) => upid,
            Some(Err(e)) if matches!(e.refusal(), Some(Refusal::AlreadyRunning | Refusal::NotRunning)) => {
                // A lost answer retried, or someone else meanwhile: it is as asked.
                self.already = true;
                return Ok(());
            }
            Some(Err(e)) => return Err(e.into()),
        };
        self.core.cp.upid = Some(upid.to_string());
        self.core.save().await?;
        match self.core.wait_task(&upid).await {
            Err(StepError::Failed { message, .. })
                if action == PowerAction::Shutdown && self.job.force && self.running().await? =>
            {
                self.core
                    .events
                    .warning(format!("container {vmid} did not shut down in time ({message}); stopping it (--force)"))
                    .await?;
                self.stop_after_timeout().await
            }
            other => other,
        }
    }

    async fn stop_after_timeout(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        match self.core.pve.stop(vmid).await {
            Ok(upid) => {
                self.core.cp.upid = Some(upid.to_string());
                self.core.save().await?;
                self.core.wait_task(&upid).await
            }
            Err(e) if e.refusal() == Some(Refusal::NotRunning) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Saga for PowerRun<'_> {
    crate::jobs::saga_parts!(PowerJob);

    async fn step(&mut self, step: Step) -> StepResult {
        match step {
            Step::Finding => super::find(&mut self.core, &self.job.target).await.map(drop),
            Step::Powering => self.power().await,
            other => unreachable!("{other} is not a step of a power job"),
        }
    }

    fn result(&mut self, error: Option<ErrorInfo>, _rolled_back: bool) -> JobResult {
        super::result(self.job.job_id, &self.job.node, &self.core, error)
    }

    fn completed(&mut self) -> String {
        let vmid = self.core.vmid();
        let state = match self.job.action {
            PowerAction::Start => "running",
            PowerAction::Shutdown | PowerAction::Stop => "stopped",
            PowerAction::Reboot => "rebooted",
        };
        if self.already {
            format!("container {vmid} was already {state}: nothing to do")
        } else {
            format!("container {vmid} {state} ({})", self.job.action)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_table_finds_then_powers() {
        assert_eq!(STEPS.map(|r| r.step), [Step::Finding, Step::Powering]);
    }
}
