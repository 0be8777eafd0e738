//! The day-two jobs: what the coordinator publishes on `pvefleet.jobs.<node>.update`,
//! `….resize` and `….power` for a container pvefleet made, and what an agent keeps of each
//! container in the inventory (`pvefleet-inventory`).
//!
//! Each names its container by vmid, and by the create job whose marker it must carry when the
//! coordinator knows it: the agent re-proves the marker before it writes anything, and answers
//! `moved` (naming the node) when the container is no longer on its node.

use std::collections::BTreeMap;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, NodeName, Vmid};
use crate::job::JobMessageKind;
use crate::lxc::{Features, MountPoint, Nic, Startup};
use crate::message::{DecodeError, Timestamp, V1, decode};
use crate::spec::HumanDuration;
use crate::validate::{Problems, ValidationErrors};

/// The container a day-two job acts on.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerTarget {
    pub vmid: Vmid,
    /// The create job that made it: the container must carry its marker. Without it, any
    /// pvefleet marker will do (a container the store does not know, named by an operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_job: Option<JobId>,
    /// Its hostname as the coordinator knew it, for events and pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// How long the Proxmox tasks of a day-two job may take.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DayTwoOptions {
    /// How long a clean shutdown (of a shutdown, or inside a reboot) may take.
    #[serde(default = "DayTwoOptions::default_shutdown")]
    pub shutdown_timeout: HumanDuration,
    /// How long each Proxmox task may take.
    #[serde(default = "DayTwoOptions::default_task")]
    pub task_timeout: HumanDuration,
}

impl DayTwoOptions {
    fn default_shutdown() -> HumanDuration {
        HumanDuration(std::time::Duration::from_secs(60))
    }
    fn default_task() -> HumanDuration {
        HumanDuration(std::time::Duration::from_secs(600))
    }
}

impl Default for DayTwoOptions {
    fn default() -> Self {
        Self { shutdown_timeout: Self::default_shutdown(), task_timeout: Self::default_task() }
    }
}

/// When an update restarts the container.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never: what PVE leaves pending waits for the next start.
    Never,
    /// Only when PVE left changes pending (a running container takes most at once).
    #[default]
    IfNeeded,
    /// Always, once the change is made (if it runs).
    Always,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::IfNeeded => "if-needed",
            RestartPolicy::Always => "always",
        }
    }
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(RestartPolicy::Never),
            "if-needed" => Ok(RestartPolicy::IfNeeded),
            "always" => Ok(RestartPolicy::Always),
            other => Err(format!("`{other}` is not a restart policy: never, if-needed or always")),
        }
    }
}

/// What an update changes; what is left out stays as it is. The container's pvefleet marker
/// tags are always kept, whatever `tags` says.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    /// Memory in MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// Swap in MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// CPU limit in cores (0 for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpulimit: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuunits: Option<u32>,
    /// NICs by their key (`net0`…`net31`): a NIC to set (added or changed), or null to remove
    /// it. A changed NIC keeps its MAC address unless it names one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nics: BTreeMap<String, Option<Nic>>,
    /// DNS servers (an empty list: the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<IpAddr>>,
    /// The container's tags, replacing the others (its markers stay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onboot: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<Startup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<bool>,
    /// Mount points to add, by key (`mp0`…): one already there is left as it is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mounts: BTreeMap<String, MountPoint>,
    /// The container's features in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
}

