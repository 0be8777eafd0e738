//! Trust: what an agent believes and why. Two kinds of document live in the `pvefleet-trust`
//! KV bucket, each signed by an admin key whose public half is in every `agent.toml`:
//!
//! - the **policy** ([`Policy`]): who may sign requests, and what each signer may ask for —
//!   which kinds, on which nodes, and each dangerous part of a spec on its own ([`Grant`]);
//! - each **enrolled agent** ([`Enrollment`]): the identity key its heartbeats are signed with
//!   and the sealing key secrets are sealed to.
//!
//! Nothing in the bucket counts unless its admin signature verifies ([`SignedDoc::open`]), so
//! whoever can write the bucket but holds no admin key can change nothing. Every decision an
//! agent makes on a request is an [`AuditRecord`] on the `PVEFLEET_AUDIT` stream.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{JobId, NodeName};
use crate::job::{DestroyJob, Job};
use crate::lxc::MountPoint;
use crate::message::{Timestamp, V1};
use crate::signing::{Identity, SignError, SignerId, SignerKey, canonical};
use crate::source::TemplateSource;

/// What an admin signature signs first: a trust document's signature can never pass for a
/// request's (whose domain is [`crate::signing::DOMAIN`]), nor the reverse.
pub const TRUST_DOMAIN: &[u8] = b"pvefleet-trust-v1\n";

/// What a heartbeat's signature signs first.
pub const HEARTBEAT_DOMAIN: &[u8] = b"pvefleet-heartbeat-v1\n";

/// Signs `beat` with the agent's identity: sets its `identity_key` and `signature`.
pub fn sign_heartbeat(beat: &mut crate::state::Heartbeat, key: &Identity) {
    beat.identity_key = Some(key.public().to_string());
    beat.signature = None;
    let value = serde_json::to_value(&*beat).expect("a heartbeat serializes");
    let mut bytes = HEARTBEAT_DOMAIN.to_vec();
    canonical(&value, &mut bytes).expect("a heartbeat is canonical JSON");
    beat.signature = Some(B64.encode(key.sign_bytes(&bytes)));
}

/// A heartbeat as it came off the bucket, with the key that signed it, when its signature
/// verifies against the `identity_key` it carries (whether that key is its node's enrolled
/// one is for the reader to check against the enrollment).
pub fn open_heartbeat(payload: &[u8]) -> Result<(crate::state::Heartbeat, SignerKey), String> {
    let mut value: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let object = value.as_object_mut().ok_or("not a JSON object")?;
    let signature = object.remove("signature").and_then(|s| s.as_str().map(str::to_owned)).ok_or("not signed")?;
    let key: SignerKey = object
        .get("identity_key")
        .and_then(Value::as_str)
        .ok_or("no identity key")?
        .parse()
        .map_err(|e| format!("its identity key: {e}"))?;
    let signature = B64
        .decode(&signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or("its signature is not 64 bytes of base64")?;
    let mut bytes = HEARTBEAT_DOMAIN.to_vec();
    canonical(&value, &mut bytes).map_err(|e| e.to_string())?;
    if !key.verify_bytes(&bytes, &signature) {
        return Err("its signature does not verify".into());
    }
    let beat = crate::state::Heartbeat::decode(payload).map_err(|e| e.to_string())?;
    Ok((beat, key))
}

/// What `pvefleet-agent --print-key` prints and `pvefleet nodes enroll --fingerprint` takes:
/// one fingerprint over both of an agent's keys, so checking it on the node checks both.
pub fn enrollment_fingerprint(identity_key: &str, sealing_key: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("pvefleet-enroll-v1\n{identity_key}\n{sealing_key}"));
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
}

/// The key of the policy in the trust bucket.
pub const POLICY_KEY: &str = "policy";

/// The key of `node`'s enrollment in the trust bucket.
pub fn enrollment_key(node: &NodeName) -> String {
    format!("agents.{node}")
}

