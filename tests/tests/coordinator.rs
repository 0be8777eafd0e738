//! The `pvefleet` CLI end to end: real nats-server, fakepve and agents; the built binaries;
//! the store on SQLite and on the machine's Postgres.

use std::time::{Duration, Instant};

use pvefleet_schemas::{Event, EventType, names::JOBS_STREAM};
use pvefleet_testbed::cli::{Pvefleet, TestDb};
use pvefleet_testbed::fakepve::OSTEMPLATE;
use pvefleet_testbed::{Fleet, TestDir, wait_until};

/// A fleet plus the CLI, its store, and the layout made by `pvefleet setup`.
struct Bed {
    fleet: Fleet,
    cli: Pvefleet,
    _db: TestDb,
}

impl std::ops::Deref for Bed {
    type Target = Fleet;

    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

async fn bed(name: &str, nodes: &[&str], db: impl FnOnce(&TestDir) -> anyhow::Result<TestDb>) -> anyhow::Result<Bed> {
    let fleet = Fleet::start(name, nodes).await?;
    let db = db(&fleet.dir)?;
    let cli = Pvefleet::new(&fleet.dir, &fleet.nats.url(), &db);
    let setup = cli.run(&["setup"]).await?;
    anyhow::ensure!(setup.ok(), "setup failed: {setup:?}");
    Ok(Bed { fleet, cli, _db: db })
}

impl Bed {
    async fn queued_jobs(&self) -> anyhow::Result<u64> {
        Ok(self.js.get_stream(JOBS_STREAM).await?.info().await?.state.messages)
    }

    /// Polls `pvefleet job ID --json` until the recorder has the job in `state`.
    async fn recorded(&self, job: &str, state: &str) -> anyhow::Result<serde_json::Value> {
        wait_until(&format!("job {job} recorded as {state}"), Duration::from_secs(30), || async {
            let run = self.cli.run(&["job", job, "--json"]).await.ok()?;
            let v: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
            (v["state"] == state).then_some(v)
        })
        .await
    }
}

fn submit_args<'a>(node: &'a str, hostname: &'a str, ip: &'a str) -> Vec<&'a str> {
    vec!["submit", "--node", node, "--hostname", hostname, "--ostemplate", OSTEMPLATE, "--ip", ip]
}

