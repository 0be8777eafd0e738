//! The `pvefleet` CLI as an operator runs it, against the bed's nats-server and a store on
//! SQLite (in the test dir) or on the machine's Postgres (a database of its own per test).

use std::process::{Command, Output};

use anyhow::{Context as _, bail};

use crate::dir::TestDir;
use crate::process::Proc;
use crate::tools;

/// Where a test's store lives.
#[derive(Debug)]
pub enum TestDb {
    Sqlite(std::path::PathBuf),
    /// A database made for this test on the local Postgres, dropped with this value.
    Postgres {
        url: String,
        name: String,
    },
}

impl TestDb {
    pub fn sqlite(dir: &TestDir) -> Self {
        TestDb::Sqlite(dir.path().join("pvefleet.db"))
    }

    /// A fresh database on the machine's Postgres (127.0.0.1:5432, trust auth; `PVEFLEET_TEST_PG`
    /// overrides the server URL without a database name).
    pub fn postgres(test: &str) -> anyhow::Result<Self> {
        let server = std::env::var("PVEFLEET_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let name = format!("pvefleet_{}_{}", test.replace('-', "_"), std::process::id());
        psql(&server, "test", &format!("DROP DATABASE IF EXISTS {name}"))?;
        psql(&server, "test", &format!("CREATE DATABASE {name}"))?;
        Ok(TestDb::Postgres { url: format!("{server}/{name}"), name })
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite(path) => path.display().to_string(),
            TestDb::Postgres { url, .. } => url.clone(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { url, name } = self {
            let server = url.rsplit_once('/').map(|(s, _)| s.to_owned()).unwrap_or_default();
            let _ = psql(&server, "test", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

fn psql(server: &str, db: &str, sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .arg(format!("{server}/{db}"))
        .args(["-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .context("running psql (Debian package postgresql-client) against the local Postgres")?;
    if !out.status.success() {
        bail!(
            "psql `{sql}` failed: {} (is Postgres running on 127.0.0.1:5432 with trust auth? set PVEFLEET_TEST_PG)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `pvefleet` with the bed's NATS and store.
#[derive(Debug, Clone)]
pub struct Pvefleet {
    pub nats_url: String,
    pub db: String,
    /// The CA of NATS servers that speak TLS.
    pub nats_ca: Option<std::path::PathBuf>,
    dir: TestDir,
}

/// What one run printed.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Pvefleet {
    pub fn new(dir: &TestDir, nats_url: &str, db: &TestDb) -> Self {
        Self { nats_url: nats_url.into(), db: db.url(), nats_ca: None, dir: dir.clone() }
    }

    /// The same, trusting `ca` for NATS over TLS.
    pub fn with_ca(mut self, ca: &std::path::Path) -> Self {
        self.nats_ca = Some(ca.to_owned());
        self
    }

    /// The global flags; the NATS URL (which may hold a password) goes in the environment, as
    /// an operator's `coordinator.env` gives it: never on a command line `ps` shows.
    fn globals(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["--db".into(), self.db.clone().into()];
        if let Some(ca) = &self.nats_ca {
            args.extend(["--nats-ca".into(), ca.clone().into_os_string()]);
        }
        args
    }

    pub fn command(&self, args: &[&str]) -> anyhow::Result<tokio::process::Command> {
        let mut cmd = tokio::process::Command::new(tools::workspace_bin("pvefleet")?);
        cmd.args(self.globals()).args(args);
        cmd.env_remove("PVEFLEET_DB").env("PVEFLEET_NATS_URL", &self.nats_url).stdin(std::process::Stdio::null());
        cmd.env("PVEFLEET_IDENTITY", crate::trust::operator_file(self.dir.path())?);
        cmd.env("PVEFLEET_ADMIN_KEYS", crate::trust::admin().public().to_string());
        // A run whose caller gave up on it (a timeout, a Ctrl-C of the demo) must not outlive it.
        cmd.kill_on_drop(true);
        Ok(cmd)
    }

    /// Runs to the end and returns what it printed. After a `setup` that worked, the bed's
    /// admin sets the bed's policy (its operator may do everything), as an admin does after
    /// setting a fleet up, so the agents take the bed's signed jobs.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<Run> {
        let run: Run = self.command(args)?.output().await?.into();
        if args.first() == Some(&"setup") && run.ok() {
            self.set_bed_policy().await?;
            let named = args.windows(2).filter(|w| w[0] == "--node").map(|w| w[1]);
            let mut nodes: Vec<&str> = crate::trust::BED_NODES.to_vec();
            nodes.extend(named.filter(|n| !crate::trust::BED_NODES.contains(n)));
            for node in nodes {
                self.enroll_bed_agent(node).await?;
            }
        }
        Ok(run)
    }

    /// `pvefleet nodes enroll NODE --identity-key … --sealing-key …` as the bed's admin, for
    /// the keys made in the bed agent's state dir (as an admin copies them from `--print-key`).
    pub async fn enroll_bed_agent(&self, node: &str) -> anyhow::Result<()> {
        let (identity, sealing) = crate::trust::agent_keys(self.dir.path(), node)?;
        let admin = crate::trust::identity_file(self.dir.path(), "admin.identity", crate::trust::admin())?;
        let admin = admin.display().to_string();
        let args =
            ["--identity", &admin, "nodes", "enroll", node, "--identity-key", &identity, "--sealing-key", &sealing];
        let run: Run = self.command(&args)?.output().await?.into();
        anyhow::ensure!(run.ok(), "`pvefleet nodes enroll {node}` (the bed's agent) failed: {run:?}");
        Ok(())
    }

    /// `pvefleet policy set` with the bed's admin key and policy.
    pub async fn set_bed_policy(&self) -> anyhow::Result<()> {
        let admin = crate::trust::identity_file(self.dir.path(), "admin.identity", crate::trust::admin())?;
        let policy = self.dir.path().join("bed-policy.toml");
        std::fs::write(&policy, toml::to_string(&crate::trust::everything())?)?;
        let (admin, policy) = (admin.display().to_string(), policy.display().to_string());
        let set: Run = self.command(&["--identity", &admin, "policy", "set", &policy])?.output().await?.into();
        anyhow::ensure!(set.ok(), "`pvefleet policy set` (the bed's policy) failed: {set:?}");
        Ok(())
    }

    /// Runs `args` and fails with the command's whole output unless it exits 0.
    pub async fn must(&self, args: &[&str]) -> anyhow::Result<Run> {
        let run = self.run(args).await?;
        anyhow::ensure!(run.ok(), "`pvefleet {}` failed: {run:?}", args.join(" "));
        Ok(run)
    }

    /// Enrolls `agent` as an admin would: reads its fingerprint with `pvefleet-agent
    /// --print-key` (on the node), then `pvefleet nodes enroll NODE --fingerprint …` with the
    /// bed's admin key, once the live agent shows those keys.
    pub async fn enroll(&self, agent: &crate::agent::Agent) -> anyhow::Result<String> {
        let fingerprint = agent.print_key().await?;
        let node = agent.opts.node.clone();
        let admin = crate::trust::identity_file(self.dir.path(), "admin.identity", crate::trust::admin())?;
        let admin = admin.display().to_string();
        crate::wait_until(
            "the agent's keys in the registry, then enrolled",
            std::time::Duration::from_secs(30),
            || {
                let (node, fingerprint, admin) = (node.clone(), fingerprint.clone(), admin.clone());
                async move {
                    let args = ["--identity", &admin, "nodes", "enroll", &node, "--fingerprint", &fingerprint];
                    self.run(&args).await.ok().filter(Run::ok)
                }
            },
        )
        .await?;
        Ok(fingerprint)
    }

    /// `pvefleet serve` on a free port of `host` (more `args` after), waiting until it
    /// answers; returns the process and its base URL.
    pub async fn serve(&self, name: &str, host: &str, args: &[&str]) -> anyhow::Result<(Proc, String)> {
        let port = crate::free_port(host);
        let mut cmd = Command::new(tools::workspace_bin("pvefleet")?);
        cmd.args(self.globals()).args(["serve", "--listen", &format!("{host}:{port}")]).args(args);
        cmd.env("PVEFLEET_NATS_URL", &self.nats_url);
        cmd.env("PVEFLEET_ADMIN_KEYS", crate::trust::admin().public().to_string());
        let mut proc = Proc::spawn(&self.dir, name, cmd)?;
        let url = format!("http://{}:{port}", if host == "0.0.0.0" { "127.0.0.1" } else { host });
        let probe = format!("{url}/assets/style.css");
        crate::wait_until("pvefleet serve to answer", std::time::Duration::from_secs(20), || {
            let exited = proc.try_wait();
            let probe = probe.clone();
            async move {
                if let Some(status) = exited {
                    return Some(Err(anyhow::anyhow!("pvefleet serve exited with {status}")));
                }
                reqwest::get(&probe).await.ok().map(|_| Ok(()))
            }
        })
        .await??;
        Ok((proc, url))
    }

    /// `pvefleet record` as a background process, its output in the test dir.
    pub fn recorder(&self, name: &str) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(tools::workspace_bin("pvefleet")?);
        cmd.args(self.globals()).arg("record").env("PVEFLEET_NATS_URL", &self.nats_url);
        cmd.env("PVEFLEET_ADMIN_KEYS", crate::trust::admin().public().to_string());
        Proc::spawn(&self.dir, name, cmd)
    }
}