impl ConfigChange {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        p.check("", !self.is_empty(), || "changes nothing: give at least one setting to change".into());
        if let Some(m) = self.memory {
            p.check("memory", (16..=crate::limits::MEMORY_MB).contains(&m), || {
                format!("{m} MB is outside 16..={}", crate::limits::MEMORY_MB)
            });
        }
        if let Some(c) = self.cores {
            p.check("cores", (1..=8192).contains(&c), || format!("{c} is outside 1..=8192"));
        }
        if let Some(l) = self.cpulimit {
            p.check("cpulimit", (0.0..=8192.0).contains(&l), || format!("{l} is outside 0..=8192"));
        }
        if let Some(u) = self.cpuunits {
            p.check("cpuunits", (1..=262_144).contains(&u), || format!("{u} is outside 1..=262144"));
        }
        for (key, nic) in &self.nics {
            p.check(&format!("nics.{key}"), numbered(key, "net", 31), || "is not a NIC key `net0`…`net31`".into());
            if let Some(nic) = nic {
                p.nest(&format!("nics.{key}"), nic.validate());
            }
        }
        if let Some(ns) = &self.nameservers {
            p.count("nameservers", ns.len(), crate::limits::NAMESERVERS);
        }
        if let Some(tags) = &self.tags {
            p.count("tags", tags.len(), crate::limits::TAGS);
            for (i, tag) in tags.iter().enumerate() {
                if let Err(e) = crate::validate::pve_tag(tag) {
                    p.check(&format!("tags[{i}]"), false, || e);
                } else {
                    p.check(
                        &format!("tags[{i}]"),
                        !tag.to_ascii_lowercase().starts_with(crate::MARKER_TAG_PREFIX),
                        || format!("`{tag}`: the `{}` prefix is kept for pvefleet's markers", crate::MARKER_TAG_PREFIX),
                    );
                }
            }
        }
        if let Some(d) = &self.description {
            p.bytes("description", d, crate::limits::DESCRIPTION_BYTES);
        }
        for (key, mount) in &self.mounts {
            p.check(&format!("mounts.{key}"), numbered(key, "mp", 255), || {
                "is not a mount point key `mp0`…`mp255`".into()
            });
            p.nest(&format!("mounts.{key}"), mount.validate());
        }
        if let Some(f) = &self.features {
            p.nest("features", f.validate());
        }
        p.finish()
    }
}

/// Whether `key` is `prefix` and a number up to `max`.
fn numbered(key: &str, prefix: &str, max: u32) -> bool {
    key.strip_prefix(prefix)
        .filter(|n| !n.is_empty() && (n.len() == 1 || !n.starts_with('0')))
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n <= max)
}

/// What a guarded update does if its change fails, once its snapshot is taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Roll the container back to the snapshot taken before the change.
    #[default]
    Rollback,
    /// Leave it as the failure left it (the snapshot stays, to roll back to by hand).
    Keep,
}

impl std::str::FromStr for OnFailure {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rollback" => Ok(OnFailure::Rollback),
            "keep" => Ok(OnFailure::Keep),
            other => Err(format!("`{other}` is not what to do on failure: rollback or keep")),
        }
    }
}

/// A guarded update: a snapshot (named after the job, `pf-<short id>`) first, the change, and
/// on failure a rollback to it; each its own step, so a crash resumes the right one. The
/// snapshot is deleted after success unless `keep_snapshot`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    #[serde(default)]
    pub on_failure: OnFailure,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_snapshot: bool,
}

/// A request to change a container's settings (`pvefleet.jobs.<node>.update`).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateJob {
    pub v: V1,
    pub kind: JobMessageKind,
    pub job_id: JobId,
    pub node: NodeName,
    pub submitted_at: Timestamp,
    pub target: ContainerTarget,
    pub change: ConfigChange,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// A snapshot before the change, and a rollback to it if the change fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    #[serde(default)]
    pub options: DayTwoOptions,
    /// Who asked, until when, and the signature over the rest (schemas/SIGNING.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

/// A request to grow one of a container's disks to an absolute size (`….resize`).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeJob {
    pub v: V1,
    pub kind: JobMessageKind,
    pub job_id: JobId,
    pub node: NodeName,
    pub submitted_at: Timestamp,
    pub target: ContainerTarget,
    /// `rootfs` or `mp0`…`mp255`.
    pub disk: String,
    /// The size it is to have, in bytes (growing only: a smaller one fails at finding).
    pub size_bytes: u64,
    #[serde(default)]
    pub options: DayTwoOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

/// What a power job does.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Start,
    /// A clean shutdown within `shutdown_timeout`; then a hard stop only if `force`.
    Shutdown,
    Stop,
    Reboot,
}

impl PowerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::Start => "start",
            PowerAction::Shutdown => "shutdown",
            PowerAction::Stop => "stop",
            PowerAction::Reboot => "reboot",
        }
    }
}

