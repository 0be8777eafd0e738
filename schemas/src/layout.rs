//! The JetStream layout as the contract sets it: both the agent (when it may create what is
//! missing) and `pvefleet setup` build their streams and buckets from here, so they agree.
//! Only config values; nothing here talks to a server.

use std::time::Duration;

use async_nats::jetstream::{kv, stream};

use crate::names;

/// How long a repeated submit of the same job id is absorbed (contract: ≥ 10 min).
pub const JOBS_DUPLICATE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long events stay replayable.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Each node's events stream's size bound: that node's oldest events go first when it is
/// reached (another node's never). JetStream reserves it on disk for every node, so it is a
/// node's share, not the fleet's: a job forwards at most 16 MiB of script output, so this
/// holds dozens of the worst jobs and hundreds of thousands of ordinary ones (~2 KiB each).
pub const EVENTS_MAX_BYTES: i64 = 1024 * 1024 * 1024;
/// Republished events within this window are absorbed (an agent retrying a publish).
pub const EVENTS_DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60);
/// A checkpoint outlives any job by far; a leftover one expires.
pub const CHECKPOINT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// A vmid reservation outlives the few seconds between its choice and the create by far; a
/// job that resumes after it expired finds the id taken or free, and acts on what it finds.
pub const VMID_RESERVATION_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// An agent's heartbeat entry expires after this long without a beat (three 5 s beats).
pub const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(15);

