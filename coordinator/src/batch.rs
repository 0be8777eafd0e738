//! `pvefleet submit --count N`: N jobs from one spec. `{n}` in the hostname and the IP
//! addresses makes each its own; all N are built and validated before any is published (a bad
//! one publishes none); each has its own job id and, with `--request-id K`, the request
//! `K-<n>`, so running the same command again makes no job twice; `--node auto` places them
//! one by one, counting what the earlier ones take; `--watch` follows them all at once.

use pvefleet_schemas::signing::Identity;
use pvefleet_schemas::{Job, JobId};

use crate::bus::Nats;
use crate::cli::SubmitArgs;
use crate::placement::{Placed, count_placed, place_job};
use crate::publishing::{self, Outgoing};
use crate::requests::{Parts, build_jobs, password};
use crate::secrets::{refill_secrets, seal_secrets};
use crate::store::Store;
use crate::{Outcome, follow};

pub async fn submit(
    nats: &Nats<'_>,
    args: &SubmitArgs,
    store: &Store,
    parts: Parts,
    count: u32,
    signer: &Identity,
) -> Outcome {
    let jobs = build_jobs(&parts, count)?;
    let clear_password = password(&args.root_password)?;
    let js = nats.js().await?;
    let beats = if parts.node == "auto" { crate::bus::heartbeats(js).await? } else { Vec::new() };
    // Every job is placed before any is published: one that fits nowhere publishes none.
    let mut placed = Placed::new();
    let mut plan: Vec<(Job, Option<String>, Option<crate::store::job::Model>)> = Vec::new();
    for (i, mut job) in jobs.into_iter().enumerate() {
        let request = args.request_id.as_ref().map(|k| format!("{k}-{}", i + 1));
        let earlier = match &request {
            Some(key) => store.job_by_request(key).await?,
            None => None,
        };
        match &earlier {
            Some(earlier) => count_placed(&mut placed, &earlier.node, &earlier.spec),
            None => place_job(&mut job, parts.node == "auto", &beats, &mut placed, (i + 1, count))?,
        }
        plan.push((job, request, earlier));
    }
    let mut ids = Vec::new();
    for (i, (mut job, request, earlier)) in plan.into_iter().enumerate() {
        let n = i + 1;
        if let (Some(key), Some(_)) = (&request, earlier) {
            let again = async |row: &crate::store::job::Model, js: &async_nats::jetstream::Context| {
                let mut again =
                    Job::decode(row.spec.as_bytes()).map_err(|e| anyhow::anyhow!("stored job {}: {e}", row.job_id))?;
                refill_secrets(&mut again, &parts.deploy)?;
                seal_secrets(store, js, &mut again, clear_password.as_ref()).await?;
                Outgoing::create(&again, signer)
            };
            if let Some(row) = publishing::earlier(store, nats, key, again).await? {
                ids.push((row.job_id.clone(), row.spec.clone()));
                continue;
            }
        }
        seal_secrets(store, js, &mut job, clear_password.as_ref()).await?;
        let public = serde_json::to_string(&job.public()).expect("a job serializes");
        if let Err(earlier) = store.insert_job(&job, request.as_deref()).await? {
            ids.push((earlier.job_id.clone(), earlier.spec.clone()));
            continue;
        }
        if let Err(e) =
            publishing::publish_recorded(store, js, &Outgoing::create(&job, signer)?, request.as_deref()).await
        {
            for (id, _) in &ids {
                println!("{id}");
            }
            eprintln!(
                "{} of {count} jobs published (their ids above); job {n}, {}, failed{}",
                n - 1,
                job.job_id,
                args.request_id.as_ref().map_or_else(
                    || "; give --request-id to be able to publish the rest by running the command again".to_owned(),
                    |k| format!("; run the same command (--request-id {k}) again to publish the rest")
                )
            );
            return Err(e);
        }
        ids.push((job.job_id.to_string(), public));
    }
    for (id, spec) in &ids {
        if args.json {
            println!("{spec}");
        } else {
            println!("{id}");
        }
    }
    if args.watch {
        let ids: Vec<JobId> = ids.iter().filter_map(|(id, _)| id.parse().ok()).collect();
        return follow::follow_all(store, nats.client().await?, js, &ids, args.json).await;
    }
    Ok(())
}
