//! The create job, as a table of steps read top to bottom, run by the engine in [`crate::jobs`]. Each step
//! is idempotent: it checks the world before acting and records its outputs (vmid, UPID, IP)
//! in the job's checkpoint before the next step starts, so a redelivered job resumes where the
//! last agent stopped. Ownership is proven by the marker tag `pvefleet-<short job id>`: a
//! container without it is never touched, whatever step we are in.
//!
//! | step        | does                                                        | undo                              |
//! |-------------|-------------------------------------------------------------|-----------------------------------|
//! | validating  | storage, template, bridge exist here; vmid given or allocated | none: reads only                |
//! | fetching    | a downloaded, catalogue or OCI template onto its storage (`source.rs`) | none: a shared cache     |
//! | cloning     | for a clone: `POST /lxc/{from}/clone`, then `PUT config` (`source.rs`) | destroy, as for creating |
//! | creating    | `POST /lxc` with the marker; waits for the task, tails its log | destroy (stop, then delete+purge) |
//! | starting    | start; waits for the task and for `running`                 | covered by creating's destroy     |
//! | connecting  | the container's IP from `/interfaces`                       | none: reads only                  |
//! | deploying   | packages, files and scripts over SSH                        | covered by creating's destroy     |
//! | finalizing  | the `complete` event (the description went with the create) | none                              |
//!
//! On failure the rollback policy applies (`destroy` runs the undos, `keep` leaves the
//! container), then exactly one `error` event ends the job.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use pvefleet_schemas::seal::SecretKey;
use pvefleet_schemas::{ErrorInfo, ErrorKind, Job, JobResult, LogStream, RollbackPolicy, Step, Vmid};
use tokio_util::sync::CancellationToken;

pub mod deploy;
mod keys;
pub(crate) mod params;
mod source;
pub(crate) mod vmid;

use crate::config::SshConfig;
use crate::jobs::{Claimed, Core, Env, JobEnd, Saga, StepError, StepResult, StepRow, Undone, Whose, always};
use crate::proxmox::{PveError, Refusal};
use crate::retry::{self, Wait};
use crate::ssh::SshSession;

fn fetches(job: &Job) -> bool {
    job.container.template.is_some()
}

fn clones(job: &Job) -> bool {
    job.container.clone.is_some()
}

fn creates(job: &Job) -> bool {
    job.container.clone.is_none()
}

const STEPS: [StepRow<Job>; 8] = [
    StepRow { step: Step::Validating, percent: 2, what: "checking the spec against this node", runs: always },
    StepRow { step: Step::Fetching, percent: 4, what: "fetching the template", runs: fetches },
    StepRow { step: Step::Cloning, percent: 8, what: "cloning the container", runs: clones },
    StepRow { step: Step::Creating, percent: 10, what: "creating the container", runs: creates },
    StepRow { step: Step::Starting, percent: 45, what: "starting the container", runs: always },
    StepRow { step: Step::Connecting, percent: 60, what: "waiting for the container's IP address", runs: always },
    StepRow { step: Step::Deploying, percent: 70, what: "deploying into the container", runs: always },
    StepRow { step: Step::Finalizing, percent: 95, what: "finalizing", runs: always },
];

/// Runs (or resumes) a claimed create job to its end.
pub async fn run(job: &Job, claimed: Claimed, env: Env<'_>, cancel: &CancellationToken) -> JobEnd {
    let mut core = Core::new(job.job_id, &job.node, claimed, env, job.job_id.marker_tag(), job.options.timeouts.task.0);
    core.reads_task_logs = Some(host_keys_in_log);
    let mut saga = CreateJob {
        core,
        job,
        ssh_config: &env.config.ssh,
        files_dir: &env.config.files_dir,
        allow: &env.config.allow,
        clone_right: env.grant.clone_from,
        signer_name: env.grant.name.clone(),
        ledger: env.ledger,
        sealing: env.sealing,
        password: None,
        ssh: None,
        remote_tmp: None,
        log_bytes: 0,
    };
    crate::jobs::run_in_span(&mut saga, env.stop, cancel, "create").await
}

