//! Taking jobs: one message is fetched only when a slot is free (so no job waits in a local
//! buffer while its ack timer runs), each running job keeps its message alive with progress
//! acks, and its end is turned into an ack, term or nak by [`crate::policy`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt as _;
use pvefleet_schemas::{
    BackupJob, DayTwoJob, DestroyJob, ErrorInfo, ErrorKind, EventType, Job, JobId, JobResult, MoveJob, NodeName,
    PowerJob, ResizeJob, RestoreJob, RollbackJob, SnapshotJob, Step, UpdateJob,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod policy;

use self::policy::Delivery;
use crate::bus::{Bus, Claim, EventLog};
use crate::jobs::{self, JobEnd};
use crate::jobs::{create, destroy};
use crate::shared::{Shared, job_id_of};

/// A job delivered this often without ending is given up: its error event (kind `internal`)
/// ends it, whatever keeps it from ending, so no message can loop for ever.
pub const MAX_DELIVERIES: i64 = 30;

/// While a job runs: its place in the running set, its cancel token and the running gauge,
/// given back however its run ends (a panic included), so `pvefleet nodes` never shows a slot
/// taken for good.
struct RunningGuard<'a> {
    shared: &'a Shared,
    job_id: JobId,
}

impl<'a> RunningGuard<'a> {
    fn enter(shared: &'a Shared, job_id: JobId) -> (Self, CancellationToken) {
        shared.running.started(job_id);
        crate::metrics::metrics().job_started();
        let cancel = CancellationToken::new();
        if shared.cancelled.lock().expect("cancelled").remove(&job_id) {
            tracing::info!(%job_id, "cancelled while it waited for this delivery");
            cancel.cancel();
        }
        shared.cancels.lock().expect("cancels").insert(job_id, cancel.clone());
        (Self { shared, job_id }, cancel)
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut cancels) = self.shared.cancels.lock() {
            cancels.remove(&self.job_id);
        }
        self.shared.running.ended(&self.job_id);
        crate::metrics::metrics().job_stopped();
    }
}

/// Takes jobs until `stop`, then gives running jobs the grace period to hand back.
pub async fn work(shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.config.concurrency as usize));
    let mut jobs = JoinSet::new();
    let pace = crate::retry::FETCH_JOBS;
    let mut pause = pace.first;
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shared.stop.cancelled() => break,
        };
        // Reap finished job tasks so the set does not grow.
        while jobs.try_join_next().is_some() {}
        let fetched = tokio::select! {
            r = next_message(&shared) => r,
            _ = shared.stop.cancelled() => break,
        };
        match fetched {
            Ok(Some(msg)) => {
                pause = pace.first;
                let shared = shared.clone();
                jobs.spawn(async move {
                    handle(&shared, msg).await;
                    drop(permit);
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %pvefleet_schemas::report::error_chain(e.as_ref()), retry_in = ?pause, "fetching jobs failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shared.stop.cancelled() => break,
                }
                pause = pace.after(pause);
            }
        }
    }
    tracing::info!(running = jobs.len(), grace = ?shared.config.shutdown_grace, "stopped taking jobs; waiting for running ones to hand back");
    let drained =
        tokio::time::timeout(shared.config.shutdown_grace, async { while jobs.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(left = jobs.len(), "grace period over; the jobs left are redelivered after their ack wait");
        jobs.abort_all();
    }
}

/// One message, waiting up to a few seconds for it.
async fn next_message(shared: &Shared) -> Result<Option<Message>, async_nats::Error> {
    let mut batch = shared.bus.consumer.batch().max_messages(1).expires(Duration::from_secs(5)).messages().await?;
    match batch.next().await {
        Some(m) => Ok(Some(m?)),
        None => Ok(None),
    }
}

