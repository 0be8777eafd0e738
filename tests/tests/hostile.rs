//! The holes a hostile review reproduced with one stolen part (issue 18), each tried again
//! here as the attacker would, on real servers: every test failed before its fix.

use std::net::Ipv4Addr;
use std::time::Duration;

use pvefleet_schemas::{ErrorKind, Event, JobResult, Step};
use pvefleet_testbed::Fleet;
use pvefleet_testbed::agent::AgentOptions;
use pvefleet_testbed::jobs::{check_event_contract, create_job, events_until_terminal, submit};

const JOB_WITHIN: Duration = Duration::from_secs(60);

fn result_of(events: &[Event]) -> &JobResult {
    events.last().and_then(|e| e.result.as_ref()).expect("a terminal event with a result")
}

/// The node's running jobs, as its heartbeat shows them.
async fn running_jobs(bed: &Fleet, node: &str) -> Option<Vec<pvefleet_schemas::JobId>> {
    let kv = bed.js.get_key_value(pvefleet_schemas::names::NODES_BUCKET).await.ok()?;
    let beat = pvefleet_schemas::Heartbeat::decode(&kv.get(node).await.ok()??).ok()?;
    Some(beat.running_jobs)
}

/// Hole 5: a job whose timeout overflows the agent's clock made it panic, be redelivered and
/// panic again without end, its slot taken for good. Now every duration, count and size has a
/// bound at validating, and a panic inside a job (a bug) ends that job once, rolled back.
#[tokio::test]
async fn a_poison_job_is_refused_and_a_panicking_job_ends_once_rolled_back() -> anyhow::Result<()> {
    let bed = Fleet::start("hostile-poison", &["pve1"]).await?;
    let mut agent = bed.agent_with(AgentOptions {
        env: vec![("PVEFLEET_TEST_PANIC_IN".into(), "connecting".into())],
        ..AgentOptions::node("pve1")
    })?;
    // Straight onto the wire, as whoever holds the coordinator's password could.
    let mut poison = create_job("pve1", "poison", Ipv4Addr::new(127, 0, 0, 30));
    poison.options.timeouts.task = pvefleet_schemas::HumanDuration(Duration::from_secs(u64::MAX));
    poison.deploy.packages = (0..501).map(|i| format!("pkg{i}")).collect();
    submit(&bed.js, &poison).await?;
    let events = events_until_terminal(&bed.js, poison.job_id, JOB_WITHIN).await?;
    check_event_contract(&events)?;
    let error = result_of(&events).error.clone().expect("refused");
    assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Validating), "{error:?}");
    for field in ["options.timeouts.task", "deploy.packages"] {
        assert!(error.message.contains(field), "{field} in {}", error.message);
    }
    assert!(bed.pve.containers().await?.is_empty());

    // A bug that panics as the job reaches `connecting`, after its container was made and
    // started: the job ends once, with kind `internal`, its container rolled back.
    let bug = create_job("pve1", "panics", Ipv4Addr::new(127, 0, 0, 31));
    submit(&bed.js, &bug).await?;
    let events = events_until_terminal(&bed.js, bug.job_id, JOB_WITHIN).await?;
    check_event_contract(&events)?;
    let result = result_of(&events);
    let error = result.error.clone().expect("failed");
    assert_eq!((error.kind, error.step), (ErrorKind::Internal, Step::Connecting), "{events:#?}");
    assert!(error.message.contains("test hook"), "{}", error.message);
    assert!(result.rolled_back, "{events:#?}");
    assert!(bed.pve.containers().await?.is_empty(), "the container was rolled back");
    // Its slot is free again, the agent still runs, and the message is gone.
    pvefleet_testbed::wait_until("no job shown running", Duration::from_secs(10), || async {
        running_jobs(&bed, "pve1").await.filter(Vec::is_empty)
    })
    .await?;
    assert!(agent.is_running());
    pvefleet_testbed::wait_until("the queue to be empty", Duration::from_secs(10), || async {
        let mut jobs = bed.js.get_stream(pvefleet_schemas::names::JOBS_STREAM).await.ok()?;
        (jobs.info().await.ok()?.state.messages == 0).then_some(())
    })
    .await?;
    bed.dir.pass();
    Ok(())
}

