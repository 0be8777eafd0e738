//! One run at a time per job. A job's checkpoint in `pvefleet-jobs` doubles as its lease:
//! a run takes the job by writing its own name and a deadline into the checkpoint, and every
//! later write is a compare-and-set on the revision it last wrote. So:
//!
//! - a second delivery of a job whose lease is live (NATS redelivered it while its first run
//!   was cut off, a second agent for the same node, a consumer whose `ack_wait` is shorter
//!   than the agent's) does not run: it is handed back until the lease can have expired;
//! - a run whose lease was taken over cannot write its checkpoint back: its next write fails
//!   and it stops at once, touching nothing more;
//! - a run that cannot renew its lease (NATS away) stops acting when the lease runs out,
//!   before another run may take the job over.
//!
//! A lease that was never renewed expires on its own, so a run killed mid-job is taken over
//! by the next delivery; a run that stops cleanly releases its lease at once.

use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use backon::Retryable as _;
use pvefleet_schemas::{Checkpoint, JobId, Lease, NodeName, Timestamp, names};
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::checkpoints::{Checkpoints, KvError};
use super::error::BusError;

/// A run's hold on one job, through which its checkpoint is written.
#[derive(Debug)]
pub struct Claim {
    kv: Checkpoints,
    key: String,
    owner: String,
    lease: Duration,
    held: Mutex<Held>,
    /// Fired when the lease is lost (taken over, or run out without renewal).
    lost: CancellationToken,
}

#[derive(Debug)]
struct Held {
    revision: u64,
    saved: Checkpoint,
    until: OffsetDateTime,
}

/// What trying to take a job found.
#[derive(Debug)]
pub enum Taken {
    /// This run holds the job; the checkpoint is as the last run left it (or new).
    Mine(Box<(Claim, Checkpoint)>),
    /// Another run holds a live lease on the job.
    Busy { owner: String, until: Timestamp },
}

/// How long after a lease's deadline another run may take the job over: the holder stops at
/// the deadline by its own clock, this covers the time its last request may still take.
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(2);

impl Claim {
    /// Takes `job` for the run named `owner` (unique per delivery) for `lease`, unless another
    /// run holds it.
    pub async fn take(
        kv: &Checkpoints,
        node: &NodeName,
        job: JobId,
        owner: String,
        lease: Duration,
    ) -> Result<Taken, BusError> {
        let key = names::checkpoint_key(node, &job);
        loop {
            let entry = (|| kv.entry(key.clone()))
                .retry(crate::retry::nats_request())
                .await
                .map_err(|e| BusError::nats(format!("reading checkpoint {key}"), e))?;
            let (revision, found) = match entry {
                Some(e) if e.operation == Operation::Put => (e.revision, decode(&key, &e.value)),
                Some(e) => (e.revision, None),
                None => (0, None),
            };
            let mut cp = found.unwrap_or_else(|| Checkpoint::new(job, node.clone()));
            if let Some(other) = &cp.lease
                && other.owner != owner
                && OffsetDateTime::now_utc() < other.until.0 + TAKEOVER_GRACE
            {
                return Ok(Taken::Busy { owner: other.owner.clone(), until: other.until });
            }
            let until = OffsetDateTime::now_utc() + lease;
            cp.lease = Some(Lease { owner: owner.clone(), until: Timestamp(until) });
            match write(kv, &key, &cp, revision).await {
                Ok(revision) => {
                    let held = Held { revision, saved: cp.clone(), until };
                    let claim = Self {
                        kv: kv.clone(),
                        key,
                        owner,
                        lease,
                        held: Mutex::new(held),
                        lost: CancellationToken::new(),
                    };
                    return Ok(Taken::Mine(Box::new((claim, cp))));
                }
                // Another run wrote between our read and our write: look again.
                Err(WriteError::Conflict) => continue,
                Err(WriteError::Nats(e)) => return Err(e),
            }
        }
    }

