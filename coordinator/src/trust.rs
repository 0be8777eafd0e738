//! The trust bucket and the audit trail as operators see them: the admin-signed policy read
//! and written (`policy show|set`, `whoami`), admin actions recorded, and the audit stream
//! read back with filters (`pvefleet audit`).

use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt as _;
use pvefleet_schemas::signing::{Identity, SignerKey};
use pvefleet_schemas::trust::{AuditRecord, Decision, Enrollment, POLICY_KEY, Policy, SignedDoc, enrollment_key};
use pvefleet_schemas::{NodeName, Timestamp, V1, layout, names};

/// The trust bucket, made when missing (by whoever may).
pub async fn bucket(js: &jetstream::Context) -> anyhow::Result<kv::Store> {
    match js.get_key_value(names::TRUST_BUCKET).await {
        Ok(kv) => Ok(kv),
        Err(_) => js
            .create_key_value(layout::trust_bucket(1))
            .await
            .map_err(|e| anyhow::anyhow!("the trust bucket {} (run `pvefleet setup`): {e}", names::TRUST_BUCKET)),
    }
}

/// The policy in the bucket: the signed document, its body and the key that signed it
/// (checked against the key it names; whether that is an admin's, each agent decides).
#[derive(Debug)]
pub struct Current {
    pub doc: SignedDoc,
    pub policy: Policy,
    pub signed_by: SignerKey,
}

pub async fn current_policy(js: &jetstream::Context) -> anyhow::Result<Option<Current>> {
    let kv = bucket(js).await?;
    let Some(bytes) = kv.get(POLICY_KEY).await.map_err(|e| anyhow::anyhow!("reading the policy: {e}"))? else {
        return Ok(None);
    };
    let doc = SignedDoc::decode(&bytes)?;
    let (policy, signed_by) = doc.open_unchecked()?;
    Ok(Some(Current { doc, policy, signed_by }))
}

/// Signs `policy` with the admin key and puts it in the bucket, its serial above the one
/// there; records the change in the audit trail. Returns the serial written.
pub async fn set_policy(js: &jetstream::Context, admin: &Identity, mut policy: Policy) -> anyhow::Result<u64> {
    policy.validate().map_err(|e| anyhow::anyhow!("the policy: {e}"))?;
    let before = current_policy(js).await.ok().flatten();
    let last = before.as_ref().map_or(0, |c| c.policy.serial);
    policy.serial = policy.serial.max(last + 1);
    let doc = SignedDoc::sign(admin, &policy)?;
    bucket(js)
        .await?
        .put(POLICY_KEY, doc.encode().into())
        .await
        .map_err(|e| anyhow::anyhow!("writing the policy: {e}"))?;
    let names: Vec<&str> = policy.signer.iter().map(|g| g.name.as_str()).collect();
    admin_action(
        js,
        admin,
        "policy",
        None,
        format!(
            "policy serial {} set: signers {}",
            policy.serial,
            if names.is_empty() { "none".into() } else { names.join(", ") }
        ),
    )
    .await?;
    Ok(policy.serial)
}

/// Records a decision of the web view (a login, a POST refused for its role or CSRF token, a
/// user managed) in the audit trail, naming the user, on `pvefleet.audit.web.<action>`.
pub async fn web_action(
    js: &jetstream::Context,
    signer: Option<String>,
    user: &str,
    action: &str,
    accepted: bool,
    rule: Option<&str>,
    message: &str,
) -> anyhow::Result<()> {
    let record = AuditRecord {
        v: V1,
        at: Timestamp::now(),
        node: None,
        action: format!("web {action}"),
        job_id: None,
        signer,
        signer_name: Some("web".into()),
        user: Some(user.to_owned()),
        decision: if accepted { Decision::Accepted } else { Decision::Refused },
        rule: rule.map(str::to_owned),
        message: message.to_owned(),
    };
    let word: String = action.chars().filter(char::is_ascii_alphanumeric).collect();
    js.publish(names::web_audit_subject(if word.is_empty() { "root" } else { &word }), record.encode().into())
        .await
        .map_err(|e| anyhow::anyhow!("recording in the audit trail: {e}"))?
        .await
        .map_err(|e| anyhow::anyhow!("recording in the audit trail (run `pvefleet setup`): {e}"))?;
    Ok(())
}