/// A document signed by an admin key: its body as JSON, the signer's public key
/// (`ed25519:…`, so anyone can check the signature; only agents' `trust.admin_keys` make it
/// count) and the signature over [`TRUST_DOMAIN`] and the body's canonical JSON (RFC 8785).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedDoc {
    pub v: V1,
    pub body: Value,
    pub signer: String,
    pub signature: String,
}

/// Why a trust document is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("not a signed trust document: {0}")]
    Malformed(String),
    #[error("signed by {0}, which is not an admin key this agent trusts (trust.admin_keys)")]
    NotAdmin(String),
    #[error("its signature does not verify: it was changed after signing, or not signed by {0}")]
    BadSignature(String),
    #[error("its body: {0}")]
    Body(String),
}

impl SignedDoc {
    /// Signs `body` with the admin `key`.
    pub fn sign<T: Serialize>(key: &Identity, body: &T) -> Result<Self, SignError> {
        let body = serde_json::to_value(body).map_err(|e| SignError::Canonical(e.to_string()))?;
        let signature = key.sign_bytes(&doc_bytes(&body)?);
        Ok(Self { v: V1, body, signer: key.public().to_string(), signature: B64.encode(signature) })
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, TrustError> {
        serde_json::from_slice(bytes).map_err(|e| TrustError::Malformed(e.to_string()))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a signed document serializes")
    }

    /// The body, when it is signed by one of `admins`; with the admin key that signed it.
    pub fn open<T: DeserializeOwned>(&self, admins: &[SignerKey]) -> Result<(T, SignerKey), TrustError> {
        let admin = admins
            .iter()
            .find(|k| k.to_string() == self.signer)
            .copied()
            .ok_or_else(|| TrustError::NotAdmin(self.signer.clone()))?;
        self.open_with(admin)
    }

    /// The body, when the key it names signed it (whether that key is an admin's is for the
    /// reader to say: this is what `pvefleet policy show` prints).
    pub fn open_unchecked<T: DeserializeOwned>(&self) -> Result<(T, SignerKey), TrustError> {
        let key: SignerKey = self.signer.parse().map_err(TrustError::Malformed)?;
        self.open_with(key)
    }

    fn open_with<T: DeserializeOwned>(&self, admin: SignerKey) -> Result<(T, SignerKey), TrustError> {
        let signature = B64
            .decode(&self.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or_else(|| TrustError::Malformed("the signature is not 64 bytes of base64".into()))?;
        let bytes = doc_bytes(&self.body).map_err(|e| TrustError::Malformed(e.to_string()))?;
        if !admin.verify_bytes(&bytes, &signature) {
            return Err(TrustError::BadSignature(self.signer.clone()));
        }
        let body = serde_json::from_value(self.body.clone()).map_err(|e| TrustError::Body(e.to_string()))?;
        Ok((body, admin))
    }
}

fn doc_bytes(body: &Value) -> Result<Vec<u8>, SignError> {
    let mut out = TRUST_DOMAIN.to_vec();
    canonical(body, &mut out)?;
    Ok(out)
}

/// What a signer may ask an agent for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Destroy,
    Cancel,
    Plan,
    Update,
    Resize,
    Power,
    Snapshot,
    Rollback,
    Backup,
    Restore,
    Move,
}

impl Action {
    /// Whether it is a control request (cancel, plan) rather than a job kind.
    pub fn is_control(self) -> bool {
        matches!(self, Action::Cancel | Action::Plan)
    }

