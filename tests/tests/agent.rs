//! The agent end to end: real nats-server, real fakepve, the real `pvefleet-agent` binary.

use std::net::Ipv4Addr;
use std::time::Duration;

use pvefleet_schemas::{ErrorKind, EventType, Step};
use pvefleet_testbed::agent::{Agent, AgentOptions};
use pvefleet_testbed::jobs::{
    JOB_WITHIN, check_event_contract, create_job, events_until_terminal, result_of, run_to_end, submit, wait_end,
};
use pvefleet_testbed::{FakePve, FakePveOptions, NatsServer, TestDir, init_tracing};

type Bed = pvefleet_testbed::Fleet;

async fn bed(name: &str, nodes: &[&str]) -> anyhow::Result<Bed> {
    Bed::start(name, nodes).await
}

#[tokio::test]
async fn creates_a_container_with_every_field_and_reports_each_step() -> anyhow::Result<()> {
    let bed = bed("agent-happy", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let sealing_key = _agent.sealing_key().await?;
    let mut job = create_job("pve1", "web-01", Ipv4Addr::new(127, 0, 0, 31));
    let spec = &mut job.container;
    spec.vmid = Some(pvefleet_schemas::Vmid::new(4242)?);
    spec.memory = 1024;
    spec.swap = 256;
    spec.cores = 2;
    spec.disk = 12;
    spec.gw = None;
    spec.nameserver = Some("1.1.1.1 9.9.9.9".into());
    spec.unprivileged = true;
    spec.nesting = true;
    spec.tags = vec!["web".into(), "Prod".into()];
    spec.ssh_public_keys =
        vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsKeyOpsKeyOpsKeyOpsKeyOpsKeyOpsKeyOpsKey ops@example".into()];
    spec.root_password = Some(sealing_key.seal_for_job(&job.job_id, b"correct horse"));
    let events = run_to_end(&bed.js, &job).await?;
    assert_eq!(events[0].kind, EventType::Accepted);
    let steps: Vec<Step> = events.iter().filter(|e| e.kind == EventType::Step).filter_map(|e| e.step).collect();
    assert_eq!(
        steps,
        [Step::Validating, Step::Creating, Step::Starting, Step::Connecting, Step::Deploying, Step::Finalizing]
    );
    assert!(events.iter().any(|e| e.kind == EventType::Log && e.stream == Some(pvefleet_schemas::LogStream::Task)));
    let last = events.last().unwrap();
    assert_eq!(last.kind, EventType::Complete);
    assert_eq!(last.percent, 100);
    let result = last.result.as_ref().unwrap();
    assert!(result.success);
    assert_eq!(result.vmid.map(|v| v.get()), Some(4242));
    assert_eq!(result.ip, Some("127.0.0.31".parse()?));

    let cfg = bed.pve.api_get("/nodes/pve1/lxc/4242/config").await?;
    assert_eq!(cfg["hostname"], "web-01");
    assert_eq!(cfg["memory"], 1024);
    assert_eq!(cfg["swap"], 256);
    assert_eq!(cfg["cores"], 2);
    assert_eq!(cfg["rootfs"].as_str().unwrap(), "local-lvm:vm-4242-disk-0,size=12G");
    let net0 = cfg["net0"].as_str().unwrap();
    assert!(net0.contains("bridge=vmbr0") && net0.contains("ip=127.0.0.31/32") && net0.contains("name=eth0"), "{net0}");
    assert_eq!(cfg["nameserver"], "1.1.1.1 9.9.9.9");
    assert_eq!(cfg["unprivileged"], 1);
    assert_eq!(cfg["features"], "nesting=1");
    // PVE stores tags lowercased and sorted.
    let mut tags = [job.job_id.marker_tag(), "prod".into(), "web".into()];
    tags.sort();
    assert_eq!(cfg["tags"].as_str().unwrap(), tags.join(";"));
    assert!(cfg["description"].as_str().unwrap().contains(&job.job_id.to_string()));
    let keys = std::fs::read_to_string(bed.pve.keys_dir.join("vmid-4242"))?;
    assert!(keys.contains("ops@example"));
    assert_eq!(bed.pve.api_get("/nodes/pve1/lxc/4242/status/current").await?["status"], "running");
    // The password went to PVE and nowhere else.
    assert!(!_agent.log_text().contains("correct horse"));
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn allocates_a_vmid_when_the_spec_has_none() -> anyhow::Result<()> {
    let bed = bed("agent-alloc", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let first = create_job("pve1", "alloc-a", Ipv4Addr::new(127, 0, 0, 32));
    let second = create_job("pve1", "alloc-b", Ipv4Addr::new(127, 0, 0, 33));
    submit(&bed.js, &first).await?;
    let a = events_until_terminal(&bed.js, first.job_id, JOB_WITHIN).await?;
    submit(&bed.js, &second).await?;
    let b = events_until_terminal(&bed.js, second.job_id, JOB_WITHIN).await?;
    check_event_contract(&a)?;
    check_event_contract(&b)?;
    let vmid = |events: &[pvefleet_schemas::Event]| events.last().unwrap().result.as_ref().unwrap().vmid.unwrap().get();
    assert_eq!((vmid(&a), vmid(&b)), (100, 101));
    assert_eq!(bed.pve.containers().await?, vec![100, 101]);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn each_agent_takes_only_its_nodes_jobs_and_a_job_waits_for_its_agent() -> anyhow::Result<()> {
    let bed = bed("agent-nodes", &["pve1", "pve2", "pve3"]).await?;
    let a1 = bed.agent("pve1")?;
    let a2 = bed.agent("pve2")?;
    let j1 = create_job("pve1", "one", Ipv4Addr::new(127, 0, 0, 41));
    let j2 = create_job("pve2", "two", Ipv4Addr::new(127, 0, 0, 42));
    let j3 = create_job("pve3", "three", Ipv4Addr::new(127, 0, 0, 43));
    for j in [&j3, &j1, &j2] {
        submit(&bed.js, j).await?;
    }
    let e1 = events_until_terminal(&bed.js, j1.job_id, JOB_WITHIN).await?;
    let e2 = events_until_terminal(&bed.js, j2.job_id, JOB_WITHIN).await?;
    assert!(e1.iter().all(|e| e.node.as_str() == "pve1") && result_of(&e1).success);
    assert!(e2.iter().all(|e| e.node.as_str() == "pve2") && result_of(&e2).success);
    assert!(!a1.log_text().contains(&j2.job_id.to_string()) && !a2.log_text().contains(&j1.job_id.to_string()));
    assert!(bed.pve.api_get("/nodes/pve1/lxc").await?.to_string().contains("\"one\""));
    assert!(bed.pve.api_get("/nodes/pve2/lxc").await?.to_string().contains("\"two\""));

    // pve3 has no agent: its job stays queued, untouched.
    let jobs = bed.js.get_stream(pvefleet_schemas::names::JOBS_STREAM).await?;
    let queued = jobs.get_last_raw_message_by_subject("pvefleet.jobs.pve3.create").await?;
    assert_eq!(pvefleet_schemas::Job::decode(&queued.payload)?.job_id, j3.job_id);
    assert!(pvefleet_testbed::jobs::events_now(&bed.js, j3.job_id).await?.is_empty());
    assert_eq!(bed.pve.api_get("/nodes/pve3/lxc").await?, serde_json::json!([]));

    let _a3 = bed.agent("pve3")?;
    let e3 = wait_end(&bed.js, j3.job_id).await?;
    assert!(result_of(&e3).success && e3.iter().all(|e| e.node.as_str() == "pve3"));
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_create_that_fails_twice_with_500_is_retried_into_one_container() -> anyhow::Result<()> {
    let bed = bed("agent-500", &["pve1"]).await?;
    bed.pve.fail("POST", "/nodes/pve1/lxc", 2, 500, "proxy loop detected").await?;
    let agent = bed.agent("pve1")?;
    let job = create_job("pve1", "retry", Ipv4Addr::new(127, 0, 0, 51));
    let events = run_to_end(&bed.js, &job).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert_eq!(bed.pve.containers().await?.len(), 1);
    assert_eq!(agent.log_text().matches("Proxmox API call failed; retrying").count(), 2, "{}", agent.log_text());
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_failed_create_task_reports_its_log_and_leaves_nothing() -> anyhow::Result<()> {
    let bed = bed("agent-task-error", &["pve1"]).await?;
    bed.pve.task_log("vzcreate", &["extracting archive", "Total bytes read: 1024"]).await?;
    bed.pve.task_error("vzcreate", "unable to create CT 100 - no space left on device").await?;
    let _agent = bed.agent("pve1")?;
    let job = create_job("pve1", "doomed", Ipv4Addr::new(127, 0, 0, 52));
    let events = run_to_end(&bed.js, &job).await?;
    let result = result_of(&events);
    let error = result.error.as_ref().unwrap();
    assert_eq!((error.kind, error.step), (ErrorKind::Task, Step::Creating));
    assert!(
        error.message.contains("no space left on device") && error.message.contains("extracting archive"),
        "{}",
        error.message
    );
    // PVE removed the half-made container itself: nothing was left to roll back.
    assert!(!result.rolled_back);
    assert!(events.last().unwrap().message.contains("nothing left behind"), "{}", events.last().unwrap().message);
    assert!(events.iter().any(|e| e.kind == EventType::Log && e.message.contains("Total bytes read")));
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new());
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_parameter_error_is_not_retried_and_names_the_field() -> anyhow::Result<()> {
    let bed = bed("agent-400", &["pve1"]).await?;
    // PVE's own 400 with per-field errors, armed for two requests: one must remain unused.
    bed.pve.fail_with_pve_error("POST", "/nodes/pve1/lxc", 2, "param_storage_storage_does_not").await?;
    let _agent = bed.agent("pve1")?;
    let job = create_job("pve1", "param", Ipv4Addr::new(127, 0, 0, 53));
    let events = run_to_end(&bed.js, &job).await?;
    let error = result_of(&events).error.clone().unwrap();
    assert_eq!((error.kind, error.step), (ErrorKind::Proxmox, Step::Creating));
    assert!(error.message.contains("400 Parameter verification failed.; storage:"), "{}", error.message);
    assert!(error.message.contains("does not support container directories"), "{}", error.message);
    let health = bed.pve.health().await?;
    assert_eq!(health["failures"][0]["times"], 1, "the create was sent more than once: {health}");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_wrong_fingerprint_is_a_clear_error() -> anyhow::Result<()> {
    let bed = bed("agent-tls", &["pve1"]).await?;
    let wrong = (0..32).map(|i| format!("{:02X}", i * 7)).collect::<Vec<_>>().join(":");
    let before = bed.pve.health().await?["requests"].as_u64().unwrap();
    let _agent = Agent::start(
        &bed.dir,
        &[bed.nats.url()],
        &bed.pve,
        AgentOptions { fingerprint: Some(wrong.clone()), ..AgentOptions::node("pve1") },
    )?;
    let job = create_job("pve1", "pinned", Ipv4Addr::new(127, 0, 0, 54));
    submit(&bed.js, &job).await?;
    let events = events_until_terminal(&bed.js, job.job_id, JOB_WITHIN).await?;
    let error = result_of(&events).error.clone().unwrap();
    assert_eq!((error.kind, error.step), (ErrorKind::Proxmox, Step::Validating));
    assert!(error.message.contains("TLS certificate is not trusted"), "{}", error.message);
    assert!(error.message.contains(&format!("not the pinned {wrong}")), "{}", error.message);
    assert!(error.message.contains(&bed.pve.fingerprint), "{}", error.message);
    // Refused in the handshake: fakepve never saw a request from the agent.
    assert_eq!(bed.pve.health().await?["requests"].as_u64().unwrap(), before);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn poison_messages_are_terminated_and_the_agent_goes_on() -> anyhow::Result<()> {
    use pvefleet_testbed::jobs::{events_now, submit_raw};
    let bed = bed("agent-poison", &["pve1", "pve2"]).await?;
    let agent = bed.agent("pve1")?;
    let node = pvefleet_schemas::NodeName::new("pve1")?;

    let truncated = pvefleet_schemas::JobId::new();
    submit_raw(
        &bed.js,
        &node,
        "p1",
        format!(r#"{{"v":1,"kind":"create","job_id":"{truncated}","node":"pve1"}}"#).into_bytes(),
    )
    .await?;
    let future = pvefleet_schemas::JobId::new();
    submit_raw(&bed.js, &node, "p2", format!(r#"{{"v":2,"kind":"create","job_id":"{future}"}}"#).into_bytes()).await?;
    submit_raw(&bed.js, &node, "p3", b"\x00not json at all".to_vec()).await?;
    let mut elsewhere = create_job("pve2", "misrouted", Ipv4Addr::new(127, 0, 0, 55));
    elsewhere.node = pvefleet_schemas::NodeName::new("pve2")?;
    submit_raw(&bed.js, &node, "p4", elsewhere.encode()).await?;
    let good = create_job("pve1", "after-poison", Ipv4Addr::new(127, 0, 0, 56));
    submit(&bed.js, &good).await?;

    let events = events_until_terminal(&bed.js, good.job_id, JOB_WITHIN).await?;
    assert!(result_of(&events).success);
    for (id, kind, words) in [
        (truncated, ErrorKind::InvalidMessage, "`submitted_at`: is required"),
        (future, ErrorKind::InvalidMessage, "version 2"),
        (elsewhere.job_id, ErrorKind::WrongNode, "pve2"),
    ] {
        let events = events_now(&bed.js, id).await?;
        check_event_contract(&events)?;
        let error = result_of(&events).error.clone().unwrap();
        assert_eq!(error.kind, kind);
        assert!(error.message.contains(words), "{}", error.message);
    }
    assert!(agent.log_text().contains("rejected a message without a readable job id"));
    // Nothing is left queued and nothing was created for the poison.
    let mut jobs = bed.js.get_stream(pvefleet_schemas::names::JOBS_STREAM).await?;
    assert_eq!(jobs.info().await?.state.messages, 0);
    assert_eq!(bed.pve.containers().await?.len(), 1);
    bed.dir.pass();
    Ok(())
}

/// An agent told to stop while NATS is down still stops within its grace and a little more: no
/// heartbeat, entry removal or drain waits on a server that is not there (the chaos harness found an
/// agent that took over 10 s, beating on while NATS was away).
#[tokio::test]
async fn sigterm_stops_the_agent_in_time_even_while_nats_is_down() -> anyhow::Result<()> {
    let mut bed = bed("agent-sigterm-nats-down", &["pve1"]).await?;
    let grace = Duration::from_secs(2);
    let mut agent = bed.agent_with(AgentOptions {
        shutdown_grace: grace,
        heartbeat: Duration::from_millis(300),
        ..AgentOptions::node("pve1")
    })?;
    job_in_its_start_step(&bed, "stranded", Ipv4Addr::new(127, 0, 0, 64), 30).await?;
    bed.nats.kill();
    // Once the agent has seen NATS go away.
    pvefleet_testbed::wait_until("the agent to see NATS gone", Duration::from_secs(10), || {
        let seen = agent.log_text().contains("event=disconnected");
        async move { seen.then_some(()) }
    })
    .await?;
    let asked = std::time::Instant::now();
    agent.proc().signal(nix::sys::signal::Signal::SIGTERM)?;
    agent.proc().wait_exit(Duration::from_secs(30)).await?;
    let took = asked.elapsed();
    assert!(took < grace + Duration::from_secs(2), "took {took:?} to stop:\n{}", agent.log_text());
    bed.dir.pass();
    Ok(())
}

/// Slows container starts to `secs` real seconds, submits a job, and waits until its start
/// task is under way (its UPID checkpointed), returning the job.
async fn job_in_its_start_step(
    bed: &Bed,
    hostname: &str,
    ip: Ipv4Addr,
    secs: u64,
) -> anyhow::Result<pvefleet_schemas::Job> {
    bed.pve.time_scale(1.0).await?;
    bed.pve.task_secs(serde_json::json!({"start": secs})).await?;
    let job = create_job("pve1", hostname, ip);
    submit(&bed.js, &job).await?;
    let key = pvefleet_schemas::names::checkpoint_key(&job.node, &job.job_id);
    pvefleet_testbed::wait_until("the start task to be checkpointed", Duration::from_secs(30), || {
        let key = key.clone();
        async move {
            // The agent creates the bucket when it starts; until then there is nothing to see.
            let kv = bed.js.get_key_value(pvefleet_schemas::names::JOBS_BUCKET).await.ok()?;
            let cp = pvefleet_schemas::Checkpoint::decode(&kv.get(key).await.ok()??).ok()?;
            cp.upid.filter(|u| u.contains(":vzstart:")).map(drop)
        }
    })
    .await?;
    Ok(job)
}

async fn start_tasks(bed: &Bed, vmid: u32) -> anyhow::Result<usize> {
    let tasks = bed.pve.api_get(&format!("/nodes/pve1/tasks?vmid={vmid}&limit=100")).await?;
    Ok(tasks.as_array().unwrap().iter().filter(|t| t["type"] == "vzstart").count())
}

#[tokio::test]
async fn a_killed_agent_is_replaced_and_the_job_resumes_into_one_container() -> anyhow::Result<()> {
    let bed = bed("agent-crash", &["pve1"]).await?;
    let mut agent = bed.agent("pve1")?;
    let job = job_in_its_start_step(&bed, "crashy", Ipv4Addr::new(127, 0, 0, 61), 4).await?;
    agent.kill(); // SIGKILL, mid-start
    agent.restart()?; // a new process; the job comes back after ack_wait

    let events = wait_end(&bed.js, job.job_id).await?;
    let result = result_of(&events);
    assert!(result.success, "{events:#?}");
    assert!(events.iter().any(|e| e.kind == EventType::Warning && e.message.contains("redelivered")));
    assert_eq!(events.iter().filter(|e| e.kind == EventType::Accepted).count(), 1);
    let vmid = result.vmid.unwrap().get();
    assert_eq!(bed.pve.containers().await?, vec![vmid], "exactly one container");
    assert_eq!(start_tasks(&bed, vmid).await?, 1, "the start was waited on, not sent again");
    // Nothing more arrives: exactly one terminal event.
    let again = pvefleet_testbed::jobs::events_now(&bed.js, job.job_id).await?;
    assert_eq!(again.len(), events.len());
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn sigterm_hands_the_job_back_and_a_restart_completes_it() -> anyhow::Result<()> {
    let bed = bed("agent-sigterm", &["pve1"]).await?;
    let mut agent = bed.agent("pve1")?;
    let job = job_in_its_start_step(&bed, "graceful", Ipv4Addr::new(127, 0, 0, 62), 3).await?;
    let asked = std::time::Instant::now();
    agent.proc().signal(nix::sys::signal::Signal::SIGTERM)?;
    let status = agent.proc().wait_exit(Duration::from_secs(15)).await?;
    assert!(status.success(), "the agent exited with {status}");
    assert!(asked.elapsed() < agent.opts.shutdown_grace, "took {:?}", asked.elapsed());
    assert!(agent.log_text().contains("agent stopped"));

    agent.restart()?;
    let events = wait_end(&bed.js, job.job_id).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert_eq!(bed.pve.containers().await?.len(), 1);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn the_registry_shows_a_job_running_and_then_not_without_waiting_for_a_heartbeat() -> anyhow::Result<()> {
    let bed = bed("agent-running-set", &["pve1"]).await?;
    // Beats far apart: only a beat on the running set's change can show it in time.
    let _agent = bed.agent_with(AgentOptions { heartbeat: Duration::from_secs(30), ..AgentOptions::node("pve1") })?;
    let running = |kv: async_nats::jetstream::kv::Store| async move {
        let beat = pvefleet_schemas::Heartbeat::decode(&kv.get("pve1").await.ok()??).ok()?;
        Some(beat.running_jobs)
    };
    // The agent makes the bucket at its start.
    let kv = pvefleet_testbed::wait_until("the first heartbeat", Duration::from_secs(20), || async {
        let kv = bed.js.get_key_value(pvefleet_schemas::names::NODES_BUCKET).await.ok()?;
        running(kv.clone()).await.map(|_| kv)
    })
    .await?;
    bed.pve.task_secs(serde_json::json!({"start": 3})).await?;
    bed.pve.time_scale(1.0).await?;
    let job = create_job("pve1", "watched", Ipv4Addr::new(127, 0, 0, 91));
    submit(&bed.js, &job).await?;
    pvefleet_testbed::wait_until("the job shown running", Duration::from_secs(5), || {
        let kv = kv.clone();
        async move { running(kv).await.filter(|r| r.contains(&job.job_id)) }
    })
    .await?;
    let events = events_until_terminal(&bed.js, job.job_id, JOB_WITHIN).await?;
    assert!(result_of(&events).success, "{events:#?}");
    let ended = std::time::Instant::now();
    pvefleet_testbed::wait_until("the job shown ended", Duration::from_secs(5), || {
        let kv = kv.clone();
        async move { running(kv).await.filter(Vec::is_empty) }
    })
    .await?;
    assert!(ended.elapsed() < Duration::from_secs(5), "well within the 30 s heartbeat");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn heartbeats_show_capacity_and_vanish_when_the_agent_dies() -> anyhow::Result<()> {
    let bed = bed("agent-heartbeat", &["pve1"]).await?;
    let mut agent = bed.agent("pve1")?;
    let beat = pvefleet_testbed::wait_until("a heartbeat", Duration::from_secs(20), || async {
        let kv = bed.js.get_key_value(pvefleet_schemas::names::NODES_BUCKET).await.ok()?;
        pvefleet_schemas::Heartbeat::decode(&kv.get("pve1").await.ok()??).ok()
    })
    .await?;
    assert_eq!(beat.node.as_str(), "pve1");
    assert_eq!(beat.concurrency, 4);
    assert_eq!(beat.agent_version, env!("CARGO_PKG_VERSION"));
    let capacity = beat.capacity.expect("capacity from the Proxmox API");
    assert_eq!(capacity.memory_total_bytes, 8 << 30);
    assert!(capacity.memory_free_bytes > 0 && capacity.cpus == 4);
    assert!(capacity.storages.iter().any(|s| s.storage == "local-lvm" && s.avail_bytes > 0), "{:?}", capacity.storages);

    agent.kill();
    let gone_after = std::time::Instant::now();
    let kv = bed.js.get_key_value(pvefleet_schemas::names::NODES_BUCKET).await?;
    pvefleet_testbed::wait_until("the dead agent's entry to expire", Duration::from_secs(10), || async {
        kv.get("pve1").await.ok()?.is_none().then_some(())
    })
    .await?;
    // Heartbeat 1 s: gone within about three beats (plus the server's expiry sweep).
    assert!(gone_after.elapsed() < Duration::from_secs(6), "{:?}", gone_after.elapsed());
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn an_agent_without_rights_to_create_streams_uses_the_existing_ones() -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("agent-rights");
    // The agent's user may do everything but create or change streams and consumers.
    let nats = NatsServer::start_with(
        &dir,
        r#"authorization { users: [
             { user: admin, password: admin }
             { user: agent, password: agent, permissions: { publish: { allow: ">", deny: [
                 "$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>",
                 "$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.DURABLE.CREATE.>" ] } } }
           ] }"#,
    )
    .await?;
    let pve = FakePve::start(&dir, FakePveOptions::default()).await?;
    let admin_client =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin".into()).connect(nats.url()).await?;
    let js = async_nats::jetstream::new(admin_client);

    // Without the layout the restricted agent cannot start, and says why.
    let mut refused = Agent::start(&dir, &[nats.url_as("agent", "agent")], &pve, AgentOptions::node("pve1"))?;
    pvefleet_testbed::wait_until("the agent to report the missing layout", Duration::from_secs(20), || {
        let log = refused.log_text();
        async move { log.contains("NATS layout not ready").then_some(()) }
    })
    .await?;
    refused.kill();

    // An admin's agent makes the layout; the restricted one then works with it as it is.
    let mut admin = Agent::start(&dir, &[nats.url_as("admin", "admin")], &pve, AgentOptions::node("pve1"))?;
    pvefleet_testbed::wait_until("the layout", Duration::from_secs(20), || {
        let log = admin.log_text();
        async move { log.contains("agent ready").then_some(()) }
    })
    .await?;
    admin.kill();
    pvefleet_testbed::trust::put_policy(&js, &pvefleet_testbed::trust::everything(), pvefleet_testbed::trust::admin())
        .await?;
    let _agent = Agent::start(&dir, &[nats.url_as("agent", "agent")], &pve, AgentOptions::node("pve1"))?;
    let job = create_job("pve1", "restricted", Ipv4Addr::new(127, 0, 0, 63));
    let events = run_to_end(&js, &job).await?;
    assert!(result_of(&events).success);
    dir.pass();
    Ok(())
}

#[tokio::test]
async fn long_jobs_are_kept_alive_and_queued_ones_wait_in_the_stream() -> anyhow::Result<()> {
    let bed = bed("agent-keepalive", &["pve1"]).await?;
    // Creates take 6 s, longer than the 4 s ack wait: only progress acks keep them delivered once.
    bed.pve.time_scale(1.0).await?;
    bed.pve.task_secs(serde_json::json!({"create": 6})).await?;
    let _agent = Agent::start(
        &bed.dir,
        &[bed.nats.url()],
        &bed.pve,
        AgentOptions { concurrency: 2, ..AgentOptions::node("pve1") },
    )?;
    let jobs: Vec<_> =
        (0..3).map(|i| create_job("pve1", &format!("slow-{i}"), Ipv4Addr::new(127, 0, 0, 70 + i))).collect();
    for job in &jobs {
        submit(&bed.js, job).await?;
    }
    for job in &jobs {
        let events = wait_end(&bed.js, job.job_id).await?;
        assert!(result_of(&events).success);
        // The third job waited in the stream, not in the agent, so its ack timer never ran out.
        assert!(!events.iter().any(|e| e.message.contains("redelivered")), "{events:#?}");
    }
    let consumer_info =
        bed.js.get_stream(pvefleet_schemas::names::JOBS_STREAM).await?.consumer_info("agent-pve1").await?;
    assert_eq!(consumer_info.config.max_ack_pending, 2);
    assert_eq!(consumer_info.num_redelivered, 0);
    assert_eq!(bed.pve.containers().await?.len(), 3);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_failure_after_start_rolls_back_a_running_container_or_keeps_it() -> anyhow::Result<()> {
    let bed = bed("agent-rollback", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    // DHCP never answers in fakepve: the connecting step times out after the container runs.
    let mut destroy = create_job("pve1", "no-ip", Ipv4Addr::new(127, 0, 0, 80));
    destroy.container.ip = pvefleet_schemas::IpConfig::Dhcp;
    destroy.options.timeouts.ip = pvefleet_schemas::HumanDuration(Duration::from_millis(500));
    let mut keep = destroy.clone();
    keep.job_id = pvefleet_schemas::JobId::new();
    keep.options.rollback = pvefleet_schemas::RollbackPolicy::Keep;

    let events = run_to_end(&bed.js, &destroy).await?;
    let result = result_of(&events);
    let error = result.error.as_ref().unwrap();
    assert_eq!((error.kind, error.step), (ErrorKind::Timeout, Step::Connecting));
    assert!(result.rolled_back && events.iter().any(|e| e.step == Some(Step::RollingBack)));
    assert!(events.last().unwrap().message.contains("destroyed"), "{}", events.last().unwrap().message);
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new());

    submit(&bed.js, &keep).await?;
    let events = events_until_terminal(&bed.js, keep.job_id, JOB_WITHIN).await?;
    let result = result_of(&events);
    assert!(!result.rolled_back);
    let vmid = result.vmid.unwrap().get();
    assert_eq!(bed.pve.containers().await?, vec![vmid]);
    assert_eq!(bed.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/status/current")).await?["status"], "running");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_vmid_held_by_a_stranger_is_never_touched() -> anyhow::Result<()> {
    let bed = bed("agent-conflict", &["pve1"]).await?;
    bed.pve
        .api(
            reqwest::Method::POST,
            "/nodes/pve1/lxc",
            &[
                ("vmid", "300"),
                ("hostname", "stranger"),
                ("ostemplate", pvefleet_testbed::fakepve::OSTEMPLATE),
                ("rootfs", "local-lvm:4"),
            ],
        )
        .await?;
    let _agent = bed.agent("pve1")?;
    let mut job = create_job("pve1", "mine", Ipv4Addr::new(127, 0, 0, 81));
    job.container.vmid = Some(pvefleet_schemas::Vmid::new(300)?);
    let events = run_to_end(&bed.js, &job).await?;
    let error = result_of(&events).error.clone().unwrap();
    assert_eq!(error.kind, ErrorKind::Conflict);
    assert!(error.message.contains("pvefleet did not create"), "{}", error.message);
    let cfg = bed.pve.api_get("/nodes/pve1/lxc/300/config").await?;
    assert_eq!(cfg["hostname"], "stranger");
    assert_eq!(bed.pve.containers().await?, vec![300]);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_password_sealed_for_another_nodes_agent_cannot_be_opened() -> anyhow::Result<()> {
    let bed = bed("agent-sealed-elsewhere", &["pve1", "pve2"]).await?;
    let pve1 = bed.agent("pve1")?;
    let _pve2 = bed.agent("pve2")?;
    let mut job = create_job("pve2", "misdirected", Ipv4Addr::new(127, 0, 0, 34));
    job.container.root_password = Some(pve1.sealing_key().await?.seal_for_job(&job.job_id, b"for pve1 only"));
    let events = run_to_end(&bed.js, &job).await?;
    let error = result_of(&events).error.clone().unwrap();
    assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Validating));
    assert!(error.message.starts_with("container.root_password: sealed to the key SHA256:"), "{}", error.message);
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new(), "nothing was created");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_burst_of_garbage_does_not_stop_the_agent_running_jobs() -> anyhow::Result<()> {
    use rand::{RngExt as _, SeedableRng as _};
    let bed = bed("agent-garbage", &["pve1"]).await?;
    let mut agent = bed.agent("pve1")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261127);
    let node = pvefleet_schemas::NodeName::new("pve1")?;
    let mut real = Vec::new();
    for i in 0..300u32 {
        let payload = match i % 4 {
            // Bytes.
            0 => (0..rng.random_range(0..300)).map(|_| rng.random::<u8>()).collect::<Vec<u8>>(),
            // A job with one field made wrong (with its id still readable, so it gets an error event).
            1 => {
                let mut v = serde_json::to_value(create_job("pve1", "bad", Ipv4Addr::new(127, 0, 0, 35)))?;
                let field = ["memory", "hostname", "ip", "vmid", "swap"][rng.random_range(0..5)];
                v["container"][field] = serde_json::json!({"x": rng.random::<u32>()});
                serde_json::to_vec(&v)?
            }
            // JSON of another shape, and a job of another version.
            2 => serde_json::to_vec(&serde_json::json!({"v": rng.random::<u8>(), "job_id": i, "type": "complete"}))?,
            _ => {
                if i % 100 == 3 {
                    let job = create_job("pve1", &format!("real-{i}"), Ipv4Addr::new(127, 0, 0, 36));
                    real.push(job.job_id);
                    job.encode()
                } else {
                    b"{\"v\":1,\"kind\":\"create\"".to_vec()
                }
            }
        };
        pvefleet_testbed::jobs::submit_raw(&bed.js, &node, &format!("garbage-{i}"), payload).await?;
    }
    assert_eq!(real.len(), 3);
    for id in real {
        let events = wait_end(&bed.js, id).await?;
        assert!(result_of(&events).success, "{events:#?}");
    }
    assert!(agent.is_running(), "the agent died: {}", agent.log_text());
    let jobs = bed.js.get_stream(pvefleet_schemas::names::JOBS_STREAM).await?;
    pvefleet_testbed::wait_until("every message settled", Duration::from_secs(60), || async {
        let mut jobs = jobs.clone();
        (jobs.info().await.ok()?.state.messages == 0).then_some(())
    })
    .await?;
    bed.dir.pass();
    Ok(())
}
