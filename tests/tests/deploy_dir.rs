//! `deploy/`: every file parses (NATS configs by the real server), the per-agent permissions
//! hold on a real nats-server, and the 3-node cluster config runs a job through a node's death.

use std::process::Command;

use futures::StreamExt as _;
use std::time::Duration;

use pvefleet_testbed::agent::{Agent, AgentOptions};
use pvefleet_testbed::cli::{Pvefleet, TestDb};
use pvefleet_testbed::fakepve::OSTEMPLATE;
use pvefleet_testbed::shipped::{PASSWORDS, deploy, env, loopback_config, refused, restricted_client, try_request};
use pvefleet_testbed::tls::TestCa;
use pvefleet_testbed::{FakePve, FakePveOptions, NatsServer, TestDir, free_port, init_tracing, tools, wait_until};

#[test]
fn every_file_in_deploy_parses() -> anyhow::Result<()> {
    let nats = tools::nats_server()?;
    let dir = TestDir::new("deploy-parse");
    TestCa::make(&dir)?;
    for file in ["single.conf", "cluster-1.conf", "cluster-2.conf", "cluster-3.conf"] {
        // Checked by the real server, with the test's certificates where the config wants its own.
        let routes =
            file.starts_with("cluster").then(|| (free_port("127.0.0.1"), [0, 1, 2].map(|_| free_port("127.0.0.1"))));
        let config = loopback_config(&dir, file, free_port("127.0.0.1"), routes)?;
        let out = Command::new(&nats).arg("-t").arg("-c").arg(&config).envs(env()).output()?;
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(deploy(&format!("nats/{file}")))?;
        assert!(text.contains("sync_interval: always"), "{file} must fsync every write");
        // TLS for clients, and for routes with the peer's certificate checked.
        assert!(text.contains("tls {") && text.contains("ca_file: \"/etc/nats/tls/ca.pem\""), "{file} lacks TLS");
        if file.starts_with("cluster") {
            let cluster = &text[text.find("cluster {").expect("a cluster block")..];
            assert!(
                cluster.contains("tls {") && cluster.contains("verify: true"),
                "{file}: routes without verified TLS"
            );
            assert!(cluster.contains("route-ca.pem"), "{file}: routes must have a CA of their own, not the clients'");
        }
    }
    let auth = std::fs::read_to_string(deploy("nats/auth.conf"))?;
    for user in ["admin", "coordinator", "recorder", "web", "watcher", "agent-pve1", "agent-pve2"] {
        assert!(auth.contains(&format!("user: {user}")), "auth.conf lacks {user}");
    }

    let env_file = std::fs::read_to_string(deploy("coordinator.env"))?;
    let vars: std::collections::HashMap<&str, &str> =
        env_file.lines().filter(|l| !l.starts_with('#') && l.contains('=')).filter_map(|l| l.split_once('=')).collect();
    for url in vars["PVEFLEET_NATS_URL"].split(',') {
        url.parse::<async_nats::ServerAddr>().map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    }
    assert!(vars["PVEFLEET_DB"].starts_with("postgres://"));

    for unit in ["pvefleet-agent.service", "pvefleet-recorder.service"] {
        let text = std::fs::read_to_string(deploy(&format!("systemd/{unit}")))?;
        let keys: Vec<(&str, &str)> =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('=')).collect();
        for (key, value) in [
            ("User", "pvefleet"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("Restart", "on-failure"),
            ("LimitCORE", "0"),
        ] {
            assert!(keys.contains(&(key, value)), "{unit}: {key}={value} missing");
        }
        for section in ["[Unit]", "[Service]", "[Install]"] {
            assert!(text.contains(section), "{unit}: {section} missing");
        }
    }
    Ok(())
}

#[test]
fn the_systemd_units_are_rated_at_most_1_5_by_systemd_analyze() -> anyhow::Result<()> {
    for unit in ["pvefleet-agent.service", "pvefleet-recorder.service"] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(deploy(&format!("systemd/{unit}")))
            .output()
            .map_err(|e| {
                anyhow::anyhow!(
                    "running systemd-analyze: {e} (Debian package systemd; `bash scripts/bootstrap` installs it)"
                )
            })?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let level: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .ok_or_else(|| anyhow::anyhow!("{unit}: no exposure level in:\n{text}"))?;
        assert!(level <= 1.5, "{unit} is rated {level}, above 1.5:\n{text}");
    }
    Ok(())
}

