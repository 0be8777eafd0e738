//! Job events: what an agent publishes on `pvefleet.events.<node>.<job_id>` as a job runs.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, NodeName, Vmid};
use crate::message::{DecodeError, Timestamp, V1, decode};

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// An agent took the job.
    Accepted,
    /// A step began (or moved on); `percent` says how far the job is.
    Step,
    /// A line of output: a Proxmox task log, or a script's stdout/stderr.
    Log,
    /// Something went less well than asked but the job goes on.
    Warning,
    /// Terminal: the job succeeded.
    Complete,
    /// Terminal: the job failed (and was rolled back unless the policy says keep).
    Error,
}

impl EventType {
    pub fn is_terminal(self) -> bool {
        matches!(self, EventType::Complete | EventType::Error)
    }
}

/// The steps of a job, in order; `RollingBack` only after a failure. A create job runs
/// `Validating` to `Finalizing` (`Fetching` only for a template that is fetched first,
/// `Cloning` instead of `Creating` for a clone); a destroy job `Finding`, `Stopping`, `Deleting`;
/// the day-two kinds `Finding` then theirs: an update `Configuring`, `Restarting`, `Verifying`,
/// a resize `Resizing`, a power job `Powering`; a guarded update `Snapshotting` first and
/// `CleaningUp` last; a snapshot job `Snapshotting` or `Deleting`, a rollback `RollingBack`, a
/// backup `BackingUp`, a restore (`Stopping`) `Restoring`, a move `Moving`. (Each table's steps
/// are in this order.)
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Validating,
    Fetching,
    Cloning,
    Creating,
    Starting,
    Connecting,
    Deploying,
    Finalizing,
    Finding,
    Snapshotting,
    Stopping,
    Deleting,
    RollingBack,
    Configuring,
    Resizing,
    Restarting,
    Powering,
    Verifying,
    BackingUp,
    Restoring,
    Moving,
    CleaningUp,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Validating => "validating",
            Step::Fetching => "fetching",
            Step::Cloning => "cloning",
            Step::Creating => "creating",
            Step::Starting => "starting",
            Step::Connecting => "connecting",
            Step::Deploying => "deploying",
            Step::Finalizing => "finalizing",
            Step::Finding => "finding",
            Step::Stopping => "stopping",
            Step::Deleting => "deleting",
            Step::RollingBack => "rolling_back",
            Step::Configuring => "configuring",
            Step::Resizing => "resizing",
            Step::Restarting => "restarting",
            Step::Powering => "powering",
            Step::Verifying => "verifying",
            Step::Snapshotting => "snapshotting",
            Step::BackingUp => "backing_up",
            Step::Restoring => "restoring",
            Step::Moving => "moving",
            Step::CleaningUp => "cleaning_up",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a `log` line came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// A Proxmox task's log.
    Task,
}

/// What kind of failure ended a job; callers match on it, people read `message`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The message could not be read (not JSON, unknown version or kind, bad field).
    InvalidMessage,
    /// The spec is invalid or does not fit the node (storage, template, bridge).
    Validation,
    /// The job was sent to another node's agent.
    WrongNode,
    /// The vmid belongs to a container pvefleet did not create (or, for a destroy, one that
    /// is protected).
    Conflict,
    /// The Proxmox API refused or failed a request.
    Proxmox,
    /// A Proxmox task ended in error.
    Task,
    /// A step ran past its deadline.
    Timeout,
    /// SSH into the container failed.
    Ssh,
    /// A deploy item (package, file, script) failed.
    Deploy,
    /// An operator cancelled the job.
    Cancelled,
    /// A failure inside the agent.
    Internal,
    /// The request is not signed, not signed by a signer the policy knows, expired, replayed,
    /// or asks for more than its signer may; the message names the rule.
    Unauthorized,
    /// The container is no longer on the job's node (HA or an operator moved it); the message
    /// names the node it is on now.
    Moved,
}

/// The failure in a failed job's result.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorInfo {
    pub kind: ErrorKind,
    pub step: Step,
    pub message: String,
}

/// A job's outcome, carried by its terminal event.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct JobResult {
    pub success: bool,
    pub job_id: JobId,
    pub node: NodeName,
    pub vmid: Option<Vmid>,
    pub ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    pub rolled_back: bool,
    /// SHA-256 fingerprint of the container's SSH host key trusted for the deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// The node a move job left the container on (the job's own is `node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<NodeName>,
}

/// The most an event may weigh on the wire, well under nats-server's default `max_payload`
/// (1 MiB), so an event is never refused for its size.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// What marks a text cut to fit [`MAX_EVENT_BYTES`].
pub const CUT_MARK: &str = " …[cut to fit the event]";

/// The most of a failure's message kept (in the checkpoint and the error event): enough for
/// any error and the tail of a script's output, small enough that escaping cannot make a
/// checkpoint or an event too big for NATS.
pub const MAX_ERROR_TEXT: usize = 32 * 1024;

/// `text` cut to at most `max` bytes (on a character boundary), marked when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut at = max.saturating_sub(CUT_MARK.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}{CUT_MARK}", &text[..at])
}

