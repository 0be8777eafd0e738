//! The smoke run against a real Proxmox VE node (`just test-proxmox`): its own nats-server and
//! agent on this machine, then `pvefleet plan` → `submit` (with a file and a streaming script)
//! `--watch` → `destroy --watch`, and a last look that nothing this run made is left. It reads
//! the target from the environment and refuses to start without every variable, prints what it
//! will create first, and only ever touches the container carrying its own job's marker.
//!
//! `tests/tests/smoke.rs` runs the same binary against the test bed's fakepve in `just test`,
//! so this path cannot rot.

use std::time::Duration;

use pvefleet_agent::config::{Credential, ProxmoxConfig};
use pvefleet_agent::proxmox::PveClient;
use pvefleet_agent::tls::Trust;
use pvefleet_testbed::cli::{Pvefleet, TestDb};
use pvefleet_testbed::process::Proc;
use pvefleet_testbed::{NatsServer, TestDir, tools, wait_until};

/// (variable, what it is); the optional ones have a default.
const REQUIRED: [(&str, &str); 9] = [
    ("PVEFLEET_SMOKE_URL", "the node's API, https://HOST:8006"),
    ("PVEFLEET_SMOKE_TOKEN_ID", "an API token, like pvefleet@pve!smoke"),
    ("PVEFLEET_SMOKE_TOKEN_SECRET_FILE", "a file holding the token's secret"),
    ("PVEFLEET_SMOKE_FINGERPRINT", "the API certificate's SHA-256 (pvenode cert info)"),
    ("PVEFLEET_SMOKE_NODE", "the node's name, like pve1"),
    ("PVEFLEET_SMOKE_STORAGE", "a storage for the root disk, like local-lvm"),
    ("PVEFLEET_SMOKE_BRIDGE", "a bridge, like vmbr0"),
    ("PVEFLEET_SMOKE_TEMPLATE", "a template volume, like local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"),
    ("PVEFLEET_SMOKE_IP", "a free address with its prefix (10.0.0.250/24) or `dhcp`"),
];

/// Optional: the gateway, and how the agent reaches the container over SSH.
const OPTIONAL: [(&str, &str); 4] = [
    ("PVEFLEET_SMOKE_GW", "the gateway of a static PVEFLEET_SMOKE_IP"),
    ("PVEFLEET_SMOKE_SSH_USER", "root"),
    ("PVEFLEET_SMOKE_SSH_PORT", "22"),
    ("PVEFLEET_SMOKE_AUTHORIZED_KEYS", ".ssh/authorized_keys"),
];

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let missing: Vec<String> =
        REQUIRED.iter().filter(|(v, _)| var(v).is_none()).map(|(v, what)| format!("  {v}: {what}")).collect();
    if !missing.is_empty() {
        eprintln!("smoke: refusing to start; set every one of these:\n{}", missing.join("\n"));
        eprintln!("optional:\n{}", OPTIONAL.iter().map(|(v, d)| format!("  {v} ({d})")).collect::<Vec<_>>().join("\n"));
        return std::process::ExitCode::from(2);
    }
    let dir = TestDir::new("smoke");
    match smoke(&dir).await {
        Ok(()) => {
            println!("smoke: ok");
            dir.pass();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smoke: FAILED: {e:#}\n(logs kept in {})", dir.path().display());
            std::process::ExitCode::FAILURE
        }
    }
}

