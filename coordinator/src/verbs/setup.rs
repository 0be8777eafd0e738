//! `pvefleet setup`: create or update the streams and KV buckets, safe to run again.

use async_nats::jetstream;
use pvefleet_schemas::{NodeName, layout, names};

use crate::Outcome;

pub async fn run(cli: &crate::cli::Cli, replicas: usize, nodes: &[String], events_max_mib: Option<u32>) -> Outcome {
    if replicas == 0 || replicas > 5 {
        return Err(crate::Failure::Usage(format!("--replicas {replicas} is outside 1..=5")));
    }
    if events_max_mib == Some(0) {
        return Err(crate::Failure::Usage("--events-max-mib 0: a node's events need some room".into()));
    }
    let mut nodes: std::collections::BTreeSet<NodeName> = nodes
        .iter()
        .map(|n| NodeName::new(n).map_err(|e| crate::Failure::Usage(format!("--node: {e}"))))
        .collect::<Result<_, _>>()?;
    let js = jetstream::new(crate::bus::connect(cli).await?);
    retire_shared_events_stream(&js).await?;
    // Every node known: live agents, the store's jobs, and the nodes whose streams exist.
    nodes.extend(crate::bus::heartbeats(&js).await.unwrap_or_default().into_iter().map(|b| b.node));
    nodes.extend(crate::bus::event_stream_nodes(&js).await?);
    if let Ok(store) = crate::open_store(cli).await {
        for node in store.job_nodes().await? {
            nodes.extend(NodeName::new(&node).ok());
        }
    }
    let mut streams =
        vec![layout::jobs_stream(replicas), layout::vmids_stream(replicas), layout::audit_stream(replicas)];
    streams.extend(nodes.iter().map(|n| {
        let mut events = layout::events_stream(n, replicas);
        if let Some(mib) = events_max_mib {
            events.max_bytes = i64::from(mib) << 20;
        }
        events
    }));
    for config in streams {
        let name = config.name.clone();
        // An agent starting now may make it between our "not there" and "make": then update it.
        match js.create_or_update_stream(config.clone()).await {
            Err(e) if layout::made_meanwhile(&e) => js.create_or_update_stream(config).await,
            done => done,
        }
        .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
        println!("stream {name}: ready ({replicas} replica{})", if replicas == 1 { "" } else { "s" });
    }
    for config in [
        layout::jobs_bucket(replicas),
        layout::nodes_bucket(replicas, layout::DEFAULT_HEARTBEAT_TTL),
        layout::trust_bucket(replicas),
        layout::requests_bucket(replicas),
        layout::inventory_bucket(replicas),
    ] {
        let name = config.bucket.clone();
        match js.create_or_update_key_value(config.clone()).await {
            Err(e) if layout::made_meanwhile(&e) => js.create_or_update_key_value(config).await,
            done => done,
        }
        .map_err(|e| anyhow::anyhow!("KV bucket {name}: {e}"))?;
        println!("KV bucket {name}: ready");
    }
    Ok(())
}

/// Earlier versions kept every node's events in one stream, `PVEFLEET_EVENTS`, on all of
/// `pvefleet.events.>`: each node's stream could not be made beside it. Its subjects are moved
/// aside (it keeps what it holds, readable by its stream sequence until the events age out;
/// the store has them all) and said so.
async fn retire_shared_events_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    let Ok(mut shared) = js.get_stream(names::LEGACY_EVENTS_STREAM).await else { return Ok(()) };
    let mut config = shared.info().await?.config.clone();
    if config.subjects.iter().all(|s| s != names::EVENTS_SUBJECTS) {
        return Ok(());
    }
    config.subjects = vec!["pvefleet.retired-events.>".into()];
    js.update_stream(config).await.map_err(|e| anyhow::anyhow!("moving {} aside: {e}", names::LEGACY_EVENTS_STREAM))?;
    println!(
        "stream {}: kept as it is for its last events, no longer written (each node's events now go to {}<node>)",
        names::LEGACY_EVENTS_STREAM,
        names::EVENTS_STREAM_PREFIX
    );
    Ok(())
}
