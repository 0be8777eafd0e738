//! The holes a hostile review reproduced with one stolen part (issue 18), each tried again
//! here as the attacker would, on real servers: every test failed before its fix.

use std::net::Ipv4Addr;
use std::time::Duration;

use pvefleet_schemas::{ErrorKind, Event, Step};
use pvefleet_testbed::Fleet;
use pvefleet_testbed::agent::AgentOptions;
use pvefleet_testbed::jobs::{
    JOB_WITHIN, check_event_contract, create_job, events_until_terminal, result_of, run_to_end, submit,
};

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
    let events = run_to_end(&bed.js, &poison).await?;
    let error = result_of(&events).error.clone().expect("refused");
    assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Validating), "{error:?}");
    for field in ["options.timeouts.task", "deploy.packages"] {
        assert!(error.message.contains(field), "{field} in {}", error.message);
    }
    assert!(bed.pve.containers().await?.is_empty());

    // A bug that panics as the job reaches `connecting`, after its container was made and
    // started: the job ends once, with kind `internal`, its container rolled back.
    let bug = create_job("pve1", "panics", Ipv4Addr::new(127, 0, 0, 31));
    let events = run_to_end(&bed.js, &bug).await?;
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
    let admin = Pvefleet::new(&dir, &nats.url_as("admin", "admin-pw"), &db).with_ca(&ca.ca);
    admin.must(&["setup", "--node", "pve1", "--node", "pve2"]).await?;
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
        identity_key: None,
        signature: None,
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
    let trust = admin.run(&["nodes", "enroll", "pve2"]).await?;
    assert!(!trust.ok(), "{trust:?}");
    // Signed with pve1's own enrolled key (stolen from its host), speaking for pve2: under
    // pve1's registry key, and under pve2's (written with a password that may), both ignored.
    let pve1_key = pvefleet_agent::sealing::load_identity(&pvefleet_testbed::trust::state_dir(dir.path(), "pve1"))?
        .expect("the bed made pve1's identity");
    let mut signed_lie = lie("pve2", 32 << 40);
    pvefleet_schemas::trust::sign_heartbeat(&mut signed_lie, &pve1_key);
    put(signed_lie.clone()).await?;
    let coordinator = async_nats::jetstream::new(
        async_nats::ConnectOptions::with_user_and_password("coordinator".into(), "coord-pw".into())
            .add_root_certificates(ca.ca.clone())
            .require_tls(true)
            .connect(nats.url())
            .await?,
    );
    coordinator.publish("$KV.pvefleet-nodes.pve2", serde_json::to_vec(&signed_lie)?.into()).await?.await?;
    let nodes = admin.must(&["nodes", "--json"]).await?;
    let beats: Vec<Heartbeat> = serde_json::from_str(&nodes.stdout)?;
    assert!(beats.iter().all(|b| b.node.as_str() != "pve2"), "pve2 is impersonated: {beats:?}");
    assert!(nodes.stderr.contains("not by the key enrolled for pve2"), "{nodes:?}");
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
    // and the attacker's key, signed by a key of the attacker's: not believed at all, and its
    // sealing key is never sealed to.
    let mut own = lie("pve1", 64 << 40);
    pvefleet_schemas::trust::sign_heartbeat(&mut own, &pvefleet_schemas::signing::Identity::generate());
    put(own).await?;
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
    assert!(sealed.stderr.contains("nothing secret can be sent to pve1"), "{sealed:?}");
    assert!(sealed.stderr.contains("not by the key enrolled for pve1"), "{sealed:?}");
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
    let fingerprint = admin.enroll(&agent).await?;
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