/// Hole 1: one agent's NATS password impersonated another node. `agent-pve1` may write only
/// the registry key `pve1` (the server's permissions), but the coordinator believed the
/// payload's `node`: pve2 showed 32 TiB free, `nodes trust pve2` pinned the attacker's key, and
/// a fresh store's first `submit --node auto` pinned it too and sealed the root password to it.
/// Now a beat is believed only for its own key, a capacity that cannot be true is ignored, and
/// a key is trusted only as the node itself prints it.
#[tokio::test]
async fn an_agents_password_cannot_pass_for_another_node_nor_get_a_password_sealed_to_it() -> anyhow::Result<()> {
    use pvefleet_schemas::{Capacity, Heartbeat, StorageCapacity, Timestamp, V1};
    use pvefleet_testbed::cli::{Pvefleet, TestDb};
    use pvefleet_testbed::shipped;
    pvefleet_testbed::init_tracing();
    let dir = pvefleet_testbed::TestDir::new("hostile-impersonation");
    let (nats, ca) = shipped::single(&dir).await?;
    let pve = pvefleet_testbed::FakePve::start(
        &dir,
        pvefleet_testbed::FakePveOptions { nodes: vec!["pve1".into(), "pve2".into()], ..Default::default() },
    )
    .await?;
    let db = TestDb::sqlite(&dir);
    let admin = Pvefleet::new(&dir, &nats.url_as("coordinator", "coord-pw"), &db).with_ca(&ca.ca);
    admin.must(&["setup"]).await?;
    let secrets = tempfile::tempdir()?;
    let password_file = secrets.path().join("pw");
    std::fs::write(&password_file, "s3cret-root\n")?;
    let password_file = password_file.display().to_string();

    // The attacker holds agent-pve1's password and its own sealing key.
    let (rogue, _errors) = shipped::restricted_client(&nats.url(), &ca, "agent-pve1", "pve1-pw", "_INBOX_pve1").await?;
    let rogue = async_nats::jetstream::new(rogue);
    let evil = pvefleet_schemas::seal::SecretKey::generate();
    let lie = |node: &str, free: u64| Heartbeat {
        v: V1,
        node: pvefleet_schemas::NodeName::new(node).expect("a node"),
        agent_version: "0.1.0".into(),
        concurrency: 4,
        running_jobs: vec![],
        capacity: Some(Capacity {
            memory_total_bytes: 32 << 40,
            memory_free_bytes: free,
            cpus: 64,
            cpu_load: 0.01,
            storages: vec![StorageCapacity { storage: "local-lvm".into(), total_bytes: 1 << 50, avail_bytes: 1 << 50 }],
        }),
        started_at: Timestamp::now(),
        last_seen: Timestamp::now(),
        sealing_key: Some(evil.public().to_string()),
    };
    // Under its own key, speaking for pve2.
    let put = |beat: Heartbeat| {
        let rogue = rogue.clone();
        async move {
            rogue
                .publish("$KV.pvefleet-nodes.pve1", serde_json::to_vec(&beat)?.into())
                .await?
                .await
                .map_err(anyhow::Error::from)
        }
    };
    put(lie("pve2", 32 << 40)).await?;
    let nodes = admin.must(&["nodes", "--json"]).await?;
    let beats: Vec<Heartbeat> = serde_json::from_str(&nodes.stdout)?;
    assert!(beats.iter().all(|b| b.node.as_str() != "pve2"), "pve2 is impersonated: {beats:?}");
    let trust = admin.run(&["nodes", "trust", "pve2"]).await?;
    assert!(!trust.ok(), "{trust:?}");
    let auto = admin
        .run(&[
            "submit",
            "--node",
            "auto",
            "--hostname",
            "lured",
            "--ostemplate",
            pvefleet_testbed::fakepve::OSTEMPLATE,
            "--password-file",
            &password_file,
        ])
        .await?;
    assert!(!auto.ok(), "a job was placed on the impersonated node: {auto:?}");

    // Under its own key for its own node, with figures no node has (more free than in all)
    // and the attacker's key: not placed, and its key is not trusted on sight.
    put(lie("pve1", 64 << 40)).await?;
    let nodes = admin.must(&["nodes", "--json"]).await?;
    let beats: Vec<Heartbeat> = serde_json::from_str(&nodes.stdout)?;
    assert!(beats.iter().all(|b| b.capacity.is_none()), "an impossible capacity was believed: {beats:?}");
    let sealed = admin
        .run(&[
            "submit",
            "--node",
            "pve1",
            "--hostname",
            "sealed",
            "--ostemplate",
            pvefleet_testbed::fakepve::OSTEMPLATE,
            "--password-file",
            &password_file,
        ])
        .await?;
    assert_eq!(sealed.code, Some(1), "{sealed:?}");
    assert!(sealed.stderr.contains("no sealing key is trusted for pve1"), "{sealed:?}");
    let js = async_nats::jetstream::new(
        async_nats::ConnectOptions::with_user_and_password("coordinator".into(), "coord-pw".into())
            .add_root_certificates(ca.ca.clone())
            .require_tls(true)
            .connect(nats.url())
            .await?,
    );
    let queued = js.get_stream(pvefleet_schemas::names::JOBS_STREAM).await?.info().await?.state.messages;
    assert_eq!(queued, 0, "nothing was published");

    // The real agent of pve1, trusted as the node prints its key, gets its password sealed.
    let agent = pvefleet_testbed::agent::Agent::start(
        &dir,
        &[nats.url_as("agent-pve1", "pve1-pw")],
        &pve,
        AgentOptions {
            inbox_prefix: Some("_INBOX_pve1".into()),
            nats_ca: Some(ca.ca.clone()),
            ..AgentOptions::node("pve1")
        },
    )?;
    let fingerprint = admin.trust(&agent).await?;
    assert_ne!(fingerprint, evil.public().fingerprint());
    let submit = admin
        .run(&[
            "submit",
            "--node",
            "pve1",
            "--hostname",
            "trusted",
            "--ostemplate",
            pvefleet_testbed::fakepve::OSTEMPLATE,
            "--ip",
            "127.0.0.32/32",
            "--password-file",
            &password_file,
            "--watch",
        ])
        .await?;
    assert!(submit.ok(), "{submit:?}");
    dir.pass();
    Ok(())
}