#[tokio::test]
async fn per_agent_permissions_hold_on_a_real_server() -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("deploy-permissions");
    let ca = TestCa::make(&dir)?;
    let port = free_port("127.0.0.1");
    let config = loopback_config(&dir, "single.conf", port, None)?;
    let mut nats = NatsServer::from_config(&dir, "nats-single", config, port, env())?;
    nats.ready().await?;
    let pve = FakePve::start(&dir, FakePveOptions { nodes: vec!["pve1".into(), "pve2".into()], ..Default::default() })
        .await?;
    let db = TestDb::sqlite(&dir);
    let admin = Pvefleet::new(&dir, &nats.url_as("admin", "admin-pw"), &db).with_ca(&ca.ca);
    // The agents may not make their own node's events stream: setup makes them.
    admin.must(&["setup", "--node", "pve1", "--node", "pve2"]).await?;
    // The shipped config speaks only TLS: a client that does not know its CA gets nowhere.
    let plain = async_nats::ConnectOptions::with_user_and_password("coordinator".into(), "coord-pw".into())
        .connection_timeout(Duration::from_secs(3))
        .connect(nats.url())
        .await;
    assert!(plain.is_err(), "a client without the CA connected");
    let no_ca = Pvefleet::new(&dir, &nats.url_as("coordinator", "coord-pw"), &db).run(&["nodes"]).await?;
    assert_eq!(no_ca.code, Some(1), "{no_ca:?}");

    // Agent pve1 as its own user, with its own inbox prefix, runs a job end to end.
    let _agent = Agent::start(
        &dir,
        &[nats.url_as("agent-pve1", "pve1-pw")],
        &pve,
        AgentOptions {
            inbox_prefix: Some("_INBOX_pve1".into()),
            nats_ca: Some(ca.ca.clone()),
            ..AgentOptions::node("pve1")
        },
    )?;
    // It answers the coordinator's plan under its own user (the plan subject is its to read).
    let plan = pvefleet_testbed::wait_until("agent pve1 to answer a plan", Duration::from_secs(20), || async {
        let run = admin
            .run(&[
                "plan",
                "--node",
                "pve1",
                "--hostname",
                "allowed",
                "--ostemplate",
                OSTEMPLATE,
                "--ip",
                "127.0.0.7/32",
            ])
            .await
            .ok()?;
        run.ok().then_some(run)
    })
    .await?;
    assert!(plan.stdout.contains("every check passes"), "{plan:?}");
    let submit = admin
        .run(&["submit", "--node", "pve1", "--hostname", "allowed", "--ostemplate", OSTEMPLATE, "--ip", "127.0.0.7/32"])
        .await?;
    assert!(submit.ok(), "{submit:?}");
    let job = submit.stdout.trim().to_owned();
    let watcher = Pvefleet::new(&dir, &nats.url_as("watcher", "watch-pw"), &db).with_ca(&ca.ca);
    let watch = tokio::time::timeout(
        Duration::from_secs(60),
        watcher.run(&["watch", &job, "--nats-inbox-prefix", "_INBOX_watcher"]),
    )
    .await??;
    assert_eq!(watch.code, Some(0), "the watcher replays and follows: {watch:?}");

    // The watcher cannot submit.
    let js = async_nats::jetstream::new(
        async_nats::ConnectOptions::with_user_and_password("coordinator".into(), "coord-pw".into())
            .add_root_certificates(ca.ca.clone())
            .require_tls(true)
            .connect(nats.url())
            .await?,
    );
    let queued = js.get_stream(pvefleet_schemas::names::JOBS_STREAM).await?.info().await?.state.messages;
    let denied = watcher
        .run(&[
            "submit",
            "--node",
            "pve2",
            "--hostname",
            "nope",
            "--ostemplate",
            OSTEMPLATE,
            "--nats-inbox-prefix",
            "_INBOX_watcher",
        ])
        .await?;
    assert_eq!(denied.code, Some(1), "{denied:?}");
    assert_eq!(js.get_stream(pvefleet_schemas::names::JOBS_STREAM).await?.info().await?.state.messages, queued);

    // Agent pve1 cannot touch pve2's jobs, events, consumer or inbox.
    let (client, mut errors) = restricted_client(&nats.url(), &ca, "agent-pve1", "pve1-pw", "_INBOX_pve1").await?;
    let _ = client.publish("$JS.API.CONSUMER.MSG.NEXT.PVEFLEET_JOBS.agent-pve2", "{\"batch\":1}".into()).await;
    refused(&mut errors, "agent-pve2").await?;
    let _ = client.publish("pvefleet.events.pve2.01JDQ8Z3M4X6T2E9R5W7Y1K0AB", "{}".into()).await;
    refused(&mut errors, "pvefleet.events.pve2").await?;
    let _ = client.publish("pvefleet.jobs.pve2.create", "{}".into()).await;
    refused(&mut errors, "pvefleet.jobs.pve2.create").await?;
    let _sub = client.subscribe("_INBOX_pve2.>").await?;
    refused(&mut errors, "Subscription to \"_INBOX_pve2.>\"").await?;
    let _sub = client.subscribe("_INBOX.>").await?;
    refused(&mut errors, "Subscription to \"_INBOX.>\"").await?;
    dir.pass();
    Ok(())
}

