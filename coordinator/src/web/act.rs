//! Acting from the browser: the new-container form (a plan first, then the submit), and each
//! container's and job's actions. Each action runs the very verb an operator would run
//! (`pvefleet submit`, `plan`, `cancel`, `destroy`, `start`, `snapshot`, …) as a child
//! process of this server, with this server's identity and `--acting-user` naming the user: the
//! same validation and the same errors (shown beside the field they name), the root password
//! sealed to the node's agent and never stored, the job recorded and published once, signed
//! by the web view's key with the user in the signed bytes, so each agent's policy decides
//! and its audit record names the user. The child gets the password in its environment, never
//! on its command line.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};

use super::Web;
use super::frame::{failed, forbidden, not_found, page};
use super::runner::{Acting, Ran};
use super::session::{csrf_field, who};

pub fn routes() -> Router<Web> {
    Router::new()
        .route("/new", get(new_form).post(new_post))
        .route("/containers/{node}/{vmid}", get(container))
        .route("/containers/{node}/{vmid}/keeping", get(keeping))
        .route("/containers/{node}/{vmid}/{action}", post(container_action))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/retry", post(retry))
}

/// The user acting now and how, or the page saying why nothing can be done.
#[allow(clippy::result_large_err, reason = "the refusal is the handler's answer, returned at once")]
fn actor(web: &Web) -> Result<(&Acting, String), Response> {
    // The gate checked the role already; checked again here, where the action is.
    let Some(me) = who().acting().cloned() else {
        return Err(forbidden("log in as an operator to act"));
    };
    match web.acting.as_ref() {
        Ok(acting) => Ok((acting, me.name)),
        Err(why) => Err(forbidden(&format!("this server cannot act: {why}"))),
    }
}

/// The form fields of "New container", in the order shown, with the flag each becomes.
const FIELDS: [(&str, &str, &str); 12] = [
    ("template", "--template", "template"),
    ("hostname", "--hostname", "hostname (or a pattern with {n})"),
    ("count", "--count", "how many"),
    ("node", "--node", "node"),
    ("ostemplate", "--ostemplate", "OS template (when no template gives one)"),
    ("ip", "--ip", "IP (dhcp or address/prefix; {n} with a count)"),
    ("gw", "--gw", "gateway"),
    ("memory", "--memory", "memory (MiB)"),
    ("cores", "--cores", "cores"),
    ("disk", "--disk", "disk (GB)"),
    ("storage", "--storage", "storage"),
    ("bridge", "--bridge", "bridge"),
];

type Fields = BTreeMap<String, String>;

/// A form value that clap would take for a flag: no value the CLI takes begins with `-`.
fn flag_like(fields: &Fields) -> Option<String> {
    fields
        .iter()
        .find(|(k, v)| k.as_str() != "csrf" && v.trim_start().starts_with('-'))
        .map(|(k, v)| format!("{k}: `{v}` may not begin with `-`"))
}

/// The verb's arguments from the form: every field given, as its flag.
fn submit_args(fields: &Fields) -> Vec<String> {
    let mut args = Vec::new();
    for (name, flag, _) in FIELDS {
        if let Some(v) = fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            if name == "count" && v == "1" {
                continue;
            }
            args.push(flag.to_owned());
            args.push(v.to_owned());
        }
    }
    args
}

/// The form field an error names (`invalid --template: …`, `invalid container.memory: …`),
/// if any: the CLI names a flag or the spec's field.
fn field_of(error: &str) -> Option<&'static str> {
    for word in error.split(|c: char| c.is_whitespace() || c == ':' || c == ',') {
        if word == "--password-env" {
            return Some("password");
        }
        let name = match (word.strip_prefix("--"), word.strip_prefix("container.")) {
            (Some(flag), _) => flag,
            (_, Some(field)) => field.split(['.', '[']).next().unwrap_or_default(),
            _ => continue,
        };
        if let Some((field, _, _)) = FIELDS.iter().find(|(f, _, _)| *f == name) {
            return Some(field);
        }
    }
    None
}

