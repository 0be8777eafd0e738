//! The recorder (`pvefleet record`): a durable consumer on every node's events stream (`PVEFLEET_EVENTS_<node>`,
//! found as they appear) writing every event into the store and moving job states forward. It
//! acks an event only once the store has it, and recording an event twice changes nothing, so
//! restarts of it or of NATS lose and double nothing. Beside the events it keeps the audit
//! trail, and the containers of the agents' inventory (a container no agent lists any more is
//! kept, marked `gone`).

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::{FutureExt as _, StreamExt as _};
use pvefleet_schemas::{Event, NodeName};
use tokio::sync::watch;

use crate::store::{Recorded, Store};

pub const CONSUMER: &str = "pvefleet-recorder";

/// How often the recorder looks for the events streams of nodes new since it started.
const LOOK_FOR_NODES: Duration = Duration::from_secs(5);

/// How often the recorder reads the inventory (by direct gets: no consumer) into the store.
const READ_INVENTORY: Duration = Duration::from_secs(2);

/// Records every node's events into `store` until `stop` resolves, following the events
/// streams of nodes that appear meanwhile; returns how many events were new.
pub async fn record(js: jetstream::Context, store: Store, stop: impl std::future::Future<Output = ()>) -> u64 {
    let (stopping, stopped) = watch::channel(false);
    tokio::pin!(stop);
    let mut recorders = tokio::task::JoinSet::new();
    recorders.spawn(record_audit(js.clone(), store.clone(), stopped.clone()));
    recorders.spawn(record_inventory(js.clone(), store.clone(), stopped.clone()));
    let mut watched = BTreeSet::new();
    loop {
        match crate::bus::event_stream_nodes(&js).await {
            Ok(nodes) => {
                for node in nodes {
                    if watched.insert(node.clone()) {
                        recorders.spawn(record_node(js.clone(), store.clone(), node, stopped.clone()));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for the nodes' events streams failed; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(LOOK_FOR_NODES) => {}
            _ = &mut stop => break,
        }
    }
    let _ = stopping.send(true);
    let mut recorded = 0u64;
    while let Some(done) = recorders.join_next().await {
        recorded += done.unwrap_or_default();
    }
    recorded
}

/// Keeps the store's containers as the inventory has them, until `stop`; returns 0 (it
/// records no events).
async fn record_inventory(js: jetstream::Context, store: Store, mut stop: watch::Receiver<bool>) -> u64 {
    // The bucket's last sequence when it was last recorded: unchanged, nothing is read.
    let mut recorded = None;
    loop {
        match crate::inventory::read_since(&js, recorded).await {
            Ok(None) => {}
            Ok(Some((entries, last))) => match store.sync_containers(&entries).await {
                Ok(went) => {
                    recorded = Some(last);
                    for row in went {
                        tracing::info!(vmid = row.vmid, node = %row.node, hostname = %row.hostname, "a container is gone");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "recording the inventory failed; retrying"),
            },
            // No bucket yet (no agent has started since `setup`): nothing to keep.
            Err(e) => tracing::debug!(error = %e, "the inventory cannot be read yet"),
        }
        tokio::select! {
            () = tokio::time::sleep(READ_INVENTORY) => {}
            _ = stop.changed() => return 0,
        }
    }
}

/// Records one node's events stream until `stop`; returns how many events were new.
async fn record_node(js: jetstream::Context, store: Store, node: NodeName, mut stop: watch::Receiver<bool>) -> u64 {
    let name = pvefleet_schemas::names::events_stream(&node);
    let mut recorded = 0u64;
    let (stream, mut consumer) = loop {
        let made = async {
            let stream = js.get_stream(&name).await.map_err(|e| anyhow::anyhow!("the events stream {name}: {e}"))?;
            let consumer = ensure_consumer(&stream).await?;
            anyhow::Ok((stream, consumer))
        };
        match made.await {
            Ok(both) => break both,
            Err(e) => tracing::warn!(error = %e, "the recorder's consumer is not ready; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return 0,
        }
    };
    loop {
        let batch = tokio::select! {
            b = consumer.fetch().max_messages(500).expires(Duration::from_secs(2)).messages() => b,
            _ = stop.changed() => break,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, stream = %name, "fetching events failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => break,
                }
                // Deleted or changed by someone else? Then make it as it should be, and say so.
                match ensure_consumer(&stream).await {
                    Ok(c) => consumer = c,
                    Err(e) => tracing::warn!(error = %e, "checking the recorder's consumer failed"),
                }
                continue;
            }
        };
        let (mut got, mut broken, mut stopping) = (0usize, false, false);
        loop {
            // A batch on a consumer deleted meanwhile may never end: give it its expiry and a
            // margin. A stop is heard between any two writes, not only between batches.
            let next = tokio::select! {
                next = tokio::time::timeout(Duration::from_secs(5), batch.next()) => next,
                _ = stop.changed() => {
                    stopping = true;
                    break;
                }
            };
            let Ok(Some(first)) = next else { break };
            // What has already come is written with it, in one transaction: at ingest rates a
            // transaction (and on SQLite an fsync) per event is what would set the pace.
            let mut msgs = vec![first];
            while msgs.len() < WRITE_BATCH {
                match batch.next().now_or_never() {
                    Some(Some(m)) => msgs.push(m),
                    _ => break,
                }
            }
            let mut ready = Vec::with_capacity(msgs.len());
            for msg in msgs {
                match msg {
                    Ok(m) => ready.push(m),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading events failed");
                        broken = true;
                    }
                }
            }
            got += ready.len();
            recorded += record_batch(&js, &store, ready).await;
            if broken {
                break;
            }
        }
        if stopping {
            break;
        }
        if got == 0 || broken {
            // Quiet, or a consumer that no longer exists (a fetch on a deleted consumer just
            // comes back empty): look, and make it again if it is gone.
            match ensure_consumer(&stream).await {
                Ok(c) => consumer = c,
                Err(e) => tracing::warn!(error = %e, "checking the recorder's consumer failed"),
            }
        }
    }
    recorded
}

/// Events written in one transaction at most.
const WRITE_BATCH: usize = 500;

/// Records one batch of event messages and acks each as its outcome says; returns how many
/// events were new. A message that cannot be an event is terminated; when the store fails, every
/// message of the batch comes again (and is recorded once).
async fn record_batch(js: &jetstream::Context, store: &Store, msgs: Vec<jetstream::Message>) -> u64 {
    let mut taken = Vec::with_capacity(msgs.len());
    for msg in msgs {
        let event = match Event::decode(&msg.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, subject = %msg.subject, "an unreadable event; skipped");
                let _ = msg.ack_with(AckKind::Term).await;
                continue;
            }
        };
        if let Err(why) = agrees(&msg.subject, &event) {
            tracing::error!(subject = %msg.subject, job_id = %event.job_id, node = %event.node, %why, "an event whose subject, node and job disagree; ignored");
            let _ = msg.ack_with(AckKind::Term).await;
            continue;
        }
        taken.push((msg, event));
    }
    if taken.is_empty() {
        return 0;
    }
    let events: Vec<&Event> = taken.iter().map(|(_, e)| e).collect();
    let outcomes = match store.record_events(&events).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            tracing::error!(error = %e, events = taken.len(), "storing events failed; they come again");
            for (msg, _) in &taken {
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await;
            }
            return 0;
        }
    };
    let mut recorded = 0;
    // Jobs adopted in this batch: their later events in it were refused with the rest.
    let mut adopted = BTreeSet::new();
    for ((msg, event), mut recording) in taken.iter().zip(outcomes.into_iter().map(Ok::<_, anyhow::Error>)) {
        // A job the store never saw queued: read from the jobs stream when its `accepted`
        // event says where, then its event recorded (only then: every other event of every
        // job goes straight to the store).
        if matches!(recording, Ok(Recorded::Refused(_))) {
            if adopted.contains(&event.job_id) {
                recording = store.record_event(event).await;
            } else if event.job_seq.is_some() {
                match adopt(js, store, event).await {
                    Ok(true) => {
                        adopted.insert(event.job_id);
                        recording = store.record_event(event).await;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, job_id = %event.job_id, "reading a job published by another client failed");
                    }
                }
            }
        }
        match recording {
            Ok(Recorded::Refused(why)) => {
                tracing::error!(subject = %msg.subject, job_id = %event.job_id, %why, "an event the store refuses; ignored");
                let _ = msg.ack_with(AckKind::Term).await;
            }
            Ok(recorded_now) => {
                recorded += u64::from(recorded_now == Recorded::New);
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "ack lost; the event comes again and is recorded once");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, job_id = %event.job_id, seq = event.seq, "storing an event failed; it comes again");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await;
            }
        }
    }
    recorded
}