async fn handle(shared: &Shared, msg: Message) {
    // Unique per delivery handled: names this run in the job's lease and its events' ids.
    let owner = format!("{}/{}", shared.instance, ulid::Ulid::new());
    let (end, claim) = {
        let keep_alive = async {
            let mut tick = tokio::time::interval(shared.config.ack_wait / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %pvefleet_schemas::report::error_chain(e.as_ref()), "progress ack failed");
                }
            }
        };
        let run = std::panic::AssertUnwindSafe(process(shared, &msg, &owner));
        tokio::select! {
            end = futures::FutureExt::catch_unwind(run) => match end {
                Ok(end) => end,
                Err(panic) => (after_panic(shared, &msg, &owner, panic_text(panic.as_ref())).await, None),
            },
            () = keep_alive => unreachable!("the keep-alive loop never ends"),
        }
    };
    if let JobEnd::Finished { .. } = end {
        shared.inventory.poke();
    }
    let delivery = policy::decide(&end);
    tracing::debug!(?end, ?delivery, "job ended");
    if let (JobEnd::Interrupted | JobEnd::Bus(_), Some(claim)) = (&end, &claim) {
        // Handed back: let the next delivery resume at once rather than wait out the lease.
        if let Err(e) = claim.release(false).await {
            tracing::warn!(error = %pvefleet_schemas::report::error_chain(&e), "could not release the job's lease; the next delivery waits it out");
        }
    }
    let acked = match delivery {
        // The final ack waits for the server's confirmation; if it is lost the job is
        // redelivered, finds its terminal event and is acked then.
        Delivery::Ack => msg.double_ack().await,
        Delivery::Term => msg.ack_with(AckKind::Term).await,
        Delivery::Nak(delay) => msg.ack_with(AckKind::Nak(delay)).await,
        // Another run holds the job: it settles the message, or the server redelivers it.
        Delivery::Leave => Ok(()),
    };
    if let Err(e) = acked {
        tracing::warn!(error = %pvefleet_schemas::report::error_chain(e.as_ref()), ?delivery, "could not settle the job's message; it will be redelivered");
        return;
    }
    if let JobEnd::Finished { .. } = end {
        let cleared = match &claim {
            Some(claim) => claim.release(true).await,
            // Ended by an earlier delivery: whatever checkpoint it left is of no use now.
            None => match job_id_of(&msg.payload) {
                Some(job_id) => shared.bus.forget_checkpoint(&shared.config.node, &job_id).await,
                None => Ok(()),
            },
        };
        if let Err(e) = cleared {
            tracing::warn!(error = %pvefleet_schemas::report::error_chain(&e), "checkpoint not cleared; it expires on its own");
        }
    }
}

/// A job message of any kind, as read from its subject's last token: the table of kinds.
enum Incoming {
    Create(Box<Job>),
    Destroy(DestroyJob),
    DayTwo(DayTwoJob),
}

impl Incoming {
    fn decode(kind: &str, payload: &[u8]) -> Result<Self, String> {
        let day_two = |j: DayTwoJob| Incoming::DayTwo(j);
        match kind {
            "create" => Job::decode(payload).map(|j| Incoming::Create(Box::new(j))),
            "destroy" => DestroyJob::decode(payload).map(Incoming::Destroy),
            "update" => UpdateJob::decode(payload).map(|j| day_two(DayTwoJob::Update(Box::new(j)))),
            "resize" => ResizeJob::decode(payload).map(|j| day_two(DayTwoJob::Resize(j))),
            "power" => PowerJob::decode(payload).map(|j| day_two(DayTwoJob::Power(j))),
            "snapshot" => SnapshotJob::decode(payload).map(|j| day_two(DayTwoJob::Snapshot(j))),
            "rollback" => RollbackJob::decode(payload).map(|j| day_two(DayTwoJob::Rollback(j))),
            "backup" => BackupJob::decode(payload).map(|j| day_two(DayTwoJob::Backup(j))),
            "restore" => RestoreJob::decode(payload).map(|j| day_two(DayTwoJob::Restore(j))),
            "move" => MoveJob::decode(payload).map(|j| day_two(DayTwoJob::Move(j))),
            other => return Err(format!("unknown job kind `{other}` in the subject")),
        }
        .map_err(|e| format!("unreadable job message: {e}"))
    }

    fn job_id(&self) -> JobId {
        match self {
            Incoming::Create(j) => j.job_id,
            Incoming::Destroy(j) => j.job_id,
            Incoming::DayTwo(j) => j.job_id(),
        }
    }

