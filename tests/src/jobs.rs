//! Jobs and events as a test sees them: building a create job, publishing it as the
//! coordinator would, reading a job's events back from the stream, and what tests repeat:
//! run a job to its end with the event contract checked ([`run_to_end`], [`wait_end`]), wait
//! for one of its events ([`wait_for_event`]), lose its checkpoint under a dead agent
//! ([`lose_checkpoint`]).

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use async_nats::jetstream::{self, consumer, message::PublishMessage};
use futures::{StreamExt as _, TryStreamExt as _};
use pvefleet_schemas::names::{JobKind, job_subject};
use pvefleet_schemas::{ContainerSpec, DeploySpec, Event, Job, JobId, JobResult, NodeName};

use crate::agent::Agent;
use crate::fakepve::OSTEMPLATE;

/// How long a test's job may take, from its publish to its terminal event.
pub const JOB_WITHIN: Duration = Duration::from_secs(90);

/// A create job for `node` with a static `ip/32` (so fakepve reports it from `/interfaces`).
pub fn create_job(node: &str, hostname: &str, ip: Ipv4Addr) -> Job {
    let mut spec = ContainerSpec::new(hostname, OSTEMPLATE);
    spec.ip = format!("{ip}/32").parse().expect("a valid ip config");
    Job::create(NodeName::new(node).expect("a node name"), spec, DeploySpec::default())
}

/// The jobs stream and each of `nodes`' events streams, as an agent or `pvefleet setup` makes them.
pub async fn ensure_streams(js: &jetstream::Context, nodes: &[&str]) -> anyhow::Result<()> {
    for node in nodes {
        pvefleet_agent::bus::ensure_streams(js, &NodeName::new(*node)?).await?;
    }
    crate::trust::put_policy(js, &crate::trust::everything(), crate::trust::admin()).await
}

/// Every node's events stream there is now, with its node.
pub async fn events_streams(js: &jetstream::Context) -> anyhow::Result<Vec<(NodeName, jetstream::stream::Stream)>> {
    let names: Vec<String> = js.stream_names().try_collect().await?;
    let mut streams = Vec::new();
    for name in names {
        if let Some(node) = pvefleet_schemas::names::events_stream_node(&name) {
            streams.push((node, js.get_stream(&name).await?));
        }
    }
    Ok(streams)
}

/// Publishes `job` as the coordinator does: signed by the bed's operator, to its node's
/// subject, deduplicated by its id.
pub async fn submit(js: &jetstream::Context, job: &Job) -> anyhow::Result<()> {
    submit_unsigned(js, &job.node, &job.job_id.to_string(), crate::trust::signed(job)).await
}

/// Publishes a destroy job as the coordinator does (signed by the bed's operator).
pub async fn submit_destroy(js: &jetstream::Context, job: &pvefleet_schemas::DestroyJob) -> anyhow::Result<()> {
    publish(js, job_subject(&job.node, JobKind::Destroy), &job.job_id.to_string(), crate::trust::signed(job)).await
}

/// Publishes a job of any kind as the coordinator does: signed by the bed's operator, to
/// `pvefleet.jobs.<node>.<kind>`, deduplicated by `job_id`.
pub async fn submit_kind(
    js: &jetstream::Context,
    node: &NodeName,
    kind: JobKind,
    job_id: JobId,
    message: &impl serde::Serialize,
) -> anyhow::Result<()> {
    publish(js, job_subject(node, kind), &job_id.to_string(), crate::trust::signed(message)).await
}

/// Publishes any bytes as a create job for `node` (for poison-message tests), signed by the
/// bed's operator when they are a JSON object, so they reach the decoding they test.
pub async fn submit_raw(
    js: &jetstream::Context,
    node: &NodeName,
    msg_id: &str,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    submit_unsigned(js, node, msg_id, crate::trust::signed_raw(payload)).await
}

/// Publishes these exact bytes as a create job for `node`.
pub async fn submit_unsigned(
    js: &jetstream::Context,
    node: &NodeName,
    msg_id: &str,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    publish(js, job_subject(node, JobKind::Create), msg_id, payload).await
}

async fn publish(js: &jetstream::Context, subject: String, msg_id: &str, payload: Vec<u8>) -> anyhow::Result<()> {
    js.send_publish(subject, PublishMessage::build().payload(payload.into()).message_id(msg_id))
        .await?
        .await
        .context("the jobs stream did not acknowledge the job")?;
    Ok(())
}

