//! Who may ask this agent for what. The agent follows one admin-signed policy (the trust
//! bucket's `policy` key, verified against `trust.admin_keys`; the last good one is kept in
//! `state_dir` so a restart does not forget it), and checks every request against it before
//! anything else: its signature, its expiry, that its job id is taken by no other message,
//! and its signer's rights. Every decision goes to the audit stream, and a request is not run
//! until its record is stored there.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, kv};
use pvefleet_schemas::signing::{self, SignerId, SignerKey, VerifyError};
use pvefleet_schemas::trust::{Action, AuditRecord, Decision, Grant, POLICY_KEY, Policy, Refusal, SignedDoc};
use pvefleet_schemas::{JobId, NodeName, Timestamp, V1, names};
use serde_json::Value;

use crate::bus::BusError;

/// The file in `state_dir` that keeps the last policy that verified.
const POLICY_FILE: &str = "policy.json";

/// What the agent believes: the admin keys from its config and the policy they signed.
#[derive(Debug)]
pub struct Trust {
    admins: Vec<SignerKey>,
    policy: RwLock<Option<Arc<Held>>>,
    file: PathBuf,
}

/// The policy taken, with its signers' keys read once (parsing a key is a curve point's
/// decompression: done per request for 50 signers it cost 0.25 ms a job, `just bench`).
#[derive(Debug)]
pub struct Held {
    pub policy: Policy,
    keys: std::collections::HashMap<SignerId, (usize, SignerKey)>,
}

impl Held {
    fn new(policy: Policy) -> Self {
        let keys = policy
            .signer
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.key.parse::<SignerKey>().ok().map(|k| (k.id(), (i, k))))
            .collect();
        Self { policy, keys }
    }

    /// The grant of the signer with key id `id`, and its key.
    pub fn grant(&self, id: &SignerId) -> Option<(&Grant, SignerKey)> {
        self.keys.get(id).map(|(i, k)| (&self.policy.signer[*i], *k))
    }
}

/// A request that passed: who signed it and what the policy lets them do.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub signer: SignerId,
    pub grant: Grant,
}

impl Trust {
    /// The admin keys, and the policy kept from the last run when it still verifies.
    pub fn load(admins: Vec<SignerKey>, state_dir: &std::path::Path) -> Self {
        let trust = Self { admins, policy: RwLock::new(None), file: state_dir.join(POLICY_FILE) };
        if let Ok(bytes) = std::fs::read(&trust.file) {
            match trust.adopt(&bytes) {
                Ok(serial) => tracing::info!(serial, file = %trust.file.display(), "policy from the last run"),
                Err(e) => {
                    tracing::error!(file = %trust.file.display(), error = %e, "the kept policy does not verify; ignored")
                }
            }
        }
        if trust.admins.is_empty() {
            tracing::error!(
                "no admin key is trusted (trust.admin_keys is empty): every request is refused. Put the admin's public \
                 key (`pvefleet identity show` on the admin's machine) in agent.toml's [trust] admin_keys"
            );
        }
        trust
    }

    pub fn policy(&self) -> Option<Arc<Held>> {
        self.policy.read().expect("policy").clone()
    }

    /// Takes a signed policy when an admin key signed it and its serial is not below the one
    /// held; keeps it on disk. Returns its serial.
    pub fn adopt(&self, bytes: &[u8]) -> Result<u64, String> {
        let doc = SignedDoc::decode(bytes).map_err(|e| e.to_string())?;
        let (policy, admin): (Policy, SignerKey) = doc.open(&self.admins).map_err(|e| e.to_string())?;
        policy.validate()?;
        let mut held = self.policy.write().expect("policy");
        if let Some(current) = held.as_ref() {
            if policy.serial < current.policy.serial {
                return Err(format!(
                    "its serial {} is below the one held ({}): an older policy put back is not taken",
                    policy.serial, current.policy.serial
                ));
            }
            if current.policy == policy {
                return Ok(policy.serial);
            }
        }
        let serial = policy.serial;
        *held = Some(Arc::new(Held::new(policy)));
        drop(held);
        if let Err(e) = write_atomically(&self.file, bytes) {
            tracing::warn!(file = %self.file.display(), error = %e, "the policy could not be kept on disk");
        }
        tracing::info!(serial, admin = %admin.id(), "policy taken");
        Ok(serial)
    }