    fn node(&self) -> &NodeName {
        match self {
            Incoming::Create(j) => &j.node,
            Incoming::Destroy(j) => &j.node,
            Incoming::DayTwo(j) => j.node(),
        }
    }

    /// The policy's action for a job subject's kind.
    fn action(kind: &str) -> Option<pvefleet_schemas::trust::Action> {
        pvefleet_schemas::trust::Action::ALL.into_iter().find(|a| a.as_str() == kind && !a.is_control())
    }

    /// Whether the signer's grant covers what this job asks for.
    fn allowed(&self, grant: &pvefleet_schemas::trust::Grant) -> Result<(), pvefleet_schemas::trust::Refusal> {
        match self {
            Incoming::Create(j) => grant.allows_create(j),
            Incoming::Destroy(j) => grant.allows_destroy(j),
            Incoming::DayTwo(j) => grant.allows_day_two(j),
        }
    }

    fn validate(&self) -> Result<(), pvefleet_schemas::ValidationErrors> {
        match self {
            Incoming::Create(j) => j.validate(),
            Incoming::Destroy(j) => j.validate(),
            Incoming::DayTwo(j) => j.validate(),
        }
    }

    async fn run(&self, claimed: jobs::Claimed, env: jobs::Env<'_>, cancel: &CancellationToken) -> JobEnd {
        use crate::jobs::day_two::{backup, migrate, power, resize, restore, rollback, snapshot, update};
        match self {
            Incoming::Create(job) => create::run(job, claimed, env, cancel).await,
            Incoming::Destroy(job) => destroy::run(job, claimed, env, cancel).await,
            Incoming::DayTwo(DayTwoJob::Update(job)) => update::run(job, claimed, env, cancel).await,
            Incoming::DayTwo(DayTwoJob::Resize(job)) => resize::run(job, claimed, env, cancel).await,
            Incoming::DayTwo(DayTwoJob::Power(job)) => power::run(job, claimed, env, cancel).await,
            Incoming::DayTwo(DayTwoJob::Snapshot(job)) => snapshot::run(job, claimed, env, cancel).await,
            Incoming::DayTwo(DayTwoJob::Rollback(job)) => rollback::run(job, claimed, env, cancel).await,
            Incoming::DayTwo(DayTwoJob::Backup(job)) => backup::run(job, claimed, env, cancel).await,
            Incoming::DayTwo(DayTwoJob::Restore(job)) => restore::run(job, claimed, env, cancel).await,
            Incoming::DayTwo(DayTwoJob::Move(job)) => migrate::run(job, claimed, env, cancel).await,
        }
    }
}