    pub const ALL: [Action; 12] = [
        Action::Create,
        Action::Destroy,
        Action::Cancel,
        Action::Plan,
        Action::Update,
        Action::Resize,
        Action::Power,
        Action::Snapshot,
        Action::Rollback,
        Action::Backup,
        Action::Restore,
        Action::Move,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Destroy => "destroy",
            Action::Cancel => "cancel",
            Action::Plan => "plan",
            Action::Update => "update",
            Action::Resize => "resize",
            Action::Power => "power",
            Action::Snapshot => "snapshot",
            Action::Rollback => "rollback",
            Action::Backup => "backup",
            Action::Restore => "restore",
            Action::Move => "move",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which containers a signer's jobs may clone.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CloneFrom {
    /// PVE templates only (the default).
    #[default]
    Templates,
    /// Whatever the node's `agent.toml` lets any job clone (templates, pvefleet's own
    /// containers, its `[clone]` lists).
    Node,
}

/// The admin-signed policy: every signer an agent accepts requests from, with its rights.
/// A signer not in it is refused; an agent without a policy refuses everything.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Grows with every change (`pvefleet policy set` counts it up): an agent never goes
    /// back to a lower one, so an older signed policy put back in the bucket is ignored.
    #[serde(default)]
    pub serial: u64,
    /// One entry per signer (`[[signer]]` in the TOML `pvefleet policy set` reads).
    #[serde(default)]
    pub signer: Vec<Grant>,
}

fn yes() -> bool {
    true
}

fn every_action() -> Vec<Action> {
    Action::ALL.to_vec()
}

fn every_node() -> Vec<String> {
    vec!["*".into()]
}

/// One signer's rights. Least by default where it is dangerous: no host paths, no privileged
/// containers, no features beyond nesting, no existing volumes, clones only from templates,
/// no downloads, no OCI pulls. Deploying (packages, files, scripts) is what an operator is
/// for, so it is allowed unless taken away.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Who this is, as the audit trail names them (`alice`, `ci`, `web`).
    pub name: String,
    /// The signer's public key, `ed25519:…` (`pvefleet identity show` prints it).
    pub key: String,
    /// What it may ask for (default: every kind: create, destroy, cancel, plan, update, resize, power).
    #[serde(default = "every_action")]
    pub kinds: Vec<Action>,
    /// On which nodes (`*` for every one; the default).
    #[serde(default = "every_node")]
    pub nodes: Vec<String>,
    #[serde(default = "yes")]
    pub scripts: bool,
    #[serde(default = "yes")]
    pub packages: bool,
    #[serde(default = "yes")]
    pub files: bool,
    /// Bind mounts of host directories.
    #[serde(default)]
    pub host_paths: bool,
    /// Privileged containers (`unprivileged = false`).
    #[serde(default)]
    pub privileged: bool,
    /// Features beyond nesting it may turn on: `keyctl`, `fuse`, `mknod`, `mount`, `force_rw_sys`.
    #[serde(default)]
    pub features: Vec<String>,
    /// Mounting volumes that exist already (the node's `[mounts]` list still applies).
    #[serde(default)]
    pub existing_volumes: bool,
    #[serde(default)]
    pub clone_from: CloneFrom,
    /// Hosts `template.download` URLs may name (`*` for any the node's `[fetch]` rules let
    /// through); none by default.
    #[serde(default)]
    pub download_hosts: Vec<String>,
    /// Registries OCI images may come from (`docker.io`, `ghcr.io`; `*` for any); none by default.
    #[serde(default)]
    pub oci_registries: Vec<String>,
}

/// The features a grant can name.
pub const FEATURES: [&str; 5] = ["keyctl", "fuse", "mknod", "mount", "force_rw_sys"];

impl Grant {
    /// A grant with the defaults for `key`, named `name`.
    pub fn new(name: &str, key: &SignerKey) -> Self {
        Self {
            name: name.into(),
            key: key.to_string(),
            kinds: every_action(),
            nodes: every_node(),
            scripts: true,
            packages: true,
            files: true,
            host_paths: false,
            privileged: false,
            features: Vec::new(),
            existing_volumes: false,
            clone_from: CloneFrom::Templates,
            download_hosts: Vec::new(),
            oci_registries: Vec::new(),
        }
    }

    /// Every right there is (the demo's and the test bed's one operator).
    pub fn everything(name: &str, key: &SignerKey) -> Self {
        Self {
            host_paths: true,
            privileged: true,
            features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
            existing_volumes: true,
            clone_from: CloneFrom::Node,
            download_hosts: vec!["*".into()],
            oci_registries: vec!["*".into()],
            ..Self::new(name, key)
        }
    }

