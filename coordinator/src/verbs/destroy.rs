//! `pvefleet destroy`: a destroy job for the container a create job made (or a vmid on a
//! node), published like a create job (dedup id, `--request-id`), recorded, followed.

use pvefleet_schemas::{DestroyJob, DestroyTarget, HumanDuration, NodeName, Vmid};

use crate::bus::Nats;
use crate::cli::{Cli, DestroyArgs};
use crate::publishing::{self, Outgoing};
use crate::spec::BadInput;
use crate::store::Store;
use crate::{Failure, Outcome, follow};

pub async fn run(cli: &Cli, args: &DestroyArgs) -> Outcome {
    let store = crate::open_store(cli).await?;
    let (_, signer) = crate::identity::load(cli)?;
    let signer = &signer;
    let nats = Nats::new(cli);
    if let Some(key) = &args.request_id {
        if let Some(row) = store.job_by_request(key).await?
            && row.kind != crate::store::JobKind::Destroy
        {
            return Err(BadInput::field(
                "--request-id",
                format!("`{key}` is the request of create job {}", row.job_id),
            )
            .into());
        }
        let again = async |row: &crate::store::job::Model, _: &async_nats::jetstream::Context| {
            let job = DestroyJob::decode(row.spec.as_bytes())
                .map_err(|e| anyhow::anyhow!("stored job {}: {e}", row.job_id))?;
            Outgoing::destroy(&job, signer)
        };
        if let Some(row) = publishing::earlier(&store, &nats, key, again).await? {
            return finish(cli, args, &row.job_id, &row.spec).await;
        }
    }
    let (node, target, hostname) = target(&store, args).await?;
    let shutdown_timeout: HumanDuration =
        args.shutdown_timeout.parse().map_err(|e: String| BadInput::field("--shutdown-timeout", e))?;
    let mut job = DestroyJob::new(node, target);
    job.options.shutdown_timeout = shutdown_timeout;
    job.validate()?;
    if let Err(existing) = store.insert_destroy_job(&job, &hostname, args.request_id.as_deref()).await? {
        return finish(cli, args, &existing.job_id, &existing.spec).await;
    }
    publishing::publish_recorded(
        &store,
        nats.js().await?,
        &Outgoing::destroy(&job, signer)?,
        args.request_id.as_deref(),
    )
    .await?;
    finish(cli, args, &job.job_id.to_string(), &serde_json::to_string(&job).expect("a job serializes")).await
}

/// The node and container to destroy, and a name for the job's row.
async fn target(store: &Store, args: &DestroyArgs) -> Result<(NodeName, DestroyTarget, String), Failure> {
    match (&args.job, &args.node, args.vmid) {
        (Some(job), None, None) => {
            let id = crate::job_id(job)?;
            let Some(row) = store.job(&id).await? else {
                return Err(Failure::Usage(format!("unknown job {id} (see `pvefleet jobs`)")));
            };
            if row.kind != crate::store::JobKind::Create {
                return Err(Failure::Usage(format!("job {id} is a {} job, not one that made a container", row.kind)));
            }
            if row.state.is_live() {
                return Err(Failure::Failed(anyhow::anyhow!(
                    "the store has job {id} as still {}: cancel it first (`pvefleet cancel {id}`, which rolls it \
                     back), or, if it has ended, let `pvefleet record` (which tells the store) catch up",
                    row.state
                )));
            }
            let vmid = row.vmid.and_then(|v| u32::try_from(v).ok()).and_then(|v| Vmid::new(v).ok());
            let target = DestroyTarget { create_job: Some(id), vmid };
            Ok((NodeName::new(&row.node)?, target, row.hostname))
        }
        (None, Some(node), Some(vmid)) => {
            let node = NodeName::new(node)?;
            let vmid = Vmid::new(vmid)?;
            // The create job that made it, when the store knows one: its marker is then required.
            let made_by = store.creator_of(node.as_str(), vmid).await?;
            // The marker alone is a tag any PVE user who may tag guests can write: without the
            // store's record of the job that made it, only an operator who says so destroys it.
            if made_by.is_none() {
                if !args.force_marker {
                    return Err(Failure::Usage(format!(
                        "no job in this store made container {vmid} on {node}; its pvefleet marker tag alone proves \
                         nothing (any PVE user who may tag guests can write one). Destroy it by its create job, or \
                         give --force-marker if you know it is pvefleet's"
                    )));
                }
                eprintln!(
                    "warning: destroying container {vmid} on {node} on its marker tag alone (--force-marker); no job \
                     in this store made it"
                );
            }
            let hostname = made_by.as_ref().map_or_else(|| format!("vmid {vmid}"), |j| j.hostname.clone());
            let create_job = made_by.and_then(|j| j.job_id.parse().ok());
            Ok((node, DestroyTarget { create_job, vmid: Some(vmid) }, hostname))
        }
        _ => Err(BadInput::field("JOB", "give the create job, or --node NODE --vmid VMID").into()),
    }
}

async fn finish(cli: &Cli, args: &DestroyArgs, job_id: &str, json: &str) -> Outcome {
    follow::print_then_follow(cli, job_id, json, args.json, args.watch).await
}
