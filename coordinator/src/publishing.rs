//! A job onto the work queue once per request: recorded in the store first, then published
//! with its id as the dedup id (a publish tried again is dropped by the stream), and its
//! stream sequence noted once the stream confirms it. A request id seen before stands for the
//! job recorded then: published again, never remade, when its publish was never confirmed.
//! Every verb that publishes a job (submit, `submit --count`, destroy) goes through here.

use async_nats::jetstream::{self, message::PublishMessage};
use pvefleet_schemas::names::{JobKind, job_subject};
use pvefleet_schemas::signing::Identity;
use pvefleet_schemas::{DestroyJob, Job, JobId, NodeName};

use crate::Failure;
use crate::bus::Nats;
use crate::store::{JobState, Store, job};

/// A job message as it goes on the wire.
#[derive(Debug)]
pub struct Outgoing {
    pub job_id: JobId,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// The person this process signs for (`--acting-user`), set once at start.
pub static ACTING_USER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// How long a job signed here stays valid: long enough to wait in the queue for its agent.
pub const SIGNED_FOR_MINUTES: u32 = 60;

impl Outgoing {
    /// A create job as it goes on the wire, signed by `signer` (after its secrets are sealed,
    /// so the signature covers them as sealed).
    pub fn create(job: &Job, signer: &Identity) -> Result<Self, Failure> {
        Ok(Self { job_id: job.job_id, subject: job_subject(&job.node, JobKind::Create), payload: signed(job, signer)? })
    }

    /// A day-two job (`update`, `resize`, `power`) as it goes on the wire, signed.
    pub fn day_two(
        job_id: JobId,
        node: &NodeName,
        kind: JobKind,
        message: &impl serde::Serialize,
        signer: &Identity,
    ) -> Result<Self, Failure> {
        Ok(Self { job_id, subject: job_subject(node, kind), payload: signed(message, signer)? })
    }

    pub fn destroy(job: &DestroyJob, signer: &Identity) -> Result<Self, Failure> {
        Ok(Self {
            job_id: job.job_id,
            subject: job_subject(&job.node, JobKind::Destroy),
            payload: signed(job, signer)?,
        })
    }
}

/// The message's bytes with its `auth` (schemas/SIGNING.md), valid `minutes`.
/// A service acting for a person (the web view, through `--acting-user`) names them in it.
pub fn signed_for(message: &impl serde::Serialize, signer: &Identity, minutes: u32) -> Result<Vec<u8>, Failure> {
    let mut value = serde_json::to_value(message).expect("a message serializes");
    let user = ACTING_USER.get().map(String::as_str);
    signer.sign_for(&mut value, minutes, user).map_err(|e| anyhow::anyhow!("signing the request: {e}"))?;
    Ok(serde_json::to_vec(&value).expect("JSON serializes"))
}

fn signed(message: &impl serde::Serialize, signer: &Identity) -> Result<Vec<u8>, Failure> {
    signed_for(message, signer, SIGNED_FOR_MINUTES)
}

/// How long a control request (a cancel, a plan) signed here stays valid: it is answered at
/// once or not at all.
pub const CONTROL_SIGNED_FOR_MINUTES: u32 = 5;

/// The job recorded before for request `key`, if any. When that job's publish was never
/// confirmed (an error, a lost ack, a crash), it is published again first (the stream drops it
/// if it had landed after all), its message made anew by `again` (its secrets sealed again):
/// one request is one job, never two.
pub async fn earlier(
    store: &Store,
    nats: &Nats<'_>,
    key: &str,
    again: impl AsyncFnOnce(&job::Model, &jetstream::Context) -> Result<Outgoing, Failure>,
) -> Result<Option<job::Model>, Failure> {
    let Some(existing) = store.job_by_request(key).await? else { return Ok(None) };
    eprintln!("request {key} was submitted before as job {}", existing.job_id);
    if existing.stream_seq.is_none() && existing.state == JobState::Queued {
        let js = nats.js().await?;
        let out = again(&existing, js).await?;
        let seq = publish(js, &out).await?;
        store.set_stream_seq(&out.job_id, seq).await?;
    }
    Ok(Some(existing))
}

/// Publishes a job just recorded in the store and notes its stream sequence. If the publish
/// cannot be confirmed, a job with a request id keeps its record (the job may or may not be in
/// the stream: the same command again publishes this job, never a second one); one without is
/// forgotten.
pub async fn publish_recorded(
    store: &Store,
    js: &jetstream::Context,
    out: &Outgoing,
    request_id: Option<&str>,
) -> Result<(), Failure> {
    match publish(js, out).await {
        Ok(seq) => Ok(store.set_stream_seq(&out.job_id, seq).await?),
        Err(e) => {
            match request_id {
                Some(key) => eprintln!(
                    "job {} is recorded but not confirmed queued; run the same command (--request-id {key}) again",
                    out.job_id
                ),
                None => store.delete_job(&out.job_id).await?,
            }
            Err(e.into())
        }
    }
}

/// Publishes a job message with its id as the dedup id and returns its stream sequence. A
/// publish that times out (a cluster electing a leader) is tried again: the same id makes that
/// safe.
pub async fn publish(js: &jetstream::Context, out: &Outgoing) -> anyhow::Result<u64> {
    use async_nats::jetstream::context::PublishErrorKind;
    use backon::{ExponentialBuilder, Retryable as _};
    let payload: bytes::Bytes = out.payload.clone().into();
    // The job's events go to its node's events stream: it must be there before the job is.
    if let Some(node) = out.subject.split('.').nth(2).and_then(|n| NodeName::new(n).ok()) {
        crate::bus::ensure_events_stream(js, &node).await?;
    }
    let retry = ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(3))
        .with_total_delay(Some(std::time::Duration::from_secs(30)))
        .without_max_times();
    let ack = (|| async {
        js.send_publish(
            out.subject.clone(),
            PublishMessage::build().payload(payload.clone()).message_id(out.job_id.to_string()),
        )
        .await?
        .await
    })
    .retry(retry)
    .when(|e| {
        matches!(e.kind(), PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe) && crate::bus::refused().is_none()
    })
    .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "publishing the job failed; retrying"))
    .await
    .map_err(|e| match crate::bus::refused() {
        Some(why) => anyhow::anyhow!("NATS refused to take the job for this user: {why}"),
        None => anyhow::anyhow!("the jobs stream did not take the job (run `pvefleet setup`?): {e}"),
    })?;
    Ok(ack.sequence)
}