/// Checks, claims and runs one job; returns how it ended and this run's claim, if it took one.
///
/// The order is the trust rules': the message's job id is taken for this message (a job id
/// another message took is a replay: refused, and that job's events are not touched); then
/// its signature, expiry (only when first taken: a redelivery of a request taken while valid
/// resumes) and its signer's rights; the decision is stored in the audit stream before
/// anything more happens. Only then is it decoded, checked and run.
async fn process(shared: &Shared, msg: &Message, owner: &str) -> (JobEnd, Option<Arc<Claim>>) {
    let node = &shared.config.node;
    let kind = msg.subject.rsplit('.').next().unwrap_or_default();
    let value: serde_json::Value = match serde_json::from_slice(&msg.payload) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => {
            let why = "unreadable job message: not a JSON object".to_owned();
            return (reject(shared, &msg.payload, kind, ErrorKind::InvalidMessage, why, owner).await, None);
        }
    };
    let Some(job_id) = job_id_of(&msg.payload) else {
        let why = "unreadable job message: no readable `job_id`".to_owned();
        return (reject(shared, &msg.payload, kind, ErrorKind::InvalidMessage, why, owner).await, None);
    };
    let seq = msg.info().map_or(0, |info| info.stream_sequence);
    let taken = match crate::trust::take_job_id(&shared.bus.requests, node, job_id, seq).await {
        Ok(t) => t,
        Err(e) => return (JobEnd::Bus(e), None),
    };
    if let crate::trust::Taken::ByOther(by) = taken {
        let refusal = pvefleet_schemas::trust::Refusal::new(
            "replay",
            format!(
                "job id {job_id} was already taken by another message (stream sequence {by}); this one is refused and that job is left as it is"
            ),
        );
        let record = crate::trust::record(node, kind, Some(job_id), &value, None, Some(&refusal));
        if let Err(e) = crate::trust::audit(&shared.bus.js, node, &record, Some(seq)).await {
            return (JobEnd::Bus(e), None);
        }
        tracing::error!(%job_id, %refusal, "refused a replayed job id");
        crate::metrics::metrics().job_finished(kind, Some(ErrorKind::Unauthorized));
        return (JobEnd::Rejected, None);
    }
    let first_take = taken == crate::trust::Taken::New;
    let admit = || match Incoming::action(kind) {
        Some(action) => shared.trust.admit(&value, action, node, first_take),
        None => Err(pvefleet_schemas::trust::Refusal::new("kinds", format!("`{kind}` is not a job kind"))),
    };
    let mut admitted = admit();
    if admitted.is_err() && crate::trust::refresh(&shared.trust, &shared.bus.trust).await {
        admitted = admit();
    }
    let grant = admitted.as_ref().ok().map(|a| &a.grant);
    let refusal = match &admitted {
        Ok(_) => None,
        Err(r) => Some(r.clone()),
    };
    // The job's own rules (scripts, host paths…) need the typed job: decoded only now.
    let job = Incoming::decode(kind, &msg.payload);
    let refusal = refusal.or_else(|| match (&job, grant) {
        (Ok(job), Some(grant)) => job.allowed(grant).err(),
        _ => None,
    });
    let record = crate::trust::record(node, kind, Some(job_id), &value, grant, refusal.as_ref());
    if let Err(e) = crate::trust::audit(&shared.bus.js, node, &record, Some(seq)).await {
        return (JobEnd::Bus(e), None);
    }
    if let Some(refusal) = refusal {
        return (reject(shared, &msg.payload, kind, ErrorKind::Unauthorized, refusal.to_string(), owner).await, None);
    }
    let grant = grant.expect("an admitted request has its grant").clone();
    let job = match job {
        Ok(job) => job,
        Err(why) => return (reject(shared, &msg.payload, kind, ErrorKind::InvalidMessage, why, owner).await, None),
    };
    if job.node() != node {
        let why = format!("the job is for node {} but was delivered to the agent of {node}", job.node());
        return (reject(shared, &msg.payload, kind, ErrorKind::WrongNode, why, owner).await, None);
    }
    if let Err(e) = job.validate() {
        return (reject(shared, &msg.payload, kind, ErrorKind::Validation, e.to_string(), owner).await, None);
    }
    let delivered = msg.info().map_or(1, |info| info.delivered);
    let first = delivered == 1;
    if !first {
        crate::metrics::metrics().redelivered();
    }
    let job_id = job.job_id();
    let claimed = match jobs::claim(job_id, node, &shared.bus, owner, shared.config.ack_wait, first).await {
        Ok(c) => c,
        Err(end) => return (end, None),
    };
    let claim = claimed.claim.clone();
    if delivered > MAX_DELIVERIES {
        let why = format!(
            "given up after {delivered} deliveries without an end; whatever it made is left as it is ({})",
            claimed.left_behind()
        );
        return (give_up(shared, job_id, kind, ErrorKind::Internal, why, owner).await, Some(claim));
    }
    let (_running, cancel) = RunningGuard::enter(shared, job_id);
    let env = jobs::Env {
        pve: &shared.pve,
        bus: &shared.bus,
        config: &shared.config,
        sealing: &shared.sealing,
        ledger: &shared.ledger,
        inventory: &shared.inventory,
        stop: &shared.stop,
        grant: &grant,
    };
    let end = job.run(claimed.with_job_seq(seq), env, &cancel).await;
    (end, Some(claim))
}

