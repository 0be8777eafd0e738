//! A day-two verb over many containers (`--select`): the matching containers from the
//! inventory, listed first (`--dry-run` stops there), every job built and checked before any
//! is published, then `--max-parallel` at a time, the first `--canary` of them on their own
//! (all must succeed before the rest start), and no new job after a failure unless
//! `--keep-going`. A summary as `submit --count` prints ends it.
//!
//! With `--request-id K`, container `<node>.<vmid>`'s job has the request `K/<node>.<vmid>`
//! (`…/2`, `…/3` for a retry of one that failed): running the same command again follows
//! what is still running, skips what succeeded and redoes only what did not finish.

use async_nats::jetstream;
use pvefleet_schemas::signing::Identity;
use pvefleet_schemas::{DayTwoOptions, EventType, InventoryEntry, JobId, NodeName};

use crate::bus::Nats;
use crate::day_two::{Ask, submit};
use crate::inventory::{self, Selection};
use crate::store::{JobState, Store};
use crate::{Failure, Outcome};
use pvefleet_schemas::DayTwoJob;

/// How a rollout runs.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub selection: Selection,
    pub max_parallel: usize,
    pub canary: usize,
    pub keep_going: bool,
    pub dry_run: bool,
    pub request_id: Option<String>,
    pub force_marker: bool,
    pub json: bool,
}

/// One container's part in the rollout.
struct Item {
    label: String,
    /// Its job, new or found by its request.
    message: DayTwoJob,
    request: Option<String>,
    /// Succeeded under an earlier run of the same request: not run again.
    done_before: Option<String>,
}

/// How one item ended.
#[derive(Debug)]
enum End {
    Succeeded,
    Failed(String),
    NotStarted,
}

pub async fn run(
    store: &Store,
    nats: &Nats<'_>,
    signer: &Identity,
    plan: &Rollout,
    ask: &Ask,
    options: DayTwoOptions,
) -> Outcome {
    let js = nats.js().await?;
    let chosen = inventory::select(js, &plan.selection).await?;
    eprintln!("{} containers match:", chosen.len());
    for e in &chosen {
        eprintln!("  {:<24} {:<10} {:>6}  {}", e.hostname, e.node, e.vmid, e.status);
    }
    if plan.dry_run {
        return Ok(());
    }
    let items = build(store, js, &chosen, plan, ask, options).await?;
    let parallel = plan.max_parallel.max(1);
    let mut ends: Vec<End> = (0..items.len()).map(|_| End::NotStarted).collect();
    let canary = plan.canary.min(items.len());
    let client = nats.client().await?;
    // The canaries on their own: every one must succeed before the rest start.
    let mut stopped = run_wave(store, nats, client, js, signer, &items, 0..canary, parallel, false, &mut ends).await?;
    if stopped {
        eprintln!("a canary failed: the other {} containers were not touched", items.len() - canary);
    } else {
        stopped = run_wave(
            store,
            nats,
            client,
            js,
            signer,
            &items,
            canary..items.len(),
            parallel,
            plan.keep_going,
            &mut ends,
        )
        .await?;
    }
    summary(&items, &ends, plan.json, stopped)
}

/// Every item's job, built and checked before any is published: a container the store did not
/// make (without `--force-marker`), or a bad change, publishes nothing.
async fn build(
    store: &Store,
    store_js: &jetstream::Context,
    chosen: &[InventoryEntry],
    plan: &Rollout,
    ask: &Ask,
    options: DayTwoOptions,
) -> Result<Vec<Item>, Failure> {
    let mut items = Vec::new();
    for entry in chosen {
        let (node, target) = inventory::target_of(store, entry, plan.force_marker).await?;
        let label = format!("{} ({} {})", entry.hostname, entry.node, entry.vmid);
        let (mut request, mut done_before, mut earlier) = (None, None, None);
        if let Some(key) = &plan.request_id {
            // The latest attempt under this request: succeeded stays done, live is followed,
            // failed is tried again under the next attempt's request.
            let base = format!("{key}/{}.{}", entry.node, entry.vmid);
            let mut attempt = 1;
            loop {
                let name = if attempt == 1 { base.clone() } else { format!("{base}/{attempt}") };
                let row = match store.job_by_request(&name).await? {
                    // The store learns a job's end from the recorder; without it, its events say.
                    Some(mut row) if row.state.is_live() => {
                        if let (Ok(node), Ok(id)) = (NodeName::new(&row.node), row.job_id.parse::<JobId>())
                            && let Some(last) = crate::bus::last_event(store_js, &node, &id).await?
                            && last.is_terminal()
                        {
                            row.state =
                                if last.kind == EventType::Complete { JobState::Succeeded } else { JobState::Failed };
                        }
                        Some(row)
                    }
                    other => other,
                };
                match row {
                    Some(row) if row.state == JobState::Succeeded => {
                        done_before = Some(row.job_id.clone());
                        request = Some(name);
                        earlier = Some(row);
                        break;
                    }
                    Some(row) if row.state.is_live() => {
                        request = Some(name);
                        earlier = Some(row);
                        break;
                    }
                    Some(_) => attempt += 1,
                    None => {
                        request = Some(name);
                        break;
                    }
                }
            }
        }
        let message = match &earlier {
            Some(row) => crate::day_two::decode(row.kind, &row.spec).map_err(Failure::Failed)?,
            None => crate::day_two::make(ask, node, target, options),
        };
        message.validate()?;
        items.push(Item { label, message, request, done_before });
    }
    Ok(items)
}

