//! The agent's side of NATS: connecting (with backoff while the servers are away), the streams,
//! buckets and consumer it needs, a job's event log with gap-free `seq`, and its checkpoints.

use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, consumer::pull, kv, message::PublishMessage, stream};
use backon::Retryable as _;
use pvefleet_schemas::event::MAX_EVENT_BYTES;
use pvefleet_schemas::layout;
use pvefleet_schemas::names::{self, JOBS_STREAM};
use pvefleet_schemas::{Event, EventType, JobId, JobResult, LogStream, NodeName, Step, Timestamp, V1};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, NatsConfig};

mod checkpoints;
mod claim;
mod error;
mod vmids;

pub use checkpoints::{Checkpoints, Entry, KvError};
pub use claim::{Claim, TAKEOVER_GRACE, Taken};
pub use error::BusError;
pub use vmids::{Reserve, reserve};

/// Connects, retrying with backoff (logged) until it succeeds or `stop` fires.
pub async fn connect(
    config: &NatsConfig,
    name: &str,
    stop: &CancellationToken,
) -> Result<async_nats::Client, BusError> {
    let addrs: Vec<async_nats::ServerAddr> =
        config.urls.iter().map(|u| u.parse()).collect::<Result<_, _>>().map_err(|e| BusError::nats("nats.urls", e))?;
    tracing::info!(urls = %pvefleet_schemas::redact_urls(&config.urls.join(",")), "connecting to NATS");
    let attempt = || async {
        // A `.creds` file is read again at every reconnect (a rotated one is taken at once).
        let base = match &config.creds {
            Some(creds) => pvefleet_schemas::creds::options(creds)
                .map_err(|e| BusError::nats(format!("nats.creds {}", creds.display()), e))?,
            None => async_nats::ConnectOptions::new(),
        };
        let mut opts = base
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            // Once connected, ride out server restarts without giving up.
            .max_reconnects(None)
            .event_callback(|event| async move {
                if matches!(event, async_nats::Event::Connected) {
                    crate::metrics::metrics().connected();
                }
                tracing::info!(%event, "NATS connection event");
            });
        // async-nats does not take credentials from the URL by itself.
        if let Some(addr) = addrs.iter().find(|a| a.username().is_some()) {
            opts = opts.user_and_password(
                addr.username().unwrap_or_default().to_owned(),
                addr.password().unwrap_or_default().to_owned(),
            );
        }
        if let Some(prefix) = &config.inbox_prefix {
            opts = opts.custom_inbox_prefix(prefix);
        }
        if let Some(ca) = &config.ca_file {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &config.client_cert {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        opts.connect(addrs.clone()).await.map_err(|e| {
            BusError::nats(format!("connecting to {}", pvefleet_schemas::redact_urls(&config.urls.join(","))), e)
        })
    };
    let retry = crate::retry::nats_connect();
    tokio::select! {
        r = attempt.retry(retry).notify(|e, wait| tracing::warn!(error = %pvefleet_schemas::report::error_chain(e), retry_in = ?wait, "NATS unreachable; retrying")) => r,
        _ = stop.cancelled() => Err(BusError::Stopped),
    }
}

/// Everything the agent uses on NATS, found or created.
#[derive(Debug, Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub events: stream::Stream,
    pub consumer: jetstream::consumer::Consumer<pull::Config>,
    pub checkpoints: checkpoints::Checkpoints,
    pub nodes: kv::Store,
    pub vmids: kv::Store,
    /// The admin-signed policy and enrollments.
    pub trust: kv::Store,
    /// Job ids taken, one message each.
    pub requests: kv::Store,
    /// Every container with a pvefleet marker, by node ([`crate::inventory`]).
    pub inventory: kv::Store,
}

impl Bus {
    /// Finds the streams, buckets and this node's consumer, creating those that are missing.
    /// Existing ones are used as they are, so an agent without rights to create them works.
    pub async fn open(client: async_nats::Client, config: &Config) -> Result<Self, BusError> {
        let js = jetstream::new(client.clone());
        let (jobs, events) = ensure_streams(&js, &config.node).await?;
        // Read and written without its stream's info, which would list every node's jobs.
        let checkpoints = checkpoints::Checkpoints::open(&js).await?;
        if !checkpoints.exists(&config.node).await {
            get_or_create_bucket(&js, layout::jobs_bucket(1)).await?;
        }
        let nodes = get_or_create_bucket(&js, layout::nodes_bucket(1, config.heartbeat * 3)).await?;
        get_or_create_stream(&js, layout::vmids_stream(1)).await?;
        let vmids = js
            .get_key_value(names::VMIDS_BUCKET)
            .await
            .map_err(|e| BusError::nats(format!("KV bucket {}", names::VMIDS_BUCKET), e))?;
        let trust = get_or_create_bucket(&js, layout::trust_bucket(1)).await?;
        let requests = get_or_create_bucket(&js, layout::requests_bucket(1)).await?;
        let inventory = get_or_create_bucket(&js, layout::inventory_bucket(1)).await?;
        get_or_create_stream(&js, layout::audit_stream(1)).await?;
        let consumer = get_or_create_consumer(&js, &jobs, config).await?;
        Ok(Self { client, js, events, consumer, checkpoints, nodes, vmids, trust, requests, inventory })
    }

    /// Removes a finished job's checkpoint, whoever left it.
    pub async fn forget_checkpoint(&self, node: &NodeName, job: &JobId) -> Result<(), BusError> {
        let key = names::checkpoint_key(node, job);
        (|| self.checkpoints.purge(key.clone()))
            .retry(crate::retry::nats_request())
            .await
            .map_err(|e| BusError::nats(format!("clearing checkpoint {key}"), e))
    }
}

/// The last message on `subject`, if any, by a direct get whose subject names it (so an
/// agent's permissions can hold it to its own node's events); transient failures (a leader
/// election) are retried.
async fn last_message(
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, stream::DirectGetError> {
    (|| async {
        match stream.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    })
    .retry(crate::retry::nats_request())
    .await
}

/// Finds the jobs stream and `node`'s events stream, creating them as the contract sets them
/// when missing (and when this user may: otherwise `pvefleet setup` or the first submit to
/// the node makes the node's).
pub async fn ensure_streams(
    js: &jetstream::Context,
    node: &NodeName,
) -> Result<(stream::Stream, stream::Stream), BusError> {
    let jobs = get_or_create_stream(js, layout::jobs_stream(1)).await?;
    // The node's stream keeps as many copies as the jobs stream that `pvefleet setup` made.
    let replicas = jobs.cached_info().config.num_replicas.max(1);
    let events = get_or_create_stream(js, layout::events_stream(node, replicas)).await?;
    Ok((jobs, events))
}

async fn get_or_create_stream(js: &jetstream::Context, config: stream::Config) -> Result<stream::Stream, BusError> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(s) => Ok(s),
        Err(get_err) => match js.create_stream(config).await {
            Ok(s) => Ok(s),
            Err(e) if layout::made_meanwhile(&e) => {
                js.get_stream(&name).await.map_err(|e| BusError::nats(format!("stream {name}"), e))
            }
            Err(create_err) => Err(BusError::nats(
                format!("stream {name}"),
                format!("not found ({get_err}) and not created ({create_err})"),
            )),
        },
    }
}