/// Records an admin action in the audit trail, waiting for the stream to keep it.
pub async fn admin_action(
    js: &jetstream::Context,
    admin: &Identity,
    action: &str,
    node: Option<NodeName>,
    message: String,
) -> anyhow::Result<()> {
    let record = AuditRecord {
        v: V1,
        at: Timestamp::now(),
        node,
        action: action.into(),
        job_id: None,
        signer: Some(admin.public().id().0),
        signer_name: Some("admin".into()),
        user: None,
        decision: Decision::Accepted,
        rule: None,
        message,
    };
    js.publish(names::admin_audit_subject(action), record.encode().into())
        .await
        .map_err(|e| anyhow::anyhow!("recording in the audit trail: {e}"))?
        .await
        .map_err(|e| anyhow::anyhow!("recording in the audit trail (run `pvefleet setup`): {e}"))?;
    Ok(())
}

/// Which audit records to list.
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub signer: Option<String>,
    pub node: Option<String>,
    pub since: Option<time::OffsetDateTime>,
}

impl AuditFilter {
    fn keeps(&self, r: &AuditRecord) -> bool {
        self.signer.as_ref().is_none_or(|s| {
            r.signer.as_deref().is_some_and(|id| id == s || id.starts_with(s.as_str()))
                || r.signer_name.as_deref() == Some(s.as_str())
        }) && self.node.as_ref().is_none_or(|n| r.node.as_ref().is_some_and(|rn| rn.as_str() == n))
    }
}

/// Every audit record that `filter` keeps, oldest first, read from the stream itself (the one
/// copy nobody can change).
pub async fn audit_records(js: &jetstream::Context, filter: &AuditFilter) -> anyhow::Result<Vec<AuditRecord>> {
    let stream = js
        .get_stream(names::AUDIT_STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("the audit stream {} (run `pvefleet setup`): {e}", names::AUDIT_STREAM))?;
    let mut stream = stream;
    let total = stream.info().await.map_err(|e| anyhow::anyhow!("the audit stream: {e}"))?.state.messages;
    if total == 0 {
        return Ok(Vec::new());
    }
    let deliver_policy = match filter.since {
        Some(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
        None => consumer::DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.node.as_ref().map_or_else(
                || names::AUDIT_SUBJECTS.to_owned(),
                |n| {
                    NodeName::new(n.as_str())
                        .map_or_else(|_| names::AUDIT_SUBJECTS.to_owned(), |n| names::audit_subject(&n))
                },
            ),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("reading the audit stream: {e}"))?;
    let mut messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("reading the audit stream: {e}"))?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_millis(500), messages.next()).await;
        let Ok(Some(msg)) = next else { break };
        let msg = msg.map_err(|e| anyhow::anyhow!("reading the audit stream: {e}"))?;
        let pending = msg.info().map(|i| i.pending).unwrap_or(0);
        match serde_json::from_slice::<AuditRecord>(&msg.payload) {
            Ok(r) if filter.keeps(&r) => out.push(r),
            Ok(_) => {}
            Err(e) => tracing::warn!(subject = %msg.subject, error = %e, "an unreadable audit record; skipped"),
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// The admin keys this process checks enrollments against (`--admin-keys`,
/// `PVEFLEET_ADMIN_KEYS`), set once at start.
static ADMIN_KEYS: std::sync::OnceLock<Vec<SignerKey>> = std::sync::OnceLock::new();

pub fn set_admin_keys(keys: Vec<SignerKey>) {
    let _ = ADMIN_KEYS.set(keys);
}

pub fn admin_keys() -> &'static [SignerKey] {
    ADMIN_KEYS.get().map_or(&[], Vec::as_slice)
}

