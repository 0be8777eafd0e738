//! `pvefleet submit --count N`: N jobs from one spec. `{n}` in the hostname and the IP
//! addresses makes each its own; all N are built and validated before any is published (a bad
//! one publishes none); each has its own job id and, with `--request-id K`, the request
//! `K-<n>`, so running the same command again makes no job twice; `--node auto` places them
//! one by one, counting what the earlier ones take; `--watch` follows them all at once.

use std::io::IsTerminal as _;

use async_nats::jetstream;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pvefleet_schemas::{EventType, JobId, NodeName};

use super::submit::{Parts, Placed, password, place_job, publish, refill_secrets, seal_secrets, take_share};
use crate::cli::{Cli, SubmitArgs};
use crate::spec::{BadInput, container_from};
use crate::store::Store;
use crate::{Failure, Outcome};

/// At most this many jobs from one command.
const MAX_COUNT: u32 = 1000;

pub(crate) async fn run(cli: &Cli, args: &SubmitArgs, store: &Store, parts: Parts, count: u32) -> Outcome {
    let jobs = build_jobs(&parts, count)?;
    let clear_password = password(args)?;
    let client = crate::bus::connect(cli).await?;
    let js = jetstream::new(client.clone());
    let beats = if parts.node == "auto" { crate::bus::heartbeats(&js).await? } else { Vec::new() };
    // Every job is placed before any is published: one that fits nowhere publishes none.
    let mut placed = Placed::new();
    let mut plan = Vec::new();
    for (i, mut job) in jobs.into_iter().enumerate() {
        let request = args.request_id.as_ref().map(|k| format!("{k}-{}", i + 1));
        let existing = match &request {
            Some(key) => store.job_by_request(key).await?,
            None => None,
        };
        if let Some(existing) = &existing {
            count_placed(&mut placed, &existing.node, &existing.spec);
        } else {
            place_job(&mut job, parts.node == "auto", &beats, &mut placed, (i + 1, count))?;
        }
        plan.push((job, request, existing));
    }
    let mut ids = Vec::new();
    for (i, (mut job, request, existing)) in plan.into_iter().enumerate() {
        let n = i + 1;
        if let (Some(key), Some(existing)) = (&request, existing) {
            eprintln!("request {key} was submitted before as job {}", existing.job_id);
            if existing.stream_seq.is_none() && existing.state == crate::store::JobState::Queued {
                let mut again = pvefleet_schemas::Job::decode(existing.spec.as_bytes())
                    .map_err(|e| anyhow::anyhow!("stored job {}: {e}", existing.job_id))?;
                refill_secrets(&mut again, &parts.deploy)?;
                seal_secrets(store, &js, &mut again, clear_password.as_ref()).await?;
                store.set_stream_seq(&again.job_id, publish(&js, &again).await?).await?;
            }
            ids.push((existing.job_id.clone(), existing.spec.clone()));
            continue;
        }
        seal_secrets(store, &js, &mut job, clear_password.as_ref()).await?;
        let public = job.public();
        let public = serde_json::to_string(&public).expect("a job serializes");
        if let Err(existing) = store.insert_job(&job, request.as_deref()).await? {
            ids.push((existing.job_id.clone(), existing.spec.clone()));
            continue;
        }
        match publish(&js, &job).await {
            Ok(seq) => store.set_stream_seq(&job.job_id, seq).await?,
            Err(e) => {
                if request.is_none() {
                    store.delete_job(&job.job_id).await?;
                }
                for (id, _) in &ids {
                    println!("{id}");
                }
                eprintln!(
                    "{} of {count} jobs published (their ids above); job {n}, {}, failed{}",
                    n - 1,
                    job.job_id,
                    args.request_id.as_ref().map_or_else(
                        || "; give --request-id to be able to publish the rest by running the command again".to_owned(),
                        |k| format!("; run the same command (--request-id {k}) again to publish the rest")
                    )
                );
                return Err(e.into());
            }
        }
        ids.push((job.job_id.to_string(), public));
    }
    for (id, spec) in &ids {
        if args.json {
            println!("{spec}");
        } else {
            println!("{id}");
        }
    }
    if args.watch {
        let ids: Vec<JobId> = ids.iter().filter_map(|(id, _)| id.parse().ok()).collect();
        return watch_all(store, &client, &js, &ids, args.json).await;
    }
    Ok(())
}

