//! The create job: what the coordinator publishes on `pvefleet.jobs.<node>.create`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, NodeName};
use crate::message::{DecodeError, Timestamp, V1, decode};
use crate::spec::{ContainerSpec, DeploySpec, JobOptions};
use crate::validate::{Problems, ValidationErrors};

/// The kinds of job message this build reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobMessageKind {
    Create,
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
        }
    }

    /// Reads a job message, with a clear error for another version or kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, "job kind", &["create"])
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job always serializes")
    }

    /// Every field at fault, under its path in the message (`container.memory`).
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        p.nest("container", self.container.validate());
        p.nest("deploy", self.deploy.validate());
        p.nest("options", self.options.validate());
        p.finish()
    }
}
