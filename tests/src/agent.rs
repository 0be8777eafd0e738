//! `pvefleet-agent` as a real process, configured against the bed's nats-server and fakepve.

use std::process::Command;
use std::time::Duration;

use crate::dir::TestDir;
use crate::fakepve::FakePve;
use crate::process::Proc;
use crate::tools;

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub node: String,
    pub concurrency: u32,
    /// Short in tests, so a killed agent's job is redelivered quickly.
    pub ack_wait: Duration,
    pub heartbeat: Duration,
    pub shutdown_grace: Duration,
    /// Pin this instead of fakepve's real fingerprint (to test a wrong one).
    pub fingerprint: Option<String>,
    /// `(user, port)` of the bed's sshd, which plays the containers.
    pub ssh: Option<(String, u16)>,
    /// The agent's own inbox prefix (per-agent NATS permissions need one).
    pub inbox_prefix: Option<String>,
    /// The CA of NATS servers that speak TLS.
    pub nats_ca: Option<std::path::PathBuf>,
    /// `ssh.key_file`: a key the cloned templates trust.
    pub ssh_key_file: Option<std::path::PathBuf>,
    /// Sign in as root@pam with its password instead of using the API token.
    pub root_login: bool,
    /// `metrics_listen`: where the agent serves /metrics.
    pub metrics_listen: Option<String>,
    /// More of the agent's environment (its debug-build test hooks, `PVEFLEET_…` keys).
    pub env: Vec<(String, String)>,
    /// More TOML appended to its config (sections such as `[clone]`).
    pub extra_config: String,
}

impl AgentOptions {
    /// An agent whose downloads may reach the bed's file server on loopback (`fetch.allow`):
    /// fetches reach only public addresses unless the node's operator allows more.
    pub fn fetching_from_the_bed(node: &str) -> Self {
        Self { extra_config: "[fetch]\nallow = [\"127.0.0.1\"]\n".into(), ..Self::node(node) }
    }

    pub fn node(node: &str) -> Self {
        Self {
            node: node.into(),
            concurrency: 4,
            ack_wait: Duration::from_secs(4),
            heartbeat: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            fingerprint: None,
            ssh: None,
            inbox_prefix: None,
            nats_ca: None,
            ssh_key_file: None,
            root_login: false,
            metrics_listen: None,
            env: Vec::new(),
            extra_config: String::new(),
        }
    }
}

#[derive(Debug)]
pub struct Agent {
    pub opts: AgentOptions,
    pub config: std::path::PathBuf,
    dir: TestDir,
    proc: Option<Proc>,
    starts: u32,
}

