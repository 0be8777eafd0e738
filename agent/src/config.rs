//! The agent's configuration: `agent.toml`, with every key also settable as `PVEFLEET_<KEY>`
//! (`proxmox.token_id` → `PVEFLEET_PROXMOX_TOKEN_ID`). Errors name the file and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pvefleet_schemas::{HumanDuration, NodeName};
use serde::Deserialize;

use crate::tls::{Fingerprint, Trust};

/// Everything the agent runs with, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeName,
    /// Jobs run at once (also the consumer's `max_ack_pending`).
    pub concurrency: u32,
    pub heartbeat: Duration,
    /// How long JetStream waits for an ack before redelivering a job; running jobs send
    /// progress acks well within it.
    pub ack_wait: Duration,
    /// How long a stopping agent waits for running jobs to reach a checkpoint.
    pub shutdown_grace: Duration,
    /// How often the inventory is read again when no job has run (`pvefleet-inventory`).
    pub inventory_interval: Duration,
    /// Whether `plan` lets a container's memory exceed what the node has free (PVE does):
    /// a warning when true (the default), a failed check when false.
    pub overcommit_memory: bool,
    /// The only directory `deploy.files[].source` may read from.
    pub files_dir: PathBuf,
    /// What the agent keeps: its sealing key (`sealing.key`, mode 0600).
    pub state_dir: PathBuf,
    /// Where `/metrics` is served; off when unset.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub nats: NatsConfig,
    pub proxmox: ProxmoxConfig,
    pub ssh: SshConfig,
    /// What a job may reach beyond its own: containers to clone, volumes to mount, hosts to
    /// fetch from. Empty by default: templates, pvefleet's own containers, the job's own
    /// volumes and public addresses only.
    pub allow: Allow,
    /// `trust.admin_keys`: the admin keys whose signatures make a policy or an enrollment
    /// count (`ed25519:…`). None: the agent refuses every request, and says how to fix it.
    pub admin_keys: Vec<pvefleet_schemas::signing::SignerKey>,
}

/// What the node's operator lets jobs reach that they could not otherwise (`[clone]`,
/// `[mounts]`, `[fetch]` in `agent.toml`). Whoever may publish a job must not be able to copy
/// a stranger's container, mount another guest's disk, or make PVE fetch from the node's own
/// network; these lists are the exceptions the operator chose.
#[derive(Debug, Clone, Default)]
pub struct Allow {
    /// `clone.allow_vmids`: containers a job may clone besides templates and pvefleet's own.
    pub clone_vmids: Vec<pvefleet_schemas::Vmid>,
    /// `clone.allow_pools`: every guest of these pools may be cloned.
    pub clone_pools: Vec<String>,
    /// `mounts.allow_existing`: volumes a job may mount besides its own container's.
    pub existing_volumes: Vec<String>,
    /// `fetch.allow`: hosts and address prefixes downloads and OCI pulls may reach although
    /// they are loopback, private, link-local or the node's own.
    pub fetch: Vec<FetchAllow>,
}

/// One entry of `fetch.allow`: a host name, or an address prefix (`10.1.0.0/16`, `127.0.0.1/32`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAllow {
    Host(String),
    Prefix(std::net::IpAddr, u8),
}