    /// Whether it may ask for `action` on `node`.
    pub fn may(&self, action: Action, node: &NodeName) -> Result<(), Refusal> {
        if !self.kinds.contains(&action) {
            return Err(Refusal::new(
                "kinds",
                format!("{} may not {action} (its kinds: {})", self.name, list(&self.kinds)),
            ));
        }
        if !self.nodes.iter().any(|n| n == "*" || n == node.as_str()) {
            return Err(Refusal::new(
                "nodes",
                format!("{} may not act on {node} (its nodes: {})", self.name, self.nodes.join(", ")),
            ));
        }
        Ok(())
    }

    /// Whether a create job asks for nothing beyond this grant: every dangerous part of its
    /// spec on its own. (Clone sources are checked where the agent finds the source.)
    pub fn allows_create(&self, job: &Job) -> Result<(), Refusal> {
        self.may(Action::Create, &job.node)?;
        let who = &self.name;
        let deploy = &job.deploy;
        if !self.packages && !deploy.packages.is_empty() {
            return Err(Refusal::new("packages", format!("{who} may not install packages (deploy.packages)")));
        }
        if !self.files && !deploy.files.is_empty() {
            return Err(Refusal::new("files", format!("{who} may not write files (deploy.files)")));
        }
        if !self.scripts && !deploy.scripts.is_empty() {
            return Err(Refusal::new("scripts", format!("{who} may not run scripts (deploy.scripts)")));
        }
        let spec = &job.container;
        if !self.privileged && !spec.unprivileged {
            return Err(Refusal::new(
                "privileged",
                format!("{who} may not make a privileged container (container.unprivileged = false)"),
            ));
        }
        let mounts = spec.mounts.iter().enumerate().map(|(i, m)| (format!("container.mounts[{i}]"), m));
        self.allows_mounts(mounts)?;
        self.allows_features(&spec.features, "container.features")?;
        match &spec.template {
            Some(TemplateSource::Download(d)) => {
                let host = url_host(&d.url);
                if !listed(&self.download_hosts, &host) {
                    return Err(Refusal::new(
                        "download_hosts",
                        format!("{who} may not download from `{host}` (container.template.download.url)"),
                    ));
                }
            }
            Some(TemplateSource::Oci(o)) => {
                let registry = o.reference.split('/').next().unwrap_or_default().to_ascii_lowercase();
                if !listed(&self.oci_registries, &registry) {
                    return Err(Refusal::new(
                        "oci_registries",
                        format!("{who} may not pull from registry `{registry}` (container.template.oci.reference)"),
                    ));
                }
            }
            Some(TemplateSource::Appliance(_)) | None => {}
        }
        Ok(())
    }

    pub fn allows_destroy(&self, job: &DestroyJob) -> Result<(), Refusal> {
        self.may(Action::Destroy, &job.node)
    }

    /// An update adds mount points and sets features under the same rules as a create.
    pub fn allows_update(&self, job: &crate::day_two::UpdateJob) -> Result<(), Refusal> {
        self.may(Action::Update, &job.node)?;
        let mounts = job.change.mounts.iter().map(|(key, m)| (format!("change.mounts.{key}"), m));
        self.allows_mounts(mounts)?;
        if let Some(f) = &job.change.features {
            self.allows_features(f, "change.features")?;
        }
        Ok(())
    }

    pub fn allows_resize(&self, job: &crate::day_two::ResizeJob) -> Result<(), Refusal> {
        self.may(Action::Resize, &job.node)
    }

    pub fn allows_power(&self, job: &crate::day_two::PowerJob) -> Result<(), Refusal> {
        self.may(Action::Power, &job.node)
    }

