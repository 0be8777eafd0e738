//! The backup job: vzdump of a container pvefleet made, to a storage of its node, with the
//! job's id and the container's marker in the backup's notes. A backup is taken once: a
//! redelivery or a lost answer finds this job's backup by its notes in the storage's content,
//! or its `vzdump` task in the node's task list ([`Core::once`]), and never starts another.
//!
//! | step       | does                                                                  | undo |
//! |------------|-----------------------------------------------------------------------|------|
//! | finding    | the container here, with its marker; the storage takes backups here    | none |
//! | backing_up | `POST /nodes/{node}/vzdump` once (mode, notes, protected, keep-last)   | none |

use pvefleet_schemas::day_two::{made_by, made_by_line};
use pvefleet_schemas::{BackupJob, ErrorInfo, ErrorKind, JobResult, Step};
use tokio_util::sync::CancellationToken;

use super::Planned;
use crate::jobs::once::Once;
use crate::jobs::{Claimed, Core, Env, JobEnd, Saga, StepError, StepResult, StepRow, always};
use crate::proxmox::{Backup, PveClient};

const STEPS: [StepRow<BackupJob>; 2] = [
    StepRow { step: Step::Finding, percent: 5, what: "finding the container and the storage", runs: always },
    StepRow { step: Step::BackingUp, percent: 20, what: "backing it up", runs: always },
];

pub async fn run(job: &BackupJob, claimed: Claimed, env: Env<'_>, cancel: &CancellationToken) -> JobEnd {
    let marker = super::marker_of(&job.target);
    let core = Core::new(job.job_id, &job.node, claimed, env, marker, job.options.task_timeout.0);
    let mut saga = BackupRun { core, job, made: None, already: false };
    crate::jobs::run_in_span(&mut saga, env.stop, cancel, "backup").await
}

struct BackupRun<'a> {
    core: Core,
    job: &'a BackupJob,
    /// The backup's volume id, once found.
    made: Option<String>,
    already: bool,
}

/// The `POST …/vzdump` parameters of a backup job: notes that name it (PVE's notes template
/// takes `\n` for a line break and expands `{{guestname}}`).
pub(crate) fn vzdump_params(job: &BackupJob, marker: &str) -> Vec<(&'static str, String)> {
    let mut params = vec![
        ("vmid", job.target.vmid.to_string()),
        ("storage", job.storage.clone()),
        ("mode", job.mode.as_str().to_owned()),
        ("compress", "zstd".to_owned()),
        ("notes-template", format!("{}\\n{{{{guestname}}}}", made_by_line(job.job_id, marker))),
    ];
    if job.protected {
        params.push(("protected", "1".to_owned()));
    }
    if let Some(n) = job.keep_last {
        params.push(("prune-backups", format!("keep-last={n}")));
    }
    params
}

impl BackupRun<'_> {
    async fn find(&mut self) -> StepResult {
        super::find(&mut self.core, &self.job.target).await?;
        let storages = self.core.pve.backup_storages().await?;
        if storages.iter().any(|s| s.storage == self.job.storage) {
            return Ok(());
        }
        let names: Vec<&str> = storages.iter().map(|s| s.storage.as_str()).collect();
        Err(StepError::failed(
            ErrorKind::Validation,
            format!(
                "storage: `{}` is not an active storage for backups on {} (those are: {})",
                self.job.storage,
                self.core.node,
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            ),
        ))
    }

    /// This job's backup on the storage, found by its notes.
    async fn this_jobs(&mut self) -> Result<Option<Backup>, StepError> {
        let vmid = self.core.vmid();
        let backups = self.core.pve.backups(&self.job.storage, Some(vmid)).await?;
        Ok(backups.into_iter().find(|b| made_by(&b.notes, self.job.job_id)))
    }

    async fn back_up(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        let sent = self.core.pending_task("vzdump").is_some() || self.core.asked("vzdump");
        if !sent {
            if let Some(b) = self.this_jobs().await? {
                self.made = Some(b.volid);
                self.already = true;
                return Ok(());
            }
            super::ours(&mut self.core, vmid).await?;
        }
        let params = vzdump_params(self.job, &self.core.marker);
        self.core.once(vmid, Once::Backup { params: &params }).await?;
        match self.this_jobs().await? {
            Some(b) => {
                self.made = Some(b.volid);
                Ok(())
            }
            None => Err(StepError::failed(
                ErrorKind::Task,
                format!(
                    "the vzdump task of container {vmid} ended, but no backup with this job's notes is on {}",
                    self.job.storage
                ),
            )),
        }
    }
}

impl Saga for BackupRun<'_> {
    crate::jobs::saga_parts!(BackupJob);

    async fn step(&mut self, step: Step) -> StepResult {
        match step {
            Step::Finding => self.find().await,
            Step::BackingUp => self.back_up().await,
            other => unreachable!("{other} is not a step of a backup job"),
        }
    }

    fn result(&mut self, error: Option<ErrorInfo>, _rolled_back: bool) -> JobResult {
        super::result(self.job.job_id, &self.job.node, &self.core, error)
    }

    fn completed(&mut self) -> String {
        let vmid = self.core.vmid();
        let volid = self.made.as_deref().unwrap_or("?");
        if self.already {
            format!("container {vmid} was backed up by this job already: {volid}")
        } else {
            format!("container {vmid} backed up: {volid}")
        }
    }
}

/// What a backup job would find and send.
pub(crate) async fn plan(pve: &PveClient, job: &BackupJob, out: &mut Planned) {
    let vmid = job.target.vmid;
    match pve.backup_storages().await {
        Ok(list) if list.iter().any(|s| s.storage == job.storage) => {
            out.check("storage", true, format!("{} takes backups here", job.storage))
        }
        Ok(list) => out.check(
            "storage",
            false,
            format!(
                "{} is not an active storage for backups here (those are: {})",
                job.storage,
                list.iter().map(|s| s.storage.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ),
        Err(e) => out.check("storage", false, e.to_string()),
    }
    if let (Some(keep), Ok(backups)) = (job.keep_last, pve.backups(&job.storage, Some(vmid)).await) {
        let unprotected = backups.iter().filter(|b| !b.protected).count() + usize::from(!job.protected);
        let pruned = unprotected.saturating_sub(keep as usize);
        out.check("retention", true, format!("keep-last={keep}: {pruned} older backup(s) of {vmid} would be pruned"));
    }
    let params = vzdump_params(job, &super::marker_of(&job.target));
    out.call(format!("POST /nodes/{}/vzdump", job.node), params);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvefleet_schemas::{ContainerTarget, NodeName, Vmid};

    #[test]
    fn the_notes_name_the_job_and_the_rules_follow_the_job() {
        let target = ContainerTarget { vmid: Vmid::new(101).unwrap(), create_job: None, hostname: None };
        let mut job = BackupJob::new(NodeName::new("pve1").unwrap(), target, "local".into());
        job.keep_last = Some(3);
        job.protected = true;
        let params = vzdump_params(&job, "pvefleet-abc");
        let notes = &params.iter().find(|(k, _)| *k == "notes-template").unwrap().1;
        assert_eq!(*notes, format!("pvefleet job {} (pvefleet-abc)\\n{{{{guestname}}}}", job.job_id));
        assert!(params.contains(&("prune-backups", "keep-last=3".into())));
        assert!(params.contains(&("protected", "1".into())));
    }
}