/// Every event of `job` from the first, following until its terminal event (or `within`).
pub async fn events_until_terminal(
    js: &jetstream::Context,
    job: JobId,
    within: Duration,
) -> anyhow::Result<Vec<Event>> {
    // The job's events are in its node's stream; follow each node's, as the job is on one.
    let mut feeds = Vec::new();
    for (node, stream) in events_streams(js).await? {
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: pvefleet_schemas::names::event_subject(&node, &job),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        feeds.push(consumer.messages().await?.boxed());
    }
    anyhow::ensure!(!feeds.is_empty(), "no events stream: make them with ensure_streams or `pvefleet setup`");
    let mut messages = futures::stream::select_all(feeds);
    let mut events = Vec::new();
    let collect = async {
        while let Some(msg) = messages.next().await {
            let msg = msg?;
            let event = Event::decode(&msg.payload)?;
            let terminal = event.is_terminal();
            events.push(event);
            if terminal {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the event stream ended")
    };
    match tokio::time::timeout(within, collect).await {
        Ok(r) => r?,
        Err(_) => anyhow::bail!(
            "no terminal event for {job} within {within:?}; events so far:\n{}",
            events
                .iter()
                .map(|e| format!("  {} {:?} {:?} {}% {}", e.seq, e.kind, e.step, e.percent, e.message))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
    Ok(events)
}

/// The result a job's terminal event carries.
pub fn result_of(events: &[Event]) -> &JobResult {
    events.last().and_then(|e| e.result.as_ref()).expect("a terminal event with a result")
}

/// Publishes `job` and follows it to its end: its events, the event contract checked.
pub async fn run_to_end(js: &jetstream::Context, job: &Job) -> anyhow::Result<Vec<Event>> {
    submit(js, job).await?;
    wait_end(js, job.job_id).await
}

/// Runs a create job to its end (it must succeed): its container, as a day-two job names it.
pub async fn made(js: &jetstream::Context, job: &Job) -> anyhow::Result<pvefleet_schemas::ContainerTarget> {
    submit(js, job).await?;
    let events = events_until_terminal(js, job.job_id, JOB_WITHIN).await?;
    ensure!(result_of(&events).success, "the create failed: {events:#?}");
    let vmid = result_of(&events).vmid.context("a completed create names its vmid")?;
    let hostname = Some(job.container.hostname.clone());
    Ok(pvefleet_schemas::ContainerTarget { vmid, create_job: Some(job.job_id), hostname })
}

/// Publishes a job of `kind` for `node` and follows it to its end.
pub async fn run_kind(
    js: &jetstream::Context,
    node: &str,
    kind: JobKind,
    id: JobId,
    message: &impl serde::Serialize,
) -> anyhow::Result<Vec<Event>> {
    submit_kind(js, &NodeName::new(node)?, kind, id, message).await?;
    wait_end(js, id).await
}

/// Follows a published job to its end (within [`JOB_WITHIN`]): its events, the event
/// contract checked.
pub async fn wait_end(js: &jetstream::Context, job: JobId) -> anyhow::Result<Vec<Event>> {
    let events = events_until_terminal(js, job, JOB_WITHIN).await?;
    check_event_contract(&events)?;
    Ok(events)
}

/// Waits until one of `job`'s events is `what` says (`matches`), and returns it.
pub async fn wait_for_event(
    js: &jetstream::Context,
    job: JobId,
    what: &str,
    within: Duration,
    matches: impl Fn(&Event) -> bool,
) -> anyhow::Result<Event> {
    crate::wait_until(what, within, || {
        let matches = &matches;
        async move { events_now(js, job).await.ok()?.into_iter().find(|e| matches(e)) }
    })
    .await
}

/// Kills `agent`, loses `job`'s checkpoint as an expired entry or a bucket made anew would,
/// and starts the agent again: only what PVE holds (the job's marker) is left to resume from.
pub async fn lose_checkpoint(agent: &mut Agent, js: &jetstream::Context, job: &Job) -> anyhow::Result<()> {
    lose_checkpoint_of(agent, js, &job.node, job.job_id).await
}

/// [`lose_checkpoint`] for a job of any kind.
pub async fn lose_checkpoint_of(
    agent: &mut Agent,
    js: &jetstream::Context,
    node: &NodeName,
    job: JobId,
) -> anyhow::Result<()> {
    agent.kill();
    let kv = js.get_key_value(pvefleet_schemas::names::JOBS_BUCKET).await?;
    kv.purge(pvefleet_schemas::names::checkpoint_key(node, &job)).await?;
    agent.restart()
}

/// The events of one job so far (no waiting), for checks after the terminal one.
pub async fn events_now(js: &jetstream::Context, job: JobId) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    for (node, stream) in events_streams(js).await? {
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: pvefleet_schemas::names::event_subject(&node, &job),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await?;
        let mut batch = consumer.fetch().max_messages(10_000).messages().await?;
        while let Some(msg) = batch.next().await {
            events.push(Event::decode(&msg.map_err(anyhow::Error::from_boxed)?.payload)?);
        }
    }
    Ok(events)
}

/// The contract every job's events keep: `seq` 1, 2, 3… without gaps or repeats, percent
/// never going down, exactly one terminal event and it last, all of one job and node.
pub fn check_event_contract(events: &[Event]) -> anyhow::Result<()> {
    ensure!(!events.is_empty(), "no events");
    for (i, e) in events.iter().enumerate() {
        ensure!(e.seq == i as u64 + 1, "event {i} has seq {} (want {}): {events:#?}", e.seq, i + 1);
        ensure!(e.job_id == events[0].job_id && e.node == events[0].node, "events of two jobs mixed");
    }
    ensure!(
        events.windows(2).all(|w| w[0].percent <= w[1].percent),
        "percent went down: {:?}",
        events.iter().map(|e| e.percent).collect::<Vec<_>>()
    );
    let terminals = events.iter().filter(|e| e.is_terminal()).count();
    ensure!(terminals == 1, "{terminals} terminal events");
    ensure!(events.last().is_some_and(Event::is_terminal), "the terminal event is not last");
    Ok(())
}