    /// A snapshot, rollback, backup, restore or move: the kind on the job's node (a move's
    /// also on the node it goes to).
    pub fn allows_day_two(&self, job: &crate::day_two::DayTwoJob) -> Result<(), Refusal> {
        use crate::day_two::DayTwoJob;
        match job {
            DayTwoJob::Update(j) => self.allows_update(j),
            DayTwoJob::Resize(j) => self.allows_resize(j),
            DayTwoJob::Power(j) => self.allows_power(j),
            DayTwoJob::Snapshot(j) => self.may(Action::Snapshot, &j.node),
            DayTwoJob::Rollback(j) => self.may(Action::Rollback, &j.node),
            DayTwoJob::Backup(j) => self.may(Action::Backup, &j.node),
            DayTwoJob::Restore(j) => self.may(Action::Restore, &j.node),
            DayTwoJob::Move(j) => {
                self.may(Action::Move, &j.node)?;
                self.may(Action::Move, &j.to)
            }
        }
    }

    /// A container restored as a new one from a backup (`restore`), held to what a create of
    /// it would be: a privileged one, its features and its bind mounts each only when granted
    /// (its volumes are new ones, allocated by the restore).
    pub fn allows_restored(
        &self,
        unprivileged: bool,
        features: Option<&crate::lxc::Features>,
        binds: &[(String, MountPoint)],
    ) -> Result<(), Refusal> {
        if !self.privileged && !unprivileged {
            return Err(Refusal::new(
                "privileged",
                format!("{} may not restore a privileged container (the backup's unprivileged is off)", self.name),
            ));
        }
        if let Some(f) = features {
            self.allows_features(f, "the backup's features")?;
        }
        self.allows_mounts(binds.iter().map(|(key, m)| (format!("the backup's {key}"), m)))
    }

    /// Bind mounts of host paths and existing volumes, each only when granted.
    fn allows_mounts<'m>(&self, mounts: impl Iterator<Item = (String, &'m MountPoint)>) -> Result<(), Refusal> {
        let who = &self.name;
        for (field, mount) in mounts {
            match mount {
                MountPoint::Bind { host_path, .. } if !self.host_paths => {
                    return Err(Refusal::new(
                        "host_paths",
                        format!("{who} may not bind-mount a host path ({field}: {host_path})"),
                    ));
                }
                MountPoint::Existing { volume, .. } if !self.existing_volumes => {
                    return Err(Refusal::new(
                        "existing_volumes",
                        format!("{who} may not mount an existing volume ({field}: {volume})"),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Features beyond nesting, each only when granted.
    fn allows_features(&self, f: &crate::lxc::Features, field: &str) -> Result<(), Refusal> {
        let asked = [
            ("keyctl", f.keyctl),
            ("fuse", f.fuse),
            ("mknod", f.mknod),
            ("mount", !f.mount.is_empty()),
            ("force_rw_sys", f.force_rw_sys),
        ];
        for (feature, on) in asked {
            if on && !self.features.iter().any(|g| g == feature) {
                return Err(Refusal::new(
                    "features",
                    format!("{} may not turn on feature `{feature}` ({field}; only nesting by default)", self.name),
                ));
            }
        }
        Ok(())
    }
}

fn list(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "none".into();
    }
    actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
}

fn listed(allowed: &[String], item: &str) -> bool {
    allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(item))
}

/// The host of an `http(s)://` URL, lowercased (empty when it has none).
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split_once(']').map_or(host, |(h, _)| h.trim_start_matches('['))
    } else {
        host.split(':').next().unwrap_or_default()
    };
    host.to_ascii_lowercase()
}

/// Why a request was refused: the rule it broke (a field of [`Grant`], or a step of the
/// check: `signature`, `expiry`, `replay`, `policy`, `signer`) and the sentence people read.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Refusal {
    pub rule: String,
    pub message: String,
}

impl Refusal {
    pub fn new(rule: &str, message: String) -> Self {
        Self { rule: rule.into(), message }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused by rule `{}`: {}", self.rule, self.message)
    }
}

