//! Requests that must run once whatever happens to their answer: a reboot (a second would cut
//! off the work the first let start), a rollback (a second would discard what was written
//! since the first), a restore over a container, a backup, a migration; and a snapshot taken
//! or deleted (a second fails in its task, failing a job whose work was done).
//!
//! [`Core::once`] checkpoints the time it asks (and for which kind of task) before it sends;
//! once PVE answers, the UPID replaces it. A redelivery, or a request whose answer was lost,
//! looks in the node's task list for that kind of task begun since before it sends again, and
//! waits on the one it finds.

use std::time::Duration;

use pvefleet_schemas::{ErrorKind, LogStream, Timestamp, Vmid};

use super::{Cause, Core, StepError, Whose};
use crate::proxmox::{PveClient, PveError, Refusal, Upid};
use crate::retry;

/// A request sent once.
pub(crate) enum Once<'a> {
    Reboot {
        within: Duration,
    },
    Rollback {
        name: &'a str,
        start: bool,
    },
    Snapshot {
        name: &'a str,
        description: &'a str,
    },
    DeleteSnapshot {
        name: &'a str,
    },
    Backup {
        params: &'a [(&'a str, String)],
    },
    /// A restore: `over` a container of the job's, or as a new one (its vmid free).
    Restore {
        params: &'a [(&'a str, String)],
        over: bool,
    },
    Migrate {
        to: &'a str,
        restart: Option<Duration>,
        storage: Option<&'a str>,
    },
}

impl Once<'_> {
    /// The kinds of task it starts (the first is the one its checkpoint names): a migration of
    /// an HA-managed container is an `hamigrate`.
    fn kinds(&self) -> &'static [&'static str] {
        match self {
            Once::Reboot { .. } => &["vzreboot"],
            Once::Rollback { .. } => &["vzrollback"],
            Once::Snapshot { .. } => &["vzsnapshot"],
            Once::DeleteSnapshot { .. } => &["vzdelsnapshot"],
            Once::Backup { .. } => &["vzdump"],
            Once::Restore { .. } => &["vzrestore"],
            Once::Migrate { .. } => &["vzmigrate", "hamigrate"],
        }
    }

    async fn send(&self, pve: &PveClient, vmid: Vmid) -> Result<Upid, PveError> {
        match self {
            Once::Reboot { within } => pve.reboot_once(vmid, *within).await,
            Once::Rollback { name, start } => pve.rollback(vmid, name, *start).await,
            Once::Snapshot { name, description } => pve.take_snapshot(vmid, name, description).await,
            Once::DeleteSnapshot { name } => pve.delete_snapshot(vmid, name).await,
            Once::Backup { params } => pve.vzdump(params).await,
            Once::Restore { params, .. } => pve.restore(params).await,
            Once::Migrate { to, restart, storage } => pve.migrate(vmid, to, *restart, *storage).await,
        }
    }
}

impl Core {
    /// The task a cancelled job was waiting on: the one checkpointed, or the one it asked for
    /// (once) whose answer had not come yet, if it started.
    pub(crate) async fn cancelled_task(&self) -> Result<Option<Upid>, crate::bus::BusError> {
        let checkpointed = self.cp.upid.as_deref().and_then(|u| u.parse::<Upid>().ok());
        let (Some(vmid), Some(kind)) = (self.cp.vmid, self.cp.asked_at.as_ref().map(|_| self.asked_kind())) else {
            return Ok(checkpointed);
        };
        tokio::time::sleep(retry::ONCE_SETTLE).await;
        let kinds: &[&str] = if kind == "vzmigrate" { &["vzmigrate", "hamigrate"] } else { &[kind] };
        match self.sent_since(vmid, kinds).await {
            Ok(Some(upid)) => Ok(Some(upid)),
            Ok(None) => Ok(checkpointed),
            Err(StepError::Bus(e)) => Err(e),
            Err(StepError::Failed { message, .. }) => {
                tracing::warn!(%message, "could not look for the task asked for before the cancel");
                Ok(checkpointed)
            }
        }
    }

    /// The kind of task the checkpoint's `asked_at` is for.
    fn asked_kind(&self) -> &str {
        self.cp.asked_for.as_deref().unwrap_or("vzreboot")
    }

