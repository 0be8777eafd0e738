//! The coordinator's side of NATS: connecting, and reading a job's events from the first.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use pvefleet_schemas::names::{EVENTS_STREAM, job_events_filter};
use pvefleet_schemas::{Event, JobId};

/// The last permissions violation the server reported on this process's connection. NATS
/// drops a refused publish silently (the publisher only sees its ack never come), so this is
/// how a CLI tells "not allowed" from "the cluster is slow" and says so.
static REFUSED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// What the server refused this process, if anything (`Permissions Violation for Publish to …`).
pub fn refused() -> Option<String> {
    REFUSED.lock().ok()?.clone()
}

/// Connects once (a CLI should fail fast, with the URL in the message).
pub async fn connect(urls: &str, creds: Option<&std::path::Path>) -> anyhow::Result<async_nats::Client> {
    let addrs: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--nats-url `{}`", pvefleet_schemas::redact_urls(urls)))?;
    let mut opts = async_nats::ConnectOptions::new()
        .name("pvefleet")
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            if let async_nats::Event::ServerError(async_nats::ServerError::Other(message)) = &event
                && message.to_ascii_lowercase().contains("permissions violation")
                && let Ok(mut refused) = REFUSED.lock()
            {
                *refused = Some(message.clone());
            }
        });
    if let Some(addr) = addrs.iter().find(|a| a.username().is_some()) {
        opts = opts
            .user_and_password(addr.username().unwrap_or_default().into(), addr.password().unwrap_or_default().into());
    }
    if let Some(creds) = creds {
        opts = opts.credentials_file(creds).await.with_context(|| format!("reading {}", creds.display()))?;
    }
    opts.connect(addrs).await.with_context(|| format!("connecting to NATS at {}", pvefleet_schemas::redact_urls(urls)))
}

/// A job's events from the first, then as they come.
pub struct EventFeed {
    messages: consumer::pull::Stream,
    /// Events already stored when the feed opened.
    pub pending_at_open: u64,
}

impl std::fmt::Debug for EventFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFeed").field("pending_at_open", &self.pending_at_open).finish_non_exhaustive()
    }
}

impl EventFeed {
    /// Opens the feed; while a cluster elects a new leader (a server just died) JetStream
    /// calls time out for a few seconds, so those are retried for up to half a minute.
    pub async fn open(js: &jetstream::Context, job: &JobId) -> anyhow::Result<Self> {
        use backon::{ExponentialBuilder, Retryable as _};
        let retry = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(3))
            .with_total_delay(Some(Duration::from_secs(30)))
            .without_max_times();
        (|| Self::open_once(js, job))
            .retry(retry)
            .when(|e| format!("{e:#}").contains("timed out"))
            .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "JetStream not answering; retrying"))
            .await
    }

    async fn open_once(js: &jetstream::Context, job: &JobId) -> anyhow::Result<Self> {
        let stream = js.get_stream(EVENTS_STREAM).await.context("the events stream (run `pvefleet setup`)")?;
        let mut consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: job_events_filter(job),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await?;
        let pending_at_open = consumer.info().await?.num_pending;
        let messages = consumer.messages().await?;
        Ok(Self { messages, pending_at_open })
    }

    pub async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        match self.messages.next().await {
            None => Ok(None),
            Some(m) => {
                let m = m.map_err(|e| anyhow::anyhow!("reading events: {e}"))?;
                Ok(Some(Event::decode(&m.payload)?))
            }
        }
    }
}