impl Policy {
    /// Reads a policy written as TOML (what `pvefleet policy set` takes) or JSON.
    pub fn from_text(text: &str) -> Result<Self, String> {
        let policy: Policy = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            toml::from_str(text).map_err(|e| e.to_string())?
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Each signer's key reads and is listed once, each node and feature is a real one.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, g) in self.signer.iter().enumerate() {
            let at = format!("signer[{i}] ({})", g.name);
            let key: SignerKey = g.key.parse().map_err(|e| format!("{at}.key: {e}"))?;
            if !seen.insert(key.id()) {
                return Err(format!("{at}.key: the same key is listed twice"));
            }
            if g.name.is_empty() || g.name.len() > 64 {
                return Err(format!("signer[{i}].name: 1 to 64 characters"));
            }
            for n in &g.nodes {
                if n != "*" && NodeName::new(n.as_str()).is_err() {
                    return Err(format!("{at}.nodes: `{n}` is not a node name (or `*`)"));
                }
            }
            for f in &g.features {
                if !FEATURES.contains(&f.as_str()) {
                    return Err(format!("{at}.features: `{f}` is not one of {}", FEATURES.join(", ")));
                }
            }
        }
        Ok(())
    }

    /// The grant of the signer with key id `id`, and its key.
    pub fn grant(&self, id: &SignerId) -> Option<(&Grant, SignerKey)> {
        self.signer.iter().find_map(|g| {
            let key: SignerKey = g.key.parse().ok()?;
            (&key.id() == id).then_some((g, key))
        })
    }
}

/// An admin's certificate that `node`'s agent is the holder of these keys: its heartbeats
/// are believed only when signed by `identity_key`, and secrets are sealed only to
/// `sealing_key`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    pub node: NodeName,
    /// `ed25519:…`: the agent's signing key.
    pub identity_key: String,
    /// The agent's sealing key, as its heartbeat carries it.
    pub sealing_key: String,
    pub enrolled_at: Timestamp,
    /// The admin who enrolled it (a name for people; the signature says who it was).
    #[serde(default)]
    pub enrolled_by: String,
}

/// What an agent decided on a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Accepted,
    Refused,
}

/// One line of the audit trail (`PVEFLEET_AUDIT`): a decision an agent made on a request, or
/// an admin action (an enrollment, a policy change).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub v: V1,
    pub at: Timestamp,
    /// The node whose agent decided, or the node an admin action is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
    /// `create`, `destroy`, `cancel`, `plan`, or an admin action (`enroll`, `policy`).
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The key id that signed, when the request was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The signer's name in the policy, when it is in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_name: Option<String>,
    /// The person the signer acted for (a web view user), as the signed request names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub decision: Decision,
    /// The rule that refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub message: String,
}