/// Hole 6: the root password went to whoever answered first. With no host key announced by
/// PVE the agent trusted the first key it saw and, its own key refused, tried the password on
/// it; and a sealed password copied from one job's message into another opened there too. Now
/// a password goes only to a host key PVE announced or the spec lists, and a sealed secret
/// opens only in the job it was sealed for.
#[tokio::test]
async fn a_root_password_goes_only_to_a_vouched_host_and_only_in_its_own_job() -> anyhow::Result<()> {
    let bed = Fleet::start("hostile-password", &["pve1"]).await?;
    let ip = Ipv4Addr::new(127, 0, 0, 33);
    // A host at the container's address that does not know the job's key (it reads its keys
    // elsewhere) and logs every authentication method tried.
    let elsewhere = bed.dir.sub("not-the-containers-keys");
    let mut sshd = pvefleet_testbed::Sshd::prepare(&bed.dir, ip, &elsewhere)?;
    sshd.log_level("DEBUG1")?;
    sshd.launch().await?;
    let agent =
        bed.agent_with(AgentOptions { ssh: Some((sshd.user.clone(), sshd.port)), ..AgentOptions::node("pve1") })?;
    let key = agent.sealing_key().await?;
    let job_with_password = |hostname: &str| {
        let mut job = create_job("pve1", hostname, ip);
        job.container.root_password = Some(key.seal_for_job(&job.job_id, b"correct horse"));
        job.deploy.scripts = vec![pvefleet_schemas::ScriptSpec {
            name: "hello".into(),
            body: "echo hello".into(),
            interpreter: "/bin/sh".into(),
            timeout: None,
        }];
        job.options.timeouts.ssh = pvefleet_schemas::HumanDuration(Duration::from_secs(10));
        job
    };
    let tried_password = |sshd: &pvefleet_testbed::Sshd| sshd.log_text().contains("method password");

    // No host key announced: the key is refused, and the password is not tried.
    let unvouched = job_with_password("unvouched");
    let events = run_to_end(&bed.js, &unvouched).await?;
    let error = result_of(&events).error.clone().expect("failed");
    assert_eq!((error.kind, error.step), (ErrorKind::Ssh, Step::Connecting), "{error:?}");
    assert!(error.message.contains("root password was not tried"), "{}", error.message);
    assert!(!tried_password(&sshd), "the password was offered to an unvouched host:\n{}", sshd.log_text());

    // Announced by PVE in the create log: the same host may be offered the password.
    bed.pve
        .task_log(
            "vzcreate",
            &[
                "Creating SSH host key 'ssh_host_ed25519_key' - this may take some time ...",
                &format!("done: {} root@ct", sshd.host_fingerprint()),
            ],
        )
        .await?;
    let vouched = job_with_password("vouched");
    run_to_end(&bed.js, &vouched).await?;
    assert!(tried_password(&sshd), "the password was not tried on the announced host:\n{}", sshd.log_text());

    // A sealed password copied into another job opens nothing there.
    let mut copied = create_job("pve1", "copied", Ipv4Addr::new(127, 0, 0, 34));
    copied.container.root_password = vouched.container.root_password.clone();
    let events = run_to_end(&bed.js, &copied).await?;
    let error = result_of(&events).error.clone().expect("refused");
    assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Validating), "{error:?}");
    assert!(error.message.contains(&format!("sealed for job {}", vouched.job_id)), "{}", error.message);
    assert!(bed.pve.containers().await?.is_empty(), "nothing is left of the three");
    bed.dir.pass();
    Ok(())
}

/// Makes a tenant's container on pve1 outside pvefleet: no marker, not a template.
async fn strangers_container(bed: &Fleet, vmid: u32) -> anyhow::Result<()> {
    bed.pve.make_container("pve1", vmid, &[("hostname", "tenant-db"), ("tags", "tenant")]).await
}

/// Hole 2: a job cloned any container on the node, a stranger's included (its whole disk,
/// to an address of the submitter's choosing), and mounted any guest's volume. Now only a
/// template or a container pvefleet made may be cloned, and only the job's own volumes
/// mounted, unless the node's agent.toml lists more; refused at validating and in a plan.
#[tokio::test]
async fn a_job_cannot_clone_or_mount_a_strangers_container() -> anyhow::Result<()> {
    use pvefleet_schemas::lxc::MountPoint;
    use pvefleet_schemas::source::{CloneFrom, CloneSpec};
    use pvefleet_testbed::cli::{Pvefleet, TestDb};
    let bed = Fleet::start("hostile-clone", &["pve1"]).await?;
    let mut agent = bed.agent("pve1")?;
    strangers_container(&bed, 9100).await?;
    let clone_of_stranger = |hostname: &str, ip: u8| {
        let mut job = create_job("pve1", hostname, Ipv4Addr::new(127, 0, 0, ip));
        job.container.ostemplate = None;
        job.container.clone = Some(CloneSpec {
            from: CloneFrom::Vmid(pvefleet_schemas::Vmid::new(9100).expect("a vmid")),
            full: true,
            snapshot: None,
            storage: None,
            keep_key: false,
        });
        job
    };
    let refused = |events: &[Event], field: &str| {
        let error = result_of(events).error.clone().expect("refused");
        assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Validating), "{error:?}");
        assert!(error.message.starts_with(field), "{field}: {}", error.message);
    };
    let copy = clone_of_stranger("copy", 35);
    let events = run_to_end(&bed.js, &copy).await?;
    refused(&events, "container.clone.from:");

    let mut mount = create_job("pve1", "mounts", Ipv4Addr::new(127, 0, 0, 36));
    mount.container.mounts = vec![MountPoint::Existing {
        volume: "local-lvm:vm-9100-disk-0".into(),
        path: "/srv/theirs".into(),
        backup: None,
        ro: true,
    }];
    let events = run_to_end(&bed.js, &mount).await?;
    refused(&events, "container.mounts[0].volume:");
    assert_eq!(bed.pve.containers().await?, vec![9100], "nothing was cloned or mounted");

    // A plan says the same, naming the field.
    let db = TestDb::sqlite(&bed.dir);
    let cli = Pvefleet::new(&bed.dir, &bed.nats.url(), &db);
    cli.must(&["setup"]).await?;
    let plan =
        cli.run(&["plan", "--node", "pve1", "--hostname", "copy", "--clone", "9100", "--ip", "127.0.0.35/32"]).await?;
    assert_eq!(plan.code, Some(1), "{plan:?}");
    assert!(plan.stdout.contains("container.clone.from: 9100 is neither a template"), "{}", plan.stdout);

    // The node's operator may list it.
    agent.kill();
    let _agent = bed.agent_with(AgentOptions {
        extra_config: "[clone]\nallow_vmids = [9100]\n[mounts]\nallow_existing = [\"local-lvm:vm-9100-disk-0\"]\n"
            .into(),
        ..AgentOptions::node("pve1")
    })?;
    let allowed = clone_of_stranger("allowed", 37);
    submit(&bed.js, &allowed).await?;
    let events = events_until_terminal(&bed.js, allowed.job_id, JOB_WITHIN).await?;
    assert!(result_of(&events).success, "{events:#?}");
    bed.dir.pass();
    Ok(())
}

