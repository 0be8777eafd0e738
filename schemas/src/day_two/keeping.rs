//! The day-two jobs that keep a container safe and move it: `snapshot` (take or delete one),
//! `rollback`, `backup`, `restore` and `move` (`pvefleet.jobs.<node>.<kind>`).
//!
//! A snapshot or backup carries its job's id and the container's marker in its description or
//! notes, so a request whose answer was lost is found by them and never made twice; a rollback,
//! a restore over a container and a move are sent once (their UPID checkpointed, or, while it is
//! not known yet, the time they were asked, looked for in the node's task list).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ContainerTarget, DayTwoOptions};
use crate::ids::{JobId, NodeName, Vmid};
use crate::job::JobMessageKind;
use crate::message::{DecodeError, Timestamp, V1, decode};
use crate::validate::{Problems, ValidationErrors};

/// PVE's snapshot names (`pve-configid`, at most 40): a letter, then letters, digits, `-`, `_`;
/// `current` and `vzdump` are PVE's own.
pub fn snapshot_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        && name.len() <= 40;
    if !ok {
        return Err(format!(
            "`{name}` is not a snapshot name (a letter, then letters, digits, `-` or `_`; at most 40)"
        ));
    }
    if name == "current" || name == "vzdump" {
        return Err(format!("`{name}` is a name PVE keeps for itself"));
    }
    Ok(())
}

/// The snapshot a job names after itself when the operator names none (`pf-<short id>`).
pub fn default_snapshot_name(job: JobId) -> String {
    format!("pf-{}", job.short())
}

/// The line a pvefleet snapshot's description, or a backup's notes, begins with: it names the
/// job that made it and the container's marker, which is how a lost answer is found.
pub fn made_by_line(job: JobId, marker: &str) -> String {
    if marker.is_empty() { format!("pvefleet job {job}") } else { format!("pvefleet job {job} ({marker})") }
}

/// Whether a snapshot's description or a backup's notes say `job` made it.
pub fn made_by(text: &str, job: JobId) -> bool {
    let line = format!("pvefleet job {job}");
    text.lines().any(|l| l == line || l.starts_with(&format!("{line} (")))
}

/// The pvefleet job a snapshot's description or a backup's notes name.
pub fn made_by_job(text: &str) -> Option<JobId> {
    text.lines().find_map(|l| l.strip_prefix("pvefleet job ")?.split_whitespace().next()?.parse().ok())
}

/// What a snapshot job does.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotAction {
    #[default]
    Create,
    Delete,
}

/// A request to take or delete one snapshot of a container (`….snapshot`).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotJob {
    pub v: V1,
    pub kind: JobMessageKind,
    pub job_id: JobId,
    pub node: NodeName,
    pub submitted_at: Timestamp,
    pub target: ContainerTarget,
    #[serde(default)]
    pub action: SnapshotAction,
    /// The snapshot's name (the coordinator names one it takes `pf-<short id>` when the
    /// operator names none).
    pub name: String,
    /// A note kept in its description, after the line naming the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub options: DayTwoOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

/// A request to roll a container back to one of its snapshots (`….rollback`): whatever was
/// written since is lost, so it is sent once whatever happens to its answer.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackJob {
    pub v: V1,
    pub kind: JobMessageKind,
    pub job_id: JobId,
    pub node: NodeName,
    pub submitted_at: Timestamp,
    pub target: ContainerTarget,
    pub name: String,
    /// Start the container once it is rolled back (PVE stops a running one to roll it back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start: bool,
    #[serde(default)]
    pub options: DayTwoOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

/// How vzdump keeps a running container consistent while it reads it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupMode {
    /// From a snapshot of its volumes while it runs (PVE falls back to `suspend` on storage
    /// without snapshots).
    #[default]
    Snapshot,
    Suspend,
    /// Shut down for the backup, then started again.
    Stop,
}

impl BackupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupMode::Snapshot => "snapshot",
            BackupMode::Suspend => "suspend",
            BackupMode::Stop => "stop",
        }
    }
}

impl std::str::FromStr for BackupMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "snapshot" => Ok(BackupMode::Snapshot),
            "suspend" => Ok(BackupMode::Suspend),
            "stop" => Ok(BackupMode::Stop),
            other => Err(format!("`{other}` is not a backup mode: snapshot, suspend or stop")),
        }
    }
}

/// A request to back a container up to a storage (`….backup`).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupJob {
    pub v: V1,
    pub kind: JobMessageKind,
    pub job_id: JobId,
    pub node: NodeName,
    pub submitted_at: Timestamp,
    pub target: ContainerTarget,
    /// A storage of the node with `backup` in its content.
    pub storage: String,
    #[serde(default)]
    pub mode: BackupMode,
    /// Kept whatever a retention policy says (PVE's `protected`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected: bool,
    /// Once it is made, keep only the newest this many unprotected backups of the container
    /// on the storage (PVE's `prune-backups keep-last`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default)]
    pub options: DayTwoOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