impl std::fmt::Display for PowerAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to start, shut down, stop or reboot a container (`….power`).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerJob {
    pub v: V1,
    pub kind: JobMessageKind,
    pub job_id: JobId,
    pub node: NodeName,
    pub submitted_at: Timestamp,
    pub target: ContainerTarget,
    pub action: PowerAction,
    /// A shutdown that does not end in time is followed by a hard stop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    #[serde(default)]
    pub options: DayTwoOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

/// A day-two job of any kind (as a plan request carries it), read by its `kind`.
#[derive(Clone, PartialEq, Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum DayTwoJob {
    Update(Box<UpdateJob>),
    Resize(ResizeJob),
    Power(PowerJob),
    Snapshot(SnapshotJob),
    Rollback(RollbackJob),
    Backup(BackupJob),
    Restore(RestoreJob),
    Move(MoveJob),
}

/// Calls `$body` with the job inside whatever variant `$job` is.
macro_rules! each_kind {
    ($job:expr, $j:ident => $body:expr) => {
        match $job {
            DayTwoJob::Update($j) => $body,
            DayTwoJob::Resize($j) => $body,
            DayTwoJob::Power($j) => $body,
            DayTwoJob::Snapshot($j) => $body,
            DayTwoJob::Rollback($j) => $body,
            DayTwoJob::Backup($j) => $body,
            DayTwoJob::Restore($j) => $body,
            DayTwoJob::Move($j) => $body,
        }
    };
}

impl<'de> Deserialize<'de> for DayTwoJob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = serde_json::Value::deserialize(d)?;
        let kind = value.get("kind").cloned().ok_or_else(|| D::Error::missing_field("kind"))?;
        let kind: JobMessageKind = serde_json::from_value(kind).map_err(D::Error::custom)?;
        let job = match kind {
            JobMessageKind::Update => serde_json::from_value(value).map(|j| DayTwoJob::Update(Box::new(j))),
            JobMessageKind::Resize => serde_json::from_value(value).map(DayTwoJob::Resize),
            JobMessageKind::Power => serde_json::from_value(value).map(DayTwoJob::Power),
            JobMessageKind::Snapshot => serde_json::from_value(value).map(DayTwoJob::Snapshot),
            JobMessageKind::Rollback => serde_json::from_value(value).map(DayTwoJob::Rollback),
            JobMessageKind::Backup => serde_json::from_value(value).map(DayTwoJob::Backup),
            JobMessageKind::Restore => serde_json::from_value(value).map(DayTwoJob::Restore),
            JobMessageKind::Move => serde_json::from_value(value).map(DayTwoJob::Move),
            JobMessageKind::Create | JobMessageKind::Destroy => {
                return Err(D::Error::custom(format!("`{}` is not a day-two kind", kind.as_str())));
            }
        };
        job.map_err(D::Error::custom)
    }
}

impl DayTwoJob {
    pub fn job_id(&self) -> JobId {
        each_kind!(self, j => j.job_id)
    }

    pub fn node(&self) -> &NodeName {
        each_kind!(self, j => &j.node)
    }

    /// The container it acts on; none for a restore as a new container.
    pub fn target(&self) -> Option<&ContainerTarget> {
        match self {
            DayTwoJob::Restore(j) => j.over.as_ref(),
            DayTwoJob::Update(j) => Some(&j.target),
            DayTwoJob::Resize(j) => Some(&j.target),
            DayTwoJob::Power(j) => Some(&j.target),
            DayTwoJob::Snapshot(j) => Some(&j.target),
            DayTwoJob::Rollback(j) => Some(&j.target),
            DayTwoJob::Backup(j) => Some(&j.target),
            DayTwoJob::Move(j) => Some(&j.target),
        }
    }

    /// Its vmid: the target's, or the one a new restored container is to have.
    pub fn vmid(&self) -> Option<Vmid> {
        match self {
            DayTwoJob::Restore(j) => j.over.as_ref().map(|t| t.vmid).or(j.vmid),
            other => other.target().map(|t| t.vmid),
        }
    }

    pub fn kind(&self) -> JobMessageKind {
        each_kind!(self, j => j.kind)
    }

    /// The last token of its subject, `pvefleet.jobs.<node>.<kind>`.
    pub fn subject_kind(&self) -> crate::names::JobKind {
        use crate::names::JobKind;
        match self {
            DayTwoJob::Update(_) => JobKind::Update,
            DayTwoJob::Resize(_) => JobKind::Resize,
            DayTwoJob::Power(_) => JobKind::Power,
            DayTwoJob::Snapshot(_) => JobKind::Snapshot,
            DayTwoJob::Rollback(_) => JobKind::Rollback,
            DayTwoJob::Backup(_) => JobKind::Backup,
            DayTwoJob::Restore(_) => JobKind::Restore,
            DayTwoJob::Move(_) => JobKind::Move,
        }
    }