/// Hole 3: a download, appliance or OCI pull was skipped whenever a file of that name was on
/// the storage, so a file anyone wrote there under that name (another PVE user, a job fetching
/// other bytes as the same file name) was used unchecked; and an OCI image's default file name
/// dropped its registry. Now a file is used only as this agent fetched it, with the same
/// checksum, unchanged since; anything else is fetched again and verified by PVE.
#[tokio::test]
async fn a_template_cache_cannot_be_poisoned() -> anyhow::Result<()> {
    use pvefleet_schemas::source::{ChecksumAlgorithm, Download, TemplateSource};
    use sha2::Digest as _;
    let bed = Fleet::start("hostile-cache", &["pve1"]).await?;
    let _agent = bed.agent_with(AgentOptions::fetching_from_the_bed("pve1"))?;
    let good = b"the real root file system".repeat(1000);
    let evil = b"a root file system with a backdoor".repeat(1000);
    let (good_url, evil_url) = (bed.pve.serve_file("good.tar.zst", &good)?, bed.pve.serve_file("evil.tar.zst", &evil)?);
    let sha = |b: &[u8]| sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>();
    let fetch = |hostname: &str, ip: u8, url: &str, checksum: String| {
        let mut job = create_job("pve1", hostname, Ipv4Addr::new(127, 0, 0, ip));
        job.container.ostemplate = None;
        job.container.template = Some(TemplateSource::Download(Download {
            url: url.to_owned(),
            checksum,
            algorithm: ChecksumAlgorithm::Sha256,
            storage: "local".into(),
            filename: "debian-12-web.tar.zst".into(),
        }));
        job
    };
    let downloads = || async {
        let calls = bed.pve.calls().await?;
        anyhow::Ok(
            calls
                .iter()
                .filter(|(m, p, _)| m == "POST" && p == "/nodes/{node}/storage/{storage}/download-url")
                .map(|(_, _, n)| n)
                .sum::<u64>(),
        )
    };
    let js = &bed.js;
    let run = |job: pvefleet_schemas::Job| async move {
        submit(js, &job).await?;
        let events = events_until_terminal(js, job.job_id, JOB_WITHIN).await?;
        check_event_contract(&events)?;
        anyhow::ensure!(result_of(&events).success, "{events:#?}");
        anyhow::Ok(events)
    };
    run(fetch("first", 38, &good_url, sha(&good))).await?;
    assert_eq!(downloads().await?, 1);

    // A PVE user who may write templates puts other bytes under the same name.
    bed.pve
        .api(
            reqwest::Method::POST,
            "/nodes/pve1/storage/local/download-url",
            &[("content", "vztmpl"), ("filename", "debian-12-web.tar.zst"), ("url", evil_url.as_str())],
        )
        .await?;
    let poisoned_size = evil.len() as u64;
    pvefleet_testbed::wait_until("the other bytes on the storage", JOB_WITHIN, || async {
        let items = bed.pve.api_get("/nodes/pve1/storage/local/content?content=vztmpl").await.ok()?;
        items
            .as_array()?
            .iter()
            .any(|i| i["volid"] == "local:vztmpl/debian-12-web.tar.zst" && i["size"] == poisoned_size)
            .then_some(())
    })
    .await?;
    // A job asking for the real one fetches it again (PVE checks its digest), not the other.
    let events = run(fetch("second", 39, &good_url, sha(&good))).await?;
    assert_eq!(downloads().await?, 3, "fetched again: {events:#?}");
    assert!(events.iter().any(|e| e.message.contains("not as this agent fetched it")), "{events:#?}");
    // Now it is as this agent fetched it: the next job uses it as it is.
    let events = run(fetch("third", 40, &good_url, sha(&good))).await?;
    assert_eq!(downloads().await?, 3, "{events:#?}");
    // A job fetching other bytes under the same name, with their own digest, does not make
    // them the real one's: the next job for the real one fetches it again.
    run(fetch("other", 41, &evil_url, sha(&evil))).await?;
    run(fetch("fourth", 42, &good_url, sha(&good))).await?;
    assert_eq!(downloads().await?, 5);
    bed.dir.pass();
    Ok(())
}