impl Agent {
    /// Writes the agent's config (token file, pinned fingerprint) and starts it.
    pub fn start(dir: &TestDir, nats_urls: &[String], pve: &FakePve, opts: AgentOptions) -> anyhow::Result<Self> {
        let config = dir.path().join(format!("agent-{}.toml", opts.node));
        let files_dir = dir.sub("agent-files");
        let state_dir = dir.path().join(format!("agent-state-{}", opts.node));
        let urls = nats_urls.iter().map(|u| format!("{u:?}")).collect::<Vec<_>>().join(", ");
        std::fs::write(
            &config,
            format!(
                "node = {node:?}\nconcurrency = {concurrency}\nheartbeat = \"{hb}ms\"\nack_wait = \"{ack}ms\"\nshutdown_grace = \"{grace}ms\"\nfiles_dir = {files_dir:?}\nstate_dir = {state_dir:?}\n{metrics}\n\
                 [nats]\nurls = [{urls}]\n{inbox}\n\
                 [proxmox]\nurl = {url:?}\n{credential}fingerprint = {fp:?}\n\n\
                 [ssh]\nuser = {ssh_user:?}\nport = {ssh_port}\nconnect_timeout = \"5s\"\nretry_for = \"30s\"\nauthorized_keys = {keys:?}\n{key_file}\n{extra}",
                node = opts.node,
                files_dir = files_dir,
                state_dir = state_dir,
                metrics = opts.metrics_listen.as_ref().map(|m| format!("metrics_listen = {m:?}\n")).unwrap_or_default(),
                // The bed's sshd reads each container's keys from the file fakepve writes per address.
                keys = format!("{}/%a", pve.keys_dir.display()),
                concurrency = opts.concurrency,
                hb = opts.heartbeat.as_millis(),
                ack = opts.ack_wait.as_millis(),
                grace = opts.shutdown_grace.as_millis(),
                url = pve.url,
                credential = if opts.root_login {
                    format!("user = \"root@pam\"\npassword_file = {:?}\n", pve.root_password_file)
                } else {
                    format!("token_id = {:?}\ntoken_secret_file = {:?}\n", pve.token_id, pve.token_secret_file)
                },
                fp = opts.fingerprint.as_deref().unwrap_or(&pve.fingerprint),
                inbox = opts.inbox_prefix.as_ref().map(|p| format!("inbox_prefix = {p:?}\n")).unwrap_or_default()
                    + &opts.nats_ca.as_ref().map(|ca| format!("ca_file = {ca:?}\n")).unwrap_or_default(),
                ssh_user = opts.ssh.as_ref().map_or("root", |s| s.0.as_str()),
                ssh_port = opts.ssh.as_ref().map_or(22, |s| s.1),
                key_file = opts.ssh_key_file.as_ref().map(|k| format!("key_file = {k:?}\n")).unwrap_or_default(),
                extra = if opts.extra_config.contains("[trust]") {
                    opts.extra_config.clone()
                } else {
                    format!("{}\n{}", opts.extra_config, crate::trust::agent_section())
                },
            ),
        )?;
        let mut agent = Self { opts, config, dir: dir.clone(), proc: None, starts: 0 };
        agent.launch()?;
        Ok(agent)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(tools::workspace_bin("pvefleet-agent")?);
        cmd.arg("--config").arg(&self.config);
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,pvefleet_agent=debug,async_nats=warn");
        }
        self.starts += 1;
        let name = format!("agent-{}-{}", self.opts.node, self.starts);
        self.proc = Some(Proc::spawn(&self.dir, &name, cmd)?);
        Ok(())
    }

    /// Starts the agent again after a kill or exit.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }

    /// SIGKILL: the agent dies mid-whatever, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// The agent's public sealing key (made at its first start): what its jobs' root
    /// passwords are sealed to.
    pub async fn sealing_key(&self) -> anyhow::Result<pvefleet_schemas::seal::PublicKey> {
        let path = self.dir.path().join(format!("agent-state-{}", self.opts.node)).join("sealing.key");
        let key = crate::wait_until("the agent's sealing key", Duration::from_secs(20), || {
            let key = std::fs::read_to_string(&path).ok().map(|t| pvefleet_schemas::seal::SecretKey::from_text(&t));
            async move { key }
        })
        .await?
        .map_err(|e| anyhow::anyhow!("{} is not a sealing key: {e}", path.display()))?;
        Ok(key.public())
    }

    /// What `pvefleet-agent --print-key` prints on the node: its sealing key's fingerprint
    /// (waiting for the agent's first start to make the key).
    pub async fn print_key(&self) -> anyhow::Result<String> {
        let out = crate::wait_until("the agent's sealing key", Duration::from_secs(20), || async {
            let out = Command::new(tools::workspace_bin("pvefleet-agent").ok()?)
                .arg("--config")
                .arg(&self.config)
                .arg("--print-key")
                .output()
                .ok()?;
            out.status.success().then_some(out)
        })
        .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("fingerprint "))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no fingerprint in `pvefleet-agent --print-key`: {text}"))
    }

    /// The agent's `files_dir`: the only place a job's `deploy.files[].source` may name.
    pub fn files_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("agent-files")
    }

    pub fn proc(&mut self) -> &mut Proc {
        self.proc.as_mut().expect("the agent is running")
    }

    /// Whether the agent's process is alive (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.try_wait().is_none())
    }

    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }
}