impl FetchAllow {
    fn parse(text: &str) -> Result<Self, String> {
        if let Some((addr, len)) = text.split_once('/') {
            let addr: std::net::IpAddr = addr.parse().map_err(|_| format!("`{text}`: `{addr}` is not an address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len: u8 =
                len.parse().ok().filter(|l| *l <= max).ok_or_else(|| format!("`{text}`: bad prefix length"))?;
            return Ok(FetchAllow::Prefix(addr, len));
        }
        if let Ok(addr) = text.parse::<std::net::IpAddr>() {
            return Ok(FetchAllow::Prefix(addr, if addr.is_ipv4() { 32 } else { 128 }));
        }
        let ok = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "-.".contains(c));
        if ok {
            Ok(FetchAllow::Host(text.to_ascii_lowercase()))
        } else {
            Err(format!("`{text}` is not a host or a prefix"))
        }
    }

    /// Whether this entry lets a fetch reach `host` at `addr`.
    pub fn allows(&self, host: &str, addr: std::net::IpAddr) -> bool {
        match self {
            FetchAllow::Host(h) => h.eq_ignore_ascii_case(host.trim_end_matches('.')),
            FetchAllow::Prefix(net, len) => in_prefix(addr, *net, *len),
        }
    }
}

/// Whether `addr` lies in `net/len` (an IPv4-mapped IPv6 address counts as its IPv4 one).
pub fn in_prefix(addr: std::net::IpAddr, net: std::net::IpAddr, len: u8) -> bool {
    use std::net::IpAddr;
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[derive(Clone)]
pub struct NatsConfig {
    pub urls: Vec<String>,
    pub creds: Option<PathBuf>,
    /// A per-agent inbox prefix, so replies to one agent cannot be read by another.
    pub inbox_prefix: Option<String>,
    /// The CA that signed the NATS servers' certificates: TLS is then required.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, for servers that ask for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs may carry the agent's NATS password.
        let urls: Vec<String> = self.urls.iter().map(|u| pvefleet_schemas::redact_url(u)).collect();
        f.debug_struct("NatsConfig")
            .field("urls", &urls)
            .field("creds", &self.creds)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct ProxmoxConfig {
    /// `https://host:8006`
    pub url: String,
    pub credential: Credential,
    pub trust: Trust,
    /// `proxmox.facts_ttl`: how long node facts (storages, templates, bridges, free vmids)
    /// are kept for the next job's checks ([`crate::proxmox::Facts`]); zero reads them every time.
    pub facts_ttl: Duration,
}

/// How the agent signs in to the Proxmox API. Secrets are redacted in `Debug`.
#[derive(Clone, Debug)]
pub enum Credential {
    /// An API token (`proxmox.token_id`, `proxmox.token_secret_file`): the least-privilege way.
    Token { id: String, secret: pvefleet_schemas::Secret },
    /// A user's password (`proxmox.user`, `proxmox.password_file`), signing in for a ticket.
    /// Only `root@pam` signed in this way may set features beyond `nesting` or bind mounts:
    /// PVE refuses those to every API token, root's own included.
    Login { user: String, password: pvefleet_schemas::Secret },
}

impl Credential {
    /// Whether PVE lets this credential do what it keeps for `root@pam` (bind mounts, features
    /// other than `nesting`, features on a privileged container).
    pub fn is_root_login(&self) -> bool {
        matches!(self, Credential::Login { user, .. } if user == "root@pam")
    }

    /// Who PVE sees: the token id or the user.
    pub fn who(&self) -> &str {
        match self {
            Credential::Token { id, .. } => id,
            Credential::Login { user, .. } => user,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SshConfig {
    pub user: String,
    pub port: u16,
    pub connect_timeout: Duration,
    /// How long to keep retrying while the new container's sshd comes up.
    pub retry_for: Duration,
    /// The file in the container that PVE writes `ssh-public-keys` to (relative to the user's
    /// home; `%a` is the container's address): where the job's own key is removed from once
    /// the deploy is done.
    pub authorized_keys: String,
    /// A key the templates this node clones already trust (`ssh.key_file`): PVE cannot put a
    /// job's own key into a clone, so a clone's deploy logs in with this one.
    pub clone_key: Option<CloneKey>,
}

/// The private key of `ssh.key_file`, read at start; its `Debug` shows only where it came from.
#[derive(Clone)]
pub struct CloneKey {
    pub file: PathBuf,
    pub key: std::sync::Arc<russh::keys::PrivateKey>,
}

impl std::fmt::Debug for CloneKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloneKey").field("file", &self.file).finish_non_exhaustive()
    }
}

/// A configuration problem, naming where it is and which key (none for the file as a whole).
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {}{message}", if key.is_empty() { String::new() } else { format!("key `{key}`: ") })]
pub struct ConfigError {
    /// The file, or `environment` for a `PVEFLEET_…` variable.
    pub source_name: String,
    pub key: String,
    pub message: String,
}

/// The file as written; everything optional here has a default below.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node: NodeName,
    #[serde(default = "default_concurrency")]
    concurrency: u32,
    #[serde(default = "default_heartbeat")]
    heartbeat: HumanDuration,
    #[serde(default = "default_grace")]
    shutdown_grace: HumanDuration,
    #[serde(default = "default_inventory_interval")]
    inventory_interval: HumanDuration,
    #[serde(default = "yes")]
    overcommit_memory: bool,
    #[serde(default = "default_ack_wait")]
    ack_wait: HumanDuration,
    #[serde(default = "default_files_dir")]
    files_dir: PathBuf,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    metrics_listen: Option<String>,
    nats: RawNats,
    proxmox: RawProxmox,
    #[serde(default)]
    ssh: RawSsh,
    #[serde(default)]
    clone: RawClone,
    #[serde(default)]
    mounts: RawMounts,
    #[serde(default)]
    fetch: RawFetch,
    #[serde(default)]
    trust: RawTrust,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    #[serde(default)]
    admin_keys: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClone {
    #[serde(default)]
    allow_vmids: Vec<pvefleet_schemas::Vmid>,
    #[serde(default)]
    allow_pools: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMounts {
    #[serde(default)]
    allow_existing: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFetch {
    #[serde(default)]
    allow: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNats {
    urls: Vec<String>,
    #[serde(default)]
    creds: Option<PathBuf>,
    #[serde(default)]
    inbox_prefix: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxmox {
    url: String,
    #[serde(default)]
    token_id: Option<String>,
    #[serde(default)]
    token_secret_file: Option<PathBuf>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_facts_ttl")]
    facts_ttl: HumanDuration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    #[serde(default = "default_ssh_user")]
    user: String,
    #[serde(default = "default_ssh_port")]
    port: u16,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: HumanDuration,
    #[serde(default = "default_retry_for")]
    retry_for: HumanDuration,
    #[serde(default = "default_authorized_keys")]
    authorized_keys: String,
    #[serde(default)]
    key_file: Option<PathBuf>,
}

impl Default for RawSsh {
    fn default() -> Self {
        Self {
            user: default_ssh_user(),
            port: default_ssh_port(),
            connect_timeout: default_connect_timeout(),
            retry_for: default_retry_for(),
            authorized_keys: default_authorized_keys(),
            key_file: None,
        }
    }
}

fn default_concurrency() -> u32 {
    4
}
fn default_heartbeat() -> HumanDuration {
    HumanDuration::secs(5)
}
fn yes() -> bool {
    true
}
fn default_inventory_interval() -> HumanDuration {
    HumanDuration::secs(60)
}
fn default_grace() -> HumanDuration {
    HumanDuration::secs(30)
}
fn default_ack_wait() -> HumanDuration {
    HumanDuration::secs(30)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/pvefleet")
}
fn default_authorized_keys() -> String {
    ".ssh/authorized_keys".into()
}
fn default_files_dir() -> PathBuf {
    PathBuf::from("/var/lib/pvefleet/files")
}
fn default_ssh_user() -> String {
    "root".into()
}
fn default_ssh_port() -> u16 {
    22
}
fn default_facts_ttl() -> HumanDuration {
    HumanDuration::secs(10)
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_retry_for() -> HumanDuration {
    HumanDuration::secs(120)
}

/// How a key's environment value is turned into TOML.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    List,
    IntList,
}

/// Every key, for the environment overlay (and so for the docs).
const KEYS: &[(&str, Kind)] = &[
    ("node", Kind::Str),
    ("concurrency", Kind::Int),
    ("heartbeat", Kind::Str),
    ("shutdown_grace", Kind::Str),
    ("inventory_interval", Kind::Str),
    ("overcommit_memory", Kind::Bool),
    ("ack_wait", Kind::Str),
    ("files_dir", Kind::Str),
    ("state_dir", Kind::Str),
    ("metrics_listen", Kind::Str),
    ("nats.urls", Kind::List),
    ("nats.creds", Kind::Str),
    ("nats.inbox_prefix", Kind::Str),
    ("nats.ca_file", Kind::Str),
    ("nats.cert_file", Kind::Str),
    ("nats.key_file", Kind::Str),
    ("proxmox.url", Kind::Str),
    ("proxmox.token_id", Kind::Str),
    ("proxmox.token_secret_file", Kind::Str),
    ("proxmox.user", Kind::Str),
    ("proxmox.password_file", Kind::Str),
    ("proxmox.fingerprint", Kind::Str),
    ("proxmox.ca_file", Kind::Str),
    ("proxmox.facts_ttl", Kind::Str),
    ("ssh.user", Kind::Str),
    ("ssh.port", Kind::Int),
    ("ssh.connect_timeout", Kind::Str),
    ("ssh.retry_for", Kind::Str),
    ("ssh.authorized_keys", Kind::Str),
    ("ssh.key_file", Kind::Str),
    ("clone.allow_vmids", Kind::IntList),
    ("clone.allow_pools", Kind::List),
    ("mounts.allow_existing", Kind::List),
    ("fetch.allow", Kind::List),
    ("trust.admin_keys", Kind::List),
];

/// `proxmox.token_id` → `PVEFLEET_PROXMOX_TOKEN_ID`.
pub fn env_name(key: &str) -> String {
    format!("PVEFLEET_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// The required keys `table` lacks, all of them, so one start names everything to fix.
fn missing_required(table: &toml::Table) -> Vec<&'static str> {
    let has = |key: &str| {
        let (head, rest) = key.split_once('.').unwrap_or((key, ""));
        match table.get(head) {
            Some(toml::Value::Table(t)) if !rest.is_empty() => t.contains_key(rest),
            Some(_) => rest.is_empty(),
            None => false,
        }
    };
    let mut missing = Vec::new();
    for key in ["node", "nats.urls", "proxmox.url"] {
        if !has(key) {
            missing.push(key);
        }
    }
    match (has("proxmox.token_id"), has("proxmox.token_secret_file"), has("proxmox.user")) {
        (false, false, false) => missing.extend(["proxmox.token_id", "proxmox.token_secret_file"]),
        (true, false, _) => missing.push("proxmox.token_secret_file"),
        (false, true, _) => missing.push("proxmox.token_id"),
        _ => {}
    }
    if !has("proxmox.fingerprint") && !has("proxmox.ca_file") {
        missing.push("proxmox.fingerprint");
    }
    missing
}

impl Config {
    /// Reads `path` (if given), overlays `PVEFLEET_…` variables from `env`, and checks it all.
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file_name = path.map_or_else(|| "environment".to_owned(), |p| p.display().to_string());
        let err = |source_name: &str, key: &str, message: String| ConfigError {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            message,
        };
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| err(&file_name, "", format!("cannot read the file: {e}")))?;
                text.parse::<toml::Table>()
                    .map_err(|e| err(&file_name, "", format!("not valid TOML: {}", e.message())))?
            }
            None => toml::Table::new(),
        };
        for (key, kind) in KEYS {
            let var = env_name(key);
            let Some(value) = env(&var) else { continue };
            let value = match kind {
                Kind::Str => toml::Value::String(value),
                Kind::Int => toml::Value::Integer(
                    value
                        .trim()
                        .parse()
                        .map_err(|_| err("environment", key, format!("{var}=`{value}` is not a number")))?,
                ),
                Kind::Bool => toml::Value::Boolean(match value.trim() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err(err("environment", key, format!("{var}=`{value}` is not true or false"))),
                }),
                Kind::List => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_owned()))
                        .collect(),
                ),
                Kind::IntList => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| {
                            s.parse()
                                .map(toml::Value::Integer)
                                .map_err(|_| err("environment", key, format!("{var}: `{s}` is not a number")))
                        })
                        .collect::<Result<_, _>>()?,
                ),
            };
            set(&mut table, key, value);
        }
        let missing = missing_required(&table);
        match missing.as_slice() {
            [] => {}
            [one] => return Err(err(&file_name, one, format!("is required (or set {})", env_name(one)))),
            many => {
                let vars: Vec<String> = many.iter().map(|k| env_name(k)).collect();
                return Err(err(
                    &file_name,
                    &many.join("`, `"),
                    format!("{} required keys are missing (or set {})", many.len(), vars.join(", ")),
                ));
            }
        }
        let raw: Raw = serde_path_to_error::deserialize(table).map_err(|e| {
            let (key, message) = pvefleet_schemas::validate::field_of(&e.path().to_string(), e.inner().message());
            let message =
                if message == "is required" { format!("is required (or set {})", env_name(&key)) } else { message };
            err(&file_name, &key, message)
        })?;
        Self::check(raw, &file_name)
    }

    fn check(raw: Raw, file: &str) -> Result<Self, ConfigError> {
        let cx = Errs { file };
        check_limits(&raw, &cx)?;
        let clone_key = clone_key(&raw, &cx)?;
        let client_cert = check_nats(&raw, &cx)?;
        let credential = credential(&raw, &cx)?;
        let trust = trust(&raw, &cx)?;
        let allow = allow(raw.clone, raw.mounts, &raw.fetch, &cx)?;
        let admin_keys = raw
            .trust
            .admin_keys
            .iter()
            .enumerate()
            .map(|(i, k)| k.parse().map_err(|e| cx.at(&format!("trust.admin_keys[{i}]"), format!("`{k}`: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let metrics_listen = raw
            .metrics_listen
            .as_deref()
            .map(|addr| {
                addr.parse::<std::net::SocketAddr>().map_err(|e| {
                    cx.at("metrics_listen", format!("`{addr}` is not an address like 127.0.0.1:9464 ({e})"))
                })
            })
            .transpose()?;
        Ok(Config {
            metrics_listen,
            node: raw.node,
            concurrency: raw.concurrency,
            heartbeat: raw.heartbeat.0,
            ack_wait: raw.ack_wait.0,
            shutdown_grace: raw.shutdown_grace.0,
            inventory_interval: raw.inventory_interval.0,
            overcommit_memory: raw.overcommit_memory,
            files_dir: raw.files_dir,
            state_dir: raw.state_dir,
            nats: NatsConfig {
                urls: raw.nats.urls,
                creds: raw.nats.creds,
                inbox_prefix: raw.nats.inbox_prefix,
                ca_file: raw.nats.ca_file,
                client_cert,
            },
            proxmox: ProxmoxConfig {
                url: raw.proxmox.url.trim_end_matches('/').to_owned(),
                credential,
                trust,
                facts_ttl: raw.proxmox.facts_ttl.0,
            },
            ssh: SshConfig {
                user: raw.ssh.user,
                port: raw.ssh.port,
                connect_timeout: raw.ssh.connect_timeout.0,
                retry_for: raw.ssh.retry_for.0,
                authorized_keys: raw.ssh.authorized_keys,
                clone_key,
            },
            allow,
            admin_keys,
        })
    }
}

/// Sets `a.b` in `table`, creating `a` when missing.
fn set(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        Some((head, rest)) => {
            let inner = table.entry(head).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = inner {
                set(t, rest, value);
            }
        }
        None => {
            table.insert(key.to_owned(), value);
        }
    }
}

/// Where a setting's error is reported: the file (or environment) it came from, and its key.
struct Errs<'a> {
    file: &'a str,
}

impl Errs<'_> {
    fn at(&self, key: &str, message: String) -> ConfigError {
        ConfigError { source_name: self.file.to_owned(), key: key.to_owned(), message }
    }

    /// Like ssh with its keys: a secret file that group or others may read is refused.
    fn private(&self, key: &str, path: &Path) -> Result<(), ConfigError> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|e| self.at(key, format!("cannot read {}: {e}", path.display())))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(self.at(
                key,
                format!(
                    "{} may be read by group or others (mode {mode:04o}); it holds a secret: `chmod 600` it",
                    path.display()
                ),
            ));
        }
        Ok(())
    }
}

