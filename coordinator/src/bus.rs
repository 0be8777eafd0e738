//! The coordinator's side of NATS: connecting, and reading a job's events from the first.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use pvefleet_schemas::names::{NODES_BUCKET, event_subject, events_stream, events_stream_node, job_events_filter};
use pvefleet_schemas::{Event, Heartbeat, JobId, NodeName};

/// The last permissions violation the server reported on this process's connection. NATS
/// drops a refused publish silently (the publisher only sees its ack never come), so this is
/// how a CLI tells "not allowed" from "the cluster is slow" and says so.
static REFUSED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// What the server refused this process, if anything (`Permissions Violation for Publish to …`).
pub fn refused() -> Option<String> {
    REFUSED.lock().ok()?.clone()
}

/// NATS for one verb, connected at its first use: a verb that turns out to need none (a
/// request answered from the store) never dials it.
pub struct Nats<'a> {
    cli: &'a crate::cli::Cli,
    conn: tokio::sync::OnceCell<(async_nats::Client, jetstream::Context)>,
}

impl std::fmt::Debug for Nats<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats").field("connected", &self.conn.initialized()).finish_non_exhaustive()
    }
}

impl<'a> Nats<'a> {
    pub fn new(cli: &'a crate::cli::Cli) -> Self {
        Self { cli, conn: tokio::sync::OnceCell::new() }
    }

    async fn conn(&self) -> anyhow::Result<&(async_nats::Client, jetstream::Context)> {
        self.conn
            .get_or_try_init(|| async {
                let client = connect(self.cli).await?;
                anyhow::Ok((client.clone(), jetstream::new(client)))
            })
            .await
    }

    pub async fn client(&self) -> anyhow::Result<&async_nats::Client> {
        Ok(&self.conn().await?.0)
    }

    pub async fn js(&self) -> anyhow::Result<&jetstream::Context> {
        Ok(&self.conn().await?.1)
    }
}