    /// Checks a request's signature and, when `check_expiry`, its expiry; then whether its
    /// signer may ask for `action` on `node`. The spec's own rules are the caller's
    /// ([`Grant::allows_create`]).
    pub fn admit(
        &self,
        message: &Value,
        action: Action,
        node: &NodeName,
        check_expiry: bool,
    ) -> Result<Admitted, Refusal> {
        if self.admins.is_empty() {
            return Err(Refusal::new(
                "policy",
                format!(
                    "the agent of {node} trusts no admin key, so it takes no request: add the admin's public key to \
                     [trust] admin_keys in its agent.toml, and set a policy with `pvefleet policy set`"
                ),
            ));
        }
        let Some(policy) = self.policy() else {
            return Err(Refusal::new(
                "policy",
                format!(
                    "the agent of {node} has no policy yet, so it takes no request: an admin sets one with \
                     `pvefleet policy set FILE`"
                ),
            ));
        };
        let found = std::cell::Cell::new(None);
        let known = |id: &SignerId| {
            let (grant, key) = policy.grant(id)?;
            found.set(Some(grant));
            Some(key)
        };
        // Far in the past when the expiry is not checked (a redelivery of a request taken
        // while it was valid): only the signature counts then.
        let now = if check_expiry {
            time::OffsetDateTime::now_utc()
        } else {
            message
                .pointer("/auth/not_after")
                .and_then(|t| serde_json::from_value::<Timestamp>(t.clone()).ok())
                .map_or_else(time::OffsetDateTime::now_utc, |t| t.0 - time::Duration::seconds(1))
        };
        let key = signing::verify(message, known, now).map_err(|e| {
            let rule = match e {
                VerifyError::Unsigned | VerifyError::Malformed(_) | VerifyError::BadSignature(_) => "signature",
                VerifyError::UnknownSigner(_) => "signer",
                VerifyError::Expired(_) | VerifyError::TooLong(_) => "expiry",
            };
            Refusal::new(rule, e.to_string())
        })?;
        let grant = found.take().expect("a known signer has its grant");
        grant.may(action, node)?;
        Ok(Admitted { signer: key.id(), grant: grant.clone() })
    }
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// How often the agent looks for a new policy.
pub const POLICY_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Follows the policy in the trust bucket until `stop`: each new revision that verifies is
/// taken; one that does not is ignored with an error line, and the last good one stays. It
/// polls by direct get (one cheap request every [`POLICY_POLL`]) rather than watching: a watch
/// is a consumer, and an agent's NATS user creates no consumer but its own job consumer
/// (deploy/nats/auth.conf says why).
pub async fn follow_policy(trust: Arc<Trust>, store: kv::Store, stop: tokio_util::sync::CancellationToken) {
    let mut seen = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLICY_POLL) => {}
            _ = stop.cancelled() => return,
        }
        // A read waits out its timeout while NATS is away: a stop does not wait with it.
        let read = tokio::select! {
            r = store.entry(POLICY_KEY) => r,
            _ = stop.cancelled() => return,
        };
        match read {
            Ok(Some(entry)) if entry.revision != seen => {
                seen = entry.revision;
                match entry.operation {
                    kv::Operation::Put => take(&trust, &entry.value),
                    _ => tracing::warn!("the policy was deleted from the trust bucket; the last good one stays"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %pvefleet_schemas::report::error_chain(&e), "policy not read this time"),
        }
    }
}

/// Before refusing a request, the policy is read again once: a signer an admin added a moment
/// ago is taken now, not at the next poll. Returns whether the policy changed.
pub async fn refresh(trust: &Trust, store: &kv::Store) -> bool {
    let before = trust.policy().map(|p| p.policy.serial);
    match store.get(POLICY_KEY).await {
        Ok(Some(bytes)) => take(trust, &bytes),
        Ok(None) => return false,
        Err(e) => {
            tracing::debug!(error = %pvefleet_schemas::report::error_chain(&e), "policy not read again");
            return false;
        }
    }
    trust.policy().map(|p| p.policy.serial) != before
}

/// Reads the policy once (at start, so no job is refused for want of a policy the bucket has).
pub async fn read_policy(trust: &Trust, store: &kv::Store) -> Result<(), BusError> {
    match store.get(POLICY_KEY).await {
        Ok(Some(bytes)) => {
            take(trust, &bytes);
            Ok(())
        }
        Ok(None) => {
            if trust.policy().is_none() {
                tracing::error!(
                    "no policy in the trust bucket: every request is refused until an admin runs `pvefleet policy set FILE`"
                );
            }
            Ok(())
        }
        Err(e) => Err(BusError::nats(format!("reading the policy from {}", names::TRUST_BUCKET), e)),
    }
}

