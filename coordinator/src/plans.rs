//! A plan asked of an agent (a create's, or a day-two job's) and shown: each check with `ok`
//! or `FAILED` and what it found, then the exact PVE calls.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pvefleet_schemas::PlanReply;

use crate::Failure;

/// How long an agent has to answer a plan.
pub const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Asks `node`'s agent for a plan: `request` signed by `me` (valid a few minutes), answered
/// on the plan subject.
pub async fn ask(
    client: &async_nats::Client,
    me: &pvefleet_schemas::signing::Identity,
    node: &pvefleet_schemas::NodeName,
    request: &impl serde::Serialize,
) -> Result<PlanReply, Failure> {
    ask_for(client, me, node, request).await
}

/// [`ask`], for any answer on the plan subject (a list request's).
pub async fn ask_for<R: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    me: &pvefleet_schemas::signing::Identity,
    node: &pvefleet_schemas::NodeName,
    request: &impl serde::Serialize,
) -> Result<R, Failure> {
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
        .map_err(|e| anyhow::anyhow!("the agent of {node} answered with something unreadable: {e}"))?)
}

pub fn show(reply: &PlanReply, hostname: &str, n: usize, count: u32) {
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
