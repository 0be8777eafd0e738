//! `pvefleet retry JOB`: a failed or cancelled job tried again as a new job (a new id, so not
//! absorbed by the dedup window or its request id), linked to the failed one in the store. A
//! create job's secrets are asked for again (the store keeps none); a day-two job goes to the
//! node its container is on now.

use pvefleet_schemas::{DeploySpec, DestroyJob, FileSpec, Job, JobId, NodeName, Timestamp};

use crate::bus::Nats;
use crate::cli::{Cli, RetryArgs};
use crate::publishing::{self, Outgoing};
use crate::spec::BadInput;
use crate::store::{JobKind, JobState};
use crate::{Failure, Outcome, follow};

pub async fn run(cli: &Cli, args: &RetryArgs) -> Outcome {
    let failed_id = crate::job_id(&args.job)?;
    let store = crate::open_store(cli).await?;
    let Some(failed) = store.job(&failed_id).await? else {
        return Err(Failure::Usage(format!("unknown job {failed_id} (see `pvefleet jobs`)")));
    };
    if !matches!(failed.state, JobState::Failed | JobState::Cancelled) {
        return Err(Failure::Usage(format!(
            "job {failed_id} is {}: only a failed or cancelled job is tried again",
            failed.state
        )));
    }
    let (_, signer) = crate::identity::load(cli)?;
    let nats = Nats::new(cli);
    if let Some(key) = &args.request_id
        && let Some(row) = store.job_by_request(key).await?
    {
        // The same retry run before: its job, not another.
        eprintln!("request {key} was submitted before as job {}", row.job_id);
        if row.stream_seq.is_none() && row.state == JobState::Queued {
            return Err(Failure::Failed(anyhow::anyhow!(
                "job {} of request {key} was recorded but its publish never confirmed (its secrets are not kept to \
                 publish it again): retry job {failed_id} under a new --request-id",
                row.job_id
            )));
        }
        return finish(cli, args, &row.job_id, &row.spec).await;
    }
    let (id, json) = match failed.kind {
        JobKind::Create => {
            let mut job =
                Job::decode(failed.spec.as_bytes()).map_err(|e| anyhow::anyhow!("stored job {failed_id}: {e}"))?;
            renew(&mut job.job_id, &mut job.submitted_at);
            job.auth = None;
            let password = crate::requests::password(&args.root_password)?;
            crate::secrets::refill_secrets(&mut job, &secret_files(args)?)?;
            let js = nats.js().await?;
            crate::secrets::seal_secrets(&store, js, &mut job, password.as_ref()).await?;
            job.validate()?;
            let public = serde_json::to_string(&job.public()).expect("a job serializes");
            if let Err(existing) = store.insert_job(&job, args.request_id.as_deref()).await? {
                return finish(cli, args, &existing.job_id, &existing.spec).await;
            }
            store.set_retry_of(&job.job_id, &failed.job_id).await?;
            let out = Outgoing::create(&job, &signer)?;
            publishing::publish_recorded(&store, js, &out, args.request_id.as_deref()).await?;
            (job.job_id.to_string(), public)
        }
        JobKind::Destroy => {
            let mut job = DestroyJob::decode(failed.spec.as_bytes())
                .map_err(|e| anyhow::anyhow!("stored job {failed_id}: {e}"))?;
            renew(&mut job.job_id, &mut job.submitted_at);
            job.auth = None;
            if let Err(existing) = store.insert_destroy_job(&job, &failed.hostname, args.request_id.as_deref()).await? {
                return finish(cli, args, &existing.job_id, &existing.spec).await;
            }
            store.set_retry_of(&job.job_id, &failed.job_id).await?;
            let out = Outgoing::destroy(&job, &signer)?;
            publishing::publish_recorded(&store, nats.js().await?, &out, args.request_id.as_deref()).await?;
            (job.job_id.to_string(), serde_json::to_string(&job).expect("a job serializes"))
        }
        kind => {
            let old = crate::day_two::decode(kind, &failed.spec)
                .map_err(|e| anyhow::anyhow!("stored job {failed_id}: {e}"))?;
            let Some(target) = old.target().cloned() else {
                // A restore as a new container names no container: it goes where it went.
                let message = old.renewed(old.node().clone());
                message.validate()?;
                let (id, json) =
                    crate::day_two::submit(&store, &nats, &signer, &message, args.request_id.as_deref()).await?;
                store.set_retry_of(&crate::job_id(&id)?, &failed.job_id).await?;
                eprintln!("job {id} tries job {failed_id} again");
                return finish(cli, args, &id, &json).await;
            };
            // The container may have moved since: the job goes where it is now.
            let entries = crate::inventory::read(nats.js().await?).await?;
            let marker = target.create_job.map(|j| j.marker_tag());
            let here = entries
                .iter()
                .find(|e| e.vmid == target.vmid && marker.as_ref().is_none_or(|m| e.markers.contains(m)))
                .ok_or_else(|| {
                    Failure::Usage(format!(
                        "container {} of job {failed_id} is not in the inventory any more (gone?): see `pvefleet ls --all`",
                        target.vmid
                    ))
                })?;
            let node: NodeName = here.node.clone();
            let message = old.renewed(node);
            message.validate()?;
            let (id, json) =
                crate::day_two::submit(&store, &nats, &signer, &message, args.request_id.as_deref()).await?;
            store.set_retry_of(&crate::job_id(&id)?, &failed.job_id).await?;
            (id, json)
        }
    };
    eprintln!("job {id} tries job {failed_id} again");
    finish(cli, args, &id, &json).await
}

/// A new id and submission time: a new job, not a repeat of the failed one.
fn renew(id: &mut JobId, at: &mut Timestamp) {
    *id = JobId::new();
    *at = Timestamp::now();
}

/// The secret files given again, as a deploy spec `refill_secrets` reads.
fn secret_files(args: &RetryArgs) -> Result<DeploySpec, Failure> {
    let mut deploy = DeploySpec::default();
    for given in &args.secret_files {
        let (path, local) = given
            .split_once('=')
            .ok_or_else(|| BadInput::field("--secret-file", format!("`{given}` is not `PATH=LOCAL`")))?;
        let content = std::fs::read_to_string(local)
            .map_err(|e| BadInput::field("--secret-file", format!("cannot read {local}: {e}")))?;
        let mut file = FileSpec::new(path, content);
        file.secret = true;
        deploy.files.push(file);
    }
    Ok(deploy)
}

async fn finish(cli: &Cli, args: &RetryArgs, job_id: &str, json: &str) -> Outcome {
    follow::print_then_follow(cli, job_id, json, args.json, args.watch).await
}
