//! `pvefleet watch JOB`: replay a job's events from the first, then follow it to its end,
//! whether it is queued, running or long finished.

use std::io::IsTerminal as _;

use async_nats::jetstream;
use indicatif::{ProgressBar, ProgressStyle};
use pvefleet_schemas::{Event, EventType, NodeName};

use crate::bus::EventFeed;
use crate::cli::Cli;
use crate::{Failure, Outcome};

pub async fn run(cli: &Cli, job: &str, json: bool) -> Outcome {
    let id = crate::job_id(job)?;
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