/// One event of a job. `seq` runs 1, 2, 3… per job without gaps, across redeliveries.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    pub v: V1,
    pub job_id: JobId,
    pub node: NodeName,
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// How far the job is, 0..=100; never goes down within a job.
    pub percent: u8,
    pub message: String,
    pub timestamp: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<LogStream>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    /// On `accepted`: the job message's sequence in the jobs stream, where a recorder that did
    /// not see the job queued (another client published it) reads the job itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_seq: Option<u64>,
}

impl Event {
    /// Reads an event message, with a clear error for another version or type.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, "event type", &["accepted", "step", "log", "warning", "complete", "error"])
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serializes")
    }

    /// The event encoded in at most `max` bytes: when it is bigger, its longest texts (the
    /// message, the error's message) are cut, marked, until it fits. Sizes are measured after
    /// encoding, since JSON escaping can make a line six times longer than it was.
    pub fn encode_within(&self, max: usize) -> Vec<u8> {
        let mut bytes = self.encode();
        let mut event = self.clone();
        while bytes.len() > max {
            let over = bytes.len() - max;
            let longest = [
                Some(event.message.len()),
                event.result.as_ref().and_then(|r| r.error.as_ref()).map(|e| e.message.len()),
            ];
            let cut_error = longest[1].is_some_and(|e| e > longest[0].unwrap_or(0));
            let text = if cut_error {
                &mut event.result.as_mut().and_then(|r| r.error.as_mut()).expect("checked").message
            } else {
                &mut event.message
            };
            if text.len() <= CUT_MARK.len() {
                // Nothing left to cut (a pathological node name or result); the bus refuses it.
                break;
            }
            // A raw byte cut is at least one encoded byte gone, so one cut per text suffices.
            let keep = text.len().saturating_sub(over + CUT_MARK.len());
            let mut at = keep;
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
            text.push_str(CUT_MARK);
            bytes = event.encode();
        }
        bytes
    }

    pub fn is_terminal(&self) -> bool {
        self.kind.is_terminal()
    }
}

/// What a control request asks; the last token of its subject says the same.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ControlKind {
    Cancel,
    Plan,
    /// A plan of a day-two job ([`ChangePlanRequest`]), on the plan subject.
    PlanChange,
    /// A container's snapshots or backups ([`ListRequest`]), on the plan subject.
    List,
}

/// A request on `pvefleet.control.<node>.cancel`. Unknown fields are refused, so no other
/// message (an event, a heartbeat) can pass for one.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub v: V1,
    pub kind: ControlKind,
    /// The node whose agent is asked (signed with the rest, so a cancel cannot be replayed
    /// to another node).
    pub node: NodeName,
    pub job_id: JobId,
    /// Who asked (`signing`, schemas/SIGNING.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

impl CancelRequest {
    pub fn new(node: NodeName, job_id: JobId) -> Self {
        Self { v: V1, kind: ControlKind::Cancel, node, job_id, auth: None }
    }

    /// Reads a cancel request, with a clear error for anything else.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, "control kind", &["cancel"])
    }
}

/// A request on `pvefleet.control.<node>.plan`: check this job against the node's Proxmox
/// API without changing anything. The job is as `submit` would publish it, without its root
/// password (a plan opens nothing).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    pub v: V1,
    pub kind: ControlKind,
    pub job: crate::Job,
    /// Who asked, over the whole request, the job in it included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

impl PlanRequest {
    pub fn new(mut job: crate::Job) -> Self {
        job.container.root_password = None;
        job.auth = None;
        Self { v: V1, kind: ControlKind::Plan, job, auth: None }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, "control kind", &["plan"])
    }
}

/// A request on `pvefleet.control.<node>.plan` for what a day-two job would find and send,
/// changing nothing; answered with a [`PlanReply`].
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlanRequest {
    pub v: V1,
    pub kind: ControlKind,
    pub job: crate::day_two::DayTwoJob,
    /// The job is published next if the plan passes (a move's plan by the node it goes to,
    /// which then watches for the container's arrival); not for `--plan`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub before_submit: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

impl ChangePlanRequest {
    pub fn new(job: crate::day_two::DayTwoJob) -> Self {
        Self { v: V1, kind: ControlKind::PlanChange, job: job.unsigned(), before_submit: false, auth: None }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, "control kind", &["plan_change"])
    }
}

/// What a [`ListRequest`] lists.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListWhat {
    Snapshots,
    Backups,
}

/// A request on `pvefleet.control.<node>.plan` for a container's snapshots or backups (read
/// only, under the `plan` right); answered with a [`ListReply`].
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    pub v: V1,
    pub kind: ControlKind,
    pub what: ListWhat,
    pub node: NodeName,
    pub vmid: crate::Vmid,
    /// Backups on this storage only (every backup storage of the node otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

