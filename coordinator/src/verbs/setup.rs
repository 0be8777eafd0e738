//! `pvefleet setup`: create or update the streams and KV buckets, safe to run again.

use async_nats::jetstream;
use pvefleet_schemas::layout;

use crate::Outcome;

pub async fn run(cli: &crate::cli::Cli, replicas: usize) -> Outcome {
    if replicas == 0 || replicas > 5 {
        return Err(crate::Failure::Usage(format!("--replicas {replicas} is outside 1..=5")));
    }
    let js = jetstream::new(crate::bus::connect(cli).await?);
    for config in [layout::jobs_stream(replicas), layout::events_stream(replicas), layout::vmids_stream(replicas)] {
        let name = config.name.clone();
        // An agent starting now may make it between our "not there" and "make": then update it.
        match js.create_or_update_stream(config.clone()).await {
            Err(e) if layout::made_meanwhile(&e) => js.create_or_update_stream(config).await,
            done => done,
        }
        .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
        println!("stream {name}: ready ({replicas} replica{})", if replicas == 1 { "" } else { "s" });
    }
    for config in [layout::jobs_bucket(replicas), layout::nodes_bucket(replicas, layout::DEFAULT_HEARTBEAT_TTL)] {
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