async fn smoke(dir: &TestDir) -> anyhow::Result<()> {
    let get = |v: &str| var(v).expect("checked at start");
    let (node, storage, bridge, template, ip) = (
        get("PVEFLEET_SMOKE_NODE"),
        get("PVEFLEET_SMOKE_STORAGE"),
        get("PVEFLEET_SMOKE_BRIDGE"),
        get("PVEFLEET_SMOKE_TEMPLATE"),
        get("PVEFLEET_SMOKE_IP"),
    );
    let hostname = format!("pvefleet-smoke-{}", std::process::id());
    println!(
        "smoke: will create on {node} one container `{hostname}` (512 MB, 2 GB on {storage}, {bridge}, ip {ip}, from \
         {template}), write /root/pvefleet-smoke.txt and run one script in it, destroy it, and check nothing is left"
    );
    let nats = NatsServer::start(dir).await?;
    let db = TestDb::sqlite(dir);
    let cli = Pvefleet::new(dir, &nats.url(), &db);
    anyhow::ensure!(cli.run(&["setup"]).await?.ok(), "pvefleet setup failed");
    // As an admin would: the policy (the smoke run's operator with the default rights),
    // signed with the admin key its agent trusts.
    let admin = pvefleet_testbed::trust::identity_file(dir.path(), "admin.identity", pvefleet_testbed::trust::admin())?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[signer]]\nname = \"smoke\"\nkey = \"{}\"\n", pvefleet_testbed::trust::operator().public()),
    )?;
    let set =
        cli.run(&["--identity", &admin.display().to_string(), "policy", "set", &policy.display().to_string()]).await?;
    anyhow::ensure!(set.ok(), "pvefleet policy set failed: {set:?}");
    let _agent = start_agent(dir, &nats.url(), &node)?;
    // The store learns each job's end from the recorder, as in any fleet.
    let _recorder = cli.recorder("recorder")?;
    let mut spec = vec![
        "--node".to_owned(),
        node.clone(),
        "--hostname".into(),
        hostname.clone(),
        "--ostemplate".into(),
        template,
        "--storage".into(),
        storage,
        "--disk".into(),
        "2".into(),
        "--memory".into(),
        "512".into(),
        "--bridge".into(),
        bridge,
        "--ip".into(),
        ip,
    ];
    if let Some(gw) = var("PVEFLEET_SMOKE_GW") {
        spec.extend(["--gw".into(), gw]);
    }
    let spec: Vec<&str> = spec.iter().map(String::as_str).collect();

    // The agent answers once it is up; the plan must pass before anything is made.
    let plan = wait_until("the agent to answer the plan", Duration::from_secs(60), || async {
        let run = cli.run(&[vec!["plan"], spec.clone()].concat()).await.ok()?;
        (run.code != Some(1) || !run.stderr.contains("no agent answers")).then_some(run)
    })
    .await?;
    println!("{}", plan.stdout);
    anyhow::ensure!(plan.ok(), "the plan did not pass: {}{}", plan.stdout, plan.stderr);

    let file = dir.path().join("smoke.toml");
    std::fs::write(
        &file,
        "[deploy]\n[[deploy.files]]\npath = \"/root/pvefleet-smoke.txt\"\ncontent = \"written by pvefleet's smoke run\\n\"\nmode = \"0600\"\n\
         [[deploy.scripts]]\nname = \"smoke\"\nbody = \"cat /root/pvefleet-smoke.txt; for i in 1 2 3; do echo line $i; done\"\n",
    )?;
    let file = file.display().to_string();
    let submit = cli.run(&[vec!["submit", "--spec", &file, "--watch"], spec.clone()].concat()).await?;
    println!("{}", submit.stdout);
    anyhow::ensure!(submit.ok(), "the create failed: {}{}", submit.stdout, submit.stderr);
    anyhow::ensure!(
        submit.stdout.contains("written by pvefleet's smoke run") && submit.stdout.contains("line 3"),
        "the script's output did not stream back: {}",
        submit.stdout
    );
    let job: pvefleet_schemas::JobId = submit.stdout.lines().next().unwrap_or_default().trim().parse()?;

    wait_until("the recorder to record the create's end", Duration::from_secs(30), || async {
        let run = cli.run(&["job", &job.to_string(), "--json"]).await.ok()?;
        let row: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
        (row["state"] == "succeeded").then_some(())
    })
    .await?;
    let destroy = cli.run(&["destroy", &job.to_string(), "--watch"]).await?;
    println!("{}", destroy.stdout);
    anyhow::ensure!(destroy.ok(), "the destroy failed: {}{}", destroy.stdout, destroy.stderr);

    // Nothing carrying this run's marker is left anywhere in the cluster.
    let left = pve_client(&node)?.guests_tagged(&job.marker_tag()).await?;
    anyhow::ensure!(left.is_empty(), "left behind: {left:?}");
    println!("smoke: no guest carries {} any more", job.marker_tag());
    Ok(())
}

fn pve_client(node: &str) -> anyhow::Result<PveClient> {
    let secret = std::fs::read_to_string(var("PVEFLEET_SMOKE_TOKEN_SECRET_FILE").expect("checked"))?;
    let config = ProxmoxConfig {
        url: var("PVEFLEET_SMOKE_URL").expect("checked").trim_end_matches('/').to_owned(),
        credential: Credential::Token {
            id: var("PVEFLEET_SMOKE_TOKEN_ID").expect("checked"),
            secret: pvefleet_schemas::Secret::new(secret.trim()),
        },
        trust: Trust::Fingerprint(var("PVEFLEET_SMOKE_FINGERPRINT").expect("checked").parse()?),
        facts_ttl: std::time::Duration::ZERO,
    };
    Ok(PveClient::new(&config, pvefleet_schemas::NodeName::new(node)?)?)
}

fn start_agent(dir: &TestDir, nats_url: &str, node: &str) -> anyhow::Result<Proc> {
    let config = dir.path().join("agent.toml");
    let port: u16 = var("PVEFLEET_SMOKE_SSH_PORT").map_or(Ok(22), |p| p.parse())?;
    std::fs::write(
        &config,
        format!(
            "node = {node:?}\nfiles_dir = {files:?}\nstate_dir = {state:?}\n\n[nats]\nurls = [{nats_url:?}]\n\n\
             [proxmox]\nurl = {url:?}\ntoken_id = {token:?}\ntoken_secret_file = {secret:?}\nfingerprint = {fp:?}\n\n\
             [ssh]\nuser = {user:?}\nport = {port}\nauthorized_keys = {keys:?}\n\n{trust}",
            trust = pvefleet_testbed::trust::agent_section(),
            files = dir.sub("files"),
            state = dir.path().join("agent-state"),
            url = var("PVEFLEET_SMOKE_URL").expect("checked"),
            token = var("PVEFLEET_SMOKE_TOKEN_ID").expect("checked"),
            secret = var("PVEFLEET_SMOKE_TOKEN_SECRET_FILE").expect("checked"),
            fp = var("PVEFLEET_SMOKE_FINGERPRINT").expect("checked"),
            user = var("PVEFLEET_SMOKE_SSH_USER").unwrap_or_else(|| "root".into()),
            keys = var("PVEFLEET_SMOKE_AUTHORIZED_KEYS").unwrap_or_else(|| ".ssh/authorized_keys".into()),
        ),
    )?;
    let mut cmd = std::process::Command::new(tools::workspace_bin("pvefleet-agent")?);
    cmd.arg("--config").arg(&config);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,async_nats=warn");
    }
    Proc::spawn(dir, "agent", cmd)
}