/// PVE prints the new container's host keys in its create task's log: only those are trusted.
fn host_keys_in_log(upid: &crate::proxmox::Upid, line: &str, cp: &mut pvefleet_schemas::Checkpoint) {
    if upid.kind() == "vzcreate" {
        for fp in crate::ssh::fingerprints_in(line) {
            if !cp.announced_host_keys.contains(&fp) {
                cp.announced_host_keys.push(fp);
            }
        }
    }
}

pub(crate) struct CreateJob<'a> {
    /// The run's events, checkpoint, lease and Proxmox API.
    pub(crate) core: Core,
    pub(crate) job: &'a Job,
    pub(crate) ssh_config: &'a SshConfig,
    /// Where `deploy.files[].source` may read from.
    pub(crate) files_dir: &'a std::path::Path,
    /// What the node's operator lets jobs reach beyond their own.
    pub(crate) allow: &'a crate::config::Allow,
    /// Which containers the job's signer may clone.
    pub(crate) clone_right: pvefleet_schemas::trust::CloneFrom,
    /// Who signed the job, as the policy names them (for the audit trail).
    pub(crate) signer_name: String,
    /// The templates this agent fetched itself, and as what.
    pub(crate) ledger: &'a crate::cache::Ledger,
    /// The agent's own key: opens the root password, seals the job's SSH key.
    pub(crate) sealing: &'a SecretKey,
    /// The root password, opened at validating; held in memory only.
    pub(crate) password: Option<pvefleet_schemas::Secret>,
    /// The deploy's one SSH connection, made in connecting and reused by deploying.
    pub(crate) ssh: Option<Arc<SshSession>>,
    /// A private dir in the container for script files, removed when the deploy ends.
    pub(crate) remote_tmp: Option<String>,
    /// Bytes of script output this run has forwarded as events.
    pub(crate) log_bytes: usize,
}

