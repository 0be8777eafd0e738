//! The demo fleet: its own nats-server (never 4222), fakepve with two nodes and tasks slowed
//! so the steps are visible, an OpenSSH sshd playing the containers, two agents, `pvefleet
//! setup`, the recorder and `pvefleet serve` (its URL printed); then three jobs with `--watch` (a plain one, one from a template
//! with packages, files and a streaming script, and one whose script fails and is rolled
//! back), `pvefleet jobs` and `pvefleet nodes`.
//!
//! Everything lives in one temp dir and dies with the demo, Ctrl-C included.
//! Run it with `bash scripts/demo`.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use pvefleet_testbed::agent::{Agent, AgentOptions};
use pvefleet_testbed::cli::{Pvefleet, TestDb};
use pvefleet_testbed::fakepve::OSTEMPLATE;
use pvefleet_testbed::{FakePve, FakePveOptions, NatsServer, Sshd, TestDir, tools, wait_until};

const SSH_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 60);

fn banner(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

/// Runs `pvefleet ARGS` with its output on the demo's terminal; returns its exit code.
async fn show(cli: &Pvefleet, args: &[&str]) -> anyhow::Result<i32> {
    println!("$ pvefleet {}", args.join(" "));
    let status = cli.command(args)?.stdout(Stdio::inherit()).stderr(Stdio::inherit()).status().await?;
    Ok(status.code().unwrap_or(-1))
}

async fn demo(dir: &TestDir) -> anyhow::Result<()> {
    banner(&format!("starting a local fleet in {}", dir.path().display()));
    let nats = NatsServer::start(dir).await?;
    println!("nats-server with JetStream on {}", nats.url());
    let pve =
        FakePve::start(dir, FakePveOptions { nodes: vec!["pve1".into(), "pve2".into()], ..Default::default() }).await?;
    pve.time_scale(1.0).await?;
    pve.task_secs(serde_json::json!({"create": 3, "start": 2, "stop": 1, "destroy": 1})).await?;
    pve.node_memory_used("pve1", 5 << 30).await?;
    println!("fakepve (a fake Proxmox VE 9 API) with nodes pve1 and pve2 on {}", pve.url);
    let sshd = Sshd::start(dir, SSH_IP, &pve.keys_dir).await?;
    println!("OpenSSH sshd playing the containers on {SSH_IP}:{}", sshd.port);
    let db = TestDb::sqlite(dir);
    let cli = Pvefleet::new(dir, &nats.url(), &db);
    anyhow::ensure!(show(&cli, &["setup", "--node", "pve1", "--node", "pve2"]).await? == 0, "pvefleet setup failed");
    // The admin's key signs the policy the agents follow (their agent.toml trusts it); the
    // demo's operator, whose identity signs every job below, may do everything.
    let admin = pvefleet_testbed::trust::identity_file(dir.path(), "admin.identity", pvefleet_testbed::trust::admin())?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        toml::to_string(&pvefleet_testbed::trust::everything()).map_err(|e| anyhow::anyhow!("{e}"))?,
    )?;
    let (admin, policy) = (admin.display().to_string(), policy.display().to_string());
    anyhow::ensure!(
        show(&cli, &["--identity", &admin, "policy", "set", &policy]).await? == 0,
        "pvefleet policy set failed"
    );
    anyhow::ensure!(show(&cli, &["whoami"]).await? == 0, "pvefleet whoami failed");
    let agents: Vec<Agent> = ["pve1", "pve2"]
        .into_iter()
        .map(|node| {
            Agent::start(
                dir,
                &[nats.url()],
                &pve,
                AgentOptions { ssh: Some((sshd.user.clone(), sshd.port)), ..AgentOptions::node(node) },
            )
        })
        .collect::<Result<_, _>>()?;
    let _recorder = cli.recorder("recorder")?;
    let js = nats.jetstream().await?;
    wait_until("both agents to report in", Duration::from_secs(30), || async {
        let kv = js.get_key_value(pvefleet_schemas::names::NODES_BUCKET).await.ok()?;
        (!kv.get("pve1").await.ok()??.is_empty() && !kv.get("pve2").await.ok()??.is_empty()).then_some(())
    })
    .await?;
    println!("agents for pve1 and pve2 are up; the recorder is writing events to {}", db.url());
    // No agent is trusted on sight: the admin checks each one's keys as the node prints them
    // (`pvefleet-agent --print-key`) and enrolls it.
    for agent in &agents {
        let fingerprint = agent.print_key().await?;
        let node = agent.opts.node.clone();
        anyhow::ensure!(
            show(&cli, &["--identity", &admin, "nodes", "enroll", &node, "--fingerprint", &fingerprint]).await? == 0,
            "pvefleet nodes enroll {node} failed"
        );
    }
    // A login for the web view: an operator whose actions the web view signs with the demo's
    // operator identity, naming the user.
    let password: String = pvefleet_schemas::secret::random_bytes::<9>().iter().map(|b| format!("{b:02x}")).collect();
    let mut add = cli.command(&["users", "add", "demo", "--role", "operator", "--password-stdin"])?;
    add.stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = add.spawn()?;
    {
        use tokio::io::AsyncWriteExt as _;
        child.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).await?;
    }
    anyhow::ensure!(child.wait().await?.success(), "pvefleet users add demo failed");
    let identity = pvefleet_testbed::trust::operator_file(dir.path())?.display().to_string();
    let (_serve, web) = cli.serve("serve", "127.0.0.1", &["--identity", &identity]).await?;
    println!("the web view: {web}/ (the fleet), {web}/jobs (every job, live) and {web}/metrics, while the demo runs");
    println!(
        "log in to it at {web}/login as user `demo`, password `{password}` (an operator: New container, cancel, destroy, …)"
    );

    banner("1/3 a plain container, placed automatically (pve2 has the most free memory)");
    let code = show(
        &cli,
        &[
            "submit",
            "--node",
            "auto",
            "--hostname",
            "plain",
            "--ostemplate",
            OSTEMPLATE,
            "--ip",
            "127.0.0.61/32",
            "--watch",
        ],
    )
    .await?;
    anyhow::ensure!(code == 0, "the plain job failed");

    banner("2/3 from a template: a package, a file over SFTP, a script whose output streams");
    let template = tools::workspace_root().join("tests/demo/web.toml");
    anyhow::ensure!(
        show(&cli, &["template", "add", &template.display().to_string()]).await? == 0,
        "template add failed"
    );
    let spec = dir.path().join("web-01.toml");
    let motd = dir.path().join("container/etc/motd");
    std::fs::write(
        &spec,
        format!(
            "[container]\nhostname = \"web-01\"\nip = \"{SSH_IP}/32\"\n\n[[deploy.files]]\npath = \"{}\"\ncontent = \"Welcome to web-01, made by pvefleet.\\n\"\nmode = \"0644\"\n",
            motd.display()
        ),
    )?;
    pve.task_log("vzcreate", &[&format!("done: {} root@web-01", sshd.host_fingerprint())]).await?;
    let code = show(
        &cli,
        &["submit", "--template", "demo-web", "--spec", &spec.display().to_string(), "--node", "pve1", "--watch"],
    )
    .await?;
    anyhow::ensure!(code == 0, "the template job failed");
    println!("the file it wrote: {} → {:?}", motd.display(), std::fs::read_to_string(&motd)?);

    banner("3/3 a job whose script fails: the error names it, and the container is rolled back");
    let failing = dir.path().join("failing.toml");
    std::fs::write(
        &failing,
        format!(
            "[container]\nhostname = \"broken\"\nostemplate = \"{OSTEMPLATE}\"\nip = \"{SSH_IP}/32\"\n\n[[deploy.scripts]]\nname = \"migrate-db\"\nbody = \"echo connecting to the database\\necho 'error: connection refused' >&2\\nexit 3\\n\"\n"
        ),
    )?;
    pve.task_log("vzcreate", &[&format!("done: {} root@broken", sshd.host_fingerprint())]).await?;
    let code = show(&cli, &["submit", "--spec", &failing.display().to_string(), "--node", "pve2", "--watch"]).await?;
    anyhow::ensure!(code == 1, "the failing job should have failed (exit {code})");
    println!("(exit 1, as expected)");

    banner("what the recorder stored, and the fleet");
    wait_until("the recorder to catch up", Duration::from_secs(20), || async {
        let run = cli.run(&["jobs", "--json"]).await.ok()?;
        let jobs: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
        let done = jobs.as_array()?.iter().filter(|j| j["state"] == "succeeded" || j["state"] == "failed").count();
        (done == 3).then_some(())
    })
    .await?;
    show(&cli, &["jobs"]).await?;
    show(&cli, &["nodes"]).await?;
    let left = pve.containers().await?;
    println!("containers left on the fake cluster: {left:?} (the failed job's was destroyed)");
    anyhow::ensure!(left.len() == 2, "expected the two successful containers");
    drop(agents);
    banner("demo finished; stopping everything");
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let dir = TestDir::new("demo");
    let outcome = tokio::select! {
        r = demo(&dir) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: stopping the fleet");
            dir.pass();
            return std::process::ExitCode::from(130);
        }
    };
    match outcome {
        Ok(()) => {
            dir.pass();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