async fn job_flow(bed: Bed) -> anyhow::Result<()> {
    let _agent = bed.agent("pve1")?;
    let _recorder = bed.cli.recorder("recorder")?;
    let submit = bed.cli.run(&submit_args("pve1", "flow", "127.0.0.2/32")).await?;
    assert!(submit.ok(), "{submit:?}");
    let job = submit.stdout.trim().to_owned();
    let watch = bed.cli.run(&["watch", &job]).await?;
    assert_eq!(watch.code, Some(0), "{watch:?}");
    assert!(watch.stdout.contains("complete") && watch.stdout.contains("ip 127.0.0.2"), "{}", watch.stdout);

    let shown = bed.recorded(&job, "succeeded").await?;
    assert_eq!(shown["node"], "pve1");
    assert_eq!(shown["ip"], "127.0.0.2");
    assert!(shown["vmid"].as_i64().is_some() && shown["finished_at"].is_string());
    assert!(shown["spec"]["container"]["root_password"].is_null());
    let listed = bed.cli.run(&["jobs", "--state", "succeeded", "--json"]).await?;
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let table = bed.cli.run(&["jobs"]).await?;
    assert!(table.ok() && table.stdout.contains(&job) && table.stdout.contains("succeeded"), "{table:?}");

    // Watching a finished job replays it and ends at once; --json lines are events.
    let started = Instant::now();
    let replay = bed.cli.run(&["watch", &job, "--json"]).await?;
    assert_eq!(replay.code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let events: Vec<Event> = replay.stdout.lines().map(|l| Event::decode(l.as_bytes())).collect::<Result<_, _>>()?;
    pvefleet_testbed::jobs::check_event_contract(&events)?;
    assert_eq!(events.last().unwrap().kind, EventType::Complete);
    let recorded = shown["events"].as_u64().unwrap();
    assert_eq!(recorded, events.len() as u64, "the recorder has every event once");
    bed.dir.pass();
    Ok(())
}

/// `pvefleet setup` run while agents start (the README's order is "either first"): each makes
/// the KV buckets it misses, with its own heartbeat TTL, so the two can meet between "not
/// there" and "made". Neither may fail for it. (CI saw setup refused with "stream name already
/// in use with a different configuration" about half the times the race was run.)
#[tokio::test]
async fn setup_and_an_agent_starting_at_once_never_refuse_each_other() -> anyhow::Result<()> {
    use pvefleet_schemas::names::{JOBS_BUCKET, NODES_BUCKET, VMIDS_BUCKET};
    let fleet = Fleet::start("setup-race", &["pve1"]).await?;
    let db = TestDb::sqlite(&fleet.dir);
    let cli = Pvefleet::new(&fleet.dir, &fleet.nats.url(), &db);
    for round in 1..=12 {
        for bucket in [JOBS_BUCKET, NODES_BUCKET, VMIDS_BUCKET] {
            let _ = fleet.js.delete_key_value(bucket).await;
        }
        let mut agent = fleet.agent("pve1")?;
        let setup = cli.run(&["setup"]).await?;
        assert!(setup.ok(), "round {round}: {setup:?}");
        wait_until(&format!("round {round}: the agent to be ready"), Duration::from_secs(30), || {
            let exited = agent.proc().try_wait();
            // Every round's agent writes to the same log: this round's is ready when the log
            // says so for the round-th time.
            let log = agent.log_text();
            async move {
                match exited {
                    Some(status) => Some(Err(anyhow::anyhow!("the agent exited with {status}"))),
                    None => (log.matches("agent ready").count() >= round).then_some(Ok(())),
                }
            }
        })
        .await??;
        agent.kill();
    }
    fleet.dir.pass();
    Ok(())
}

#[tokio::test]
async fn submit_watch_and_the_recorded_job_on_sqlite() -> anyhow::Result<()> {
    job_flow(bed("cli-sqlite", &["pve1"], |dir| Ok(TestDb::sqlite(dir))).await?).await
}

#[tokio::test]
async fn submit_watch_and_the_recorded_job_on_postgres() -> anyhow::Result<()> {
    job_flow(bed("cli-postgres", &["pve1"], |_| TestDb::postgres("flow")).await?).await
}

#[tokio::test]
async fn bad_input_exits_2_names_the_field_and_publishes_nothing() -> anyhow::Result<()> {
    let bed = bed("cli-bad", &["pve1"], |dir| Ok(TestDb::sqlite(dir))).await?;
    let spec = bed.dir.path().join("typo.toml");
    std::fs::write(&spec, format!("[container]\nhostname = \"web\"\nostemplate = \"{OSTEMPLATE}\"\nmemroy = 1024\n"))?;
    let spec = spec.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (submit_args("pve1", "bad_host!", "dhcp"), "hostname"),
        ([submit_args("pve1", "web", "dhcp"), vec!["--memory", "0"]].concat(), "memory"),
        (submit_args("pve.1", "web", "dhcp"), "node"),
        (vec!["submit", "--node", "pve1", "--spec", &spec], "memroy"),
        ([submit_args("pve1", "web", "dhcp"), vec!["--password", "hunter22"]].concat(), "--password"),
        ([submit_args("pve1", "web", "dhcp"), vec!["--template", "nope"]].concat(), "template"),
        ([submit_args("pve1", "web", "10.0.0.5/24"), vec!["--gw", "10.9.9.9"]].concat(), "gw"),
    ];
    for (args, field) in cases {
        let run = bed.cli.run(&args).await?;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.contains(field), "{args:?} does not name {field}: {}", run.stderr);
        assert!(!run.stderr.contains("hunter22"), "the password was echoed");
    }
    assert_eq!(bed.queued_jobs().await?, 0, "nothing was published");
    assert_eq!(bed.cli.run(&["watch", "01JDQ8Z3M4X6T2E9R5W7Y1K0AB"]).await?.code, Some(2), "unknown job");
    assert_eq!(bed.cli.run(&["watch", "not-a-job"]).await?.code, Some(2));
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_request_id_gives_one_job_and_auto_placement_picks_the_freest_node() -> anyhow::Result<()> {
    let bed = bed("cli-request", &["pve1", "pve2"], |dir| Ok(TestDb::sqlite(dir))).await?;
    // pve2 has more memory free than pve1.
    bed.pve.node_memory_used("pve1", 6 << 30).await?;
    bed.pve.node_memory_used("pve2", 1 << 30).await?;
    let _a1 = bed.agent("pve1")?;
    let _a2 = bed.agent("pve2")?;
    let js = bed.js.clone();
    wait_until("both agents in the registry", Duration::from_secs(20), || async {
        let kv = js.get_key_value(pvefleet_schemas::names::NODES_BUCKET).await.ok()?;
        let beats = [kv.get("pve1").await.ok()??, kv.get("pve2").await.ok()??];
        beats.iter().all(|b| pvefleet_schemas::Heartbeat::decode(b).is_ok_and(|h| h.capacity.is_some())).then_some(())
    })
    .await?;
    let nodes = bed.cli.run(&["nodes"]).await?;
    assert!(nodes.ok() && nodes.stdout.contains("pve1") && nodes.stdout.contains("pve2"), "{nodes:?}");

    let args = [submit_args("auto", "placed", "127.0.0.3/32"), vec!["--request-id", "deploy-42"]].concat();
    let first = bed.cli.run(&args).await?;
    let second = bed.cli.run(&args).await?;
    assert!(first.ok() && second.ok(), "{first:?} {second:?}");
    assert_eq!(first.stdout.trim(), second.stdout.trim(), "the same request, the same job");
    let job = first.stdout.trim();
    let watch = bed.cli.run(&["watch", job, "--json"]).await?;
    assert_eq!(watch.code, Some(0), "{watch:?}");
    let last = Event::decode(watch.stdout.lines().last().unwrap().as_bytes())?;
    assert_eq!(last.node.as_str(), "pve2", "placed on the node with the most free memory");
    // Right after its end the job holds no slot, though the agent's beat may still list it.
    let nodes = bed.cli.must(&["nodes"]).await?;
    let pve2 = nodes.stdout.lines().find(|l| l.contains("pve2")).unwrap_or_default();
    assert!(pve2.contains(" 0/"), "a finished job's slot shows as running: {}", nodes.stdout);
    assert_eq!(bed.pve.containers().await?.len(), 1, "one container for the request");

    // No node fits: a clear error, nothing published.
    let before = bed.queued_jobs().await?;
    let huge = [submit_args("auto", "huge", "dhcp"), vec!["--memory", "65536"]].concat();
    let run = bed.cli.run(&huge).await?;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("no live agent fits") && run.stderr.contains("needs 65536"), "{}", run.stderr);
    assert_eq!(bed.queued_jobs().await?, before);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn templates_are_validated_stored_and_used() -> anyhow::Result<()> {
    let bed = bed("cli-template", &["pve1"], |dir| Ok(TestDb::sqlite(dir))).await?;
    let motd = bed.dir.path().join("motd");
    std::fs::write(&motd, "welcome\n")?;
    let file = bed.dir.path().join("web.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"web\"\ndescription = \"a web server\"\n[container]\nostemplate = \"{OSTEMPLATE}\"\nmemory = 1024\n\
             [deploy]\npackages = [\"nginx\"]\n[[deploy.files]]\npath = \"/etc/motd\"\nsource = \"motd\"\n\
             [[deploy.scripts]]\nname = \"hello\"\nbody = \"echo hello\"\n"
        ),
    )?;
    let add = bed.cli.run(&["template", "add", &file.display().to_string()]).await?;
    assert!(add.ok(), "{add:?}");
    std::fs::remove_file(&motd)?; // read at add time: the template no longer needs it
    let show = bed.cli.run(&["template", "show", "web"]).await?;
    assert!(show.stdout.contains("welcome") && show.stdout.contains("nginx"), "{}", show.stdout);
    let list = bed.cli.run(&["template", "list"]).await?;
    assert!(list.stdout.contains("a web server") && list.stdout.contains("hello"), "{}", list.stdout);

    let submit = bed
        .cli
        .run(&[
            "submit",
            "--template",
            "web",
            "--node",
            "pve1",
            "--hostname",
            "from-template",
            "--memory",
            "2048",
            "--json",
        ])
        .await?;
    assert!(submit.ok(), "{submit:?}");
    let job: serde_json::Value = serde_json::from_str(&submit.stdout)?;
    assert_eq!(job["container"]["memory"], 2048, "flags override the template");
    assert_eq!(job["template"], "web");
    assert_eq!(job["deploy"]["files"][0]["content"], "welcome\n");

    let bad = bed.dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"bad\"\n[[deploy.files]]\npath = \"relative\"\ncontent = \"x\"\n")?;
    let run = bed.cli.run(&["template", "add", &bad.display().to_string()]).await?;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("deploy.files[0].path"), "{}", run.stderr);
    bed.cli.must(&["template", "rm", "web"]).await?;
    assert_eq!(bed.cli.run(&["template", "show", "web"]).await?.code, Some(2));
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn cancel_a_queued_and_a_running_job() -> anyhow::Result<()> {
    let bed = bed("cli-cancel", &["pve1", "pve2"], |dir| Ok(TestDb::sqlite(dir))).await?;
    let _recorder = bed.cli.recorder("recorder")?;
    // pve2 has no agent: its job stays queued.
    let queued = bed.cli.run(&submit_args("pve2", "waiting", "127.0.0.4/32")).await?;
    let queued = queued.stdout.trim().to_owned();
    let watcher = bed.cli.command(&["watch", &queued])?.output();
    let cancel = bed.cli.run(&["cancel", &queued]).await?;
    assert!(cancel.ok() && cancel.stdout.contains("cancelled while queued"), "{cancel:?}");
    let watched: pvefleet_testbed::cli::Run = watcher.await?.into();
    assert_eq!(watched.code, Some(1), "the watcher ended with the cancel: {watched:?}");
    assert_eq!(bed.queued_jobs().await?, 0);
    bed.recorded(&queued, "cancelled").await?;

    // Running: slow starts so the job is mid-flight, then cancel through its agent.
    bed.pve.time_scale(1.0).await?;
    bed.pve.task_secs(serde_json::json!({"start": 8})).await?;
    let _agent = bed.agent("pve1")?;
    let running = bed.cli.run(&submit_args("pve1", "doomed", "127.0.0.5/32")).await?;
    let running = running.stdout.trim().to_owned();
    let js = bed.js.clone();
    let id: pvefleet_schemas::JobId = running.parse()?;
    wait_until("the job to be starting", Duration::from_secs(30), || async {
        let events = pvefleet_testbed::jobs::events_now(&js, id).await.ok()?;
        events.iter().any(|e| e.step == Some(pvefleet_schemas::Step::Starting)).then_some(())
    })
    .await?;
    let cancel = bed.cli.run(&["cancel", &running]).await?;
    assert!(cancel.ok(), "{cancel:?}");
    let shown = bed.recorded(&running, "cancelled").await?;
    assert_eq!(shown["error"]["kind"], "cancelled");
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new(), "the cancelled job left a container: {shown}");

    // A finished job says so and changes nothing.
    let again = bed.cli.run(&["cancel", &running]).await?;
    assert_eq!(again.code, Some(1));
    assert!(again.stdout.contains("already ended"), "{again:?}");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn the_recorder_survives_restarts_and_records_each_event_once() -> anyhow::Result<()> {
    let bed = bed("cli-recorder", &["pve1"], |dir| Ok(TestDb::sqlite(dir))).await?;
    bed.pve.time_scale(1.0).await?;
    bed.pve.task_secs(serde_json::json!({"create": 2, "start": 2})).await?;
    let _agent = bed.agent("pve1")?;
    let mut recorder = bed.cli.recorder("recorder-1")?;
    let submit = bed.cli.run(&submit_args("pve1", "recorded", "127.0.0.6/32")).await?;
    let job = submit.stdout.trim().to_owned();
    bed.recorded(&job, "running").await?;
    recorder.kill(); // mid-job
    let watch = bed.cli.run(&["watch", &job]).await?;
    assert_eq!(watch.code, Some(0));
    let mut recorder = bed.cli.recorder("recorder-2")?;
    bed.recorded(&job, "succeeded").await?;
    // Events the first recorder had in flight come back after their ack wait.
    let total = pvefleet_testbed::jobs::events_now(&bed.js, job.parse()?).await?.len() as u64;
    let shown = wait_until("every event recorded", Duration::from_secs(40), || async {
        let run = bed.cli.run(&["job", &job, "--json"]).await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
        (v["events"].as_u64() == Some(total)).then_some(v)
    })
    .await?;
    recorder.kill();

    // Fed everything again from the start: nothing doubles.
    let pve1_events = pvefleet_schemas::names::events_stream(&pvefleet_schemas::NodeName::new("pve1")?);
    bed.js.get_stream(&pve1_events).await?.delete_consumer("pvefleet-recorder").await?;
    let _recorder = bed.cli.recorder("recorder-3")?;
    let js = bed.js.clone();
    wait_until("the replay to be consumed", Duration::from_secs(30), || async {
        let stream = js.get_stream(&pve1_events).await.ok()?;
        let info = stream.consumer_info("pvefleet-recorder").await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await?;
    let events = pvefleet_testbed::jobs::events_now(&bed.js, job.parse()?).await?;
    let after = bed.recorded(&job, "succeeded").await?;
    assert_eq!(after["events"].as_u64(), Some(events.len() as u64));
    assert_eq!(after["events"], shown["events"]);
    assert_eq!(after["vmid"], shown["vmid"]);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_request_whose_publish_failed_is_published_by_the_same_command_again_never_twice() -> anyhow::Result<()> {
    let bed = bed("cli-request-retry", &["pve1"], |d| Ok(TestDb::sqlite(d))).await?;
    // The jobs stream is gone (an operator's mistake, a cluster without quorum): the publish fails.
    bed.js.delete_stream(JOBS_STREAM).await?;
    let mut args = submit_args("pve1", "retried", "127.0.0.3/32");
    args.extend(["--request-id", "retried-01"]);
    let first = bed.cli.run(&args).await?;
    assert_eq!(first.code, Some(1), "{first:?}");
    assert!(first.stderr.contains("run the same command"), "{}", first.stderr);

    let setup = bed.cli.run(&["setup"]).await?;
    assert!(setup.ok(), "{setup:?}");
    let _agent = bed.agent("pve1")?;
    let second = bed.cli.run(&args).await?;
    assert!(second.ok(), "{second:?}");
    let third = bed.cli.run(&args).await?;
    assert_eq!(second.stdout, third.stdout, "the same request, the same job");
    let job = second.stdout.trim().to_owned();
    assert!(first.stderr.contains(&job), "the job recorded by the failed run is the one published: {}", first.stderr);
    let watch = bed.cli.run(&["watch", &job]).await?;
    assert_eq!(watch.code, Some(0), "{watch:?}");
    let listed: serde_json::Value = serde_json::from_str(&bed.cli.run(&["jobs", "--json"]).await?.stdout)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "one job: {listed}");
    assert_eq!(bed.pve.containers().await?.len(), 1);
    bed.dir.pass();
    Ok(())
}

fn forged(job: pvefleet_schemas::JobId, node: &str, seq: u64) -> Event {
    let node = pvefleet_schemas::NodeName::new(node).unwrap();
    Event {
        v: pvefleet_schemas::V1,
        job_id: job,
        node: node.clone(),
        seq,
        kind: EventType::Complete,
        step: Some(pvefleet_schemas::Step::Finalizing),
        percent: 100,
        message: "forged".into(),
        timestamp: pvefleet_schemas::Timestamp::now(),
        stream: None,
        result: Some(pvefleet_schemas::JobResult {
            success: true,
            job_id: job,
            node,
            vmid: Some(pvefleet_schemas::Vmid::new(666).unwrap()),
            ip: None,
            error: None,
            rolled_back: false,
            host_key: None,
            moved_to: None,
        }),
        job_seq: None,
    }
}

#[tokio::test]
async fn the_recorder_ignores_forged_events_and_remakes_its_consumer_when_it_is_gone() -> anyhow::Result<()> {
    let bed = bed("cli-recorder-forged", &["pve1", "pve2"], |dir| Ok(TestDb::sqlite(dir))).await?;
    let mut recorder = bed.cli.recorder("recorder")?;
    let submit = bed.cli.run(&submit_args("pve2", "target", "127.0.0.7/32")).await?;
    assert!(submit.ok(), "{submit:?}");
    let job: pvefleet_schemas::JobId = submit.stdout.trim().parse()?;
    // Agent pve1 may publish on pvefleet.events.pve1.>: it claims pve2's job, both ways.
    let on_pve1 = pvefleet_schemas::names::event_subject(&pvefleet_schemas::NodeName::new("pve1")?, &job);
    for event in [forged(job, "pve2", 1), forged(job, "pve1", 1)] {
        bed.js.publish(on_pve1.clone(), event.encode().into()).await?.await?;
    }
    // The recorder's consumer is deleted under it.
    let pve2 = pvefleet_schemas::NodeName::new("pve2")?;
    let events_stream = bed.js.get_stream(pvefleet_schemas::names::events_stream(&pve2)).await?;
    wait_until("the recorder's consumer", Duration::from_secs(20), || async {
        events_stream.consumer_info("pvefleet-recorder").await.ok().map(drop)
    })
    .await?;
    events_stream.delete_consumer("pvefleet-recorder").await?;

    let _agent = bed.agent("pve2")?;
    let watch = bed.cli.run(&["watch", &job.to_string()]).await?;
    assert_eq!(watch.code, Some(0), "{watch:?}");
    let shown = bed.recorded(&job.to_string(), "succeeded").await?;
    assert_eq!(shown["node"], "pve2");
    assert_ne!(shown["vmid"], 666, "a forged result was recorded: {shown}");
    let total =
        pvefleet_testbed::jobs::events_now(&bed.js, job).await?.iter().filter(|e| e.message != "forged").count();
    let all = wait_until("every real event recorded", Duration::from_secs(30), || async {
        let run = bed.cli.run(&["job", &job.to_string(), "--json"]).await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
        (v["events"].as_u64() == Some(total as u64)).then_some(v)
    })
    .await?;
    assert_eq!(all["vmid"], shown["vmid"]);
    recorder.signal(nix::sys::signal::Signal::SIGTERM)?;
    recorder.wait_exit(Duration::from_secs(10)).await?;
    let log = recorder.log_text();
    assert!(log.contains("is in place (made now"), "{log}");
    assert!(log.contains("subject, node and job disagree") && log.contains("the store refuses"), "{log}");
    bed.dir.pass();
    Ok(())
}

/// No agent is trusted on sight (issue 20): an agent's beat counts, and its sealing key gets
/// secrets, only once an admin enrolled its keys as the node prints them; a reinstalled agent
/// (new keys) is ignored and sealed to never, until it is enrolled again.
#[tokio::test]
async fn an_agent_counts_only_once_enrolled_as_the_node_prints_it_and_a_changed_one_is_refused() -> anyhow::Result<()> {
    let bed = bed("cli-enroll", &["pve1"], |dir| Ok(TestDb::sqlite(dir))).await?;
    // The bed enrolls its agents ahead; this test starts from an agent nobody enrolled.
    let trust = bed.js.get_key_value(pvefleet_schemas::names::TRUST_BUCKET).await?;
    trust.purge(pvefleet_schemas::trust::enrollment_key(&pvefleet_schemas::NodeName::new("pve1")?)).await?;
    let mut agent = bed.agent("pve1")?;
    let secrets = tempfile::tempdir()?;
    let password_file = secrets.path().join("pw");
    std::fs::write(&password_file, "s3cret-root\n")?;
    let password_file = password_file.display().to_string();
    let with_password = |host: &'static str| {
        let mut args = submit_args("pve1", host, "127.0.0.8/32");
        args.extend(["--password-file", password_file.as_str()]);
        args
    };
    let ignored = |why: &'static str| {
        let cli = &bed.cli;
        async move {
            wait_until("the agent's beat, ignored", Duration::from_secs(30), || async {
                let run = cli.run(&["nodes", "--json"]).await.ok()?;
                (run.stdout.trim() == "[]" && run.stderr.contains(why)).then_some(run)
            })
            .await
        }
    };
    // Nothing is trusted on sight: the registry is written by the agent's NATS user.
    ignored("pve1 is not enrolled").await?;
    let untrusted = bed.cli.run(&with_password("first")).await?;
    assert_eq!(untrusted.code, Some(1), "{untrusted:?}");
    assert!(untrusted.stderr.contains("nothing secret can be sent to pve1: pve1 is not enrolled"), "{untrusted:?}");
    assert!(untrusted.stderr.contains("--print-key"), "{}", untrusted.stderr);
    assert_eq!(bed.queued_jobs().await?, 0, "nothing was published");
    // A fingerprint that is not the node's enrolls nothing.
    let admin =
        pvefleet_testbed::trust::identity_file(bed.dir.path(), "admin.identity", pvefleet_testbed::trust::admin())?;
    let admin = admin.display().to_string();
    let wrong = bed
        .cli
        .run(&["--identity", &admin, "nodes", "enroll", "pve1", "--fingerprint", "SHA256:not-the-nodes"])
        .await?;
    assert_eq!(wrong.code, Some(1), "{wrong:?}");
    // Nor does an operator's key: the CLI believes enrollments signed by an admin key only.
    let by_operator = bed.cli.run(&["nodes", "enroll", "pve1", "--fingerprint", &agent.print_key().await?]).await?;
    assert!(by_operator.stderr.contains("not among this CLI's --admin-keys"), "{by_operator:?}");
    ignored("its enrollment: signed by").await?;
    let enrolled = bed.cli.enroll(&agent).await?;
    let first = bed.cli.run(&with_password("first")).await?;
    assert!(first.ok(), "{first:?}");

    // The agent is reinstalled: new keys.
    agent.kill();
    std::fs::remove_dir_all(bed.dir.path().join("agent-state-pve1"))?;
    agent.restart()?;
    let new = agent.print_key().await?;
    assert_ne!(new, enrolled);
    ignored("not by the key enrolled for pve1").await?;
    let queued = bed.queued_jobs().await?;
    let refused = bed.cli.run(&with_password("refused")).await?;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("nodes enroll pve1"), "{}", refused.stderr);
    assert_eq!(bed.queued_jobs().await?, queued, "nothing was published");

    // Without a fingerprint, `enroll` shows what the live agent shows, and enrolls nothing.
    let listed = bed.cli.run(&["--identity", &admin, "nodes", "enroll", "pve1"]).await?;
    assert_eq!(listed.code, Some(2), "{listed:?}");
    assert!(listed.stdout.contains(&new) && listed.stdout.contains("identity key"), "{listed:?}");
    assert!(listed.stderr.contains("--print-key"), "{listed:?}");
    assert_eq!(bed.cli.enroll(&agent).await?, new);
    let again = bed.cli.run(&with_password("trusted")).await?;
    assert!(again.ok(), "{again:?}");
    let watch = bed.cli.run(&["watch", again.stdout.trim()]).await?;
    assert_eq!(watch.code, Some(0), "{watch:?}");
    let audit = bed.cli.run(&["audit", "--json"]).await?;
    assert!(audit.stdout.matches("\"action\":\"enroll\"").count() >= 2, "{audit:?}");
    bed.dir.pass();
    Ok(())
}