/// The work queue of jobs.
pub fn jobs_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: names::JOBS_STREAM.into(),
        subjects: vec![names::JOBS_SUBJECTS.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: JOBS_DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// One node's jobs' events, replayable for a week, in a stream of the node's own.
pub fn events_stream(node: &crate::ids::NodeName, replicas: usize) -> stream::Config {
    stream::Config {
        name: names::events_stream(node),
        subjects: vec![names::node_events_filter(node)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: EVENTS_MAX_AGE,
        max_bytes: EVENTS_MAX_BYTES,
        // Readers replay a job's events by direct get, never through a consumer of their own
        // (see deploy/nats/auth.conf), and an agent reads its own node's last event so.
        allow_direct: true,
        discard: stream::DiscardPolicy::Old,
        // Agents cut every event to fit; anything bigger is not one of theirs.
        max_message_size: events_max_message_size(),
        duplicate_window: EVENTS_DUPLICATE_WINDOW,
        // History is kept whoever asks: no message of it is deleted and the stream never
        // purged, by any user (only an admin may delete the whole stream).
        deny_delete: true,
        deny_purge: true,
        num_replicas: replicas,
        ..Default::default()
    }
}

fn events_max_message_size() -> i32 {
    // Headers (message id) come on top of the payload.
    (crate::event::MAX_EVENT_BYTES + 4096) as i32
}

/// Job checkpoints.
pub fn jobs_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: names::JOBS_BUCKET.into(),
        description: "pvefleet job checkpoints: what a redelivered job resumes from".into(),
        history: 1,
        max_age: CHECKPOINT_MAX_AGE,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Vmid reservations: the KV bucket's stream, made by hand for what a bucket's config cannot
/// say. Every agent may reserve any id (ids are cluster-wide), so the server itself must keep
/// one agent from undoing another's reservation: one message per key, and a second is refused
/// while the first lives (`discard_new_per_subject`), so no put, delete or purge of a live
/// reservation lands, whoever sends it; no rollup (a purge) at all. A reservation carries its
/// own TTL (minutes) and is gone when it expires, leaving no marker (a marker would be the key's
/// one message, refusing the next reservation of the id).
pub fn vmids_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{}", names::VMIDS_BUCKET),
        description: Some("pvefleet vmids chosen for jobs, so concurrent jobs never pick the same one".into()),
        subjects: vec![format!("$KV.{}.>", names::VMIDS_BUCKET)],
        max_messages_per_subject: 1,
        max_age: VMID_RESERVATION_MAX_AGE,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        allow_rollup: false,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        allow_message_ttl: true,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// How long a job id's entry in the requests bucket is kept: longer than any signed request
/// can be valid, so a replay of one always finds its id taken.
pub const REQUESTS_MAX_AGE: Duration = Duration::from_secs((crate::signing::MAX_VALIDITY_MINUTES as u64 + 60) * 60);

/// How long audit records are kept.
pub const AUDIT_MAX_AGE: Duration = Duration::from_secs(400 * 24 * 3600);

/// The admin-signed policy and enrolled agents. History is kept (a few revisions) so an
/// operator can see what a change replaced.
pub fn trust_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: names::TRUST_BUCKET.into(),
        description: "pvefleet admin-signed policy and enrolled agents; nothing counts unless it verifies".into(),
        history: 10,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Job ids taken, each with the stream message that carried it.
pub fn requests_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: names::REQUESTS_BUCKET.into(),
        description: "pvefleet job ids taken by agents: one message per job id, replays refused".into(),
        history: 1,
        max_age: REQUESTS_MAX_AGE,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Every container with a pvefleet marker, as its node's agent last saw it: the last value
/// per key only.
pub fn inventory_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: names::INVENTORY_BUCKET.into(),
        description: "pvefleet inventory: each node's containers with a pvefleet marker, under <node>.<vmid>".into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The audit trail: nobody deletes a record or purges the stream (`deny_delete`,
/// `deny_purge`); records age out after [`AUDIT_MAX_AGE`].
pub fn audit_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: names::AUDIT_STREAM.into(),
        description: Some("pvefleet audit: every decision on a request, every admin action".into()),
        subjects: vec![names::AUDIT_SUBJECTS.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: AUDIT_MAX_AGE,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        duplicate_window: EVENTS_DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Agent heartbeats; an entry is gone `ttl` after its agent's last beat.
pub fn nodes_bucket(replicas: usize, ttl: Duration) -> kv::Config {
    kv::Config {
        bucket: names::NODES_BUCKET.into(),
        description: "pvefleet agent heartbeats; an entry expires when its agent stops beating".into(),
        history: 1,
        max_age: ttl,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Whether `err`, or a cause of it, is JetStream refusing to make a stream (a KV bucket is one)
/// because another client made it meanwhile with another config: agents and `pvefleet setup`
/// each make what they miss (their heartbeat TTLs differ), so two can meet between "not there"
/// and "made". The one refused finds the stream there when it looks again.
pub fn made_meanwhile(err: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(create) = e.downcast_ref::<CreateStreamError>()
            && let CreateStreamErrorKind::JetStream(js) = create.kind()
            && js.error_code() == ErrorCode::STREAM_NAME_EXIST
        {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_made_meanwhile_is_told_from_other_create_errors() {
        use async_nats::jetstream::context::{
            CreateKeyValueError, CreateKeyValueErrorKind, CreateStreamError, CreateStreamErrorKind,
        };
        let js_error = |code: u64| -> async_nats::jetstream::Error {
            serde_json::from_value(serde_json::json!({"code": 400, "err_code": code, "description": "x"})).unwrap()
        };
        let exists = CreateStreamError::new(CreateStreamErrorKind::JetStream(js_error(10058)));
        assert!(made_meanwhile(&exists), "create_stream and create_or_update_stream");
        let kv = CreateKeyValueError::with_source(CreateKeyValueErrorKind::JetStream, exists);
        assert!(made_meanwhile(&kv), "create_or_update_key_value");
        let kv = CreateKeyValueError::with_source(
            CreateKeyValueErrorKind::BucketCreate,
            CreateStreamError::new(CreateStreamErrorKind::JetStream(js_error(10058))),
        );
        assert!(made_meanwhile(&kv), "create_key_value");
        let other = CreateStreamError::new(CreateStreamErrorKind::JetStream(js_error(10047)));
        assert!(!made_meanwhile(&other), "insufficient resources is not it");
        assert!(!made_meanwhile(&CreateStreamError::new(CreateStreamErrorKind::TimedOut)));
    }

    #[test]
    fn the_events_stream_is_bounded_in_size_and_age() {
        let events = events_stream(&crate::ids::NodeName::new("pve1").unwrap(), 3);
        assert_eq!(
            (events.name.as_str(), events.subjects[0].as_str()),
            ("PVEFLEET_EVENTS_pve1", "pvefleet.events.pve1.>")
        );
        assert_eq!(events.max_age, EVENTS_MAX_AGE);
        assert_eq!(events.max_bytes, EVENTS_MAX_BYTES);
        assert!(events.max_message_size as usize > crate::event::MAX_EVENT_BYTES);
        assert_eq!(events.num_replicas, 3);
        assert!(events.allow_direct);
    }
}