async fn get_or_create_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, BusError> {
    let name = config.bucket.clone();
    match js.get_key_value(&name).await {
        Ok(s) => Ok(s),
        Err(get_err) => match js.create_key_value(config).await {
            Ok(s) => Ok(s),
            Err(e) if layout::made_meanwhile(&e) => {
                js.get_key_value(&name).await.map_err(|e| BusError::nats(format!("KV bucket {name}"), e))
            }
            Err(create_err) => Err(BusError::nats(
                format!("KV bucket {name}"),
                format!("not found ({get_err}) and not created ({create_err})"),
            )),
        },
    }
}

/// The node's durable pull consumer, made to the agent's concurrency.
async fn get_or_create_consumer(
    js: &jetstream::Context,
    jobs: &stream::Stream,
    config: &Config,
) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
    let name = names::agent_consumer(&config.node);
    let wanted = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("pvefleet-agent for node {}", config.node)),
        filter_subject: names::node_jobs_filter(&config.node),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_ack_pending: i64::from(config.concurrency),
        // A job is redelivered only after its agent died (or asked): keep trying, the
        // checkpoint makes it safe.
        max_deliver: -1,
        ..Default::default()
    };
    match jobs.get_consumer::<pull::Config>(&name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|e| BusError::nats(format!("consumer {name}"), e))?;
            let c = &info.config;
            if c.max_ack_pending != wanted.max_ack_pending || c.ack_wait != wanted.ack_wait {
                // Follow the configured concurrency; without the right to, run with what exists.
                if let Err(e) = js.update_consumer_on_stream(wanted, JOBS_STREAM).await {
                    tracing::warn!(error = %pvefleet_schemas::report::error_chain(&e), consumer = %name, max_ack_pending = c.max_ack_pending,
                        "could not update the consumer to this agent's concurrency; using it as it is");
                } else {
                    return jobs.get_consumer(&name).await.map_err(|e| BusError::nats(format!("consumer {name}"), e));
                }
            }
            Ok(existing)
        }
        Err(get_err) => jobs.create_consumer(wanted).await.map_err(|create_err| {
            BusError::nats(format!("consumer {name}"), format!("not found ({get_err}) and not created ({create_err})"))
        }),
    }
}