/// The whole spec through `pvefleet submit`: an old-format template, a spec file with a
/// downloaded template and two NICs, and PVE-form flags on top; read back from fakepve.
#[tokio::test]
async fn the_whole_spec_through_the_cli_from_a_template_a_spec_file_and_flags() -> anyhow::Result<()> {
    use sha2::Digest as _;
    let bed = bed("cli-spec", &["pve1"], |dir| Ok(TestDb::sqlite(dir))).await?;
    let _agent = bed.agent_with(pvefleet_testbed::agent::AgentOptions::fetching_from_the_bed("pve1"))?;
    // A template written for the first version of the spec.
    let template = bed.dir.path().join("old.toml");
    std::fs::write(
        &template,
        format!(
            "name = \"old\"\n[container]\nostemplate = \"{OSTEMPLATE}\"\nmemory = 768\nnesting = true\nbridge = \"vmbr0\"\n"
        ),
    )?;
    bed.cli.must(&["template", "add", &template.display().to_string()]).await?;
    let body = b"a template image".repeat(4096);
    let url = bed.pve.serve_file("web.tar.zst", &body)?;
    let checksum: String = sha2::Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    let spec = bed.dir.path().join("web.toml");
    std::fs::write(
        &spec,
        format!(
            "[container]\nhostname = \"web-cli\"\n\
             [container.template.download]\nurl = \"{url}\"\nchecksum = \"{checksum}\"\nfilename = \"web.tar.zst\"\n\
             [[container.nics]]\nname = \"eth0\"\nbridge = \"vmbr0\"\nip = \"127.0.0.90/32\"\nip6 = \"auto\"\n\
             [[container.nics]]\nname = \"eth1\"\nbridge = \"vmbr0\"\nip = \"dhcp\"\ntag = 30\n\
             [container.startup]\norder = 3\n"
        ),
    )?;
    let spec = spec.display().to_string();
    let run = bed
        .cli
        .run(&[
            "submit",
            "--node",
            "pve1",
            "--template",
            "old",
            "--spec",
            &spec,
            "--mp",
            "local-lvm:2,mp=/data,backup=0",
            "--features",
            "nesting=1",
            "--onboot",
            "--timezone",
            "Europe/Vienna",
            "--rootfs",
            "local-lvm:6,acl=1,mountoptions=noatime",
            "--console",
            "0",
            "--watch",
        ])
        .await?;
    assert_eq!(run.code, Some(0), "{run:?}");
    let cfg = bed.pve.api_get("/nodes/pve1/lxc/100/config").await?;
    assert_eq!(cfg["hostname"], "web-cli");
    assert_eq!(cfg["memory"], 768, "from the old template");
    assert!(
        cfg["net0"].as_str().unwrap().contains("ip=127.0.0.90/32")
            && cfg["net0"].as_str().unwrap().contains("ip6=auto")
    );
    assert!(cfg["net1"].as_str().unwrap().contains("tag=30"), "{cfg}");
    assert_eq!(cfg["mp0"], "local-lvm:vm-100-disk-1,backup=0,mp=/data,size=2G");
    assert_eq!(cfg["rootfs"], "local-lvm:vm-100-disk-0,acl=1,mountoptions=noatime,size=6G");
    assert_eq!(cfg["console"], 0);
    assert_eq!((cfg["features"].clone(), cfg["onboot"].clone()), ("nesting=1".into(), 1.into()));
    assert_eq!((cfg["startup"].clone(), cfg["timezone"].clone()), ("order=3".into(), "Europe/Vienna".into()));
    assert!(bed.pve.templates("pve1", "local").await?.contains(&"local:vztmpl/web.tar.zst".to_owned()));

    // PVE-form flags that say what PVE would refuse are refused before anything is published.
    for (args, field) in [
        (vec!["--net", "name=eth0,bridge=vmbr0,ip=dhcp,gw=10.0.0.1"], "container.nics[0].gw"),
        (vec!["--net", "name=eth0,bridge=vmbr0", "--net", "name=eth0,bridge=vmbr1"], "container.nics[1].name"),
        (vec!["--net", "name=eth0,ip=dhcp"], "bridge"),
        (vec!["--net", "name=eth0,bridge=vmbr0,ip6=fd00::5/64,gw6=fd01::1"], "container.nics[0].gw6"),
        (vec!["--rootfs", "local-lvm:8", "--disk", "8"], "--rootfs"),
        (vec!["--rootfs", "8"], "--rootfs"),
        (vec!["--clone", "9000", "--ostemplate", OSTEMPLATE], "--ostemplate"),
        (vec!["--download", "url=ftp://x/y.tar.zst,checksum=00,filename=y.tar.zst"], "container.template.download.url"),
    ] {
        let run = bed.cli.run(&[vec!["submit", "--node", "pve1", "--hostname", "bad"], args.clone()].concat()).await?;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.contains(field), "{args:?} does not name {field}: {}", run.stderr);
    }
    assert_eq!(bed.queued_jobs().await?, 0, "nothing was published");
    bed.dir.pass();
    Ok(())
}

