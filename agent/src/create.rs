//! The create job, as a table of steps read top to bottom. Each step is idempotent: it checks
//! the world before acting and records its outputs (vmid, UPID, IP) in the job's checkpoint
//! before the next step starts, so a redelivered job resumes where the last agent stopped.
//! Ownership is proven by the marker tag `pvefleet-<short job id>`: a container without it is
//! never touched, whatever step we are in.
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
//! | finalizing  | description; the `complete` event                           | none                              |
//!
//! On failure the rollback policy applies (`destroy` runs the undos, `keep` leaves the
//! container), then exactly one `error` event ends the job.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use pvefleet_schemas::{
    Checkpoint, ContainerSpec, ErrorInfo, ErrorKind, EventType, Job, JobResult, LogStream, RollbackPolicy, Step, Vmid,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use std::sync::Arc;

use crate::bus::{Bus, BusError, EventLog};
use crate::claim::{Claim, Taken};
use crate::config::{Config, SshConfig};
use crate::proxmox::task::{TaskProgress, TaskWaitError};
use crate::proxmox::{PveClient, PveError, Upid};
use crate::ssh::SshSession;
use crate::vmid::AllocError;
use pvefleet_schemas::seal::SecretKey;

/// One row of the step table.
struct StepRow {
    step: Step,
    /// Where the job's percent stands when the step begins.
    percent: u8,
    what: &'static str,
    /// Whether a job with this spec runs the step.
    runs: fn(&ContainerSpec) -> bool,
}

fn always(_: &ContainerSpec) -> bool {
    true
}

fn fetches(spec: &ContainerSpec) -> bool {
    spec.template.is_some()
}

fn clones(spec: &ContainerSpec) -> bool {
    spec.clone.is_some()
}

fn creates(spec: &ContainerSpec) -> bool {
    spec.clone.is_none()
}

const STEPS: [StepRow; 8] = [
    StepRow { step: Step::Validating, percent: 2, what: "checking the spec against this node", runs: always },
    StepRow { step: Step::Fetching, percent: 4, what: "fetching the template", runs: fetches },
    StepRow { step: Step::Cloning, percent: 8, what: "cloning the container", runs: clones },
    StepRow { step: Step::Creating, percent: 10, what: "creating the container", runs: creates },
    StepRow { step: Step::Starting, percent: 45, what: "starting the container", runs: always },
    StepRow { step: Step::Connecting, percent: 60, what: "waiting for the container's IP address", runs: always },
    StepRow { step: Step::Deploying, percent: 70, what: "deploying into the container", runs: always },
    StepRow { step: Step::Finalizing, percent: 95, what: "finalizing", runs: always },
];

/// How a job's run ended, for the delivery decision (see [`crate::policy`]).
#[derive(Debug)]
pub enum JobEnd {
    /// Its terminal event is published (now or by an earlier delivery).
    Finished { success: bool },
    /// The message cannot be run (undecodable, another node's, invalid); its error event, if
    /// a job id could be read, is published.
    Rejected,
    /// The agent is stopping; the job is checkpointed and left for redelivery.
    Interrupted,
    /// NATS failed under the job; it is checkpointed and should be retried later.
    Bus(BusError),
    /// Another run holds the job's lease until `until`: this delivery must not run it.
    Busy { until: pvefleet_schemas::Timestamp },
    /// This run lost the job to another run (or its lease ran out): it touches nothing more.
    LeaseLost,
}

/// Why a step failed.
pub(crate) enum StepError {
    Failed { kind: ErrorKind, message: String },
    Bus(BusError),
}

impl StepError {
    pub(crate) fn failed(kind: ErrorKind, message: impl Into<String>) -> Self {
        StepError::Failed { kind, message: message.into() }
    }
}

impl From<PveError> for StepError {
    fn from(e: PveError) -> Self {
        StepError::failed(ErrorKind::Proxmox, e.to_string())
    }
}

impl From<BusError> for StepError {
    fn from(e: BusError) -> Self {
        StepError::Bus(e)
    }
}

impl From<AllocError> for StepError {
    fn from(e: AllocError) -> Self {
        match e {
            AllocError::Pve(e) => e.into(),
            AllocError::Bus(e) => StepError::Bus(e),
            e @ AllocError::Deadline { .. } => StepError::failed(ErrorKind::Timeout, format!("allocating a vmid: {e}")),
            e @ AllocError::Exhausted { .. } => {
                StepError::failed(ErrorKind::Proxmox, format!("allocating a vmid: {e}"))
            }
        }
    }
}