struct NewPage<'a> {
    fields: &'a Fields,
    /// The plan's verdict and what it said, when one was asked.
    plan: Option<(bool, String)>,
    error: Option<String>,
}

async fn new_page(web: &Web, p: NewPage<'_>) -> Response {
    let templates = web.store.templates().await.unwrap_or_default();
    let beats = crate::bus::heartbeats(&web.js).await.unwrap_or_default();
    let value = |name: &str| p.fields.get(name).cloned().unwrap_or_default();
    let error_field = p.error.as_deref().and_then(field_of);
    let planned_ok = p.plan.as_ref().is_some_and(|(ok, _)| *ok);
    let can_act = who().acting().is_some() && web.acting.is_ok();
    let markup = html! {
        h1 { "New container" }
        @if !can_act { p.error { "You may look, not act: log in as an operator (and the server needs an identity)." } }
        @if let (Some(e), None) = (&p.error, error_field) { p.error #form-error { (e) } }
        form #new method="post" action="/new" {
            (csrf_field())
            @for (name, _, label) in FIELDS {
                p.field {
                    label for=(name) { (label) } " "
                    @if name == "template" {
                        select #template name="template" {
                            option value="" { "(none)" }
                            @for t in &templates {
                                option value=(t.name) selected[value("template") == t.name] { (t.name) }
                            }
                        }
                    } @else if name == "node" {
                        select #node name="node" {
                            option value="auto" { "auto (most free memory that fits)" }
                            @for b in &beats {
                                option value=(b.node.as_str()) selected[value("node") == b.node.as_str()] {
                                    (b.node.as_str())
                                    @if let Some(c) = &b.capacity {
                                        " — " (c.memory_free_bytes >> 20) " MiB free"
                                        @for s in &c.storages { ", " (s.storage) " " (s.avail_bytes >> 30) " GiB" }
                                    }
                                }
                            }
                        }
                    } @else {
                        input id=(name) name=(name) value=(value(name));
                    }
                    @if error_field == Some(name) { " " span.field-error id=(format!("{name}-error")) { (p.error.clone().unwrap_or_default()) } }
                }
            }
            p.field {
                label for="password" { "root password (optional; sealed to the node's agent, never stored)" } " "
                input #password name="password" type="password" autocomplete="new-password";
                @if error_field == Some("password") { " " span.field-error #password-error { (p.error.clone().unwrap_or_default()) } }
            }
            p {
                button #plan name="op" value="plan" type="submit" disabled[!can_act] { "Check (plan)" } " "
                button #create name="op" value="submit" type="submit" disabled[!(can_act && planned_ok)] { "Create" }
                @if !planned_ok { " " span.hint { "Create is enabled once a plan of these values passes." } }
            }
        }
        @if !templates.is_empty() {
            details #template-defaults { summary { "What each template gives" }
                @for t in &templates { h3 { (t.name) } pre { (t.spec) } } }
        }
        @if let Some((ok, text)) = &p.plan {
            section #plan-result data-ok=(ok) { h2 { "Plan: " @if *ok { "every check passes" } @else { "failed" } } pre { (text) } }
        }
    };
    let status = if p.error.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    page(status, "New container", markup)
}

pub async fn new_form(State(web): State<Web>) -> Response {
    new_page(&web, NewPage { fields: &Fields::new(), plan: None, error: None }).await
}