/// The N jobs of `parts`, each with its `{n}` expanded, all validated: a bad one fails them
/// all, naming `job K of N`.
pub(crate) fn build_jobs(parts: &Parts, count: u32) -> Result<Vec<pvefleet_schemas::Job>, Failure> {
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(BadInput::field("--count", format!("{count} is outside 1..={MAX_COUNT}")).into());
    }
    let hostname = parts.container.get("hostname").and_then(toml::Value::as_str).unwrap_or_default();
    if count > 1 && !hostname.contains("{n") {
        return Err(BadInput::field(
            "--hostname",
            format!("`{hostname}` would name all {count} containers alike; put {{n}} in it (`web-{{n:02}}`)"),
        )
        .into());
    }
    if count > 1 && parts.container.contains_key("vmid") {
        return Err(BadInput::field("--vmid", "a fixed vmid fits one container, not --count of them").into());
    }
    let mut jobs = Vec::new();
    for n in 1..=count {
        let mut table = parts.container.clone();
        expand_table(&mut table, n)
            .map_err(|(field, e)| BadInput::field(&format!("job {n} of {count}: {field}"), e))?;
        let spec = container_from(table).map_err(|e| BadInput(format!("job {n} of {count}: {}", e.0)))?;
        let job = parts.job(spec, &parts.node).map_err(|e| match e {
            Failure::Usage(m) => Failure::Usage(format!("job {n} of {count}: {m}")),
            other => other,
        })?;
        jobs.push(job);
    }
    let statics: Vec<String> = jobs
        .iter()
        .filter_map(|j| {
            j.container.effective_nics().first().and_then(|n| match n.ip {
                Some(pvefleet_schemas::lxc::Ipv4Setting::Static { addr, .. }) => Some(addr.to_string()),
                _ => None,
            })
        })
        .collect();
    if let Some(dup) = statics.iter().enumerate().find(|(i, a)| statics[..*i].contains(a)).map(|(_, a)| a) {
        return Err(
            BadInput::field("--ip", format!("{dup} is given to two of the {count} jobs; put {{n+K}} in it")).into()
        );
    }
    Ok(jobs)
}

/// A job recorded before by the same command still takes its share of its node.
fn count_placed(placed: &mut Placed, node: &str, spec: &str) {
    if let (Ok(node), Ok(mut job)) = (NodeName::new(node), pvefleet_schemas::Job::decode(spec.as_bytes())) {
        job.node = node;
        take_share(placed, &job);
    }
}

/// `{n}`, `{n:03}`, `{n+20}` in the container table's hostname and IP addresses (the
/// first-version `ip` and each NIC's `ip` and `ip6`), as job `n` has them.
fn expand_table(table: &mut toml::Table, n: u32) -> Result<(), (String, String)> {
    for key in ["hostname", "ip"] {
        if let Some(toml::Value::String(text)) = table.get_mut(key) {
            *text = expand(text, n).map_err(|e| (key.to_owned(), e))?;
        }
    }
    if let Some(toml::Value::Array(nics)) = table.get_mut("nics") {
        for (i, nic) in nics.iter_mut().enumerate() {
            for key in ["ip", "ip6"] {
                if let Some(toml::Value::String(text)) = nic.get_mut(key) {
                    *text = expand(text, n).map_err(|e| (format!("nics[{i}].{key}"), e))?;
                }
            }
        }
    }
    Ok(())
}

