//! `pvefleet nodes`: the live agents in `pvefleet-nodes`, with what their nodes can take.

use async_nats::jetstream;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::Outcome;
use crate::cli::Cli;

pub async fn run(cli: &Cli, json: bool) -> Outcome {
    let js = jetstream::new(crate::bus::connect(cli).await?);
    let registry = crate::bus::registry(&js).await?;
    let beats = registry.beats;
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
            format!("{}/{}", crate::bus::still_running(&js, b).await.len(), b.concurrency),
            mem,
            storage,
            format!("{age:.1}s ago"),
        ]);
    }
    println!("{table}");
    if beats.is_empty() {
        eprintln!("no live agents");
    }
    for (node, why) in &registry.ignored {
        eprintln!("ignored a heartbeat under {node}: {why}");
    }
    Ok(())
}

/// `pvefleet nodes enroll NODE --fingerprint FP` (admin): certifies the agent's identity and
/// sealing keys as its live heartbeat shows them, once they match the fingerprint its
/// operator read on the node; without `--fingerprint`, shows what the agent shows to compare.
pub async fn enroll(cli: &Cli, node: &str, fingerprint: Option<&str>, keys: Option<(&str, &str)>) -> Outcome {
    let node = pvefleet_schemas::NodeName::new(node).map_err(|e| crate::Failure::Usage(format!("NODE: {e}")))?;
    let js = jetstream::new(crate::bus::connect(cli).await?);
    if let Some((identity, sealing)) = keys {
        let identity: pvefleet_schemas::signing::SignerKey =
            identity.parse().map_err(|e| crate::Failure::Usage(format!("--identity-key: {e}")))?;
        let sealing: pvefleet_schemas::seal::PublicKey =
            sealing.parse().map_err(|e| crate::Failure::Usage(format!("--sealing-key: {e}")))?;
        let (_, admin) = crate::identity::load(cli)?;
        crate::trust::put_enrollment(&js, &admin, &node, identity.to_string(), sealing.to_string()).await?;
        println!("{node} enrolled: identity {identity}, signed by {}", admin.public().id());
        return Ok(());
    }
    let Some(fingerprint) = fingerprint else {
        let raw = crate::bus::raw_heartbeat(&js, &node).await?;
        let shown = raw.as_deref().map(pvefleet_schemas::trust::open_heartbeat);
        match shown {
            Some(Ok((beat, key))) => {
                let sealing = beat.sealing_key.unwrap_or_default();
                println!("the live agent of {node} shows:");
                println!("  identity key {key}");
                println!("  sealing key  {sealing}");
                println!(
                    "  fingerprint  {}",
                    pvefleet_schemas::trust::enrollment_fingerprint(&key.to_string(), &sealing)
                );
            }
            Some(Err(why)) => println!("the agent of {node} shows a heartbeat that does not verify: {why}"),
            None => println!("no live agent for {node}"),
        }
        return Err(crate::Failure::Usage(format!(
            "compare with `pvefleet-agent --config /etc/pvefleet/agent.toml --print-key` on {node}, then run \
             `pvefleet nodes enroll {node} --fingerprint SHA256:…` with what it prints"
        )));
    };
    let (_, admin) = crate::identity::load(cli)?;
    let beat = crate::bus::raw_heartbeat(&js, &node)
        .await?
        .ok_or_else(|| crate::Failure::Usage(format!("no live agent for {node}: start it, then enroll it")))?;
    let enrolled = crate::trust::enroll(&js, &admin, &node, &beat, fingerprint).await?;
    println!("{node} enrolled: identity {}, signed by {}", enrolled.identity_key, admin.public().id());
    if !crate::trust::admin_keys().contains(&admin.public()) {
        eprintln!(
            "note: your key is not among this CLI's --admin-keys (PVEFLEET_ADMIN_KEYS), so it will not believe this \
             enrollment until it is"
        );
    }
    Ok(())
}
