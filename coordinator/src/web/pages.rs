//! The pages, rendered on the server with maud, which escapes everything it prints: a
//! hostname, a spec, an error message is always text, never markup. The live parts are
//! filled in by `assets/app.js` from server-sent events, with `textContent` only.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use pvefleet_schemas::{Heartbeat, JobId};
use serde::Deserialize;

use super::Web;
use super::frame::{failed, not_found, page, query_value};
use crate::store::JobState;

const PER_PAGE: u64 = 50;

fn bar(used: u64, total: u64) -> Markup {
    let percent = used.saturating_mul(100).checked_div(total).unwrap_or(0).min(100);
    html! { span.bar title=(format!("{percent}%")) { span.fill style=(format!("width:{percent}%")) {} } }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// One node's card (the script renders the same shape from `/live/fleet`).
fn node_card(b: &Heartbeat) -> Markup {
    html! {
        article.node data-node=(b.node.as_str()) {
            h2 { (b.node.as_str()) " " span.badge.live { "live" } }
            p { "agent " (b.agent_version) " · " (b.running_jobs.len()) "/" (b.concurrency) " running · last seen " time { (b.last_seen.to_string()) } }
            @if let Some(cap) = &b.capacity {
                p { "memory " (bar(cap.memory_total_bytes - cap.memory_free_bytes.min(cap.memory_total_bytes), cap.memory_total_bytes)) " "
                    (gib(cap.memory_free_bytes)) " free of " (gib(cap.memory_total_bytes)) }
                @for s in &cap.storages {
                    p { (s.storage) " " (bar(s.total_bytes.saturating_sub(s.avail_bytes), s.total_bytes)) " " (gib(s.avail_bytes)) " free of " (gib(s.total_bytes)) }
                }
            } @else {
                p.error { "its Proxmox API did not answer" }
            }
        }
    }
}

pub async fn fleet(State(web): State<Web>) -> Response {
    let beats = match crate::bus::heartbeats(&web.js).await {
        Ok(b) => b,
        Err(e) => return failed(e),
    };
    page(
        StatusCode::OK,
        "Fleet",
        html! {
            h1 { "Fleet" }
            p.hint { "Agents beat every few seconds; one that stops beating leaves this page." }
            section #fleet data-live="/live/fleet" {
                @if beats.is_empty() { p #no-agents { "No live agent." } }
                @for b in &beats { (node_card(b)) }
            }
        },
    )
}

#[derive(Debug, Deserialize)]
pub struct JobsQuery {
    node: Option<String>,
    state: Option<String>,
    hostname: Option<String>,
    page: Option<u64>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

pub async fn jobs(State(web): State<Web>, Query(q): Query<JobsQuery>) -> Response {
    let (node, state, hostname) = (given(&q.node), given(&q.state), given(&q.hostname));
    let page_no = q.page.unwrap_or(1).clamp(1, u64::MAX / PER_PAGE);
    let (jobs, total) = match web.store.jobs_page(node, state, hostname, page_no - 1, PER_PAGE).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let pages = total.div_ceil(PER_PAGE).max(1);
    let page_no = page_no.min(pages);
    let link = |p: u64| {
        let mut parts = vec![format!("page={p}")];
        for (k, v) in [("node", node), ("state", state), ("hostname", hostname)] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", query_value(v)));
            }
        }
        format!("/jobs?{}", parts.join("&"))
    };
    page(
        StatusCode::OK,
        "Jobs",
        html! {
            h1 { "Jobs" }
            form.filters method="get" action="/jobs" {
                label { "node " input name="node" value=(node.unwrap_or_default()); }
                label { "state " select name="state" {
                    option value="" { "any" }
                    @for s in JobState::ALL { option value=(s) selected[state == Some(s.as_str())] { (s) } }
                } }
                label { "hostname " input name="hostname" value=(hostname.unwrap_or_default()); }
                button type="submit" { "Filter" }
            }
            p { (total) " job(s)" }
            table #jobs {
                thead { tr { th { "job" } th { "kind" } th { "node" } th { "state" } th { "hostname" } th { "vmid" } th { "ip" } th { "submitted" } } }
                tbody {
                    @for j in &jobs {
                        tr.job data-state=(j.state) {
                            td { a href=(format!("/jobs/{}", j.job_id)) { (j.job_id) } }
                            td { (j.kind) } td { (j.node) } td { span.state { (j.state) } } td { (j.hostname) }
                            td { (j.vmid.map(|v| v.to_string()).unwrap_or_default()) }
                            td { (j.ip.clone().unwrap_or_default()) } td { (j.submitted_at) }
                        }
                    }
                }
            }
            nav.pages {
                @if page_no > 1 { a rel="prev" href=(link(page_no - 1)) { "← newer" } " " }
                "page " (page_no) " of " (pages)
                @if page_no < pages { " " a rel="next" href=(link(page_no + 1)) { "older →" } }
            }
        },
    )
}

