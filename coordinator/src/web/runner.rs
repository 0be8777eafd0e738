//! The verbs a user's action runs: the `pvefleet` binary itself as a child process, with this
//! server's identity and connection and `--acting-user` naming the user.

use crate::cli::Cli;

/// How this server runs verbs for its users.
#[derive(Debug)]
pub struct Acting {
    exe: std::path::PathBuf,
    env: Vec<(String, String)>,
    /// The key id of the identity the web view signs with.
    pub signer: String,
}

/// What a verb run for a user printed.
#[derive(Debug)]
pub struct Ran {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The error lines, without the `pvefleet: ` each begins with.
    pub fn error(&self) -> String {
        let text: Vec<&str> =
            self.stderr.lines().map(|l| l.strip_prefix("pvefleet: ").unwrap_or(l)).filter(|l| !l.is_empty()).collect();
        if text.is_empty() { format!("the verb ended with {:?}", self.code) } else { text.join("\n") }
    }

    /// The job ids in `--json` output (one job per line).
    pub fn job_ids(&self) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["job_id"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Acting {
    /// The web view acts with the identity `--identity` names; without one it is read-only.
    pub fn new(cli: &Cli) -> Result<Self, String> {
        let (path, me) = crate::identity::load(cli).map_err(|e| match e {
            crate::Failure::Usage(m) => format!("no identity to sign with ({m})"),
            other => format!("no identity to sign with ({other:?})"),
        })?;
        let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
        let mut env = vec![("PVEFLEET_NATS_URL".to_owned(), cli.nats_url.clone())];
        let mut put = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                env.push((key.to_owned(), v));
            }
        };
        let path_of = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
        put("PVEFLEET_NATS_CREDS", path_of(&cli.nats_creds));
        put("PVEFLEET_NATS_INBOX_PREFIX", cli.nats_inbox_prefix.clone());
        put("PVEFLEET_NATS_CA", path_of(&cli.nats_ca));
        put("PVEFLEET_NATS_CERT", path_of(&cli.nats_cert));
        put("PVEFLEET_NATS_KEY", path_of(&cli.nats_key));
        put("PVEFLEET_DB", cli.db.clone());
        put("PVEFLEET_ADMIN_KEYS", cli.admin_keys.clone());
        put("PVEFLEET_IDENTITY", Some(path.display().to_string()));
        Ok(Self { exe, env, signer: me.public().id().0 })
    }

    /// Runs `pvefleet --acting-user USER ARGS…`, with `secret` (if any) in the child's
    /// environment as `PVEFLEET_WEB_ROOT_PASSWORD`.
    pub async fn run(&self, user: &str, args: &[String], secret: Option<&str>) -> anyhow::Result<Ran> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("--acting-user").arg(user).args(args);
        cmd.env_remove("PVEFLEET_WEB_ROOT_PASSWORD");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(secret) = secret {
            cmd.env("PVEFLEET_WEB_ROOT_PASSWORD", secret);
        }
        cmd.stdin(std::process::Stdio::null());
        // On a task of its own: a browser that goes away mid-action must not kill a submit
        // between its record and its publish.
        let exe = self.exe.display().to_string();
        let out = tokio::spawn(async move { cmd.output().await })
            .await
            .map_err(|e| anyhow::anyhow!("running {exe}: {e}"))?
            .map_err(|e| anyhow::anyhow!("running {exe}: {e}"))?;
        Ok(Ran {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