/// Hole 9: any download URL or OCI registry was fetched by PVE, from the node itself:
/// `localhost`, the node's own addresses, the networks behind it and cloud metadata included,
/// and the task log came back to watchers. Now those are refused at validating, naming the
/// field, unless the node's agent.toml allows the host or prefix (`[fetch] allow`).
#[tokio::test]
async fn pve_is_never_sent_to_fetch_from_the_node_or_the_networks_behind_it() -> anyhow::Result<()> {
    use pvefleet_schemas::source::{ChecksumAlgorithm, Download, OciImage, TemplateSource};
    let bed = Fleet::start("hostile-ssrf", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let served = bed.pve.serve_file("internal.tar.zst", b"an internal file")?;
    let download = |url: &str| {
        TemplateSource::Download(Download {
            url: url.to_owned(),
            checksum: "ab".repeat(32),
            algorithm: ChecksumAlgorithm::Sha256,
            storage: "local".into(),
            filename: "fetched.tar.zst".into(),
        })
    };
    let cases = [
        (download(&served), "container.template.download.url", "loopback"),
        (download("http://localhost:8080/t.tar.zst"), "container.template.download.url", "loopback"),
        (
            download("http://169.254.169.254/latest/meta-data/t.tar.zst"),
            "container.template.download.url",
            "link-local",
        ),
        (download("http://10.0.0.1/t.tar.zst"), "container.template.download.url", "private"),
        // fakepve's node has 192.0.2.11 on vmbr0.
        (download("https://192.0.2.11:8006/t.tar.zst"), "container.template.download.url", "an address of this node"),
        (
            TemplateSource::Oci(OciImage {
                reference: "127.0.0.1:5000/internal/app:1".into(),
                storage: "local".into(),
                filename: None,
            }),
            "container.template.oci.reference",
            "loopback",
        ),
    ];
    for (i, (source, field, why)) in cases.into_iter().enumerate() {
        let mut job = create_job("pve1", &format!("fetch-{i}"), Ipv4Addr::new(127, 0, 0, 43));
        job.container.ostemplate = None;
        job.container.template = Some(source);
        let events = run_to_end(&bed.js, &job).await?;
        let error = result_of(&events).error.clone().expect("refused");
        assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Validating), "{i}: {error:?}");
        assert!(error.message.starts_with(field) && error.message.contains(why), "{i}: {}", error.message);
    }
    let calls = bed.pve.calls().await?;
    let fetches =
        calls.iter().filter(|(m, p, _)| m == "POST" && p.contains("download-url") || p.contains("oci-registry-pull"));
    assert_eq!(fetches.count(), 0, "PVE was sent to fetch: {calls:?}");
    assert!(bed.pve.containers().await?.is_empty());
    bed.dir.pass();
    Ok(())
}

/// Hole 4: the node's clone key (`ssh.key_file`, the key every clone's template trusts so the
/// deploy can log in) stayed in every clone, so every agent host kept root into every clone for
/// ever. Now the deploy swaps the job's own key in for it and removes the job's key at its end:
/// no key that opens other containers remains (unless `clone.keep_key` asks).
#[tokio::test]
async fn no_key_that_opens_other_containers_stays_in_a_clone() -> anyhow::Result<()> {
    use pvefleet_schemas::lxc::{Ipv4Setting, Nic};
    use pvefleet_schemas::source::{CloneFrom, CloneSpec};
    use pvefleet_schemas::{DeploySpec, ScriptSpec};
    let bed = Fleet::start("hostile-clone-key", &["pve1"]).await?;
    let ips = [Ipv4Addr::new(127, 0, 0, 44), Ipv4Addr::new(127, 0, 0, 45)];
    let sshds = [
        pvefleet_testbed::Sshd::start(&bed.dir, ips[0], &bed.pve.keys_dir).await?,
        pvefleet_testbed::Sshd::start(&bed.dir, ips[1], &bed.pve.keys_dir).await?,
    ];
    bed.pve.make_template("pve1", 9200, "tmpl-fleet").await?;
    let key = bed.dir.path().join("fleet-clone-key");
    pvefleet_testbed::sshd::keygen(&key, "fleet-clone-key")?;
    let fleet_key = std::fs::read_to_string(key.with_extension("pub"))?;
    let mut agent = bed.agent_with(AgentOptions {
        ssh: Some((sshds[0].user.clone(), sshds[0].port)),
        ssh_key_file: Some(key),
        ..AgentOptions::node("pve1")
    })?;
    let clone_job = |hostname: &str, ip: Ipv4Addr, keep_key: bool| {
        let mut job = create_job("pve1", hostname, ip);
        job.container.ostemplate = None;
        job.container.clone = Some(CloneSpec {
            from: CloneFrom::Name("tmpl-fleet".into()),
            full: true,
            snapshot: None,
            storage: None,
            keep_key,
        });
        job.container.nics = vec![Nic::new("eth0", "vmbr0", Ipv4Setting::Static { addr: ip, prefix: 32 })];
        job.deploy = DeploySpec {
            scripts: vec![ScriptSpec {
                name: "hello".into(),
                body: "echo deployed".into(),
                interpreter: "/bin/sh".into(),
                timeout: None,
            }],
            ..DeploySpec::default()
        };
        job
    };
    // The template trusts the fleet's clone key, and so does each clone made of it.
    let keys_of = |ip: Ipv4Addr| bed.pve.keys_dir.join(ip.to_string());
    std::fs::write(keys_of(ips[0]), &fleet_key)?;
    let job = clone_job("swapped", ips[0], false);
    let events = run_to_end(&bed.js, &job).await?;
    assert!(result_of(&events).success, "{events:#?}");
    let left = std::fs::read_to_string(keys_of(ips[0]))?;
    assert!(!left.contains("fleet-clone-key"), "the fleet's clone key stayed in the clone: {left}");
    assert!(!left.contains("pvefleet-job-"), "the job's own key stayed in the clone: {left}");

    // Asked to keep it, the clone keeps it (and never gets the job's key).
    agent.kill();
    let mut agent =
        bed.agent_with(AgentOptions { ssh: Some((sshds[1].user.clone(), sshds[1].port)), ..agent.opts.clone() })?;
    std::fs::write(keys_of(ips[1]), &fleet_key)?;
    let kept = clone_job("kept", ips[1], true);
    submit(&bed.js, &kept).await?;
    let events = events_until_terminal(&bed.js, kept.job_id, JOB_WITHIN).await?;
    assert!(result_of(&events).success, "{events:#?}");
    let left = std::fs::read_to_string(keys_of(ips[1]))?;
    assert!(left.contains("fleet-clone-key") && !left.contains("pvefleet-job-"), "{left}");
    agent.kill();
    bed.dir.pass();
    Ok(())
}