#[tokio::test]
async fn the_cluster_config_runs_a_job_through_the_death_of_the_agents_server() -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("deploy-cluster");
    let ca = TestCa::make(&dir)?;
    let clients: [u16; 3] = [0, 1, 2].map(|_| free_port("127.0.0.1"));
    let routes: [u16; 3] = [0, 1, 2].map(|_| free_port("127.0.0.1"));
    let mut nodes = Vec::new();
    for i in 0..3 {
        let config = loopback_config(&dir, &format!("cluster-{}.conf", i + 1), clients[i], Some((routes[i], routes)))?;
        nodes.push(NatsServer::from_config(&dir, &format!("nats{}", i + 1), config, clients[i], env())?);
    }
    for n in &mut nodes {
        n.ready().await?;
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url_as("admin", "admin-pw")).collect();
    let db = TestDb::sqlite(&dir);
    let admin = Pvefleet::new(&dir, &urls.join(","), &db).with_ca(&ca.ca);
    wait_until("a JetStream leader, then setup with 3 replicas", Duration::from_secs(30), || async {
        admin.run(&["setup", "--replicas", "3", "--node", "pve1"]).await.ok().filter(|r| r.ok()).map(drop)
    })
    .await?;

    let pve = FakePve::start(&dir, FakePveOptions::default()).await?;
    pve.time_scale(1.0).await?;
    pve.task_secs(serde_json::json!({"start": 4})).await?;
    // The agent knows only nats1; it learns the others from the cluster.
    let _agent = Agent::start(
        &dir,
        &[nodes[0].url_as("agent-pve1", "pve1-pw")],
        &pve,
        AgentOptions {
            inbox_prefix: Some("_INBOX_pve1".into()),
            nats_ca: Some(ca.ca.clone()),
            ..AgentOptions::node("pve1")
        },
    )?;
    let submit = admin
        .run(&[
            "submit",
            "--node",
            "pve1",
            "--hostname",
            "clustered",
            "--ostemplate",
            OSTEMPLATE,
            "--ip",
            "127.0.0.8/32",
        ])
        .await?;
    assert!(submit.ok(), "{submit:?}");
    let id: pvefleet_schemas::JobId = submit.stdout.trim().parse()?;
    let survivors = Pvefleet::new(&dir, &urls[1..].join(","), &db).with_ca(&ca.ca);
    let js = async_nats::jetstream::new(
        async_nats::ConnectOptions::with_user_and_password("coordinator".into(), "coord-pw".into())
            .add_root_certificates(ca.ca.clone())
            .require_tls(true)
            .connect(urls[1..].iter().map(|u| u.parse::<async_nats::ServerAddr>()).collect::<Result<Vec<_>, _>>()?)
            .await?,
    );
    wait_until("the job to be starting", Duration::from_secs(30), || async {
        let events = pvefleet_testbed::jobs::events_now(&js, id).await.ok()?;
        events.iter().any(|e| e.step == Some(pvefleet_schemas::Step::Starting)).then_some(())
    })
    .await?;
    nodes[0].kill();
    let watch =
        tokio::time::timeout(Duration::from_secs(90), survivors.run(&["watch", &id.to_string(), "--json"])).await??;
    assert_eq!(watch.code, Some(0), "{watch:?}");
    let events: Vec<pvefleet_schemas::Event> =
        watch.stdout.lines().map(|l| pvefleet_schemas::Event::decode(l.as_bytes())).collect::<Result<_, _>>()?;
    pvefleet_testbed::jobs::check_event_contract(&events)?;
    assert_eq!(pve.containers().await?.len(), 1);
    dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_hostile_watcher_or_agent_is_refused_and_forgeries_are_ignored() -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("deploy-hostile");
    let ca = TestCa::make(&dir)?;
    let port = free_port("127.0.0.1");
    let config = loopback_config(&dir, "single.conf", port, None)?;
    let mut nats = NatsServer::from_config(&dir, "nats-single", config, port, env())?;
    nats.ready().await?;
    let pve = FakePve::start(&dir, FakePveOptions { nodes: vec!["pve1".into(), "pve2".into()], ..Default::default() })
        .await?;
    let db = TestDb::sqlite(&dir);
    let admin = Pvefleet::new(&dir, &nats.url_as("admin", "admin-pw"), &db).with_ca(&ca.ca);
    // The agents may not make their own node's events stream: setup makes them.
    admin.must(&["setup", "--node", "pve1", "--node", "pve2"]).await?;
    let _recorder = admin.recorder("recorder")?;
    let agent = |node: &str, pw: &str| {
        Agent::start(
            &dir,
            &[format!("nats://agent-{node}:{pw}@127.0.0.1:{port}")],
            &pve,
            AgentOptions {
                inbox_prefix: Some(format!("_INBOX_{node}")),
                nats_ca: Some(ca.ca.clone()),
                ..AgentOptions::node(node)
            },
        )
    };
    let _pve1 = agent("pve1", "pve1-pw")?;
    let submit = admin
        .run(&["submit", "--node", "pve2", "--hostname", "target", "--ostemplate", OSTEMPLATE, "--ip", "127.0.0.9/32"])
        .await?;
    assert!(submit.ok(), "{submit:?}");
    let job: pvefleet_schemas::JobId = submit.stdout.trim().parse()?;

    // The watcher tries what the old permissions let it do.
    let (watcher, mut errors) = restricted_client(&nats.url(), &ca, "watcher", "watch-pw", "_INBOX_watcher").await?;
    let push_to_cancel = serde_json::json!({"stream_name": "PVEFLEET_EVENTS_pve2", "config": {
        "name": "evil", "deliver_subject": "pvefleet.control.pve2.cancel", "ack_policy": "none", "deliver_policy": "all"}});
    try_request(&watcher, "$JS.API.CONSUMER.CREATE.PVEFLEET_EVENTS_pve2.evil", push_to_cancel.clone()).await;
    refused(&mut errors, "$JS.API.CONSUMER.CREATE.PVEFLEET_EVENTS_pve2.evil").await?;
    try_request(&watcher, "$JS.API.CONSUMER.CREATE.PVEFLEET_EVENTS_pve2", push_to_cancel).await;
    refused(&mut errors, "$JS.API.CONSUMER.CREATE.PVEFLEET_EVENTS_pve2\"").await?;
    try_request(&watcher, "$JS.API.CONSUMER.DELETE.PVEFLEET_EVENTS_pve2.pvefleet-recorder", serde_json::json!({}))
        .await;
    refused(&mut errors, "CONSUMER.DELETE.PVEFLEET_EVENTS_pve2.pvefleet-recorder").await?;
    try_request(
        &watcher,
        "$JS.API.CONSUMER.MSG.NEXT.PVEFLEET_EVENTS_pve2.pvefleet-recorder",
        serde_json::json!({"batch": 1}),
    )
    .await;
    refused(&mut errors, "CONSUMER.MSG.NEXT.PVEFLEET_EVENTS_pve2.pvefleet-recorder").await?;
    // Nor a plan, nor a destroy: only the coordinator user may ask an agent anything.
    for subject in [
        "pvefleet.jobs.pve2.create",
        "pvefleet.jobs.pve2.destroy",
        "pvefleet.events.pve2.x",
        "pvefleet.control.pve2.cancel",
        "pvefleet.control.pve2.plan",
    ] {
        let _ = watcher.publish(subject, "{}".into()).await;
        refused(&mut errors, subject).await?;
    }
    let _sub = watcher.subscribe("_INBOX.>").await?;
    refused(&mut errors, "Subscription to \"_INBOX.>\"").await?;

    // Agent pve1 tries to read pve2's events and to cancel pve2's jobs.
    let (rogue, mut rogue_errors) = restricted_client(&nats.url(), &ca, "agent-pve1", "pve1-pw", "_INBOX_pve1").await?;
    let theirs = format!("$JS.API.DIRECT.GET.PVEFLEET_EVENTS_pve2.pvefleet.events.pve2.{job}");
    try_request(&rogue, &theirs, serde_json::json!({})).await;
    refused(&mut rogue_errors, &theirs).await?;
    try_request(
        &rogue,
        "$JS.API.DIRECT.GET.PVEFLEET_EVENTS_pve2",
        serde_json::json!({"next_by_subj": "pvefleet.events.>", "seq": 1}),
    )
    .await;
    refused(&mut rogue_errors, "$JS.API.DIRECT.GET.PVEFLEET_EVENTS_pve2\"").await?;
    try_request(&rogue, "$JS.API.STREAM.MSG.GET.PVEFLEET_EVENTS_pve2", serde_json::json!({"seq": 1})).await;
    refused(&mut rogue_errors, "STREAM.MSG.GET.PVEFLEET_EVENTS_pve2").await?;
    // Nor list which jobs pve2 has: a stream's info with a subject filter names them.
    try_request(
        &rogue,
        "$JS.API.STREAM.INFO.PVEFLEET_EVENTS_pve2",
        serde_json::json!({"subjects_filter": "pvefleet.events.>"}),
    )
    .await;
    refused(&mut rogue_errors, "STREAM.INFO.PVEFLEET_EVENTS_pve2").await?;
    // Nor through the shared checkpoints bucket, whose keys are `<node>.<job>`.
    try_request(
        &rogue,
        "$JS.API.STREAM.INFO.KV_pvefleet-jobs",
        serde_json::json!({"subjects_filter": "$KV.pvefleet-jobs.>"}),
    )
    .await;
    refused(&mut rogue_errors, "STREAM.INFO.KV_pvefleet-jobs").await?;
    for subject in ["pvefleet.control.pve2.cancel", "pvefleet.control.pve2.plan", "pvefleet.jobs.pve2.destroy"] {
        let _ = rogue.publish(subject, "{}".into()).await;
        refused(&mut rogue_errors, subject).await?;
    }
    // What it may publish, its own node's subject, it uses to forge pve2's job's end.
    let forged = serde_json::json!({"v": 1, "job_id": job, "node": "pve1", "seq": 1, "type": "complete",
        "step": "finalizing", "percent": 100, "message": "forged", "timestamp": "2026-11-27T00:00:00Z",
        "result": {"success": true, "job_id": job, "node": "pve1", "vmid": 666, "ip": null, "rolled_back": false}});
    rogue.publish(format!("pvefleet.events.pve1.{job}"), forged.to_string().into()).await?;
    rogue.flush().await?;

    // pve2's agent runs the job; the watcher follows it to its real end.
    let _pve2 = agent("pve2", "pve2-pw")?;
    let watch = tokio::time::timeout(
        Duration::from_secs(60),
        Pvefleet::new(&dir, &nats.url_as("watcher", "watch-pw"), &db).with_ca(&ca.ca).run(&[
            "watch",
            &job.to_string(),
            "--json",
            "--nats-inbox-prefix",
            "_INBOX_watcher",
        ]),
    )
    .await??;
    assert_eq!(watch.code, Some(0), "{watch:?}");
    let events: Vec<pvefleet_schemas::Event> =
        watch.stdout.lines().map(|l| pvefleet_schemas::Event::decode(l.as_bytes())).collect::<Result<_, _>>()?;
    pvefleet_testbed::jobs::check_event_contract(&events)?;
    assert!(events.iter().all(|e| e.node.as_str() == "pve2" && e.message != "forged"), "{events:#?}");
    let vmid = events.last().and_then(|e| e.result.as_ref()).and_then(|r| r.vmid).map(|v| i64::from(v.get()));
    assert_ne!(vmid, Some(666));
    // The watcher lists the fleet without any consumer.
    let nodes = Pvefleet::new(&dir, &nats.url_as("watcher", "watch-pw"), &db)
        .with_ca(&ca.ca)
        .run(&["nodes", "--json", "--nats-inbox-prefix", "_INBOX_watcher"])
        .await?;
    assert!(nodes.ok() && nodes.stdout.contains("\"pve1\"") && nodes.stdout.contains("\"pve2\""), "{nodes:?}");
    // The recorder stored the real end, not the forgery.
    let shown = wait_until("the recorder to store the job's end", Duration::from_secs(30), || async {
        let run = admin.run(&["job", &job.to_string(), "--json"]).await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
        (v["state"] == "succeeded").then_some(v)
    })
    .await?;
    assert_eq!(shown["vmid"].as_i64(), vmid);

    // Every process ran with its password in its NATS URL; no log line shows one, not even
    // the errors of connecting to a server that is gone.
    nats.kill();
    let down = Pvefleet::new(&dir, &format!("nats://watcher:watch-pw@127.0.0.1:{port}"), &db)
        .with_ca(&ca.ca)
        .run(&["nodes", "--nats-inbox-prefix", "_INBOX_watcher"])
        .await?;
    assert_eq!(down.code, Some(1), "{down:?}");
    assert!(down.stderr.contains("watcher:***@") && !down.stderr.contains("watch-pw"), "{}", down.stderr);
    let late = agent("pve1", "pve1-pw")?;
    wait_until("the agent to report NATS unreachable", Duration::from_secs(20), || {
        let text = late.log_text();
        async move { text.contains("NATS unreachable").then_some(()) }
    })
    .await?;
    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path)?;
            for (_, password) in PASSWORDS {
                assert!(!text.contains(password), "{} shows a password", path.display());
            }
        }
    }
    dir.pass();
    Ok(())
}

