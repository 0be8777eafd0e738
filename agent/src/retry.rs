//! The agent's retry and backoff policy: every number in one place, and the one helper that
//! waits for something PVE is still doing.
//!
//! # Which errors are retried where
//! - **Inside a call.** A Proxmox API call is sent again while its failure may pass
//!   ([`crate::proxmox::PveError::is_transient`]: no answer, a lock timeout, a 5xx that is not
//!   one of PVE's statements of fact), by [`pve_call`]. A NATS operation is tried again through
//!   a leader election, by [`nats_request`]. Connecting to NATS ([`nats_connect`]) and finding
//!   its streams ([`nats_layout`]) go on until the agent stops. Connecting to a new container
//!   over SSH goes on while it boots ([`ssh_connect`]), up to the job's deadline; a host-key
//!   mismatch or a refused credential is never retried.
//! - **Inside a step.** Waiting for PVE to finish something (a task's log, a create's lock, a
//!   container's address, a lost checkpoint's creates) polls with a [`Wait`] at a [`Pace`],
//!   under the step's deadline. A delete that lost its lock race is sent again, up to
//!   [`DELETE_ATTEMPTS`] times; an "already exists" for a vmid nobody holds yet is looked at
//!   again [`ALREADY_EXISTS_LOOKS`] times before another vmid is taken.
//! - **Per job.** A job whose NATS failed under it is checkpointed, handed back and delivered
//!   again after a nak (see `intake::policy`), up to `intake::MAX_DELIVERIES` deliveries;
//!   fetching the next job backs off by [`FETCH_JOBS`].
//!
//! Nothing else is retried: a refusal PVE means (already exists elsewhere, missing, no space,
//! a checksum mismatch) fails its step, and the job's rollback policy applies.

use std::time::Duration;

use tokio::time::Instant;

use backon::ExponentialBuilder;

/// One Proxmox API call: six more tries over about fifteen seconds.
pub fn pve_call() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(6)
        .with_jitter()
}

/// One NATS operation: about a minute, enough for a cluster to elect a leader.
pub fn nats_request() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(15)
        .with_jitter()
}

/// Connecting to NATS: until it answers or the agent stops.
pub fn nats_connect() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .with_jitter()
}

/// Finding (or making) the streams, buckets and consumer: until `pvefleet setup` has run.
pub fn nats_layout() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
}

/// Connecting to a container over SSH while it boots; the caller bounds it by a deadline.
pub fn ssh_connect() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_jitter()
}

/// No retry: the heartbeat's reads (the next beat is its retry).
pub fn none() -> ExponentialBuilder {
    ExponentialBuilder::default().with_max_times(0)
}

/// How often a delete that lost the race for its container's lock is sent.
pub const DELETE_ATTEMPTS: u32 = 3;

/// How often an update writes its config against a digest another user keeps changing before
/// it fails with `conflict` (each write follows a fresh read and diff, so none is blind).
pub const CONFIG_DIGEST_ATTEMPTS: u32 = 3;
/// How often an update's config write whose answer never came is followed by a fresh read
/// (which says whether it was carried out) and, if not, written again; and the pauses between.
pub const CONFIG_UNANSWERED_ATTEMPTS: u32 = 5;
pub const CONFIG_UNANSWERED: Pace =
    Pace { first: Duration::from_millis(200), factor: 2.0, max: Duration::from_secs(2) };

/// How often a request that must run once (a reboot, a rollback, a backup, a migration) is
/// sent while no answer comes and the node's task list shows none begun since (each time only
/// after [`ONCE_SETTLE`]): it is never sent twice knowingly, so its answer's loss is looked up
/// rather than retried blindly.
pub const ONCE_ATTEMPTS: u32 = 4;
/// How long such a request whose answer never came is given to show up in the task list (a
/// request that hung on its way may still start its task) before the list is read.
pub const ONCE_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a moved container is looked for on its target node (an HA migration ends its
/// task before the container arrives).
pub const ARRIVAL: Pace = Pace { first: Duration::from_millis(250), factor: 2.0, max: Duration::from_secs(2) };

/// How often an "already exists" for a vmid that no container on this node holds is looked
/// at again (a create whose answer is still on its way) before another vmid is taken, and the
/// pause before each look, times the look's number.
pub const ALREADY_EXISTS_LOOKS: u32 = 3;
pub const ALREADY_EXISTS_PAUSE: Duration = Duration::from_millis(200);

/// How a poll's pauses grow: the first, times `factor` after each, never above `max`.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub first: Duration,
    pub factor: f32,
    pub max: Duration,
}

impl Pace {
    /// The pause after `pause`.
    pub fn after(&self, pause: Duration) -> Duration {
        pause.mul_f32(self.factor).min(self.max)
    }
}

/// A task's log, read while the task runs.
pub const TASK_LOG: Pace = Pace { first: Duration::from_millis(50), factor: 1.5, max: Duration::from_secs(2) };
/// A container's create lock, waited out before its marker can be read.
pub const CREATE_LOCK: Pace = Pace { first: Duration::from_millis(100), factor: 2.0, max: Duration::from_secs(2) };
/// The creates under way on the node, when a job's checkpoint was lost.
pub const LOST_CHECKPOINT: Pace = Pace { first: Duration::from_millis(200), factor: 2.0, max: Duration::from_secs(2) };
/// A started container's address.
pub const ADDRESS: Pace = Pace { first: Duration::from_millis(100), factor: 2.0, max: Duration::from_secs(3) };
/// Fetching the next job after NATS failed; back to the first pause once a fetch works.
pub const FETCH_JOBS: Pace = Pace { first: Duration::from_millis(100), factor: 2.0, max: Duration::from_secs(10) };

/// Waiting for something that changes by itself, up to a deadline: check, then
/// `if !wait.pause().await { /* timed out after wait.within */ }`, and again.
#[derive(Debug)]
pub struct Wait {
    pace: Pace,
    next: Duration,
    deadline: Instant,
    /// How long the wait may last in all, for the message that says it ran out.
    pub within: Duration,
}

impl Wait {
    pub fn new(pace: Pace, within: Duration) -> Self {
        Self { pace, next: pace.first, deadline: Instant::now() + within, within }
    }

    /// Sleeps until the next check, or says the deadline has passed (then without sleeping).
    pub async fn pause(&mut self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.next).await;
        self.next = self.pace.after(self.next);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_grows_to_its_max_and_stays() {
        let mut pause = ADDRESS.first;
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(pause.as_millis());
            pause = ADDRESS.after(pause);
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3000, 3000, 3000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_deadline() {
        let mut wait = Wait::new(CREATE_LOCK, Duration::from_secs(1));
        let began = tokio::time::Instant::now();
        let mut checks = 1;
        while wait.pause().await {
            checks += 1;
        }
        // Checks at 0, 0.1, 0.3, 0.7 and 1.5 s: the last after the deadline, then no more.
        assert_eq!(checks, 5);
        assert!(began.elapsed() >= Duration::from_secs(1));
    }
}
