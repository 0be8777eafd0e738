//! What agents keep in KV: node heartbeats (`pvefleet-nodes`) and job checkpoints (`pvefleet-jobs`).

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{ErrorInfo, Step};
use crate::ids::{JobId, NodeName, Vmid};
use crate::message::{DecodeError, Timestamp, V1};

/// Free space of one storage that can hold container root disks.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct StorageCapacity {
    pub storage: String,
    pub total_bytes: u64,
    pub avail_bytes: u64,
}

/// What a node can still take, read from the Proxmox API at each heartbeat.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Capacity {
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    pub cpus: u32,
    /// Fraction of CPU in use, 0.0..=1.0.
    pub cpu_load: f64,
    pub storages: Vec<StorageCapacity>,
}

/// A live agent, as written to `pvefleet-nodes` under its node's key every few seconds.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {
    pub v: V1,
    pub node: NodeName,
    pub agent_version: String,
    pub concurrency: u32,
    pub running_jobs: Vec<JobId>,
    /// None when the Proxmox API could not be read for this beat.
    pub capacity: Option<Capacity>,
    pub started_at: Timestamp,
    pub last_seen: Timestamp,
    /// The agent's public sealing key (base64): what root passwords for this node are sealed
    /// to, once an operator has trusted it (`pvefleet nodes trust`), checked on the node.
    #[serde(default)]
    pub sealing_key: Option<String>,
    /// The agent's signing key (`ed25519:…`): an admin enrolls it (`pvefleet nodes enroll`),
    /// and a beat counts only when signed by its node's enrolled key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_key: Option<String>,
    /// Base64 of the ed25519 signature over [`crate::trust::HEARTBEAT_DOMAIN`] and the beat's
    /// canonical JSON without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The most a heartbeat may claim before its figures count as a lie: a node with more is not
/// a Proxmox node anyone runs (64 TiB of memory, 8192 CPUs, 1 EiB of storage).
const MAX_MEMORY_BYTES: u64 = 64 << 40;
const MAX_CPUS: u32 = 8192;
const MAX_STORAGE_BYTES: u64 = 1 << 60;
const MAX_STORAGES: usize = 256;

impl Capacity {
    /// Why these figures cannot be true, if they cannot: more free than total, more than any
    /// node has. Placement ignores a capacity that is not sane.
    pub fn insanity(&self) -> Option<String> {
        if self.memory_total_bytes > MAX_MEMORY_BYTES {
            return Some(format!("{} bytes of memory is more than any node has", self.memory_total_bytes));
        }
        if self.memory_free_bytes > self.memory_total_bytes {
            return Some("more memory free than in all".into());
        }
        if self.cpus == 0 || self.cpus > MAX_CPUS || !(0.0..=1.0).contains(&self.cpu_load) {
            return Some(format!("{} CPUs at load {} is not a node", self.cpus, self.cpu_load));
        }
        if self.storages.len() > MAX_STORAGES {
            return Some(format!("{} storages", self.storages.len()));
        }
        for s in &self.storages {
            if s.total_bytes > MAX_STORAGE_BYTES || s.avail_bytes > s.total_bytes {
                return Some(format!("storage `{}`: {} of {} bytes free", s.storage, s.avail_bytes, s.total_bytes));
            }
        }
        None
    }
}

impl Heartbeat {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Field { field: "heartbeat".into(), message: e.to_string() })
    }
}

