//! Self-tests of the test bed: each real part comes up, does its job, and goes away.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::PublishMessage, stream};
use futures::StreamExt as _;
use pvefleet_agent::tls::{Fingerprint, Trust, client_config};
use pvefleet_testbed::{
    FakePve, FakePveOptions, NatsCluster, NatsServer, Sshd, TestDir, sshd::keygen, tools, wait_until,
};
use serde_json::Value;

#[tokio::test]
async fn jetstream_publish_consume_round_trip() -> anyhow::Result<()> {
    let dir = TestDir::new("bed-js");
    let nats = NatsServer::start(&dir).await?;
    let js = nats.jetstream().await?;
    js.create_stream(stream::Config {
        name: "BED".into(),
        subjects: vec!["bed.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await?;
    js.send_publish("bed.one", PublishMessage::build().payload("hello".into()).message_id("m1")).await?.await?;
    // The same id again is absorbed by the dedup window.
    let ack =
        js.send_publish("bed.one", PublishMessage::build().payload("hello".into()).message_id("m1")).await?.await?;
    assert!(ack.duplicate);

    // The killed leader's streams and consumers elect new leaders; until they have, JetStream
    // requests time out, so each is tried again (creating a durable and acking are idempotent).
    let consumer = wait_until("the consumer after the election", Duration::from_secs(30), || {
        let js = js.clone();
        async move {
            let stream = js.get_stream("BED").await.ok()?;
            stream.create_consumer(pull::Config { durable_name: Some("c".into()), ..Default::default() }).await.ok()
        }
    })
    .await?;
    let mut batch = consumer.fetch().max_messages(10).expires(Duration::from_secs(1)).messages().await?;
    let msg = batch.next().await.expect("one message").map_err(anyhow::Error::from_boxed)?;
    assert_eq!(&msg.payload[..], b"hello");
    msg.double_ack().await.map_err(anyhow::Error::from_boxed)?;
    assert!(batch.next().await.is_none(), "the duplicate was stored");
    dir.pass();
    Ok(())
}

#[tokio::test]
async fn cluster_keeps_every_message_while_a_node_is_killed() -> anyhow::Result<()> {
    let dir = TestDir::new("bed-cluster");
    let mut cluster = NatsCluster::start(&dir).await?;
    let js = jetstream::new(cluster.client().await?);
    let created = wait_until("a replicated stream", Duration::from_secs(20), || {
        let js = js.clone();
        async move {
            js.create_stream(stream::Config {
                name: "BED".into(),
                subjects: vec!["bed.>".into()],
                num_replicas: 3,
                retention: stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await
            .ok()
        }
    })
    .await?;
    // Kill the stream's leader: the harshest choice, forcing an election mid-publish.
    let leader = created.cached_info().cluster.as_ref().and_then(|c| c.leader.clone()).expect("a stream leader");
    let victim = cluster.nodes.iter().position(|n| n.server_name() == leader).expect("the leader is one of ours");

    for i in 0..200u32 {
        if i == 100 {
            cluster.kill(victim);
        }
        // A publish whose ack is lost is sent again with the same id; the dedup window keeps
        // the stream to one copy.
        wait_until(&format!("publish of m{i}"), Duration::from_secs(30), || {
            let js = js.clone();
            async move {
                let msg = PublishMessage::build().payload(i.to_string().into()).message_id(format!("m{i}"));
                js.send_publish(format!("bed.{}", i % 7), msg).await.ok()?.await.ok()
            }
        })
        .await?;
    }

    // The killed leader's streams and consumers elect new leaders; until they have, JetStream
    // requests time out, so each is tried again (creating a durable and acking are idempotent).
    let consumer = wait_until("the consumer after the election", Duration::from_secs(30), || {
        let js = js.clone();
        async move {
            let stream = js.get_stream("BED").await.ok()?;
            stream.create_consumer(pull::Config { durable_name: Some("c".into()), ..Default::default() }).await.ok()
        }
    })
    .await?;
    let mut seen = HashSet::new();
    let mut dupes = 0;
    while seen.len() < 200 {
        let mut batch = wait_until("a fetch to be answered", Duration::from_secs(30), || async {
            consumer.fetch().max_messages(100).expires(Duration::from_secs(2)).messages().await.ok()
        })
        .await?;
        let mut got = 0;
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(anyhow::Error::from_boxed)?;
            got += 1;
            if !seen.insert(String::from_utf8(msg.payload.to_vec())?) {
                dupes += 1;
            }
            wait_until("an ack to be confirmed", Duration::from_secs(30), || async { msg.double_ack().await.ok() })
                .await?;
        }
        anyhow::ensure!(got > 0, "consumer ran dry at {} messages", seen.len());
    }
    assert_eq!(dupes, 0);
    assert_eq!(seen, (0..200).map(|i| i.to_string()).collect());

    cluster.restart(victim).await?;
    let mut batch = consumer.fetch().max_messages(10).expires(Duration::from_millis(500)).messages().await?;
    assert!(batch.next().await.is_none(), "nothing was delivered twice after the restart");
    dir.pass();
    Ok(())
}

/// A client like the agent's: reqwest over rustls, trusting exactly `trust`.
fn pve_client(trust: &Trust) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(trust).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn pve_ok(resp: reqwest::Response) -> anyhow::Result<Value> {
    let status = resp.status();
    let body: Value = resp.json().await?;
    anyhow::ensure!(status.is_success(), "{status}: {body}");
    Ok(body["data"].clone())
}

async fn wait_task(client: &reqwest::Client, pve: &FakePve, upid: &str) -> anyhow::Result<Value> {
    let url = format!("{}/api2/json/nodes/pve1/tasks/{upid}/status", pve.url);
    wait_until("the task to stop", Duration::from_secs(10), || async {
        let status =
            pve_ok(client.get(&url).header("Authorization", pve.auth_header()).send().await.ok()?).await.ok()?;
        (status["status"] == "stopped").then_some(status)
    })
    .await
}

#[tokio::test]
async fn lxc_created_and_started_with_token_and_pinned_fingerprint() -> anyhow::Result<()> {
    let dir = TestDir::new("bed-pve");
    let pve = FakePve::start(&dir, FakePveOptions::default()).await?;
    let client = pve_client(&Trust::Fingerprint(pve.fingerprint.parse()?));
    let auth = pve.auth_header();

    let create = client
        .post(format!("{}/api2/json/nodes/pve1/lxc", pve.url))
        .header("Authorization", &auth)
        .form(&[
            ("vmid", "150"),
            ("hostname", "bed"),
            ("ostemplate", pvefleet_testbed::fakepve::OSTEMPLATE),
            ("rootfs", "local-lvm:8"),
            ("net0", "name=eth0,bridge=vmbr0,ip=127.0.0.9/32"),
            ("ssh-public-keys", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBedTestKeyBedTestKeyBedTestKeyBedTestKey1 bed"),
        ])
        .send()
        .await?;
    let upid = pve_ok(create).await?.as_str().unwrap().to_owned();
    assert_eq!(wait_task(&client, &pve, &upid).await?["exitstatus"], "OK");
    // The launcher wrote the create's keys where the test's sshd reads them.
    let keys = std::fs::read_to_string(pve.keys_dir.join("127.0.0.9"))?;
    assert!(keys.contains("BedTestKey"), "{keys}");

    let start = client
        .post(format!("{}/api2/json/nodes/pve1/lxc/150/status/start", pve.url))
        .header("Authorization", &auth)
        .send()
        .await?;
    let upid = pve_ok(start).await?.as_str().unwrap().to_owned();
    assert_eq!(wait_task(&client, &pve, &upid).await?["exitstatus"], "OK");
    let current = client
        .get(format!("{}/api2/json/nodes/pve1/lxc/150/status/current", pve.url))
        .header("Authorization", &auth)
        .send()
        .await?;
    assert_eq!(pve_ok(current).await?["status"], "running");
    let ifaces = client
        .get(format!("{}/api2/json/nodes/pve1/lxc/150/interfaces", pve.url))
        .header("Authorization", &auth)
        .send()
        .await?;
    assert!(pve_ok(ifaces).await?.to_string().contains("127.0.0.9"));

    // The CA-file mode trusts the same server.
    let via_ca = pve_client(&Trust::CaFile(pve.cafile.clone()));
    pve_ok(via_ca.get(format!("{}/api2/json/version", pve.url)).header("Authorization", &auth).send().await?).await?;

    // A wrong pin is refused in the handshake: the server never sees a request.
    let before = pve.health().await?["requests"].as_u64().unwrap();
    let mut wrong: Vec<u8> = pve.fingerprint.bytes().collect();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong: Fingerprint = String::from_utf8(wrong)?.parse()?;
    let err = pve_client(&Trust::Fingerprint(wrong))
        .get(format!("{}/api2/json/version", pve.url))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap_err();
    let chain = format!("{:?}", anyhow::Error::from(err));
    assert!(chain.contains("not the pinned"), "{chain}");
    assert_eq!(pve.health().await?["requests"].as_u64().unwrap(), before);
    dir.pass();
    Ok(())
}

#[tokio::test]
async fn fakepve_faults_can_be_injected() -> anyhow::Result<()> {
    let dir = TestDir::new("bed-faults");
    let pve = FakePve::start(&dir, FakePveOptions::default()).await?;
    let client = pve_client(&Trust::Fingerprint(pve.fingerprint.parse()?));
    let version = format!("{}/api2/json/version", pve.url);
    pve.fail("GET", "/version", 2, 503, "try later").await?;
    for _ in 0..2 {
        let resp = client.get(&version).header("Authorization", pve.auth_header()).send().await?;
        assert_eq!(resp.status(), 503);
    }
    let resp = client.get(&version).header("Authorization", pve.auth_header()).send().await?;
    assert_eq!(resp.status(), 200);

    pve.offline("pve1", true).await?;
    let resp = client
        .get(format!("{}/api2/json/nodes/pve1/status", pve.url))
        .header("Authorization", pve.auth_header())
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 595);
    pve.reset().await?;
    assert_eq!(pve.health().await?["nodes"]["pve1"], true);
    dir.pass();
    Ok(())
}

#[tokio::test]
async fn command_over_ssh_on_the_test_sshd_with_a_key() -> anyhow::Result<()> {
    let dir = TestDir::new("bed-ssh");
    let ip = Ipv4Addr::new(127, 0, 0, 23);
    let sshd = Sshd::start(&dir, ip, &dir.sub("keys")).await?;
    let key = dir.path().join("id_ed25519");
    keygen(&key, "bed")?;
    std::fs::copy(key.with_extension("pub"), &sshd.authorized_keys)?;
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("{}\n", sshd.known_hosts_line()))?;

    let out = Command::new(tools::openssh_client("ssh")?)
        .arg("-i")
        .arg(&key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args(["-p", &sshd.port.to_string()])
        .arg(format!("{}@{ip}", sshd.user))
        .arg("echo out; echo err >&2; exit 3")
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    assert_eq!(out.status.code(), Some(3));
    dir.pass();
    Ok(())
}