/// Connects once (a CLI should fail fast, with the URL in the message).
pub async fn connect(cli: &crate::cli::Cli) -> anyhow::Result<async_nats::Client> {
    let (urls, creds) = (cli.nats_url.as_str(), cli.nats_creds.as_deref());
    let addrs: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--nats-url `{}`", pvefleet_schemas::redact_urls(urls)))?;
    // A `.creds` file is read again at every reconnect (`record` and `serve` run for long).
    let base = match creds {
        Some(creds) => pvefleet_schemas::creds::options(creds).map_err(|e| anyhow::anyhow!("--nats-creds: {e}"))?,
        None => async_nats::ConnectOptions::new(),
    };
    let mut opts =
        base.name("pvefleet").connection_timeout(Duration::from_secs(5)).event_callback(|event| async move {
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
    if let Some(prefix) = &cli.nats_inbox_prefix {
        opts = opts.custom_inbox_prefix(prefix);
    }
    if let Some(ca) = &cli.nats_ca {
        anyhow::ensure!(ca.is_file(), "--nats-ca: {} is not a file", ca.display());
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&cli.nats_cert, &cli.nats_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    opts.connect(addrs).await.with_context(|| format!("connecting to NATS at {}", pvefleet_schemas::redact_urls(urls)))
}

/// Whether a JetStream error is one a cluster gives while it elects a leader or a replica comes
/// back (a request that timed out, or found no one to answer), which passes.
fn is_electing(error: &str) -> bool {
    error.contains("timed out") || error.contains("no responders")
}

/// Makes `node`'s events stream if it is missing (before a job for the node is queued, so its
/// agent and the job's watchers find it); a stream there already is left as it is.
pub async fn ensure_events_stream(js: &jetstream::Context, node: &NodeName) -> anyhow::Result<()> {
    let name = events_stream(node);
    if js.get_stream(&name).await.is_ok() {
        return Ok(());
    }
    // As many copies as the jobs stream `pvefleet setup` made.
    let replicas = match js.get_stream(pvefleet_schemas::names::JOBS_STREAM).await {
        Ok(jobs) => jobs.cached_info().config.num_replicas.max(1),
        Err(_) => 1,
    };
    match js.create_stream(pvefleet_schemas::layout::events_stream(node, replicas)).await {
        Ok(_) => Ok(()),
        Err(e) if pvefleet_schemas::layout::made_meanwhile(&e) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("making the events stream {name} (run `pvefleet setup --node {node}`): {e}")),
    }
}

/// The nodes whose events streams exist, from the stream names.
pub async fn event_stream_nodes(js: &jetstream::Context) -> anyhow::Result<Vec<NodeName>> {
    use futures::TryStreamExt as _;
    let names: Vec<String> =
        js.stream_names().try_collect().await.map_err(|e| anyhow::anyhow!("listing the events streams: {e}"))?;
    Ok(names.iter().filter_map(|n| events_stream_node(n)).collect())
}

/// The live agents the registry shows, and the beats it does not believe, each with why.
#[derive(Debug, Default)]
pub struct Registry {
    pub beats: Vec<Heartbeat>,
    pub ignored: Vec<(String, String)>,
}

/// Every live, enrolled agent's heartbeat in `pvefleet-nodes` (see [`registry`]).
pub async fn heartbeats(js: &jetstream::Context) -> anyhow::Result<Vec<Heartbeat>> {
    Ok(registry(js).await?.beats)
}

/// Every heartbeat in `pvefleet-nodes`, read by direct gets over the bucket's stream (like the
/// event feed, this needs no consumer, so the read-only watcher may run it), believed only when
/// it is signed by the identity key an admin enrolled for its node, under its node's own key:
/// an agent's password, or an agent's key, cannot speak for another node, and an agent nobody
/// enrolled is not trusted on sight.
pub async fn registry(js: &jetstream::Context) -> anyhow::Result<Registry> {
    let bucket = format!("KV_{NODES_BUCKET}");
    js.get_stream(&bucket).await.map_err(|e| anyhow::anyhow!("the node registry (run `pvefleet setup`): {e}"))?;
    let mut registry = Registry::default();
    let latest = kv_latest(js, NODES_BUCKET).await.map_err(|e| anyhow::anyhow!("reading the node registry: {e}"))?;
    // A stopped agent deletes its entry: it is not in `latest`.
    for (key, msg) in latest {
        match believed(js, &key, &msg.payload).await {
            Ok(beat) => registry.beats.push(beat),
            Err(why) => {
                tracing::warn!(%key, %why, "a heartbeat not believed; ignored");
                registry.ignored.push((key, why));
            }
        }
    }
    registry.beats.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(registry)
}

/// Each live key of KV bucket `bucket` with its latest value, read by batched direct gets over
/// the bucket's stream (no consumer, so the read-only watcher may run it; a thousand messages a
/// round trip). The walk goes by sequence while writers go on: a key written
/// again during it is met twice (its old value, then its new one), and a key deleted during it
/// is met put, then deleted. So the last message met for each key is what counts, and a key
/// whose last message is a delete or purge marker is not there.
pub async fn kv_latest(
    js: &jetstream::Context,
    bucket: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, jetstream::message::StreamMessage>> {
    let prefix = format!("$KV.{bucket}.");
    let (stream, filter) = (format!("KV_{bucket}"), format!("{prefix}>"));
    let (mut latest, mut from) = (std::collections::BTreeMap::new(), 1u64);
    loop {
        let batch = direct_batch(js, &stream, &filter, from, KV_BATCH)
            .await
            .map_err(|e| anyhow::anyhow!("reading {bucket}: {e}"))?;
        let full = batch.len() == KV_BATCH;
        for msg in batch {
            from = msg.sequence + 1;
            let key = msg.subject.as_str().strip_prefix(&prefix).unwrap_or_default().to_owned();
            let put = msg.headers.get("KV-Operation").is_none_or(|op| op.as_str() == "PUT");
            meet(&mut latest, key, put.then_some(msg));
        }
        if !full {
            return Ok(latest);
        }
    }
}

/// The subjects of `stream` matching `filter` that hold messages, with how many each, in one
/// request per 100,000 (the server's page). What async-nats' `info_with_subjects` asks, read leaner: it
/// decodes the whole stream info into a map first, twice the time for 10,000 subjects (13 ms
/// against 6 ms, measured).
pub async fn stream_subjects(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> anyhow::Result<Vec<(String, u64)>> {
    #[derive(serde::Deserialize)]
    struct Page<'a> {
        #[serde(default)]
        error: Option<serde_json::Value>,
        #[serde(default)]
        total: usize,
        #[serde(borrow, default)]
        state: State<'a>,
    }
    #[derive(serde::Deserialize, Default)]
    struct State<'a> {
        #[serde(borrow, default)]
        subjects: Option<std::collections::HashMap<std::borrow::Cow<'a, str>, u64>>,
    }
    let mut subjects = Vec::new();
    loop {
        let ask = serde_json::json!({ "subjects_filter": filter, "offset": subjects.len() });
        let answer = js
            .client()
            .request(format!("$JS.API.STREAM.INFO.{stream}"), ask.to_string().into())
            .await
            .map_err(|e| anyhow::anyhow!("the subjects of {stream}: {e}"))?;
        let page: Page<'_> =
            serde_json::from_slice(&answer.payload).map_err(|e| anyhow::anyhow!("the subjects of {stream}: {e}"))?;
        if let Some(error) = page.error {
            anyhow::bail!("the subjects of {stream}: {}", error["description"].as_str().unwrap_or("refused"));
        }
        let got = page.state.subjects.unwrap_or_default();
        let empty = got.is_empty();
        subjects.extend(got.into_iter().map(|(subject, n)| (subject.into_owned(), n)));
        if empty || subjects.len() >= page.total {
            return Ok(subjects);
        }
    }
}

/// Up to `batch` messages of `stream` on `subject` (a filter) from stream sequence `from` on,
/// in one round trip: a batched direct get (nats-server 2.11, ADR-31), answered by the stream's
/// leader or any replica, with no consumer (so the read-only watcher may ask it), ended by an
/// end-of-batch status. Empty when there is nothing there.
pub async fn direct_batch(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    from: u64,
    batch: usize,
) -> anyhow::Result<Vec<jetstream::message::StreamMessage>> {
    let ask = serde_json::json!({ "seq": from, "next_by_subj": subject, "batch": batch });
    direct_get(js, stream, ask, batch).await
}

/// The last message of each of `subjects` in `stream` that has one, in one round trip: a
/// batched direct get of the last by subject (ADR-31's `multi_last`), in stream order.
pub async fn direct_last_of(
    js: &jetstream::Context,
    stream: &str,
    subjects: &[String],
) -> anyhow::Result<Vec<jetstream::message::StreamMessage>> {
    if subjects.is_empty() {
        return Ok(Vec::new());
    }
    let ask = serde_json::json!({ "multi_last": subjects, "batch": subjects.len() });
    direct_get(js, stream, ask, subjects.len()).await
}

/// A batched direct get `ask` of `stream`, read until its end-of-batch status or `batch`
/// messages.
async fn direct_get(
    js: &jetstream::Context,
    stream: &str,
    ask: serde_json::Value,
    batch: usize,
) -> anyhow::Result<Vec<jetstream::message::StreamMessage>> {
    use async_nats::StatusCode;
    let client = js.client();
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client.publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), inbox, ask.to_string().into()).await?;
    let mut got = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .map_err(|_| anyhow::anyhow!("a direct get of {stream} timed out"))?
            .ok_or_else(|| anyhow::anyhow!("a direct get of {stream}: the answer ended early"))?;
        match msg.status {
            // The end of the batch (204), or nothing (more) there.
            Some(status) if status.as_u16() == 204 || status == StatusCode::NOT_FOUND => return Ok(got),
            Some(StatusCode::NO_RESPONDERS) => anyhow::bail!("a direct get of {stream}: no responders"),
            Some(status) if status != StatusCode::OK => {
                anyhow::bail!("a direct get of {stream}: {status} {}", msg.description.unwrap_or_default())
            }
            _ => {}
        }
        got.push(
            jetstream::message::StreamMessage::try_from(msg)
                .map_err(|e| anyhow::anyhow!("a direct get of {stream}: {e}"))?,
        );
        if got.len() >= batch {
            // The end-of-batch status follows; the next request starts after what came.
            return Ok(got);
        }
    }
}

