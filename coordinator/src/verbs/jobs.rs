//! `pvefleet jobs` and `pvefleet job JOB`: what the store recorded.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

use crate::cli::Cli;
use crate::store::{JobState, job};
use crate::{Failure, Outcome};

fn as_json(j: &job::Model) -> serde_json::Value {
    json!({
        "job_id": j.job_id, "kind": j.kind, "node": j.node, "state": j.state, "hostname": j.hostname,
        "target_job": j.target_job, "destroyed_by": j.destroyed_by, "retry_of": j.retry_of,
        "template": j.template, "request_id": j.request_id, "vmid": j.vmid, "ip": j.ip,
        "error": j.error_kind.as_ref().map(|k| json!({"kind": k, "message": j.error_message})),
        "submitted_at": j.submitted_at, "started_at": j.started_at, "finished_at": j.finished_at,
        "stream_seq": j.stream_seq,
    })
}

pub async fn list(cli: &Cli, node: Option<&str>, state: Option<&str>, limit: u64, json: bool) -> Outcome {
    let wanted = match state {
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            let all: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            Failure::Usage(format!("--state `{s}` is not one of {}", all.join(", ")))
        })?),
        None => None,
    };
    let store = crate::open_store(cli).await?;
    let jobs = store.jobs(node, wanted, limit).await?;
    if json {
        println!("{}", serde_json::Value::Array(jobs.iter().map(as_json).collect()));
        return Ok(());
    }
    if jobs.is_empty() {
        if node.is_none() && state.is_none() {
            println!(
                "No jobs yet. Submit one with\n  pvefleet submit --node NODE --hostname NAME --ostemplate VOLID --watch\n\
                 (`pvefleet submit --help` lists every option; `pvefleet nodes` shows the live nodes)."
            );
        } else {
            let filters: Vec<String> = [node.map(|n| format!("--node {n}")), state.map(|s| format!("--state {s}"))]
                .into_iter()
                .flatten()
                .collect();
            println!("No jobs match {}.", filters.join(" "));
        }
        return Ok(());
    }
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header([
        "JOB",
        "KIND",
        "NODE",
        "STATE",
        "HOSTNAME",
        "VMID",
        "IP",
        "SUBMITTED",
    ]);
    for j in &jobs {
        table.add_row([
            j.job_id.clone(),
            j.kind.to_string(),
            j.node.clone(),
            j.state.to_string(),
            j.hostname.clone(),
            j.vmid.map(|v| v.to_string()).unwrap_or_default(),
            j.ip.clone().unwrap_or_default(),
            j.submitted_at.clone(),
        ]);
    }
    println!("{table}");
    let total = store.job_total(node, wanted.map(JobState::as_str)).await?;
    if limit > 0 && total > jobs.len() as u64 {
        println!("The newest {} of {total} jobs; --limit 0 shows every one.", jobs.len());
    }
    Ok(())
}

pub async fn show(cli: &Cli, job: &str, json: bool) -> Outcome {
    let id = crate::job_id(job)?;
    let store = crate::open_store(cli).await?;
    let Some(j) = store.job(&id).await? else {
        return Err(Failure::Usage(format!("unknown job {id}")));
    };
    let events = store.events(&id).await?;
    let spec: serde_json::Value = serde_json::from_str(&j.spec).unwrap_or_default();
    if json {
        let mut value = as_json(&j);
        value["spec"] = spec;
        value["events"] = json!(events.len());
        println!("{value}");
        return Ok(());
    }
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED);
    let rows: Vec<(&str, String)> = vec![
        ("job", j.job_id.clone()),
        ("kind", j.kind.to_string()),
        ("node", j.node.clone()),
        ("state", j.state.to_string()),
        ("hostname", j.hostname.clone()),
        ("template", j.template.clone().unwrap_or_default()),
        ("vmid", j.vmid.map(|v| v.to_string()).unwrap_or_default()),
        ("acts on (made by)", j.target_job.clone().unwrap_or_default()),
        ("retry of", j.retry_of.clone().unwrap_or_default()),
        ("destroyed by", j.destroyed_by.clone().unwrap_or_default()),
        ("ip", j.ip.clone().unwrap_or_default()),
        (
            "error",
            j.error_kind
                .as_ref()
                .map(|k| format!("{k}: {}", j.error_message.clone().unwrap_or_default()))
                .unwrap_or_default(),
        ),
        ("submitted", j.submitted_at.clone()),
        ("started", j.started_at.clone().unwrap_or_default()),
        ("finished", j.finished_at.clone().unwrap_or_default()),
        ("events recorded", events.len().to_string()),
    ];
    for (k, v) in rows {
        table.add_row([k.to_owned(), v]);
    }
    println!("{table}");
    println!("spec:\n{}", serde_json::to_string_pretty(&spec).unwrap_or_default());
    Ok(())
}
