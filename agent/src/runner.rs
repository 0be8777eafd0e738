//! The one runner every job kind shares: it takes the job's lease, walks the kind's step table
//! top to bottom, writes the checkpoint a redelivered job resumes from, turns a failure into
//! the kind's undo and exactly one `error` event, and ends a job that succeeded with exactly
//! one `complete` event. A job kind ([`crate::create`], [`crate::destroy`]) is its step table,
//! its steps and its undo; the machinery here is written once.
//!
//! Ownership is proven by a marker tag (`pvefleet-<short job id>`): [`Core::owner_of`] waits
//! out a container's create before it reads the marker, and a container without it is never
//! touched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pvefleet_schemas::{
    Checkpoint, ErrorInfo, ErrorKind, EventType, JobId, JobResult, LogStream, NodeName, Step, Vmid,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::bus::{Bus, BusError, EventLog};
use crate::claim::{Claim, Taken};
use crate::config::Config;
use crate::proxmox::task::{TaskFailure, TaskProgress, TaskWaitError};
use crate::proxmox::{PveClient, PveError, Refusal, Upid};
use crate::vmid::AllocError;
use pvefleet_schemas::seal::SecretKey;

/// One row of a job kind's step table.
pub(crate) struct StepRow<M> {
    pub step: Step,
    /// Where the job's percent stands when the step begins.
    pub percent: u8,
    pub what: &'static str,
    /// Whether a job with this message runs the step.
    pub runs: fn(&M) -> bool,
}

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
    /// The job fails: `kind` and `message` for its error event, and the cause as a type when
    /// code acts on it (a lock to wait out, a checksum to name), never read back from the text.
    Failed {
        kind: ErrorKind,
        message: String,
        cause: Option<Cause>,
    },
    Bus(BusError),
}

/// A failure's cause, as `proxmox` recognised it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cause {
    /// PVE refused the request.
    Refused(crate::proxmox::Refusal),
    /// A task PVE ran failed.
    Task(crate::proxmox::task::TaskFailure),
}

impl StepError {
    pub(crate) fn failed(kind: ErrorKind, message: impl Into<String>) -> Self {
        StepError::Failed { kind, message: message.into(), cause: None }
    }
}