fn take(trust: &Trust, bytes: &[u8]) {
    if let Err(why) = trust.adopt(bytes) {
        tracing::error!(
            %why,
            "IGNORED a policy in the trust bucket that does not verify; the last good one stays. Whoever wrote it \
             holds write access to the bucket without the admin key: look at who can write {}",
            names::TRUST_BUCKET
        );
    }
}

/// What happened to a job id when a message carrying it tried to take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// The id was free: this message has it now.
    New,
    /// This same message took it earlier (a redelivery).
    Again,
    /// Another message took it: this one is a replay, or a forgery of its id.
    ByOther(u64),
}

/// Takes `job_id` for the stream message `seq`: one message per job id, for as long as any
/// signed request can be valid.
pub async fn take_job_id(store: &kv::Store, node: &NodeName, job_id: JobId, seq: u64) -> Result<Taken, BusError> {
    let key = names::request_key(node, &job_id);
    let mine = seq.to_string();
    for _ in 0..3 {
        match store.create(&key, mine.clone().into()).await {
            Ok(_) => return Ok(Taken::New),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(BusError::nats(format!("taking job id {job_id}"), e)),
        }
        match store.get(&key).await {
            Ok(Some(v)) => {
                let by: u64 = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                return Ok(if by == seq { Taken::Again } else { Taken::ByOther(by) });
            }
            // Expired between the two calls: try again.
            Ok(None) => {}
            Err(e) => return Err(BusError::nats(format!("reading job id {job_id}"), e)),
        }
    }
    Err(BusError::nats(format!("taking job id {job_id}"), "its entry keeps changing"))
}

/// Takes a signed control request once, by its signature: `false` when it was taken before (a
/// replay). Kept as long as a job id, so for longer than any request is valid.
pub async fn take_request(store: &kv::Store, node: &NodeName, signature: &str) -> Result<bool, BusError> {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(signature.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    match store.create(format!("{node}.control.{hex}"), bytes::Bytes::new()).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(BusError::nats("recording a control request", e)),
    }
}

/// Stores one decision in the audit stream, waiting for the stream's acknowledgement: a
/// request is acted on only once its record is kept. `message` names the request's message
/// (a job's stream sequence): the same decision on the same message (a redelivery) within the
/// stream's duplicate window is stored once; `None` for a request with no message of its own
/// (a control request), each stored.
pub async fn audit(
    js: &jetstream::Context,
    node: &NodeName,
    record: &AuditRecord,
    message: Option<u64>,
) -> Result<(), BusError> {
    let decision = match record.decision {
        Decision::Accepted => "accepted",
        Decision::Refused => "refused",
    };
    let id = match (record.job_id, message) {
        (Some(job), Some(seq)) => format!("{node}:{job}:{seq}:{decision}"),
        _ => ulid::Ulid::new().to_string(),
    };
    let message = jetstream::message::PublishMessage::build().payload(record.encode().into()).message_id(id);
    let ack = js
        .send_publish(names::audit_subject(node), message)
        .await
        .map_err(|e| BusError::nats("recording a decision in the audit stream", e))?;
    ack.await.map_err(|e| BusError::nats("recording a decision in the audit stream", e))?;
    Ok(())
}

/// An audit record of a decision by `node`'s agent.
pub fn record(
    node: &NodeName,
    action: &str,
    job_id: Option<JobId>,
    message: &Value,
    grant: Option<&Grant>,
    refusal: Option<&Refusal>,
) -> AuditRecord {
    AuditRecord {
        v: V1,
        at: Timestamp::now(),
        node: Some(node.clone()),
        action: action.to_owned(),
        job_id,
        signer: message.pointer("/auth/signer").and_then(Value::as_str).map(|s| pvefleet_schemas::event::cut(s, 80)),
        signer_name: grant.map(|g| g.name.clone()),
        user: message.pointer("/auth/user").and_then(Value::as_str).map(|s| pvefleet_schemas::event::cut(s, 80)),
        decision: if refusal.is_some() { Decision::Refused } else { Decision::Accepted },
        rule: refusal.map(|r| r.rule.clone()),
        message: refusal.map_or_else(|| "accepted".to_owned(), |r| r.message.clone()),
    }
}
