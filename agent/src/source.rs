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
//! | fetching | the template onto its storage, skipped when it is there       | none: a verified template is a cache other jobs share |
//! | cloning  | `POST /lxc/{from}/clone` (the marker in its description), then `PUT config` | destroy, as for creating (the clone, never its source) |

use pvefleet_schemas::source::{CloneFrom, TemplateSource};
use pvefleet_schemas::{ErrorKind, LogStream, Vmid};
use serde_json::Value;

use crate::create::CreateJob;
use crate::proxmox::Upid;
use crate::runner::{StepError, StepResult, Whose};

impl CreateJob<'_> {
    /// The checks of validating for the spec's template source, against this node.
    pub(crate) async fn validate_source(&mut self) -> StepResult {
        let spec = &self.job.container;
        let invalid = |message: String| StepError::failed(ErrorKind::Validation, message);
        if let Some(source) = &spec.template {
            let storages = self.core.pve.template_storages().await?;
            let storage = source.storage();
            if !storages.iter().any(|s| s.storage == storage) {
                let have: Vec<&str> = storages.iter().map(|s| s.storage.as_str()).collect();
                return Err(invalid(format!(
                    "container.{}.storage: `{storage}` is not an active storage for templates on {} (it has: {})",
                    source.field(),
                    self.job.node,
                    have.join(", ")
                )));
            }
            if let TemplateSource::Appliance(a) = source
                && !self.core.pve.template_exists(&source.volid()).await?
            {
                let catalogue = self.core.pve.appliances().await?;
                if !catalogue.contains(&a.name) {
                    let mut near: Vec<&str> = catalogue.iter().map(String::as_str).collect();
                    near.truncate(8);
                    return Err(invalid(format!(
                        "container.template.appliance.name: `{}` is not in {}'s appliance catalogue \
                         (`pveam update` refreshes it; it lists: {})",
                        a.name,
                        self.job.node,
                        near.join(", ")
                    )));
                }
            }
        } else if let Some(ostemplate) = &spec.ostemplate
            && !self.core.pve.template_exists(ostemplate).await?
        {
            return Err(invalid(format!(
                "container.ostemplate: `{ostemplate}` is not a container template on {}",
                self.job.node
            )));
        }
        let Some(clone) = &spec.clone else { return Ok(()) };
        if !self.job.deploy.is_empty() && self.ssh_config.clone_key.is_none() {
            return Err(invalid(
                "container.clone: PVE cannot give a clone the job's own SSH key, so its deploy needs a key the \
                 template already trusts: set ssh.key_file in this node's agent.toml"
                    .into(),
            ));
        }
        if self.core.cp.clone_source.is_none() {
            let source = self.find_clone_source(&clone.from).await?;
            if Some(source) == spec.vmid {
                return Err(invalid(format!("container.vmid: {source} is the clone's own source")));
            }
            self.core.cp.clone_source = Some(source);
        }
        if let Some(storage) = &clone.storage {
            let storages = self.core.pve.rootdir_storages().await?;
            if !storages.iter().any(|s| &s.storage == storage) {
                return Err(invalid(format!(
                    "container.clone.storage: `{storage}` is not an active storage for containers on {}",
                    self.job.node
                )));
            }
        }
        Ok(())
    }

    /// The vmid to clone: the one given (on this node), or the one template of that name here.
    async fn find_clone_source(&self, from: &CloneFrom) -> Result<Vmid, StepError> {
        let invalid = |message: String| StepError::failed(ErrorKind::Validation, message);
        let here = self.core.pve.containers().await?;
        match from {
            CloneFrom::Vmid(vmid) => {
                if here.iter().any(|(v, _, _)| v == vmid) {
                    Ok(*vmid)
                } else {
                    Err(invalid(format!("container.clone.from: there is no container {vmid} on {}", self.job.node)))
                }
            }
            CloneFrom::Name(name) => {
                let found: Vec<Vmid> =
                    here.iter().filter(|(_, n, template)| *template && n == name).map(|(v, _, _)| *v).collect();
                match found.as_slice() {
                    [one] => Ok(*one),
                    [] => Err(invalid(format!(
                        "container.clone.from: no template called `{name}` on {} (templates here: {})",
                        self.job.node,
                        here.iter()
                            .filter(|(_, _, t)| *t)
                            .map(|(v, n, _)| format!("{n} ({v})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                    many => Err(invalid(format!(
                        "container.clone.from: {} templates are called `{name}` on {} ({}); give a vmid",
                        many.len(),
                        self.job.node,
                        many.iter().map(Vmid::to_string).collect::<Vec<_>>().join(", ")
                    ))),
                }
            }
        }
    }

    /// Puts the spec's template on its storage, unless it is there already.
    pub(crate) async fn fetch(&mut self) -> StepResult {
        let source = self.job.container.template.clone().expect("fetching runs only for a template source");
        // Fetching is the first step that starts a task: a UPID in the checkpoint is its own.
        if let Some(upid) = self.core.cp.upid.as_deref().and_then(|u| u.parse::<Upid>().ok()) {
            return self.wait_fetch(&source, &upid).await;
        }
        let volid = source.volid();
        if self.core.pve.template_exists(&volid).await? {
            self.core
                .events
                .log(LogStream::Task, format!("{volid} is on {} already; not fetched again", self.job.node))
                .await?;
            return Ok(());
        }
        let upid = match &source {
            TemplateSource::Download(d) => {
                self.core
                    .pve
                    .download_template(&d.storage, &d.filename, &d.url, &d.checksum, d.algorithm.as_str())
                    .await?
            }
            TemplateSource::Appliance(a) => self.core.pve.download_appliance(&a.storage, &a.name).await?,
            TemplateSource::Oci(o) => self.core.pve.pull_oci(&o.storage, &o.reference, &source.filename()).await?,
        };
        self.core.cp.upid = Some(upid.to_string());
        self.core.save().await?;
        self.core.events.log(LogStream::Task, format!("fetching {volid}: task {upid}")).await?;
        self.wait_fetch(&source, &upid).await
    }

    /// Waits for the fetch task. A checksum PVE refused names the spec's field; a fetch that
    /// failed while another job put the same file there counts as done.
    async fn wait_fetch(&mut self, source: &TemplateSource, upid: &Upid) -> StepResult {
        match self.core.wait_task(upid).await {
            Err(StepError::Failed { message, .. }) if message.contains("checksum mismatch") => {
                let TemplateSource::Download(d) = source else { unreachable!("only download-url checks a checksum") };
                Err(StepError::failed(
                    ErrorKind::Validation,
                    format!(
                        "container.template.download.checksum: the file at {} does not have the {} digest the spec \
                         gives; PVE kept nothing ({})",
                        d.url,
                        d.algorithm.as_str(),
                        message.lines().find(|l| l.contains("checksum mismatch")).unwrap_or_default().trim()
                    ),
                ))
            }
            Err(StepError::Failed { kind: ErrorKind::Task, message }) => {
                if self.core.pve.template_exists(&source.volid()).await? {
                    self.core
                        .events
                        .warning(format!("fetching failed, but {} is there now: using it", source.volid()))
                        .await?;
                    Ok(())
                } else {
                    Err(StepError::failed(ErrorKind::Task, message))
                }
            }
            other => other,
        }
    }

    /// Clones the source to the job's vmid (or finds the clone an earlier delivery made), then
    /// gives it the rest of the spec.
    pub(crate) async fn clone_container(&mut self) -> StepResult {
        let source = self.core.cp.clone_source.expect("validating found the clone's source");
        if let Some(upid) = self.core.pending_task("vzclone") {
            self.core.wait_task(&upid).await?;
        } else {
            loop {
                let vmid = self.core.vmid();
                let params = self.clone_params();
                let params: Vec<(&str, String)> = params.iter().map(|(k, v)| (*k, v.clone())).collect();
                match self.core.pve.clone_container(source, &params).await {
                    Ok(upid) => {
                        self.core.cp.upid = Some(upid.to_string());
                        self.core.save().await?;
                        self.core.events.log(LogStream::Task, format!("clone task {upid}")).await?;
                        self.core.wait_task(&upid).await?;
                        break;
                    }
                    Err(e) if e.is_already_exists() => match self.core.whose(vmid).await? {
                        Whose::Ours => break,
                        Whose::Strangers => self.replace_vmid(vmid).await?,
                        Whose::Nobody => {
                            if !e.message_contains(&format!("'{}'", self.job.node)) {
                                self.replace_vmid(vmid).await?;
                            }
                        }
                    },
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
        let params = self.clone_config(&cfg, &from);
        let params: Vec<(&str, String)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.core.pve.set_config(vmid, &params).await?;
        self.core.events.log(LogStream::Task, format!("the spec applied to clone {vmid} of {source}")).await?;
        Ok(())
    }

    /// What the clone call itself takes. Its description carries the marker: tags are copied
    /// from the source, and the clone's own are set only once it exists.
    fn clone_params(&self) -> Vec<(&'static str, String)> {
        let spec = &self.job.container;
        let clone = spec.clone.as_ref().expect("a clone job");
        let mut description = spec.description.clone().map(|d| format!("{d}\n\n")).unwrap_or_default();
        description.push_str(&format!("Cloned by pvefleet job {} ({})", self.job.job_id, self.core.marker));
        let mut params = vec![
            ("newid", self.core.vmid().to_string()),
            ("hostname", spec.hostname.clone()),
            ("full", u8::from(clone.full).to_string()),
            ("description", description),
        ];
        if let Some(snap) = &clone.snapshot {
            params.push(("snapname", snap.clone()));
        }
        if let Some(storage) = &clone.storage {
            params.push(("storage", storage.clone()));
        }
        if let Some(pool) = &spec.pool {
            params.push(("pool", pool.clone()));
        }
        params
    }

    /// The rest of the spec as a config update of the clone: the create's parameters but for
    /// those PVE sets only at create, the source's extra NICs deleted, and mount points added
    /// after the source's own (each only once: a mount point already there is this job's).
    fn clone_config(&self, cfg: &Value, source: &Value) -> Vec<(String, String)> {
        const CREATE_ONLY: [&str; 8] =
            ["vmid", "ostemplate", "rootfs", "unprivileged", "ssh-public-keys", "password", "pool", "hostname"];
        let mut params: Vec<(String, String)> = self
            .create_params()
            .into_iter()
            .filter(|(k, _)| !CREATE_ONLY.contains(&k.as_str()) && !k.starts_with("mp"))
            .collect();
        let nics = self.job.container.effective_nics().len();
        let has = |key: &str| cfg.get(key).is_some_and(|v| !v.is_null());
        let extra: Vec<String> = (nics..32).map(|i| format!("net{i}")).filter(|k| has(k)).collect();
        if !extra.is_empty() {
            params.push(("delete".into(), extra.join(",")));
        }
        // The source's mount points keep their numbers; the spec's follow the highest of them.
        let first =
            (0..256).rev().find(|i| source.get(format!("mp{i}")).is_some_and(|v| !v.is_null())).map_or(0, |i| i + 1);
        for (i, mp) in self.job.container.mounts.iter().enumerate() {
            let key = format!("mp{}", first + i);
            if !has(&key) {
                params.push((key, mp.to_pve()));
            }
        }
        params
    }
}