/// How many events one batched read of a job's replay asks for.
const REPLAY_BATCH: usize = 1_000;

/// How many messages one batched direct get asks for.
const KV_BATCH: usize = 1_000;

/// One message met in a walk over a KV bucket, in sequence order: a put (`Some`) replaces what
/// was met for its key before, a delete (`None`) takes it away.
fn meet<T>(latest: &mut std::collections::BTreeMap<String, T>, key: String, value: Option<T>) {
    match value {
        Some(v) => latest.insert(key, v),
        None => latest.remove(&key),
    };
}

/// The beat under registry key `key`, when it is believed (see [`registry`]).
async fn believed(js: &jetstream::Context, key: &str, payload: &[u8]) -> Result<Heartbeat, String> {
    let (mut beat, signer) = pvefleet_schemas::trust::open_heartbeat(payload)?;
    // The key is what the server's permissions guard (an agent may write only its own node's);
    // the payload is whatever that agent says. A beat speaking for another node is an agent
    // impersonating it.
    if key != beat.node.as_str() {
        return Err(format!("it speaks for {} under the key of {key}", beat.node));
    }
    let enrolled = crate::trust::enrollment(js, &beat.node)
        .await?
        .ok_or_else(|| format!("{} is not enrolled: `pvefleet nodes enroll {}` (admin)", beat.node, beat.node))?;
    if enrolled.identity_key != signer.to_string() {
        return Err(format!("signed by {}, not by the key enrolled for {}", signer.id(), beat.node));
    }
    if let Some(why) = beat.capacity.as_ref().and_then(|c| c.insanity()) {
        tracing::warn!(node = %beat.node, %why, "a heartbeat whose capacity cannot be true; its capacity is ignored");
        beat.capacity = None;
    }
    if beat.sealing_key.as_deref() != Some(enrolled.sealing_key.as_str()) {
        return Err(format!(
            "{} shows a sealing key other than the one enrolled: check it on the node (`pvefleet-agent --print-key`) \
             and enroll it again",
            beat.node
        ));
    }
    Ok(beat)
}