/// Runs `range` of the items, `parallel` at a time; after a failure no new one starts unless
/// `keep_going`. Whether it stopped early.
#[allow(clippy::too_many_arguments)]
async fn run_wave(
    store: &Store,
    nats: &Nats<'_>,
    client: &async_nats::Client,
    js: &jetstream::Context,
    signer: &Identity,
    items: &[Item],
    range: std::ops::Range<usize>,
    parallel: usize,
    keep_going: bool,
    ends: &mut [End],
) -> Result<bool, Failure> {
    let mut running = tokio::task::JoinSet::new();
    let mut next = range.start;
    let mut failed = false;
    loop {
        while running.len() < parallel && next < range.end && (!failed || keep_going) {
            let item = &items[next];
            if let Some(id) = &item.done_before {
                eprintln!("{}: done before (job {id})", item.label);
                ends[next] = End::Succeeded;
                next += 1;
                continue;
            }
            let (id, _) = submit(store, nats, signer, &item.message, item.request.as_deref()).await?;
            eprintln!("{}: job {id}", item.label);
            let id: JobId = crate::job_id(&id)?;
            let (client, js, node, i) = (client.clone(), js.clone(), item.message.node().clone(), next);
            running.spawn(async move { (i, end_of(&client, &js, id, node).await) });
            next += 1;
        }
        let Some(done) = running.join_next().await else { break };
        let (i, end) = done.map_err(anyhow::Error::from)?;
        let end = end?;
        match &end {
            End::Succeeded => eprintln!("{}: succeeded", items[i].label),
            End::Failed(why) => {
                eprintln!("{}: failed: {why}", items[i].label);
                failed = true;
            }
            End::NotStarted => {}
        }
        ends[i] = end;
    }
    Ok(failed && !keep_going && next < range.end)
}

/// Follows job `id` to its end.
async fn end_of(
    client: &async_nats::Client,
    js: &jetstream::Context,
    id: JobId,
    node: NodeName,
) -> anyhow::Result<End> {
    let mut feed = crate::bus::EventFeed::open(client, js, &id, Some(node)).await?;
    while let Some(event) = feed.next().await? {
        if event.is_terminal() {
            return Ok(if event.kind == EventType::Complete {
                End::Succeeded
            } else {
                End::Failed(crate::follow::printable(&event.message))
            });
        }
    }
    anyhow::bail!("the event feed of job {id} ended before the job did")
}

fn summary(items: &[Item], ends: &[End], json: bool, stopped: bool) -> Outcome {
    let count = |f: fn(&End) -> bool| ends.iter().filter(|e| f(e)).count();
    let (ok, failed, waiting) = (
        count(|e| matches!(e, End::Succeeded)),
        count(|e| matches!(e, End::Failed(_))),
        count(|e| matches!(e, End::NotStarted)),
    );
    if json {
        let rows: Vec<serde_json::Value> = items
            .iter()
            .zip(ends)
            .map(|(item, end)| {
                let (state, why) = match end {
                    End::Succeeded => ("succeeded", None),
                    End::Failed(why) => ("failed", Some(why.clone())),
                    End::NotStarted => ("not_started", None),
                };
                serde_json::json!({
                    "container": item.label, "job_id": item.message.job_id().to_string(),
                    "node": item.message.node(), "vmid": item.message.vmid(), "state": state, "error": why,
                })
            })
            .collect();
        println!("{}", serde_json::json!({"succeeded": ok, "failed": failed, "not_started": waiting, "items": rows}));
    } else {
        println!("{ok} of {} jobs succeeded, {failed} failed, {waiting} not started", items.len());
        for (item, end) in items.iter().zip(ends) {
            match end {
                End::Failed(why) => println!("  failed: {} ({}): {why}", item.label, item.message.job_id()),
                End::NotStarted => println!("  not started: {}", item.label),
                End::Succeeded => {}
            }
        }
        if stopped {
            println!("stopped at the first failure (--keep-going goes on past one)");
        }
    }
    if failed == 0 && waiting == 0 { Ok(()) } else { Err(Failure::Quiet) }
}