/// What a new user sees first: an empty store says how to submit, a NATS that is down is
/// reported once, not twice.
#[tokio::test]
async fn an_empty_store_says_how_to_begin_and_a_dead_nats_is_said_once() -> anyhow::Result<()> {
    let dir = TestDir::new("cli-first-use");
    let db = TestDb::sqlite(&dir);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let cli = Pvefleet::new(&dir, &format!("nats://{dead}"), &db);
    let jobs = cli.run(&["jobs"]).await?;
    assert!(jobs.ok() && jobs.stdout.contains("No jobs yet") && jobs.stdout.contains("pvefleet submit"), "{jobs:?}");
    let filtered = cli.run(&["jobs", "--state", "failed"]).await?;
    assert!(filtered.stdout.contains("No jobs match --state failed"), "{filtered:?}");
    let submit = cli.run(&submit_args("pve1", "web", "dhcp")).await?;
    assert_eq!(submit.code, Some(1), "{submit:?}");
    assert_eq!(submit.stderr.matches("Connection refused").count(), 1, "{}", submit.stderr);
    dir.pass();
    Ok(())
}

/// `pvefleet destroy` by job id and by node and vmid, through the agent; the store records the
/// create job as destroyed; the same request id again makes no second destroy job.
#[tokio::test]
async fn destroy_by_job_or_by_vmid_and_the_store_says_destroyed() -> anyhow::Result<()> {
    let bed = bed("cli-destroy", &["pve1"], |dir| Ok(TestDb::sqlite(dir))).await?;
    let _agent = bed.agent("pve1")?;
    let _recorder = bed.cli.recorder("recorder")?;
    let mut made = Vec::new();
    for (name, ip) in [("gone-1", "127.0.0.110/32"), ("gone-2", "127.0.0.111/32")] {
        let run = bed.cli.run(&[submit_args("pve1", name, ip), vec!["--watch"]].concat()).await?;
        assert_eq!(run.code, Some(0), "{run:?}");
        let job = run.stdout.lines().next().unwrap_or_default().trim().to_owned();
        made.push(bed.recorded(&job, "succeeded").await?);
    }
    assert_eq!(bed.pve.containers().await?, vec![100, 101]);

    let job = made[0]["job_id"].as_str().unwrap().to_owned();
    let run = bed.cli.run(&["destroy", &job, "--watch", "--request-id", "rm-1"]).await?;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("container 100 destroyed"), "{}", run.stdout);
    let destroy_job = run.stdout.lines().next().unwrap_or_default().trim().to_owned();
    let row = bed.recorded(&job, "destroyed").await?;
    assert_eq!(row["destroyed_by"], destroy_job.as_str());
    let again = bed.cli.run(&["destroy", &job, "--request-id", "rm-1"]).await?;
    assert!(again.ok() && again.stdout.trim() == destroy_job, "the same request, the same job: {again:?}");

    let run = bed.cli.run(&["destroy", "--node", "pve1", "--vmid", "101", "--watch"]).await?;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new());
    let second = made[1]["job_id"].as_str().unwrap().to_owned();
    bed.recorded(&second, "destroyed").await?;
    let listed = bed.cli.run(&["jobs", "--state", "destroyed", "--json"]).await?;
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // Bad input: exit 2, nothing published.
    let before = bed.js.get_stream(JOBS_STREAM).await?.info().await?.state.last_sequence;
    for args in [
        vec!["destroy"],
        vec!["destroy", "01JDQ8Z3M4X6T2E9R5W7Y1K0AB"],
        vec!["destroy", "--node", "pve 1", "--vmid", "100"],
    ] {
        let run = bed.cli.run(&args).await?;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
    }
    assert_eq!(bed.js.get_stream(JOBS_STREAM).await?.info().await?.state.last_sequence, before);
    bed.dir.pass();
    Ok(())
}