/// A request to restore a backup (`….restore`): as a new container, or over the container it
/// was taken of (which is stopped first, and whose changes since are lost).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreJob {
    pub v: V1,
    pub kind: JobMessageKind,
    pub job_id: JobId,
    pub node: NodeName,
    pub submitted_at: Timestamp,
    /// The backup's volume id (`local:backup/vzdump-lxc-101-….tar.zst`).
    pub backup: String,
    /// Over this container (it must be the one the backup was taken of, and carry its marker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over: Option<ContainerTarget>,
    /// A new container's vmid; the agent allocates one as a create does when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<Vmid>,
    /// A new container's hostname (the backup's otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Where its volumes go (the backup's storages otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Start it once restored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start: bool,
    #[serde(default)]
    pub options: DayTwoOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

impl RestoreJob {
    /// The vmid the backup was taken of, as its volume name says (`vzdump-lxc-<vmid>-…`).
    pub fn backed_up_vmid(&self) -> Option<Vmid> {
        backup_vmid(&self.backup)
    }

    /// The container it restores over, or the new one's marker's job (this one).
    pub fn marker(&self) -> String {
        match &self.over {
            Some(t) => t.create_job.map(|j| j.marker_tag()).unwrap_or_default(),
            None => self.job_id.marker_tag(),
        }
    }
}

/// The vmid a backup volume was taken of (`…/vzdump-lxc-<vmid>-…`).
pub fn backup_vmid(volid: &str) -> Option<Vmid> {
    let name = volid.rsplit('/').next()?;
    let rest = name.strip_prefix("vzdump-lxc-")?;
    Vmid::new(rest.split('-').next()?.parse().ok()?).ok()
}

/// A request to migrate a container to another node of the cluster (`….move`), run by the
/// agent of the node it is on; its later jobs go to the new node's.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveJob {
    pub v: V1,
    pub kind: JobMessageKind,
    pub job_id: JobId,
    pub node: NodeName,
    pub submitted_at: Timestamp,
    pub target: ContainerTarget,
    /// The node it goes to.
    pub to: NodeName,
    /// Where its volumes go on the new node (PVE's `target-storage`): one storage for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_storage: Option<String>,
    #[serde(default)]
    pub options: DayTwoOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

day_two_message!(SnapshotJob, Snapshot, "snapshot");
day_two_message!(RollbackJob, Rollback, "rollback");
day_two_message!(BackupJob, Backup, "backup");
day_two_message!(MoveJob, Move, "move");

impl RestoreJob {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, "job kind", &["restore"])
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a day-two job always serializes")
    }
}

/// The fields every job here begins with.
fn header(kind: JobMessageKind, node: NodeName) -> (V1, JobMessageKind, JobId, NodeName, Timestamp) {
    (V1, kind, JobId::new(), node, Timestamp::now())
}

impl SnapshotJob {
    /// A snapshot to take (`name` None: named after the job).
    pub fn take(node: NodeName, target: ContainerTarget, name: Option<String>) -> Self {
        let (v, kind, job_id, node, submitted_at) = header(JobMessageKind::Snapshot, node);
        let name = name.unwrap_or_else(|| default_snapshot_name(job_id));
        let (action, description, options, auth) = (SnapshotAction::Create, None, DayTwoOptions::default(), None);
        Self { v, kind, job_id, node, submitted_at, target, action, name, description, options, auth }
    }

    pub fn delete(node: NodeName, target: ContainerTarget, name: String) -> Self {
        Self { action: SnapshotAction::Delete, ..Self::take(node, target, Some(name)) }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        self.common(&mut p);
        if let Err(e) = snapshot_name(&self.name) {
            p.check("name", false, || e);
        }
        if let Some(d) = &self.description {
            p.bytes("description", d, 1024);
        }
        p.finish()
    }
}