/// Hole 11: what a container printed reached the operator's terminal raw through `watch` and
/// `submit --watch`, so its escape sequences could retitle the window, clear or rewrite what
/// the operator reads. Now control characters are shown written out.
#[tokio::test]
async fn container_output_cannot_drive_the_operators_terminal() -> anyhow::Result<()> {
    use pvefleet_testbed::cli::{Pvefleet, TestDb};
    let bed = Fleet::start("hostile-escapes", &["pve1"]).await?;
    let ip = Ipv4Addr::new(127, 0, 0, 46);
    let sshd = pvefleet_testbed::Sshd::start(&bed.dir, ip, &bed.pve.keys_dir).await?;
    let _agent =
        bed.agent_with(AgentOptions { ssh: Some((sshd.user.clone(), sshd.port)), ..AgentOptions::node("pve1") })?;
    let db = TestDb::sqlite(&bed.dir);
    let cli = Pvefleet::new(&bed.dir, &bed.nats.url(), &db);
    cli.must(&["setup"]).await?;
    let spec = bed.dir.path().join("loud.toml");
    std::fs::write(
        &spec,
        "[[deploy.scripts]]\nname = \"loud\"\nbody = '''printf '\\033]0;pwned\\007\\033[2J\\rfake prompt $ \\n'; echo done'''\n",
    )?;
    let run = cli
        .run(&[
            "submit",
            "--spec",
            &spec.display().to_string(),
            "--node",
            "pve1",
            "--hostname",
            "loud",
            "--ostemplate",
            pvefleet_testbed::fakepve::OSTEMPLATE,
            "--ip",
            &format!("{ip}/32"),
            "--watch",
        ])
        .await?;
    assert!(run.ok(), "{run:?}");
    let job = run.stdout.lines().next().unwrap_or_default().trim().to_owned();
    let watch = cli.must(&["watch", &job]).await?;
    for out in [&run.stdout, &watch.stdout] {
        assert!(
            !out.contains('\u{1b}') && !out.contains('\r') && !out.contains('\u{7}'),
            "raw control characters: {out:?}"
        );
        assert!(out.contains("\\x1b]0;pwned\\x07\\x1b[2J\\x0dfake prompt"), "{out}");
    }
    bed.dir.pass();
    Ok(())
}

