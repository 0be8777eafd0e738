//! Taking jobs: one message is fetched only when a slot is free (so no job waits in a local
//! buffer while its ack timer runs), each running job keeps its message alive with progress
//! acks, and its end is turned into an ack, term or nak by [`crate::policy`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt as _;
use pvefleet_schemas::{DestroyJob, ErrorInfo, ErrorKind, EventType, Job, JobId, JobResult, NodeName, Step};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, EventLog};
use crate::claim::Claim;
use crate::config::Config;
use crate::create;
use crate::heartbeat::Running;
use crate::policy::{self, Delivery};
use crate::proxmox::PveClient;
use crate::runner::{self, JobEnd};

/// What every job task shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub pve: PveClient,
    pub bus: Bus,
    pub running: Running,
    /// Fires on SIGTERM: running jobs stop at their next await and are handed back.
    pub stop: CancellationToken,
    /// The agent's sealing key: opens root passwords, seals per-job SSH keys.
    pub sealing: Arc<pvefleet_schemas::seal::SecretKey>,
    /// This agent process's name in job leases (`<node>-<ulid>`), new at every start.
    pub instance: String,
    /// Running jobs' cancel tokens, fired by `pvefleet.control.<node>.cancel`.
    pub cancels: std::sync::Mutex<std::collections::HashMap<JobId, CancellationToken>>,
}

/// Takes jobs until `stop`, then gives running jobs the grace period to hand back.
pub async fn work(shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.config.concurrency as usize));
    let mut jobs = JoinSet::new();
    let mut pause = Duration::from_millis(100);
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
                pause = Duration::from_millis(100);
                let shared = shared.clone();
                jobs.spawn(async move {
                    handle(&shared, msg).await;
                    drop(permit);
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "fetching jobs failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shared.stop.cancelled() => break,
                }
                pause = (pause * 2).min(Duration::from_secs(10));
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
                    tracing::warn!(error = %e, "progress ack failed");
                }
            }
        };
        tokio::select! {
            end = process(shared, &msg, &owner) => end,
            () = keep_alive => unreachable!("the keep-alive loop never ends"),
        }
    };
    let delivery = policy::decide(&end);
    tracing::debug!(?end, ?delivery, "job ended");
    if let (JobEnd::Interrupted | JobEnd::Bus(_), Some(claim)) = (&end, &claim) {
        // Handed back: let the next delivery resume at once rather than wait out the lease.
        if let Err(e) = claim.release(false).await {
            tracing::warn!(error = %e, "could not release the job's lease; the next delivery waits it out");
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
        tracing::warn!(error = %e, ?delivery, "could not settle the job's message; it will be redelivered");
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
            tracing::warn!(error = %e, "checkpoint not cleared; it expires on its own");
        }
    }
}

/// A job message of either kind, as read from its subject's last token.
enum Incoming {
    Create(Box<Job>),
    Destroy(DestroyJob),
}

impl Incoming {
    fn decode(kind: &str, payload: &[u8]) -> Result<Self, String> {
        match kind {
            "create" => Job::decode(payload)
                .map(|j| Incoming::Create(Box::new(j)))
                .map_err(|e| format!("unreadable job message: {e}")),
            "destroy" => {
                DestroyJob::decode(payload).map(Incoming::Destroy).map_err(|e| format!("unreadable job message: {e}"))
            }
            other => Err(format!("unknown job kind `{other}` in the subject")),
        }
    }

    fn job_id(&self) -> JobId {
        match self {
            Incoming::Create(j) => j.job_id,
            Incoming::Destroy(j) => j.job_id,
        }
    }

    fn node(&self) -> &NodeName {
        match self {
            Incoming::Create(j) => &j.node,
            Incoming::Destroy(j) => &j.node,
        }
    }

    fn validate(&self) -> Result<(), pvefleet_schemas::ValidationErrors> {
        match self {
            Incoming::Create(j) => j.validate(),
            Incoming::Destroy(j) => j.validate(),
        }
    }
}

