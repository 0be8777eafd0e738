//! `pvefleet cancel JOB`: a queued job is taken off the queue and ended with a `cancelled`
//! error event (so every watcher ends); a running one is cancelled by its agent through
//! `pvefleet.control.<node>.cancel`, which stops its Proxmox task or script and applies its
//! rollback policy. A finished job is left as it is.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, message::PublishMessage};
use pvefleet_schemas::names::{JOBS_STREAM, cancel_subject, event_subject};
use pvefleet_schemas::{
    CancelReply, CancelRequest, ErrorInfo, ErrorKind, Event, EventType, JobId, JobResult, NodeName, Step, Timestamp, V1,
};

use crate::bus::EventFeed;
use crate::cli::Cli;
use crate::{Failure, Outcome};

/// How long a running job may take to wind down (stop its task, roll back) once cancelled.
const WIND_DOWN: Duration = Duration::from_secs(300);

pub async fn run(cli: &Cli, job: &str) -> Outcome {
    let id = crate::job_id(job)?;
    let store = crate::open_store(cli).await?;
    let row = store.job(&id).await?.ok_or_else(|| Failure::Usage(format!("unknown job {id}")))?;
    let node = NodeName::new(&row.node).map_err(|e| anyhow::anyhow!("stored node: {e}"))?;
    let client = crate::bus::connect(cli).await?;
    let js = jetstream::new(client.clone());

    let last = last_event(&js, &node, &id).await?;
    if let Some(last) = &last
        && last.is_terminal()
    {
        println!(
            "job {id} has already ended ({}); nothing to cancel",
            serde_json::to_value(last.kind).unwrap_or_default()
        );
        return Err(Failure::Quiet);
    }
    if last.is_none()
        && let Some(seq) = row.stream_seq
        && cancel_queued(&js, &node, &id, seq as u64).await?
    {
        println!("job {id} cancelled while queued");
        return Ok(());
    }

    // Running (or just taken by its agent): ask the agent.
    let (_, me) = crate::identity::load(cli)?;
    let request = crate::publishing::signed_for(
        &CancelRequest::new(node.clone(), id),
        &me,
        crate::publishing::CONTROL_SIGNED_FOR_MINUTES,
    )?;
    let reply = tokio::time::timeout(Duration::from_secs(10), client.request(cancel_subject(&node), request.into()))
        .await
        .map_err(|_| anyhow::anyhow!("the agent of {node} did not answer the cancel request"))?
        .map_err(|e| anyhow::anyhow!("asking the agent of {node} to cancel: {e}"))?;
    let reply: CancelReply =
        serde_json::from_slice(&reply.payload).map_err(|e| anyhow::anyhow!("the agent's reply: {e}"))?;
    if !reply.ok {
        return Err(anyhow::anyhow!("{}", reply.message).into());
    }
    println!("{}", crate::follow::printable(&reply.message));
    let mut feed = EventFeed::open(&client, &js, &id, Some(node.clone())).await?;
    let ended = tokio::time::timeout(WIND_DOWN, async {
        while let Some(e) = feed.next().await? {
            if e.is_terminal() {
                return anyhow::Ok(e);
            }
        }
        anyhow::bail!("the event feed ended")
    })
    .await
    .map_err(|_| anyhow::anyhow!("the job did not end within {WIND_DOWN:?} of the cancel"))??;
    println!("{}", crate::follow::line(&ended));
    let cancelled =
        ended.result.as_ref().and_then(|r| r.error.as_ref()).is_some_and(|e| e.kind == ErrorKind::Cancelled);
    if cancelled { Ok(()) } else { Err(Failure::Quiet) }
}

async fn last_event(js: &jetstream::Context, node: &NodeName, id: &JobId) -> anyhow::Result<Option<Event>> {
    let stream = js.get_stream(pvefleet_schemas::names::events_stream(node)).await?;
    match stream.get_last_raw_message_by_subject(&event_subject(node, id)).await {
        Ok(m) => Ok(Some(Event::decode(&m.payload)?)),
        Err(e) if matches!(e.kind(), jetstream::stream::LastRawMessageErrorKind::NoMessageFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Ends a job still in the queue with a `cancelled` error and removes its message. Returns
/// false when its agent got there first (its first event is out), and then touches nothing.
///
/// The event comes first, and only as the job's first event: whoever writes a job's first
/// event owns its end. If the agent wrote first, the job is running and its agent is asked
/// instead. If the cancel wrote first, the agent finds the job ended and acks it; removing
/// the message only spares it the trip. The cancel's message id is its own (`<job>:cancel`),
/// so the server can never take the agent's first event for a duplicate of it or the other
/// way round.
pub async fn cancel_queued(js: &jetstream::Context, node: &NodeName, id: &JobId, seq: u64) -> anyhow::Result<bool> {
    let message = "cancelled by an operator while queued".to_owned();
    let event = Event {
        v: V1,
        job_id: *id,
        node: node.clone(),
        seq: 1,
        kind: EventType::Error,
        step: Some(Step::Validating),
        percent: 0,
        message: message.clone(),
        timestamp: Timestamp::now(),
        stream: None,
        result: Some(JobResult {
            success: false,
            job_id: *id,
            node: node.clone(),
            vmid: None,
            ip: None,
            error: Some(ErrorInfo { kind: ErrorKind::Cancelled, step: Step::Validating, message }),
            rolled_back: false,
            host_key: None,
            moved_to: None,
        }),
        job_seq: None,
    };
    let publish = PublishMessage::build()
        .payload(event.encode().into())
        .message_id(format!("{id}:cancel"))
        .expected_last_subject_sequence(0);
    match js.send_publish(event_subject(node, id), publish).await?.await {
        Ok(_) => {}
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
            tracing::info!("the agent published first; cancelling the running job");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    let stream = js.get_stream(JOBS_STREAM).await?;
    if let Err(e) = stream.delete_message(seq).await {
        // Already taken by its agent, which finds the job ended and acks it.
        tracing::info!(error = %e, "the job's message was not removed; its agent will drop it");
    }
    Ok(true)
}
