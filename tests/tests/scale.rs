//! Many jobs at once: what a fleet is for. 1,000 create jobs are queued before ten agents of
//! one Proxmox cluster start; every job allocates its vmid from the cluster's shared
//! `/cluster/nextid`, which hands the same id to everyone who asks at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use futures::StreamExt as _;
use pvefleet_schemas::{Event, EventType, JobId};
use pvefleet_testbed::Fleet;
use pvefleet_testbed::jobs::{create_job, submit};

const JOBS: usize = 1000;
const AGENTS: usize = 10;

#[tokio::test]
async fn a_thousand_jobs_queued_at_once_over_ten_agents_all_complete() -> anyhow::Result<()> {
    let nodes: Vec<String> = (1..=AGENTS).map(|i| format!("pve{i}")).collect();
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let bed = Fleet::start("scale-1000", &names).await?;
    let mut ids = BTreeSet::new();
    for i in 0..JOBS {
        let ip = Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1);
        let job = create_job(&nodes[i % AGENTS], &format!("ct-{i:04}"), ip);
        submit(&bed.js, &job).await?;
        ids.insert(job.job_id);
    }
    let started = Instant::now();
    let _agents = nodes.iter().map(|n| bed.agent(n)).collect::<anyhow::Result<Vec<_>>>()?;

    let ends = terminal_events(&bed.js, &ids, Duration::from_secs(600)).await?;
    let took = started.elapsed();
    let failed: Vec<String> = ends
        .values()
        .filter(|e| e.kind != EventType::Complete)
        .map(|e| format!("{} {}: {}", e.node, e.job_id, e.message))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {JOBS} jobs failed, e.g.:\n{}",
        failed.len(),
        failed[..failed.len().min(10)].join("\n")
    );
    let vmids: BTreeSet<u32> =
        ends.values().filter_map(|e| e.result.as_ref()?.vmid).map(pvefleet_schemas::Vmid::get).collect();
    assert_eq!(vmids.len(), JOBS, "every job its own vmid");
    let containers = bed.pve.containers().await?;
    assert_eq!(containers.len(), JOBS, "one container per job");
    assert_eq!(containers.into_iter().collect::<BTreeSet<_>>(), vmids);
    let redelivered = redelivery_warnings(&bed.js).await?;
    assert_eq!(redelivered, 0, "jobs were redelivered");
    println!(
        "{JOBS} jobs over {AGENTS} agents: all completed in {took:.1?} ({:.0} jobs/s), 0 redeliveries",
        JOBS as f64 / took.as_secs_f64()
    );
    bed.dir.pass();
    Ok(())
}

/// The terminal event of every job in `ids`, read from the events stream as they come.
async fn terminal_events(
    js: &async_nats::jetstream::Context,
    ids: &BTreeSet<JobId>,
    within: Duration,
) -> anyhow::Result<BTreeMap<JobId, Event>> {
    let mut feeds = Vec::new();
    for (_, stream) in pvefleet_testbed::jobs::events_streams(js).await? {
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        feeds.push(consumer.messages().await?);
    }
    let mut messages = futures::stream::select_all(feeds);
    let mut ends = BTreeMap::new();
    let collect = async {
        while ends.len() < ids.len() {
            let Some(msg) = messages.next().await else { anyhow::bail!("the event stream ended") };
            let event = Event::decode(&msg?.payload)?;
            if event.is_terminal() && ids.contains(&event.job_id) {
                anyhow::ensure!(
                    ends.insert(event.job_id, event.clone()).is_none(),
                    "two terminal events for {}",
                    event.job_id
                );
            }
        }
        Ok(())
    };
    tokio::time::timeout(within, collect)
        .await
        .map_err(|_| anyhow::anyhow!("only {} of {} jobs ended within {within:?}", ends.len(), ids.len()))??;
    Ok(ends)
}

/// How many `redelivered; resuming` warnings the stream holds.
async fn redelivery_warnings(js: &async_nats::jetstream::Context) -> anyhow::Result<usize> {
    let mut count = 0;
    for (_, stream) in pvefleet_testbed::jobs::events_streams(js).await? {
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await?;
        let mut batch = consumer.fetch().max_messages(1_000_000).messages().await?;
        while let Some(msg) = batch.next().await {
            let event = Event::decode(&msg.map_err(anyhow::Error::from_boxed)?.payload)?;
            count += usize::from(event.kind == EventType::Warning && event.message.contains("redelivered"));
        }
    }
    Ok(count)
}