/// What a panic carried, as text.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A job's run panicked (a bug in the agent). The job must still end once, and never loop: the
/// first time, the failure is written into its checkpoint and the job handed straight back, so
/// its next delivery applies the rollback policy and ends it with an `internal` error; a job
/// that panics again while failing is ended at once, leaving what it made.
async fn after_panic(shared: &Shared, msg: &Message, owner: &str, panic: String) -> JobEnd {
    tracing::error!(%panic, "a job's run panicked");
    let Some(job_id) = job_id_of(&msg.payload) else { return JobEnd::Rejected };
    let node = &shared.config.node;
    let message = format!("the agent hit an internal error: {panic}");
    match crate::bus::Claim::take(&shared.bus.checkpoints, node, job_id, owner.to_owned(), shared.config.ack_wait).await
    {
        Ok(crate::bus::Taken::Mine(mine)) => {
            let (claim, mut cp) = *mine;
            if cp.failure.is_none() {
                // Where the job stood: the step of its last event.
                let step = match EventLog::open(&shared.bus, node, job_id, owner).await {
                    Ok((_, last)) => last.and_then(|e| e.step).unwrap_or(Step::Validating),
                    Err(e) => return JobEnd::Bus(e),
                };
                cp.failure = Some(ErrorInfo { kind: ErrorKind::Internal, step, message });
                if claim.save(&cp).await.is_ok() && claim.release(false).await.is_ok() {
                    return JobEnd::Interrupted;
                }
                return JobEnd::Bus(crate::bus::BusError::LeaseLost);
            }
            let why = format!("{message} (again, while failing); whatever it made is left as it is");
            give_up(shared, job_id, msg.subject.rsplit('.').next().unwrap_or_default(), ErrorKind::Internal, why, owner)
                .await
        }
        Ok(crate::bus::Taken::Busy { until, .. }) => JobEnd::Busy { until },
        Err(e) => JobEnd::Bus(e),
    }
}

/// Ends a job that cannot go on with one `error` event of `kind`, without running it.
async fn give_up(shared: &Shared, job_id: JobId, of: &str, kind: ErrorKind, why: String, owner: &str) -> JobEnd {
    tracing::error!(%job_id, ?kind, %why, "giving up a job");
    match terminal_error(&shared.bus, &shared.config.node, job_id, kind, why, owner).await {
        Ok(()) | Err(crate::bus::BusError::Superseded) => {
            crate::metrics::metrics().job_finished(of, Some(kind));
            JobEnd::Finished { success: false }
        }
        Err(e) => JobEnd::Bus(e),
    }
}

/// Ends a message that cannot run: logged, and an `error` event when its job id can be read.
async fn reject(shared: &Shared, payload: &[u8], of: &str, kind: ErrorKind, message: String, owner: &str) -> JobEnd {
    let node = &shared.config.node;
    // A decode error names what it could not read, which a hostile message can make huge.
    let message = pvefleet_schemas::event::cut(&message, pvefleet_schemas::event::MAX_ERROR_TEXT);
    let Some(job_id) = job_id_of(payload) else {
        tracing::error!(%message, "rejected a message without a readable job id");
        return JobEnd::Rejected;
    };
    tracing::error!(%job_id, ?kind, %message, "rejected a job message");
    match terminal_error(&shared.bus, node, job_id, kind, message, owner).await {
        Ok(()) => {
            crate::metrics::metrics().job_finished(of, Some(kind));
            JobEnd::Rejected
        }
        // Ended meanwhile by someone else (a cancel): nothing more to say.
        Err(crate::bus::BusError::Superseded) => JobEnd::Rejected,
        Err(e) => JobEnd::Bus(e),
    }
}

async fn terminal_error(
    bus: &Bus,
    node: &NodeName,
    job_id: JobId,
    kind: ErrorKind,
    message: String,
    owner: &str,
) -> Result<(), crate::bus::BusError> {
    let (mut events, last) = EventLog::open(bus, node, job_id, owner).await?;
    if last.as_ref().is_some_and(|e| e.is_terminal()) {
        return Ok(()); // a redelivery of a message already ended
    }
    // Where the job stood, if it had begun.
    let step = last.as_ref().and_then(|e| e.step).unwrap_or(Step::Validating);
    let result = JobResult {
        success: false,
        job_id,
        node: node.clone(),
        vmid: None,
        ip: None,
        error: Some(ErrorInfo { kind, step, message: message.clone() }),
        rolled_back: false,
        host_key: None,
        moved_to: None,
    };
    events.emit(EventType::Error, Some(step), None, message, None, Some(result)).await
}