/// Replaces each `{n}`, `{n+K}`, `{n-K}`, optionally with a zero-padded width (`{n:02}`,
/// `{n+20:03}`), by job `n`'s number.
fn expand(text: &str, n: u32) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{n") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("`{text}`: a `{{n` without its `}}`"))?;
        let inner = &after[..end];
        let (offset, width) = inner.split_once(':').unwrap_or((inner, ""));
        let value = match offset.chars().next() {
            None => i64::from(n),
            Some('+') | Some('-') => {
                let k: i64 =
                    offset.parse().map_err(|_| format!("`{{n{inner}}}` in `{text}`: `{offset}` is not +K or -K"))?;
                i64::from(n) + k
            }
            Some(_) => return Err(format!("`{{n{inner}}}` in `{text}`: write {{n}}, {{n+K}} or {{n:0W}}")),
        };
        let width: usize = if width.is_empty() {
            0
        } else {
            width
                .strip_prefix('0')
                .unwrap_or(width)
                .parse()
                .map_err(|_| format!("`{{n{inner}}}` in `{text}`: `{width}` is not a width like 02"))?
        };
        out.push_str(&format!("{value:0width$}"));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Follows every job at once: a line each (a progress bar on a terminal), then a summary.
/// Succeeds only if every job did.
async fn watch_all(
    store: &Store,
    client: &async_nats::Client,
    js: &jetstream::Context,
    ids: &[JobId],
    json: bool,
) -> Outcome {
    let bars = (!json && std::io::stdout().is_terminal()).then(MultiProgress::new);
    let style = ProgressStyle::with_template("{prefix:>18} [{bar:24}] {pos:>3}% {wide_msg}")
        .expect("a valid template")
        .progress_chars("=> ");
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let row = store.job(id).await?;
        let node = row.as_ref().and_then(|r| NodeName::new(&r.node).ok());
        let label = row.map_or_else(|| id.to_string(), |r| r.hostname);
        let bar = bars.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(100));
            bar.set_style(style.clone());
            bar.set_prefix(label.clone());
            bar.set_message("queued: waiting for an agent");
            bar
        });
        let mut feed = crate::bus::EventFeed::open(client, js, id, node).await?;
        let id = *id;
        tasks.spawn(async move {
            while let Some(event) = feed.next().await? {
                if json {
                    println!("{}", serde_json::to_string(&event).expect("an event serializes"));
                }
                if let Some(bar) = &bar {
                    bar.set_position(u64::from(event.percent));
                    bar.set_message(format!(
                        "{} {}",
                        event.step.map(|s| s.as_str()).unwrap_or("-"),
                        super::watch::printable(&event.message)
                    ));
                }
                if event.is_terminal() {
                    let ok = event.kind == EventType::Complete;
                    match &bar {
                        Some(bar) => bar.finish(),
                        // Without a terminal (a log, a CI job) each job says how it ended as it ends.
                        None if !json => {
                            let how = if ok { "succeeded" } else { "failed" };
                            println!("{label} ({id}): {how}: {}", super::watch::printable(&event.message));
                        }
                        None => {}
                    }
                    return anyhow::Ok((i, id, label, ok, event.message));
                }
            }
            anyhow::bail!("the event feed of job {id} ended before the job did")
        });
    }
    let mut ends = Vec::new();
    while let Some(done) = tasks.join_next().await {
        ends.push(done.map_err(anyhow::Error::from)??);
    }
    ends.sort_by_key(|e| e.0);
    let failed: Vec<_> = ends.iter().filter(|e| !e.3).collect();
    if !json {
        println!("{} of {} jobs succeeded, {} failed", ends.len() - failed.len(), ends.len(), failed.len());
        for (_, id, label, _, message) in &failed {
            println!("  {label} ({id}): {}", super::watch::printable(message));
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(Failure::Quiet) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_widths_and_offsets_expand() {
        assert_eq!(expand("web-{n}", 3).unwrap(), "web-3");
        assert_eq!(expand("web-{n:02}", 3).unwrap(), "web-03");
        assert_eq!(expand("10.0.0.{n+20}/24", 5).unwrap(), "10.0.0.25/24");
        assert_eq!(expand("h{n-1:03}-{n}", 2).unwrap(), "h001-2");
        assert_eq!(expand("plain", 9).unwrap(), "plain");
        assert!(expand("web-{n", 1).is_err());
        assert!(expand("web-{nx}", 1).is_err());
        assert!(expand("web-{n:zz}", 1).is_err());
    }
}
