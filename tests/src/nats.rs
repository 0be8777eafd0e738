//! nats-server with JetStream, one per test, and a 3-node JetStream cluster whose nodes can be
//! killed and restarted on the same ports and store.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::dir::TestDir;
use crate::process::Proc;
use crate::{free_port, tools, wait_until};

const START_WITHIN: Duration = Duration::from_secs(20);

/// One nats-server with JetStream on `127.0.0.1`.
#[derive(Debug)]
pub struct NatsServer {
    dir: TestDir,
    name: String,
    port: u16,
    config: PathBuf,
    proc: Option<Proc>,
    restarts: u32,
    /// A cluster member is ready only once JetStream (its meta leader) answers.
    clustered: bool,
    /// Environment for the server (values its config refers to as `$VAR`).
    env: Vec<(String, String)>,
    /// The HTTP monitoring port, when the bed chose it.
    monitor: Option<u16>,
}

impl NatsServer {
    /// A standalone server with its own store in the test dir.
    pub async fn start(dir: &TestDir) -> anyhow::Result<Self> {
        Self::start_with(dir, "").await
    }

    /// A standalone server whose config has `extra` appended (e.g. an `authorization` block).
    pub async fn start_with(dir: &TestDir, extra: &str) -> anyhow::Result<Self> {
        let port = free_port("127.0.0.1");
        let http = free_port("127.0.0.1");
        let store = dir.sub("nats-store");
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "server_name: nats-test\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\n\
                 jetstream {{ store_dir: {store:?} }}\n{extra}\n",
            ),
        )?;
        let mut server = Self {
            dir: dir.clone(),
            name: "nats-test".into(),
            port,
            config,
            proc: None,
            restarts: 0,
            clustered: false,
            env: Vec::new(),
            monitor: Some(http),
        };
        server.launch()?;
        server.wait_ready().await?;
        Ok(server)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let bin = tools::nats_server()?;
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&self.config).envs(self.env.iter().map(|(k, v)| (k, v)));
        let log_name =
            if self.restarts == 0 { self.name.clone() } else { format!("{}-restart{}", self.name, self.restarts) };
        self.proc = Some(Proc::spawn(&self.dir, &log_name, cmd)?);
        Ok(())
    }

    /// Ready when a client can connect and (for a cluster member) JetStream answers.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = self.url();
        let jetstream = self.clustered;
        let what = format!("{} on {url}", self.name);
        let proc = self.proc.as_mut().context("not running")?;
        wait_until(&what, START_WITHIN, || {
            let exited = proc.try_wait();
            let url = url.clone();
            async move {
                if let Some(status) = exited {
                    return Some(Err(anyhow::anyhow!("exited early with {status}")));
                }
                if jetstream {
                    let client = async_nats::connect(&url).await.ok()?;
                    async_nats::jetstream::new(client).query_account().await.ok()?;
                } else {
                    // The server greets every connection with INFO; no credentials needed.
                    let addr = url.trim_start_matches("nats://");
                    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
                    let mut greeting = [0u8; 4];
                    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut greeting).await.ok()?;
                    if &greeting != b"INFO" {
                        return None;
                    }
                }
                Some(Ok(()))
            }
        })
        .await?
        .with_context(|| {
            format!("{what}: see {}", self.proc.as_ref().map(|p| p.log().display().to_string()).unwrap_or_default())
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A server from a config written elsewhere (e.g. `deploy/nats/`), already pointed at
    /// `port` and the test's dirs; `env` gives the values it refers to as `$VAR`. A clustered
    /// one is ready when JetStream answers `probe_url` (a URL with credentials, if needed).
    pub fn from_config(
        dir: &TestDir,
        name: &str,
        config: PathBuf,
        port: u16,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let mut server = Self {
            dir: dir.clone(),
            name: name.into(),
            port,
            config,
            proc: None,
            restarts: 0,
            clustered: false,
            env,
            monitor: None,
        };
        server.launch()?;
        Ok(server)
    }

    /// Waits until the server takes connections.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        self.wait_ready().await
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    /// The URL with a user and password in it.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// The `server_name` the server reports (`n1` in a cluster).
    pub fn server_name(&self) -> &str {
        self.name.strip_prefix("nats-").unwrap_or(&self.name)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`: the server's monitoring endpoint (`/varz`), if the bed set one.
    pub fn monitor_url(&self) -> Option<String> {
        self.monitor.map(|p| format!("http://127.0.0.1:{p}"))
    }

    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        async_nats::connect(self.url()).await.context("connecting to the test nats-server")
    }

    pub async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(self.client().await?))
    }

    /// Whether the server's process is alive.
    pub fn is_up(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.try_wait().is_none())
    }

    /// SIGKILL: the server vanishes as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same port and store without waiting for it (a cluster
    /// member is ready only once a quorum is back: start them all, then wait).
    pub fn relaunch(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.restarts += 1;
        self.launch()
    }

    /// Starts the server again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.restarts += 1;
        self.launch()?;
        self.wait_ready().await
    }
}

/// A 3-node JetStream cluster on loopback.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    pub async fn start(dir: &TestDir) -> anyhow::Result<Self> {
        let client_ports: Vec<u16> = (0..3).map(|_| free_port("127.0.0.1")).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| free_port("127.0.0.1")).collect();
        let routes = route_ports.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect::<Vec<_>>().join(", ");
        let mut nodes = Vec::new();
        for i in 0..3 {
            let name = format!("n{}", i + 1);
            let store = dir.sub(&format!("nats-store-{name}"));
            let config = dir.path().join(format!("nats-{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\n\
                     jetstream {{ store_dir: {store:?} }}\n\
                     cluster {{ name: pvefleet-test\n listen: 127.0.0.1:{route}\n routes: [{routes}]\n }}\n",
                    client = client_ports[i],
                    route = route_ports[i],
                ),
            )?;
            let mut node = NatsServer {
                dir: dir.clone(),
                name: format!("nats-{name}"),
                port: client_ports[i],
                config,
                proc: None,
                restarts: 0,
                clustered: true,
                env: Vec::new(),
                monitor: None,
            };
            node.launch()?;
            nodes.push(node);
        }
        for node in &mut nodes {
            node.wait_ready().await?;
        }
        Ok(Self { nodes })
    }

    /// Every node's URL, for a client that fails over between them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        let addrs: Vec<async_nats::ServerAddr> = self.urls().iter().map(|u| u.parse()).collect::<Result<_, _>>()?;
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(addrs)
            .await
            .context("connecting to the test cluster")
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].restart().await
    }
}