impl RollbackJob {
    pub fn new(node: NodeName, target: ContainerTarget, name: String) -> Self {
        let (v, kind, job_id, node, submitted_at) = header(JobMessageKind::Rollback, node);
        Self {
            v,
            kind,
            job_id,
            node,
            submitted_at,
            target,
            name,
            start: false,
            options: Default::default(),
            auth: None,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        self.common(&mut p);
        if let Err(e) = snapshot_name(&self.name) {
            p.check("name", false, || e);
        }
        p.finish()
    }
}

impl BackupJob {
    pub fn new(node: NodeName, target: ContainerTarget, storage: String) -> Self {
        let (v, kind, job_id, node, submitted_at) = header(JobMessageKind::Backup, node);
        let (mode, protected, keep_last, options, auth) =
            (BackupMode::default(), false, None, Default::default(), None);
        Self { v, kind, job_id, node, submitted_at, target, storage, mode, protected, keep_last, options, auth }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        self.common(&mut p);
        if let Err(e) = crate::validate::config_id(&self.storage) {
            p.check("storage", false, || e);
        }
        if let Some(n) = self.keep_last {
            p.check("keep_last", (1..=1000).contains(&n), || format!("{n} is outside 1..=1000"));
        }
        p.finish()
    }
}

impl RestoreJob {
    pub fn new(node: NodeName, backup: String) -> Self {
        let (v, kind, job_id, node, submitted_at) = header(JobMessageKind::Restore, node);
        Self {
            v,
            kind,
            job_id,
            node,
            submitted_at,
            backup,
            over: None,
            vmid: None,
            hostname: None,
            storage: None,
            start: false,
            options: DayTwoOptions::default(),
            auth: None,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        p.check("kind", self.kind == JobMessageKind::Restore, || "must be `restore`".into());
        p.duration("options.shutdown_timeout", self.options.shutdown_timeout.0, crate::limits::SHUTDOWN);
        p.duration("options.task_timeout", self.options.task_timeout.0, crate::limits::TASK);
        crate::job::check_auth(&mut p, self.auth.as_ref());
        let storage_ok = self.backup.split_once(':').is_some_and(|(s, _)| crate::validate::config_id(s).is_ok());
        p.check("backup", storage_ok && self.backup.contains(":backup/") && self.backed_up_vmid().is_some(), || {
            format!(
                "`{}` is not a container backup's volume id (`<storage>:backup/vzdump-lxc-<vmid>-….tar.zst`)",
                self.backup
            )
        });
        p.bytes("backup", &self.backup, 255);
        if let Some(over) = &self.over {
            p.check("over", self.vmid.is_none() && self.hostname.is_none(), || {
                "a restore over a container keeps its vmid and hostname: `vmid` and `hostname` are for a new one".into()
            });
            p.check("over.vmid", Some(over.vmid) == self.backed_up_vmid(), || {
                format!(
                    "the backup is not of container {} (a restore over a container takes its own backups)",
                    over.vmid
                )
            });
        }
        if let Some(h) = &self.hostname
            && let Err(e) = crate::validate::dns_name(h)
        {
            p.check("hostname", false, || e);
        }
        if let Some(s) = &self.storage
            && let Err(e) = crate::validate::config_id(s)
        {
            p.check("storage", false, || e);
        }
        p.finish()
    }
}

impl MoveJob {
    pub fn new(node: NodeName, target: ContainerTarget, to: NodeName) -> Self {
        let (v, kind, job_id, node, submitted_at) = header(JobMessageKind::Move, node);
        Self {
            v,
            kind,
            job_id,
            node,
            submitted_at,
            target,
            to,
            target_storage: None,
            options: Default::default(),
            auth: None,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        self.common(&mut p);
        p.check("to", self.to != self.node, || format!("container {} is on {} already", self.target.vmid, self.to));
        if let Some(s) = &self.target_storage
            && let Err(e) = crate::validate::config_id(s)
        {
            p.check("target_storage", false, || e);
        }
        p.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> ContainerTarget {
        ContainerTarget { vmid: Vmid::new(101).unwrap(), create_job: None, hostname: None }
    }

    #[test]
    fn a_snapshot_is_named_after_its_job_unless_named() {
        let node = NodeName::new("pve1").unwrap();
        let job = SnapshotJob::take(node.clone(), target(), None);
        assert_eq!(job.name, format!("pf-{}", job.job_id.short()));
        job.validate().unwrap();
        let bad = SnapshotJob::take(node, target(), Some("vzdump".into()));
        assert!(bad.validate().unwrap_err().to_string().contains("name"));
        assert!(snapshot_name("1abc").is_err() && snapshot_name(&"a".repeat(41)).is_err());
    }

    #[test]
    fn a_note_names_its_job() {
        let job = JobId::new();
        let text = format!("{}\nbefore the upgrade", made_by_line(job, "pvefleet-abc"));
        assert!(made_by(&text, job));
        assert!(!made_by(&text, JobId::new()));
        assert!(made_by(&made_by_line(job, ""), job));
    }

    #[test]
    fn a_restore_over_takes_only_the_containers_own_backups() {
        let node = NodeName::new("pve1").unwrap();
        let mut job = RestoreJob::new(node, "local:backup/vzdump-lxc-101-2026_12_04-10_00_00.tar.zst".into());
        assert_eq!(job.backed_up_vmid(), Vmid::new(101).ok());
        job.validate().unwrap();
        job.over = Some(ContainerTarget { vmid: Vmid::new(102).unwrap(), create_job: None, hostname: None });
        assert!(job.validate().unwrap_err().to_string().contains("over.vmid"));
        job.backup = "local:vztmpl/debian.tar.zst".into();
        assert!(job.validate().unwrap_err().to_string().contains("backup"));
    }

    #[test]
    fn a_move_goes_elsewhere() {
        let node = NodeName::new("pve1").unwrap();
        let job = MoveJob::new(node.clone(), target(), node);
        assert!(job.validate().unwrap_err().to_string().contains("to"));
    }
}