/// Records the audit trail (`PVEFLEET_AUDIT`) into the store until `stop`, each record once
/// (by its stream sequence), for the web view's audit page; `pvefleet audit` reads the stream
/// itself. Returns 0 (its records are not events).
async fn record_audit(js: jetstream::Context, store: Store, mut stop: watch::Receiver<bool>) -> u64 {
    let name = pvefleet_schemas::names::AUDIT_STREAM;
    let mut consumer = loop {
        let made = async {
            let stream = js.get_stream(name).await.map_err(|e| anyhow::anyhow!("the audit stream {name}: {e}"))?;
            ensure_consumer(&stream).await
        };
        match made.await {
            Ok(c) => break c,
            Err(e) => tracing::warn!(error = %e, "the recorder's audit consumer is not ready; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return 0,
        }
    };
    loop {
        let batch = tokio::select! {
            b = consumer.fetch().max_messages(500).expires(Duration::from_secs(2)).messages() => b,
            _ = stop.changed() => return 0,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "fetching audit records failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return 0,
                }
                if let Ok(stream) = js.get_stream(name).await
                    && let Ok(c) = ensure_consumer(&stream).await
                {
                    consumer = c;
                }
                continue;
            }
        };
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), batch.next()).await {
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
            match serde_json::from_slice::<pvefleet_schemas::trust::AuditRecord>(&msg.payload) {
                Ok(record) => match store.record_audit(seq, &record).await {
                    Ok(()) => {
                        let _ = msg.ack().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, seq, "storing an audit record failed; it comes again");
                        let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await;
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, subject = %msg.subject, "an unreadable audit record; skipped");
                    let _ = msg.ack_with(AckKind::Term).await;
                }
            }
        }
    }
}

