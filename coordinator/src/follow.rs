//! Following jobs: a job's events replayed from the first and followed to its end (a line
//! each, a progress bar on a terminal, or JSON), one job or many at once, and whatever a
//! container printed made safe for the operator's terminal.

use std::io::IsTerminal as _;

use async_nats::jetstream;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pvefleet_schemas::{Event, EventType, JobId, NodeName};

use crate::bus::EventFeed;
use crate::cli::Cli;
use crate::store::Store;
use crate::{Failure, Outcome};

/// Replays job `id`'s events from the first, then follows it to its end: one line per event
/// (a progress bar on a terminal, JSON with `json`). Succeeds only if the job did.
pub async fn follow(cli: &Cli, id: JobId, json: bool) -> Outcome {
    // The store knows the job's node (a watcher without one follows any node's subject and
    // keeps to the node of the job's first event).
    let stored = match crate::open_store(cli).await {
        Ok(store) => store.job(&id).await?,
        Err(_) => None,
    };
    let node = stored.as_ref().and_then(|row| NodeName::new(&row.node).ok());
    let client = crate::bus::connect(cli).await?;
    let js = jetstream::new(client.clone());
    let mut feed = EventFeed::open(&client, &js, &id, node).await?;
    if !feed.had_events && stored.is_none() {
        // No events yet and not in the store: no such job (a queued one is in the store).
        return Err(Failure::Usage(format!("unknown job {id}: no events and not in the store")));
    }
    let bar = (!json && std::io::stdout().is_terminal()).then(|| {
        let bar = ProgressBar::new(100);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos:>3}% {prefix:12} {wide_msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar.set_message("queued: waiting for an agent");
        bar
    });
    while let Some(event) = feed.next().await? {
        if json {
            println!("{}", serde_json::to_string(&event).expect("an event serializes"));
        } else if let Some(bar) = &bar {
            show_on_bar(bar, &event);
        } else {
            println!("{}", line(&event));
        }
        if event.is_terminal() {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
                println!("{}", line(&event));
            }
            return match event.kind {
                EventType::Complete => Ok(()),
                _ => Err(Failure::Quiet),
            };
        }
    }
    Err(anyhow::anyhow!("the event feed ended before the job did").into())
}

/// How every verb that publishes one job ends: its id (its JSON with `json`), then, with
/// `watch`, the job followed to its end.
pub async fn print_then_follow(cli: &Cli, job_id: &str, job_json: &str, json: bool, watch: bool) -> Outcome {
    println!("{}", if json { job_json } else { job_id });
    if watch {
        return follow(cli, crate::job_id(job_id)?, json).await;
    }
    Ok(())
}

fn show_on_bar(bar: &ProgressBar, e: &Event) {
    bar.set_position(u64::from(e.percent));
    if let Some(step) = e.step {
        bar.set_prefix(step.as_str().to_owned());
    }
    match e.kind {
        // Log lines go above the bar, so the whole output stays readable.
        EventType::Log | EventType::Warning => {
            bar.println(line(e));
            bar.set_message(printable(&e.message));
        }
        _ => bar.set_message(printable(&e.message)),
    }
}

/// `text` safe to print on an operator's terminal: control characters (escape sequences that
/// could move the cursor, retitle the window, rewrite what is shown or answer back) and
/// Unicode's bidirectional overrides are written out as `\x1b`, `\u{202e}`; newlines and tabs
/// stay. What a container prints is the container's to say, not to do.
pub fn printable(text: &str) -> String {
    let risky = |c: char| {
        (c.is_control() && c != '\n' && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(risky) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if risky(c) {
            if (c as u32) < 0x100 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One event as a line of text.
pub fn line(e: &Event) -> String {
    let step = e.step.map(|s| s.as_str()).unwrap_or("-");
    let what = match (e.kind, e.stream) {
        (EventType::Log, Some(stream)) => {
            serde_json::to_value(stream).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        }
        (kind, _) => serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
    };
    let mut text = format!("{:>4} {:>3}% {step:<12} {what:<8} {}", e.seq, e.percent, printable(&e.message));
    if let Some(r) = &e.result
        && let Some(vmid) = r.vmid
    {
        text.push_str(&format!("  [vmid {vmid}{}]", r.ip.map(|ip| format!(", ip {ip}")).unwrap_or_default()));
    }
    text
}

/// Follows every job at once: a line each (a progress bar on a terminal), then a summary.
/// Succeeds only if every job did.
pub async fn follow_all(
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
                        printable(&event.message)
                    ));
                }
                if event.is_terminal() {
                    let ok = event.kind == EventType::Complete;
                    match &bar {
                        Some(bar) => bar.finish(),
                        // Without a terminal (a log, a CI job) each job says how it ended as it ends.
                        None if !json => {
                            let how = if ok { "succeeded" } else { "failed" };
                            println!("{label} ({id}): {how}: {}", printable(&event.message));
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
            println!("  {label} ({id}): {}", printable(message));
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(Failure::Quiet) }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn what_a_container_prints_cannot_drive_the_terminal() {
        assert_eq!(printable("plain text\twith a tab"), "plain text\twith a tab");
        assert_eq!(printable("\x1b]0;pwned\x07\x1b[2J"), "\\x1b]0;pwned\\x07\\x1b[2J");
        assert_eq!(printable("over\rwritten"), "over\\x0dwritten");
        assert_eq!(printable("\u{9b}31m"), "\\x9b31m", "a C1 CSI");
        assert_eq!(printable("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(printable("two\nlines"), "two\nlines");
    }
}
