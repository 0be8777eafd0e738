//! A day-two job as the coordinator makes it: what a verb asks of each container ([`Ask`]), the
//! job it makes of that ([`make`]), and its recording and publishing ([`submit`]), shared by the
//! verbs, their rollouts and `retry`. The job itself is the wire's [`DayTwoJob`].

use pvefleet_schemas::signing::Identity;
use pvefleet_schemas::{
    ConfigChange, ContainerTarget, DayTwoJob, DayTwoOptions, NodeName, PowerAction, PowerJob, ResizeJob, RestartPolicy,
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

/// The job `ask` makes for the container `target` on `node`.
pub fn make(ask: &Ask, node: NodeName, target: ContainerTarget, options: DayTwoOptions) -> DayTwoJob {
    match ask {
        Ask::Update { change, restart } => {
            let mut job = UpdateJob::new(node, target, (**change).clone());
            job.restart = *restart;
            job.options = options;
            DayTwoJob::Update(Box::new(job))
        }
        Ask::Resize { disk, size_bytes } => {
            let mut job = ResizeJob::new(node, target, disk, *size_bytes);
            job.options = options;
            DayTwoJob::Resize(job)
        }
        Ask::Power { action, force } => {
            let mut job = PowerJob::new(node, target, *action);
            job.force = *force;
            job.options = options;
            DayTwoJob::Power(job)
        }
    }
}

/// Reads a stored day-two job of `kind` back.
pub fn decode(kind: JobKind, spec: &str) -> anyhow::Result<DayTwoJob> {
    let bytes = spec.as_bytes();
    Ok(match kind {
        JobKind::Update => DayTwoJob::Update(Box::new(UpdateJob::decode(bytes)?)),
        JobKind::Resize => DayTwoJob::Resize(ResizeJob::decode(bytes)?),
        JobKind::Power => DayTwoJob::Power(PowerJob::decode(bytes)?),
        other => anyhow::bail!("a {other} job is not a day-two job"),
    })
}

/// The job as it goes on the wire, signed, to `pvefleet.jobs.<node>.<kind>`.
pub fn outgoing(job: &DayTwoJob, signer: &Identity) -> Result<Outgoing, Failure> {
    Outgoing::day_two(job.job_id(), job.node(), job.subject_kind(), job, signer)
}

/// Records and publishes one day-two job (or finds the one its request made before); its id
/// and JSON.
pub async fn submit(
    store: &Store,
    nats: &Nats<'_>,
    signer: &Identity,
    job: &DayTwoJob,
    request_id: Option<&str>,
) -> Result<(String, String), Failure> {
    let json = String::from_utf8(job.encode()).expect("JSON is UTF-8");
    if let Err(existing) = store.insert_day_two_job(job, request_id).await? {
        return Ok((existing.job_id, existing.spec));
    }
    publishing::publish_recorded(store, nats.js().await?, &outgoing(job, signer)?, request_id).await?;
    Ok((job.job_id().to_string(), json))
}
