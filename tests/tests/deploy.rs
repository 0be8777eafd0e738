//! The deploying step end to end: fakepve makes the container, the bed's sshd plays it, and
//! the real agent deploys packages, files and scripts into it over SSH.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use pvefleet_schemas::{DeploySpec, ErrorKind, Event, EventType, FileSpec, Job, LogStream, ScriptSpec, Step};
use pvefleet_testbed::agent::{Agent, AgentOptions};
use pvefleet_testbed::jobs::{JOB_WITHIN, create_job, events_until_terminal, result_of, run_to_end, submit, wait_end};
use pvefleet_testbed::{Fleet, Sshd};

/// A fleet, an sshd on `ip` reading the keys fakepve records (it plays the containers), and
/// an agent that deploys over SSH to it.
struct Bed {
    fleet: Fleet,
    sshd: Sshd,
    agent: Agent,
}

impl std::ops::Deref for Bed {
    type Target = Fleet;

    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

async fn bed(name: &str, ip: Ipv4Addr) -> anyhow::Result<Bed> {
    let fleet = Fleet::start(name, &["pve1"]).await?;
    let sshd = Sshd::start(&fleet.dir, ip, &fleet.pve.keys_dir).await?;
    let agent =
        fleet.agent_with(AgentOptions { ssh: Some((sshd.user.clone(), sshd.port)), ..AgentOptions::node("pve1") })?;
    Ok(Bed { fleet, sshd, agent })
}

impl Bed {
    /// PVE prints a new container's host keys in the create task's log; make fakepve do so.
    async fn announce_host_key(&self, fingerprint: &str) -> anyhow::Result<()> {
        self.pve
            .task_log(
                "vzcreate",
                &[
                    "Creating SSH host key 'ssh_host_ed25519_key' - this may take some time ...",
                    &format!("done: {fingerprint} root@ct"),
                ],
            )
            .await
    }
}

fn script(name: &str, body: &str) -> ScriptSpec {
    ScriptSpec { name: name.into(), body: body.into(), interpreter: "/bin/sh".into(), timeout: None }
}

fn logs(events: &[Event], stream: LogStream) -> Vec<String> {
    events.iter().filter(|e| e.kind == EventType::Log && e.stream == Some(stream)).map(|e| e.message.clone()).collect()
}

#[tokio::test]
async fn deploys_packages_files_and_scripts_into_the_new_container() -> anyhow::Result<()> {
    let ip = Ipv4Addr::new(127, 0, 0, 101);
    let bed = bed("deploy-e2e", ip).await?;
    bed.announce_host_key(&bed.sshd.host_fingerprint()).await?;
    let root = bed.dir.sub("container");
    let local = bed.agent.files_dir().join("tool.sh");
    std::fs::write(&local, "#!/bin/sh\necho tool\n")?;

    let mut job: Job = create_job("pve1", "deployed", ip);
    job.deploy = DeploySpec {
        // Installed already, so the package step changes nothing on the test machine.
        packages: vec!["openssh-client".into()],
        files: vec![
            FileSpec {
                path: format!("{}/etc/app/app.conf", root.display()),
                content: Some("listen = 8080\n".into()),
                source: None,
                mode: "0640".parse()?,
                owner: Some(bed.sshd.user.clone()),
                secret: false,
                sealed: None,
                digest: None,
            },
            FileSpec {
                path: format!("{}/usr/local/bin/tool", root.display()),
                content: None,
                source: Some(local.display().to_string()),
                mode: "0755".parse()?,
                owner: None,
                secret: false,
                sealed: None,
                digest: None,
            },
        ],
        scripts: vec![
            // Pauses between streams: two pipes only have an order across them in time.
            script(
                "both-streams",
                "echo first\nsleep 0.2\necho second >&2\nsleep 0.2\necho third\nprintf 'no newline'",
            ),
            script(
                "uses-the-files",
                &format!("cat {}/etc/app/app.conf\n{}/usr/local/bin/tool", root.display(), root.display()),
            ),
        ],
    };
    let events = run_to_end(&bed.js, &job).await?;
    let result = result_of(&events);
    assert!(result.success, "{events:#?}");
    assert_eq!(result.host_key.as_deref(), Some(bed.sshd.host_fingerprint().as_str()));

    let conf = root.join("etc/app/app.conf");
    assert_eq!(std::fs::read_to_string(&conf)?, "listen = 8080\n");
    assert_eq!(std::fs::metadata(&conf)?.permissions().mode() & 0o7777, 0o640);
    let tool = root.join("usr/local/bin/tool");
    assert_eq!(std::fs::read(&tool)?, std::fs::read(&local)?);
    assert_eq!(std::fs::metadata(&tool)?.permissions().mode() & 0o7777, 0o755);

    let stdout = logs(&events, LogStream::Stdout);
    let first = stdout.iter().position(|l| l == "first").expect("the first script's output");
    assert_eq!(stdout[first..first + 5], ["first", "third", "no newline", "listen = 8080", "tool"]);
    assert!(logs(&events, LogStream::Stderr).contains(&"second".to_owned()));
    // stdout and stderr interleave in the order produced.
    let order: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == EventType::Log && matches!(e.message.as_str(), "first" | "second" | "third"))
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(order, ["first", "second", "third"]);
    let deploy_steps = events.iter().filter(|e| e.kind == EventType::Step && e.step == Some(Step::Deploying)).count();
    assert_eq!(deploy_steps, 1 + 5, "one step event for the step and one per item");
    assert!(
        events.iter().any(|e| e.message.contains("already the newest version") || e.message.contains("is already")),
        "package output missing"
    );
    bed.dir.pass();
    Ok(())
}