/// The containers pvefleet made, as the recorder keeps them from the agents' inventory: where
/// each is, its state (`gone` once no agent lists it), the job that made it and the last one
/// that wrote to it, and whether it was changed outside pvefleet since.
pub async fn containers(State(web): State<Web>) -> Response {
    let rows = match web.store.containers().await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let job =
        |id: &Option<String>| html! { @if let Some(j) = id { a href=(format!("/jobs/{j}")) { (j) } } @else { "-" } };
    page(
        StatusCode::OK,
        "Containers",
        html! {
            h1 { "Containers" }
            p { "Every container pvefleet made, as the agents list them (`pvefleet ls`); one no agent lists any more is kept as gone." }
            table #containers {
                thead { tr { th { "hostname" } th { "node" } th { "vmid" } th { "state" } th { "status" } th { "ip" } th { "made by" } th { "last job" } th { "drift" } } }
                tbody {
                    @for c in &rows {
                        tr.container data-state=(c.state) data-vmid=(c.vmid) {
                            td { @if c.state == "present" { a href=(format!("/containers/{}/{}", c.node, c.vmid)) { (c.hostname) } } @else { (c.hostname) } }
                            td { (c.node) } td { (c.vmid) }
                            td { span.state { (c.state) } @if let Some(at) = &c.gone_at { " since " (at) } }
                            td { (c.status) } td { (c.ip.clone().unwrap_or_default()) }
                            td { (job(&c.create_job)) } td { (job(&c.last_job)) }
                            td { @if c.drift { "changed outside pvefleet" } }
                        }
                    }
                }
            }
        },
    )
}

/// The audit trail as the recorder keeps it: every decision on a request and every admin
/// action, newest first, with who signed it and the rule that refused it.
pub async fn audit(State(web): State<Web>) -> Response {
    let records = match web.store.audit(500).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    page(
        StatusCode::OK,
        "Audit",
        html! {
            h1 { "Audit" }
            p { "Every decision an agent made on a request, and every admin action (the latest " (records.len()) "; `pvefleet audit` reads them all)." }
            table #audit {
                thead { tr { th { "at" } th { "node" } th { "action" } th { "decision" } th { "job" } th { "signer" } th { "user" } th { "rule" } th { "message" } } }
                tbody {
                    @for r in &records {
                        tr.audit data-decision=(r.decision) {
                            td { (r.at) } td { (r.node.clone().unwrap_or_default()) } td { (r.action) }
                            td { span.decision { (r.decision) } }
                            td { @if let Some(j) = &r.job_id { a href=(format!("/jobs/{j}")) { (j) } } }
                            td.signer title=(r.signer.clone().unwrap_or_default()) {
                                (r.signer_name.clone().or_else(|| r.signer.clone()).unwrap_or_else(|| "unsigned".into()))
                            }
                            td.user { (r.user_name.clone().unwrap_or_default()) }
                            td { (r.rule.clone().unwrap_or_default()) } td { (r.message) }
                        }
                    }
                }
            }
        },
    )
}

pub async fn job(State(web): State<Web>, Path(id): Path<String>) -> Response {
    let Ok(job_id) = id.parse::<JobId>() else { return not_found(&format!("`{id}` is not a job id")) };
    let row = match web.store.job(&job_id).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let Some(row) = row else {
        return not_found(&format!("no job {job_id} in the store"));
    };
    // The store keeps the spec without its root password; pretty-printed, escaped.
    let spec = serde_json::from_str::<serde_json::Value>(&row.spec)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_default();
    page(
        StatusCode::OK,
        &row.hostname,
        html! {
            h1 { (row.hostname) " " span.state #state { (row.state) } }
            p.meta { "job " code { (row.job_id) } " · " (row.kind) " on " (row.node)
                @if let Some(t) = &row.template { " · template " (t) } }
            (super::frame::job_live(&row.job_id))
            (super::act::job_actions(&row))
            details { summary { "Spec" } pre #spec { (spec) } }
        },
    )
}