/// The agent's own numbers and directories, in range.
fn check_limits(raw: &Raw, cx: &Errs<'_>) -> Result<(), ConfigError> {
    if raw.concurrency == 0 || raw.concurrency > 256 {
        return Err(cx.at("concurrency", format!("{} is outside 1..=256", raw.concurrency)));
    }
    if raw.heartbeat.0 < Duration::from_millis(100) {
        return Err(cx.at("heartbeat", "must be at least 100ms".into()));
    }
    if raw.ack_wait.0 < Duration::from_secs(1) {
        return Err(cx.at("ack_wait", "must be at least 1s".into()));
    }
    for (key, dir) in [("files_dir", &raw.files_dir), ("state_dir", &raw.state_dir)] {
        if !dir.is_absolute() {
            return Err(cx.at(key, format!("`{}` must be an absolute path", dir.display())));
        }
    }
    if raw.ssh.authorized_keys.is_empty() || raw.ssh.authorized_keys.contains(['\'', '\n']) {
        return Err(cx.at("ssh.authorized_keys", "must be a file path without quotes".into()));
    }
    Ok(())
}

/// `ssh.key_file`: the key a clone's source container accepts, read and checked now.
fn clone_key(raw: &Raw, cx: &Errs<'_>) -> Result<Option<CloneKey>, ConfigError> {
    Ok(match &raw.ssh.key_file {
        None => None,
        Some(file) => {
            cx.private("ssh.key_file", file)?;
            let text = std::fs::read_to_string(file)
                .map_err(|e| cx.at("ssh.key_file", format!("cannot read {} ({e})", file.display())))?;
            let key = russh::keys::PrivateKey::from_openssh(&text).map_err(|e| {
                cx.at("ssh.key_file", format!("{} is not an unencrypted OpenSSH private key ({e})", file.display()))
            })?;
            if key.is_encrypted() {
                return Err(cx.at(
                    "ssh.key_file",
                    format!("{} is encrypted; the agent cannot ask for its passphrase", file.display()),
                ));
            }
            Some(CloneKey { file: file.clone(), key: std::sync::Arc::new(key) })
        }
    })
}

