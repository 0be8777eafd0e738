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

/// `pvefleet nodes trust NODE --fingerprint FP | --key KEY`: pins the sealing key root
/// passwords for NODE are sealed to, once the operator has read it on the node itself
/// (`pvefleet-agent --print-key`). The registry alone is never enough: it is written by the
/// node's agent user, whose password may be stolen, so a key is trusted only when the
/// operator names it. Without either flag it lists the candidates and where each came from.
pub async fn trust(cli: &Cli, node: &str, fingerprint: Option<&str>, key: Option<&str>) -> Outcome {
    use pvefleet_schemas::seal::PublicKey;
    let node = pvefleet_schemas::NodeName::new(node).map_err(|e| crate::Failure::Usage(format!("NODE: {e}")))?;
    let store = crate::open_store(cli).await?;
    let pinned = match store.node_key(node.as_str()).await? {
        Some(row) => Some((
            row.public_key.parse::<PublicKey>().map_err(|e| anyhow::anyhow!("the key pinned for {node}: {e}"))?,
            row.pinned_at,
        )),
        None => None,
    };
    let chosen = match key {
        Some(text) => text
            .parse::<PublicKey>()
            .map_err(|e| crate::Failure::Usage(format!("invalid --key: `{text}` is not a sealing key ({e})")))?,
        None => {
            let js = jetstream::new(crate::bus::connect(cli).await?);
            let live = crate::bus::heartbeats(&js).await?.into_iter().find(|b| b.node == node);
            let shown: Option<PublicKey> = live
                .and_then(|b| b.sealing_key)
                .map(|k| {
                    k.parse().map_err(|e| anyhow::anyhow!("the agent of {node} shows a key that cannot be read: {e}"))
                })
                .transpose()?;
            let Some(fingerprint) = fingerprint else {
                println!("{node}: candidate sealing keys");
                match &pinned {
                    Some((k, at)) => println!("  {}  pinned in this store at {at}", k.fingerprint()),
                    None => println!("  (none pinned in this store)"),
                }
                match &shown {
                    Some(k) => println!(
                        "  {}  shown now by the heartbeat under `{node}` in pvefleet-nodes (written by the NATS user of {node}'s agent)",
                        k.fingerprint()
                    ),
                    None => println!("  (no live agent of {node} shows a key)"),
                }
                return Err(crate::Failure::Usage(format!(
                    "nodes trust: give the key's fingerprint as the node prints it: run `pvefleet-agent --config \
                     /etc/pvefleet/agent.toml --print-key` on {node}, compare, then `pvefleet nodes trust {node} \
                     --fingerprint SHA256:…` (or `--key` with the key it prints)"
                )));
            };
            match shown {
                Some(k) if k.fingerprint() == fingerprint.trim() => k,
                Some(k) => {
                    return Err(anyhow::anyhow!(
                        "the agent of {node} shows {}, not {fingerprint}: nothing trusted. If {fingerprint} is what \
                         the node printed, the key in the registry is not its agent's",
                        k.fingerprint()
                    )
                    .into());
                }
                None => {
                    return Err(anyhow::anyhow!(
                        "{node} has no live agent showing a sealing key: start it, or trust the key the node prints \
                         with --key"
                    )
                    .into());
                }
            }
        }
    };
    match &pinned {
        Some((k, _)) if *k == chosen => {
            println!("{node}: already trusted, {}", k.fingerprint());
            return Ok(());
        }
        Some((k, at)) => println!("{node}: was pinned {} (at {at})", k.fingerprint()),
        None => println!("{node}: nothing pinned before"),
    }
    store.pin_node_key(node.as_str(), &chosen).await?;
    println!("{node}: now trusted {}", chosen.fingerprint());
    Ok(())
}
