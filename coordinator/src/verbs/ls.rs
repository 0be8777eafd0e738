//! `pvefleet ls`: the containers pvefleet made, as the agents' inventory has them now (and,
//! with `--all`, those gone, as the recorder kept them in the store).

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

use crate::bus::Nats;
use crate::cli::Cli;
use crate::inventory::{self, Selection};
use crate::{Failure, Outcome};

pub async fn run(cli: &Cli, node: Option<&str>, select: Option<&str>, all: bool, limit: usize, json: bool) -> Outcome {
    let selection: Option<Selection> =
        select.map(|s| s.parse().map_err(|e: String| Failure::Usage(format!("--select: {e}")))).transpose()?;
    let node = node
        .map(|n| pvefleet_schemas::NodeName::new(n).map_err(|e| Failure::Usage(format!("--node: {e}"))))
        .transpose()?;
    let node = node.as_ref().map(|n| n.as_str());
    let nats = Nats::new(cli);
    // The first page (by node and vmid): a table of ten thousand rows is nobody's to read.
    // Without a selection it is read alone, by key; a selection reads every entry.
    let (entries, footnote) = match (&selection, limit) {
        (None, 1..) => {
            let (page, more) = inventory::first_page(nats.js().await?, node, limit).await?;
            // How many there are is not known without reading every entry.
            let footnote = more.then(|| format!("The first {} containers by node and vmid", page.len()));
            (page, footnote)
        }
        _ => {
            let mut entries: Vec<_> = inventory::read(nats.js().await?)
                .await?
                .into_iter()
                .filter(|e| node.is_none_or(|n| e.node.as_str() == n))
                .filter(|e| selection.as_ref().is_none_or(|s| s.matches(e)))
                .collect();
            let matched = entries.len();
            let footnote = (limit > 0 && matched > limit).then(|| format!("The first {limit} of {matched} containers"));
            entries.truncate(if limit > 0 { limit } else { matched });
            (entries, footnote)
        }
    };
    let gone: Vec<_> = if all {
        let store = crate::open_store(cli).await?;
        let gone = store
            .containers()
            .await?
            .into_iter()
            .filter(|c| c.state == "gone" && node.is_none_or(|n| c.node == n))
            .filter(|c| !entries.iter().any(|e| i64::from(e.vmid.get()) == c.vmid && e.markers.contains(&c.marker)));
        if limit > 0 { gone.take(limit.saturating_sub(entries.len())).collect() } else { gone.collect() }
    } else {
        Vec::new()
    };
    if json {
        let mut rows: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).expect("an entry serializes");
                v["drift"] = json!(e.drifted());
                v["state"] = json!("present");
                v
            })
            .collect();
        rows.extend(gone.iter().map(|c| {
            json!({
                "node": c.node, "vmid": c.vmid, "hostname": c.hostname, "state": "gone", "gone_at": c.gone_at,
                "status": c.status, "ip": c.ip, "create_job": c.create_job, "last_job": c.last_job,
                "markers": [c.marker],
            })
        }));
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if entries.is_empty() && gone.is_empty() {
        println!(
            "No containers{}. The agents list their node's containers with a pvefleet marker at start, after each \
             job and every inventory_interval; `pvefleet submit` makes one.",
            if node.is_some() || select.is_some() { " match" } else { " yet" }
        );
        return Ok(());
    }
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header([
        "HOSTNAME", "NODE", "VMID", "STATUS", "IP", "MEMORY", "CORES", "DISK", "MADE BY", "LAST JOB", "DRIFT",
    ]);
    for e in &entries {
        table.add_row([
            e.hostname.clone(),
            e.node.to_string(),
            e.vmid.to_string(),
            e.lock.as_ref().map_or_else(|| e.status.clone(), |l| format!("{} (lock: {l})", e.status)),
            e.ip.clone().unwrap_or_else(|| "-".into()),
            e.memory_mb.map_or_else(|| "-".into(), |m| format!("{m} MB")),
            e.cores.map_or_else(|| "-".into(), |c| c.to_string()),
            e.disk.clone().unwrap_or_else(|| "-".into()),
            e.create_job.map_or_else(|| "?".into(), |j| j.to_string()),
            e.last_job.map_or_else(|| "-".into(), |j| j.to_string()),
            if e.drifted() { "changed outside pvefleet".into() } else { String::new() },
        ]);
    }
    for c in &gone {
        table.add_row([
            c.hostname.clone(),
            c.node.clone(),
            c.vmid.to_string(),
            format!("gone since {}", c.gone_at.clone().unwrap_or_default()),
            c.ip.clone().unwrap_or_else(|| "-".into()),
            "-".into(),
            "-".into(),
            "-".into(),
            c.create_job.clone().unwrap_or_else(|| "?".into()),
            c.last_job.clone().unwrap_or_else(|| "-".into()),
            String::new(),
        ]);
    }
    println!("{table}");
    if let Some(footnote) = footnote {
        println!("{footnote}; --limit 0 shows every one.");
    }
    Ok(())
}