/// The NATS settings (URLs, inbox prefix, TLS files), and the client certificate if any.
fn check_nats(raw: &Raw, cx: &Errs<'_>) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    if raw.nats.urls.is_empty() {
        return Err(cx.at("nats.urls", "needs at least one server URL".into()));
    }
    for url in &raw.nats.urls {
        url.parse::<async_nats::ServerAddr>().map_err(|e| {
            cx.at("nats.urls", format!("`{}` is not a NATS URL ({e})", pvefleet_schemas::redact_url(url)))
        })?;
    }
    if let Some(prefix) = &raw.nats.inbox_prefix {
        let ok = !prefix.is_empty() && !prefix.contains(['*', '>', ' ']) && prefix.split('.').all(|t| !t.is_empty());
        if !ok {
            return Err(cx.at("nats.inbox_prefix", format!("`{prefix}` is not a subject prefix")));
        }
    }
    for (key, file) in [
        ("nats.ca_file", &raw.nats.ca_file),
        ("nats.cert_file", &raw.nats.cert_file),
        ("nats.key_file", &raw.nats.key_file),
    ] {
        if let Some(file) = file
            && !file.is_file()
        {
            return Err(cx.at(key, format!("{} is not a file", file.display())));
        }
    }
    Ok(match (&raw.nats.cert_file, &raw.nats.key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        (Some(_), None) => return Err(cx.at("nats.key_file", "is required with nats.cert_file".into())),
        (None, Some(_)) => return Err(cx.at("nats.cert_file", "is required with nats.key_file".into())),
    })
}

