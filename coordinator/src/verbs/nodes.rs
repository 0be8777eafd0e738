//! `pvefleet nodes`: the live agents in `pvefleet-nodes`, with what their nodes can take.

use async_nats::jetstream;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::Outcome;
use crate::cli::Cli;

pub async fn run(cli: &Cli, json: bool) -> Outcome {
    let js = jetstream::new(crate::bus::connect(cli).await?);
    let beats = crate::bus::heartbeats(&js).await?;
    if json {
        println!("{}", serde_json::to_string(&beats).expect("heartbeats serialize"));
        return Ok(());
    }
    let now = time::OffsetDateTime::now_utc();
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header([
        "NODE",
        "VERSION",
        "RUNNING",
        "FREE MEMORY",
        "STORAGE FREE",
        "LAST SEEN",
    ]);
    for b in &beats {
        let (mem, storage) = match &b.capacity {
            Some(c) => (
                format!("{} / {} MiB", c.memory_free_bytes >> 20, c.memory_total_bytes >> 20),
                c.storages
                    .iter()
                    .map(|s| format!("{} {} GiB", s.storage, s.avail_bytes >> 30))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            None => ("unknown".into(), "unknown".into()),
        };
        let age = (now - b.last_seen.0).whole_milliseconds() as f64 / 1000.0;
        table.add_row([
            b.node.to_string(),
            b.agent_version.clone(),
            format!("{}/{}", b.running_jobs.len(), b.concurrency),
            mem,
            storage,
            format!("{age:.1}s ago"),
        ]);
    }
    println!("{table}");
    if beats.is_empty() {
        eprintln!("no live agents");
    }
    Ok(())
}

/// `pvefleet nodes trust NODE`: pins the sealing key the node's agent shows now.
pub async fn trust(cli: &Cli, node: &str) -> Outcome {
    let node = pvefleet_schemas::NodeName::new(node).map_err(|e| crate::Failure::Usage(format!("NODE: {e}")))?;
    let store = crate::open_store(cli).await?;
    let js = jetstream::new(crate::bus::connect(cli).await?);
    let beat = crate::bus::heartbeats(&js).await?.into_iter().find(|b| b.node == node);
    let Some(shown) = beat.and_then(|b| b.sealing_key) else {
        return Err(anyhow::anyhow!("{node} has no live agent showing a sealing key; start it, then trust it").into());
    };
    let shown: pvefleet_schemas::seal::PublicKey =
        shown.parse().map_err(|e| anyhow::anyhow!("the agent of {node} shows a key that cannot be read: {e}"))?;
    match store.node_key(node.as_str()).await? {
        Some(pinned) if pinned.public_key == shown.to_string() => {
            println!("{node}: already trusted, {}", pinned.fingerprint);
            return Ok(());
        }
        Some(pinned) => println!("{node}: was pinned {}", pinned.fingerprint),
        None => println!("{node}: nothing pinned before"),
    }
    store.pin_node_key(node.as_str(), &shown).await?;
    println!("{node}: now trusted {}", shown.fingerprint());
    Ok(())
}
