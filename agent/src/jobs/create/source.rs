//! Where a create job's container comes from, when it is not a template already on the node:
//! the fetching step (a template downloaded with its checksum, one from pveam's catalogue, an
//! OCI image pulled) and the cloning step (a clone of another container, then the rest of the
//! spec as its config). Both follow the create step's rules: look first, checkpoint the task's
//! UPID before waiting on it, and own only what carries the job's marker. A clone whose answer
//! was lost is found again by that marker; a fetch whose answer was lost may be sent again,
//! which fetches the same verified file a second time and changes nothing else.
//!
//! | step     | does                                                          | undo                                 |
//! |----------|---------------------------------------------------------------|--------------------------------------|
//! | fetching | the template onto its storage, skipped when this agent fetched it there as the same thing, unchanged since | none: a verified template is a cache other jobs share |
//! | cloning  | `POST /lxc/{from}/clone` (the marker in its description), then `PUT config` | destroy, as for creating (the clone, never its source) |

use pvefleet_schemas::source::TemplateSource;
use pvefleet_schemas::{ErrorKind, LogStream};
use serde_json::Value;

use super::CreateJob;
use super::params::{clone_config, clone_params};
use crate::jobs::{Cause, StepError, StepResult};
use crate::proxmox::Upid;
use crate::proxmox::task::TaskFailure;

impl CreateJob<'_> {
    /// Puts the spec's template on its storage, unless this agent fetched it there itself as
    /// the same thing and it is unchanged since ([`crate::cache`]): a file of that name that
    /// anyone else may have written is fetched again, which PVE verifies.
    pub(crate) async fn fetch(&mut self) -> StepResult {
        let source = self.job.container.template.clone().expect("fetching runs only for a template source");
        // Fetching is the first step that starts a task: a UPID in the checkpoint is its own.
        if let Some(upid) = self.core.cp.upid.as_deref().and_then(|u| u.parse::<Upid>().ok()) {
            return self.wait_fetch(&source, &upid).await;
        }
        let volid = source.volid();
        if let Some(file) = self.core.pve.template_file(&volid).await? {
            if self.ledger.vouches(&volid, &crate::cache::identity(&source), file.size, file.ctime) {
                self.core
                    .events
                    .log(
                        LogStream::Task,
                        format!("{volid} is on {} already, as this agent fetched it; not fetched again", self.job.node),
                    )
                    .await?;
                return Ok(());
            }
            self.core
                .events
                .warning(format!(
                    "{volid} is on {} but not as this agent fetched it for this {}; fetching it again",
                    self.job.node,
                    source.field()
                ))
                .await?;
        }
        let upid = self.core.pve.fetch(&crate::proxmox::Fetch::of(&source)).await?;
        self.core.cp.upid = Some(upid.to_string());
        self.core.save().await?;
        self.core.events.log(LogStream::Task, format!("fetching {volid}: task {upid}")).await?;
        self.wait_fetch(&source, &upid).await
    }

    /// Waits for the fetch task, then records the file in the ledger. A checksum PVE refused
    /// names the spec's field; a fetch that failed while another job of this agent fetched the
    /// same thing there counts as done.
    async fn wait_fetch(&mut self, source: &TemplateSource, upid: &Upid) -> StepResult {
        let volid = source.volid();
        let identity = crate::cache::identity(source);
        match self.core.wait_task(upid).await {
            Ok(()) => {}
            Err(StepError::Failed { cause: Some(Cause::Task(TaskFailure::ChecksumMismatch { detail })), .. }) => {
                let TemplateSource::Download(d) = source else { unreachable!("only download-url checks a checksum") };
                return Err(StepError::failed(
                    ErrorKind::Validation,
                    format!(
                        "container.template.download.checksum: the file at {} does not have the {} digest the spec \
                         gives; PVE kept nothing ({detail})",
                        d.url,
                        d.algorithm.as_str(),
                    ),
                ));
            }
            Err(StepError::Failed { kind: ErrorKind::Task, message, .. }) => {
                let file = self.core.pve.template_file(&volid).await?;
                if file.is_some_and(|f| self.ledger.vouches(&volid, &identity, f.size, f.ctime)) {
                    self.core.events.warning(format!("fetching failed, but {volid} is there now: using it")).await?;
                    return Ok(());
                }
                return Err(StepError::failed(ErrorKind::Task, message));
            }
            Err(other) => return Err(other),
        }
        match self.core.pve.template_file(&volid).await? {
            Some(file) => {
                if let Err(e) = self.ledger.record(&volid, &identity, file.size, file.ctime) {
                    // The next job fetches it again, verified: slower, never wrong.
                    tracing::warn!(error = %pvefleet_schemas::report::error_chain(&e), %volid, "the template ledger could not be written");
                }
                Ok(())
            }
            None => Err(StepError::failed(
                ErrorKind::Task,
                format!("the fetch task ended OK but {volid} is not on its storage"),
            )),
        }
    }

    /// Clones the source to the job's vmid (or finds the clone an earlier delivery made), then
    /// gives it the rest of the spec.
    pub(crate) async fn clone_container(&mut self) -> StepResult {
        let source = self.core.cp.clone_source.expect("validating found the clone's source");
        if let Some(upid) = self.core.pending_task("vzclone") {
            self.core.wait_task(&upid).await?;
        } else {
            let mut tries = 0;
            loop {
                let vmid = self.core.vmid();
                let params = clone_params(self.job, vmid, &self.core.marker);
                let params: Vec<(&str, String)> = params.iter().map(|(k, v)| (*k, v.clone())).collect();
                match self.core.pve.clone_container(source, &params).await {
                    Ok(upid) => {
                        self.core.cp.upid = Some(upid.to_string());
                        self.core.save().await?;
                        self.core.events.log(LogStream::Task, format!("clone task {upid}")).await?;
                        self.core.wait_task(&upid).await?;
                        break;
                    }
                    Err(e) if e.is_already_exists() => {
                        if self.already_exists(&e, vmid, &mut tries).await? {
                            break;
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let vmid = self.core.vmid();
        let cfg = self.core.pve.container_config(vmid).await?.ok_or_else(|| {
            StepError::failed(ErrorKind::Proxmox, format!("the clone {vmid} is gone after its clone task ended"))
        })?;
        // The source's config is what the clone started from, whatever this job added since.
        let from = self.core.pve.container_config(source).await?.unwrap_or(Value::Null);
        let params = clone_config(self.create_params(), self.job, &cfg, &from);
        let params: Vec<(&str, String)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.core.pve.set_config(vmid, &params).await?;
        self.core.events.log(LogStream::Task, format!("the spec applied to clone {vmid} of {source}")).await?;
        Ok(())
    }
}