impl From<TaskWaitError> for StepError {
    fn from(e: TaskWaitError) -> Self {
        match e {
            TaskWaitError::Pve(e) => e.into(),
            e @ TaskWaitError::Timeout { .. } => StepError::failed(ErrorKind::Timeout, e.to_string()),
        }
    }
}

pub(crate) type StepResult = Result<(), StepError>;

/// A job this run holds, ready to run.
#[derive(Debug)]
pub struct Claimed {
    events: EventLog,
    resumed: bool,
    pub claim: Arc<Claim>,
    cp: Checkpoint,
}

/// Opens the job's event log and takes its lease for the run named `owner`. A job already
/// ended, or held by another live run, ends here with what its delivery should be told.
///
/// A job's first delivery looks neither at its events nor at its checkpoint (two round trips):
/// it has none, or, if a cancel ended it while queued, its first event fails on the cancel's
/// and the job ends there; a checkpoint found in its way sends it the long way.
pub async fn claim(job: &Job, bus: &Bus, owner: &str, lease: Duration, first: bool) -> Result<Claimed, JobEnd> {
    if first {
        let events = EventLog::fresh(bus, &job.node, job.job_id, owner);
        match Claim::take_new(&bus.checkpoints, &job.node, job.job_id, owner.to_owned(), lease).await {
            Ok(Some((claim, cp))) => return Ok(Claimed { events, resumed: false, claim: Arc::new(claim), cp }),
            Ok(None) => {}
            Err(e) => return Err(JobEnd::Bus(e)),
        }
    }
    let (events, last) = EventLog::open(bus, &job.node, job.job_id, owner).await.map_err(JobEnd::Bus)?;
    if let Some(last) = &last
        && last.is_terminal()
    {
        tracing::info!(job_id = %job.job_id, "already finished by an earlier delivery; acknowledging");
        return Err(JobEnd::Finished { success: last.kind == EventType::Complete });
    }
    match Claim::take(&bus.checkpoints, &job.node, job.job_id, owner.to_owned(), lease).await {
        Ok(Taken::Mine(mine)) => {
            let (claim, cp) = *mine;
            Ok(Claimed { events, resumed: last.is_some(), claim: Arc::new(claim), cp })
        }
        Ok(Taken::Busy { owner, until }) => {
            tracing::info!(job_id = %job.job_id, %owner, %until, "the job is running elsewhere; handing this delivery back");
            Err(JobEnd::Busy { until })
        }
        Err(e) => Err(JobEnd::Bus(e)),
    }
}

/// What a job runs against: this node's Proxmox API, NATS, the agent's settings and key.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    pub pve: &'a PveClient,
    pub bus: &'a Bus,
    pub config: &'a Config,
    pub sealing: &'a SecretKey,
    /// Fires when the agent stops: the job hands back at its next await.
    pub stop: &'a CancellationToken,
}

/// Runs (or resumes) a claimed create job to its end.
pub async fn run(job: &Job, claimed: Claimed, env: Env<'_>, cancel: &CancellationToken) -> JobEnd {
    let Env { pve, bus, config, sealing, stop } = env;
    let span = tracing::info_span!("job", job_id = %job.job_id, node = %job.node);
    async {
        let Claimed { events, resumed, claim, cp } = claimed;
        let mut run = CreateJob {
            job,
            pve,
            bus,
            ssh_config: &config.ssh,
            files_dir: &config.files_dir,
            sealing,
            password: None,
            events,
            cp,
            claim: claim.clone(),
            resumed,
            marker: job.job_id.marker_tag(),
            ssh: None,
            remote_tmp: None,
            log_bytes: 0,
        };
        let end = tokio::select! {
            end = run.drive(stop, cancel) => end,
            () = claim.keep() => Err(BusError::LeaseLost),
        };
        if let Some(ssh) = run.ssh.take() {
            run.close_ssh(ssh).await;
        }
        match end {
            Ok(end) => end,
            Err(BusError::Superseded) => run.superseded().await,
            Err(BusError::LeaseLost) => JobEnd::LeaseLost,
            Err(e) => JobEnd::Bus(e),
        }
    }
    .instrument(span)
    .await
}