/// The last event of job `job` on `node`, if it has any: how a job's end is known without the
/// The jobs `beat` lists as running whose terminal event is not in the events stream yet. A
/// beat is written a moment after a job's end (the agent cleans up first), so a reader right
/// after a `--watch` returned would otherwise still count the finished job.
pub async fn still_running(js: &jetstream::Context, beat: &Heartbeat) -> Vec<JobId> {
    let mut running = Vec::with_capacity(beat.running_jobs.len());
    for job in &beat.running_jobs {
        if !matches!(last_event(js, &beat.node, job).await, Ok(Some(e)) if e.is_terminal()) {
            running.push(*job);
        }
    }
    running
}
/// recorder (a direct get by the job's own subject, as the watcher may make).
pub async fn last_event(js: &jetstream::Context, node: &NodeName, job: &JobId) -> anyhow::Result<Option<Event>> {
    use jetstream::stream::DirectGetErrorKind;
    let stream = js.get_stream_no_info(pvefleet_schemas::names::events_stream(node)).await?;
    match stream.direct_get_last_for_subject(pvefleet_schemas::names::event_subject(node, job)).await {
        Ok(msg) => Ok(Event::decode(&msg.payload).ok().filter(|e| e.job_id == *job && e.node == *node)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading job {job}'s events: {e}")),
    }
}

/// `node`'s heartbeat as it is in the registry, unchecked (what `nodes enroll` checks).
pub async fn raw_heartbeat(js: &jetstream::Context, node: &NodeName) -> anyhow::Result<Option<bytes::Bytes>> {
    let kv = js.get_key_value(NODES_BUCKET).await.map_err(|e| anyhow::anyhow!("the node registry: {e}"))?;
    kv.get(node.as_str()).await.map_err(|e| anyhow::anyhow!("reading the node registry: {e}"))
}

/// A job's events from the first, then as they come, without any consumer: replayed by
/// direct gets (`$JS.API.DIRECT.GET.PVEFLEET_EVENTS`, next message on the job's subject) and
/// followed by a plain subscription taken before the replay, so nothing falls between them.
/// A reader that may create consumers may also create one that delivers to any subject it
/// names (nats-server does not check that its creator may publish there), so the watcher
/// user is given none of that: this is all it needs.
///
/// Only events whose subject, `node` and `job_id` agree — and whose node is the job's, when
/// known — are given out, in `seq` order, each once.
pub struct EventFeed {
    /// The job's node's events stream (`None` while the node is unknown and nothing is found).
    stream: Option<jetstream::stream::Stream<()>>,
    js: jetstream::Context,
    job: JobId,
    /// The job's node; learnt from its first event when the caller did not know it.
    node: Option<NodeName>,
    subject: String,
    live: async_nats::Subscriber,
    /// The next stream sequence the replay reads from; `None` once it has caught up.
    replay_from: Option<u64>,
    /// The stream sequence the replay last read: where it goes on after a gap.
    replayed_to: u64,
    /// The `seq` of the next event to give out.
    next_seq: u64,
    /// Events that came live ahead of their turn, by `seq`.
    early: std::collections::BTreeMap<u64, Event>,
    /// Messages a batched replay read brought and the feed has not given out yet.
    replay: std::collections::VecDeque<jetstream::message::StreamMessage>,
    /// Whether the job had any event when the feed opened.
    pub had_events: bool,
}

impl std::fmt::Debug for EventFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFeed").field("job", &self.job).field("next_seq", &self.next_seq).finish_non_exhaustive()
    }
}

