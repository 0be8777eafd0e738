//! The windows in which one request could become two containers, two terminal events or
//! none: each test opens one on purpose (a lost Proxmox answer, an agent killed at the worst
//! moment, a cancel racing the agent, a lost checkpoint…) and checks that the job still ends
//! once, with one container or none.

use std::net::Ipv4Addr;
use std::time::Duration;

use pvefleet_schemas::{ErrorKind, EventType, Vmid};
use pvefleet_testbed::jobs::{
    JOB_WITHIN, check_event_contract, create_job, events_until_terminal, lose_checkpoint, result_of, run_to_end,
    submit, wait_end, wait_for_event,
};
use pvefleet_testbed::{Fleet, LostAnswer, wait_until};

/// Makes container creates take `secs` real seconds, so a new container stays locked
/// (`lock: create`, no tags yet) while the agent looks at it.
async fn slow_creates(bed: &Fleet, secs: u64) -> anyhow::Result<()> {
    bed.pve.time_scale(1.0).await?;
    bed.pve.task_secs(serde_json::json!({"create": secs})).await
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_makes_one_container() -> anyhow::Result<()> {
    let bed = Fleet::start("once-lost-create", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    slow_creates(&bed, 2).await?;
    // Allocated vmid, answer lost as a 500; then a fixed vmid, answer lost as a dropped connection.
    let cases = [(LostAnswer::Error, None, 51), (LostAnswer::Drop, Some(777), 52)];
    let mut made = Vec::new();
    for (how, vmid, host) in cases {
        bed.pve.lose_answer("POST", "/nodes/pve1/lxc", 1, how).await?;
        let mut job = create_job("pve1", &format!("lost-{host}"), Ipv4Addr::new(127, 0, 0, host));
        job.container.vmid = vmid.map(Vmid::new).transpose()?;
        let events = run_to_end(&bed.js, &job).await?;
        let result = result_of(&events);
        assert!(result.success, "{how:?}: {events:#?}");
        if let Some(v) = vmid {
            assert_eq!(result.vmid.map(Vmid::get), Some(v));
        }
        made.push(result.vmid.unwrap().get());
        assert_eq!(bed.pve.containers().await?, made, "{how:?}: one container per job");
    }
    assert_eq!(bed.pve.health().await?["answers_lost"], 2);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn an_agent_killed_between_its_create_and_the_checkpoint_resumes_into_one_container() -> anyhow::Result<()> {
    let bed = Fleet::start("once-kill-after-post", &["pve1"]).await?;
    let mut agent = bed.agent("pve1")?;
    // Longer than the redelivery takes, so the resumed job finds the container still locked.
    slow_creates(&bed, 12).await?;
    // Every create's answer is lost, so the agent never learns the UPID; kill it while it retries.
    bed.pve.lose_answer("POST", "/nodes/pve1/lxc", 0, LostAnswer::Error).await?;
    let job = create_job("pve1", "killed-mid-create", Ipv4Addr::new(127, 0, 0, 53));
    submit(&bed.js, &job).await?;
    wait_until("the create to reach Proxmox", Duration::from_secs(30), || async {
        bed.pve.containers().await.ok().filter(|c| !c.is_empty()).map(drop)
    })
    .await?;
    agent.kill();
    bed.pve.reset().await?;
    slow_creates(&bed, 12).await?;
    agent.restart()?;
    let events = wait_end(&bed.js, job.job_id).await?;
    let result = result_of(&events);
    assert!(result.success, "{events:#?}");
    assert_eq!(bed.pve.containers().await?, vec![result.vmid.unwrap().get()], "exactly one container");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_create_cancelled_before_its_answer_is_rolled_back_and_says_so() -> anyhow::Result<()> {
    let bed = Fleet::start("once-cancel-mid-create", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    slow_creates(&bed, 4).await?;
    bed.pve.lose_answer("POST", "/nodes/pve1/lxc", 0, LostAnswer::Error).await?;
    let job = create_job("pve1", "cancelled-mid-create", Ipv4Addr::new(127, 0, 0, 54));
    submit(&bed.js, &job).await?;
    wait_until("the create to reach Proxmox", Duration::from_secs(30), || async {
        bed.pve.containers().await.ok().filter(|c| !c.is_empty()).map(drop)
    })
    .await?;
    let client = bed.nats.client().await?;
    let request = pvefleet_testbed::trust::signed(&pvefleet_schemas::CancelRequest::new(job.node.clone(), job.job_id));
    let reply = client.request(pvefleet_schemas::names::cancel_subject(&job.node), request.into()).await?;
    let reply: pvefleet_schemas::CancelReply = serde_json::from_slice(&reply.payload)?;
    assert!(reply.ok, "{}", reply.message);
    bed.pve.reset().await?;

    let events = wait_end(&bed.js, job.job_id).await?;
    let result = result_of(&events);
    assert_eq!(result.error.as_ref().map(|e| e.kind), Some(ErrorKind::Cancelled), "{events:#?}");
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new(), "the half-made container is ours: destroyed");
    assert!(result.rolled_back, "{events:#?}");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn rolled_back_is_only_said_when_something_was_destroyed() -> anyhow::Result<()> {
    let bed = Fleet::start("once-rolled-back", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let mut job = create_job("pve1", "bad-storage", Ipv4Addr::new(127, 0, 0, 55));
    job.container.storage = "nowhere".into();
    let events = run_to_end(&bed.js, &job).await?;
    let result = result_of(&events);
    assert_eq!(result.error.as_ref().map(|e| e.kind), Some(ErrorKind::Validation));
    assert!(!result.rolled_back, "nothing was made, so nothing was rolled back: {events:#?}");
    assert!(!events.iter().any(|e| e.kind == EventType::Step && e.step == Some(pvefleet_schemas::Step::RollingBack)));
    bed.dir.pass();
    Ok(())
}

/// Publishes `job` and returns its stream sequence, as `pvefleet submit` records it.
async fn queue(bed: &Fleet, job: &pvefleet_schemas::Job) -> anyhow::Result<u64> {
    let ack = bed
        .js
        .send_publish(
            pvefleet_schemas::names::job_subject(&job.node, pvefleet_schemas::names::JobKind::Create),
            async_nats::jetstream::message::PublishMessage::build()
                .payload(job.encode().into())
                .message_id(job.job_id.to_string()),
        )
        .await?
        .await?;
    Ok(ack.sequence)
}

/// The agent's own event log for `job`, as a run named `run` opens it.
async fn agent_log(
    bed: &Fleet,
    job: &pvefleet_schemas::Job,
    run: &str,
) -> anyhow::Result<pvefleet_agent::bus::EventLog> {
    let events = bed.js.get_stream(pvefleet_schemas::names::events_stream(&job.node)).await?;
    Ok(pvefleet_agent::bus::EventLog::open_on(&bed.js, &events, &job.node, job.job_id, run).await?.0)
}

async fn accepted(log: &mut pvefleet_agent::bus::EventLog) -> Result<(), pvefleet_agent::bus::BusError> {
    log.emit(EventType::Accepted, Some(pvefleet_schemas::Step::Validating), Some(0), "accepted", None, None).await
}

async fn queued_messages(bed: &Fleet) -> anyhow::Result<u64> {
    Ok(bed.js.get_stream(pvefleet_schemas::names::JOBS_STREAM).await?.info().await?.state.messages)
}

#[tokio::test]
async fn a_cancel_that_loses_the_race_to_the_agent_leaves_the_job_to_it() -> anyhow::Result<()> {
    let bed = Fleet::start("once-cancel-late", &["pve1"]).await?;
    let job = create_job("pve1", "raced", Ipv4Addr::new(127, 0, 0, 56));
    let seq = queue(&bed, &job).await?;
    // The agent has taken the job and written its first event; the cancel looked just before.
    accepted(&mut agent_log(&bed, &job, "agent-a/run-1").await?).await?;
    let cancelled = pvefleet_coordinator::verbs::cancel::cancel_queued(&bed.js, &job.node, &job.job_id, seq).await?;
    assert!(!cancelled, "the job is running: a cancel of the queued job must not claim it");
    let events = pvefleet_testbed::jobs::events_now(&bed.js, job.job_id).await?;
    assert_eq!(events.len(), 1, "only the agent's event: {events:#?}");
    assert_eq!(events[0].kind, EventType::Accepted);
    // Its message is the agent's to settle: were it deleted, a crash of the agent would lose the job.
    assert_eq!(queued_messages(&bed).await?, 1);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn an_agent_that_loses_the_race_to_a_cancel_stops_before_its_first_event() -> anyhow::Result<()> {
    let bed = Fleet::start("once-cancel-early", &["pve1"]).await?;
    let job = create_job("pve1", "raced", Ipv4Addr::new(127, 0, 0, 57));
    let seq = queue(&bed, &job).await?;
    // The agent has fetched the job and opened its log; the cancel writes first.
    let mut log = agent_log(&bed, &job, "agent-a/run-1").await?;
    assert!(pvefleet_coordinator::verbs::cancel::cancel_queued(&bed.js, &job.node, &job.job_id, seq).await?);
    let refused = accepted(&mut log).await;
    assert!(matches!(refused, Err(pvefleet_agent::bus::BusError::Superseded)), "{refused:?}");
    let events = pvefleet_testbed::jobs::events_now(&bed.js, job.job_id).await?;
    check_event_contract(&events)?;
    assert_eq!(result_of(&events).error.as_ref().map(|e| e.kind), Some(ErrorKind::Cancelled));
    assert_eq!(queued_messages(&bed).await?, 0);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn two_writers_of_one_job_never_drop_each_others_events() -> anyhow::Result<()> {
    let bed = Fleet::start("once-two-writers", &["pve1"]).await?;
    let job = create_job("pve1", "twice", Ipv4Addr::new(127, 0, 0, 58));
    queue(&bed, &job).await?;
    let mut first = agent_log(&bed, &job, "agent-a/run-1").await?;
    accepted(&mut first).await?;
    // A second run opens the log after the first event; both now want to write event 2.
    let mut second = agent_log(&bed, &job, "agent-b/run-2").await?;
    second.warning("resuming").await?;
    let lost = first.warning("still here").await;
    assert!(matches!(lost, Err(pvefleet_agent::bus::BusError::Superseded)), "{lost:?}");
    let events = pvefleet_testbed::jobs::events_now(&bed.js, job.job_id).await?;
    assert_eq!(events.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["accepted", "resuming"]);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_job_redelivered_while_its_run_is_alive_is_not_run_twice() -> anyhow::Result<()> {
    let bed = Fleet::start("once-redelivered-alive", &["pve1"]).await?;
    // Two agents for one node (a misconfiguration), and the second sets the consumer's
    // ack_wait far below the first's progress acks: the job is redelivered every 2 s while
    // its first run is alive and well.
    let patient = pvefleet_testbed::agent::AgentOptions {
        ack_wait: Duration::from_secs(30),
        ..pvefleet_testbed::agent::AgentOptions::node("pve1")
    };
    let a = bed.agent_with(patient)?;
    let consumer_ack_wait = || async {
        let stream = bed.js.get_stream(pvefleet_schemas::names::JOBS_STREAM).await.ok()?;
        let mut consumer =
            stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>("agent-pve1").await.ok()?;
        Some(consumer.info().await.ok()?.config.ack_wait)
    };
    wait_until("agent A's consumer", Duration::from_secs(30), || async {
        consumer_ack_wait().await.filter(|w| *w == Duration::from_secs(30))
    })
    .await?;
    let hasty = pvefleet_testbed::agent::AgentOptions {
        ack_wait: Duration::from_secs(2),
        ..pvefleet_testbed::agent::AgentOptions::node("pve1")
    };
    let b = bed.agent_with(hasty)?;
    wait_until("agent B's ack_wait on the consumer", Duration::from_secs(30), || async {
        consumer_ack_wait().await.filter(|w| *w == Duration::from_secs(2))
    })
    .await?;
    slow_creates(&bed, 8).await?;
    let job = create_job("pve1", "redelivered-alive", Ipv4Addr::new(127, 0, 0, 59));
    let events = run_to_end(&bed.js, &job).await?;
    let result = result_of(&events);
    assert!(result.success, "{events:#?}");
    assert_eq!(events.iter().filter(|e| e.kind == EventType::Accepted).count(), 1);
    assert!(
        !events.iter().any(|e| e.kind == EventType::Warning && e.message.contains("redelivered")),
        "a second run resumed the job while the first ran: {events:#?}"
    );
    assert_eq!(bed.pve.containers().await?, vec![result.vmid.unwrap().get()]);
    let logs = a.log_text() + &b.log_text();
    assert!(logs.contains("the job is running elsewhere"), "no redelivery was refused");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_job_whose_checkpoint_is_lost_finds_its_container_by_its_marker() -> anyhow::Result<()> {
    let bed = Fleet::start("once-lost-checkpoint", &["pve1"]).await?;
    let mut agent = bed.agent("pve1")?;
    bed.pve.time_scale(1.0).await?;
    bed.pve.task_secs(serde_json::json!({"start": 4})).await?;
    let job = create_job("pve1", "forgetful", Ipv4Addr::new(127, 0, 0, 60));
    submit(&bed.js, &job).await?;
    wait_for_event(&bed.js, job.job_id, "the job to be starting its container", Duration::from_secs(30), |e| {
        e.step == Some(pvefleet_schemas::Step::Starting)
    })
    .await?;
    // The checkpoint is gone (expired, or its bucket made anew): only the marker is left.
    lose_checkpoint(&mut agent, &bed.js, &job).await?;
    let events = wait_end(&bed.js, job.job_id).await?;
    let result = result_of(&events);
    assert!(result.success, "{events:#?}");
    assert_eq!(bed.pve.containers().await?, vec![result.vmid.unwrap().get()], "no second container");
    assert!(events.iter().any(|e| e.kind == EventType::Warning && e.message.contains("found its container")));
    bed.dir.pass();
    Ok(())
}

/// The double fault: the checkpoint is lost while the create task still runs, so the container
/// is locked and carries no tags yet. The next delivery waits out the lock of every container
/// being created on the node and then reads its marker, instead of allocating a second one.
#[tokio::test]
async fn a_job_whose_checkpoint_is_lost_mid_create_waits_for_it_and_finds_it() -> anyhow::Result<()> {
    let bed = Fleet::start("once-lost-mid-create", &["pve1"]).await?;
    let mut agent = bed.agent("pve1")?;
    bed.pve.time_scale(0.2).await?;
    // Longer than the redelivery (ack_wait 4 s): the next delivery comes while the create runs.
    bed.pve.task_secs(serde_json::json!({"create": 60})).await?;
    let job = create_job("pve1", "forgetful-early", Ipv4Addr::new(127, 0, 0, 63));
    submit(&bed.js, &job).await?;
    wait_for_event(&bed.js, job.job_id, "the create task to run", Duration::from_secs(30), |e| {
        e.message.contains("create task")
    })
    .await?;
    // The checkpoint is gone (expired, or its bucket made anew): only the marker is left.
    lose_checkpoint(&mut agent, &bed.js, &job).await?;
    let events = wait_end(&bed.js, job.job_id).await?;
    let result = result_of(&events);
    assert!(result.success, "{events:#?}");
    assert_eq!(bed.pve.containers().await?, vec![result.vmid.unwrap().get()], "no second container");
    assert!(events.iter().any(|e| e.kind == EventType::Warning && e.message.contains("found its container")));
    assert!(
        events.iter().any(|e| e.kind == EventType::Warning && e.message.contains("waiting for the container(s)")),
        "the next delivery came while the create ran: {events:#?}"
    );
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_huge_malformed_message_still_gets_its_error_event_and_the_agent_goes_on() -> anyhow::Result<()> {
    let bed = Fleet::start("once-huge-poison", &["pve1"]).await?;
    let agent = bed.agent("pve1")?;
    let job = create_job("pve1", "poisoned", Ipv4Addr::new(127, 0, 0, 61));
    // A valid job id and an unknown field whose name is most of a megabyte: the decode error
    // names the field, and the error event carries the error twice (message and result).
    let mut value = serde_json::to_value(&job)?;
    value.as_object_mut().unwrap().insert("x".repeat(700_000), serde_json::json!(1));
    let payload = serde_json::to_vec(&value)?;
    assert!(payload.len() < 1024 * 1024 && payload.len() > 500_000);
    pvefleet_testbed::jobs::submit_raw(&bed.js, &job.node, &job.job_id.to_string(), payload).await?;
    let events = wait_end(&bed.js, job.job_id).await?;
    assert_eq!(result_of(&events).error.as_ref().map(|e| e.kind), Some(ErrorKind::InvalidMessage));
    // And it goes on with the next job.
    let next = create_job("pve1", "after-poison", Ipv4Addr::new(127, 0, 0, 62));
    submit(&bed.js, &next).await?;
    assert!(result_of(&events_until_terminal(&bed.js, next.job_id, JOB_WITHIN).await?).success);
    assert!(agent.log_text().contains("rejected a job message"));
    bed.dir.pass();
    Ok(())
}