/// One job's events: `seq` continues from what the stream already holds (so a redelivered
/// job goes on without gaps), `percent` never goes down, and every publish is acknowledged
/// by the stream before the next.
///
/// The log has one writer at a time: each publish expects the subject's last stream sequence
/// to be the one this log last wrote (or none, for the first event), so an event written by
/// anyone else in between (a cancel of the queued job, another run of the job) stops this
/// writer with [`BusError::Superseded`] instead of being overwritten or silently dropped.
/// Message ids are `<job_id>:<seq>:<run>`, unique per run, so a retried publish whose
/// acknowledgement was lost is recognised as this run's own, never as another's.
#[derive(Debug)]
pub struct EventLog {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    node: NodeName,
    job_id: JobId,
    run: String,
    next_seq: u64,
    /// The stream sequence of the last event on the subject, 0 when there is none.
    last_stream_seq: u64,
    percent: u8,
    step: Option<Step>,
    /// The job message's stream sequence, told in its `accepted` event.
    pub(crate) job_seq: Option<u64>,
}

impl EventLog {
    /// Opens the log of `job_id` for the run named `run`, returning the last event already
    /// published, if any.
    pub async fn open(bus: &Bus, node: &NodeName, job_id: JobId, run: &str) -> Result<(Self, Option<Event>), BusError> {
        Self::open_on(&bus.js, &bus.events, node, job_id, run).await
    }

    /// The log of a job that has no events yet (its first delivery), without looking: if it
    /// does have one after all (a cancel wrote first), the first emit fails on it.
    pub fn fresh(bus: &Bus, node: &NodeName, job_id: JobId, run: &str) -> Self {
        Self {
            js: bus.js.clone(),
            stream: bus.events.clone(),
            subject: names::event_subject(node, &job_id),
            node: node.clone(),
            job_id,
            run: run.to_owned(),
            next_seq: 1,
            last_stream_seq: 0,
            percent: 0,
            step: None,
            job_seq: None,
        }
    }