/// What the recorder's consumer must be: every event, each acked once stored.
fn consumer_config() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(CONSUMER.into()),
        description: Some("pvefleet record: events into the store".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        ack_wait: Duration::from_secs(10),
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// The recorder's consumer, made (again) if it is missing or not what it must be. Recording an
/// event twice changes nothing, so starting over from the first event loses and doubles nothing.
async fn ensure_consumer(
    stream: &jetstream::stream::Stream,
) -> anyhow::Result<consumer::Consumer<consumer::pull::Config>> {
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    let wanted = consumer_config();
    match stream.consumer_info(CONSUMER).await {
        Ok(info) => {
            let c = &info.config;
            let sound = c.filter_subject.is_empty()
                && c.filter_subjects.is_empty()
                && c.deliver_subject.is_none()
                && c.ack_policy == consumer::AckPolicy::Explicit
                && c.deliver_policy == consumer::DeliverPolicy::All;
            if sound {
                return stream
                    .get_consumer(CONSUMER)
                    .await
                    .map_err(|e| anyhow::anyhow!("the recorder's consumer: {e}"));
            }
            eprintln!("the recorder's consumer {CONSUMER} was changed by someone else; making it again");
            tracing::warn!(consumer = CONSUMER, "the recorder's consumer was changed; making it again");
            stream
                .delete_consumer(CONSUMER)
                .await
                .map_err(|e| anyhow::anyhow!("removing the changed consumer: {e}"))?;
        }
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("the recorder's consumer: {e}")),
    }
    let made =
        stream.create_consumer(wanted).await.map_err(|e| anyhow::anyhow!("making the recorder's consumer: {e}"))?;
    eprintln!(
        "the recorder's consumer {CONSUMER} on {} is in place (made now; events are recorded from the first, each once)",
        stream.cached_info().config.name
    );
    tracing::info!(consumer = CONSUMER, "made the recorder's consumer");
    Ok(made)
}

