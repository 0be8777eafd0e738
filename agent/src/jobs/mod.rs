//! The jobs: the one engine every job kind runs on, and the kinds, siblings above it.
//!
//! The engine (this file) takes the job's lease, walks the kind's step table top to bottom,
//! writes the checkpoint a redelivered job resumes from, turns a failure into the kind's undo
//! and exactly one `error` event, and ends a job that succeeded with exactly one `complete`
//! event. It knows no kind: a kind is its step table ([`StepRow`]s), its steps and its undo,
//! behind [`Saga`].
//!
//! - [`container`]: a container as every kind handles it: whose it is, by the job's marker;
//!   stopping and deleting one proven its own.
//! - [`checks`]: what validating (and a plan) checks against the node; read-only.
//! - [`create`]: the create job's whole story: its step table and undo (`mod.rs`), the
//!   parameters it sends (`params`), its vmid (`vmid`), its template or clone (`source`), its
//!   keys (`keys`) and its deploy over SSH (`deploy`).
//! - [`destroy`]: the destroy job (finding → stopping → deleting).
//! - [`day_two`]: the kinds on a container pvefleet made: update, resize, power.
//! - [`plan`]: what a create would find and send, changing nothing.
//!
//! A new job kind is a file (or folder) here with its step table and its `Saga`, plus its line
//! in `intake`'s table of kinds.

pub mod checks;
pub(crate) mod container;
pub mod create;
pub mod day_two;
pub mod destroy;
pub(crate) mod once;
pub mod plan;

pub(crate) use container::{Whose, is_ours};

use std::sync::Arc;
use std::time::{Duration, Instant};

use pvefleet_schemas::{
    Checkpoint, ErrorInfo, ErrorKind, EventType, JobId, JobResult, LogStream, NodeName, Step, Vmid,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::bus::{Bus, BusError, EventLog};
use crate::bus::{Claim, Taken};
use crate::config::Config;
use crate::proxmox::task::{TaskProgress, TaskWaitError};
use crate::proxmox::{PveClient, PveError, Upid};
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

/// A step every job of the kind runs (a row's `runs`).
pub(crate) fn always<M>(_: &M) -> bool {
    true
}

/// The parts of a kind's [`Saga`] every kind writes alike: its message type, its step table
/// (the `STEPS` in scope), its message (`self.job`) and its core (`self.core`).
macro_rules! saga_parts {
    ($message:ty) => {
        type Message = $message;

        fn steps(&self) -> &'static [crate::jobs::StepRow<$message>] {
            &STEPS
        }

        fn message(&self) -> &$message {
            self.job
        }

        fn core(&mut self) -> &mut crate::jobs::Core {
            &mut self.core
        }
    };
}
pub(crate) use saga_parts;

/// How a job's run ended, for the delivery decision (see `intake::policy`).
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
    /// The job message's stream sequence, which its `accepted` event tells (so a recorder
    /// that never saw the job queued can read it from the jobs stream).
    pub fn with_job_seq(mut self, seq: u64) -> Self {
        self.events.job_seq = Some(seq);
        self
    }

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
    /// Told which container each job that succeeded wrote to.
    pub inventory: &'a Arc<crate::inventory::Inventory>,
    /// Fires when the agent stops: the job hands back at its next await.
    pub stop: &'a CancellationToken,
    /// What the job's signer may do (the policy's grant): the checks that need the node's
    /// facts (a clone's source) apply it.
    pub grant: &'a pvefleet_schemas::trust::Grant,
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
    /// What the kind reads in its tasks' logs into its checkpoint, line by line (a create
    /// keeps the host keys PVE prints for the new container).
    pub(crate) reads_task_logs: Option<fn(&Upid, &str, &mut Checkpoint)>,
    inventory: Arc<crate::inventory::Inventory>,
    /// The job's kind (`create`, `update`, …), for its span and metrics.
    kind: &'static str,
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
            reads_task_logs: None,
            inventory: env.inventory.clone(),
            kind: "",
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
                        if let Some(read) = self.reads_task_logs {
                            read(upid, &line, &mut self.cp);
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
}