/// Reads `--admin-keys`: comma-separated `ed25519:…` keys.
pub fn parse_admin_keys(text: &str) -> Result<Vec<SignerKey>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| k.parse().map_err(|e| format!("`{k}`: {e}")))
        .collect()
}

/// `node`'s enrollment, when an admin key this process trusts signed it for that node.
pub async fn enrollment(js: &jetstream::Context, node: &NodeName) -> Result<Option<Enrollment>, String> {
    if admin_keys().is_empty() {
        return Err("no admin key is configured here (--admin-keys or PVEFLEET_ADMIN_KEYS), so no enrollment \
                    can be checked"
            .into());
    }
    let kv = bucket(js).await.map_err(|e| e.to_string())?;
    let Some(bytes) = kv.get(enrollment_key(node)).await.map_err(|e| format!("reading its enrollment: {e}"))? else {
        return Ok(None);
    };
    let doc = SignedDoc::decode(&bytes).map_err(|e| format!("its enrollment: {e}"))?;
    let (enrolled, _): (Enrollment, _) = doc.open(admin_keys()).map_err(|e| format!("its enrollment: {e}"))?;
    if &enrolled.node != node {
        return Err(format!("the enrollment stored for {node} is for {}", enrolled.node));
    }
    Ok(Some(enrolled))
}

/// Enrolls `node`'s agent as its live heartbeat (`beat`, as read from the registry) shows it,
/// once the fingerprint an operator read on the node (`pvefleet-agent --print-key`) matches
/// both keys it shows; records it in the audit trail.
pub async fn enroll(
    js: &jetstream::Context,
    admin: &Identity,
    node: &NodeName,
    beat: &[u8],
    fingerprint: &str,
) -> Result<Enrollment, crate::Failure> {
    let (beat, key) = pvefleet_schemas::trust::open_heartbeat(beat)
        .map_err(|e| anyhow::anyhow!("the heartbeat of {node} does not verify ({e}); nothing was enrolled"))?;
    let sealing =
        beat.sealing_key.clone().ok_or_else(|| anyhow::anyhow!("the agent of {node} shows no sealing key"))?;
    let identity = key.to_string();
    let live = pvefleet_schemas::trust::enrollment_fingerprint(&identity, &sealing);
    if live != fingerprint.trim() {
        return Err(anyhow::anyhow!(
            "the agent of {node} shows the keys with fingerprint {live}, not {fingerprint}: nothing was enrolled. \
             Run `pvefleet-agent --print-key` on {node} and compare"
        )
        .into());
    }
    put_enrollment(js, admin, node, identity, sealing).await
}

/// Signs and stores `node`'s enrollment with these keys; records it in the audit trail.
pub async fn put_enrollment(
    js: &jetstream::Context,
    admin: &Identity,
    node: &NodeName,
    identity_key: String,
    sealing_key: String,
) -> Result<Enrollment, crate::Failure> {
    let fingerprint = pvefleet_schemas::trust::enrollment_fingerprint(&identity_key, &sealing_key);
    let enrolled = Enrollment {
        node: node.clone(),
        identity_key,
        sealing_key,
        enrolled_at: Timestamp::now(),
        enrolled_by: admin.public().id().0,
    };
    let doc = SignedDoc::sign(admin, &enrolled).map_err(|e| anyhow::anyhow!("signing the enrollment: {e}"))?;
    bucket(js)
        .await?
        .put(enrollment_key(node), doc.encode().into())
        .await
        .map_err(|e| anyhow::anyhow!("writing the enrollment: {e}"))?;
    admin_action(js, admin, "enroll", Some(node.clone()), format!("enrolled {node}: keys {fingerprint}")).await?;
    Ok(enrolled)
}
