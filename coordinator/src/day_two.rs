//! A day-two job as the coordinator makes it: what a verb asks of each container ([`Ask`]),
//! the message of each kind ([`Message`]), and its recording and publishing ([`submit`]),
//! shared by the verbs, their rollouts and `retry`.

use pvefleet_schemas::signing::Identity;
use pvefleet_schemas::{
    ConfigChange, ContainerTarget, DayTwoOptions, JobId, NodeName, PowerAction, PowerJob, ResizeJob, RestartPolicy,
    UpdateJob,
};

use crate::Failure;
use crate::bus::Nats;
use crate::publishing::{self, Outgoing};
use crate::store::{JobKind, Store};

/// What a day-two verb asks of each container it names.
#[derive(Debug, Clone)]
pub enum Ask {
    Update { change: Box<ConfigChange>, restart: RestartPolicy },
    Resize { disk: String, size_bytes: u64 },
    Power { action: PowerAction, force: bool },
}

/// A day-two job message of any kind.
#[derive(Debug, Clone)]
pub enum Message {
    Update(Box<UpdateJob>),
    Resize(ResizeJob),
    Power(PowerJob),
}

impl Message {
    pub fn new(ask: &Ask, node: NodeName, target: ContainerTarget, options: DayTwoOptions) -> Self {
        match ask {
            Ask::Update { change, restart } => {
                let mut job = UpdateJob::new(node, target, (**change).clone());
                job.restart = *restart;
                job.options = options;
                Message::Update(Box::new(job))
            }
            Ask::Resize { disk, size_bytes } => {
                let mut job = ResizeJob::new(node, target, disk, *size_bytes);
                job.options = options;
                Message::Resize(job)
            }
            Ask::Power { action, force } => {
                let mut job = PowerJob::new(node, target, *action);
                job.force = *force;
                job.options = options;
                Message::Power(job)
            }
        }
    }

    /// Reads a stored day-two job of `kind` back.
    pub fn decode(kind: JobKind, spec: &str) -> anyhow::Result<Self> {
        let bytes = spec.as_bytes();
        Ok(match kind {
            JobKind::Update => Message::Update(Box::new(UpdateJob::decode(bytes)?)),
            JobKind::Resize => Message::Resize(ResizeJob::decode(bytes)?),
            JobKind::Power => Message::Power(PowerJob::decode(bytes)?),
            other => anyhow::bail!("a {other} job is not a day-two job"),
        })
    }

    /// The same request as a new job (a new id and time, unsigned) for `node`.
    pub fn renewed(&self, node: NodeName) -> Self {
        let mut out = self.clone();
        let (id, at, to, auth) = match &mut out {
            Message::Update(j) => (&mut j.job_id, &mut j.submitted_at, &mut j.node, &mut j.auth),
            Message::Resize(j) => (&mut j.job_id, &mut j.submitted_at, &mut j.node, &mut j.auth),
            Message::Power(j) => (&mut j.job_id, &mut j.submitted_at, &mut j.node, &mut j.auth),
        };
        *id = JobId::new();
        *at = pvefleet_schemas::Timestamp::now();
        *to = node;
        *auth = None;
        out
    }

    /// The message as a plan request carries it.
    pub fn wire(&self) -> pvefleet_schemas::DayTwoJob {
        match self {
            Message::Update(j) => pvefleet_schemas::DayTwoJob::Update(j.clone()),
            Message::Resize(j) => pvefleet_schemas::DayTwoJob::Resize(j.clone()),
            Message::Power(j) => pvefleet_schemas::DayTwoJob::Power(j.clone()),
        }
    }

    pub fn job_id(&self) -> JobId {
        match self {
            Message::Update(j) => j.job_id,
            Message::Resize(j) => j.job_id,
            Message::Power(j) => j.job_id,
        }
    }

    pub fn node(&self) -> &NodeName {
        match self {
            Message::Update(j) => &j.node,
            Message::Resize(j) => &j.node,
            Message::Power(j) => &j.node,
        }
    }

    pub fn target(&self) -> &ContainerTarget {
        match self {
            Message::Update(j) => &j.target,
            Message::Resize(j) => &j.target,
            Message::Power(j) => &j.target,
        }
    }

    pub fn kind(&self) -> JobKind {
        match self {
            Message::Update(_) => JobKind::Update,
            Message::Resize(_) => JobKind::Resize,
            Message::Power(_) => JobKind::Power,
        }
    }

    fn wire_kind(&self) -> pvefleet_schemas::names::JobKind {
        use pvefleet_schemas::names::JobKind as Wire;
        match self {
            Message::Update(_) => Wire::Update,
            Message::Resize(_) => Wire::Resize,
            Message::Power(_) => Wire::Power,
        }
    }

    pub fn json(&self) -> String {
        match self {
            Message::Update(j) => serde_json::to_string(j),
            Message::Resize(j) => serde_json::to_string(j),
            Message::Power(j) => serde_json::to_string(j),
        }
        .expect("a job serializes")
    }

    pub fn validate(&self) -> Result<(), pvefleet_schemas::ValidationErrors> {
        match self {
            Message::Update(j) => j.validate(),
            Message::Resize(j) => j.validate(),
            Message::Power(j) => j.validate(),
        }
    }

    pub fn outgoing(&self, signer: &Identity) -> Result<Outgoing, Failure> {
        let kind = self.wire_kind();
        match self {
            Message::Update(j) => Outgoing::day_two(j.job_id, &j.node, kind, j, signer),
            Message::Resize(j) => Outgoing::day_two(j.job_id, &j.node, kind, j, signer),
            Message::Power(j) => Outgoing::day_two(j.job_id, &j.node, kind, j, signer),
        }
    }
}

/// Records and publishes one day-two job (or finds the one its request made before); its id
/// and JSON.
pub async fn submit(
    store: &Store,
    nats: &Nats<'_>,
    signer: &Identity,
    message: &Message,
    request_id: Option<&str>,
) -> Result<(String, String), Failure> {
    let json = message.json();
    let recorded = store.insert_day_two_job(&message.wire(), request_id).await?;
    if let Err(existing) = recorded {
        return Ok((existing.job_id, existing.spec));
    }
    publishing::publish_recorded(store, nats.js().await?, &message.outgoing(signer)?, request_id).await?;
    Ok((message.job_id().to_string(), json))
}