    pub fn submitted_at(&self) -> &Timestamp {
        each_kind!(self, j => &j.submitted_at)
    }

    /// The message as it is published (and stored).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a day-two job always serializes")
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        each_kind!(self, j => j.validate())
    }

    /// Without its own `auth` (a plan request is signed as a whole).
    pub fn unsigned(mut self) -> Self {
        each_kind!(&mut self, j => j.auth = None);
        self
    }

    /// The same request as a new job for `node`: a new id and time, unsigned (`pvefleet retry`).
    pub fn renewed(&self, node: NodeName) -> Self {
        let mut out = self.clone().unsigned();
        each_kind!(&mut out, j => {
            j.job_id = JobId::new();
            j.submitted_at = Timestamp::now();
            j.node = node;
        });
        out
    }
}

/// The largest disk a resize may ask for: the create limit.
const MAX_DISK_BYTES: u64 = (crate::limits::DISK_GB as u64) << 30;

macro_rules! day_two_message {
    ($ty:ident, $kind:ident, $name:literal) => {
        impl $ty {
            pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
                decode(bytes, "job kind", &[$name])
            }

            pub fn encode(&self) -> Vec<u8> {
                serde_json::to_vec(self).expect("a day-two job always serializes")
            }

            fn common(&self, p: &mut Problems) {
                p.check("kind", self.kind == JobMessageKind::$kind, || format!("must be `{}`", $name));
                p.duration("options.shutdown_timeout", self.options.shutdown_timeout.0, crate::limits::SHUTDOWN);
                p.duration("options.task_timeout", self.options.task_timeout.0, crate::limits::TASK);
                if let Some(h) = &self.target.hostname {
                    p.bytes("target.hostname", h, 253);
                }
                crate::job::check_auth(p, self.auth.as_ref());
            }
        }
    };
}

day_two_message!(UpdateJob, Update, "update");
day_two_message!(ResizeJob, Resize, "resize");
day_two_message!(PowerJob, Power, "power");

mod keeping;
pub use keeping::*;