/// The Proxmox API's URL, and the credential the agent signs in with (an API token or a login).
fn credential(raw: &Raw, cx: &Errs<'_>) -> Result<Credential, ConfigError> {
    if !raw.proxmox.url.starts_with("https://") {
        return Err(cx.at(
            "proxmox.url",
            format!("`{}` must be an https:// URL (the API is only served over TLS)", raw.proxmox.url),
        ));
    }
    reqwest::Url::parse(&raw.proxmox.url)
        .map_err(|e| cx.at("proxmox.url", format!("`{}` is not a URL ({e})", raw.proxmox.url)))?;
    let read_secret = |key: &str, path: &Path| {
        cx.private(key, path)?;
        let text =
            std::fs::read_to_string(path).map_err(|e| cx.at(key, format!("cannot read {}: {e}", path.display())))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(cx.at(key, format!("{} is empty", path.display())));
        }
        Ok(pvefleet_schemas::Secret::new(text))
    };
    let p = &raw.proxmox;
    Ok(match (&p.token_id, &p.token_secret_file, &p.user, &p.password_file) {
        (Some(id), Some(file), None, None) => {
            let token_ok = id.split_once('!').is_some_and(|(user, name)| user.contains('@') && !name.is_empty());
            if !token_ok {
                return Err(
                    cx.at("proxmox.token_id", format!("`{id}` is not an API token id like `pvefleet@pve!agent`"))
                );
            }
            Credential::Token { id: id.clone(), secret: read_secret("proxmox.token_secret_file", file)? }
        }
        (None, None, Some(user), Some(file)) => {
            if !user.contains('@') || user.contains('!') {
                return Err(cx.at("proxmox.user", format!("`{user}` is not a user like `root@pam`")));
            }
            Credential::Login { user: user.clone(), password: read_secret("proxmox.password_file", file)? }
        }
        (Some(_), None, _, _) => {
            return Err(cx.at("proxmox.token_secret_file", "is required with proxmox.token_id".into()));
        }
        (None, Some(_), _, _) => {
            return Err(cx.at("proxmox.token_id", "is required with proxmox.token_secret_file".into()));
        }
        (_, _, Some(_), None) => {
            return Err(cx.at("proxmox.password_file", "is required with proxmox.user".into()));
        }
        (_, _, None, Some(_)) => return Err(cx.at("proxmox.user", "is required with proxmox.password_file".into())),
        (Some(_), Some(_), Some(_), Some(_)) => {
            return Err(cx.at(
                "proxmox.user",
                "give an API token (token_id, token_secret_file) or a login (user, password_file), not both".into(),
            ));
        }
        (None, None, None, None) => {
            return Err(cx.at(
                "proxmox.token_id",
                format!(
                    "is required (or set {}), with proxmox.token_secret_file; or sign in as a user with \
                     proxmox.user and proxmox.password_file",
                    env_name("proxmox.token_id")
                ),
            ));
        }
    })
}

