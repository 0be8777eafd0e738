//! fakepve (PyPI `fakepve`, a fake of the PVE 9 API) as its own process, started by
//! `tests/bed/fakepve_launcher.py` with a fresh TLS certificate, an API token and the nodes a
//! test asks for, plus the launcher's control API for injecting faults while a test runs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::dir::TestDir;
use crate::process::Proc;
use crate::{tools, wait_until};

/// The template every fake node holds.
pub const OSTEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";

/// How a [`FakePve::lose_answer`] answer is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostAnswer {
    /// A 500 instead of the answer.
    Error,
    /// The connection is dropped before the answer.
    Drop,
}

#[derive(Debug, Clone)]
pub struct FakePveOptions {
    pub nodes: Vec<String>,
    /// PVE seconds per real second for task durations; 0 finishes tasks at once.
    pub time_scale: f64,
    pub token_id: String,
}

impl Default for FakePveOptions {
    fn default() -> Self {
        Self { nodes: vec!["pve1".into()], time_scale: 0.0, token_id: "root@pam!pvefleet".into() }
    }
}

#[derive(Debug, Deserialize)]
struct Ready {
    url: String,
    control_url: String,
    fingerprint: String,
    cafile: PathBuf,
    files_dir: PathBuf,
}

#[derive(Debug)]
pub struct FakePve {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// SHA-256 of the API certificate, 32 colon-separated hex bytes, as `pvenode cert info` shows.
    pub fingerprint: String,
    /// The certificate in PEM, for clients that verify against a CA file.
    pub cafile: PathBuf,
    pub token_id: String,
    pub token_secret: String,
    /// The file holding `token_secret`, as an agent's `token_secret_file`.
    pub token_secret_file: PathBuf,
    /// The file holding root@pam's password, as an agent's `password_file` for a ticket login.
    pub root_password_file: PathBuf,
    /// Where the launcher writes created containers' authorized keys (`<ip>` and `vmid-<id>`).
    pub keys_dir: PathBuf,
    control_url: String,
    /// What the launcher serves at `<control>/files/<name>`, for `download-url`.
    files_dir: PathBuf,
    control: reqwest::Client,
    proc: Proc,
}

impl FakePve {
    pub async fn start(dir: &TestDir, opts: FakePveOptions) -> anyhow::Result<Self> {
        let python = tools::fakepve_python()?;
        let launcher = tools::workspace_root().join("tests/bed/fakepve_launcher.py");
        let home = dir.sub("fakepve");
        let keys_dir = dir.sub("authorized-keys");
        let token_secret = random_secret();
        let token_secret_file = home.join("token-secret");
        write_private(&token_secret_file, &format!("{token_secret}\n"))?;
        let root_password = random_secret();
        let root_password_file = home.join("root-password");
        write_private(&root_password_file, &format!("{root_password}\n"))?;
        let mut cmd = Command::new(python);
        cmd.arg(&launcher)
            .args(["--host", "127.0.0.1", "--port", "0", "--control-port", "0"])
            .arg("--dir")
            .arg(&home)
            .args(["--nodes", &opts.nodes.join(",")])
            .args(["--token-id", &opts.token_id, "--token-secret", &token_secret])
            .args(["--root-password", &root_password])
            .arg("--keys-dir")
            .arg(&keys_dir)
            .args(["--time-scale", &opts.time_scale.to_string()]);
        let mut proc = Proc::spawn(dir, "fakepve", cmd)?;
        let ready_file = home.join("ready.json");
        let ready: Ready = wait_until("fakepve to write ready.json", Duration::from_secs(30), || {
            let exited = proc.try_wait();
            let text = std::fs::read(&ready_file).ok();
            async move {
                if let Some(status) = exited {
                    return Some(Err(anyhow::anyhow!("fakepve exited early with {status}")));
                }
                Some(Ok(serde_json::from_slice(&text?).ok()?))
            }
        })
        .await?
        .with_context(|| format!("fakepve: see {}", proc.log().display()))?;
        Ok(Self {
            url: ready.url,
            fingerprint: ready.fingerprint,
            cafile: ready.cafile,
            token_id: opts.token_id,
            token_secret,
            token_secret_file,
            root_password_file,
            keys_dir,
            control_url: ready.control_url,
            files_dir: ready.files_dir,
            control: control_client(),
            proc,
        })
    }

