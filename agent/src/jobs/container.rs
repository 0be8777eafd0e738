//! A container as every job kind handles it: whose it is (judged by the job's marker, after
//! waiting out a create under way), and stopping and deleting one the job has proven its own.
//!
//! Ownership is proven by a marker tag (`pvefleet-<short job id>`): [`Core::owner_of`] waits
//! out a container's create before it reads the marker, and a container without it is never
//! touched.

use pvefleet_schemas::{ErrorKind, LogStream, Vmid};
use serde_json::Value;

use super::{Cause, Core, StepError, StepResult};
use crate::proxmox::Refusal;
use crate::proxmox::task::TaskFailure;
use crate::retry::{self, Wait};

impl Core {
    /// Who a vmid belongs to on this node, `ours` telling from its config, with that config.
    /// A container still being created carries no tags yet (PVE writes its config, marker
    /// included, only when the create task has unpacked the template), so its create is
    /// waited out before it is judged: the create may be this job's own, sent by an attempt
    /// whose answer was lost.
    pub(crate) async fn owner_of(
        &mut self,
        vmid: Vmid,
        ours: impl Fn(&Value) -> bool,
    ) -> Result<(Whose, Option<Value>), StepError> {
        let mut wait = Wait::new(retry::CREATE_LOCK, self.task_timeout);
        let mut said = false;
        loop {
            let Some(cfg) = self.pve.container_config(vmid).await? else {
                return Ok((Whose::Nobody, None));
            };
            if cfg.get("lock").and_then(Value::as_str) != Some("create") {
                let whose = if ours(&cfg) { Whose::Ours } else { Whose::Strangers };
                return Ok((whose, Some(cfg)));
            }
            if !said {
                self.events
                    .log(LogStream::Task, format!("container {vmid} is being created; waiting for its create to end"))
                    .await?;
                said = true;
            }
            if !wait.pause().await {
                return Err(StepError::failed(
                    ErrorKind::Timeout,
                    format!("container {vmid} still being created (lock: create) after {:?}", wait.within),
                ));
            }
        }
    }

    /// Who a vmid belongs to, judged by this job's marker.
    pub(crate) async fn whose(&mut self, vmid: Vmid) -> Result<Whose, StepError> {
        let marker = self.marker.clone();
        Ok(self.owner_of(vmid, |cfg| is_ours(cfg, &marker)).await?.0)
    }

    /// Stops container `vmid` if it runs, then deletes it with its disks and every reference
    /// to it. Already gone is success. The caller has proven the container is its own.
    pub(crate) async fn stop_and_delete(&mut self, vmid: Vmid) -> StepResult {
        if self.pve.status(vmid).await?.status == "running" {
            match self.pve.stop(vmid).await {
                Ok(upid) => self.wait_task(&upid).await?,
                Err(e) if e.refusal() == Some(Refusal::NotRunning) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.delete(vmid).await
    }

    /// Deletes a stopped container with `purge` and `destroy-unreferenced-disks`; a delete
    /// that loses the race for the container's lock ("got timeout") is tried again.
    pub(crate) async fn delete(&mut self, vmid: Vmid) -> StepResult {
        for attempt in 1..=retry::DELETE_ATTEMPTS {
            let outcome = match self.pve.destroy(vmid).await {
                Ok(upid) => {
                    // Checkpointed, so a redelivery waits on this delete instead of sending another.
                    self.cp.upid = Some(upid.to_string());
                    self.save().await?;
                    self.wait_task(&upid).await
                }
                Err(e) if e.is_missing() => Ok(()),
                Err(e) => Err(e.into()),
            };
            match outcome {
                Err(StepError::Failed { cause: Some(Cause::Task(TaskFailure::LockTimeout)), .. })
                    if attempt < retry::DELETE_ATTEMPTS =>
                {
                    self.events
                        .warning(format!("destroying container {vmid}: the lock was busy; trying again"))
                        .await?;
                }
                other => return other,
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// Whether a container carries `marker`, or any pvefleet marker when `marker` is empty.
pub(crate) fn carries_marker(cfg: &Value, marker: &str) -> bool {
    if marker.is_empty() { has_any_marker(cfg) } else { is_ours(cfg, marker) }
}

/// Whether a container carries any pvefleet marker tag.
pub(crate) fn has_any_marker(cfg: &Value) -> bool {
    cfg.get("tags").and_then(Value::as_str).is_some_and(crate::proxmox::has_marker_tag)
}

/// Who holds a vmid on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whose {
    /// No container has it here.
    Nobody,
    /// A container with the job's marker.
    Ours,
    /// A container without it: never touched.
    Strangers,
}

/// Whether a container's config carries `marker`: as a tag, or, on a clone whose tags are
/// still its source's, in the description the clone call gave it (`(<marker>)`).
pub(crate) fn is_ours(cfg: &Value, marker: &str) -> bool {
    cfg.get("tags").and_then(Value::as_str).is_some_and(|tags| crate::proxmox::has_tag(tags, marker))
        || cfg.get("description").and_then(Value::as_str).is_some_and(|d| {
            d.lines().any(|l| l.starts_with("Cloned by pvefleet job ") && l.ends_with(&format!("({marker})")))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_pvefleet_marker_counts_when_named_by_vmid() {
        assert!(has_any_marker(&serde_json::json!({"tags": "web;pvefleet-01jdq8z3"})));
        assert!(!has_any_marker(&serde_json::json!({"tags": "web;fleet"})));
        assert!(!has_any_marker(&serde_json::json!({})));
        assert!(carries_marker(&serde_json::json!({"tags": "pvefleet-x"}), ""));
        assert!(!carries_marker(&serde_json::json!({"tags": "pvefleet-x"}), "pvefleet-y"));
    }

    #[test]
    fn ownership_is_the_marker_tag() {
        let cfg = serde_json::json!({"tags": "prod;pvefleet-abc123;web"});
        assert!(is_ours(&cfg, "pvefleet-abc123"));
        assert!(!is_ours(&cfg, "pvefleet-abc12"));
        assert!(!is_ours(&serde_json::json!({}), "pvefleet-abc123"));
        let cloning = serde_json::json!({"tags": "template", "description": "web\n\nCloned by pvefleet job 01J (pvefleet-abc123)"});
        assert!(is_ours(&cloning, "pvefleet-abc123"));
        assert!(!is_ours(&serde_json::json!({"description": "see pvefleet-abc123"}), "pvefleet-abc123"));
    }
}
