//! The job checkpoints bucket (`pvefleet-jobs`), read and written as async-nats's KV does it
//! (direct gets of a key's last message, publishes with the expected last revision, purges by
//! rollup) but without ever asking for the bucket's stream info: that info, asked with a subject
//! filter, lists every key, and the keys name every node's jobs. So an agent's NATS user needs
//! no right to it (`deploy/nats/auth.conf`), and may read and write only its own node's keys.
//! async-nats's `kv::Store` can only be had through that info, hence these few calls.

use async_nats::HeaderValue;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::Operation;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use pvefleet_schemas::names::JOBS_BUCKET;

use super::error::BusError;

/// One key's last message.
#[derive(Debug, Clone)]
pub struct Entry {
    pub revision: u64,
    pub value: Bytes,
    pub operation: Operation,
}

/// Why a checkpoint call failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The key's last revision is not the one the write expected: someone wrote in between.
    #[error("the key was written since the revision expected")]
    WrongLastRevision,
    #[error("{what}")]
    Nats {
        what: String,
        #[source]
        source: async_nats::Error,
    },
}

impl KvError {
    fn nats(what: impl Into<String>, e: impl Into<async_nats::Error>) -> Self {
        KvError::Nats { what: what.into(), source: e.into() }
    }
}

/// The checkpoints bucket.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    js: jetstream::Context,
    stream: stream::Stream<()>,
}

impl Checkpoints {
    /// The bucket as it is (made by `pvefleet setup`, or by [`crate::bus::Bus::open`] when this
    /// user may make it).
    pub async fn open(js: &jetstream::Context) -> Result<Self, BusError> {
        let stream = js
            .get_stream_no_info(format!("KV_{JOBS_BUCKET}"))
            .await
            .map_err(|e| BusError::nats(format!("KV bucket {JOBS_BUCKET}"), e))?;
        Ok(Self { js: js.clone(), stream })
    }

    /// Whether the bucket answers (a direct get of a key of `node`'s that no one writes).
    pub async fn exists(&self, node: &pvefleet_schemas::NodeName) -> bool {
        match self.stream.direct_get_last_for_subject(subject(&format!("{node}.probe"))).await {
            Ok(_) => true,
            Err(e) => e.kind() == stream::DirectGetErrorKind::NotFound,
        }
    }

    /// The last message of `key`, if it has one.
    pub async fn entry(&self, key: impl AsRef<str>) -> Result<Option<Entry>, KvError> {
        let key = key.as_ref();
        match self.stream.direct_get_last_for_subject(subject(key)).await {
            Ok(m) => {
                let operation = match m.headers.get("KV-Operation").map(HeaderValue::as_str) {
                    Some("DEL") => Operation::Delete,
                    Some("PURGE") => Operation::Purge,
                    _ => Operation::Put,
                };
                Ok(Some(Entry { revision: m.sequence, value: m.payload, operation }))
            }
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(KvError::nats(format!("reading {key}"), e)),
        }
    }

    /// The value of `key`, if it has one that is not deleted.
    pub async fn get(&self, key: impl AsRef<str>) -> Result<Option<Bytes>, KvError> {
        Ok(self.entry(key).await?.filter(|e| e.operation == Operation::Put).map(|e| e.value))
    }

    /// Writes `value` at `key` if its last revision is `revision` (0: none); the new revision.
    pub async fn update(&self, key: impl AsRef<str>, value: Bytes, revision: u64) -> Result<u64, KvError> {
        let key = key.as_ref();
        let publish = PublishMessage::build().payload(value).expected_last_subject_sequence(revision);
        self.publish(key, publish).await
    }

    /// Removes `key` and its history, if its last revision is `revision` (any, when `None`).
    pub async fn purge_expect_revision(&self, key: impl AsRef<str>, revision: Option<u64>) -> Result<(), KvError> {
        let key = key.as_ref();
        let mut publish = PublishMessage::build().header("KV-Operation", "PURGE").header("Nats-Rollup", "sub");
        if let Some(revision) = revision {
            publish = publish.expected_last_subject_sequence(revision);
        }
        self.publish(key, publish).await.map(drop)
    }

    /// Removes `key` and its history.
    pub async fn purge(&self, key: impl AsRef<str>) -> Result<(), KvError> {
        self.purge_expect_revision(key, None).await
    }

    async fn publish(&self, key: &str, message: PublishMessage) -> Result<u64, KvError> {
        let ack = self
            .js
            .send_publish(subject(key), message)
            .await
            .map_err(|e| KvError::nats(format!("writing {key}"), e))?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(KvError::WrongLastRevision),
            Err(e) => Err(KvError::nats(format!("writing {key}"), e)),
        }
    }
}

/// `$KV.pvefleet-jobs.<key>`.
fn subject(key: &str) -> String {
    format!("$KV.{JOBS_BUCKET}.{key}")
}
