//! The test bed's trust: one admin key and one operator key per test process, the policy
//! that lets the operator do everything (written into each test's server with its streams),
//! the `[trust]` section every bed agent gets, and jobs signed as the operator signs them.
//! Tests of the trust rules themselves make keys and policies of their own.

use std::sync::OnceLock;

use async_nats::jetstream;
use pvefleet_schemas::signing::Identity;
use pvefleet_schemas::trust::{Grant, POLICY_KEY, Policy, SignedDoc};
use pvefleet_schemas::{layout, names};

/// The admin key every bed agent trusts.
pub fn admin() -> &'static Identity {
    static ADMIN: OnceLock<Identity> = OnceLock::new();
    ADMIN.get_or_init(Identity::generate)
}

/// The operator the bed's policy lets do everything; the bed's CLI and jobs sign as it.
pub fn operator() -> &'static Identity {
    static OPERATOR: OnceLock<Identity> = OnceLock::new();
    OPERATOR.get_or_init(Identity::generate)
}

/// The `[trust]` section of a bed agent's config.
pub fn agent_section() -> String {
    format!("[trust]\nadmin_keys = [\"{}\"]\n", admin().public())
}

/// The bed's policy: the operator may do everything.
pub fn everything() -> Policy {
    Policy { serial: 1, signer: vec![Grant::everything("bed-operator", &operator().public())] }
}

/// Signs `policy` with `by` and puts it in the server's trust bucket (made when missing).
pub async fn put_policy(js: &jetstream::Context, policy: &Policy, by: &Identity) -> anyhow::Result<()> {
    let kv = match js.get_key_value(names::TRUST_BUCKET).await {
        Ok(kv) => kv,
        Err(_) => js.create_key_value(layout::trust_bucket(1)).await?,
    };
    kv.put(POLICY_KEY, SignedDoc::sign(by, policy)?.encode().into()).await?;
    Ok(())
}

/// `message` signed by `by`, valid ten minutes.
pub fn signed_by(message: &impl serde::Serialize, by: &Identity) -> Vec<u8> {
    let mut value = serde_json::to_value(message).expect("a message serializes");
    by.sign(&mut value, 10).expect("signs");
    serde_json::to_vec(&value).expect("serializes")
}

/// `message` signed by the bed's operator.
pub fn signed(message: &impl serde::Serialize) -> Vec<u8> {
    signed_by(message, operator())
}

/// Raw bytes signed by the operator when they are a JSON object (a poison message still
/// reaches the decoding it tests); anything else as it is.
pub fn signed_raw(payload: Vec<u8>) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(&payload) {
        Ok(v @ serde_json::Value::Object(_)) => signed(&v),
        _ => payload,
    }
}

/// Writes the operator's identity file (0600) into `dir`, for the CLI's `PVEFLEET_IDENTITY`.
pub fn operator_file(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    identity_file(dir, "operator.identity", operator())
}

/// Writes `who`'s identity file (0600) as `dir/name`.
pub fn identity_file(dir: &std::path::Path, name: &str, who: &Identity) -> anyhow::Result<std::path::PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(name);
    if !path.exists() {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
        writeln!(f, "{}", who.to_text().expose())?;
    }
    Ok(path)
}

/// The nodes the bed enrolls whenever it sets a fleet up (with any others named): an agent's
/// keys are made in its state dir before it first runs, and its enrollment signed by the bed's
/// admin, as an admin would after `pvefleet-agent --print-key` on the node.
pub const BED_NODES: [&str; 3] = ["pve1", "pve2", "pve3"];

/// The state dir the bed's agent for `node` uses.
pub fn state_dir(dir: &std::path::Path, node: &str) -> std::path::PathBuf {
    dir.join(format!("agent-state-{node}"))
}

/// Makes `node`'s agent keys in its state dir (kept if there), and returns its public identity
/// and sealing keys as `--print-key` prints them.
pub fn agent_keys(dir: &std::path::Path, node: &str) -> anyhow::Result<(String, String)> {
    let state = state_dir(dir, node);
    let sealing = pvefleet_agent::sealing::load_or_create(&state)?;
    let identity = pvefleet_agent::sealing::load_or_create_identity(&state)?;
    Ok((identity.public().to_string(), sealing.public().to_string()))
}

/// `node`'s enrollment, signed by the bed's admin, for the keys in its state dir.
pub fn enrollment(dir: &std::path::Path, node: &str) -> anyhow::Result<SignedDoc> {
    let (identity_key, sealing_key) = agent_keys(dir, node)?;
    let enrolled = pvefleet_schemas::trust::Enrollment {
        node: pvefleet_schemas::NodeName::new(node)?,
        identity_key,
        sealing_key,
        enrolled_at: pvefleet_schemas::Timestamp::now(),
        enrolled_by: "bed-admin".into(),
    };
    Ok(SignedDoc::sign(admin(), &enrolled)?)
}

/// Enrolls each of `nodes` straight into the server's trust bucket.
pub async fn enroll(js: &jetstream::Context, dir: &std::path::Path, nodes: &[&str]) -> anyhow::Result<()> {
    let kv = match js.get_key_value(names::TRUST_BUCKET).await {
        Ok(kv) => kv,
        Err(_) => js.create_key_value(layout::trust_bucket(1)).await?,
    };
    for node in nodes {
        let doc = enrollment(dir, node)?;
        kv.put(pvefleet_schemas::trust::enrollment_key(&pvefleet_schemas::NodeName::new(*node)?), doc.encode().into())
            .await?;
    }
    Ok(())
}