    /// Takes a job that has no checkpoint yet (its first delivery) in one write; `None` if it
    /// has one after all, for [`Claim::take`] to look at.
    pub async fn take_new(
        kv: &Checkpoints,
        node: &NodeName,
        job: JobId,
        owner: String,
        lease: Duration,
    ) -> Result<Option<(Claim, Checkpoint)>, BusError> {
        let key = names::checkpoint_key(node, &job);
        let mut cp = Checkpoint::new(job, node.clone());
        let until = OffsetDateTime::now_utc() + lease;
        cp.lease = Some(Lease { owner: owner.clone(), until: Timestamp(until) });
        match write(kv, &key, &cp, 0).await {
            Ok(revision) => {
                let held = Held { revision, saved: cp.clone(), until };
                let claim =
                    Self { kv: kv.clone(), key, owner, lease, held: Mutex::new(held), lost: CancellationToken::new() };
                Ok(Some((claim, cp)))
            }
            Err(WriteError::Conflict) => Ok(None),
            Err(WriteError::Nats(e)) => Err(e),
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Fires when this run may no longer act on the job.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Writes `cp` (with the lease renewed) if this run still holds the job.
    pub async fn save(&self, cp: &Checkpoint) -> Result<(), BusError> {
        let mut held = self.held.lock().await;
        self.write_held(&mut held, cp.clone()).await
    }

    /// Whether `cp` holds anything the last write did not, besides which step is done: a step
    /// that only moved the job on is not worth a write (every step is idempotent, so a resumed
    /// job simply does it again), one that produced an output is.
    pub async fn has_news(&self, cp: &Checkpoint) -> bool {
        let held = self.held.lock().await;
        let mut a = cp.clone();
        let mut b = held.saved.clone();
        (a.done, a.lease) = (None, None);
        (b.done, b.lease) = (None, None);
        a != b
    }

    /// Renews the lease on the checkpoint as last saved.
    pub async fn renew(&self) -> Result<(), BusError> {
        let mut held = self.held.lock().await;
        let cp = held.saved.clone();
        self.write_held(&mut held, cp).await
    }

    async fn write_held(&self, held: &mut Held, mut cp: Checkpoint) -> Result<(), BusError> {
        if self.lost.is_cancelled() {
            return Err(BusError::LeaseLost);
        }
        let until = OffsetDateTime::now_utc() + self.lease;
        cp.lease = Some(Lease { owner: self.owner.clone(), until: Timestamp(until) });
        match write(&self.kv, &self.key, &cp, held.revision).await {
            Ok(revision) => {
                *held = Held { revision, saved: cp, until };
                Ok(())
            }
            Err(WriteError::Conflict) => {
                tracing::warn!(key = %self.key, "another run took this job over; stopping");
                self.lost.cancel();
                Err(BusError::LeaseLost)
            }
            Err(WriteError::Nats(e)) => {
                if OffsetDateTime::now_utc() >= held.until {
                    self.lost.cancel();
                }
                Err(e)
            }
        }
    }

    /// Renews the lease a few times per lease period until it is lost; never returns before.
    /// Run it beside the job: when it fires [`Claim::lost`], the job stops at its next await.
    pub async fn keep(&self) {
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.lost.cancelled() => return,
            }
            match self.renew().await {
                Ok(()) => {}
                Err(BusError::LeaseLost) => return,
                Err(e) => {
                    let until = self.held.lock().await.until;
                    if OffsetDateTime::now_utc() >= until {
                        tracing::warn!(error = %pvefleet_schemas::report::error_chain(&e), "the job's lease ran out without renewal; stopping");
                        self.lost.cancel();
                        return;
                    }
                    tracing::warn!(error = %pvefleet_schemas::report::error_chain(&e), "renewing the job's lease failed; trying again");
                }
            }
        }
    }

    /// Ends this run's hold: a finished job's checkpoint is removed; an unfinished one is
    /// kept without a lease, so the next delivery may resume it at once.
    pub async fn release(&self, finished: bool) -> Result<(), BusError> {
        let mut held = self.held.lock().await;
        if self.lost.is_cancelled() {
            return Ok(()); // not ours to touch any more
        }
        if finished {
            let revision = held.revision;
            return (|| self.kv.purge_expect_revision(self.key.clone(), Some(revision)))
                .retry(crate::retry::nats_request())
                .await
                .map_err(|e| BusError::nats(format!("clearing checkpoint {}", self.key), e));
        }
        let mut cp = held.saved.clone();
        cp.lease = None;
        match write(&self.kv, &self.key, &cp, held.revision).await {
            Ok(revision) => {
                held.revision = revision;
                held.saved = cp;
                Ok(())
            }
            Err(WriteError::Conflict) => Ok(()),
            Err(WriteError::Nats(e)) => Err(e),
        }
    }
}

fn decode(key: &str, bytes: &[u8]) -> Option<Checkpoint> {
    // A checkpoint this build cannot read is treated as absent: the steps re-check the world
    // anyway, and the marker tag keeps them from touching a stranger.
    Checkpoint::decode(bytes).inspect_err(|e| tracing::warn!(error = %pvefleet_schemas::report::error_chain(e), %key, "unreadable checkpoint ignored")).ok()
}

enum WriteError {
    /// The checkpoint changed since `revision`: written by another run.
    Conflict,
    Nats(BusError),
}

/// Writes `cp` at `key` if its revision is still `revision` (0: if there is none). A write
/// whose acknowledgement was lost and is found done when retried counts as done.
async fn write(kv: &Checkpoints, key: &str, cp: &Checkpoint, revision: u64) -> Result<u64, WriteError> {
    let value: bytes::Bytes = cp.encode().into();
    let attempt = || async {
        match kv.update(key, value.clone(), revision).await {
            Ok(rev) => Ok(Ok(rev)),
            Err(KvError::WrongLastRevision) => {
                // Our own earlier attempt may have landed before its answer was lost.
                match kv.entry(key.to_owned()).await {
                    Ok(Some(entry)) if entry.operation == Operation::Put && entry.value == value => {
                        Ok(Ok(entry.revision))
                    }
                    Ok(_) => Ok(Err(WriteError::Conflict)),
                    Err(e) => Err(BusError::nats(format!("reading checkpoint {key}"), e)),
                }
            }
            Err(e) => Err(BusError::nats(format!("writing checkpoint {key}"), e)),
        }
    };
    match attempt
        .retry(crate::retry::nats_request())
        .notify(|e, wait| tracing::warn!(error = %pvefleet_schemas::report::error_chain(e), retry_in = ?wait, "checkpoint write failed; retrying"))
        .await
    {
        Ok(done) => done,
        Err(e) => Err(WriteError::Nats(e)),
    }
}