/// Hole 10: routes were trusted on the CA alone, the one clients' certificates come from, so a
/// host holding an agent's client certificate could join the cluster as a route and bypass
/// every subject permission. Now routes have a CA of their own: a server presenting a
/// certificate from the clients' CA is refused as a route and sees nothing.
#[tokio::test]
async fn a_host_with_a_client_certificate_cannot_join_the_cluster_as_a_route() -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("deploy-route");
    let ca = TestCa::make(&dir)?;
    let clients: [u16; 3] = [0, 1, 2].map(|_| free_port("127.0.0.1"));
    let routes: [u16; 3] = [0, 1, 2].map(|_| free_port("127.0.0.1"));
    let mut nodes = Vec::new();
    for i in 0..3 {
        let config = loopback_config(&dir, &format!("cluster-{}.conf", i + 1), clients[i], Some((routes[i], routes)))?;
        nodes.push(NatsServer::from_config(&dir, &format!("nats{}", i + 1), config, clients[i], env())?);
    }
    for n in &mut nodes {
        n.ready().await?;
    }
    // The rogue server: a certificate from the clients' CA (as an agent host may hold), routing
    // to nats1, and a local client listening to everything that would flow over the route.
    let rogue_port = free_port("127.0.0.1");
    let rogue_config = dir.path().join("rogue.conf");
    let tls = dir.path().join("tls");
    std::fs::write(
        &rogue_config,
        format!(
            "server_name: rogue\nlisten: 127.0.0.1:{rogue_port}\ncluster {{\n  name: pvefleet\n  listen: 127.0.0.1:{}\n  \
             tls {{\n    cert_file: {:?}\n    key_file: {:?}\n    ca_file: {:?}\n    verify: true\n  }}\n  routes: [nats-route://127.0.0.1:{}]\n}}\n",
            free_port("127.0.0.1"),
            tls.join("server.pem"),
            tls.join("server.key"),
            tls.join("ca.pem"),
            routes[0]
        ),
    )?;
    let mut rogue = NatsServer::from_config(&dir, "rogue", rogue_config, rogue_port, vec![])?;
    rogue.ready().await?;
    let listener = async_nats::connect(format!("nats://127.0.0.1:{rogue_port}")).await?;
    let mut overheard = listener.subscribe("pvefleet.>").await?;
    listener.flush().await?;
    wait_until("nats1 to refuse the rogue route", Duration::from_secs(30), || {
        let log = nodes[0].log_text();
        async move { (log.contains("TLS route handshake error") || log.contains("tls: ")).then_some(()) }
    })
    .await?;
    let coordinator = async_nats::ConnectOptions::with_user_and_password("coordinator".into(), "coord-pw".into())
        .add_root_certificates(ca.ca.clone())
        .require_tls(true)
        .connect(nodes[0].url())
        .await?;
    for _ in 0..20 {
        coordinator.publish("pvefleet.jobs.pve1.create", "a job".into()).await?;
    }
    coordinator.flush().await?;
    let heard = tokio::time::timeout(Duration::from_secs(3), overheard.next()).await;
    assert!(heard.is_err(), "the rogue server heard the cluster's traffic: {heard:?}");
    dir.pass();
    Ok(())
}

