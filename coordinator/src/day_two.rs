//! A day-two job as the coordinator makes it: what a verb asks of each container ([`Ask`]), the
//! job it makes of that ([`make`]), and its recording and publishing ([`submit`]), shared by the
//! verbs, their rollouts and `retry`. The job itself is the wire's [`DayTwoJob`].

use pvefleet_schemas::signing::Identity;
use pvefleet_schemas::{
    BackupJob, BackupMode, ConfigChange, ContainerTarget, DayTwoJob, DayTwoOptions, Guard, MoveJob, NodeName,
    PowerAction, PowerJob, ResizeJob, RestartPolicy, RollbackJob, SnapshotJob, UpdateJob,
};

use crate::Failure;
use crate::bus::Nats;
use crate::publishing::{self, Outgoing};
use crate::store::{JobKind, Store};

/// What a day-two verb asks of each container it names.
#[derive(Debug, Clone)]
pub enum Ask {
    Update {
        change: Box<ConfigChange>,
        restart: RestartPolicy,
        guard: Option<Guard>,
    },
    Resize {
        disk: String,
        size_bytes: u64,
    },
    Power {
        action: PowerAction,
        force: bool,
    },
    /// A snapshot to take (named after the job when `name` is none).
    Snapshot {
        name: Option<String>,
        description: Option<String>,
    },
    DeleteSnapshot {
        name: String,
    },
    Rollback {
        name: String,
        start: bool,
    },
    Backup {
        storage: String,
        mode: BackupMode,
        protected: bool,
        keep_last: Option<u32>,
    },
    Move {
        to: NodeName,
        target_storage: Option<String>,
    },
}

/// The job `ask` makes for the container `target` on `node`.
pub fn make(ask: &Ask, node: NodeName, target: ContainerTarget, options: DayTwoOptions) -> DayTwoJob {
    match ask {
        Ask::Update { change, restart, guard } => {
            let mut job = UpdateJob::new(node, target, (**change).clone());
            job.restart = *restart;
            job.guard = *guard;
            job.options = options;
            DayTwoJob::Update(Box::new(job))
        }
        Ask::Snapshot { name, description } => {
            let mut job = SnapshotJob::take(node, target, name.clone());
            job.description = description.clone();
            job.options = options;
            DayTwoJob::Snapshot(job)
        }
        Ask::DeleteSnapshot { name } => {
            let mut job = SnapshotJob::delete(node, target, name.clone());
            job.options = options;
            DayTwoJob::Snapshot(job)
        }
        Ask::Rollback { name, start } => {
            let mut job = RollbackJob::new(node, target, name.clone());
            job.start = *start;
            job.options = options;
            DayTwoJob::Rollback(job)
        }
        Ask::Backup { storage, mode, protected, keep_last } => {
            let mut job = BackupJob::new(node, target, storage.clone());
            (job.mode, job.protected, job.keep_last, job.options) = (*mode, *protected, *keep_last, options);
            DayTwoJob::Backup(job)
        }
        Ask::Move { to, target_storage } => {
            let mut job = MoveJob::new(node, target, to.clone());
            job.target_storage = target_storage.clone();
            job.options = options;
            DayTwoJob::Move(job)
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
    anyhow::ensure!(kind.is_day_two(), "a {kind} job is not a day-two job");
    let job: DayTwoJob = serde_json::from_str(spec)?;
    anyhow::ensure!(JobKind::from(job.kind()) == kind, "the stored job is a {}, not a {kind}", job.kind().as_str());
    Ok(job)
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
    if let DayTwoJob::Move(m) = job {
        // The node it goes to says first whether it has room (memory, storage, bridges).
        let reply = crate::plans::ask(
            nats.client().await?,
            signer,
            &m.to,
            &pvefleet_schemas::ChangePlanRequest {
                before_submit: true,
                ..pvefleet_schemas::ChangePlanRequest::new(job.clone())
            },
        )
        .await?;
        if !reply.ok {
            let failed: Vec<String> =
                reply.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.check, c.detail)).collect();
            return Err(Failure::Usage(format!(
                "the agent of {} says container {} cannot move there: {} (nothing was published)",
                m.to,
                m.target.vmid,
                failed.join("; ")
            )));
        }
    }
    if let Err(existing) = store.insert_day_two_job(job, request_id).await? {
        return Ok((existing.job_id, existing.spec));
    }
    publishing::publish_recorded(store, nats.js().await?, &outgoing(job, signer)?, request_id).await?;
    Ok((job.job_id().to_string(), json))
}