/// `submit --count 5 --node auto` over two nodes: five jobs named and addressed by `{n}`,
/// spread by what each node has left after the ones placed before; the same command again
/// makes nothing new; one bad hostname among five publishes none.
#[tokio::test]
async fn count_makes_n_jobs_spread_by_capacity_once_and_all_or_none() -> anyhow::Result<()> {
    let bed = bed("cli-count", &["pve1", "pve2"], |dir| Ok(TestDb::sqlite(dir))).await?;
    // 8 GB each; pve2 has 3 GB in use. 2 GB per job: pve1, pve1, pve2, pve1, pve2.
    bed.pve.node_memory_used("pve1", 0).await?;
    bed.pve.node_memory_used("pve2", 3 << 30).await?;
    let _a1 = bed.agent("pve1")?;
    let _a2 = bed.agent("pve2")?;
    let _recorder = bed.cli.recorder("recorder")?;
    let js = bed.js.clone();
    wait_until("both agents in the registry", Duration::from_secs(20), || async {
        let kv = js.get_key_value(pvefleet_schemas::names::NODES_BUCKET).await.ok()?;
        let beats = [kv.get("pve1").await.ok()??, kv.get("pve2").await.ok()??];
        beats.iter().all(|b| pvefleet_schemas::Heartbeat::decode(b).is_ok_and(|h| h.capacity.is_some())).then_some(())
    })
    .await?;
    let args = [
        "submit",
        "--count",
        "5",
        "--node",
        "auto",
        "--hostname",
        "web-{n:02}",
        "--ip",
        "127.0.0.{n+120}/32",
        "--memory",
        "2048",
        "--ostemplate",
        OSTEMPLATE,
        "--request-id",
        "class",
        "--watch",
    ];
    let run = bed.cli.run(&args).await?;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("5 of 5 jobs succeeded, 0 failed"), "{}", run.stdout);
    let ids: Vec<String> = run.stdout.lines().take(5).map(|l| l.trim().to_owned()).collect();
    let mut placed = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let row = bed.recorded(id, "succeeded").await?;
        assert_eq!(row["hostname"], format!("web-{:02}", n + 1));
        assert_eq!(row["ip"], format!("127.0.0.{}", n + 121));
        placed.push(row["node"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(placed, ["pve1", "pve1", "pve2", "pve1", "pve2"], "each choice counts the jobs placed before it");
    assert_eq!(bed.pve.containers().await?.len(), 5);

    let again = bed.cli.run(&args).await?;
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(again.stdout.lines().take(5).map(str::trim).collect::<Vec<_>>(), ids, "the same five jobs");
    assert_eq!(bed.pve.containers().await?.len(), 5, "nothing new");

    // `{n-2}web` is `-1web` for the first: not a hostname. None of the five is published.
    let before = bed.js.get_stream(JOBS_STREAM).await?.info().await?.state.last_sequence;
    let bad = bed
        .cli
        .run(&["submit", "--count", "5", "--node", "auto", "--hostname", "{n-2}web", "--ostemplate", OSTEMPLATE])
        .await?;
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("job 1 of 5") && bad.stderr.contains("hostname"), "{}", bad.stderr);
    assert_eq!(bed.js.get_stream(JOBS_STREAM).await?.info().await?.state.last_sequence, before, "none published");

    // Three of four 4 GB jobs fit (pve1, pve2, pve1); the fourth fits nowhere: none is published.
    let big = bed
        .cli
        .run(&[
            "submit",
            "--count",
            "4",
            "--node",
            "auto",
            "--hostname",
            "big-{n}",
            "--memory",
            "4096",
            "--ostemplate",
            OSTEMPLATE,
        ])
        .await?;
    assert_eq!(big.code, Some(2), "{big:?}");
    assert!(big.stderr.contains("job 4 of 4") && big.stderr.contains("no live agent fits"), "{}", big.stderr);
    assert_eq!(bed.js.get_stream(JOBS_STREAM).await?.info().await?.state.last_sequence, before, "none published");

    // A batch with a failure: without a terminal each job's end is a line of its own, the
    // summary names the failure's error, and the exit is 1.
    bed.pve.task_error("vzstart", "startup for container '1xx' failed").await?;
    let mixed = bed
        .cli
        .run(&[
            "submit",
            "--count",
            "2",
            "--node",
            "pve1",
            "--hostname",
            "mixed-{n}",
            "--ip",
            "127.0.0.{n+140}/32",
            "--ostemplate",
            OSTEMPLATE,
            "--watch",
        ])
        .await?;
    assert_eq!(mixed.code, Some(1), "{mixed:?}");
    assert!(mixed.stdout.contains("1 of 2 jobs succeeded, 1 failed"), "{}", mixed.stdout);
    for hostname in ["mixed-1", "mixed-2"] {
        assert!(mixed.stdout.lines().any(|l| l.starts_with(&format!("{hostname} ("))), "{}", mixed.stdout);
    }
    assert_eq!(mixed.stdout.matches(": succeeded: ").count(), 1, "{}", mixed.stdout);
    assert!(mixed.stdout.contains("startup for container '1xx' failed"), "{}", mixed.stdout);
    // --json: one job per line, as it was published.
    let json = bed
        .cli
        .run(&["submit", "--count", "2", "--node", "pve1", "--hostname", "j-{n}", "--ostemplate", OSTEMPLATE, "--json"])
        .await?;
    assert_eq!(json.code, Some(0), "{json:?}");
    let jobs: Vec<pvefleet_schemas::Job> = json.stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(jobs.iter().map(|j| j.container.hostname.as_str()).collect::<Vec<_>>(), ["j-1", "j-2"]);
    bed.dir.pass();
    Ok(())
}