/// A job's progress as far as it has been made durable: what a redelivered job resumes from.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Checkpoint {
    pub v: V1,
    pub job_id: JobId,
    pub node: NodeName,
    /// The last step whose outputs are all recorded here. (A checkpoint written before 0.2
    /// also carries `current` and `vmid_allocated`; they were never needed, and unknown fields
    /// are ignored, so it still resumes.)
    pub done: Option<Step>,
    pub vmid: Option<Vmid>,
    /// The container a clone job copies, once validating has found it (a name is resolved once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_source: Option<Vmid>,
    /// The UPID of the Proxmox task in flight or last run.
    pub upid: Option<String>,
    pub ip: Option<IpAddr>,
    /// The job's own SSH key (OpenSSH private key), made at validation and put into the
    /// container at create, sealed to the agent's own key; kept here only so a redelivered job
    /// can still reach its container, and gone with the checkpoint when the job ends.
    #[serde(default)]
    pub ssh_key: Option<crate::seal::Sealed>,
    /// Host key fingerprints (`SHA256:…`) PVE printed when it created the container.
    #[serde(default)]
    pub announced_host_keys: Vec<String>,
    /// The host key trusted for this job once the first SSH connection was made.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Deploy items already done (`packages`, `file:/etc/x`, `script:name`).
    #[serde(default)]
    pub deployed: Vec<String>,
    /// Set when the job has failed: a redelivery goes on with the rollback, not the steps.
    #[serde(default)]
    pub failure: Option<ErrorInfo>,
    /// When the job sent a request that must never be sent twice (a reboot) and whose UPID
    /// it does not know yet: a redelivery, or a lost answer, looks for that task in the
    /// node's task list begun since, instead of sending it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_at: Option<Timestamp>,
    /// The kind of task (`vzrollback`, `vzdump`, …) `asked_at` is for; none for a reboot
    /// (what a checkpoint written before 0.4 means by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_for: Option<String>,
    /// Whether the container ran when the job found it (a restore over it, a guarded update's
    /// rollback start it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was_running: Option<bool>,
    /// The job has sent a change to the container (written before it is sent: a change whose
    /// answer was lost may have been made): what a guarded update's undo has to undo.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wrote: bool,
    /// The run that may act on the job, until when. Every write of the checkpoint is a
    /// compare-and-set on its revision, so a run that lost its lease cannot write it back.
    #[serde(default)]
    pub lease: Option<Lease>,
}

/// One run's hold on a job: no other run acts on the job before `until`, unless released.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Lease {
    /// `<agent instance>/<run>`: unique per delivery handled.
    pub owner: String,
    pub until: Timestamp,
}

/// A vmid held for a job between its choice and the container's creation, in
/// `pvefleet-vmids`: `/cluster/nextid` hands the same id to everyone who asks at once.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct VmidReservation {
    pub v: V1,
    pub vmid: Vmid,
    pub job_id: JobId,
    pub node: NodeName,
    pub reserved_at: Timestamp,
}

impl VmidReservation {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Field { field: "vmid reservation".into(), message: e.to_string() })
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a reservation always serializes")
    }
}

impl Checkpoint {
    pub fn new(job_id: JobId, node: NodeName) -> Self {
        Self {
            v: V1,
            job_id,
            node,
            done: None,
            vmid: None,
            clone_source: None,
            upid: None,
            ip: None,
            ssh_key: None,
            announced_host_keys: Vec::new(),
            host_key: None,
            deployed: Vec::new(),
            failure: None,
            asked_at: None,
            asked_for: None,
            was_running: None,
            wrote: false,
            lease: None,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Field { field: "checkpoint".into(), message: e.to_string() })
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a checkpoint always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_written_by_the_previous_build_still_reads() {
        // As 0.1 wrote it, with the two fields this build no longer keeps.
        let old = r#"{"v":1,"job_id":"01JDQZ3K6X0000000000000000","node":"pve1","done":"creating",
            "current":"starting","vmid":105,"vmid_allocated":true,"upid":null,"ip":null,
            "announced_host_keys":["SHA256:abc"],"deployed":[]}"#;
        let cp = Checkpoint::decode(old.as_bytes()).expect("an old checkpoint decodes");
        assert_eq!(cp.done, Some(Step::Creating));
        assert_eq!(cp.vmid.map(|v| v.get()), Some(105));
        assert_eq!(cp.announced_host_keys, ["SHA256:abc"]);
        let again = serde_json::to_value(&cp).expect("serializes");
        assert!(again.get("current").is_none() && again.get("vmid_allocated").is_none(), "{again}");
    }
}