impl AuditRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an audit record serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join("job-create.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn a_signed_document_opens_only_with_its_admin_key_and_unchanged() {
        let admin = Identity::generate();
        let stranger = Identity::generate();
        let policy = Policy { serial: 3, signer: vec![Grant::new("alice", &stranger.public())] };
        let doc = SignedDoc::sign(&admin, &policy).unwrap();
        let (opened, by): (Policy, _) = doc.open(&[admin.public()]).unwrap();
        assert_eq!((opened, by), (policy.clone(), admin.public()));
        assert!(matches!(doc.open::<Policy>(&[stranger.public()]), Err(TrustError::NotAdmin(_))));
        let mut changed = doc.clone();
        changed.body["serial"] = 4.into();
        assert!(matches!(changed.open::<Policy>(&[admin.public()]), Err(TrustError::BadSignature(_))));
        let forged = SignedDoc::sign(&stranger, &policy).unwrap();
        assert!(matches!(forged.open::<Policy>(&[admin.public()]), Err(TrustError::NotAdmin(_))));
    }

    #[test]
    fn a_default_grant_refuses_each_dangerous_part_by_its_rule() {
        let key = Identity::generate().public();
        let grant = Grant::new("bob", &key);
        let mut base = job();
        // The example asks for keyctl; a default grant has nesting only.
        base.container.features = crate::lxc::Features { nesting: true, ..Default::default() };
        assert_eq!(grant.allows_create(&base), Ok(()));
        let refused = |edit: &dyn Fn(&mut Job)| {
            let mut j = base.clone();
            edit(&mut j);
            grant.allows_create(&j).unwrap_err().rule
        };
        assert_eq!(refused(&|j| j.container.unprivileged = false), "privileged");
        assert_eq!(
            refused(&|j| j.container.mounts.push(MountPoint::Bind {
                host_path: "/".into(),
                path: "/host".into(),
                ro: false,
                shared: false
            })),
            "host_paths"
        );
        assert_eq!(
            refused(&|j| j.container.mounts.push(MountPoint::Existing {
                volume: "local-lvm:vm-100-disk-0".into(),
                path: "/data".into(),
                backup: None,
                ro: false
            })),
            "existing_volumes"
        );
        assert_eq!(refused(&|j| j.container.features.keyctl = true), "features");
        assert_eq!(
            refused(&|j| j.container.template = Some(TemplateSource::Oci(crate::source::OciImage {
                reference: "docker.io/library/nginx:1".into(),
                storage: "local".into(),
                filename: None
            }))),
            "oci_registries"
        );
        let only_pve1 = Grant { nodes: vec!["pve1".into()], scripts: false, ..grant.clone() };
        let mut other = base.clone();
        other.node = NodeName::new("pve2").unwrap();
        assert_eq!(only_pve1.allows_create(&other).unwrap_err().rule, "nodes");
        let mut scripted = base.clone();
        scripted.node = NodeName::new("pve1").unwrap();
        scripted.deploy.scripts.push(serde_json::from_value(serde_json::json!({"name": "x", "body": "true"})).unwrap());
        assert_eq!(only_pve1.allows_create(&scripted).unwrap_err().rule, "scripts");
        assert_eq!(Grant::everything("root", &key).allows_create(&scripted), Ok(()));
    }

    #[test]
    fn a_restored_container_is_held_to_what_a_create_of_it_would_need() {
        let key = Identity::generate().public();
        let least = Grant::new("bob", &key);
        let keyctl = crate::lxc::Features::from_pve("keyctl=1").unwrap();
        let bind = [("mp0".to_owned(), crate::lxc::MountPoint::from_pve("/srv,mp=/srv").unwrap())];
        assert_eq!(least.allows_restored(true, None, &[]), Ok(()));
        assert_eq!(least.allows_restored(false, None, &[]).unwrap_err().rule, "privileged");
        assert_eq!(least.allows_restored(true, Some(&keyctl), &[]).unwrap_err().rule, "features");
        assert_eq!(least.allows_restored(true, None, &bind).unwrap_err().rule, "host_paths");
        assert_eq!(Grant::everything("root", &key).allows_restored(false, Some(&keyctl), &bind), Ok(()));
    }

    #[test]
    fn download_hosts_are_read_from_the_url() {
        assert_eq!(url_host("https://user:pw@Images.Example.org:8443/a/b?x"), "images.example.org");
        assert_eq!(url_host("http://[::1]:80/x"), "::1");
    }

    #[test]
    fn a_policy_reads_from_toml_with_least_defaults_and_names_bad_entries() {
        let key = Identity::generate().public();
        let p =
            Policy::from_text(&format!("[[signer]]\nname = \"alice\"\nkey = \"{key}\"\nnodes = [\"pve1\"]\n")).unwrap();
        let g = &p.signer[0];
        assert!(g.scripts && !g.host_paths && !g.privileged && g.clone_from == CloneFrom::Templates);
        assert_eq!(g.kinds, Action::ALL.to_vec());
        assert!(p.grant(&key.id()).is_some());
        let bad = Policy::from_text(&format!("[[signer]]\nname = \"a\"\nkey = \"{key}\"\nfeatures = [\"wings\"]\n"));
        assert!(bad.unwrap_err().contains("features"), "names the field");
        assert!(Policy::from_text("[[signer]]\nname = \"a\"\nkey = \"nope\"\n").unwrap_err().contains("key"));
    }
}
