//! The jobs: what the coordinator publishes on `pvefleet.jobs.<node>.create` and
//! `pvefleet.jobs.<node>.destroy` (the day-two kinds are in [`crate::day_two`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, NodeName, Vmid};
use crate::message::{DecodeError, Timestamp, V1, decode};
use crate::spec::{ContainerSpec, DeploySpec, JobOptions};
use crate::validate::{Problems, ValidationErrors};

/// The kinds of job message this build reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobMessageKind {
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

impl JobMessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobMessageKind::Create => "create",
            JobMessageKind::Destroy => "destroy",
            JobMessageKind::Update => "update",
            JobMessageKind::Resize => "resize",
            JobMessageKind::Power => "power",
            JobMessageKind::Snapshot => "snapshot",
            JobMessageKind::Rollback => "rollback",
            JobMessageKind::Backup => "backup",
            JobMessageKind::Restore => "restore",
            JobMessageKind::Move => "move",
        }
    }
}

/// A request to create one container and deploy into it.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub v: V1,
    pub kind: JobMessageKind,
    pub job_id: JobId,
    pub node: NodeName,
    pub submitted_at: Timestamp,
    pub container: ContainerSpec,
    #[serde(default)]
    pub deploy: DeploySpec,
    /// The template the spec came from, if any.
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub options: JobOptions,
    /// Who asked, until when, and the signature over the rest (`signing`, schemas/SIGNING.md);
    /// absent on an unsigned request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

impl Job {
    pub fn create(node: NodeName, container: ContainerSpec, deploy: DeploySpec) -> Self {
        Self {
            v: V1,
            kind: JobMessageKind::Create,
            job_id: JobId::new(),
            node,
            submitted_at: Timestamp::now(),
            container,
            deploy,
            template: None,
            options: JobOptions::default(),
            auth: None,
        }
    }

    /// Reads a job message, with a clear error for another version or kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, "job kind", &["create"])
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job always serializes")
    }

    /// The job as the store keeps it and pages show it: without the root password and without
    /// any secret file's bytes (which keep their path, size and SHA-256).
    pub fn public(&self) -> Self {
        let mut public = self.clone();
        public.container.root_password = None;
        for file in &mut public.deploy.files {
            if file.secret {
                file.sealed = None;
                file.content = None;
            }
        }
        public
    }

    /// Every field at fault, under its path in the message (`container.memory`).
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        p.nest("container", self.container.validate());
        p.nest("deploy", self.deploy.validate());
        p.nest("options", self.options.validate());
        check_auth(&mut p, self.auth.as_ref());
        p.finish()
    }
}

/// Which container a destroy job removes: the one a create job made (found by that job's
/// marker tag), or a vmid (whose container must carry some pvefleet marker). Given both, the
/// container found by the marker must have that vmid.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DestroyTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_job: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<Vmid>,
}

/// How a destroy job stops a running container.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DestroyOptions {
    /// How long a clean shutdown may take before the container is stopped hard.
    #[serde(default = "DestroyOptions::default_shutdown")]
    pub shutdown_timeout: crate::spec::HumanDuration,
    /// How long each Proxmox task (shutdown, stop, destroy) may take.
    #[serde(default = "DestroyOptions::default_task")]
    pub task_timeout: crate::spec::HumanDuration,
}

impl DestroyOptions {
    fn default_shutdown() -> crate::spec::HumanDuration {
        crate::spec::HumanDuration(std::time::Duration::from_secs(60))
    }
    fn default_task() -> crate::spec::HumanDuration {
        crate::spec::HumanDuration(std::time::Duration::from_secs(300))
    }
}

impl Default for DestroyOptions {
    fn default() -> Self {
        Self { shutdown_timeout: Self::default_shutdown(), task_timeout: Self::default_task() }
    }
}

/// A request to remove one container pvefleet made (`pvefleet.jobs.<node>.destroy`).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DestroyJob {
    pub v: V1,
    pub kind: JobMessageKind,
    pub job_id: JobId,
    pub node: NodeName,
    pub submitted_at: Timestamp,
    pub target: DestroyTarget,
    #[serde(default)]
    pub options: DestroyOptions,
    /// Who asked, until when, and the signature over the rest (`signing`, schemas/SIGNING.md);
    /// absent on an unsigned request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::signing::RequestAuth>,
}

impl DestroyJob {
    pub fn new(node: NodeName, target: DestroyTarget) -> Self {
        Self {
            v: V1,
            kind: JobMessageKind::Destroy,
            job_id: JobId::new(),
            node,
            submitted_at: Timestamp::now(),
            target,
            options: DestroyOptions::default(),
            auth: None,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, "job kind", &["destroy"])
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a destroy job always serializes")
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        p.check("target", self.target.create_job.is_some() || self.target.vmid.is_some(), || {
            "names no container: give `create_job` or `vmid`".into()
        });
        p.duration("options.shutdown_timeout", self.options.shutdown_timeout.0, crate::limits::SHUTDOWN);
        p.duration("options.task_timeout", self.options.task_timeout.0, crate::limits::TASK);
        check_auth(&mut p, self.auth.as_ref());
        p.finish()
    }
}

/// A request's `auth`, bounded: a key id and a signature are short, whoever sent them.
pub(crate) fn check_auth(p: &mut Problems, auth: Option<&crate::signing::RequestAuth>) {
    if let Some(auth) = auth {
        p.check("auth.signer", auth.signer.starts_with("SHA256:") && auth.signer.len() <= 64, || {
            "is not a key id like `SHA256:…` (at most 64 characters)".into()
        });
        p.check("auth.signature", auth.signature.len() <= 100, || "is longer than an ed25519 signature".into());
        if let Some(user) = &auth.user {
            p.check("auth.user", crate::signing::is_user_name(user), || {
                "is not a user name: 1 to 32 of a-z, 0-9, `.`, `_`, `-`, beginning with a letter".into()
            });
        }
    }
}
