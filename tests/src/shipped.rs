//! The shipped `deploy/nats` configs run on loopback, with the test's own CA and certificates
//! where they expect theirs and the users' passwords in the server's environment; and clients
//! that log in as one of those users and collect what the server refuses them. What the
//! deploy tests and the hostile-client tests run on.

use std::path::PathBuf;
use std::time::Duration;

use crate::dir::TestDir;
use crate::nats::NatsServer;
use crate::tls::TestCa;
use crate::{free_port, tools};

/// The passwords `deploy/nats/auth.conf` reads from nats-server's environment.
pub const PASSWORDS: [(&str, &str); 8] = [
    ("PVEFLEET_ADMIN_PASSWORD", "admin-pw"),
    ("PVEFLEET_RECORDER_PASSWORD", "recorder-pw"),
    ("PVEFLEET_WEB_PASSWORD", "web-pw"),
    ("PVEFLEET_COORDINATOR_PASSWORD", "coord-pw"),
    ("PVEFLEET_WATCHER_PASSWORD", "watch-pw"),
    ("PVEFLEET_AGENT_PVE1_PASSWORD", "pve1-pw"),
    ("PVEFLEET_AGENT_PVE2_PASSWORD", "pve2-pw"),
    ("PVEFLEET_ROUTE_PASSWORD", "route-pw"),
];

/// A file of `deploy/`.
pub fn deploy(rel: &str) -> PathBuf {
    tools::workspace_root().join("deploy").join(rel)
}

/// The server's environment: every user's password.
pub fn env() -> Vec<(String, String)> {
    PASSWORDS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A deploy/nats config pointed at loopback ports and the test's store, with auth.conf beside it.
/// `route` is this member's route port and the three members' (a cluster config).
pub fn loopback_config(
    dir: &TestDir,
    file: &str,
    client: u16,
    route: Option<(u16, [u16; 3])>,
) -> anyhow::Result<PathBuf> {
    let home = dir.sub(&format!("nats-{}", file.trim_end_matches(".conf")));
    std::fs::copy(deploy("nats/auth.conf"), home.join("auth.conf"))?;
    let mut text = std::fs::read_to_string(deploy(&format!("nats/{file}")))?
        .replace("listen: 0.0.0.0:4222", &format!("listen: 127.0.0.1:{client}"))
        .replace("http: 127.0.0.1:8222", &format!("http: 127.0.0.1:{}", free_port("127.0.0.1")))
        .replace("store_dir: /var/lib/nats", &format!("store_dir: {:?}", home.join("store")))
        // The test's own CA and certificates (`TestCa::make`), where the configs expect theirs.
        .replace("/etc/nats/tls/", &format!("{}/", dir.path().join("tls").display()));
    if let Some((own, routes)) = route {
        text = text.replace("listen: 0.0.0.0:6222", &format!("listen: 127.0.0.1:{own}"));
        for (i, port) in routes.iter().enumerate() {
            text = text.replace(&format!("nats{}.example.internal:6222", i + 1), &format!("127.0.0.1:{port}"));
        }
    }
    let path = home.join(file);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// One nats-server with the shipped `single.conf` (TLS, `auth.conf`), ready.
pub async fn single(dir: &TestDir) -> anyhow::Result<(NatsServer, TestCa)> {
    let ca = TestCa::make(dir)?;
    let port = free_port("127.0.0.1");
    let config = loopback_config(dir, "single.conf", port, None)?;
    let mut nats = NatsServer::from_config(dir, "nats-single", config, port, env())?;
    nats.ready().await?;
    Ok((nats, ca))
}

/// A client logged in as `user`, over TLS, with its own inbox prefix; the receiver gets every
/// connection event, the server's permission errors among them.
pub async fn restricted_client(
    url: &str,
    ca: &TestCa,
    user: &str,
    password: &str,
    inbox: &str,
) -> anyhow::Result<(async_nats::Client, tokio::sync::mpsc::UnboundedReceiver<String>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .add_root_certificates(ca.ca.clone())
        .require_tls(true)
        .custom_inbox_prefix(inbox)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event.to_string());
            }
        })
        .connect(url)
        .await?;
    Ok((client, rx))
}

/// Waits until the server has refused the client something naming `what`.
pub async fn refused(errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = errors.recv().await {
            if e.contains("Permissions Violation") && e.contains(what) {
                return Ok(());
            }
        }
        anyhow::bail!("the error channel closed")
    })
    .await
    .map_err(|_| anyhow::anyhow!("the server did not refuse {what}"))?
}

/// A request the server must refuse (or answer), sent as the client would.
pub async fn try_request(client: &async_nats::Client, subject: &str, body: serde_json::Value) {
    let _ =
        tokio::time::timeout(Duration::from_secs(2), client.request(subject.to_owned(), body.to_string().into())).await;
}