impl UpdateJob {
    pub fn new(node: NodeName, target: ContainerTarget, change: ConfigChange) -> Self {
        Self {
            v: V1,
            kind: JobMessageKind::Update,
            job_id: JobId::new(),
            node,
            submitted_at: Timestamp::now(),
            target,
            change,
            restart: RestartPolicy::default(),
            guard: None,
            options: DayTwoOptions::default(),
            auth: None,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        self.common(&mut p);
        p.nest("change", self.change.validate());
        p.finish()
    }
}

impl ResizeJob {
    pub fn new(node: NodeName, target: ContainerTarget, disk: &str, size_bytes: u64) -> Self {
        Self {
            v: V1,
            kind: JobMessageKind::Resize,
            job_id: JobId::new(),
            node,
            submitted_at: Timestamp::now(),
            target,
            disk: disk.to_owned(),
            size_bytes,
            options: DayTwoOptions::default(),
            auth: None,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        self.common(&mut p);
        p.check("disk", self.disk == "rootfs" || numbered(&self.disk, "mp", 255), || {
            format!("`{}` is not a disk: `rootfs` or `mp0`…`mp255`", self.disk)
        });
        p.check("size_bytes", self.size_bytes >= 1 << 20 && self.size_bytes <= MAX_DISK_BYTES, || {
            format!("{} bytes is outside 1M..={}G", self.size_bytes, crate::limits::DISK_GB)
        });
        p.finish()
    }

    /// The size as PVE writes it: in the largest unit that divides it (`20G`, `1536M`).
    pub fn size_text(&self) -> String {
        size_text(self.size_bytes)
    }
}

impl PowerJob {
    pub fn new(node: NodeName, target: ContainerTarget, action: PowerAction) -> Self {
        Self {
            v: V1,
            kind: JobMessageKind::Power,
            job_id: JobId::new(),
            node,
            submitted_at: Timestamp::now(),
            target,
            action,
            force: false,
            options: DayTwoOptions::default(),
            auth: None,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        self.common(&mut p);
        p.check("force", !self.force || self.action == PowerAction::Shutdown, || {
            "only a shutdown can be forced (a stop after its timeout)".into()
        });
        p.finish()
    }
}

/// A size in bytes as PVE writes it: in the largest unit that divides it.
pub fn size_text(bytes: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes != 0 && bytes % (1u64 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Reads a size as PVE and the CLI write it: `20G`, `512M`, `1.5T`, `4096` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{text}` is not a size like `20G` (units K, M, G, T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a size like `20G` (units K, M, G, T)"))?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("`{text}` is not a size"));
    }
    Ok((value * (1u64 << shift) as f64).round() as u64)
}

/// A container carrying a pvefleet marker, as its node's agent last saw it: the value at
/// `<node>.<vmid>` in `pvefleet-inventory`. The key is deleted when the container is gone
/// from the node (deleted, or moved: its new node's agent writes it under its own key).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct InventoryEntry {
    pub v: V1,
    pub node: NodeName,
    pub vmid: Vmid,
    pub hostname: String,
    /// `running`, `stopped`, … as PVE says.
    pub status: String,
    pub tags: Vec<String>,
    /// The job that made it, from the note the agent wrote into its description and its marker tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_job: Option<JobId>,
    /// Its pvefleet marker tags.
    pub markers: Vec<String>,
    /// PVE's config digest when it was read.
    pub digest: String,
    pub memory_mb: Option<u64>,
    pub cores: Option<u64>,
    /// The root disk's size as PVE writes it (`8G`).
    pub disk: Option<String>,
    /// The static IPv4 address of its first NIC, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// PVE's lock on it (`backup`, `migrate`, …), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    /// The last job of this agent that wrote to it, and the config digest that job left: a
    /// digest that differs now is a change made outside pvefleet (drift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_digest: Option<String>,
    pub last_seen: Timestamp,
}

impl InventoryEntry {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Field { field: "inventory entry".into(), message: e.to_string() })
    }

    /// Whether its config changed since pvefleet last wrote it.
    pub fn drifted(&self) -> bool {
        self.applied_digest.as_ref().is_some_and(|d| *d != self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_and_print_as_pve_writes_them() {
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("1.5T"), Ok(3 << 39));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("20X").unwrap_err().contains("20X"));
        assert!(parse_size("-1G").is_err());
        assert_eq!(size_text(20 << 30), "20G");
        assert_eq!(size_text(1536 << 20), "1536M");
        assert_eq!(size_text(1000), "1000");
    }

    fn target() -> ContainerTarget {
        ContainerTarget { vmid: Vmid::new(101).unwrap(), create_job: None, hostname: None }
    }

    #[test]
    fn each_bad_field_is_named() {
        let node = NodeName::new("pve1").unwrap();
        let empty = UpdateJob::new(node.clone(), target(), ConfigChange::default());
        assert!(empty.validate().unwrap_err().to_string().contains("changes nothing"));
        let change = ConfigChange {
            memory: Some(8),
            tags: Some(vec!["pvefleet-x".into()]),
            nics: [("eth0".to_owned(), None)].into(),
            ..Default::default()
        };
        let text = UpdateJob::new(node.clone(), target(), change).validate().unwrap_err().to_string();
        for field in ["change.memory", "change.tags[0]", "change.nics.eth0"] {
            assert!(text.contains(field), "{field} in {text}");
        }
        let resize = ResizeJob::new(node.clone(), target(), "sda", 10);
        let text = resize.validate().unwrap_err().to_string();
        assert!(text.contains("disk") && text.contains("size_bytes"), "{text}");
        let mut power = PowerJob::new(node, target(), PowerAction::Stop);
        power.force = true;
        assert!(power.validate().unwrap_err().to_string().contains("force"));
    }

    #[test]
    fn a_job_of_another_kind_is_named_on_decode() {
        let node = NodeName::new("pve1").unwrap();
        let power = PowerJob::new(node, target(), PowerAction::Start);
        let e = ResizeJob::decode(&power.encode()).unwrap_err().to_string();
        assert!(e.contains("power") && e.contains("resize"), "{e}");
        assert_eq!(PowerJob::decode(&power.encode()).unwrap().encode(), power.encode());
    }
}
