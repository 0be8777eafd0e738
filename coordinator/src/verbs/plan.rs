//! `pvefleet plan`: `submit`'s arguments (and `--count`), but instead of publishing, each
//! chosen node's agent is asked (`pvefleet.control.<node>.plan`) to check the job against its
//! Proxmox API and say what the create would send. Nothing changes in PVE. Exit 0 if every
//! check of every job passes, 1 with the reasons otherwise, 2 for bad input.

use async_nats::jetstream;
use pvefleet_schemas::PlanRequest;

use crate::cli::{Cli, SubmitArgs};
use crate::placement::{Placed, place_job};
use crate::spec::BadInput;
use crate::{Failure, Outcome};

pub async fn run(cli: &Cli, args: &SubmitArgs) -> Outcome {
    if args.watch || args.request_id.is_some() {
        return Err(BadInput::field(
            if args.watch { "--watch" } else { "--request-id" },
            "a plan publishes no job: there is nothing to follow or to repeat",
        )
        .into());
    }
    let store = crate::open_store(cli).await?;
    let (_, me) = crate::identity::load(cli)?;
    let parts = crate::requests::gather(args, &store).await?;
    let count = args.count.unwrap_or(1);
    let jobs = crate::requests::build_jobs(&parts, count)?;
    let client = crate::bus::connect(cli).await?;
    let js = jetstream::new(client.clone());
    let beats = if parts.node == "auto" { crate::bus::heartbeats(&js).await? } else { Vec::new() };
    let mut placed = Placed::new();
    let mut all_ok = true;
    for (i, mut job) in jobs.into_iter().enumerate() {
        place_job(&mut job, parts.node == "auto", &beats, &mut placed, (i + 1, count))?;
        // A plan changes nothing and needs no secret: a secret file's bytes never leave here.
        for file in &mut job.deploy.files {
            if file.secret {
                file.content = Some(String::new());
            }
        }
        let reply = crate::plans::ask(&client, &me, &job.node, &PlanRequest::new(job.clone())).await?;
        all_ok &= reply.ok;
        if args.json {
            println!("{}", serde_json::to_string(&reply).expect("a plan serializes"));
        } else {
            crate::plans::show(&reply, &job.container.hostname, i + 1, count);
        }
    }
    if all_ok { Ok(()) } else { Err(Failure::Quiet) }
}