    /// Serves `bytes` over plain HTTP on loopback, for a `download-url` (which fakepve's launcher
    /// really fetches, checking the checksum as PVE does); returns the URL.
    pub fn serve_file(&self, name: &str, bytes: &[u8]) -> anyhow::Result<String> {
        std::fs::write(self.files_dir.join(name), bytes)?;
        Ok(format!("{}/files/{name}", self.control_url))
    }

    /// Makes container `vmid` on `node` outside pvefleet, as an operator or a tenant would:
    /// the bed's template, a 4 GB root disk, then `params`; waits for its create to end.
    pub async fn make_container(&self, node: &str, vmid: u32, params: &[(&str, &str)]) -> anyhow::Result<()> {
        let id = vmid.to_string();
        let mut form = vec![("vmid", id.as_str()), ("ostemplate", OSTEMPLATE), ("rootfs", "local-lvm:4")];
        form.extend_from_slice(params);
        let upid = self.api(reqwest::Method::POST, &format!("/nodes/{node}/lxc"), &form).await?;
        anyhow::ensure!(upid.as_str().is_some_and(|u| u.starts_with("UPID:")), "{upid}");
        wait_until(&format!("container {vmid}'s create"), Duration::from_secs(60), || async {
            let cfg = self.api_get(&format!("/nodes/{node}/lxc/{id}/config")).await.ok()?;
            cfg.get("lock").is_none().then_some(())
        })
        .await
    }

    /// Makes a template called `name` as `vmid` on `node` (two DHCP NICs, the tag `golden`).
    pub async fn make_template(&self, node: &str, vmid: u32, name: &str) -> anyhow::Result<()> {
        let params = [
            ("hostname", name),
            ("net0", "name=eth0,bridge=vmbr0,ip=dhcp"),
            ("net1", "name=eth1,bridge=vmbr0,ip=dhcp"),
            ("tags", "golden"),
        ];
        self.make_container(node, vmid, &params).await?;
        self.api(reqwest::Method::POST, &format!("/nodes/{node}/lxc/{vmid}/template"), &[]).await?;
        Ok(())
    }

    /// The volids of the container templates on `storage` of `node`.
    pub async fn templates(&self, node: &str, storage: &str) -> anyhow::Result<Vec<String>> {
        let items = self.api_get(&format!("/nodes/{node}/storage/{storage}/content?content=vztmpl")).await?;
        Ok(items.as_array().into_iter().flatten().filter_map(|i| i["volid"].as_str().map(str::to_owned)).collect())
    }

    /// A GET on the PVE API with the token and the pinned certificate; returns `data`.
    pub async fn api_get(&self, path: &str) -> anyhow::Result<Value> {
        self.api(reqwest::Method::GET, path, &[]).await
    }

    /// Any call on the PVE API with the token and the pinned certificate; returns `data`.
    pub async fn api(&self, method: reqwest::Method, path: &str, form: &[(&str, &str)]) -> anyhow::Result<Value> {
        let trust = pvefleet_agent::tls::Trust::Fingerprint(self.fingerprint.parse()?);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(pvefleet_agent::tls::client_config(&trust)?)
            .build()?;
        let resp = client
            .request(method.clone(), format!("{}/api2/json{path}", self.url))
            .header("Authorization", self.auth_header())
            .form(form)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if !status.is_success() {
            bail!("{method} {path}: {status} {body}");
        }
        Ok(body["data"].clone())
    }

