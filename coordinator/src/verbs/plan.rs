//! `pvefleet plan`: `submit`'s arguments (and `--count`), but instead of publishing, each
//! chosen node's agent is asked (`pvefleet.control.<node>.plan`) to check the job against its
//! Proxmox API and say what the create would send. Nothing changes in PVE. Exit 0 if every
//! check of every job passes, 1 with the reasons otherwise, 2 for bad input.

use std::time::Duration;

use async_nats::jetstream;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pvefleet_schemas::{PlanReply, PlanRequest};

use crate::cli::{Cli, SubmitArgs};
use crate::placement::{Placed, place_job};
use crate::spec::BadInput;
use crate::{Failure, Outcome};

/// How long an agent may take to answer a plan (it makes a dozen reads of its API).
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

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
        let reply = ask(&client, &me, &job.node, &PlanRequest::new(job.clone())).await?;
        all_ok &= reply.ok;
        if args.json {
            println!("{}", serde_json::to_string(&reply).expect("a plan serializes"));
        } else {
            show(&reply, &job.container.hostname, i + 1, count);
        }
    }
    if all_ok { Ok(()) } else { Err(Failure::Quiet) }
}

/// Asks `node`'s agent for a plan: `request` signed by `me` (valid a few minutes), answered
/// on the plan subject.
pub(crate) async fn ask(
    client: &async_nats::Client,
    me: &pvefleet_schemas::signing::Identity,
    node: &pvefleet_schemas::NodeName,
    request: &impl serde::Serialize,
) -> Result<PlanReply, Failure> {
    let subject = pvefleet_schemas::names::plan_subject(node);
    let payload = crate::publishing::signed_for(request, me, crate::publishing::CONTROL_SIGNED_FOR_MINUTES)?;
    let request = async_nats::Request::new().payload(payload.into()).timeout(Some(ANSWER_WITHIN));
    let answer = client.send_request(subject, request).await.map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::TimedOut => {
            anyhow::anyhow!("the agent of {node} did not answer the plan within {ANSWER_WITHIN:?}")
        }
        async_nats::RequestErrorKind::NoResponders => {
            anyhow::anyhow!("no agent answers plans on {node}: is pvefleet-agent running there (and this build's)?")
        }
        _ => anyhow::anyhow!("asking the agent of {node} for a plan: {e}"),
    })?;
    Ok(serde_json::from_slice(&answer.payload)
        .map_err(|e| anyhow::anyhow!("the agent of {node} answered the plan with something unreadable: {e}"))?)
}

pub(crate) fn show(reply: &PlanReply, hostname: &str, n: usize, count: u32) {
    let failed = reply.checks.iter().filter(|c| !c.ok).count();
    let which = if count > 1 { format!("job {n} of {count}: ") } else { String::new() };
    let verdict = if failed == 0 { "every check passes".to_owned() } else { format!("{failed} check(s) failed") };
    println!("{which}{hostname} on {}: {verdict}", reply.node);
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header(["CHECK", "", "FOUND"]);
    for c in &reply.checks {
        table.add_row([c.check.clone(), if c.ok { "ok".into() } else { "FAILED".into() }, c.detail.clone()]);
    }
    println!("{table}");
    if failed == 0 {
        println!("It would send:");
        for call in &reply.calls {
            println!("  {}", call.call);
            for (k, v) in &call.parameters {
                println!("    {k}={}", v.replace('\n', "\\n").replace('\0', "\\0"));
            }
        }
    }
}