/// `pvefleet plan` asks the node's agent to check a spec against its Proxmox API: a good one
/// passes showing the exact parameters; a missing template, a missing bridge, a taken vmid and
/// too little memory (on an agent that does not overcommit; elsewhere a warning) each fail with
/// their reason; not one write request reaches fakepve.
#[tokio::test]
async fn plan_checks_on_the_node_and_changes_nothing() -> anyhow::Result<()> {
    let bed = bed("cli-plan", &["pve1"], |dir| Ok(TestDb::sqlite(dir))).await?;
    let strict = pvefleet_testbed::agent::AgentOptions {
        env: vec![("PVEFLEET_OVERCOMMIT_MEMORY".into(), "false".into())],
        ..pvefleet_testbed::agent::AgentOptions::node("pve1")
    };
    let mut agent = bed.agent_with(strict)?;
    // A stranger's container holds vmid 150.
    bed.pve
        .api(
            reqwest::Method::POST,
            "/nodes/pve1/lxc",
            &[("vmid", "150"), ("ostemplate", OSTEMPLATE), ("rootfs", "local-lvm:4")],
        )
        .await?;
    wait_until("the agent to answer plans", Duration::from_secs(20), || async {
        bed.cli
            .run(
                &submit_args("pve1", "probe", "dhcp")
                    .iter()
                    .map(|a| if *a == "submit" { "plan" } else { a })
                    .collect::<Vec<_>>(),
            )
            .await
            .ok()?
            .ok()
            .then_some(())
    })
    .await?;
    bed.pve.reset_calls().await?;
    let plan_args = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut args = vec!["plan", "--node", "pve1", "--hostname", "web-plan", "--ip", "127.0.0.130/32"];
        if !extra.contains(&"--ostemplate") {
            args.extend(["--ostemplate", OSTEMPLATE]);
        }
        args.extend(extra);
        args
    };
    let good = bed.cli.run(&plan_args(&["--memory", "1024", "--nesting"])).await?;
    assert_eq!(good.code, Some(0), "{good:?}");
    assert!(good.stdout.contains("every check passes"), "{}", good.stdout);
    assert!(good.stdout.contains("POST /nodes/pve1/lxc\n"), "{}", good.stdout);
    for param in [
        "hostname=web-plan",
        "memory=1024",
        "net0=name=eth0,bridge=vmbr0,ip=127.0.0.130/32",
        "features=nesting=1",
        "unprivileged=1",
    ] {
        assert!(good.stdout.contains(param), "{param} in {}", good.stdout);
    }
    let json = bed.cli.run(&plan_args(&["--json"])).await?;
    let reply: pvefleet_schemas::PlanReply = serde_json::from_str(json.stdout.trim())?;
    assert!(reply.ok && reply.vmid.is_some(), "{reply:?}");
    assert!(reply.checks.iter().any(|c| c.check == "permissions" && c.ok), "{reply:?}");

    for (extra, check, words) in [
        (vec!["--ostemplate", "local:vztmpl/nope.tar.zst"], "template", "is not a container template"),
        (vec!["--bridge", "vmbr9"], "network", "`vmbr9` does not exist"),
        (vec!["--vmid", "150"], "vmid", "150 is taken"),
        (vec!["--memory", "65536"], "memory", "65536 MB asked"),
    ] {
        let run = bed.cli.run(&plan_args(&[extra.clone(), vec!["--json"]].concat())).await?;
        assert_eq!(run.code, Some(1), "{extra:?}: {run:?}");
        let reply: pvefleet_schemas::PlanReply = serde_json::from_str(run.stdout.trim())?;
        let failed: Vec<_> = reply.checks.iter().filter(|c| !c.ok).collect();
        assert_eq!(failed.len(), 1, "{extra:?}: only {check} fails: {failed:?}");
        assert_eq!(failed[0].check, check, "{failed:?}");
        assert!(failed[0].detail.contains(words), "{}", failed[0].detail);
    }
    // PVE lets container memory overcommit: on an agent left to its default, too much memory
    // is a warning, and the plan passes.
    agent.opts.env.clear();
    agent.restart()?;
    let over = wait_until("the restarted agent to answer the plan", Duration::from_secs(20), || async {
        let run = bed.cli.run(&plan_args(&["--memory", "65536", "--json"])).await.ok()?;
        serde_json::from_str::<pvefleet_schemas::PlanReply>(run.stdout.trim()).ok().map(|r| (run.code, r))
    })
    .await?;
    let memory = over.1.checks.iter().find(|c| c.check == "memory").expect("a memory check");
    assert!(over.0 == Some(0) && memory.ok, "{over:?}");
    assert!(memory.detail.starts_with("warning: 65536 MB asked") && memory.detail.contains("overcommit"), "{memory:?}");
    // --count with --node auto: each job placed and planned, numbered; one that fits nowhere
    // is bad input naming which of the N it is, and no agent is asked.
    let batch = bed
        .cli
        .run(&[
            "plan",
            "--count",
            "2",
            "--node",
            "auto",
            "--hostname",
            "p-{n}",
            "--ip",
            "127.0.0.{n+150}/32",
            "--ostemplate",
            OSTEMPLATE,
        ])
        .await?;
    assert_eq!(batch.code, Some(0), "{batch:?}");
    for n in [1, 2] {
        let line = format!("job {n} of 2: p-{n} on pve1: every check passes");
        assert!(batch.stdout.contains(&line), "{line} in {}", batch.stdout);
    }
    let nowhere = bed
        .cli
        .run(&[
            "plan",
            "--count",
            "2",
            "--node",
            "auto",
            "--hostname",
            "q-{n}",
            "--memory",
            "65536",
            "--ostemplate",
            OSTEMPLATE,
        ])
        .await?;
    assert_eq!(nowhere.code, Some(2), "{nowhere:?}");
    assert!(
        nowhere.stderr.contains("job 1 of 2") && nowhere.stderr.contains("no live agent fits"),
        "{}",
        nowhere.stderr
    );

    // vmbr1 is VLAN-aware and carries VLANs 2-100: a tag within passes, one outside fails.
    let cli = &bed.cli;
    let vlan = |tag: &str| {
        let net = format!("name=eth0,bridge=vmbr1,tag={tag},ip=127.0.0.131/32");
        async move {
            cli.run(&[
                "plan",
                "--node",
                "pve1",
                "--hostname",
                "web-vlan",
                "--ostemplate",
                OSTEMPLATE,
                "--net",
                &net,
                "--json",
            ])
            .await
        }
    };
    let within = vlan("30").await?;
    assert_eq!(within.code, Some(0), "{within:?}");
    let outside = vlan("200").await?;
    assert_eq!(outside.code, Some(1), "{outside:?}");
    let reply: pvefleet_schemas::PlanReply = serde_json::from_str(outside.stdout.trim())?;
    let failed: Vec<_> = reply.checks.iter().filter(|c| !c.ok).collect();
    assert_eq!(failed.len(), 1, "only the network fails: {failed:?}");
    assert_eq!(failed[0].check, "network");
    assert!(
        failed[0].detail.contains("container.nics[0].tag: VLAN 200 is not among vmbr1's VLANs (2-100)"),
        "{failed:?}"
    );
    // Trunks on vmbr0, a Linux bridge that is not VLAN-aware: PVE would refuse them at start.
    let trunks = cli
        .run(&[
            "plan",
            "--node",
            "pve1",
            "--hostname",
            "web-trunks",
            "--ostemplate",
            OSTEMPLATE,
            "--net",
            "name=eth0,bridge=vmbr0,trunks=30;40,ip=127.0.0.132/32",
            "--json",
        ])
        .await?;
    assert_eq!(trunks.code, Some(1), "{trunks:?}");
    assert!(trunks.stdout.contains("container.nics[0].trunks: `vmbr0` is not VLAN-aware"), "{}", trunks.stdout);

    let writes: Vec<_> = bed.pve.calls().await?.into_iter().filter(|(method, _, _)| method != "GET").collect();
    assert!(writes.is_empty(), "a plan wrote to PVE: {writes:?}");
    assert_eq!(bed.pve.containers().await?, vec![150], "nothing was created");
    assert_eq!(bed.queued_jobs().await?, 0, "nothing was queued");
    // Bad input: exit 2 before any agent is asked.
    assert_eq!(bed.cli.run(&["plan", "--node", "pve1"]).await?.code, Some(2));
    bed.dir.pass();
    Ok(())
}