impl ListRequest {
    pub fn new(what: ListWhat, node: NodeName, vmid: crate::Vmid) -> Self {
        Self { v: V1, kind: ControlKind::List, what, node, vmid, storage: None, auth: None }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, "control kind", &["list"])
    }

    pub fn validate(&self) -> Result<(), crate::ValidationErrors> {
        let mut p = crate::validate::Problems::default();
        if let Some(s) = &self.storage
            && let Err(e) = crate::validate::config_id(s)
        {
            p.check("storage", false, || e);
        }
        p.finish()
    }
}

/// A snapshot or backup as a [`ListReply`] shows it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Listed {
    /// The snapshot's name, or the backup's volume id.
    pub name: String,
    /// When it was taken (seconds since the epoch).
    pub time: i64,
    /// Its description or notes.
    pub description: String,
    /// The pvefleet job that made it, as its description or notes say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected: bool,
    /// A snapshot still being made or deleted (`prepare`, `delete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// The agent's answer to a [`ListRequest`]: the items, oldest first, or why none.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ListReply {
    pub v: V1,
    pub node: NodeName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub items: Vec<Listed>,
}

/// One check of a plan: what was looked at, whether the job would pass it, and what was found.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlanCheck {
    /// `spec`, `files`, `rights`, `storage`, `template`, `network`, `vmid`, `memory`, `permissions`.
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

/// The agent's answer to a [`PlanRequest`].
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlanReply {
    pub v: V1,
    pub node: NodeName,
    /// Whether every check passed.
    pub ok: bool,
    pub checks: Vec<PlanCheck>,
    /// The vmid the job would take (the given one, or the next free one now).
    pub vmid: Option<crate::Vmid>,
    /// The PVE calls the job would make, each as `METHOD path` and its parameters exactly as
    /// they would be sent (a password shown as `********`).
    pub calls: Vec<PlannedCall>,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlannedCall {
    pub call: String,
    pub parameters: Vec<(String, String)>,
}

/// The agent's answer to a [`CancelRequest`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CancelReply {
    /// Whether the job was running here and is now being cancelled.
    pub ok: bool,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_event(message: String) -> Event {
        let node = NodeName::new("pve1").unwrap();
        let job_id = JobId::new();
        Event {
            v: V1,
            job_id,
            node: node.clone(),
            seq: 9,
            kind: EventType::Error,
            step: Some(Step::Deploying),
            percent: 80,
            message: message.clone(),
            timestamp: Timestamp::now(),
            stream: None,
            result: Some(JobResult {
                success: false,
                job_id,
                node,
                vmid: None,
                ip: None,
                error: Some(ErrorInfo { kind: ErrorKind::Deploy, step: Step::Deploying, message }),
                rolled_back: false,
                host_key: None,
                moved_to: None,
            }),
            job_seq: None,
        }
    }

    #[test]
    fn only_a_cancel_request_passes_for_one() {
        let job = JobId::new();
        let good = serde_json::to_vec(&CancelRequest::new(NodeName::new("pve1").unwrap(), job)).unwrap();
        assert_eq!(CancelRequest::decode(&good).unwrap().job_id, job);
        // What a push consumer would deliver to the cancel subject: events.
        let event = error_event("boom".into()).encode();
        assert!(CancelRequest::decode(&event).unwrap_err().to_string().contains("unknown control kind `error`"));
        let bare = format!(r#"{{"job_id":"{job}"}}"#);
        assert!(CancelRequest::decode(bare.as_bytes()).unwrap_err().to_string().contains("no `v` field"));
        let extra = format!(r#"{{"v":1,"kind":"cancel","node":"pve1","job_id":"{job}","seq":1}}"#);
        assert!(CancelRequest::decode(extra.as_bytes()).unwrap_err().to_string().contains("unknown field `seq`"));
    }

    #[test]
    fn a_huge_event_is_cut_to_fit_after_escaping() {
        // Twenty 16 KiB lines of control characters: each byte becomes six when escaped.
        let line = "\u{1}".repeat(16 * 1024);
        let event = error_event(vec![line; 20].join("\n"));
        assert!(event.encode().len() > 3 * 1024 * 1024);
        let bytes = event.encode_within(MAX_EVENT_BYTES);
        assert!(bytes.len() <= MAX_EVENT_BYTES, "{} bytes", bytes.len());
        let cut = Event::decode(&bytes).unwrap();
        assert!(cut.message.ends_with(CUT_MARK));
        assert!(cut.result.unwrap().error.unwrap().message.ends_with(CUT_MARK));
        assert_eq!((cut.seq, cut.kind), (9, EventType::Error));
    }

    #[test]
    fn a_small_event_is_left_whole_and_multibyte_text_is_cut_on_a_boundary() {
        let event = error_event("short".into());
        assert_eq!(event.encode_within(MAX_EVENT_BYTES), event.encode());
        let mut event = error_event("short".into());
        event.message = "é".repeat(100_000);
        let bytes = event.encode_within(64 * 1024);
        assert!(bytes.len() <= 64 * 1024);
        let cut = Event::decode(&bytes).unwrap();
        assert!(cut.message.ends_with(CUT_MARK) && cut.message.starts_with("éé"), "{}", cut.message.len());
        assert_eq!(cut.result.unwrap().error.unwrap().message, "short");
    }
}