impl CreateJob<'_> {
    async fn do_step(&mut self, step: Step) -> StepResult {
        match step {
            Step::Validating => self.validate().await,
            Step::Fetching => self.fetch().await,
            Step::Cloning => self.clone_container().await,
            Step::Creating => self.create().await,
            Step::Starting => self.start().await,
            Step::Connecting => self.connect().await,
            Step::Deploying => self.deploy().await,
            // The description was set with the create (or the clone's config): nothing is left
            // to send; the step stays for its event, the contract's last before `complete`.
            Step::Finalizing => Ok(()),
            other => unreachable!("{other} is not a step of a create job"),
        }
    }

    pub(crate) fn timeouts(&self) -> pvefleet_schemas::Timeouts {
        self.job.options.timeouts
    }

    /// Opens the root password sealed to this agent (every delivery: it is never stored), and
    /// checks every sealed file opens here too, before anything is made.
    fn open_password(&mut self) -> StepResult {
        for (i, file) in self.job.deploy.files.iter().enumerate() {
            if let Some(sealed) = &file.sealed {
                self.sealing.open_for_job(&self.job.job_id, sealed).map_err(|e| {
                    StepError::failed(
                        ErrorKind::Validation,
                        format!("deploy.files[{i}].sealed: {e}; it cannot be opened here"),
                    )
                })?;
            }
        }
        if let Some(sealed) = &self.job.container.root_password {
            let pw = self.sealing.open_for_job(&self.job.job_id, sealed).map_err(|e| {
                StepError::failed(
                    ErrorKind::Validation,
                    format!("container.root_password: {e}; it cannot be opened here"),
                )
            })?;
            self.password = Some(pw);
        }
        Ok(())
    }

    /// Checks the spec against this node and chooses the vmid. The node's facts may come from
    /// what the agent read lately ([`crate::proxmox::Facts`]); a check refused on them is asked
    /// again on fresh ones, so a stale fact never refuses a job.
    async fn validate(&mut self) -> StepResult {
        crate::jobs::checks::files(self.job, self.files_dir)?;
        crate::jobs::checks::rights(&self.job.container, self.core.pve.is_root_login())?;
        let facts = self.core.pve.with_facts();
        let source = match self.check_node(&facts).await {
            Err(StepError::Failed { kind: ErrorKind::Validation, .. }) => {
                facts.forget_facts();
                self.check_node(&facts).await
            }
            other => other,
        };
        if let Err(StepError::Failed { kind: ErrorKind::Unauthorized, message, .. }) = &source {
            // The policy's one rule decided where the source is found: in the trail as well.
            let record = pvefleet_schemas::trust::AuditRecord {
                v: pvefleet_schemas::V1,
                at: pvefleet_schemas::Timestamp::now(),
                node: Some(self.core.node.clone()),
                action: "create".into(),
                job_id: Some(self.job.job_id),
                signer: self.job.auth.as_ref().map(|a| a.signer.clone()),
                signer_name: Some(self.signer_name.clone()),
                user: self.job.auth.as_ref().and_then(|a| a.user.clone()),
                decision: pvefleet_schemas::trust::Decision::Refused,
                rule: Some("clone_from".into()),
                message: message.clone(),
            };
            crate::trust::audit(&self.core.bus.js, &self.core.node, &record, None).await?;
        }
        let (_, source) = source?;
        self.core.cp.clone_source = source;
        // A clone cannot be given the job's own key at create: its deploy logs in with
        // `ssh.key_file`, then swaps the job's key in for that shared one.
        let keeps_shared_key = self.job.container.clone.as_ref().is_some_and(|c| c.keep_key);
        if !self.job.deploy.is_empty() && self.core.cp.ssh_key.is_none() && !keeps_shared_key {
            self.core.cp.ssh_key = Some(keys::new_job_key(self.sealing, &self.job.job_id)?);
        }
        if self.core.cp.vmid.is_none() {
            self.choose_vmid().await?;
        }
        crate::jobs::checks::volumes(self.job, self.core.cp.vmid, self.allow)?;
        Ok(())
    }

    /// The checks that read the node: storages, bridges, where a fetch goes, the template
    /// source (and a clone's source vmid).
    async fn check_node(&self, pve: &crate::proxmox::PveClient) -> Result<(String, Option<Vmid>), StepError> {
        crate::jobs::checks::storage(pve, self.job).await?;
        crate::jobs::checks::network(pve, self.job).await?;
        crate::jobs::checks::fetch_target(pve, self.job, self.allow).await?;
        let has_clone_key = self.ssh_config.clone_key.is_some();
        crate::jobs::checks::source(
            pve,
            self.job,
            has_clone_key,
            self.core.cp.clone_source,
            self.allow,
            self.clone_right,
        )
        .await
    }

    /// The job's vmid: the container an earlier delivery made (when the checkpoint that knew it
    /// was lost), else the spec's, else one allocated and reserved for this job.
    async fn choose_vmid(&mut self) -> StepResult {
        if self.core.resumed
            && let Some(vmid) = self.find_marked().await?
        {
            self.core
                .events
                .warning(format!("the job's checkpoint was lost; found its container {vmid} by its marker"))
                .await?;
            self.core.cp.vmid = Some(vmid);
            return Ok(());
        }
        match self.job.container.vmid {
            Some(vmid) => {
                match self.core.whose(vmid).await? {
                    Whose::Strangers => return Err(self.conflict(vmid)),
                    // Not a container here, but maybe a VM, or a guest on another node.
                    Whose::Nobody if !self.core.pve.vmid_is_free(vmid).await? => return Err(self.conflict(vmid)),
                    _ => {}
                }
                self.core.cp.vmid = Some(vmid);
            }
            None => {
                self.core.cp.vmid = Some(self.allocate().await?);
            }
        }
        Ok(())
    }

    /// This job's container on this node, found by its marker, from one listing of the node's
    /// containers: the marker tag; else, among the containers still being made here (a
    /// create's config has no tags until its task ends) and, for a clone, those named as the
    /// spec's hostname, the config that carries the marker (a clone's description has it from
    /// the start). Creates in progress are waited out, all within one task timeout; one still
    /// running then fails the job rather than risk a second container. This runs only for a
    /// job that lost its checkpoint.
    async fn find_marked(&mut self) -> Result<Option<Vmid>, StepError> {
        let marker = self.core.marker.clone();
        let listed = self.core.pve.containers_here().await?;
        if let Some(l) = listed.iter().find(|l| l.tags.as_deref().is_some_and(|t| crate::proxmox::has_tag(t, &marker)))
        {
            return Ok(Some(l.vmid));
        }
        let hostname = &self.job.container.hostname;
        let clone = self.job.container.clone.is_some();
        let mut pending: Vec<Vmid> = listed
            .iter()
            .filter(|l| l.lock.as_deref() == Some("create") || (clone && l.name.as_ref() == Some(hostname)))
            .map(|l| l.vmid)
            .collect();
        let mut wait = Wait::new(retry::LOST_CHECKPOINT, self.core.task_timeout);
        let mut said = false;
        while !pending.is_empty() {
            let mut still = Vec::new();
            for vmid in pending {
                let Some(cfg) = self.core.pve.container_config(vmid).await? else { continue };
                if crate::jobs::is_ours(&cfg, &marker) {
                    return Ok(Some(vmid));
                }
                if cfg.get("lock").and_then(serde_json::Value::as_str) == Some("create") {
                    still.push(vmid);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if !said {
                self.core
                    .events
                    .warning(format!(
                        "the job's checkpoint was lost; waiting for the container(s) {pending:?} being created here, \
                         one may be its own"
                    ))
                    .await?;
                said = true;
            }
            if !wait.pause().await {
                return Err(StepError::failed(
                    ErrorKind::Timeout,
                    format!(
                        "the job's checkpoint was lost and container(s) {pending:?} on {} are still being created after \
                         {:?}; one may be this job's, so no other is made",
                        self.job.node, wait.within
                    ),
                ));
            }
        }
        for (node, vmid) in self.core.pve.guests_tagged(&marker).await? {
            if node == self.job.node.as_str() {
                continue;
            }
            tracing::warn!(%node, %vmid, "a container with this job's marker is on another node; ignored");
        }
        Ok(None)
    }

    async fn allocate(&self) -> Result<Vmid, StepError> {
        let deadline = Instant::now() + self.timeouts().task.0;
        Ok(vmid::allocate(&self.core.pve, &self.core.bus.vmids, self.job.job_id, &self.job.node, deadline).await?)
    }

    fn conflict(&self, vmid: Vmid) -> StepError {
        StepError::failed(
            ErrorKind::Conflict,
            format!(
                "vmid {vmid} is taken by a container pvefleet did not create (it lacks the tag {}); it is left untouched",
                self.core.marker
            ),
        )
    }

    /// Creates the container, or finds the one this job already created.
    async fn create(&mut self) -> StepResult {
        if let Some(upid) = self.core.pending_task("vzcreate") {
            // A create was sent by an earlier delivery: wait for it, never send it twice.
            self.core.wait_task(&upid).await?;
            return Ok(());
        }
        let mut tries = 0;
        loop {
            let vmid = self.core.vmid();
            // No look first: the vmid was just found free (or checked at validating), and PVE
            // answers "already exists" if it is not; then the look tells whose it is.
            let params = self.create_params();
            let params: Vec<(&str, String)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            match self.core.pve.create_container(&params).await {
                Ok(upid) => {
                    self.core.cp.upid = Some(upid.to_string());
                    self.core.save().await?;
                    self.core.events.log(LogStream::Task, format!("create task {upid}")).await?;
                    self.core.wait_task(&upid).await?;
                    return Ok(());
                }
                Err(e) if e.is_already_exists() => {
                    if self.already_exists(&e, vmid, &mut tries).await? {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// PVE answered that `vmid` already exists: is it ours (made by an attempt whose answer or
    /// UPID checkpoint was lost)? A stranger's vmid is replaced (or a conflict, when the spec
    /// fixed it); one on another node likewise; one PVE says is here although no container
    /// has it is a create that failed and is gone again (tried again after a pause) or not a
    /// container at all, a VM, which a few tries tell. A container still being created carries
    /// no tags yet: `whose` waits its create out before reading the marker.
    pub(crate) async fn already_exists(
        &mut self,
        e: &PveError,
        vmid: Vmid,
        tries: &mut u32,
    ) -> Result<bool, StepError> {
        match self.core.whose(vmid).await? {
            Whose::Ours => return Ok(true),
            Whose::Strangers => self.replace_vmid(vmid).await?,
            // PVE does not say it is on this node: a guest elsewhere, which this node cannot see.
            Whose::Nobody if !matches!(e.refusal(), Some(Refusal::AlreadyExists { on: Some(on) }) if on == self.job.node.as_str()) => {
                self.replace_vmid(vmid).await?
            }
            Whose::Nobody => {
                *tries += 1;
                if *tries >= retry::ALREADY_EXISTS_LOOKS {
                    self.replace_vmid(vmid).await?;
                } else {
                    tokio::time::sleep(retry::ALREADY_EXISTS_PAUSE * *tries).await;
                }
            }
        }
        Ok(false)
    }

    /// An allocated vmid lost to a stranger is replaced; a vmid the spec fixed is a conflict.
    pub(crate) async fn replace_vmid(&mut self, vmid: Vmid) -> StepResult {
        if self.job.container.vmid.is_some() {
            return Err(self.conflict(vmid));
        }
        // The node's facts did not know the guest on it: read them again.
        self.core.pve.forget_facts();
        let next = self.allocate().await?;
        self.core.events.warning(format!("vmid {vmid} was taken meanwhile; using {next}")).await?;
        self.core.cp.vmid = Some(next);
        self.core.save().await?;
        Ok(())
    }

    /// PVE's create parameters for the spec, with the job's key and the opened password.
    pub(crate) fn create_params(&self) -> Vec<(String, String)> {
        let password = self.password.as_ref().map(|p| p.expose().to_owned());
        params::create_params(self.job, self.core.vmid(), &self.core.marker, self.job_public_key(), password)
    }

    /// Starts the container and waits for its start task: a start whose task ended OK has a
    /// running container, and one already running needs nothing more.
    async fn start(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        let upid = match self.core.pending_task("vzstart") {
            Some(upid) => upid,
            None => match self.core.pve.start(vmid).await {
                Ok(upid) => {
                    self.core.cp.upid = Some(upid.to_string());
                    self.core.save().await?;
                    upid
                }
                Err(e) if e.refusal() == Some(Refusal::AlreadyRunning) => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        };
        self.core.wait_task(&upid).await
    }

    /// Reads the container's address, polling while DHCP has not given it one yet.
    async fn connect(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        // The NIC the spec names for SSH, else the first.
        let spec = &self.job.container;
        let nics = spec.effective_nics();
        let nic = spec.ssh_nic.clone().unwrap_or_else(|| nics[0].name.clone());
        let configured: Vec<IpAddr> = nics
            .iter()
            .filter(|n| n.name == nic)
            .flat_map(|n| {
                let v4 = match n.ip {
                    Some(pvefleet_schemas::lxc::Ipv4Setting::Static { addr, .. }) => Some(IpAddr::V4(addr)),
                    _ => None,
                };
                let v6 = match n.ip6 {
                    Some(pvefleet_schemas::lxc::Ipv6Setting::Static { addr, .. }) => Some(IpAddr::V6(addr)),
                    _ => None,
                };
                v4.into_iter().chain(v6)
            })
            .collect();
        let mut wait = Wait::new(retry::ADDRESS, self.timeouts().ip.0);
        let ip: IpAddr = loop {
            if let Some(ip) = self.core.pve.container_ip(vmid, &nic, &configured).await? {
                break ip;
            }
            if !wait.pause().await {
                return Err(StepError::failed(
                    ErrorKind::Timeout,
                    format!(
                        "container {vmid} has no address on {nic} after {:?} ({}); is DHCP serving its bridge?",
                        wait.within,
                        self.job
                            .container
                            .effective_nics()
                            .iter()
                            .find(|n| n.name == nic)
                            .map(|n| n.to_pve())
                            .unwrap_or_default()
                    ),
                ));
            }
        };
        self.core.cp.ip = Some(ip);
        self.core.events.log(LogStream::Task, format!("container {vmid} has address {ip}")).await?;
        if !self.job.deploy.is_empty() {
            self.open_ssh().await?;
        }
        Ok(())
    }

    /// Stops and destroys this job's container, unless the policy keeps it. Already gone is
    /// success; a container without our marker is never touched; one still being created is
    /// waited out first (it may be ours, from a create whose answer was lost).
    async fn rollback(&mut self) -> Result<Undone, StepError> {
        let Some(vmid) = self.core.cp.vmid else {
            return Ok(Undone::Nothing(None));
        };
        if self.job.options.rollback == RollbackPolicy::Keep {
            return Ok(Undone::Nothing(Some(format!("container {vmid} kept (rollback: keep)"))));
        }
        self.core.events.step_event(Step::RollingBack, 0, format!("rolling back: destroying container {vmid}")).await?;
        match self.core.whose(vmid).await? {
            Whose::Nobody => {
                return Ok(Undone::Nothing(Some(format!("nothing left behind (container {vmid} does not exist)"))));
            }
            Whose::Strangers => {
                return Ok(Undone::Nothing(Some(format!("container {vmid} is not this job's; left untouched"))));
            }
            Whose::Ours => {}
        }
        if self.job.container.protection {
            // PVE will not remove a protected container; this one is ours to unprotect.
            self.core.pve.set_config(vmid, &[("protection", "0".to_owned())]).await?;
        }
        self.core.stop_and_delete(vmid).await?;
        Ok(Undone::Destroyed(vmid))
    }
}

impl Saga for CreateJob<'_> {
    crate::jobs::saga_parts!(Job);

    fn prepare(&mut self) -> StepResult {
        self.open_password()
    }

    async fn step(&mut self, step: Step) -> StepResult {
        let result = self.do_step(step).await;
        if result.is_err() && matches!(step, Step::Fetching | Step::Cloning | Step::Creating | Step::Starting) {
            // A missing template, a full storage, a bridge PVE refused: what the node's facts
            // said may be what failed, so the next job reads them again.
            self.core.pve.forget_facts();
        }
        result
    }

    async fn undo(&mut self) -> Result<Undone, StepError> {
        self.rollback().await
    }

    fn result(&mut self, error: Option<ErrorInfo>, rolled_back: bool) -> JobResult {
        let cp = &self.core.cp;
        JobResult {
            success: error.is_none(),
            job_id: self.job.job_id,
            node: self.job.node.clone(),
            vmid: cp.vmid,
            ip: cp.ip,
            error,
            rolled_back,
            host_key: cp.host_key.clone(),
            moved_to: None,
        }
    }

    fn completed(&mut self) -> String {
        let ip = self.core.cp.ip.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
        format!("container {} is running at {ip}", self.core.vmid())
    }

    async fn close(&mut self) {
        if let Some(ssh) = self.ssh.take() {
            self.close_ssh(ssh).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_table_runs_in_contract_order_with_rising_percent() {
        let steps: Vec<Step> = STEPS.iter().map(|r| r.step).collect();
        assert_eq!(
            steps,
            [
                Step::Validating,
                Step::Fetching,
                Step::Cloning,
                Step::Creating,
                Step::Starting,
                Step::Connecting,
                Step::Deploying,
                Step::Finalizing
            ]
        );
        assert!(STEPS.windows(2).all(|w| w[0].percent < w[1].percent && w[0].step < w[1].step));
    }
}