/// Hole 8: `submit --spec` read a `source` from anywhere on the operator's machine, so a spec
/// written by someone else could ship `~/.ssh/id_ed25519` or `coordinator.env` into a
/// container (and into the store and the job page); and every file's bytes were kept and shown
/// in clear. Now a source lies inside the spec's own directory (or `--files-dir`), never a
/// dot-file; and a `secret = true` file is sealed to the node's agent for its job, the store
/// keeping only its path, size and SHA-256.
#[tokio::test]
async fn a_spec_reads_only_its_own_files_and_secret_files_are_sealed() -> anyhow::Result<()> {
    use pvefleet_testbed::cli::{Pvefleet, TestDb};
    let bed = Fleet::start("hostile-sources", &["pve1"]).await?;
    let ip = Ipv4Addr::new(127, 0, 0, 47);
    let sshd = pvefleet_testbed::Sshd::start(&bed.dir, ip, &bed.pve.keys_dir).await?;
    let agent =
        bed.agent_with(AgentOptions { ssh: Some((sshd.user.clone(), sshd.port)), ..AgentOptions::node("pve1") })?;
    let db = TestDb::sqlite(&bed.dir);
    let cli = Pvefleet::new(&bed.dir, &bed.nats.url(), &db);
    cli.must(&["setup"]).await?;
    // The operator's own secrets, next to (not inside) the directory of a spec someone sent.
    let home = bed.dir.sub("operator-home");
    std::fs::create_dir_all(home.join(".ssh"))?;
    std::fs::write(home.join(".ssh/id_ed25519"), "PRIVATE KEY OF THE OPERATOR")?;
    std::fs::write(home.join("coordinator.env"), "PVEFLEET_NATS_URL=nats://coordinator:hunter2@nats")?;
    let specs = home.join("specs");
    std::fs::create_dir_all(&specs)?;
    std::fs::write(specs.join(".env"), "TOKEN=dot-file")?;
    std::os::unix::fs::symlink(home.join("coordinator.env"), specs.join("innocent.conf"))?;
    let submit = |spec: &std::path::Path, extra: &[&str]| {
        let spec = spec.display().to_string();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let cli = cli.clone();
        async move {
            let mut args = vec![
                "submit".to_owned(),
                "--spec".into(),
                spec,
                "--node".into(),
                "pve1".into(),
                "--hostname".into(),
                "files".into(),
                "--ostemplate".into(),
                pvefleet_testbed::fakepve::OSTEMPLATE.into(),
                "--ip".into(),
                format!("{ip}/32"),
            ];
            args.extend(extra);
            cli.run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
        }
    };
    let target = bed.dir.sub("container-root");
    for source in [
        home.join(".ssh/id_ed25519").display().to_string(),
        "../coordinator.env".to_owned(),
        ".env".to_owned(),
        "innocent.conf".to_owned(),
    ] {
        let spec = specs.join("thief.toml");
        std::fs::write(
            &spec,
            format!("[[deploy.files]]\npath = {:?}\nsource = {source:?}\n", target.join("loot").display().to_string()),
        )?;
        let run = submit(&spec, &[]).await?;
        assert_eq!(run.code, Some(2), "{source}: {run:?}");
        assert!(run.stderr.contains("deploy.files[0].source"), "{source}: {}", run.stderr);
    }
    assert!(!target.join("loot").exists());

    // A secret file: sealed to the trusted agent, written exactly, kept nowhere in clear.
    cli.enroll(&agent).await?;
    let secret = format!("API_TOKEN=tok-{}-secret\n", std::process::id());
    std::fs::write(specs.join("app.env"), &secret)?;
    let spec = specs.join("app.toml");
    std::fs::write(
        &spec,
        format!(
            "[[deploy.files]]\npath = {:?}\nsource = \"app.env\"\nsecret = true\nmode = \"0600\"\n",
            target.join("app.env").display().to_string()
        ),
    )?;
    let run = submit(&spec, &["--watch"]).await?;
    assert!(run.ok(), "{run:?}");
    assert_eq!(std::fs::read_to_string(target.join("app.env"))?, secret);
    let job = run.stdout.lines().next().unwrap_or_default().trim().to_owned();
    let shown: serde_json::Value = serde_json::from_str(&cli.must(&["job", &job, "--json"]).await?.stdout)?;
    let file = &shown["spec"]["deploy"]["files"][0];
    assert_eq!(file["secret"], true, "{file}");
    assert!(file.get("content").is_none() && file.get("sealed").is_none(), "{file}");
    assert_eq!(file["digest"]["size"], secret.len());
    assert_eq!(file["digest"]["sha256"], pvefleet_schemas::FileDigest::of(secret.as_bytes()).sha256);
    let db_bytes = std::fs::read(bed.dir.path().join("pvefleet.db"))?;
    assert!(!db_bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the secret is in the store");
    // Elsewhere, named with --files-dir: read from there.
    let elsewhere = bed.dir.sub("shared-files");
    std::fs::write(elsewhere.join("motd"), "hello from files-dir\n")?;
    let spec = specs.join("motd.toml");
    std::fs::write(
        &spec,
        format!("[[deploy.files]]\npath = {:?}\nsource = \"motd\"\n", target.join("motd").display().to_string()),
    )?;
    let run = submit(&spec, &["--files-dir", &elsewhere.display().to_string(), "--watch"]).await?;
    assert!(run.ok(), "{run:?}");
    assert_eq!(std::fs::read_to_string(target.join("motd"))?, "hello from files-dir\n");
    bed.dir.pass();
    Ok(())
}

/// Hole 7, vmid reservations: any agent may reserve any id (ids are cluster-wide), and with
/// the same right `agent-pve1` overwrote and purged another node's live reservation. Now the
/// server keeps one message per key and refuses any second one (put, delete or purge) while
/// the reservation lives; an expired one's marker makes its id skipped for a minute.
#[tokio::test]
async fn an_agent_cannot_undo_another_nodes_vmid_reservation() -> anyhow::Result<()> {
    use pvefleet_testbed::cli::{Pvefleet, TestDb};
    use pvefleet_testbed::shipped;
    pvefleet_testbed::init_tracing();
    let dir = pvefleet_testbed::TestDir::new("hostile-vmids");
    let (nats, ca) = shipped::single(&dir).await?;
    let db = TestDb::sqlite(&dir);
    Pvefleet::new(&dir, &nats.url_as("admin", "admin-pw"), &db).with_ca(&ca.ca).must(&["setup"]).await?;
    let bucket = |user: &str, pw: &str, inbox: &str| {
        let (url, ca) = (nats.url(), ca.clone());
        let (user, pw, inbox) = (user.to_owned(), pw.to_owned(), inbox.to_owned());
        async move {
            let (client, _) = shipped::restricted_client(&url, &ca, &user, &pw, &inbox).await?;
            let js = async_nats::jetstream::new(client);
            anyhow::Ok(js.get_key_value(pvefleet_schemas::names::VMIDS_BUCKET).await?)
        }
    };
    let pve2 = bucket("agent-pve2", "pve2-pw", "_INBOX_pve2").await?;
    let pve1 = bucket("agent-pve1", "pve1-pw", "_INBOX_pve1").await?;
    let theirs = pvefleet_schemas::VmidReservation {
        v: pvefleet_schemas::V1,
        vmid: pvefleet_schemas::Vmid::new(150)?,
        job_id: pvefleet_schemas::JobId::new(),
        node: pvefleet_schemas::NodeName::new("pve2")?,
        reserved_at: pvefleet_schemas::Timestamp::now(),
    };
    pve2.create_with_ttl("150", theirs.encode().into(), Duration::from_secs(600)).await?;
    let mine = pvefleet_schemas::VmidReservation { node: pvefleet_schemas::NodeName::new("pve1")?, ..theirs.clone() };
    assert!(pve1.put("150", mine.encode().into()).await.is_err(), "an overwrite landed");
    assert!(pve1.delete("150").await.is_err(), "a delete landed");
    assert!(pve1.purge("150").await.is_err(), "a purge landed");
    assert!(pve1.create("150", mine.encode().into()).await.is_err(), "a second reservation landed");
    let held = pvefleet_schemas::VmidReservation::decode(&pve1.get("150").await?.expect("still reserved"))?;
    assert_eq!((held.job_id, held.node), (theirs.job_id, theirs.node.clone()), "the reservation is pve2's still");
    // A reservation that expires is gone, and its id may be reserved again.
    pve1.create_with_ttl("151", mine.encode().into(), Duration::from_secs(1)).await?;
    pvefleet_testbed::wait_until("the short reservation to expire", Duration::from_secs(30), || async {
        pve1.get("151").await.ok()?.is_none().then_some(())
    })
    .await?;
    pve2.create_with_ttl("151", theirs.encode().into(), Duration::from_secs(600)).await?;
    dir.pass();
    Ok(())
}

/// Hole 7, shared history: every node's events were in one stream with one size bound, so
/// `agent-pve1` could fill it with events of made-up jobs and evict every other node's history
/// (and its running jobs' last events); the recorder turned such events into phantom jobs; and
/// a stream's info listed other nodes' job ids. Now each node's events are in a stream of its
/// own with its own bound, the recorder keeps only jobs it saw queued, and an agent may read
/// only its own node's stream.
#[tokio::test]
async fn one_node_cannot_evict_anothers_history_nor_make_phantom_jobs() -> anyhow::Result<()> {
    use pvefleet_testbed::cli::{Pvefleet, TestDb};
    use pvefleet_testbed::shipped;
    pvefleet_testbed::init_tracing();
    let dir = pvefleet_testbed::TestDir::new("hostile-flood");
    let (nats, ca) = shipped::single(&dir).await?;
    let pve = pvefleet_testbed::FakePve::start(
        &dir,
        pvefleet_testbed::FakePveOptions { nodes: vec!["pve1".into(), "pve2".into()], ..Default::default() },
    )
    .await?;
    let db = TestDb::sqlite(&dir);
    let admin = Pvefleet::new(&dir, &nats.url_as("admin", "admin-pw"), &db).with_ca(&ca.ca);
    // Small streams, so a flood fills one in a moment.
    admin.must(&["setup", "--node", "pve1", "--node", "pve2", "--events-max-mib", "1"]).await?;
    let _recorder = admin.recorder("recorder")?;
    let _pve2 = pvefleet_testbed::agent::Agent::start(
        &dir,
        &[nats.url_as("agent-pve2", "pve2-pw")],
        &pve,
        AgentOptions {
            inbox_prefix: Some("_INBOX_pve2".into()),
            nats_ca: Some(ca.ca.clone()),
            ..AgentOptions::node("pve2")
        },
    )?;
    let submit = admin
        .must(&[
            "submit",
            "--node",
            "pve2",
            "--hostname",
            "history",
            "--ostemplate",
            pvefleet_testbed::fakepve::OSTEMPLATE,
            "--ip",
            "127.0.0.48/32",
            "--watch",
        ])
        .await?;
    let job = submit.stdout.lines().next().unwrap_or_default().trim().to_owned();
    let js = async_nats::jetstream::new(
        async_nats::ConnectOptions::with_user_and_password("coordinator".into(), "coord-pw".into())
            .add_root_certificates(ca.ca.clone())
            .require_tls(true)
            .connect(nats.url())
            .await?,
    );
    let before = pvefleet_testbed::jobs::events_now(&js, job.parse()?).await?;
    assert!(before.last().is_some_and(|e| e.is_terminal()), "{before:#?}");

    // agent-pve1 floods its own subjects with big events of made-up jobs.
    let (rogue, _errors) = shipped::restricted_client(&nats.url(), &ca, "agent-pve1", "pve1-pw", "_INBOX_pve1").await?;
    let rogue_js = async_nats::jetstream::new(rogue.clone());
    let mut phantoms = Vec::new();
    for i in 0..40 {
        let phantom = pvefleet_schemas::JobId::new();
        phantoms.push(phantom);
        let event = serde_json::json!({"v": 1, "job_id": phantom, "node": "pve1", "seq": 1, "type": "accepted",
            "step": "validating", "percent": 0, "message": "x".repeat(100_000), "timestamp": "2026-12-02T00:00:00Z"});
        let subject = format!("pvefleet.events.pve1.{phantom}");
        // Past the stream's bound each one evicts pve1's own oldest; a refusal is fine too.
        if let Ok(ack) = rogue_js.publish(subject, event.to_string().into()).await {
            let _ = ack.await;
        }
        if i % 10 == 0 {
            rogue.flush().await?;
        }
    }
    let after = pvefleet_testbed::jobs::events_now(&js, job.parse()?).await?;
    assert_eq!(after.len(), before.len(), "pve2's history was evicted");
    // Nor did the flood become jobs in the store.
    pvefleet_testbed::chaos::observe::recorder_caught_up(&js, JOB_WITHIN).await?;
    let jobs = admin.must(&["jobs", "--json"]).await?;
    for phantom in &phantoms {
        assert!(!jobs.stdout.contains(&phantom.to_string()), "a phantom job was recorded: {phantom}");
    }
    assert!(jobs.stdout.contains(&job), "{}", jobs.stdout);
    dir.pass();
    Ok(())
}

/// Hole 12, the smaller ones: a marker tag any PVE user who may tag guests can forge made
/// `destroy --node --vmid` delete a stranger's container; the web view held any number of live
/// streams for one client; a password in `--nats-url` showed in `ps` without a word; and an
/// over-privileged token went unremarked. Now a marker-only destroy needs the store's record of
/// the job that made the container (or `--force-marker`), each client holds at most 32 live
/// streams, the CLI warns about a password on its command line, and a plan names what the
/// token holds beyond its needs.
#[tokio::test]
async fn forged_markers_stream_floods_and_loud_credentials_are_answered() -> anyhow::Result<()> {
    use pvefleet_testbed::cli::{Pvefleet, TestDb};
    let bed = Fleet::start("hostile-smaller", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let db = TestDb::sqlite(&bed.dir);
    let cli = Pvefleet::new(&bed.dir, &bed.nats.url(), &db);
    cli.must(&["setup"]).await?;
    // A PVE user who may tag guests writes a pvefleet marker on a tenant's container.
    bed.pve.make_container("pve1", 9400, &[("hostname", "tenant-web"), ("tags", "pvefleet-01m8w7aaaaaa")]).await?;
    let refused = cli.run(&["destroy", "--node", "pve1", "--vmid", "9400", "--watch"]).await?;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("--force-marker"), "{}", refused.stderr);
    assert_eq!(bed.pve.containers().await?, vec![9400], "the tenant's container is untouched");
    let forced = cli.run(&["destroy", "--node", "pve1", "--vmid", "9400", "--force-marker", "--watch"]).await?;
    assert!(forced.ok() && forced.stderr.contains("on its marker tag alone"), "{forced:?}");
    assert!(bed.pve.containers().await?.is_empty());

    // A password on the command line is named; one in the environment is not.
    let port = bed.nats.port();
    let loud = tokio::process::Command::new(pvefleet_testbed::tools::workspace_bin("pvefleet")?)
        .args(["--nats-url", &format!("nats://someone:hunter2@127.0.0.1:{port}"), "--db", &db.url(), "jobs"])
        .env_remove("PVEFLEET_NATS_URL")
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&loud.stderr);
    assert!(stderr.contains("--nats-url carries a password") && !stderr.contains("hunter2"), "{stderr}");
    let quiet = cli.must(&["jobs"]).await?;
    assert!(!quiet.stderr.contains("carries a password"), "{quiet:?}");

    // fakepve's token is root's, with every privilege: the plan says so.
    let plan = cli
        .run(&[
            "plan",
            "--node",
            "pve1",
            "--hostname",
            "planned",
            "--ostemplate",
            pvefleet_testbed::fakepve::OSTEMPLATE,
            "--ip",
            "127.0.0.49/32",
        ])
        .await?;
    assert!(plan.stdout.contains("more than it needs") && plan.stdout.contains("Permissions.Modify"), "{plan:?}");

    // One client holds at most 32 live streams of the web view.
    let (_serve, url) = cli.serve("serve", "127.0.0.1", &[]).await?;
    let mut held = Vec::new();
    for _ in 0..32 {
        let resp = reqwest::get(format!("{url}/live/fleet")).await?;
        assert_eq!(resp.status(), 200);
        held.push(resp);
    }
    let over = reqwest::get(format!("{url}/live/fleet")).await?;
    assert_eq!(over.status(), 429, "a 33rd stream was served");
    drop(held.pop());
    pvefleet_testbed::wait_until("a freed slot", Duration::from_secs(10), || async {
        (reqwest::get(format!("{url}/live/fleet")).await.ok()?.status() == 200).then_some(())
    })
    .await?;
    bed.dir.pass();
    Ok(())
}
