//! NATS names: one constant per stream, consumer prefix and KV bucket, one function per subject.

use crate::ids::{JobId, NodeName};

/// The work queue of jobs.
pub const JOBS_STREAM: &str = "PVEFLEET_JOBS";
/// Subjects the jobs stream holds.
pub const JOBS_SUBJECTS: &str = "pvefleet.jobs.>";
/// What every node's events stream is called, but for the node: `PVEFLEET_EVENTS_<node>`.
pub const EVENTS_STREAM_PREFIX: &str = "PVEFLEET_EVENTS_";
/// The one events stream of every node that earlier versions kept; `pvefleet setup` moves its
/// subjects aside (it stays readable until its events age out) so each node's can be made.
pub const LEGACY_EVENTS_STREAM: &str = "PVEFLEET_EVENTS";
/// Subjects of every node's events.
pub const EVENTS_SUBJECTS: &str = "pvefleet.events.>";
/// Agent heartbeats, keyed by node.
pub const NODES_BUCKET: &str = "pvefleet-nodes";
/// Job checkpoints, keyed by `<node>.<job_id>`.
pub const JOBS_BUCKET: &str = "pvefleet-jobs";
/// Vmids chosen for jobs and not yet created, keyed by vmid.
pub const VMIDS_BUCKET: &str = "pvefleet-vmids";

/// The admin-signed policy and enrolled agents' keys (`trust`).
pub const TRUST_BUCKET: &str = "pvefleet-trust";
/// Each job id an agent took, with the stream message that carried it, kept while a signed
/// request can still be valid: a job id is taken by one message only (replays are refused).
pub const REQUESTS_BUCKET: &str = "pvefleet-requests";
/// KV: every container carrying a pvefleet marker, as its node's agent last saw it, under
/// `<node>.<vmid>` ([`inventory_key`]).
pub const INVENTORY_BUCKET: &str = "pvefleet-inventory";
/// The audit trail: every decision on a request, every admin action.
pub const AUDIT_STREAM: &str = "PVEFLEET_AUDIT";
/// Subjects the audit stream holds.
pub const AUDIT_SUBJECTS: &str = "pvefleet.audit.>";

/// `pvefleet.audit.node.<node>`: where `node`'s agent records its decisions.
pub fn audit_subject(node: &NodeName) -> String {
    format!("pvefleet.audit.node.{node}")
}

/// `pvefleet.audit.web.<action>`: where the web view records its own decisions (logins,
/// refused POSTs, users managed).
pub fn web_audit_subject(action: &str) -> String {
    format!("pvefleet.audit.web.{action}")
}

/// `pvefleet.audit.admin.<action>`: where admin actions are recorded.
pub fn admin_audit_subject(action: &str) -> String {
    format!("pvefleet.audit.admin.{action}")
}

/// `<node>.<job_id>`: a job id's entry in the requests bucket.
pub fn request_key(node: &NodeName, job: &JobId) -> String {
    format!("{node}.{job}")
}

/// The kinds of job an agent takes, as the last token of the job subject.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum JobKind {
    Create,
    Destroy,
    Update,
    Resize,
    Power,
    Snapshot,
    Rollback,
    Backup,
    Restore,
    Move,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Create => "create",
            JobKind::Destroy => "destroy",
            JobKind::Update => "update",
            JobKind::Resize => "resize",
            JobKind::Power => "power",
            JobKind::Snapshot => "snapshot",
            JobKind::Rollback => "rollback",
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
            JobKind::Move => "move",
        }
    }
}

/// `pvefleet.jobs.<node>.<kind>`: where a job for `node` is published.
pub fn job_subject(node: &NodeName, kind: JobKind) -> String {
    format!("pvefleet.jobs.{node}.{}", kind.as_str())
}

/// `pvefleet.jobs.<node>.>`: the filter of a node's consumer.
pub fn node_jobs_filter(node: &NodeName) -> String {
    format!("pvefleet.jobs.{node}.>")
}

/// `agent-<node>`: the durable pull consumer a node's agent takes jobs from.
pub fn agent_consumer(node: &NodeName) -> String {
    format!("agent-{node}")
}

/// `PVEFLEET_EVENTS_<node>`: the stream that keeps one node's events. A stream of its own per
/// node, with its own size bound: whoever holds one agent's password can fill only that
/// node's stream, never evict another node's history.
pub fn events_stream(node: &NodeName) -> String {
    format!("{EVENTS_STREAM_PREFIX}{node}")
}

/// The node whose events stream is `stream`, if it is one.
pub fn events_stream_node(stream: &str) -> Option<NodeName> {
    NodeName::new(stream.strip_prefix(EVENTS_STREAM_PREFIX)?).ok()
}

/// `pvefleet.events.<node>.<job_id>`: where a job's events are published.
pub fn event_subject(node: &NodeName, job: &JobId) -> String {
    format!("pvefleet.events.{node}.{job}")
}

/// `pvefleet.events.*.<job_id>`: what a watcher filters on, whatever node runs the job.
pub fn job_events_filter(job: &JobId) -> String {
    format!("pvefleet.events.*.{job}")
}

/// `pvefleet.events.<node>.>`: every event of one node's jobs.
pub fn node_events_filter(node: &NodeName) -> String {
    format!("pvefleet.events.{node}.>")
}

/// `pvefleet.control.<node>.cancel`: request/reply to cancel a running job.
pub fn cancel_subject(node: &NodeName) -> String {
    format!("pvefleet.control.{node}.cancel")
}

/// `pvefleet.control.<node>.plan`: where a node's agent answers plan requests.
pub fn plan_subject(node: &NodeName) -> String {
    format!("pvefleet.control.{node}.plan")
}

/// `<node>.<job_id>`: a job's checkpoint key in [`JOBS_BUCKET`].
pub fn checkpoint_key(node: &NodeName, job: &JobId) -> String {
    format!("{node}.{job}")
}

/// `<vmid>`: a vmid's reservation key in [`VMIDS_BUCKET`].
pub fn vmid_key(vmid: crate::ids::Vmid) -> String {
    vmid.to_string()
}

/// `<node>.<vmid>`: a container's key in [`INVENTORY_BUCKET`].
pub fn inventory_key(node: &NodeName, vmid: crate::Vmid) -> String {
    format!("{node}.{vmid}")
}

/// `<node>`: a node's heartbeat key in [`NODES_BUCKET`].
pub fn heartbeat_key(node: &NodeName) -> String {
    node.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_contract() {
        let node = NodeName::new("pve1").unwrap();
        let job: JobId = "01JD0000000000000000000000".parse().unwrap();
        assert_eq!(job_subject(&node, JobKind::Create), "pvefleet.jobs.pve1.create");
        assert_eq!(node_jobs_filter(&node), "pvefleet.jobs.pve1.>");
        assert_eq!(agent_consumer(&node), "agent-pve1");
        assert_eq!(event_subject(&node, &job), "pvefleet.events.pve1.01JD0000000000000000000000");
        assert_eq!(job_events_filter(&job), "pvefleet.events.*.01JD0000000000000000000000");
        assert_eq!(cancel_subject(&node), "pvefleet.control.pve1.cancel");
        assert_eq!(checkpoint_key(&node, &job), "pve1.01JD0000000000000000000000");
    }
}