/// One user per role (issue 20), on a real server with the shipped auth.conf: the recorder and
/// the web view cannot publish a job or a control request; nobody but the admin may change or
/// remove the events and audit streams, and nobody at all, the admin included, may delete a
/// record from them or purge them (the streams refuse it). Each role still does its own part:
/// the recorder records, the operators' user submits a signed job that runs.
#[tokio::test]
async fn each_role_does_its_own_part_and_no_more_on_the_shipped_config() -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("deploy-roles");
    let ca = TestCa::make(&dir)?;
    let port = free_port("127.0.0.1");
    let config = loopback_config(&dir, "single.conf", port, None)?;
    let mut nats = NatsServer::from_config(&dir, "nats-single", config, port, env())?;
    nats.ready().await?;
    let pve = FakePve::start(&dir, FakePveOptions::default()).await?;
    let db = TestDb::sqlite(&dir);
    let admin = Pvefleet::new(&dir, &nats.url_as("admin", "admin-pw"), &db).with_ca(&ca.ca);
    admin.must(&["setup", "--node", "pve1", "--node", "pve2"]).await?;
    let operator = Pvefleet::new(&dir, &nats.url_as("coordinator", "coord-pw"), &db).with_ca(&ca.ca);
    // The operators' user may not run setup (it changes streams) nor enroll (the trust bucket).
    let setup = operator.command(&["setup"])?.output().await?;
    assert!(!setup.status.success(), "{setup:?}");
    let recorder_db = TestDb::sqlite(&dir);
    let recorder = Pvefleet::new(&dir, &nats.url_as("recorder", "recorder-pw"), &recorder_db).with_ca(&ca.ca);
    let mut recording = {
        let mut cmd = recorder.command(&["record", "--nats-inbox-prefix", "_INBOX_recorder"])?;
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?
    };
    let _agent = Agent::start(
        &dir,
        &[nats.url_as("agent-pve1", "pve1-pw")],
        &pve,
        AgentOptions {
            inbox_prefix: Some("_INBOX_pve1".into()),
            nats_ca: Some(ca.ca.clone()),
            ..AgentOptions::node("pve1")
        },
    )?;
    let submit = operator
        .run(&[
            "submit",
            "--node",
            "pve1",
            "--hostname",
            "roles",
            "--ostemplate",
            OSTEMPLATE,
            "--ip",
            "127.0.0.13/32",
            "--watch",
        ])
        .await?;
    assert!(submit.ok(), "the operators' user submits a signed job that runs: {submit:?}");

    for (user, password, inbox) in
        [("recorder", "recorder-pw", "_INBOX_recorder"), ("watcher", "watch-pw", "_INBOX_watcher")]
    {
        let (client, mut errors) = restricted_client(&nats.url(), &ca, user, password, inbox).await?;
        for subject in ["pvefleet.jobs.pve1.create", "pvefleet.jobs.pve1.destroy", "pvefleet.control.pve1.cancel"] {
            let _ = client.publish(subject, "{}".into()).await;
            refused(&mut errors, subject).await.map_err(|e| anyhow::anyhow!("{user}: {e}"))?;
        }
    }
    // The web view acts (its jobs count only when its key's grant allows them), but it cannot
    // speak as an agent or an admin in the audit trail, nor write the trust bucket.
    let (client, mut errors) = restricted_client(&nats.url(), &ca, "web", "web-pw", "_INBOX_web").await?;
    for subject in ["pvefleet.audit.node.pve1", "pvefleet.audit.admin.policy", "$KV.pvefleet-trust.policy"] {
        let _ = client.publish(subject, "{}".into()).await;
        refused(&mut errors, subject).await.map_err(|e| anyhow::anyhow!("web: {e}"))?;
    }
    let history = ["PVEFLEET_AUDIT", "PVEFLEET_EVENTS_pve1"];
    for (user, password, inbox) in [
        ("coordinator", "coord-pw", "_INBOX_coord"),
        ("recorder", "recorder-pw", "_INBOX_recorder"),
        ("web", "web-pw", "_INBOX_web"),
        ("agent-pve1", "pve1-pw", "_INBOX_pve1"),
    ] {
        let (client, mut errors) = restricted_client(&nats.url(), &ca, user, password, inbox).await?;
        for stream in history {
            for op in ["DELETE", "PURGE", "UPDATE"] {
                let subject = format!("$JS.API.STREAM.{op}.{stream}");
                try_request(&client, &subject, serde_json::json!({"name": stream})).await;
                refused(&mut errors, &subject).await.map_err(|e| anyhow::anyhow!("{user}: {e}"))?;
            }
        }
        if user != "coordinator" {
            let subject = "$JS.API.STREAM.MSG.DELETE.PVEFLEET_AUDIT";
            try_request(&client, subject, serde_json::json!({"seq": 1})).await;
            refused(&mut errors, subject).await.map_err(|e| anyhow::anyhow!("{user}: {e}"))?;
        }
    }
    // The admin may manage streams, but the history streams refuse a purge or a deleted
    // record from anyone.
    let js = async_nats::jetstream::new(
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-pw".into())
            .add_root_certificates(ca.ca.clone())
            .require_tls(true)
            .connect(nats.url())
            .await?,
    );
    for stream in history {
        let mut s = js.get_stream(stream).await?;
        let before = s.info().await?.state.messages;
        assert!(before > 0, "{stream} holds this run's records");
        assert!(s.purge().await.is_err(), "{stream} refuses a purge");
        let first = s.info().await?.state.first_sequence;
        assert!(s.delete_message(first).await.is_err(), "{stream} refuses a delete");
        assert_eq!(s.info().await?.state.messages, before, "{stream} keeps every record");
    }
    // The recorder recorded the trail with its own user.
    let recorded =
        pvefleet_coordinator::store::Store::open(&pvefleet_coordinator::store::database_url(Some(&recorder_db.url()))?)
            .await?;
    wait_until("the recorder to keep the audit trail", Duration::from_secs(20), || async {
        recorded.audit(10).await.ok().filter(|r| !r.is_empty()).map(drop)
    })
    .await?;
    let _ = recording.kill().await;
    dir.pass();
    Ok(())
}