/// What an undo did.
#[derive(Debug)]
pub(crate) enum Undone {
    Destroyed(Vmid),
    /// Rolled back to a snapshot taken before, and how.
    RolledBack(String),
    /// Nothing destroyed (never made, already gone, not ours, or kept by policy), and why.
    Nothing(Option<String>),
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

    /// Undoes what the steps made, after a failure (the job's rollback policy decides). By
    /// default nothing: a day-two change is not undone (the container stays as the failure left
    /// it, and the job's error says where).
    fn undo(&mut self) -> impl Future<Output = Result<Undone, StepError>> + Send {
        async { Ok(Undone::Nothing(None)) }
    }

    /// The job's result: it succeeded when it has no error.
    fn result(&mut self, error: Option<ErrorInfo>, rolled_back: bool) -> JobResult;

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
    // The last step this job runs: the `complete` event's, and the one not checkpointed.
    let last = rows.iter().rev().find(|r| (r.runs)(saga.message())).map_or(first, |r| r.step);
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
        // A step's outputs (a vmid, a UPID) are written as it makes them: a resumed job acts on
        // what is done, and re-checks the rest.
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
    let result = saga.result(None, false);
    let message = saga.completed();
    let core = saga.core();
    core.events.emit(EventType::Complete, Some(last), Some(100), message, None, Some(result)).await?;
    if let Some(vmid) = core.cp.vmid {
        core.inventory.touched(vmid, core.job_id);
    }
    crate::metrics::metrics().job_finished(saga.core().kind, None);
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

    use crate::jobs::{Saga, StepError, StepResult};

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
    let mut left_to_finish = None;
    if failure.kind == ErrorKind::Cancelled
        && let Some(upid) = core.cancelled_task().await?
    {
        // Stop the Proxmox task the job was waiting on (a no-op if it already ended), unless
        // stopping it half-way would leave the container neither as it was nor as asked (a
        // rollback, a restore, a migration, a snapshot being made or deleted); either way let
        // it end: it holds the container's lock, which the undo needs.
        if upid.runs_to_its_end() {
            left_to_finish = Some(upid.kind().to_owned());
        } else if let Err(e) = core.pve.stop_task(&upid).await {
            tracing::info!(error = %pvefleet_schemas::report::error_chain(&e), %upid, "stopping the task on cancel");
        }
        let mut watch = core.pve.watch_task(&upid, core.task_timeout);
        while let Ok(TaskProgress::Lines(_)) = watch.next().await {}
    }
    let (rolled_back, note) = match saga.undo().await {
        Ok(Undone::Destroyed(vmid)) => (true, Some(format!("container {vmid} destroyed"))),
        Ok(Undone::RolledBack(note)) => (true, Some(note)),
        Ok(Undone::Nothing(note)) => (false, note),
        Err(StepError::Bus(e)) => return Err(e),
        Err(StepError::Failed { message, .. }) => (false, Some(format!("rollback failed: {message}"))),
    };
    let mut message = failure.message.clone();
    if let Some(kind) = left_to_finish {
        message.push_str(&format!(
            "; its {kind} task was let finish (stopped half-way it would leave the container neither as it was nor as \
             asked)"
        ));
    }
    if let Some(note) = note {
        message.push_str(&format!("; {note}"));
    }
    let result = saga.result(Some(failure.clone()), rolled_back);
    saga.core().events.emit(EventType::Error, Some(failure.step), None, message, None, Some(result)).await?;
    crate::metrics::metrics().job_finished(saga.core().kind, Some(failure.kind));
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
    core.kind = kind;
    let span = tracing::info_span!("job", job_id = %core.job_id, node = %core.node, kind);
    run(saga, stop, cancel).instrument(span).await
}