/// A job another client published straight on the jobs stream (not through this store): its
/// `accepted` event names the job message's sequence there, and the recorder reads the job
/// itself and records it as queued, under its hostname, so `jobs` and its page show it like any
/// other. What is read is the message the jobs stream holds, which no agent may write: an
/// agent's credentials cannot make up a job this way (only point at a real one of its own
/// node's, which is what it ran). Returns whether a job was recorded.
async fn adopt(js: &jetstream::Context, store: &Store, event: &Event) -> anyhow::Result<bool> {
    use pvefleet_schemas::{DayTwoJob, DestroyJob, EventType, Job};
    let Some(seq) = event.job_seq.filter(|_| event.kind == EventType::Accepted) else { return Ok(false) };
    if store.job(&event.job_id).await?.is_some() {
        return Ok(false);
    }
    let stream = js.get_stream_no_info(pvefleet_schemas::names::JOBS_STREAM).await?;
    let msg = stream
        .get_raw_message(seq)
        .await
        .map_err(|e| anyhow::anyhow!("the job message at sequence {seq} of the jobs stream: {e}"))?;
    let subject: Vec<&str> = msg.subject.split('.').collect();
    let ["pvefleet", "jobs", node, kind] = subject.as_slice() else {
        anyhow::bail!("sequence {seq} of the jobs stream is no job: {}", msg.subject);
    };
    anyhow::ensure!(*node == event.node.as_str(), "the job at sequence {seq} is for {node}, not {}", event.node);
    enum Read {
        Create(Box<Job>),
        Destroy(DestroyJob),
        DayTwo(DayTwoJob),
    }
    let read = match *kind {
        "create" => Read::Create(Box::new(Job::decode(&msg.payload)?)),
        "destroy" => Read::Destroy(DestroyJob::decode(&msg.payload)?),
        _ => Read::DayTwo(serde_json::from_slice(&msg.payload)?),
    };
    let (job_id, job_node) = match &read {
        Read::Create(j) => (j.job_id, &j.node),
        Read::Destroy(j) => (j.job_id, &j.node),
        Read::DayTwo(j) => (j.job_id(), j.node()),
    };
    anyhow::ensure!(
        job_id == event.job_id && *job_node == event.node,
        "sequence {seq} of the jobs stream holds job {job_id} on {job_node}, not {}",
        event.job_id
    );
    match read {
        Read::Create(job) => drop(store.insert_job(&job, None).await?),
        Read::Destroy(job) => {
            let made_by = match job.target.create_job {
                Some(made_by) => store.job(&made_by).await?.map(|j| j.hostname),
                None => None,
            };
            let vmid = job.target.vmid.map_or_else(|| "?".to_owned(), |v| format!("vmid {v}"));
            drop(store.insert_destroy_job(&job, &made_by.unwrap_or(vmid), None).await?);
        }
        Read::DayTwo(job) => drop(store.insert_day_two_job(&job, None).await?),
    }
    tracing::info!(job_id = %event.job_id, node = %event.node, %seq, "recorded a job another client published");
    Ok(true)
}

/// Whether an event's subject, `node` and `job_id` say the same: an agent may only publish
/// on its own node's subjects, so an event naming another node (or another job) is forged.
fn agrees(subject: &str, event: &Event) -> Result<(), String> {
    let expected = pvefleet_schemas::names::event_subject(&event.node, &event.job_id);
    if subject != expected {
        return Err(format!("published on {subject}, but the event says {expected}"));
    }
    if event.result.as_ref().is_some_and(|r| r.job_id != event.job_id || r.node != event.node) {
        return Err("its result names another job or node".into());
    }
    Ok(())
}