pub(crate) struct CreateJob<'a> {
    pub(crate) job: &'a Job,
    pub(crate) pve: &'a PveClient,
    pub(crate) bus: &'a Bus,
    pub(crate) ssh_config: &'a SshConfig,
    /// Where `deploy.files[].source` may read from.
    pub(crate) files_dir: &'a std::path::Path,
    /// The agent's own key: opens the root password, seals the job's SSH key.
    pub(crate) sealing: &'a SecretKey,
    /// The root password, opened at validating; held in memory only.
    pub(crate) password: Option<pvefleet_schemas::Secret>,
    pub(crate) events: EventLog,
    pub(crate) cp: Checkpoint,
    /// This run's hold on the job; every checkpoint is written through it.
    pub(crate) claim: Arc<Claim>,
    /// Whether an earlier delivery began the job.
    resumed: bool,
    pub(crate) marker: String,
    /// The deploy's one SSH connection, made in connecting and reused by deploying.
    pub(crate) ssh: Option<Arc<SshSession>>,
    /// A private dir in the container for script files, removed when the deploy ends.
    pub(crate) remote_tmp: Option<String>,
    /// Bytes of script output this run has forwarded as events.
    pub(crate) log_bytes: usize,
}

impl CreateJob<'_> {
    async fn drive(&mut self, stop: &CancellationToken, cancel: &CancellationToken) -> Result<JobEnd, BusError> {
        if self.resumed {
            let after = self.cp.done.map_or("the start".to_owned(), |s| format!("step {s}"));
            self.events.warning(format!("job redelivered to this agent; resuming after {after}")).await?;
        } else {
            self.events
                .emit(
                    EventType::Accepted,
                    Some(Step::Validating),
                    Some(0),
                    format!("accepted by the agent on {}", self.job.node),
                    None,
                    None,
                )
                .await?;
        }
        if let Some(failure) = self.cp.failure.clone() {
            // The job had failed and was rolling back when its agent stopped.
            return self.fail(failure).await;
        }
        if let Err(StepError::Failed { kind, message }) = self.open_password() {
            return self.fail(ErrorInfo { kind, step: Step::Validating, message }).await;
        }
        for row in &STEPS {
            if self.cp.done.is_some_and(|done| done >= row.step) || !(row.runs)(&self.job.container) {
                continue;
            }
            if stop.is_cancelled() {
                return Ok(JobEnd::Interrupted);
            }
            if cancel.is_cancelled() {
                let info = ErrorInfo {
                    kind: ErrorKind::Cancelled,
                    step: row.step,
                    message: "cancelled by an operator".into(),
                };
                return self.fail(info).await;
            }
            self.events.step_event(row.step, row.percent, row.what).await?;
            // The step under way is written with the step's first output (a vmid, a UPID), not
            // on its own: a resumed job acts on what is done, and re-checks the rest.
            self.cp.current = row.step;
            let span = tracing::info_span!("step", step = %row.step);
            let lost = self.claim.lost().clone();
            let outcome = tokio::select! {
                r = self.do_step(row.step).instrument(span) => r,
                // Safe at any await: every step re-checks the world when it is resumed.
                _ = stop.cancelled() => return Ok(JobEnd::Interrupted),
                _ = lost.cancelled() => return Err(BusError::LeaseLost),
                _ = cancel.cancelled() => Err(StepError::failed(ErrorKind::Cancelled, "cancelled by an operator")),
            };
            match outcome {
                // The last step's end is the `complete` event itself: nothing to resume from.
                Ok(()) if row.step == Step::Finalizing => {}
                Ok(()) => {
                    self.cp.done = Some(row.step);
                    if self.claim.has_news(&self.cp).await {
                        self.save().await?;
                    }
                }
                Err(StepError::Bus(e)) => return Err(e),
                Err(StepError::Failed { kind, message }) => {
                    return self.fail(ErrorInfo { kind, step: row.step, message }).await;
                }
            }
        }
        let vmid = self.cp.vmid.expect("validating chose a vmid");
        let result = self.result(true, None, false);
        let ip = self.cp.ip.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
        self.events
            .emit(
                EventType::Complete,
                Some(Step::Finalizing),
                Some(100),
                format!("container {vmid} is running at {ip}"),
                None,
                Some(result),
            )
            .await?;
        Ok(JobEnd::Finished { success: true })
    }

    /// Writes the checkpoint, if this run still holds the job.
    pub(crate) async fn save(&self) -> Result<(), BusError> {
        self.claim.save(&self.cp).await
    }

    /// Someone else wrote to the job's events: either the job was ended for it (a cancel
    /// while it was queued), or another run is writing them and this one must stop.
    async fn superseded(&self) -> JobEnd {
        match EventLog::open(self.bus, &self.job.node, self.job.job_id, self.claim.owner()).await {
            Ok((_, Some(last))) if last.is_terminal() => {
                tracing::info!("the job was ended (cancelled) by someone else");
                JobEnd::Finished { success: last.kind == EventType::Complete }
            }
            Ok(_) => {
                tracing::warn!("another run is writing this job's events; stopping");
                JobEnd::LeaseLost
            }
            Err(e) => JobEnd::Bus(e),
        }
    }

    async fn do_step(&mut self, step: Step) -> StepResult {
        match step {
            Step::Validating => self.validate().await,
            Step::Fetching => self.fetch().await,
            Step::Cloning => self.clone_container().await,
            Step::Creating => self.create().await,
            Step::Starting => self.start().await,
            Step::Connecting => self.connect().await,
            Step::Deploying => self.deploy().await,
            Step::Finalizing => self.finalize().await,
            Step::RollingBack => unreachable!("rolling back is not a forward step"),
        }
    }

    /// The checkpointed task of `kind`, sent by an earlier delivery of this job.
    pub(crate) fn pending_task(&self, kind: &str) -> Option<Upid> {
        self.cp.upid.as_deref()?.parse::<Upid>().ok().filter(|u| u.kind() == kind)
    }

    pub(crate) fn vmid(&self) -> Vmid {
        self.cp.vmid.expect("validating chose a vmid")
    }

    pub(crate) fn timeouts(&self) -> pvefleet_schemas::Timeouts {
        self.job.options.timeouts
    }

    /// Opens the root password sealed to this agent (every delivery: it is never stored).
    fn open_password(&mut self) -> StepResult {
        if let Some(sealed) = &self.job.container.root_password {
            let pw = self.sealing.open(sealed).map_err(|e| {
                StepError::failed(
                    ErrorKind::Validation,
                    format!("container.root_password: {e}; it cannot be opened here"),
                )
            })?;
            self.password = Some(pw);
        }
        Ok(())
    }

    /// Checks the spec against this node and chooses the vmid.
    async fn validate(&mut self) -> StepResult {
        for (i, file) in self.job.deploy.files.iter().enumerate() {
            if let Some(source) = &file.source {
                crate::deploy::resolve_source(self.files_dir, source).map_err(|why| {
                    StepError::failed(ErrorKind::Validation, format!("deploy.files[{i}].source: {why}"))
                })?;
            }
        }
        let spec = &self.job.container;
        let invalid = |message: String| StepError::failed(ErrorKind::Validation, message);
        // What PVE keeps for a root@pam login, said now rather than at create.
        if !self.pve.is_root_login() {
            const WHY: &str = "the agent signs in with an API token, which PVE refuses this (even root's own); \
                               proxmox.user = \"root@pam\" with proxmox.password_file allows it";
            for (i, mp) in spec.mounts.iter().enumerate() {
                if matches!(mp, pvefleet_schemas::lxc::MountPoint::Bind { .. }) {
                    return Err(invalid(format!(
                        "container.mounts[{i}]: PVE lets only root@pam make a bind mount; {WHY}"
                    )));
                }
            }
            let features = spec.effective_features();
            let beyond = features.beyond_nesting();
            if !spec.unprivileged && !features.is_empty() {
                return Err(invalid(format!(
                    "container.features: on a privileged container PVE lets only root@pam set features; {WHY}"
                )));
            }
            if !beyond.is_empty() {
                return Err(invalid(format!(
                    "container.features: PVE lets an API token set only `nesting` on an unprivileged container \
                     (pve-container check_ct_modify_config_perm); `{}` need root@pam: {WHY}",
                    beyond.join("`, `")
                )));
            }
        }
        let storages = self.pve.rootdir_storages().await?;
        let rootfs = spec.effective_rootfs();
        let field = if spec.rootfs.is_some() { "container.rootfs" } else { "container" };
        let mut wanted: Vec<(String, &str, u32)> = Vec::new();
        if spec.clone.is_none() {
            // A clone's root disk is its source's.
            wanted.push((format!("{field}.storage"), rootfs.storage.as_str(), rootfs.size));
        }
        for (i, mp) in spec.mounts.iter().enumerate() {
            if let pvefleet_schemas::lxc::MountPoint::Volume { storage, size, .. } = mp {
                wanted.push((format!("container.mounts[{i}].storage"), storage.as_str(), *size));
            }
        }
        for (field, name, size) in wanted {
            let Some(storage) = storages.iter().find(|s| s.storage == name) else {
                let have: Vec<&str> = storages.iter().map(|s| s.storage.as_str()).collect();
                return Err(invalid(format!(
                    "{field}: `{name}` is not an active storage for containers on {} (it has: {})",
                    self.job.node,
                    have.join(", ")
                )));
            };
            if storage.avail > 0 && storage.avail < u64::from(size) << 30 {
                return Err(invalid(format!(
                    "{field}: {size} GB does not fit on `{name}`, which has {:.1} GB free",
                    storage.avail as f64 / f64::from(1u32 << 30)
                )));
            }
        }
        let bridges = self.pve.bridges().await?;
        for (i, nic) in spec.effective_nics().iter().enumerate() {
            if !bridges.contains(&nic.bridge) {
                let field = if spec.nics.is_empty() {
                    "container.bridge".to_owned()
                } else {
                    format!("container.nics[{i}].bridge")
                };
                return Err(invalid(format!("{field}: `{}` does not exist on {}", nic.bridge, self.job.node)));
            }
        }
        self.validate_source().await?;
        // A clone cannot be given the job's own key: its deploy logs in with `ssh.key_file`.
        if !self.job.deploy.is_empty() && self.cp.ssh_key.is_none() && spec.clone.is_none() {
            self.cp.ssh_key = Some(crate::deploy::new_job_key(self.sealing)?);
        }
        if self.cp.vmid.is_none() {
            self.choose_vmid().await?;
        }
        Ok(())
    }

    /// The job's vmid: the container an earlier delivery made (when the checkpoint that knew it
    /// was lost), else the spec's, else one allocated and reserved for this job.
    async fn choose_vmid(&mut self) -> StepResult {
        if self.resumed
            && let Some(vmid) = self.find_marked().await?
        {
            self.events
                .warning(format!("the job's checkpoint was lost; found its container {vmid} by its marker"))
                .await?;
            self.cp.vmid = Some(vmid);
            self.cp.vmid_allocated = self.job.container.vmid.is_none();
            return Ok(());
        }
        match self.job.container.vmid {
            Some(vmid) => {
                if self.whose(vmid).await? == Whose::Strangers {
                    return Err(self.conflict(vmid));
                }
                self.cp.vmid = Some(vmid);
            }
            None => {
                self.cp.vmid = Some(self.allocate().await?);
                self.cp.vmid_allocated = true;
            }
        }
        Ok(())
    }

    /// This job's container on this node, found by its marker tag in the cluster's resources.
    async fn find_marked(&self) -> Result<Option<Vmid>, StepError> {
        let found = self.pve.guests_tagged(&self.marker).await?;
        for (node, vmid) in &found {
            if node != self.job.node.as_str() {
                tracing::warn!(%node, %vmid, "a container with this job's marker is on another node; ignored");
            }
        }
        Ok(found.into_iter().find(|(node, _)| node == self.job.node.as_str()).map(|(_, vmid)| vmid))
    }

    async fn allocate(&self) -> Result<Vmid, StepError> {
        let deadline = Instant::now() + self.timeouts().task.0;
        Ok(crate::vmid::allocate(self.pve, &self.bus.vmids, self.job.job_id, &self.job.node, deadline).await?)
    }

    /// Who a vmid belongs to on this node. A container still being created carries no tags
    /// yet (PVE writes its config, marker included, only when the create task has unpacked
    /// the template), so its create is waited out before its marker is read: the create may
    /// be this job's own, sent by an attempt whose answer was lost.
    pub(crate) async fn whose(&mut self, vmid: Vmid) -> Result<Whose, StepError> {
        let within = self.timeouts().task.0;
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(100);
        let mut said = false;
        loop {
            let Some(cfg) = self.pve.container_config(vmid).await? else {
                return Ok(Whose::Nobody);
            };
            if cfg.get("lock").and_then(Value::as_str) != Some("create") {
                return Ok(if is_ours(&cfg, &self.marker) { Whose::Ours } else { Whose::Strangers });
            }
            if !said {
                self.events
                    .log(LogStream::Task, format!("container {vmid} is being created; waiting for its create to end"))
                    .await?;
                said = true;
            }
            if Instant::now() >= deadline {
                return Err(StepError::failed(
                    ErrorKind::Timeout,
                    format!("container {vmid} still being created (lock: create) after {within:?}"),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    fn conflict(&self, vmid: Vmid) -> StepError {
        StepError::failed(
            ErrorKind::Conflict,
            format!(
                "vmid {vmid} is taken by a container pvefleet did not create (it lacks the tag {}); it is left untouched",
                self.marker
            ),
        )
    }

    /// Creates the container, or finds the one this job already created.
    async fn create(&mut self) -> StepResult {
        if let Some(upid) = self.pending_task("vzcreate") {
            // A create was sent by an earlier delivery: wait for it, never send it twice.
            self.wait_task(&upid).await?;
            return Ok(());
        }
        loop {
            let vmid = self.vmid();
            // No look first: the vmid was just found free (or checked at validating), and PVE
            // answers "already exists" if it is not; then the look tells whose it is.
            let params = self.create_params();
            let params: Vec<(&str, String)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            match self.pve.create_container(&params).await {
                Ok(upid) => {
                    self.cp.upid = Some(upid.to_string());
                    self.save().await?;
                    self.events.log(LogStream::Task, format!("create task {upid}")).await?;
                    self.wait_task(&upid).await?;
                    return Ok(());
                }
                // Ours (made by an attempt whose answer or UPID checkpoint was lost), a
                // stranger's, or one on another node. A container still being created carries
                // no tags yet: `whose` waits its create out before reading the marker.
                Err(e) if e.is_already_exists() => match self.whose(vmid).await? {
                    Whose::Ours => return Ok(()),
                    Whose::Strangers => self.replace_vmid(vmid).await?,
                    // Not on this node (taken elsewhere in the cluster), or gone again (a
                    // create that failed): try again, or on another id.
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

    /// An allocated vmid lost to a stranger is replaced; a vmid the spec fixed is a conflict.
    pub(crate) async fn replace_vmid(&mut self, vmid: Vmid) -> StepResult {
        if !self.cp.vmid_allocated {
            return Err(self.conflict(vmid));
        }
        let next = self.allocate().await?;
        self.events.warning(format!("vmid {vmid} was taken meanwhile; using {next}")).await?;
        self.cp.vmid = Some(next);
        self.save().await?;
        Ok(())
    }

    /// PVE's create parameters for the spec: every field the spec sets, in PVE's formats
    /// (`crate::lxc` in the schemas builds each string), plus the marker tag and the job's key.
    pub(crate) fn create_params(&self) -> Vec<(String, String)> {
        let spec = &self.job.container;
        let mut tags: Vec<String> = spec.tags.iter().map(|t| t.to_ascii_lowercase()).collect();
        tags.push(self.marker.clone());
        let mut params: Vec<(String, String)> = vec![
            ("vmid".into(), self.vmid().to_string()),
            ("hostname".into(), spec.hostname.clone()),
            ("ostemplate".into(), spec.effective_ostemplate().unwrap_or_default()),
            ("memory".into(), spec.memory.to_string()),
            ("swap".into(), spec.swap.to_string()),
            ("cores".into(), spec.cores.to_string()),
            ("rootfs".into(), spec.effective_rootfs().to_pve()),
            // Always explicit: the schema's default is 0, while PVE makes unprivileged ones when
            // it is left out.
            ("unprivileged".into(), u8::from(spec.unprivileged).to_string()),
            ("tags".into(), tags.join(";")),
        ];
        for (i, nic) in spec.effective_nics().iter().enumerate() {
            params.push((format!("net{i}"), nic.to_pve()));
        }
        for (i, mp) in spec.mounts.iter().enumerate() {
            params.push((format!("mp{i}"), mp.to_pve()));
        }
        let features = spec.effective_features();
        if !features.is_empty() {
            params.push(("features".into(), features.to_pve()));
        }
        let mut put = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                params.push((key.into(), v));
            }
        };
        put("nameserver", spec.effective_nameserver());
        put("searchdomain", spec.searchdomain.clone());
        put("description", spec.description.clone());
        put("pool", spec.pool.clone());
        put("protection", spec.protection.then(|| "1".into()));
        put("cpulimit", spec.cpulimit.map(|c| c.to_string()));
        put("cpuunits", spec.cpuunits.map(|c| c.to_string()));
        put("onboot", spec.onboot.then(|| "1".into()));
        put("startup", spec.startup.as_ref().map(|s| s.to_pve()).filter(|s| !s.is_empty()));
        put("timezone", spec.timezone.clone());
        put("arch", spec.arch.clone());
        put("ostype", spec.ostype.clone());
        put("console", spec.console.map(|c| u8::from(c).to_string()));
        put("tty", spec.tty.map(|t| t.to_string()));
        put("cmode", spec.cmode.clone());
        put("entrypoint", spec.entrypoint.clone());
        put("env", (!spec.env.is_empty()).then(|| pvefleet_schemas::source::env_to_pve(&spec.env)));
        let mut keys = spec.ssh_public_keys.clone();
        if let Some(public) = self.job_public_key() {
            keys.push(public);
        }
        if !keys.is_empty() {
            params.push(("ssh-public-keys".into(), keys.join("\n")));
        }
        if let Some(pw) = &self.password {
            params.push(("password".into(), pw.expose().to_owned()));
        }
        params
    }

    /// Waits for a task, its log streamed as `log` events; a warning status becomes a
    /// `warning` event and any other non-OK status fails the step with the log's last lines.
    pub(crate) async fn wait_task(&mut self, upid: &Upid) -> StepResult {
        let mut watch = self.pve.watch_task(upid, self.timeouts().task.0);
        let outcome = loop {
            match watch.next().await? {
                TaskProgress::Lines(lines) => {
                    for line in lines {
                        if upid.kind() == "vzcreate" {
                            // PVE prints the new container's host keys; only those will be trusted.
                            for fp in crate::ssh::fingerprints_in(&line) {
                                if !self.cp.announced_host_keys.contains(&fp) {
                                    self.cp.announced_host_keys.push(fp);
                                }
                            }
                        }
                        self.events.log(LogStream::Task, line).await?;
                    }
                }
                TaskProgress::Done(outcome) => break outcome,
            }
        };
        if outcome.has_warnings() {
            self.events
                .warning(format!(
                    "{} task ended with {}: {}",
                    upid.kind(),
                    outcome.exitstatus,
                    outcome.tail.join(" | ")
                ))
                .await?;
        }
        if !outcome.is_ok() {
            return Err(StepError::failed(
                ErrorKind::Task,
                format!(
                    "{} task failed: {}\nlast lines of its log:\n{}",
                    upid.kind(),
                    outcome.exitstatus,
                    outcome.tail.join("\n")
                ),
            ));
        }
        Ok(())
    }

    /// Starts the container and waits for its start task: a start whose task ended OK has a
    /// running container, and one already running needs nothing more.
    async fn start(&mut self) -> StepResult {
        let vmid = self.vmid();
        let upid = match self.pending_task("vzstart") {
            Some(upid) => upid,
            None => match self.pve.start(vmid).await {
                Ok(upid) => {
                    self.cp.upid = Some(upid.to_string());
                    self.save().await?;
                    upid
                }
                Err(e) if e.message_contains("already running") => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        };
        self.wait_task(&upid).await
    }

    /// Reads the container's address, polling while DHCP has not given it one yet.
    async fn connect(&mut self) -> StepResult {
        let vmid = self.vmid();
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
        let within = self.timeouts().ip.0;
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(100);
        let ip: IpAddr = loop {
            if let Some(ip) = self.pve.container_ip(vmid, &nic, &configured).await? {
                break ip;
            }
            if Instant::now() >= deadline {
                return Err(StepError::failed(
                    ErrorKind::Timeout,
                    format!(
                        "container {vmid} has no address on {nic} after {within:?} ({}); is DHCP serving its bridge?",
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
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(3));
        };
        self.cp.ip = Some(ip);
        self.events.log(LogStream::Task, format!("container {vmid} has address {ip}")).await?;
        if !self.job.deploy.is_empty() {
            self.open_ssh().await?;
        }
        Ok(())
    }

    async fn finalize(&mut self) -> StepResult {
        let mut description = self.job.container.description.clone().map(|d| format!("{d}\n\n")).unwrap_or_default();
        description.push_str(&format!("Created by pvefleet job {}", self.job.job_id));
        if let Some(t) = &self.job.template {
            description.push_str(&format!(" from template {t}"));
        }
        self.pve.set_config(self.vmid(), &[("description", description)]).await?;
        Ok(())
    }

    pub(crate) fn result(&self, success: bool, error: Option<ErrorInfo>, rolled_back: bool) -> JobResult {
        JobResult {
            success,
            job_id: self.job.job_id,
            node: self.job.node.clone(),
            vmid: self.cp.vmid,
            ip: self.cp.ip,
            error,
            rolled_back,
            host_key: self.cp.host_key.clone(),
        }
    }

    /// Records the failure, applies the rollback policy and ends the job with its error event.
    async fn fail(&mut self, mut failure: ErrorInfo) -> Result<JobEnd, BusError> {
        // A script's tail can be megabytes once escaped: keep what the checkpoint and the
        // error event can carry.
        failure.message = pvefleet_schemas::event::cut(&failure.message, pvefleet_schemas::event::MAX_ERROR_TEXT);
        tracing::warn!(kind = ?failure.kind, step = %failure.step, message = %failure.message, "job failed");
        self.cp.failure = Some(failure.clone());
        self.save().await?;
        if failure.kind == ErrorKind::Cancelled
            && let Some(upid) = self.cp.upid.as_deref().and_then(|u| u.parse::<Upid>().ok())
        {
            // Stop the Proxmox task the job was waiting on (a no-op if it already ended), and
            // let it end: it holds the container's lock, which the rollback needs.
            if let Err(e) = self.pve.stop_task(&upid).await {
                tracing::info!(error = %e, %upid, "stopping the task on cancel");
            }
            let mut watch = self.pve.watch_task(&upid, self.timeouts().task.0);
            while let Ok(crate::proxmox::task::TaskProgress::Lines(_)) = watch.next().await {}
        }
        let (rolled_back, note) = match self.job.options.rollback {
            RollbackPolicy::Keep => (false, self.cp.vmid.map(|v| format!("container {v} kept (rollback: keep)"))),
            RollbackPolicy::Destroy => match self.rollback().await {
                Ok(Rollback::Destroyed(vmid)) => (true, Some(format!("container {vmid} destroyed"))),
                Ok(Rollback::Nothing(note)) => (false, note),
                Err(StepError::Bus(e)) => return Err(e),
                Err(StepError::Failed { message, .. }) => (false, Some(format!("rollback failed: {message}"))),
            },
        };
        let mut message = failure.message.clone();
        if let Some(note) = note {
            message.push_str(&format!("; {note}"));
        }
        let result = self.result(false, Some(failure.clone()), rolled_back);
        self.events.emit(EventType::Error, Some(failure.step), None, message, None, Some(result)).await?;
        Ok(JobEnd::Finished { success: false })
    }

    /// Stops and destroys this job's container. Already gone is success; a container without
    /// our marker is never touched; one still being created is waited out first (it may be
    /// ours, from a create whose answer was lost).
    async fn rollback(&mut self) -> Result<Rollback, StepError> {
        let Some(vmid) = self.cp.vmid else {
            return Ok(Rollback::Nothing(None));
        };
        self.events.step_event(Step::RollingBack, 0, format!("rolling back: destroying container {vmid}")).await?;
        match self.whose(vmid).await? {
            Whose::Nobody => {
                return Ok(Rollback::Nothing(Some(format!("nothing left behind (container {vmid} does not exist)"))));
            }
            Whose::Strangers => {
                return Ok(Rollback::Nothing(Some(format!("container {vmid} is not this job's; left untouched"))));
            }
            Whose::Ours => {}
        }
        if self.job.container.protection {
            // PVE will not remove a protected container; this one is ours to unprotect.
            self.pve.set_config(vmid, &[("protection", "0".to_owned())]).await?;
        }
        if self.pve.status(vmid).await?.status == "running" {
            match self.pve.stop(vmid).await {
                Ok(upid) => self.wait_task(&upid).await?,
                Err(e) if e.message_contains("not running") => {}
                Err(e) => return Err(e.into()),
            }
        }
        // A destroy that loses the race for the container's lock ("got timeout") is tried again.
        for attempt in 1..=3 {
            let outcome = match self.pve.destroy(vmid).await {
                Ok(upid) => self.wait_task(&upid).await,
                Err(e) if e.is_missing() => Ok(()),
                Err(e) => Err(e.into()),
            };
            match outcome {
                Err(StepError::Failed { message, .. }) if attempt < 3 && message.contains("got timeout") => {
                    self.events
                        .warning(format!("destroying container {vmid}: the lock was busy; trying again"))
                        .await?;
                }
                other => return other.map(|()| Rollback::Destroyed(vmid)),
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// Who holds a vmid on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whose {
    /// No container has it here.
    Nobody,
    /// A container with this job's marker.
    Ours,
    /// A container without it: never touched.
    Strangers,
}

/// What a rollback did.
#[derive(Debug)]
enum Rollback {
    Destroyed(Vmid),
    /// Nothing to destroy (never made, already gone, or not ours), and why.
    Nothing(Option<String>),
}

/// Whether a container's config carries this job's marker: as a tag, or, on a clone whose
/// tags are still its source's, in the description the clone call gave it (`(<marker>)`).
fn is_ours(cfg: &Value, marker: &str) -> bool {
    cfg.get("tags").and_then(Value::as_str).is_some_and(|tags| crate::proxmox::has_tag(tags, marker))
        || cfg.get("description").and_then(Value::as_str).is_some_and(|d| {
            d.lines().any(|l| l.starts_with("Cloned by pvefleet job ") && l.ends_with(&format!("({marker})")))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
