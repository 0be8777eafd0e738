//! OpenSSH's sshd on a chosen `127.0.0.x`, with a temp host key and the sftp subsystem. It
//! plays the containers: fakepve reports a container with `ip=127.0.0.x/32` at that address,
//! and writes the keys the create request carried to the file this sshd reads.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::AsyncReadExt as _;

use crate::dir::TestDir;
use crate::process::Proc;
use crate::{free_port, tools, wait_until};

#[derive(Debug)]
pub struct Sshd {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The file sshd reads authorized keys from (fakepve's launcher writes it on create).
    pub authorized_keys: PathBuf,
    /// `ssh-ed25519 AAAA…` of the host key.
    pub host_public_key: String,
    /// The user tests log in as: whoever runs the tests.
    pub user: String,
    config: PathBuf,
    dir: TestDir,
    proc: Option<Proc>,
}

impl Sshd {
    /// Starts sshd on `ip` (a `127.0.0.x`), reading authorized keys from `keys_dir/<ip>`.
    pub async fn start(dir: &TestDir, ip: Ipv4Addr, keys_dir: &std::path::Path) -> anyhow::Result<Self> {
        let mut sshd = Self::prepare(dir, ip, keys_dir)?;
        sshd.launch().await?;
        Ok(sshd)
    }

    /// Writes the config and host key but does not start sshd yet (for tests of a server that
    /// comes up late); call [`Sshd::launch`].
    pub fn prepare(dir: &TestDir, ip: Ipv4Addr, keys_dir: &std::path::Path) -> anyhow::Result<Self> {
        tools::sshd()?;
        let home = dir.sub(&format!("sshd-{ip}"));
        let host_key = home.join("ssh_host_ed25519_key");
        keygen(&host_key, "")?;
        let host_public_key = std::fs::read_to_string(host_key.with_extension("pub"))?
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::create_dir_all(keys_dir)?;
        let authorized_keys = keys_dir.join(ip.to_string());
        let port = free_port(&ip.to_string());
        let config = home.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {ip}:{port}\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {keys}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 ClientAliveInterval 15\n\
                 MaxStartups 100\n\
                 Subsystem sftp internal-sftp -u 0077\n\
                 LogLevel VERBOSE\n",
                host_key = host_key.display(),
                pid = home.join("sshd.pid").display(),
                keys = authorized_keys.display(),
            ),
        )?;
        Ok(Self {
            ip,
            port,
            authorized_keys,
            host_public_key,
            user: current_user()?,
            config,
            dir: dir.clone(),
            proc: None,
        })
    }

    /// Sets sshd's `LogLevel` before [`Sshd::launch`] (`DEBUG1` logs every authentication
    /// request with its method, which tests read to prove what a client tried).
    pub fn log_level(&self, level: &str) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.config)?;
        std::fs::write(&self.config, text.replace("LogLevel VERBOSE", &format!("LogLevel {level}")))?;
        Ok(())
    }

    /// Starts the prepared sshd and waits until it answers with its SSH banner.
    pub async fn launch(&mut self) -> anyhow::Result<()> {
        // sshd insists on its privilege-separation dir, which lives in /run (a tmpfs that a
        // fresh boot may not have populated); it is empty and owned by root.
        if !std::path::Path::new("/run/sshd").is_dir() {
            std::fs::create_dir_all("/run/sshd").context(
                "sshd needs /run/sshd; create it (as root: `mkdir -p /run/sshd`) or run `bash scripts/bootstrap`",
            )?;
        }
        let mut cmd = Command::new(tools::sshd()?);
        cmd.arg("-D").arg("-e").arg("-f").arg(&self.config);
        let name = format!("sshd-{}", self.ip);
        self.proc = Some(Proc::spawn(&self.dir, &name, cmd)?);
        let addr = (self.ip, self.port);
        let proc = self.proc.as_mut().expect("just started");
        wait_until(&format!("{name} on {}:{}", addr.0, addr.1), Duration::from_secs(15), || {
            let exited = proc.try_wait();
            async move {
                if let Some(status) = exited {
                    return Some(Err(anyhow::anyhow!("sshd exited early with {status}")));
                }
                let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
                let mut banner = [0u8; 8];
                stream.read_exact(&mut banner).await.ok()?;
                Some(if banner.starts_with(b"SSH-2.0") {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("unexpected banner {banner:?}"))
                })
            }
        })
        .await?
        .with_context(|| {
            format!("sshd: see {}", self.proc.as_ref().map(|p| p.log().display().to_string()).unwrap_or_default())
        })
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// A `known_hosts` line for this server, as OpenSSH writes it for a non-standard port.
    pub fn known_hosts_line(&self) -> String {
        format!("[{}]:{} {}", self.ip, self.port, self.host_public_key)
    }

    /// The host key's `SHA256:…` fingerprint, as PVE prints it and `ssh-keygen -l` shows it.
    pub fn host_fingerprint(&self) -> String {
        russh::keys::PublicKey::from_openssh(&self.host_public_key)
            .expect("the host key parses")
            .fingerprint(russh::keys::HashAlg::Sha256)
            .to_string()
    }

    /// sshd's log so far (it logs every auth decision at VERBOSE).
    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }
}

/// Makes an ed25519 key pair at `path` (and `path.pub`) with OpenSSH's ssh-keygen.
pub fn keygen(path: &std::path::Path, comment: &str) -> anyhow::Result<()> {
    let out = Command::new(tools::openssh_client("ssh-keygen")?)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!("ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn current_user() -> anyhow::Result<String> {
    let out = Command::new("id").arg("-un").output().context("running `id -un`")?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}