impl EventFeed {
    /// Opens the feed of `job` on `node` (from the store; `None` when unknown). While a
    /// cluster elects a new leader (a server just died) JetStream calls time out for a few
    /// seconds, so those are retried for up to half a minute.
    pub async fn open(
        client: &async_nats::Client,
        js: &jetstream::Context,
        job: &JobId,
        node: Option<NodeName>,
    ) -> anyhow::Result<Self> {
        use backon::{ExponentialBuilder, Retryable as _};
        let retry = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(3))
            .with_total_delay(Some(Duration::from_secs(30)))
            .without_max_times();
        (|| Self::open_once(client, js, job, node.clone()))
            .retry(retry)
            .when(|e| is_electing(&format!("{e:#}")))
            .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "JetStream not answering; retrying"))
            .await
    }

    async fn open_once(
        client: &async_nats::Client,
        js: &jetstream::Context,
        job: &JobId,
        node: Option<NodeName>,
    ) -> anyhow::Result<Self> {
        // Each node keeps its events in a stream of its own: an unknown node is found by the
        // stream that holds the job's first event.
        let node = match node {
            Some(node) => Some(node),
            None => Self::find_node(js, job).await?,
        };
        let stream = match &node {
            Some(node) => Some(js.get_stream_no_info(events_stream(node)).await?),
            None => None,
        };
        let subject = match &node {
            Some(node) => event_subject(node, job),
            None => job_events_filter(job),
        };
        let live = client.subscribe(subject.clone()).await.context("following the job's events")?;
        let mut feed = Self {
            stream,
            js: js.clone(),
            job: *job,
            node,
            subject,
            live,
            replay_from: Some(1),
            replayed_to: 0,
            next_seq: 1,
            early: Default::default(),
            replay: Default::default(),
            had_events: false,
        };
        feed.had_events = match feed.direct_get(1).await? {
            Some(first) => {
                // Kept for the replay, which starts there.
                feed.replay.push_front(first);
                true
            }
            None => false,
        };
        Ok(feed)
    }

    /// The node whose events stream holds `job`'s events, if one does.
    async fn find_node(js: &jetstream::Context, job: &JobId) -> anyhow::Result<Option<NodeName>> {
        use jetstream::stream::DirectGetErrorKind;
        for node in event_stream_nodes(js).await? {
            let stream = js.get_stream_no_info(events_stream(&node)).await?;
            match stream.direct_get_next_for_subject(event_subject(&node, job), Some(1)).await {
                Ok(_) => return Ok(Some(node)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
                Err(e) => return Err(anyhow::anyhow!("reading the events of {node}: {e}")),
            }
        }
        Ok(None)
    }

    /// The first message at or after stream sequence `from` on the job's subject: from what the
    /// last batched read brought, else read with the next ones (a replay of a thousand events
    /// is one round trip, not a thousand).
    async fn direct_get(&mut self, from: u64) -> anyhow::Result<Option<jetstream::message::StreamMessage>> {
        use backon::{ExponentialBuilder, Retryable as _};
        while self.replay.front().is_some_and(|m| m.sequence < from) {
            self.replay.pop_front();
        }
        if let Some(m) = self.replay.pop_front() {
            return Ok(Some(m));
        }
        let (Some(_), Some(node)) = (&self.stream, &self.node) else { return Ok(None) };
        let (name, subject) = (events_stream(node), self.subject.clone());
        let retry = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(3))
            .with_total_delay(Some(Duration::from_secs(30)))
            .without_max_times();
        // While a cluster member that served the stream is gone, its replicas answer again a
        // moment later: wait for them, as for a leader election.
        let js = self.js.clone();
        let got = (|| direct_batch(&js, &name, &subject, from, REPLAY_BATCH))
            .retry(retry)
            .when(|e| is_electing(&e.to_string()))
            .notify(
                |e, wait| tracing::warn!(error = %e, retry_in = ?wait, "the events stream is not answering; retrying"),
            )
            .await
            .map_err(|e| anyhow::anyhow!("reading the job's events: {e}"))?;
        self.replay = got.into();
        Ok(self.replay.pop_front())
    }

    /// The event in a message, if it is one of this job's that may be given out.
    fn accept(&mut self, subject: &str, payload: &[u8]) -> Option<Event> {
        let event = match Event::decode(payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(%subject, error = %e, "an unreadable event; ignored");
                return None;
            }
        };
        let agrees = event.job_id == self.job
            && subject == event_subject(&event.node, &event.job_id)
            && self.node.as_ref().is_none_or(|n| *n == event.node);
        if !agrees {
            tracing::warn!(%subject, node = %event.node, job_id = %event.job_id, "an event whose subject, node and job disagree; ignored");
            return None;
        }
        // Unknown node: the first event names it, and only that node's events count after it.
        self.node.get_or_insert_with(|| event.node.clone());
        Some(event)
    }

    /// The next event, waiting for it as long as it takes; `None` if the connection closed.
    pub async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            // A node learnt from a live event: replay from its stream from now on.
            if self.stream.is_none()
                && let Some(node) = &self.node
            {
                self.stream = Some(self.js.get_stream_no_info(events_stream(node)).await?);
            }
            if let Some(event) = self.early.remove(&self.next_seq) {
                self.next_seq += 1;
                return Ok(Some(event));
            }
            if let Some(from) = self.replay_from {
                match self.direct_get(from).await? {
                    Some(m) => {
                        self.replay_from = Some(m.sequence + 1);
                        self.replayed_to = m.sequence;
                        if let Some(event) = self.accept(m.subject.as_str(), &m.payload) {
                            // The stream holds a job's events in seq order: one it skips is gone
                            // (aged out), not late, and waiting for it would wait for ever.
                            if event.seq > self.next_seq
                                && !(self.next_seq..event.seq).any(|s| self.early.contains_key(&s))
                            {
                                tracing::warn!(
                                    from = self.next_seq,
                                    to = event.seq - 1,
                                    "events no longer in the stream; skipped"
                                );
                                self.next_seq = event.seq;
                            }
                            self.keep(event);
                        }
                    }
                    None => self.replay_from = None,
                }
                continue;
            }
            // Caught up: follow. A gap (a live event ahead of the next one) sends the feed
            // back to the stream, which has every event in order; a replica that has not yet
            // caught up answers again a moment later.
            let wait = if self.early.is_empty() { Duration::from_secs(3600) } else { Duration::from_millis(200) };
            match tokio::time::timeout(wait, self.live.next()).await {
                Ok(Some(msg)) => {
                    if let Some(event) = self.accept(msg.subject.as_str(), &msg.payload) {
                        self.keep(event);
                    }
                }
                Ok(None) => return Ok(None),
                Err(_) => {}
            }
            if !self.early.is_empty() && !self.early.contains_key(&self.next_seq) {
                self.replay_from = Some(self.replayed_to + 1);
            }
        }
    }

    /// Keeps an event for its turn (an event already given out is dropped).
    fn keep(&mut self, event: Event) {
        if event.seq >= self.next_seq {
            self.early.entry(event.seq).or_insert(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the walk meets when pve1's entry is written again and pve2's deleted while it
    /// reads: pve1's old value, pve2's, pve1's new value, pve2's delete marker. Each key once,
    /// with its last value; the deleted one not at all (`pvefleet nodes` once showed pve1
    /// twice, and `ls` a container twice, from walks like this).
    #[test]
    fn a_key_written_again_during_the_walk_is_kept_once_with_its_last_value() {
        let mut latest = std::collections::BTreeMap::new();
        for (key, value) in [("pve1", Some(1)), ("pve2", Some(2)), ("pve1", Some(3)), ("pve2", None)] {
            meet(&mut latest, key.to_owned(), value);
        }
        assert_eq!(latest.into_iter().collect::<Vec<_>>(), vec![("pve1".to_owned(), 3)]);
    }
}