/// With an identity, `submit` signs the job it publishes (schemas/SIGNING.md): the message on
/// the queue verifies with the identity's public key, names it as signer, and an agent still
/// runs it. Without one, jobs go unsigned, as before.
#[tokio::test]
async fn submit_signs_its_job_with_the_operators_identity() -> anyhow::Result<()> {
    let bed = bed("cli-signed", &["pve1"], |dir| Ok(TestDb::sqlite(dir))).await?;
    let identity = bed.dir.path().join("operator.key").display().to_string();
    let made = bed.cli.run(&["--identity", &identity, "identity", "new"]).await?;
    assert!(made.ok(), "{made:?}");
    let public: pvefleet_schemas::signing::SignerKey = made
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .expect("the public key")
        .trim()
        .parse()
        .map_err(anyhow::Error::msg)?;
    let mut args = vec!["--identity", identity.as_str()];
    args.extend(submit_args("pve1", "signed", "127.0.0.11/32"));
    let submit = bed.cli.run(&args).await?;
    assert!(submit.ok(), "{submit:?}");
    let job: pvefleet_schemas::JobId = submit.stdout.trim().parse()?;

    // No agent yet: the job waits on the queue as it was published.
    let stream = bed.js.get_stream(JOBS_STREAM).await?;
    let subject = pvefleet_schemas::names::job_subject(
        &pvefleet_schemas::NodeName::new("pve1")?,
        pvefleet_schemas::names::JobKind::Create,
    );
    let queued = stream.get_last_raw_message_by_subject(&subject).await?;
    let message: serde_json::Value = serde_json::from_slice(&queued.payload)?;
    assert_eq!(message["job_id"], job.to_string());
    let known = |id: &pvefleet_schemas::signing::SignerId| (id == &public.id()).then_some(public);
    let signer = pvefleet_schemas::signing::verify(&message, known, time::OffsetDateTime::now_utc());
    assert_eq!(signer, Ok(public), "{message}");

    // A key the policy does not name: its job is refused, naming the rule, and whoami says why.
    let _agent = bed.agent("pve1")?;
    let watch = bed.cli.run(&["watch", &job.to_string()]).await?;
    assert_eq!(watch.code, Some(1), "{watch:?}");
    assert!(watch.stdout.contains("refused by rule `signer`"), "{watch:?}");
    let whoami = bed.cli.run(&["--identity", &identity, "whoami"]).await?;
    assert!(whoami.ok() && whoami.stdout.contains("not in the policy"), "{whoami:?}");

    // An admin names it in the policy, on pve1 only, without scripts: its next job runs, and
    // whoami shows those rights.
    let admin =
        pvefleet_testbed::trust::identity_file(bed.dir.path(), "admin.identity", pvefleet_testbed::trust::admin())?;
    let policy = bed.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[signer]]\nname = \"carol\"\nkey = \"{public}\"\nnodes = [\"pve1\"]\nscripts = false\n"),
    )?;
    let set = bed
        .cli
        .run(&["--identity", &admin.display().to_string(), "policy", "set", &policy.display().to_string()])
        .await?;
    assert!(set.ok() && set.stdout.contains("policy serial "), "{set:?}");
    let whoami = bed.cli.run(&["--identity", &identity, "whoami"]).await?;
    assert!(whoami.stdout.contains("name:       carol") && whoami.stdout.contains("on nodes:   pve1"), "{whoami:?}");
    assert!(whoami.stdout.contains("scripts no"), "{whoami:?}");
    let mut args = vec!["--identity", identity.as_str()];
    args.extend(submit_args("pve1", "signed-2", "127.0.0.12/32"));
    args.push("--watch");
    let second = bed.cli.run(&args).await?;
    assert!(second.ok(), "{second:?}");
    let shown = bed.cli.run(&["policy", "show"]).await?;
    assert!(shown.stdout.contains("carol") && shown.stdout.contains(&pvefleet_testbed::trust::admin().public().id().0));
    bed.dir.pass();
    Ok(())
}