    /// Whether an earlier delivery asked for a task of `kind` whose UPID it never learnt.
    pub(crate) fn asked(&self, kind: &str) -> bool {
        self.cp.asked_at.is_some() && self.asked_kind() == kind
    }

    /// Sends `once` for container `vmid` unless this job sent it already, and waits for its
    /// task; returns the task. A refusal is the step's failure, its cause kept.
    pub(crate) async fn once(&mut self, vmid: Vmid, once: Once<'_>) -> Result<Upid, StepError> {
        let kinds = once.kinds();
        if let Some(upid) = kinds.iter().find_map(|k| self.pending_task(k)) {
            self.wait_task(&upid).await?;
            return Ok(upid);
        }
        if self.asked(kinds[0])
            && let Some(upid) = self.sent_since(vmid, kinds).await?
        {
            self.events.log(LogStream::Task, format!("the request sent earlier is task {upid}")).await?;
            return self.wait_sent(upid).await;
        }
        self.cp.asked_at = Some(Timestamp::now());
        self.cp.asked_for = Some(kinds[0].to_owned());
        self.save().await?;
        let mut tries = 0;
        loop {
            tries += 1;
            self.may_send(vmid, &once).await?;
            match once.send(&self.pve, vmid).await {
                Ok(upid) => return self.wait_sent(upid).await,
                Err(e) if e.is_transient() && tries < retry::ONCE_ATTEMPTS => {
                    // Carried out and its answer lost, or never carried out: the task list says
                    // which, once a request still on its way has had time to start its task.
                    tokio::time::sleep(retry::ONCE_SETTLE).await;
                    if let Some(upid) = self.sent_since(vmid, kinds).await? {
                        return self.wait_sent(upid).await;
                    }
                    tracing::warn!(error = %e, kind = kinds[0], "the request was not carried out; sending it again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Before each send (a first, or one after an answer that never came): the container still
    /// carries the job's marker, or, for a new container's restore, no container has its vmid.
    async fn may_send(&mut self, vmid: Vmid, once: &Once<'_>) -> Result<(), StepError> {
        if let Once::Restore { over: false, .. } = once {
            return match self.whose(vmid).await? {
                Whose::Nobody => Ok(()),
                Whose::Ours => Err(StepError::failed(
                    ErrorKind::Conflict,
                    format!(
                        "container {vmid} exists with this job's marker, but no restore task of this job was found: \
                         not restoring it again"
                    ),
                )),
                Whose::Strangers => Err(StepError::failed(
                    ErrorKind::Conflict,
                    format!("vmid {vmid} was taken by a guest pvefleet did not make: nothing was restored"),
                )),
            };
        }
        crate::jobs::day_two::ours(self, vmid).await.map(drop)
    }

    /// The task of one of `kinds` for `vmid` begun since this job asked (two seconds' slack
    /// for the clocks).
    async fn sent_since(&self, vmid: Vmid, kinds: &[&str]) -> Result<Option<Upid>, StepError> {
        let asked = self.cp.asked_at.as_ref().map_or(0, |t| t.0.unix_timestamp());
        let since = u64::try_from(asked).unwrap_or_default().saturating_sub(2);
        for kind in kinds {
            if let Some(upid) = self.pve.task_since(vmid, kind, since).await? {
                return Ok(Some(upid));
            }
        }
        Ok(None)
    }

    async fn wait_sent(&mut self, upid: Upid) -> Result<Upid, StepError> {
        self.cp.upid = Some(upid.to_string());
        self.cp.asked_at = None;
        self.cp.asked_for = None;
        self.save().await?;
        self.wait_task(&upid).await?;
        Ok(upid)
    }

    /// Reboots container `vmid` once (see [`Core::once`]). `Ok(false)` when it was not
    /// running (nothing rebooted).
    pub(crate) async fn reboot_once(&mut self, vmid: Vmid, within: Duration) -> Result<bool, StepError> {
        match self.once(vmid, Once::Reboot { within }).await {
            Ok(_) => Ok(true),
            Err(StepError::Failed { cause: Some(Cause::Refused(Refusal::NotRunning)), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