/// Decodes, checks, claims and runs one job; returns how it ended and this run's claim, if
/// it took one.
async fn process(shared: &Shared, msg: &Message, owner: &str) -> (JobEnd, Option<Arc<Claim>>) {
    let node = &shared.config.node;
    let kind = msg.subject.rsplit('.').next().unwrap_or_default();
    let job = match Incoming::decode(kind, &msg.payload) {
        Ok(job) => job,
        Err(why) => return (reject(shared, &msg.payload, ErrorKind::InvalidMessage, why, owner).await, None),
    };
    if job.node() != node {
        let why = format!("the job is for node {} but was delivered to the agent of {node}", job.node());
        return (reject(shared, &msg.payload, ErrorKind::WrongNode, why, owner).await, None);
    }
    if let Err(e) = job.validate() {
        return (reject(shared, &msg.payload, ErrorKind::Validation, e.to_string(), owner).await, None);
    }
    let first = msg.info().is_ok_and(|info| info.delivered == 1);
    if !first {
        crate::metrics::metrics().redelivered();
    }
    let job_id = job.job_id();
    let claimed = match runner::claim(job_id, node, &shared.bus, owner, shared.config.ack_wait, first).await {
        Ok(c) => c,
        Err(end) => return (end, None),
    };
    let claim = claimed.claim.clone();
    shared.running.started(job_id);
    crate::metrics::metrics().job_started();
    let cancel = CancellationToken::new();
    shared.cancels.lock().expect("cancels").insert(job_id, cancel.clone());
    let env = runner::Env {
        pve: &shared.pve,
        bus: &shared.bus,
        config: &shared.config,
        sealing: &shared.sealing,
        stop: &shared.stop,
    };
    let end = match &job {
        Incoming::Create(job) => create::run(job, claimed, env, &cancel).await,
        Incoming::Destroy(job) => crate::destroy::run(job, claimed, env, &cancel).await,
    };
    shared.cancels.lock().expect("cancels").remove(&job_id);
    shared.running.ended(&job_id);
    crate::metrics::metrics().job_stopped();
    (end, Some(claim))
}

/// Ends a message that cannot run: logged, and an `error` event when its job id can be read.
async fn reject(shared: &Shared, payload: &[u8], kind: ErrorKind, message: String, owner: &str) -> JobEnd {
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
            crate::metrics::metrics().job_finished(Some(kind));
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
    let result = JobResult {
        success: false,
        job_id,
        node: node.clone(),
        vmid: None,
        ip: None,
        error: Some(ErrorInfo { kind, step: Step::Validating, message: message.clone() }),
        rolled_back: false,
        host_key: None,
    };
    events.emit(EventType::Error, Some(Step::Validating), None, message, None, Some(result)).await
}

/// The job id of a message, if it has a readable one (even when the rest is not).
fn job_id_of(payload: &[u8]) -> Option<JobId> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value.get("job_id")?.as_str()?.parse().ok()
}

/// Answers the control requests on `subject` until the agent stops: each request's payload
/// goes to `answer`, whose reply is sent back (a request without a reply subject is dropped).
pub(crate) async fn answer_requests<Fut, R>(
    shared: &Shared,
    subject: String,
    what: &str,
    answer: impl Fn(bytes::Bytes) -> Fut,
) where
    Fut: std::future::Future<Output = R>,
    R: serde::Serialize,
{
    let mut requests = match shared.bus.client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, %subject, "cannot listen for {what} requests");
            return;
        }
    };
    loop {
        let request = tokio::select! {
            r = requests.next() => match r { Some(r) => r, None => return },
            _ = shared.stop.cancelled() => return,
        };
        let Some(reply) = request.reply.clone() else { continue };
        let payload = serde_json::to_vec(&answer(request.payload).await).expect("a reply serializes");
        if let Err(e) = shared.bus.client.publish(reply, payload.into()).await {
            tracing::warn!(error = %e, "{what} reply not sent");
        }
    }
}

/// Answers `pvefleet.control.<node>.cancel` requests: `{"job_id": …}` → `{"ok": bool, "message": …}`.
pub async fn serve_cancels(shared: Arc<Shared>) {
    let subject = pvefleet_schemas::names::cancel_subject(&shared.config.node);
    answer_requests(&shared, subject, "cancel", |payload| {
        let shared = &shared;
        async move {
            match pvefleet_schemas::CancelRequest::decode(&payload) {
                Err(e) => {
                    pvefleet_schemas::CancelReply { ok: false, message: format!("unreadable cancel request: {e}") }
                }
                Ok(req) => match shared.cancels.lock().expect("cancels").get(&req.job_id) {
                    Some(token) => {
                        token.cancel();
                        tracing::info!(job_id = %req.job_id, "cancel requested");
                        pvefleet_schemas::CancelReply {
                            ok: true,
                            message: format!("job {} is being cancelled", req.job_id),
                        }
                    }
                    None => pvefleet_schemas::CancelReply {
                        ok: false,
                        message: format!("job {} is not running on {}", req.job_id, shared.config.node),
                    },
                },
            }
        }
    })
    .await
}