    /// `Authorization` header value for the registered token.
    pub fn auth_header(&self) -> String {
        format!("PVEAPIToken={}={}", self.token_id, self.token_secret)
    }

    async fn control(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self
            .control
            .post(format!("{}{path}", self.control_url))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("fakepve control {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("fakepve control {path} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The next `times` requests matching `method` and `path` (relative to `/api2/json`) fail
    /// with `status` and `message`.
    pub async fn fail(&self, method: &str, path: &str, times: u32, status: u16, message: &str) -> anyhow::Result<()> {
        self.control(
            "/fail",
            json!({"method": method, "path": path, "times": times, "status": status, "message": message}),
        )
        .await
        .map(drop)
    }

    /// The next `times` matching requests fail with one of PVE's own catalogued errors
    /// (`pve.errors_for(method, path)` in fakepve lists them), e.g. a 400 with per-field errors.
    pub async fn fail_with_pve_error(&self, method: &str, path: &str, times: u32, error: &str) -> anyhow::Result<()> {
        self.control("/fail", json!({"method": method, "path": path, "times": times, "error": error})).await.map(drop)
    }

    /// The next `times` requests matching `method` and `path` are carried out, then their answer
    /// is lost: a 500 (`LostAnswer::Error`) or a dropped connection (`LostAnswer::Drop`), as when
    /// pveproxy times out while the worker runs on. `times` 0 means until [`FakePve::reset`].
    pub async fn lose_answer(&self, method: &str, path: &str, times: u32, how: LostAnswer) -> anyhow::Result<()> {
        let how = match how {
            LostAnswer::Error => "500",
            LostAnswer::Drop => "drop",
        };
        self.control("/lose-answer", json!({"method": method, "path": path, "times": times, "how": how}))
            .await
            .map(drop)
    }

    /// Another PVE user's edit of container `vmid`'s config (`set`: keys to values; `{n}` in a
    /// value is the edit's number, so each edit changes something), made right after each of
    /// the next `times` requests matching `method` and `path` is answered, once the first `skip`
    /// have passed (`times` 0: each until [`FakePve::reset`]): a concurrent edit at the worst
    /// moment, between a client's read and its write.
    pub async fn edit_after(
        &self,
        method: &str,
        path: &str,
        skip: u32,
        times: u32,
        vmid: u32,
        set: Value,
    ) -> anyhow::Result<()> {
        let rule = json!({"method": method, "path": path, "skip": skip, "times": times, "vmid": vmid, "set": set});
        self.control("/edit-after", rule).await.map(drop)
    }

    /// A flaky network: this share of requests is dropped before fakepve acts on it, and this
    /// share hangs for `hang_secs` (PVE seconds) first. All zero clears it.
    pub async fn flaky(&self, drop_rate: f64, hang_rate: f64, hang_secs: f64, seed: u64) -> anyhow::Result<()> {
        self.control(
            "/flaky",
            json!({"drop_rate": drop_rate, "hang_rate": hang_rate, "hang_secs": hang_secs, "seed": seed}),
        )
        .await
        .map(drop)
    }

    /// The next task of `task_type` (`vzcreate`, `vzstart`, …) ends in `TASK ERROR: message`.
    pub async fn task_error(&self, task_type: &str, message: &str) -> anyhow::Result<()> {
        self.control("/task-error", json!({"type": task_type, "message": message})).await.map(drop)
    }

    /// Delays every API response by `seconds` (0 clears it).
    /// Ends every login ticket, as PVE does after two hours: a client must sign in again.
    pub async fn expire_tickets(&self) -> anyhow::Result<()> {
        self.control("/expire-tickets", json!({})).await.map(drop)
    }

    pub async fn slow(&self, seconds: f64) -> anyhow::Result<()> {
        self.control("/slow", json!({"seconds": seconds})).await.map(drop)
    }

    /// Changes how fast PVE tasks run (PVE seconds per real second; 0 = at once).
    pub async fn time_scale(&self, scale: f64) -> anyhow::Result<()> {
        self.control("/time-scale", json!({"scale": scale})).await.map(drop)
    }

    /// Makes `/nodes/{node}/status` report `used` bytes of its 8 GiB in use.
    pub async fn node_memory_used(&self, node: &str, used: u64) -> anyhow::Result<()> {
        self.control("/node-memory", json!({"node": node, "used": used})).await.map(drop)
    }

    /// Makes guest `vmid` HA-managed with `state` (`started`, `stopped`), or unmanaged (None):
    /// its migrations go through HA (an `hamigrate` task that ends before it arrives).
    pub async fn ha(&self, vmid: u32, state: Option<&str>) -> anyhow::Result<()> {
        self.control("/ha", json!({"vmid": vmid, "state": state})).await.map(drop)
    }

    pub async fn offline(&self, node: &str, offline: bool) -> anyhow::Result<()> {
        self.control("/offline", json!({"node": node, "offline": offline})).await.map(drop)
    }

    /// The next task of `task_type` does its work, then ends `WARNINGS: 1` with `message` logged.
    pub async fn task_warning(&self, task_type: &str, message: &str) -> anyhow::Result<()> {
        self.control("/task-warning", json!({"type": task_type, "message": message})).await.map(drop)
    }

    /// Adds `lines` at the top of the next `task_type` task's log (e.g. PVE's host-key lines).
    pub async fn task_log(&self, task_type: &str, lines: &[&str]) -> anyhow::Result<()> {
        self.control("/task-log", json!({"type": task_type, "lines": lines})).await.map(drop)
    }

    /// How long tasks take, in PVE seconds: `{"create": 2, "start": 1}`.
    pub async fn task_secs(&self, secs: Value) -> anyhow::Result<()> {
        self.control("/task-secs", secs).await.map(drop)
    }

    /// The launcher's view: time scale, delay, nodes, pending failures, containers, and
    /// `requests` (API requests that got past TLS).
    pub async fn health(&self) -> anyhow::Result<Value> {
        let resp = self.control.get(format!("{}/health", self.control_url)).send().await?;
        Ok(resp.error_for_status()?.json().await?)
    }

    /// Ids of the containers that exist now.
    pub async fn containers(&self) -> anyhow::Result<Vec<u32>> {
        let health = self.health().await?;
        Ok(serde_json::from_value(health["containers"].clone())?)
    }

    /// API calls since the start or the last [`FakePve::reset_calls`], by method and path
    /// template (`/nodes/{node}/lxc/{vmid}/status/start`).
    pub async fn calls(&self) -> anyhow::Result<Vec<(String, String, u64)>> {
        let resp = self.control.get(format!("{}/calls", self.control_url)).send().await?;
        let body: Value = resp.error_for_status()?.json().await?;
        Ok(serde_json::from_value(body["calls"].clone())?)
    }

    /// How many calls of `method` on the schema path template `path` it answered.
    pub async fn calls_of(&self, method: &str, path: &str) -> anyhow::Result<u64> {
        Ok(self.calls().await?.into_iter().filter(|(m, p, _)| m == method && p == path).map(|(_, _, n)| n).sum())
    }

    pub async fn reset_calls(&self) -> anyhow::Result<()> {
        self.control("/calls-reset", json!({})).await.map(drop)
    }

    /// Clears every injected fault.
    pub async fn reset(&self) -> anyhow::Result<()> {
        self.control("/reset", json!({})).await.map(drop)
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// The launcher's process id (for a benchmark's CPU figures).
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }
}

/// The control API is plain HTTP on loopback; reqwest still wants a TLS provider chosen.
fn control_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn random_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    // Test-only token secret: unique per run is all that matters.
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    format!("{}-{}-{}-{}-{}", &out[0..8], &out[8..12], &out[12..16], &out[16..20], &out[20..32])
}

/// Writes a secret as an operator would: mode 0600 (the agent refuses one others may read).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}
