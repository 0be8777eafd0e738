//! `pvefleet submit`: build the job (template, then spec file, then flags), validate it, pick
//! the node, seal its secrets, record it, publish it once per request, print its id.

use pvefleet_schemas::{Job, JobId};

use crate::bus::Nats;
use crate::cli::{Cli, SubmitArgs};
use crate::publishing::{self, Outgoing};
use crate::requests::{gather, password};
use crate::secrets::{refill_secrets, seal_secrets};
use crate::spec::{BadInput, container_from};
use crate::{Outcome, batch, follow, placement};

pub async fn run(cli: &Cli, args: &SubmitArgs) -> Outcome {
    if args.password.is_some() {
        return Err(BadInput::field(
            "--password",
            "a password on the command line leaks into process lists and shell history; use --password-file, --password-env or --ask-password",
        )
        .into());
    }
    let store = crate::open_store(cli).await?;
    let (_, signer) = crate::identity::load(cli)?;
    let signer = &signer;
    let nats = Nats::new(cli);
    if let Some(count) = args.count {
        // Each of the N jobs has its own request id (`<request-id>-<n>`).
        let parts = gather(args, &store).await?;
        return batch::submit(&nats, args, &store, parts, count, signer).await;
    }
    if let Some(key) = &args.request_id {
        // The same request again: the same job, never a second one.
        let again = async |row: &crate::store::job::Model, js: &async_nats::jetstream::Context| {
            let mut job =
                Job::decode(row.spec.as_bytes()).map_err(|e| anyhow::anyhow!("stored job {}: {e}", row.job_id))?;
            if job.deploy.files.iter().any(|f| f.secret) {
                refill_secrets(&mut job, &gather(args, &store).await?.deploy)?;
            }
            seal_secrets(&store, js, &mut job, password(&args.root_password)?.as_ref()).await?;
            Outgoing::create(&job, signer)
        };
        if let Some(row) = publishing::earlier(&store, &nats, key, again).await? {
            return finish(cli, args, &row.job_id, &row.spec).await;
        }
    }

    let parts = gather(args, &store).await?;
    // Kept in memory only, and sealed to the chosen node's agent once the node is known.
    let clear_password = password(&args.root_password)?;
    let mut job = parts.job(container_from(parts.container.clone())?, &parts.node)?;
    let js = nats.js().await?;
    if parts.node == "auto" {
        job.node = placement::place(js, &job).await?;
    }
    seal_secrets(&store, js, &mut job, clear_password.as_ref()).await?;
    if let Err(earlier) = store.insert_job(&job, args.request_id.as_deref()).await? {
        // A concurrent submit of the same request won the reservation.
        return finish(cli, args, &earlier.job_id, &earlier.spec).await;
    }
    publishing::publish_recorded(&store, js, &Outgoing::create(&job, signer)?, args.request_id.as_deref()).await?;
    finish(cli, args, &job.job_id.to_string(), &serde_json::to_string(&job.public()).expect("a job serializes")).await
}

/// Prints the job's id (or the job, with `--json`) and, with `--watch`, follows it.
async fn finish(cli: &Cli, args: &SubmitArgs, job_id: &str, public_json: &str) -> Outcome {
    let id: JobId = job_id.parse().map_err(|_| anyhow::anyhow!("stored job id `{job_id}` is not a ULID"))?;
    if args.json {
        println!("{public_json}");
    } else {
        println!("{id}");
    }
    if args.watch {
        return follow::follow(cli, id, args.json).await;
    }
    Ok(())
}