impl From<PveError> for StepError {
    fn from(e: PveError) -> Self {
        StepError::Failed { kind: ErrorKind::Proxmox, message: e.to_string(), cause: e.refusal().map(Cause::Refused) }
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

impl Claimed {
    /// What the job has made so far, as its checkpoint knows it, for a message that gives up.
    pub fn left_behind(&self) -> String {
        match self.cp.vmid {
            Some(vmid) => format!("container {vmid}, if it was made"),
            None => "no container was made".into(),
        }
    }
}

/// Opens the job's event log and takes its lease for the run named `owner`. A job already
/// ended, or held by another live run, ends here with what its delivery should be told.
///
/// A job's first delivery looks neither at its events nor at its checkpoint (two round trips):
/// it has none, or, if a cancel ended it while queued, its first event fails on the cancel's
/// and the job ends there; a checkpoint found in its way sends it the long way.
pub async fn claim(
    job_id: JobId,
    node: &NodeName,
    bus: &Bus,
    owner: &str,
    lease: Duration,
    first: bool,
) -> Result<Claimed, JobEnd> {
    if first {
        let events = EventLog::fresh(bus, node, job_id, owner);
        match Claim::take_new(&bus.checkpoints, node, job_id, owner.to_owned(), lease).await {
            Ok(Some((claim, cp))) => return Ok(Claimed { events, resumed: false, claim: Arc::new(claim), cp }),
            Ok(None) => {}
            Err(e) => return Err(JobEnd::Bus(e)),
        }
    }
    let (events, last) = EventLog::open(bus, node, job_id, owner).await.map_err(JobEnd::Bus)?;
    if let Some(last) = &last
        && last.is_terminal()
    {
        tracing::info!(%job_id, "already finished by an earlier delivery; acknowledging");
        return Err(JobEnd::Finished { success: last.kind == EventType::Complete });
    }
    match Claim::take(&bus.checkpoints, node, job_id, owner.to_owned(), lease).await {
        Ok(Taken::Mine(mine)) => {
            let (claim, cp) = *mine;
            Ok(Claimed { events, resumed: last.is_some(), claim: Arc::new(claim), cp })
        }
        Ok(Taken::Busy { owner, until }) => {
            tracing::info!(%job_id, %owner, %until, "the job is running elsewhere; handing this delivery back");
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
    /// The templates this agent fetched itself, and as what.
    pub ledger: &'a crate::cache::Ledger,
    /// Fires when the agent stops: the job hands back at its next await.
    pub stop: &'a CancellationToken,
}

/// What every job kind's run holds: its events, its checkpoint under its lease, the Proxmox
/// API, and the marker that proves which container is its own.
pub(crate) struct Core {
    pub(crate) job_id: JobId,
    pub(crate) node: NodeName,
    pub(crate) pve: PveClient,
    pub(crate) bus: Bus,
    pub(crate) events: EventLog,
    pub(crate) cp: Checkpoint,
    /// This run's hold on the job; every checkpoint is written through it.
    pub(crate) claim: Arc<Claim>,
    /// Whether an earlier delivery began the job.
    pub(crate) resumed: bool,
    /// The tag a container this job owns carries.
    pub(crate) marker: String,
    /// How long one Proxmox task may take.
    pub(crate) task_timeout: Duration,
}

impl Core {
    pub(crate) fn new(
        job_id: JobId,
        node: &NodeName,
        claimed: Claimed,
        env: Env<'_>,
        marker: String,
        task_timeout: Duration,
    ) -> Self {
        let Claimed { events, resumed, claim, cp } = claimed;
        Self {
            job_id,
            node: node.clone(),
            pve: env.pve.clone(),
            bus: env.bus.clone(),
            events,
            cp,
            claim,
            resumed,
            marker,
            task_timeout,
        }
    }

    /// Writes the checkpoint, if this run still holds the job.
    pub(crate) async fn save(&self) -> Result<(), BusError> {
        self.claim.save(&self.cp).await
    }

    /// The checkpointed task of `kind`, sent by an earlier delivery of this job.
    pub(crate) fn pending_task(&self, kind: &str) -> Option<Upid> {
        self.cp.upid.as_deref()?.parse::<Upid>().ok().filter(|u| u.kind() == kind)
    }

    pub(crate) fn vmid(&self) -> Vmid {
        self.cp.vmid.expect("an earlier step chose the vmid")
    }

    /// Waits for a task, its log streamed as `log` events; a warning status becomes a
    /// `warning` event and any other non-OK status fails the step with the log's last lines.
    pub(crate) async fn wait_task(&mut self, upid: &Upid) -> StepResult {
        let mut watch = self.pve.watch_task(upid, self.task_timeout);
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
        if let Some(failure) = outcome.failure() {
            return Err(StepError::Failed {
                kind: ErrorKind::Task,
                message: format!(
                    "{} task failed: {}\nlast lines of its log:\n{}",
                    upid.kind(),
                    outcome.exitstatus,
                    outcome.tail.join("\n")
                ),
                cause: Some(Cause::Task(failure)),
            });
        }
        Ok(())
    }

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
        let within = self.task_timeout;
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(100);
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
        for attempt in 1..=3 {
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
                Err(StepError::Failed { cause: Some(Cause::Task(TaskFailure::LockTimeout)), .. }) if attempt < 3 => {
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

/// What an undo did.
#[derive(Debug)]
pub(crate) enum Undone {
    Destroyed(Vmid),
    /// Nothing destroyed (never made, already gone, not ours, or kept by policy), and why.
    Nothing(Option<String>),
}

/// Whether a container's config carries `marker`: as a tag, or, on a clone whose tags are
/// still its source's, in the description the clone call gave it (`(<marker>)`).
pub(crate) fn is_ours(cfg: &Value, marker: &str) -> bool {
    cfg.get("tags").and_then(Value::as_str).is_some_and(|tags| crate::proxmox::has_tag(tags, marker))
        || cfg.get("description").and_then(Value::as_str).is_some_and(|d| {
            d.lines().any(|l| l.starts_with("Cloned by pvefleet job ") && l.ends_with(&format!("({marker})")))
        })
}

/// A job kind: its step table, its steps, what undoing them means, and what its result says.
pub(crate) trait Saga: Send {
    type Message: Sync + 'static;

    /// The step table, read top to bottom; a row whose `runs` says no is skipped.
    fn steps(&self) -> &'static [StepRow<Self::Message>];
    fn message(&self) -> &Self::Message;
    fn core(&mut self) -> &mut Core;

    /// Before the first step of every delivery (opening what is sealed to the agent).
    fn prepare(&mut self) -> StepResult {
        Ok(())
    }

    fn step(&mut self, step: Step) -> impl Future<Output = StepResult> + Send;

    /// Undoes what the steps made, after a failure (the job's rollback policy decides).
    fn undo(&mut self) -> impl Future<Output = Result<Undone, StepError>> + Send;

    fn result(&mut self, success: bool, error: Option<ErrorInfo>, rolled_back: bool) -> JobResult;

    /// The `complete` event's message.
    fn completed(&mut self) -> String;

    /// After the run, whatever its end (closing an SSH session).
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Runs (or resumes) a claimed job of any kind to its end.
pub(crate) async fn run<S: Saga>(saga: &mut S, stop: &CancellationToken, cancel: &CancellationToken) -> JobEnd {
    let claim = saga.core().claim.clone();
    let end = tokio::select! {
        end = drive(saga, stop, cancel) => end,
        () = claim.keep() => Err(BusError::LeaseLost),
    };
    saga.close().await;
    match end {
        Ok(end) => end,
        Err(BusError::Superseded) => superseded(saga.core()).await,
        Err(BusError::LeaseLost) => JobEnd::LeaseLost,
        Err(e) => JobEnd::Bus(e),
    }
}

async fn drive<S: Saga>(
    saga: &mut S,
    stop: &CancellationToken,
    cancel: &CancellationToken,
) -> Result<JobEnd, BusError> {
    let first = saga.steps()[0].step;
    let core = saga.core();
    if core.resumed {
        let after = core.cp.done.map_or("the start".to_owned(), |s| format!("step {s}"));
        core.events.warning(format!("job redelivered to this agent; resuming after {after}")).await?;
    } else {
        let message = format!("accepted by the agent on {}", core.node);
        core.events.emit(EventType::Accepted, Some(first), Some(0), message, None, None).await?;
    }
    if let Some(failure) = saga.core().cp.failure.clone() {
        // The job had failed and was undoing when its agent stopped.
        return fail(saga, failure).await;
    }
    if let Err(StepError::Failed { kind, message, .. }) = saga.prepare() {
        return fail(saga, ErrorInfo { kind, step: first, message }).await;
    }
    let rows = saga.steps();
    let last = rows.last().expect("a step table has steps").step;
    for row in rows {
        if saga.core().cp.done.is_some_and(|done| done >= row.step) || !(row.runs)(saga.message()) {
            continue;
        }
        if stop.is_cancelled() {
            return Ok(JobEnd::Interrupted);
        }
        if cancel.is_cancelled() {
            let info =
                ErrorInfo { kind: ErrorKind::Cancelled, step: row.step, message: "cancelled by an operator".into() };
            return fail(saga, info).await;
        }
        let core = saga.core();
        core.events.step_event(row.step, row.percent, row.what).await?;
        // The step under way is written with the step's first output (a vmid, a UPID), not
        // on its own: a resumed job acts on what is done, and re-checks the rest.
        core.cp.current = row.step;
        let lost = core.claim.lost().clone();
        let span = tracing::info_span!("step", step = %row.step);
        let began = Instant::now();
        test_hooks::as_step_begins(row.step);
        let outcome = tokio::select! {
            r = test_hooks::step(saga, row.step).instrument(span) => r,
            // Safe at any await: every step re-checks the world when it is resumed.
            _ = stop.cancelled() => return Ok(JobEnd::Interrupted),
            _ = lost.cancelled() => return Err(BusError::LeaseLost),
            _ = cancel.cancelled() => Err(StepError::failed(ErrorKind::Cancelled, "cancelled by an operator")),
        };
        crate::metrics::metrics().step(row.step, began.elapsed());
        match outcome {
            // The last step's end is the `complete` event itself: nothing to resume from.
            Ok(()) if row.step == last => {}
            Ok(()) => {
                let core = saga.core();
                core.cp.done = Some(row.step);
                if core.claim.has_news(&core.cp).await {
                    core.save().await?;
                }
            }
            Err(StepError::Bus(e)) => return Err(e),
            Err(StepError::Failed { kind, message, .. }) => {
                return fail(saga, ErrorInfo { kind, step: row.step, message }).await;
            }
        }
        test_hooks::as_step_ends(row.step);
    }
    let result = saga.result(true, None, false);
    let message = saga.completed();
    saga.core().events.emit(EventType::Complete, Some(last), Some(100), message, None, Some(result)).await?;
    crate::metrics::metrics().job_finished(None);
    Ok(JobEnd::Finished { success: true })
}

/// Hooks the tests drive the engine with, in debug builds only (the test bed's); release
/// builds have none. Each names a step in its variable:
/// - `PVEFLEET_TEST_PANIC_IN`: a panic as the step begins (a bug ends its job once, rolled
///   back, and never loops);
/// - `PVEFLEET_TEST_FAIL_IN`: the step fails (kind `internal`) instead of running, so every
///   step's failure and unwind can be tried in turn;
/// - `PVEFLEET_TEST_STOP_AFTER`: the agent dies (abort, as in a crash) once the step has ended
///   and its checkpoint is written, so every step's resumption can be tried in turn.
mod test_hooks {
    use pvefleet_schemas::{ErrorKind, Step};

    use super::{Saga, StepError, StepResult};

    #[cfg(debug_assertions)]
    fn named(var: &str, step: Step) -> bool {
        std::env::var(var).is_ok_and(|s| s == step.to_string())
    }

    #[cfg(not(debug_assertions))]
    fn named(_: &str, _: Step) -> bool {
        false
    }

    pub(super) fn as_step_begins(step: Step) {
        if named("PVEFLEET_TEST_PANIC_IN", step) {
            panic!("test hook: a panic as step {step} begins");
        }
    }

    pub(super) async fn step<S: Saga>(saga: &mut S, step: Step) -> StepResult {
        if named("PVEFLEET_TEST_FAIL_IN", step) {
            return Err(StepError::failed(ErrorKind::Internal, format!("test hook: step {step} fails")));
        }
        saga.step(step).await
    }

    pub(super) fn as_step_ends(step: Step) {
        if named("PVEFLEET_TEST_STOP_AFTER", step) {
            tracing::error!(%step, "test hook: the agent dies after this step");
            std::process::abort();
        }
    }
}

/// Records the failure, undoes per the kind and its policy, and ends the job with its error
/// event.
async fn fail<S: Saga>(saga: &mut S, mut failure: ErrorInfo) -> Result<JobEnd, BusError> {
    // A script's tail can be megabytes once escaped: keep what the checkpoint and the
    // error event can carry.
    failure.message = pvefleet_schemas::event::cut(&failure.message, pvefleet_schemas::event::MAX_ERROR_TEXT);
    tracing::warn!(kind = ?failure.kind, step = %failure.step, message = %failure.message, "job failed");
    let core = saga.core();
    core.cp.failure = Some(failure.clone());
    core.save().await?;
    if failure.kind == ErrorKind::Cancelled
        && let Some(upid) = core.cp.upid.as_deref().and_then(|u| u.parse::<Upid>().ok())
    {
        // Stop the Proxmox task the job was waiting on (a no-op if it already ended), and
        // let it end: it holds the container's lock, which the undo needs.
        if let Err(e) = core.pve.stop_task(&upid).await {
            tracing::info!(error = %pvefleet_schemas::report::error_chain(&e), %upid, "stopping the task on cancel");
        }
        let mut watch = core.pve.watch_task(&upid, core.task_timeout);
        while let Ok(TaskProgress::Lines(_)) = watch.next().await {}
    }
    let (rolled_back, note) = match saga.undo().await {
        Ok(Undone::Destroyed(vmid)) => (true, Some(format!("container {vmid} destroyed"))),
        Ok(Undone::Nothing(note)) => (false, note),
        Err(StepError::Bus(e)) => return Err(e),
        Err(StepError::Failed { message, .. }) => (false, Some(format!("rollback failed: {message}"))),
    };
    let mut message = failure.message.clone();
    if let Some(note) = note {
        message.push_str(&format!("; {note}"));
    }
    let result = saga.result(false, Some(failure.clone()), rolled_back);
    saga.core().events.emit(EventType::Error, Some(failure.step), None, message, None, Some(result)).await?;
    crate::metrics::metrics().job_finished(Some(failure.kind));
    Ok(JobEnd::Finished { success: false })
}

/// Someone else wrote to the job's events: either the job was ended for it (a cancel while
/// it was queued), or another run is writing them and this one must stop.
async fn superseded(core: &Core) -> JobEnd {
    match EventLog::open(&core.bus, &core.node, core.job_id, core.claim.owner()).await {
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

/// Runs `job` of kind `S` under one span naming it.
pub(crate) async fn run_in_span<S: Saga>(
    saga: &mut S,
    stop: &CancellationToken,
    cancel: &CancellationToken,
    kind: &'static str,
) -> JobEnd {
    let core = saga.core();
    let span = tracing::info_span!("job", job_id = %core.job_id, node = %core.node, kind);
    run(saga, stop, cancel).instrument(span).await
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
}