/// Two NICs, sshd listening only on the second's address: `ssh_nic` names the NIC the deploy
/// connects through (the first is the default, and nothing answers there).
#[tokio::test]
async fn the_deploy_connects_through_the_nic_ssh_nic_names() -> anyhow::Result<()> {
    use pvefleet_schemas::lxc::Nic;
    let ip = Ipv4Addr::new(127, 0, 0, 110);
    let bed = bed("deploy-ssh-nic", ip).await?;
    bed.announce_host_key(&bed.sshd.host_fingerprint()).await?;
    let mut job = create_job("pve1", "two-nics", ip);
    job.container.nics = vec![
        Nic::new("eth0", "vmbr0", "127.0.0.111/32".parse().map_err(anyhow::Error::msg)?),
        Nic::new("eth1", "vmbr0", "127.0.0.110/32".parse().map_err(anyhow::Error::msg)?),
    ];
    job.container.ssh_nic = Some("eth1".into());
    job.deploy.scripts = vec![script("where", "echo deployed through eth1")];
    let events = run_to_end(&bed.js, &job).await?;
    let result = result_of(&events);
    assert!(result.success, "{events:#?}");
    assert_eq!(result.ip.map(|a| a.to_string()).as_deref(), Some("127.0.0.110"), "{result:?}");
    assert!(logs(&events, LogStream::Stdout).contains(&"deployed through eth1".to_owned()));
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_failing_script_fails_the_job_and_the_container_is_rolled_back() -> anyhow::Result<()> {
    let ip = Ipv4Addr::new(127, 0, 0, 102);
    let bed = bed("deploy-fail", ip).await?;
    bed.announce_host_key(&bed.sshd.host_fingerprint()).await?;
    let mut job = create_job("pve1", "failing", ip);
    job.deploy.scripts = vec![
        script("fine", "echo ok"),
        script("broken", "echo working on it\necho 'curl: (7) Failed to connect' >&2\nexit 7"),
        script("never-runs", "echo should not run"),
    ];
    let events = run_to_end(&bed.js, &job).await?;
    let result = result_of(&events);
    let error = result.error.as_ref().unwrap();
    assert_eq!((error.kind, error.step), (ErrorKind::Deploy, Step::Deploying));
    assert!(error.message.contains("script `broken` exited with status 7"), "{}", error.message);
    assert!(
        error.message.contains("Failed to connect") && error.message.contains("working on it"),
        "{}",
        error.message
    );
    assert!(!events.iter().any(|e| e.message.contains("should not run")));
    assert!(result.rolled_back);
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new());
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn host_keys_are_checked_against_what_pve_announced() -> anyhow::Result<()> {
    let ip = Ipv4Addr::new(127, 0, 0, 103);
    let bed = bed("deploy-hostkey", ip).await?;
    // An announced key that is not the server's: refused, not retried, rolled back.
    bed.announce_host_key("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await?;
    let mut job = create_job("pve1", "mitm", ip);
    job.deploy.scripts = vec![script("hello", "echo hello")];
    submit(&bed.js, &job).await?;
    let events = events_until_terminal(&bed.js, job.job_id, JOB_WITHIN).await?;
    let error = result_of(&events).error.clone().unwrap();
    assert_eq!((error.kind, error.step), (ErrorKind::Ssh, Step::Connecting));
    assert!(
        error.message.contains(&bed.sshd.host_fingerprint()) && error.message.contains("not trusted"),
        "{}",
        error.message
    );
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new());

    // Nothing announced: the first key seen is trusted for the job, said, and recorded.
    let mut job = create_job("pve1", "tofu", ip);
    job.deploy.scripts = vec![script("hello", "echo hello")];
    submit(&bed.js, &job).await?;
    let events = events_until_terminal(&bed.js, job.job_id, JOB_WITHIN).await?;
    let result = result_of(&events);
    assert!(result.success, "{events:#?}");
    assert_eq!(result.host_key.as_deref(), Some(bed.sshd.host_fingerprint().as_str()));
    assert!(events.iter().any(|e| e.kind == EventType::Warning && e.message.contains("first one seen")));
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn endless_output_is_capped_and_said_so() -> anyhow::Result<()> {
    let ip = Ipv4Addr::new(127, 0, 0, 104);
    let bed = bed("deploy-flood", ip).await?;
    let mut job = create_job("pve1", "chatty", ip);
    let cap = pvefleet_agent::jobs::create::deploy::MAX_SCRIPT_LINES;
    job.deploy.scripts = vec![script("chatty", &format!("seq 1 {}", cap + 2500))];
    let events = run_to_end(&bed.js, &job).await?;
    assert!(result_of(&events).success);
    // The cap counts every line the script prints; the shell's own start-up may print a few on
    // stderr first (this machine's root profile does, now and then), and they count too.
    let lines = logs(&events, LogStream::Stdout);
    let noise = logs(&events, LogStream::Stderr).len();
    assert_eq!(lines.len() + noise, cap, "{noise} stderr lines");
    assert_eq!(lines.last().map(String::as_str), Some((cap - noise).to_string().as_str()));
    let dropped = format!("{} more lines were not forwarded", 2500 + noise);
    assert!(events.iter().any(|e| e.kind == EventType::Warning && e.message.contains(&dropped)), "{dropped}");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_redelivered_deploy_does_not_rerun_what_succeeded() -> anyhow::Result<()> {
    let ip = Ipv4Addr::new(127, 0, 0, 105);
    let mut bed = bed("deploy-resume", ip).await?;
    bed.announce_host_key(&bed.sshd.host_fingerprint()).await?;
    let counter = bed.dir.path().join("runs");
    let mut job = create_job("pve1", "resumed", ip);
    job.deploy.scripts = vec![
        script("count", &format!("echo run >> {}", counter.display())),
        script("slow", "echo started; sleep 3; echo finished"),
    ];
    submit(&bed.js, &job).await?;
    // Wait until the second script runs, i.e. the first is done and checkpointed.
    let js = bed.js.clone();
    pvefleet_testbed::wait_until("the slow script to start", Duration::from_secs(60), || {
        let js = js.clone();
        async move {
            let events = pvefleet_testbed::jobs::events_now(&js, job.job_id).await.ok()?;
            events.iter().any(|e| e.message == "started").then_some(())
        }
    })
    .await?;
    bed.agent.kill();
    bed.agent.restart()?;
    let events = wait_end(&bed.js, job.job_id).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert!(events.iter().any(|e| e.message.contains("script `count`: done by an earlier delivery")), "{events:#?}");
    assert_eq!(std::fs::read_to_string(&counter)?, "run\n", "the first script ran once");
    assert_eq!(bed.pve.containers().await?.len(), 1);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_failure_whose_message_is_bigger_than_nats_allows_still_ends_the_job() -> anyhow::Result<()> {
    let ip = Ipv4Addr::new(127, 0, 0, 106);
    let bed = bed("deploy-huge-error", ip).await?;
    let mut job = create_job("pve1", "huge-error", ip);
    // Twenty 16,000-byte lines of control characters: JSON writes each byte as six, so the
    // error's tail (in its message and its result) comes to about 3.8 MB, beyond the 1 MiB
    // nats-server takes.
    job.deploy.scripts = vec![script(
        "noisy",
        "i=0; while [ $i -lt 20 ]; do head -c 16000 /dev/zero | tr '\\000' '\\001'; echo; i=$((i+1)); done; exit 3",
    )];
    let events = run_to_end(&bed.js, &job).await?;
    let last = events.last().unwrap();
    let error = result_of(&events).error.as_ref().unwrap();
    assert_eq!((error.kind, error.step), (ErrorKind::Deploy, Step::Deploying));
    assert!(error.message.starts_with("script `noisy` exited with"), "{}", &error.message[..200]);
    assert!(last.message.ends_with(pvefleet_schemas::event::CUT_MARK));
    assert!(last.encode().len() <= pvefleet_schemas::event::MAX_EVENT_BYTES);
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new(), "rolled back");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_jobs_output_is_capped_in_bytes_too() -> anyhow::Result<()> {
    let ip = Ipv4Addr::new(127, 0, 0, 107);
    let bed = bed("deploy-flood-bytes", ip).await?;
    let mut job = create_job("pve1", "wide", ip);
    // 1,200 lines of 16,000 bytes: far fewer lines than the line cap, more bytes than the job's.
    job.deploy.scripts = vec![script(
        "wide",
        "i=0; while [ $i -lt 1200 ]; do head -c 16000 /dev/zero | tr '\\000' x; echo; i=$((i+1)); done",
    )];
    let events = run_to_end(&bed.js, &job).await?;
    assert!(result_of(&events).success);
    let bytes: usize = logs(&events, LogStream::Stdout).iter().map(String::len).sum();
    assert!(bytes <= pvefleet_agent::jobs::create::deploy::MAX_JOB_LOG_BYTES, "{bytes} bytes forwarded");
    assert!(bytes > pvefleet_agent::jobs::create::deploy::MAX_JOB_LOG_BYTES - 16_000);
    assert!(events.iter().any(|e| e.kind == EventType::Warning && e.message.contains("reached 16 MiB")), "no warning");
    assert!(events.iter().any(|e| e.kind == EventType::Warning && e.message.contains("more lines were not forwarded")));
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_source_outside_the_agents_files_dir_is_refused_before_anything_is_made() -> anyhow::Result<()> {
    let ip = Ipv4Addr::new(127, 0, 0, 108);
    let bed = bed("deploy-source-jail", ip).await?;
    std::os::unix::fs::symlink(&bed.pve.token_secret_file, bed.agent.files_dir().join("innocent"))?;
    let target = bed.dir.sub("container");
    // The agent's own API token, by path, through `..`, and through a symlink in files_dir.
    let tries =
        [bed.pve.token_secret_file.display().to_string(), "../fakepve/token-secret".to_owned(), "innocent".to_owned()];
    for (n, source) in tries.iter().enumerate() {
        let mut job = create_job("pve1", &format!("thief-{n}"), ip);
        job.deploy.files = vec![FileSpec {
            path: target.join(format!("stolen-{n}")).display().to_string(),
            content: None,
            source: Some(source.clone()),
            mode: "0644".parse()?,
            owner: None,
            secret: false,
            sealed: None,
            digest: None,
        }];
        let events = run_to_end(&bed.js, &job).await?;
        let error = result_of(&events).error.clone().expect("refused");
        assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Validating), "{source}: {error:?}");
        assert!(error.message.starts_with("deploy.files[0].source:"), "{}", error.message);
        assert!(!target.join(format!("stolen-{n}")).exists(), "{source} was copied");
    }
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new(), "nothing was created");
    assert!(!bed.agent.log_text().contains(&bed.pve.token_secret));
    bed.dir.pass();
    Ok(())
}

/// Every file under `root` (recursively) whose raw bytes contain `needle`.
fn files_containing(root: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn a_root_password_and_the_jobs_own_key_are_never_in_clear_and_the_key_is_removed_after() -> anyhow::Result<()> {
    use pvefleet_testbed::cli::{Pvefleet, TestDb};
    let ip = Ipv4Addr::new(127, 0, 0, 109);
    let bed = bed("deploy-sealed", ip).await?;
    let db = TestDb::sqlite(&bed.dir);
    let cli = Pvefleet::new(&bed.dir, &bed.nats.url(), &db);
    cli.must(&["setup"]).await?;
    let _recorder = cli.recorder("recorder")?;
    // The operator trusts the node's key as the node prints it: only then is a password sealed.
    cli.enroll(&bed.agent).await?;
    // The password lives in one file of its own, outside the test dir the grep looks at.
    let secrets = tempfile::tempdir()?;
    let password = format!("zebra-{}-horse", std::process::id());
    let password_file = secrets.path().join("root-password");
    std::fs::write(&password_file, format!("{password}\n"))?;
    let own_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsKeyOpsKeyOpsKeyOpsKeyOpsKeyOpsKeyOpsKey ops@example";
    let spec = bed.dir.path().join("sealed.toml");
    std::fs::write(&spec, "[[deploy.scripts]]\nname = \"hello\"\nbody = \"echo hello from the container\"\n")?;
    let submit = cli
        .run(&[
            "submit",
            "--spec",
            &spec.display().to_string(),
            "--node",
            "pve1",
            "--hostname",
            "sealed",
            "--ostemplate",
            pvefleet_testbed::fakepve::OSTEMPLATE,
            "--ip",
            &format!("{ip}/32"),
            "--ssh-key",
            own_key,
            "--password-file",
            &password_file.display().to_string(),
        ])
        .await?;
    assert!(submit.ok(), "{submit:?}");
    let job = submit.stdout.trim().to_owned();
    let watch = cli.run(&["watch", &job]).await?;
    assert_eq!(watch.code, Some(0), "{watch:?}");
    assert!(watch.stdout.contains("hello from the container"));
    assert!(watch.stdout.contains("removed the job's own key"), "{}", watch.stdout);

    // The container keeps the operator's key; the job's own key is gone from it.
    let keys = std::fs::read_to_string(bed.pve.keys_dir.join(ip.to_string()))?;
    assert!(keys.contains("ops@example"), "{keys}");
    assert!(!keys.contains("pvefleet-job-"), "{keys}");

    // Neither the password nor any clear private key is anywhere: the NATS store (the jobs
    // stream, the KV buckets, deleted messages included), every log, the store's database.
    drop(_recorder);
    // The store keeps the bytes of messages long acked (the job is in it still): a password in
    // clear in the job would be found here.
    assert!(!files_containing(&bed.dir.path().join("nats-store"), b"\"hostname\":\"sealed\"").is_empty());
    let found = files_containing(bed.dir.path(), password.as_bytes());
    assert!(found.is_empty(), "the password is in {found:?}");
    let found = files_containing(bed.dir.path(), b"OPENSSH PRIVATE KEY");
    let found: Vec<_> =
        found.into_iter().filter(|p| !p.starts_with(bed.dir.path().join(format!("sshd-{ip}")))).collect();
    assert!(found.is_empty(), "a clear private key is in {found:?}");
    bed.dir.pass();
    Ok(())
}