pub async fn new_post(State(web): State<Web>, Form(mut fields): Form<Fields>) -> Response {
    let (acting, user) = match actor(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let password = zeroize::Zeroizing::new(fields.remove("password").unwrap_or_default());
    fields.remove("csrf");
    let op = fields.remove("op").unwrap_or_default();
    if let Some(why) = flag_like(&fields) {
        return new_page(&web, NewPage { fields: &fields, plan: None, error: Some(why) }).await;
    }
    let args = submit_args(&fields);
    // Always the plan first: a submit whose plan fails is not sent.
    let mut plan_args = vec!["plan".to_owned()];
    plan_args.extend(args.iter().cloned());
    let planned = match acting.run(&user, &plan_args, None).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    if planned.code == Some(2) {
        return new_page(&web, NewPage { fields: &fields, plan: None, error: Some(planned.error()) }).await;
    }
    let text = if planned.stdout.trim().is_empty() { planned.error() } else { planned.stdout.clone() };
    if op != "submit" || !planned.ok {
        return new_page(&web, NewPage { fields: &fields, plan: Some((planned.ok, text)), error: None }).await;
    }
    let mut submit = vec!["submit".to_owned(), "--json".to_owned()];
    submit.extend(args);
    if !password.is_empty() {
        submit.extend(["--password-env".to_owned(), "PVEFLEET_WEB_ROOT_PASSWORD".to_owned()]);
    }
    let ran = match acting.run(&user, &submit, (!password.is_empty()).then_some(password.as_str())).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    if !ran.ok {
        return new_page(&web, NewPage { fields: &fields, plan: Some((true, text)), error: Some(ran.error()) }).await;
    }
    match ran.job_ids().as_slice() {
        [one] => Redirect::to(&format!("/jobs/{one}")).into_response(),
        _ => Redirect::to("/jobs").into_response(),
    }
}

/// An action not done, and why.
fn not_done(status: StatusCode, why: &str, back: &str) -> Response {
    page(status, "Not done", html! { h1 { "Not done" } p.error #action-error { (why) } p { a href=(back) { "back" } } })
}

/// Container `vmid` on `node` as the inventory has it, or the page saying it is not there.
async fn listed(web: &Web, node: &str, vmid: u32) -> Result<pvefleet_schemas::InventoryEntry, Response> {
    let entries = crate::inventory::read(&web.js).await.map_err(failed)?;
    entries.into_iter().find(|e| e.node.as_str() == node && e.vmid.get() == vmid).ok_or_else(|| {
        not_found(&format!("no container {vmid} of pvefleet's on {node} (it may be gone or have moved)"))
    })
}

/// The outcome of an action that makes one job: its live page, or the error where it was asked.
fn acted(ran: &Ran, back: &str) -> Response {
    if ran.ok {
        if let Some(id) = ran.job_ids().first() {
            return Redirect::to(&format!("/jobs/{id}")).into_response();
        }
        return Redirect::to(back).into_response();
    }
    let status = if ran.code == Some(2) { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::BAD_GATEWAY };
    not_done(status, &ran.error(), back)
}

pub async fn cancel(State(web): State<Web>, Path(id): Path<String>) -> Response {
    let (acting, user) = match actor(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Ok(job) = id.parse::<pvefleet_schemas::JobId>() else { return not_found(&format!("`{id}` is not a job id")) };
    let back = format!("/jobs/{job}");
    match acting.run(&user, &["cancel".to_owned(), job.to_string()], None).await {
        Ok(ran) => acted(&ran, &back),
        Err(e) => failed(e),
    }
}

pub async fn retry(State(web): State<Web>, Path(id): Path<String>) -> Response {
    let (acting, user) = match actor(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Ok(job) = id.parse::<pvefleet_schemas::JobId>() else { return not_found(&format!("`{id}` is not a job id")) };
    match acting.run(&user, &["retry".to_owned(), job.to_string(), "--json".to_owned()], None).await {
        Ok(ran) => acted(&ran, &format!("/jobs/{job}")),
        Err(e) => failed(e),
    }
}

/// The actions of a job's page, for those who may act.
pub fn job_actions(row: &crate::store::job::Model) -> Markup {
    if who().acting().is_none() {
        return html! {};
    }
    html! {
        section #actions {
            @if row.state.is_live() {
                form method="post" action=(format!("/jobs/{}/cancel", row.job_id)) {
                    (csrf_field())
                    button #cancel type="submit" { "Cancel this job" }
                }
            }
            @if matches!(row.state.as_str(), "failed" | "cancelled") {
                form method="post" action=(format!("/jobs/{}/retry", row.job_id)) {
                    (csrf_field())
                    button #retry type="submit" { "Try again (a new job, linked to this one)" }
                }
            }
            @if let (Some(vmid), true) = (row.vmid, row.kind.makes_containers() && row.state.as_str() == "succeeded") {
                p { a #container-link href=(format!("/containers/{}/{vmid}", row.node)) { "Act on its container" } }
            }
        }
    }
}

pub async fn container(State(web): State<Web>, Path((node, vmid)): Path<(String, u32)>) -> Response {
    let c = match listed(&web, &node, vmid).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let beats = crate::bus::heartbeats(&web.js).await.unwrap_or_default();
    let base = format!("/containers/{node}/{vmid}");
    let can = who().acting().is_some();
    let button = |action: &str, label: &str| {
        html! { form.inline method="post" action=(format!("{base}/{action}")) { (csrf_field()) button id=(action) type="submit" { (label) } } }
    };
    let latest = c.last_job.or(c.create_job).map(|j| j.to_string());
    let markup = html! {
        h1 { (c.hostname) " " span.state { (c.status) } }
        p.meta { "vmid " (vmid) " on " (node) " · ip " (c.ip.clone().unwrap_or_else(|| "-".into()))
            @if let Some(j) = &c.create_job { " · made by " a href=(format!("/jobs/{j}")) { (j) } }
            @if let Some(j) = &c.last_job { " · last job " a href=(format!("/jobs/{j}")) { (j) } } }
        @if can {
            section #actions {
                h2 { "Power" }
                p { (button("start", "Start")) " " (button("shutdown", "Shut down")) " " (button("stop", "Stop")) " " (button("reboot", "Reboot")) }
                h2 { "Change" }
                form method="post" action=(format!("{base}/update")) { (csrf_field())
                    label { "memory (MiB) " input #update-memory name="memory" size="6" value=(c.memory_mb.map(|m| m.to_string()).unwrap_or_default()); } " "
                    label { "cores " input #update-cores name="cores" size="3" value=(c.cores.map(|m| m.to_string()).unwrap_or_default()); } " "
                    label { input name="snapshot_before" type="checkbox" value="1"; " snapshot first, roll back on failure" } " "
                    button #update type="submit" { "Apply" } }
                form method="post" action=(format!("{base}/resize")) { (csrf_field())
                    label { "grow disk " input #resize-disk name="disk" value="rootfs" size="8"; } " "
                    label { "to " input #resize-size name="size" placeholder="12G" size="6" required; } " "
                    button #resize type="submit" { "Grow" } }
                h2 { "Snapshot" }
                form method="post" action=(format!("{base}/snapshot")) { (csrf_field())
                    label { "name (optional) " input #snapshot-name name="name"; } " " button #snapshot type="submit" { "Take a snapshot" } }
                form method="post" action=(format!("{base}/rollback")) { (csrf_field())
                    label { "snapshot " input #rollback-name name="name" required; } " "
                    label { input name="start" type="checkbox" value="1"; " start it after" } " "
                    button #rollback type="submit" { "Roll back" } }
                h2 { "Backup" }
                form method="post" action=(format!("{base}/backup")) { (csrf_field())
                    label { "storage " input #backup-storage name="storage" value="local" required; } " "
                    label { "mode " select name="mode" { option { "snapshot" } option { "suspend" } option { "stop" } } } " "
                    label { "keep the last " input name="keep_last" size="3"; } " "
                    label { input name="protected" type="checkbox" value="1"; " protected" } " "
                    button #backup type="submit" { "Back up" } }
                p { a #keeping href=(format!("{base}/keeping")) { "Its snapshots and backups: roll back, delete, restore" } }
                h2 { "Move" }
                form method="post" action=(format!("{base}/move")) { (csrf_field())
                    label { "to " select #move-to name="to" { @for b in beats.iter().filter(|b| b.node.as_str() != node) { option { (b.node.as_str()) } } } } " "
                    button #move type="submit" { "Move" } }
                h2 { "Destroy" }
                form method="post" action=(format!("{base}/destroy")) { (csrf_field())
                    label { "type its hostname, " strong { (c.hostname) } ", to confirm " input #confirm name="confirm" autocomplete="off" required; } " "
                    button #destroy.danger type="submit" { "Destroy" } }
            }
        }
        @if let Some(j) = &latest {
            h2 { "Its last job, " a href=(format!("/jobs/{j}")) { (j) } }
            (super::frame::job_live(j))
        }
    };
    page(StatusCode::OK, &c.hostname, markup)
}

pub async fn container_action(
    State(web): State<Web>,
    Path((node, vmid, action)): Path<(String, u32, String)>,
    Form(form): Form<Fields>,
) -> Response {
    let (acting, user) = match actor(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let back = format!("/containers/{node}/{vmid}");
    if let Some(why) = flag_like(&form).or_else(|| node.starts_with('-').then(|| format!("node `{node}`"))) {
        return not_done(StatusCode::UNPROCESSABLE_ENTITY, &why, &back);
    }
    let target = vec!["--node".to_owned(), node.clone(), "--vmid".to_owned(), vmid.to_string(), "--json".to_owned()];
    let field = |k: &str| form.get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let mut args = match action.as_str() {
        "start" | "shutdown" | "stop" | "reboot" | "backup" | "move" | "snapshot" | "rollback" | "update"
        | "resize" => {
            vec![action.clone()]
        }
        "snapshot-delete" => vec!["snapshot".to_owned(), "delete".to_owned()],
        "restore" => {
            // Not a verb on a target: the backup is the word, the container is where it goes.
            let Some(backup) = field("backup") else {
                return not_done(StatusCode::UNPROCESSABLE_ENTITY, "which backup?", &back);
            };
            let mut args = vec!["restore".to_owned(), "--json".to_owned()];
            match field("hostname") {
                Some(hostname) => args.extend(["--hostname".to_owned(), hostname, "--node".to_owned(), node.clone()]),
                None => {
                    let c = match listed(&web, &node, vmid).await {
                        Ok(c) => c,
                        Err(r) => return r,
                    };
                    let over = c.create_job.map_or_else(|| c.hostname.clone(), |j| j.to_string());
                    args.extend(["--over".to_owned(), over]);
                }
            }
            args.extend(["--".to_owned(), backup]);
            return match acting.run(&user, &args, None).await {
                Ok(ran) => acted(&ran, &back),
                Err(e) => failed(e),
            };
        }
        "destroy" => {
            let c = match listed(&web, &node, vmid).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            if field("confirm").as_deref() != Some(c.hostname.as_str()) {
                let why = format!("type the container's hostname, {}, to destroy it", c.hostname);
                return not_done(StatusCode::UNPROCESSABLE_ENTITY, &why, &back);
            }
            vec!["destroy".to_owned()]
        }
        other => return not_found(&format!("no action `{other}`")),
    };
    args.extend(target);
    match action.as_str() {
        "snapshot" => args.extend(field("name").map(|n| ["--name".to_owned(), n]).into_iter().flatten()),
        "snapshot-delete" => args.extend(["--".to_owned(), field("name").unwrap_or_default()]),
        "rollback" => {
            if field("start").is_some() {
                args.push("--start".to_owned());
            }
            args.extend(["--".to_owned(), field("name").unwrap_or_default()]);
        }
        "backup" => {
            args.extend(["--storage".to_owned(), field("storage").unwrap_or_default()]);
            args.extend(field("mode").map(|m| ["--mode".to_owned(), m]).into_iter().flatten());
            args.extend(field("keep_last").map(|k| ["--keep-last".to_owned(), k]).into_iter().flatten());
            if field("protected").is_some() {
                args.push("--protected".to_owned());
            }
        }
        "move" => args.extend(["--to".to_owned(), field("to").unwrap_or_default()]),
        "update" => {
            for flag in ["memory", "cores"] {
                if let Some(v) = field(flag) {
                    args.extend([format!("--{flag}"), v]);
                }
            }
            if field("snapshot_before").is_some() {
                args.extend(["--snapshot-before".to_owned(), "--on-failure".to_owned(), "rollback".to_owned()]);
            }
        }
        "resize" => args.extend([
            "--".to_owned(),
            format!("{}={}", field("disk").unwrap_or_default(), field("size").unwrap_or_default()),
        ]),
        _ => {}
    }
    match acting.run(&user, &args, None).await {
        Ok(ran) => acted(&ran, &back),
        Err(e) => failed(e),
    }
}

/// A container's snapshots and backups, asked of its agent (read only), each with what can be
/// done with it.
pub async fn keeping(State(web): State<Web>, Path((node, vmid)): Path<(String, u32)>) -> Response {
    let (acting, user) = match actor(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if node.starts_with('-') {
        return not_found(&format!("no node `{node}`"));
    }
    let base = format!("/containers/{node}/{vmid}");
    let mut lists = Vec::new();
    for verb in ["snapshots", "backups"] {
        let args = [verb, "--node", &node, "--vmid", &vmid.to_string(), "--json"].map(str::to_owned);
        let ran = match acting.run(&user, &args, None).await {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        if !ran.ok {
            return not_done(StatusCode::BAD_GATEWAY, &ran.error(), &base);
        }
        let items: Vec<pvefleet_schemas::event::Listed> = serde_json::from_str(ran.stdout.trim()).unwrap_or_default();
        lists.push(items);
    }
    let when = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map(|t| pvefleet_schemas::Timestamp(t).to_string())
            .unwrap_or_default()
    };
    let markup = html! {
        h1 { "Snapshots and backups of " a href=(base) { (vmid) } " on " (node) }
        h2 { "Snapshots" }
        table #snapshots { thead { tr { th { "name" } th { "taken" } th { "by job" } th {} } }
            tbody { @for s in &lists[0] {
                tr data-snapshot=(s.name) { td { (s.name) } td { (when(s.time)) }
                    td { @if let Some(j) = s.job { a href=(format!("/jobs/{j}")) { (j) } } }
                    td {
                        form.inline method="post" action=(format!("{base}/rollback")) { (csrf_field())
                            input type="hidden" name="name" value=(s.name); button.rollback type="submit" { "Roll back to it" } } " "
                        form.inline method="post" action=(format!("{base}/snapshot-delete")) { (csrf_field())
                            input type="hidden" name="name" value=(s.name); button.delete type="submit" { "Delete" } }
                    } }
            } } }
        h2 { "Backups" }
        table #backups { thead { tr { th { "volume" } th { "taken" } th { "by job" } th {} } }
            tbody { @for b in &lists[1] {
                tr data-backup=(b.name) { td { (b.name) @if b.protected { " (protected)" } } td { (when(b.time)) }
                    td { @if let Some(j) = b.job { a href=(format!("/jobs/{j}")) { (j) } } }
                    td {
                        form.inline method="post" action=(format!("{base}/restore")) { (csrf_field())
                            input type="hidden" name="backup" value=(b.name);
                            button.restore-over type="submit" { "Restore over it (what it wrote since is lost)" } } " "
                        form.inline method="post" action=(format!("{base}/restore")) { (csrf_field())
                            input type="hidden" name="backup" value=(b.name);
                            input name="hostname" placeholder="new hostname" required; " "
                            button.restore-new type="submit" { "Restore as a new container" } }
                    } }
            } } }
    };
    page(StatusCode::OK, "Snapshots and backups", markup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_shown_beside_the_field_its_flag_names() {
        assert_eq!(field_of("job 1 of 1: invalid container.memory: 0 MB is below the minimum"), Some("memory"));
        assert_eq!(field_of("invalid --template: no template named `nope`"), Some("template"));
        assert_eq!(field_of("job 1 of 1: invalid container.gw: 10.9.9.9 is not a host"), Some("gw"));
        assert_eq!(field_of("invalid --count: 0 is outside 1..=1000"), Some("count"));
        assert_eq!(field_of("the agent of pve1 did not answer"), None);
        let mut fields = Fields::new();
        fields.insert("csrf".into(), "-token".into());
        assert_eq!(flag_like(&fields), None, "the CSRF token is not passed on");
        fields.insert("hostname".into(), "--acting-user=bob".into());
        assert!(flag_like(&fields).is_some_and(|why| why.starts_with("hostname")));
        fields.remove("csrf");
        fields.insert("hostname".into(), "web-{n}".into());
        fields.insert("count".into(), "3".into());
        fields.insert("memory".into(), " ".into());
        assert_eq!(submit_args(&fields), ["--hostname", "web-{n}", "--count", "3"]);
    }
}
