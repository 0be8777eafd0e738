//! The resize job: one disk (`rootfs`, `mpN`) grown to an absolute size. Growing only: a
//! smaller size fails at finding, naming the field; the size it has already is success, so
//! the same job twice (or a resize whose answer was lost, sent again) is one resize.
//!
//! | step     | does                                                                  | undo |
//! |----------|-----------------------------------------------------------------------|------|
//! | finding  | the container here, with its marker; the disk exists and is not larger | none |
//! | resizing | `PUT …/resize` with the absolute size, waiting for its task           | none: a disk does not shrink |

use pvefleet_schemas::day_two::parse_size;
use pvefleet_schemas::{ErrorInfo, ErrorKind, JobResult, LogStream, ResizeJob, Step};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::jobs::{Claimed, Core, Env, JobEnd, Saga, StepError, StepResult, StepRow, always};
use crate::proxmox::Refusal;

const STEPS: [StepRow<ResizeJob>; 2] = [
    StepRow { step: Step::Finding, percent: 5, what: "finding the container and its disk", runs: always },
    StepRow { step: Step::Resizing, percent: 30, what: "growing the disk", runs: always },
];

pub async fn run(job: &ResizeJob, claimed: Claimed, env: Env<'_>, cancel: &CancellationToken) -> JobEnd {
    let marker = super::marker_of(&job.target);
    let core = Core::new(job.job_id, &job.node, claimed, env, marker, job.options.task_timeout.0);
    let mut saga = ResizeRun { core, job, already: false };
    crate::jobs::run_in_span(&mut saga, env.stop, cancel, "resize").await
}

struct ResizeRun<'a> {
    core: Core,
    job: &'a ResizeJob,
    already: bool,
}

/// The size of `disk` in a container's config, in bytes (PVE writes `size=8G`).
pub(crate) fn disk_size(cfg: &Value, disk: &str) -> Option<u64> {
    let value = cfg.get(disk)?.as_str()?;
    let size = value.split(',').find_map(|part| part.strip_prefix("size="))?;
    parse_size(size).ok()
}

impl ResizeRun<'_> {
    /// The disk's size now, or the job's failure when it has none or is larger than asked.
    fn current(&self, cfg: &Value) -> Result<u64, StepError> {
        let vmid = self.core.cp.vmid.expect("finding found the container");
        let disk = &self.job.disk;
        let Some(size) = disk_size(cfg, disk) else {
            return Err(StepError::failed(
                ErrorKind::Validation,
                format!("disk: container {vmid} has no disk `{disk}` with a size"),
            ));
        };
        if size > self.job.size_bytes {
            return Err(StepError::failed(
                ErrorKind::Validation,
                format!(
                    "size_bytes: {} is smaller than {disk}'s {} now; a disk only grows (PVE cannot shrink one)",
                    self.job.size_text(),
                    pvefleet_schemas::day_two::size_text(size)
                ),
            ));
        }
        Ok(size)
    }

    async fn find(&mut self) -> StepResult {
        let cfg = super::find(&mut self.core, &self.job.target).await?;
        self.current(&cfg).map(drop)
    }

    async fn resize(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        if let Some(upid) = self.core.pending_task("resize") {
            return self.core.wait_task(&upid).await;
        }
        let cfg = super::ours(&mut self.core, vmid).await?;
        if self.current(&cfg)? == self.job.size_bytes {
            self.already = true;
            return Ok(());
        }
        let size = self.job.size_text();
        match self.core.pve.resize(vmid, &self.job.disk, &size).await {
            Ok(upid) => {
                self.core.cp.upid = Some(upid.to_string());
                self.core.save().await?;
                self.core.wait_task(&upid).await
            }
            // A resize whose answer was lost and was sent again finds its own work done.
            Err(e) if e.refusal() == Some(Refusal::AlreadyAtSize) => {
                self.core.events.log(LogStream::Task, format!("{} is already {size}", self.job.disk)).await?;
                Ok(())
            }
            Err(e) if e.refusal() == Some(Refusal::CannotShrink) => {
                Err(StepError::failed(ErrorKind::Validation, format!("size_bytes: {e}")))
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Saga for ResizeRun<'_> {
    crate::jobs::saga_parts!(ResizeJob);

    async fn step(&mut self, step: Step) -> StepResult {
        match step {
            Step::Finding => self.find().await,
            Step::Resizing => self.resize().await,
            other => unreachable!("{other} is not a step of a resize job"),
        }
    }

    fn result(&mut self, error: Option<ErrorInfo>, _rolled_back: bool) -> JobResult {
        super::result(self.job.job_id, &self.job.node, &self.core, error)
    }

    fn completed(&mut self) -> String {
        let (vmid, disk, size) = (self.core.vmid(), &self.job.disk, self.job.size_text());
        if self.already {
            format!("{disk} of container {vmid} is already at {size}: nothing to do")
        } else {
            format!("{disk} of container {vmid} grown to {size}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_size_is_read_from_its_config() {
        let cfg = serde_json::json!({"rootfs": "local-lvm:vm-101-disk-0,size=8G", "mp0": "local-lvm:vm-101-disk-1,mp=/srv,size=512M"});
        assert_eq!(disk_size(&cfg, "rootfs"), Some(8 << 30));
        assert_eq!(disk_size(&cfg, "mp0"), Some(512 << 20));
        assert_eq!(disk_size(&cfg, "mp1"), None);
    }
}