/// An existing fleet upgraded: `pvefleet setup` gives the events streams made before (without
/// them) `deny_delete` and `deny_purge`, and makes the audit stream and the trust buckets.
#[tokio::test]
async fn setup_protects_the_history_of_streams_made_before() -> anyhow::Result<()> {
    pvefleet_testbed::init_tracing();
    let dir = TestDir::new("cli-setup-history");
    let nats = pvefleet_testbed::NatsServer::start(&dir).await?;
    let js = nats.jetstream().await?;
    let node = pvefleet_schemas::NodeName::new("pve1")?;
    let mut old = pvefleet_schemas::layout::events_stream(&node, 1);
    (old.deny_delete, old.deny_purge) = (false, false);
    js.create_stream(old).await?;
    let cli = Pvefleet::new(&dir, &nats.url(), &TestDb::sqlite(&dir));
    let setup = cli.run(&["setup", "--node", "pve1"]).await?;
    assert!(setup.ok(), "{setup:?}");
    for stream in [pvefleet_schemas::names::events_stream(&node), pvefleet_schemas::names::AUDIT_STREAM.to_owned()] {
        let config = js.get_stream(&stream).await?.info().await?.config.clone();
        assert!(config.deny_delete && config.deny_purge, "{stream}: {config:?}");
    }
    for bucket in [pvefleet_schemas::names::TRUST_BUCKET, pvefleet_schemas::names::REQUESTS_BUCKET] {
        js.get_key_value(bucket).await?;
    }
    dir.pass();
    Ok(())
}

/// `pvefleet ls`'s first page is read by key (not the whole inventory), so it must still be
/// what a full read would show first: by node then vmid as numbers (`pve1.999` before
/// `pve1.1000`, though not as text), keys deleted since passed over (later keys take their
/// place, a run of them longer than the page too), an entry under another node's key left out, `--node` only that node's; and a
/// selection still reads every entry.
#[tokio::test]
async fn ls_pages_by_node_and_vmid_as_a_full_read_would() -> anyhow::Result<()> {
    use pvefleet_schemas::{InventoryEntry, JobId, NodeName, Timestamp, V1, Vmid, names::INVENTORY_BUCKET};
    let bed = bed("cli-ls-page", &["pve1"], |dir| Ok(TestDb::sqlite(dir))).await?;
    let inventory = bed.js.get_key_value(INVENTORY_BUCKET).await?;
    let entry = |node: &str, vmid: u32| -> anyhow::Result<InventoryEntry> {
        let job = JobId::new();
        Ok(InventoryEntry {
            v: V1,
            node: NodeName::new(node)?,
            vmid: Vmid::new(vmid)?,
            hostname: format!("{node}-{vmid}"),
            status: "running".into(),
            tags: vec![job.marker_tag()],
            create_job: Some(job),
            markers: vec![job.marker_tag()],
            digest: "0123456789abcdef".into(),
            memory_mb: Some(512),
            cores: Some(1),
            disk: Some("4G".into()),
            ip: None,
            lock: None,
            last_job: Some(job),
            applied_digest: Some("0123456789abcdef".into()),
            last_seen: Timestamp::now(),
        })
    };
    for (node, vmids) in [("pve2", 995..=1020), ("pve1", 995..=1020)] {
        for vmid in vmids.rev() {
            inventory.put(format!("{node}.{vmid}"), serde_json::to_vec(&entry(node, vmid)?)?.into()).await?;
        }
    }
    // pve1's 995 to 997 and 999 to 1012 gone, 998 speaking for pve2 under pve1's key.
    for vmid in (995..=997).chain(999..=1012) {
        inventory.delete(format!("pve1.{vmid}")).await?;
    }
    inventory.put("pve1.998", serde_json::to_vec(&entry("pve2", 998)?)?.into()).await?;
    let listed = |args: &'static [&'static str]| {
        let cli = &bed.cli;
        async move {
            let run = cli.must(args).await?;
            let rows: Vec<serde_json::Value> = serde_json::from_str(&run.stdout)?;
            anyhow::Ok(
                rows.iter().map(|r| format!("{}.{}", r["node"].as_str().unwrap_or("?"), r["vmid"])).collect::<Vec<_>>(),
            )
        }
    };
    let whole = listed(&["ls", "--json", "--limit", "0"]).await?;
    let expected: Vec<String> =
        (1013..=1020).map(|v| format!("pve1.{v}")).chain((995..=1020).map(|v| format!("pve2.{v}"))).collect();
    assert_eq!(whole, expected, "a full read");
    assert_eq!(listed(&["ls", "--json", "--limit", "5"]).await?, expected[..5], "the first page");
    assert_eq!(listed(&["ls", "--json", "--limit", "30"]).await?, expected[..30], "a page over two nodes");
    assert_eq!(listed(&["ls", "--json", "--limit", "100"]).await?, expected, "a page past the end");
    assert_eq!(listed(&["ls", "--json", "--limit", "2000"]).await?, expected, "a page longer than one read");
    assert_eq!(
        listed(&["ls", "--json", "--limit", "3", "--node", "pve2"]).await?,
        ["pve2.995", "pve2.996", "pve2.997"],
        "one node's"
    );
    assert_eq!(
        listed(&["ls", "--json", "--limit", "3", "--select", "hostname=pve2-100*"]).await?,
        ["pve2.1000", "pve2.1001", "pve2.1002"],
        "a selection"
    );
    let table = bed.cli.must(&["ls", "--limit", "2"]).await?;
    assert!(
        table.stdout.contains("pve1-1013") && table.stdout.contains("pve1-1014") && !table.stdout.contains("pve1-1015")
    );
    assert!(table.stdout.contains("The first 2 containers by node and vmid; --limit 0 shows every one."), "{table:?}");
    let selected = bed.cli.must(&["ls", "--limit", "3", "--select", "hostname=pve2-100*"]).await?;
    assert!(selected.stdout.contains("The first 3 of 10 containers; --limit 0 shows every one."), "{selected:?}");
    let all = bed.cli.must(&["ls", "--limit", "100"]).await?;
    assert!(!all.stdout.contains("The first"), "{all:?}");
    let bad = bed.cli.run(&["ls", "--node", "pve1.>"]).await?;
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("--node"), "{bad:?}");
    bed.fleet.dir.pass();
    Ok(())
}
