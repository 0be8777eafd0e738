//! pvefleet's wire: the messages agents and the coordinator exchange, their typed ids, their
//! validation, and the NATS names they travel under. No I/O lives here.
//!
//! # Layout
//! - [`ids`]: `JobId`, `NodeName`, `Vmid`, each checked when made or decoded.
//! - [`lxc`]: the rest of PVE's LXC create API (NICs, mounts, features, boot order).
//! - [`pve_string`]: PVE's `key=value,…` property strings, read and written in one place.
//! - [`source`]: template sources (download, appliance, OCI image) and clones.
//! - [`spec`]: what people write (container, deploy, options); unknown fields are errors.
//! - [`job`], [`event`], [`state`]: the messages on the streams and in the KV buckets.
//! - `layout` (feature `nats`): the streams' and buckets' settings as async-nats configs.
//! - `creds` (feature `nats`): signing in with a `.creds` file, read again at every reconnect.
//! - [`names`]: streams, buckets, consumers and one function per subject.
//! - [`report`]: error chains as people read them, each cause once.
//! - [`redact`]: URLs with their passwords replaced by `***`, for every log and error.
//! - [`seal`]: secrets sealed to one agent's key (its root passwords, its own SSH keys).
//! - [`signing`]: who asked: ed25519 identities, signed requests over RFC 8785 canonical JSON
//!   (the format for any client is in `schemas/SIGNING.md`).
//! - [`trust`]: the admin-signed policy (who may ask for what) and enrolled agents, and the
//!   audit record of every decision.
//! - [`secret`]: a secret in memory (a password): never in a log line, wiped when dropped.
//! - [`message`]: the `"v": 1` version, timestamps, and decoding with precise errors.
//! - [`validate`]: field errors that name the field at fault.
//! - [`limits`]: the largest duration, count and size each field of a job may take.
//! - [`schema`]: the JSON Schemas checked in under `schemas/json-schema/`.

#[cfg(feature = "nats")]
pub mod creds;
pub mod day_two;
pub mod event;
pub mod ids;
pub mod job;
#[cfg(feature = "nats")]
pub mod layout;
pub mod limits;
pub mod lxc;
pub mod message;
pub mod names;
pub mod pve_string;
pub mod redact;
pub mod report;
pub mod schema;
pub mod seal;
pub mod secret;
pub mod signing;
pub mod source;
pub mod spec;
pub mod state;
pub mod trust;
pub mod validate;

pub use day_two::{
    BackupJob, BackupMode, ConfigChange, ContainerTarget, DayTwoJob, DayTwoOptions, Guard, InventoryEntry, MoveJob,
    OnFailure, PowerAction, PowerJob, ResizeJob, RestartPolicy, RestoreJob, RollbackJob, SnapshotAction, SnapshotJob,
    UpdateJob,
};
pub use event::{
    CancelReply, CancelRequest, ChangePlanRequest, ControlKind, ErrorInfo, ErrorKind, Event, EventType, JobResult,
    ListReply, ListRequest, ListWhat, Listed, LogStream, PlanCheck, PlanReply, PlanRequest, PlannedCall, Step,
};
pub use ids::{JobId, NodeName, Vmid};
pub use job::{DestroyJob, DestroyOptions, DestroyTarget, Job, JobMessageKind};
pub use message::{DecodeError, Timestamp, V1, VERSION};
pub use redact::{redact_url, redact_urls};
pub use secret::Secret;
pub use spec::{
    ContainerSpec, DeploySpec, FileDigest, FileMode, FileSpec, HumanDuration, IpConfig, JobOptions, RollbackPolicy,
    ScriptSpec, Timeouts,
};
pub use state::{Capacity, Checkpoint, Heartbeat, Lease, StorageCapacity, VmidReservation};
pub use validate::{FieldError, ValidationErrors};

/// Every container pvefleet creates carries the tag `pvefleet-<short job id>`; it is how an
/// agent tells its own container from a stranger's.
pub const MARKER_TAG_PREFIX: &str = "pvefleet-";