/// How the Proxmox API's certificate is checked: its SHA-256 or a CA file, never not at all.
fn trust(raw: &Raw, cx: &Errs<'_>) -> Result<Trust, ConfigError> {
    Ok(match (&raw.proxmox.fingerprint, &raw.proxmox.ca_file) {
        (Some(fp), None) => {
            Trust::Fingerprint(fp.parse::<Fingerprint>().map_err(|e| cx.at("proxmox.fingerprint", e.to_string()))?)
        }
        (None, Some(ca)) => {
            if !ca.is_file() {
                return Err(cx.at("proxmox.ca_file", format!("{} is not a file", ca.display())));
            }
            Trust::CaFile(ca.clone())
        }
        (Some(_), Some(_)) => {
            return Err(cx.at("proxmox.fingerprint", "give either `fingerprint` or `ca_file`, not both".into()));
        }
        (None, None) => {
            return Err(cx.at(
                "proxmox.fingerprint",
                "one of `fingerprint` (the API certificate's SHA-256) or `ca_file` is required; certificate checks are never switched off".into(),
            ));
        }
    })
}

/// What the node's operator lets jobs reach beyond their own.
fn allow(clone: RawClone, mounts: RawMounts, fetch: &RawFetch, cx: &Errs<'_>) -> Result<Allow, ConfigError> {
    let fetch = fetch
        .allow
        .iter()
        .map(|t| FetchAllow::parse(t.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cx.at("fetch.allow", e))?;
    for (i, volume) in mounts.allow_existing.iter().enumerate() {
        if !volume.split_once(':').is_some_and(|(s, v)| !s.is_empty() && !v.is_empty()) {
            return Err(cx.at(
                "mounts.allow_existing",
                format!("entry {i}: `{volume}` is not a volume id like `local-lvm:vm-100-disk-1`"),
            ));
        }
    }
    Ok(Allow {
        clone_vmids: clone.allow_vmids,
        clone_pools: clone.allow_pools,
        existing_volumes: mounts.allow_existing,
        fetch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(extra: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        private(&secret);
        let fp = (0..32).map(|i| format!("{i:02X}")).collect::<Vec<_>>().join(":");
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "node = \"pve1\"\n{extra}\n[nats]\nurls = [\"nats://127.0.0.1:4222\"]\n\n[proxmox]\nurl = \"https://127.0.0.1:8006\"\ntoken_id = \"pvefleet@pve!agent\"\ntoken_secret_file = {secret:?}\nfingerprint = \"{fp}\"\n"
            ),
        )
        .unwrap();
        (dir, path)
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn private(path: &Path) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_secret_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, path) = fixture("");
        std::fs::set_permissions(dir.path().join("secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::load(Some(&path), no_env).unwrap_err();
        assert_eq!(e.key, "proxmox.token_secret_file", "{e}");
        assert!(e.message.contains("mode 0644") && e.message.contains("chmod 600"), "{e}");
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let (_d, path) = fixture("");
        let c = Config::load(Some(&path), no_env).unwrap();
        assert_eq!(c.node.as_str(), "pve1");
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.ssh.user, "root");
        match &c.proxmox.credential {
            Credential::Token { id, secret } => {
                assert_eq!((id.as_str(), secret.expose()), ("pvefleet@pve!agent", "s3cret"))
            }
            other => panic!("{other:?}"),
        }
        assert!(!c.proxmox.credential.is_root_login());
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn a_login_is_the_other_credential_and_only_root_at_pam_may_do_all() {
        let (dir, path) = fixture("");
        let password = dir.path().join("password");
        std::fs::write(&password, "hunter2\n").unwrap();
        private(&password);
        let login = |user: &'static str| {
            let password = password.display().to_string();
            move |k: &str| match k {
                "PVEFLEET_PROXMOX_TOKEN_ID" | "PVEFLEET_PROXMOX_TOKEN_SECRET_FILE" => None,
                "PVEFLEET_PROXMOX_USER" => Some(user.to_owned()),
                "PVEFLEET_PROXMOX_PASSWORD_FILE" => Some(password.clone()),
                _ => None,
            }
        };
        // The fixture has a token too: both are refused, naming the choice.
        let e = Config::load(Some(&path), login("root@pam")).unwrap_err();
        assert_eq!(e.key, "proxmox.user", "{e}");
        let text = std::fs::read_to_string(&path).unwrap();
        let no_token: String = text.lines().filter(|l| !l.starts_with("token_")).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, no_token).unwrap();
        let c = Config::load(Some(&path), login("root@pam")).unwrap();
        assert!(c.proxmox.credential.is_root_login());
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = Config::load(Some(&path), login("ops@pve")).unwrap();
        assert!(!c.proxmox.credential.is_root_login());
        let half = |k: &str| (k == "PVEFLEET_PROXMOX_USER").then(|| "root@pam".to_owned());
        assert_eq!(Config::load(Some(&path), half).unwrap_err().key, "proxmox.password_file");
    }

    #[test]
    fn env_overrides_every_kind_of_key() {
        let (_d, path) = fixture("");
        let env = |k: &str| match k {
            "PVEFLEET_CONCURRENCY" => Some("9".into()),
            "PVEFLEET_NATS_URLS" => Some("nats://a:1, nats://b:2".into()),
            "PVEFLEET_SSH_RETRY_FOR" => Some("30s".into()),
            _ => None,
        };
        let c = Config::load(Some(&path), env).unwrap();
        assert_eq!(c.concurrency, 9);
        assert_eq!(c.nats.urls, ["nats://a:1", "nats://b:2"]);
        assert_eq!(c.ssh.retry_for, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_file_and_key() {
        let cases = [
            ("concurrency = 0", "concurrency"),
            ("concurrency = \"x\"", "concurrency"),
            ("nodde = \"typo\"", "nodde"),
            ("[ssh]\nconnect_timeout = \"soon\"", "ssh.connect_timeout"),
        ];
        for (extra, key) in cases {
            let (_d, path) = fixture(extra);
            let e = Config::load(Some(&path), no_env).unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
            assert!(e.to_string().starts_with(&path.display().to_string()), "{e}");
        }
        let (_d, path) = fixture("");
        let bad_fp = |k: &str| (k == "PVEFLEET_PROXMOX_FINGERPRINT").then(|| "AA:BB".to_owned());
        assert_eq!(Config::load(Some(&path), bad_fp).unwrap_err().key, "proxmox.fingerprint");
        let bad_node = |k: &str| (k == "PVEFLEET_NODE").then(|| "pve.1".to_owned());
        assert_eq!(Config::load(Some(&path), bad_node).unwrap_err().key, "node");
    }

    #[test]
    fn missing_keys_are_named_in_full_and_all_at_once() {
        let e = Config::load(None, no_env).unwrap_err();
        assert_eq!(e.source_name, "environment");
        assert_eq!(
            e.to_string(),
            "environment: key `node`, `nats.urls`, `proxmox.url`, `proxmox.token_id`, `proxmox.token_secret_file`, \
             `proxmox.fingerprint`: 6 required keys are missing (or set PVEFLEET_NODE, PVEFLEET_NATS_URLS, \
             PVEFLEET_PROXMOX_URL, PVEFLEET_PROXMOX_TOKEN_ID, PVEFLEET_PROXMOX_TOKEN_SECRET_FILE, PVEFLEET_PROXMOX_FINGERPRINT)"
        );
        let env = |k: &str| match k {
            "PVEFLEET_NODE" => Some("pve1".into()),
            "PVEFLEET_NATS_URLS" => Some("nats://x:1".into()),
            "PVEFLEET_PROXMOX_URL" => Some("https://x".into()),
            "PVEFLEET_PROXMOX_TOKEN_SECRET_FILE" => Some("/nonexistent".into()),
            "PVEFLEET_PROXMOX_CA_FILE" => Some("/nonexistent".into()),
            _ => None,
        };
        let e = Config::load(None, env).unwrap_err();
        assert_eq!(e.key, "proxmox.token_id");
        assert!(e.message.contains("PVEFLEET_PROXMOX_TOKEN_ID"), "{e}");
        let e = Config::load(Some(Path::new("/nonexistent/agent.toml")), no_env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/nonexistent/agent.toml: cannot read the file: No such file or directory (os error 2)"
        );
    }
}