    /// [`EventLog::open`] with only a JetStream context and the events stream.
    pub async fn open_on(
        js: &jetstream::Context,
        events: &stream::Stream,
        node: &NodeName,
        job_id: JobId,
        run: &str,
    ) -> Result<(Self, Option<Event>), BusError> {
        let subject = names::event_subject(node, &job_id);
        let last = last_message(events, &subject)
            .await
            .map_err(|e| BusError::nats(format!("reading the last event of {job_id}"), e))?;
        let last_stream_seq = last.as_ref().map_or(0, |m| m.sequence);
        let last = last.and_then(|m| Event::decode(&m.payload).ok());
        let log = Self {
            js: js.clone(),
            stream: events.clone(),
            subject,
            node: node.clone(),
            job_id,
            run: run.to_owned(),
            next_seq: last.as_ref().map_or(1, |e| e.seq + 1),
            last_stream_seq,
            percent: last.as_ref().map_or(0, |e| e.percent),
            step: last.as_ref().and_then(|e| e.step),
            job_seq: None,
        };
        Ok((log, last))
    }

    /// Publishes one event and waits for the stream to store it.
    pub async fn emit(
        &mut self,
        kind: EventType,
        step: Option<Step>,
        percent: Option<u8>,
        message: impl Into<String>,
        stream: Option<LogStream>,
        result: Option<JobResult>,
    ) -> Result<(), BusError> {
        let mut percent_now = self.percent;
        if let Some(p) = percent {
            percent_now = percent_now.max(p.min(100));
        }
        let event = Event {
            v: V1,
            job_id: self.job_id,
            node: self.node.clone(),
            seq: self.next_seq,
            kind,
            step: step.or(self.step),
            percent: percent_now,
            message: message.into(),
            timestamp: Timestamp::now(),
            stream,
            result,
            job_seq: self.job_seq.filter(|_| kind == EventType::Accepted),
        };
        // Cut to fit after encoding: an event the server refuses for its size would be
        // retried for ever and its job never end.
        let payload: bytes::Bytes = event.encode_within(MAX_EVENT_BYTES).into();
        let msg_id = format!("{}:{}:{}", self.job_id, event.seq, self.run);
        let expected = self.last_stream_seq;
        let published = (|| async {
            let publish = PublishMessage::build()
                .payload(payload.clone())
                .message_id(&msg_id)
                .expected_last_subject_sequence(expected);
            self.js.send_publish(self.subject.clone(), publish).await?.await
        })
        .retry(crate::retry::nats_request())
        .when(|e: &PublishError| {
            let retry = !matches!(e.kind(), PublishErrorKind::WrongLastSequence | PublishErrorKind::MaxPayloadExceeded);
            if retry {
                tracing::warn!(error = %pvefleet_schemas::report::error_chain(e), "publishing an event failed; retrying");
            }
            retry
        })
        .await;
        let stored_at = match published {
            Ok(ack) => ack.sequence,
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // Ours if an earlier attempt landed and only its answer was lost.
                match last_message(&self.stream, &self.subject).await {
                    Ok(Some(m)) if m.headers.get(NATS_MESSAGE_ID).is_some_and(|id| id.as_str() == msg_id) => m.sequence,
                    Ok(_) => return Err(BusError::Superseded),
                    Err(e) => return Err(BusError::nats(format!("reading the last event of {}", self.job_id), e)),
                }
            }
            Err(e) => return Err(BusError::nats(format!("publishing event {} of {}", event.seq, self.job_id), e)),
        };
        self.last_stream_seq = stored_at;
        self.next_seq += 1;
        self.percent = percent_now;
        self.step = event.step;
        Ok(())
    }

    pub async fn step_event(&mut self, step: Step, percent: u8, message: impl Into<String>) -> Result<(), BusError> {
        self.emit(EventType::Step, Some(step), Some(percent), message, None, None).await
    }

    pub async fn log(&mut self, stream: LogStream, line: impl Into<String>) -> Result<(), BusError> {
        self.emit(EventType::Log, None, None, line, Some(stream), None).await
    }

    pub async fn warning(&mut self, message: impl Into<String>) -> Result<(), BusError> {
        self.emit(EventType::Warning, None, None, message, None, None).await
    }
}
