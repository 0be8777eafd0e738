//! SSH into a new container (russh + russh-sftp): connect with a key or a password under a
//! deadline, retry while its sshd comes up, run commands (whole or streamed line by line),
//! and upload files over SFTP with exact bytes, mode and owner. One connection serves a job's
//! whole deploy.
//!
//! Host keys are never taken on faith beyond what the caller allows: either the fingerprints
//! PVE announced when it made the container, or (when it announced none) the first key seen,
//! trusted for this job only; a key that changes within the job is refused.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::Retryable as _;
use bytes::Bytes;
use pvefleet_schemas::{LogStream, Secret};
use russh::client::{self, Handle, Msg};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg, Sig};
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::OpenFlags;
use tokio::io::AsyncWriteExt as _;

/// Lines longer than this are cut (the rest of the line is dropped, and the cut is marked),
/// so one runaway line cannot hold unbounded memory.
pub const MAX_LINE: usize = 16 * 1024;

/// One SFTP write: OpenSSH's sftp-server accepts up to 255 KiB of data per request.
const SFTP_WRITE_LEN: usize = 255 * 1024;

/// How a session authenticates.
#[derive(Clone)]
pub enum SshAuth {
    Key(Arc<PrivateKey>),
    Password(Secret),
}

impl std::fmt::Debug for SshAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SshAuth::Key(k) => write!(f, "Key({})", k.public_key().fingerprint(HashAlg::Sha256)),
            SshAuth::Password(_) => f.write_str("Password([redacted])"),
        }
    }
}

/// Which host keys are trusted.
#[derive(Debug, Clone)]
pub enum HostKeyTrust {
    /// Only these `SHA256:…` fingerprints.
    Only(Vec<String>),
    /// The first key seen (for this target, across retries), and only it afterwards.
    FirstSeen,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub addr: SocketAddr,
    pub user: String,
    pub auth: SshAuth,
    pub trust: HostKeyTrust,
    /// For one attempt: TCP connect, handshake and authentication.
    pub connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("connecting to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("connecting to {addr}: no answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("{addr} presented host key {seen}, which is not trusted (trusted: {})", expected.join(", "))]
    HostKey { addr: SocketAddr, seen: String, expected: Vec<String> },
    #[error("{addr} refused {user}'s {method}")]
    Auth { addr: SocketAddr, user: String, method: &'static str },
    #[error("gave up connecting to {addr} after {after:?}: {last}")]
    GaveUp {
        addr: SocketAddr,
        after: Duration,
        /// The last attempt's failure (or that the deadline came mid-attempt).
        last: String,
    },
    #[error("SSH channel: {0}")]
    Channel(String),
    #[error("SFTP {path}: {message}")]
    Sftp { path: String, message: String },
    #[error("reading {path}: {source}")]
    Local {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl SshError {
    /// Whether another attempt may succeed. A wrong host key or refused credentials will not
    /// change by retrying.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SshError::Connect { .. } | SshError::Timeout { .. })
    }
}

/// The russh handler: checks host keys against the trust, remembering what it saw.
struct Client {
    trust: HostKeyTrust,
    /// The first key seen for this target; shared across retries.
    first_seen: Arc<Mutex<Option<String>>>,
    /// The key this connection presented.
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let fp = key.public_key().fingerprint(HashAlg::Sha256).to_string();
        *self.seen.lock().expect("seen") = Some(fp.clone());
        Ok(match &self.trust {
            HostKeyTrust::Only(list) => list.contains(&fp),
            HostKeyTrust::FirstSeen => {
                let mut first = self.first_seen.lock().expect("first seen");
                first.get_or_insert_with(|| fp.clone()) == &fp
            }
        })
    }
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Code(u32),
    Signal {
        name: String,
        core_dumped: bool,
        message: String,
    },
    /// The channel closed without saying.
    Unknown,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "status {c}"),
            ExitStatus::Signal { name, core_dumped, message } => {
                write!(f, "signal {name}{}", if *core_dumped { " (core dumped)" } else { "" })?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            ExitStatus::Unknown => f.write_str("no exit status"),
        }
    }
}

/// A finished command's output.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// The first [`EXEC_OUTPUT_MAX`] bytes of each stream; `cut` says whether there was more.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
    pub cut: bool,
}

/// What [`SshSession::exec`] keeps of a stream: it runs the agent's own short commands, whose
/// answers are a line or two; a command that prints without end is read to its end but not
/// kept. Output meant for people goes through [`SshSession::exec_streaming`].
pub const EXEC_OUTPUT_MAX: usize = 64 * 1024;

fn keep(buf: &mut Vec<u8>, data: &[u8], cut: &mut bool) {
    let room = EXEC_OUTPUT_MAX.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
    *cut |= data.len() > room;
}

/// What to upload.
#[derive(Debug, Clone)]
pub enum UploadSource {
    Bytes(Bytes),
    /// A local file, streamed (never read whole into memory).
    File(PathBuf),
}

/// One SSH connection, reused for everything a job does in its container.
pub struct SshSession {
    handle: Handle<Client>,
    addr: SocketAddr,
    host_key: String,
    sftp: tokio::sync::OnceCell<SftpSession>,
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSession").field("addr", &self.addr).field("host_key", &self.host_key).finish_non_exhaustive()
    }
}

fn config() -> Arc<client::Config> {
    Arc::new(client::Config {
        // Keepalives keep a quiet script's session up through NAT and firewalls, and notice a
        // dead peer: three unanswered in a row end the session.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        inactivity_timeout: None,
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 256 * 1024,
        nodelay: true,
        preferred: russh::Preferred {
            // With AES-NI, AES-GCM moves bulk data (SFTP uploads) faster than ChaCha20.
            cipher: std::borrow::Cow::Borrowed(&[
                russh::cipher::AES_256_GCM,
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_256_CTR,
            ]),
            ..russh::Preferred::DEFAULT
        },
        ..Default::default()
    })
}

impl SshSession {
    /// One attempt, under `target.connect_timeout`.
    pub async fn connect(target: &SshTarget) -> Result<Self, SshError> {
        Self::connect_remembering(target, &Arc::new(Mutex::new(None))).await
    }

    async fn connect_remembering(
        target: &SshTarget,
        first_seen: &Arc<Mutex<Option<String>>>,
    ) -> Result<Self, SshError> {
        let addr = target.addr;
        let seen = Arc::new(Mutex::new(None));
        let handler = Client { trust: target.trust.clone(), first_seen: first_seen.clone(), seen: seen.clone() };
        let attempt = async {
            let mut handle = client::connect(config(), addr, handler).await.map_err(|e| {
                match (e, seen.lock().expect("seen").clone()) {
                    (russh::Error::UnknownKey, Some(seen)) => SshError::HostKey {
                        addr,
                        seen,
                        expected: match &target.trust {
                            HostKeyTrust::Only(list) => list.clone(),
                            HostKeyTrust::FirstSeen => first_seen.lock().expect("first seen").iter().cloned().collect(),
                        },
                    },
                    (e, _) => SshError::Connect { addr, message: e.to_string() },
                }
            })?;
            let (ok, method) = match &target.auth {
                SshAuth::Key(key) => {
                    // RSA keys sign with the best hash the server offers (rsa-sha2-512/256).
                    let hash = handle.best_supported_rsa_hash().await.ok().flatten().flatten();
                    let key = PrivateKeyWithHashAlg::new(key.clone(), hash);
                    let r = handle.authenticate_publickey(&target.user, key).await;
                    (r, "public key")
                }
                SshAuth::Password(pw) => (handle.authenticate_password(&target.user, pw.expose()).await, "password"),
            };
            match ok {
                Ok(r) if r.success() => {}
                Ok(_) => {
                    return Err(SshError::Auth { addr, user: target.user.clone(), method });
                }
                Err(e) => {
                    return Err(SshError::Connect { addr, message: e.to_string() });
                }
            }
            let host_key = seen.lock().expect("seen").clone().unwrap_or_default();
            Ok(Self { handle, addr, host_key, sftp: tokio::sync::OnceCell::new() })
        };
        match tokio::time::timeout(target.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(SshError::Timeout { addr, after: target.connect_timeout }),
        }
    }

    /// Retries with exponential backoff until `deadline` passes, logging each failed attempt;
    /// stops at once on a host-key mismatch or refused credentials.
    pub async fn connect_with_retry(target: &SshTarget, deadline: Duration) -> Result<Self, SshError> {
        let first_seen = Arc::new(Mutex::new(None));
        let retry = crate::retry::ssh_connect();
        let last_error = Arc::new(Mutex::new(None::<String>));
        let attempts = (|| Self::connect_remembering(target, &first_seen))
            .retry(retry)
            .when(SshError::is_retryable)
            .notify(|e, wait| {
                tracing::info!(error = %pvefleet_schemas::report::error_chain(e), retry_in = ?wait, "SSH not ready yet; retrying");
                *last_error.lock().expect("last") = Some(e.to_string());
            });
        match tokio::time::timeout(deadline, attempts).await {
            Ok(r) => r,
            Err(_) => {
                let last =
                    last_error.lock().expect("last").take().unwrap_or_else(|| "the first attempt never ended".into());
                Err(SshError::GaveUp { addr: target.addr, after: deadline, last })
            }
        }
    }

    /// The `SHA256:…` fingerprint of the host key this session trusted.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    async fn channel(&self) -> Result<Channel<Msg>, SshError> {
        self.handle.channel_open_session().await.map_err(|e| SshError::Channel(e.to_string()))
    }

    /// Runs `command` to its end; output may still arrive after the exit status, so this reads
    /// until the channel closes.
    pub async fn exec(&self, command: &str) -> Result<ExecOutput, SshError> {
        let mut channel = self.channel().await?;
        channel.exec(true, command).await.map_err(|e| SshError::Channel(e.to_string()))?;
        let (mut stdout, mut stderr, mut status, mut cut) = (Vec::new(), Vec::new(), ExitStatus::Unknown, false);
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => keep(&mut stdout, &data, &mut cut),
                ChannelMsg::ExtendedData { data, ext: 1 } => keep(&mut stderr, &data, &mut cut),
                ChannelMsg::ExitStatus { exit_status } => status = ExitStatus::Code(exit_status),
                ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, .. } => {
                    status =
                        ExitStatus::Signal { name: signal_name_of(&signal_name), core_dumped, message: error_message }
                }
                _ => {}
            }
        }
        Ok(ExecOutput { stdout, stderr, status, cut })
    }

    /// Starts `command` and hands its output back line by line, in the order produced.
    pub async fn exec_streaming(&self, command: &str) -> Result<RemoteProcess, SshError> {
        let channel = self.channel().await?;
        channel.exec(true, command).await.map_err(|e| SshError::Channel(e.to_string()))?;
        Ok(RemoteProcess {
            channel,
            stdout: LineSplitter::default(),
            stderr: LineSplitter::default(),
            ready: VecDeque::new(),
            status: ExitStatus::Unknown,
            closed: false,
        })
    }

    async fn sftp(&self) -> Result<&SftpSession, SshError> {
        self.sftp
            .get_or_try_init(|| async {
                let channel = self.channel().await?;
                channel.request_subsystem(true, "sftp").await.map_err(|e| SshError::Channel(e.to_string()))?;
                // Bigger, more numerous writes in flight than russh-sftp's defaults (32 KiB × 16):
                // OpenSSH takes 255 KiB writes, and loopback/LAN uploads are bound by round trips.
                let config = russh_sftp::client::Config {
                    max_write_packet_len: SFTP_WRITE_LEN as u32 + 64,
                    max_concurrent_writes: 64,
                    ..Default::default()
                };
                SftpSession::new_with_config(channel.into_stream(), config)
                    .await
                    .map_err(|e| SshError::Sftp { path: "-".into(), message: e.to_string() })
            })
            .await
    }

    /// Creates `dir` and its missing parents.
    pub async fn create_dirs(&self, dir: &str) -> Result<(), SshError> {
        let sftp = self.sftp().await?;
        let mut path = String::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            path.push('/');
            path.push_str(part);
            if sftp.try_exists(path.clone()).await.unwrap_or(false) {
                continue;
            }
            if let Err(e) = sftp.create_dir(path.clone()).await {
                // Someone else may have made it meanwhile.
                if !sftp.try_exists(path.clone()).await.unwrap_or(false) {
                    return Err(SshError::Sftp { path, message: e.to_string() });
                }
            }
        }
        Ok(())
    }

    /// Writes `source` to `remote` with exactly `mode` (set after writing, so the server's
    /// umask cannot change it) and, when asked, `owner` (`user` or `user:group`). Parent
    /// directories are created. Returns the bytes written.
    pub async fn upload(
        &self,
        source: &UploadSource,
        remote: &str,
        mode: u32,
        owner: Option<&str>,
    ) -> Result<u64, SshError> {
        let sftp_err = |message: String| SshError::Sftp { path: remote.to_owned(), message };
        if let Some((parent, _)) = remote.rsplit_once('/')
            && !parent.is_empty()
        {
            self.create_dirs(parent).await?;
        }
        let sftp = self.sftp().await?;
        let mut file = sftp
            .open_with_flags(remote, OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE)
            .await
            .map_err(|e| sftp_err(e.to_string()))?;
        let written = match source {
            UploadSource::Bytes(bytes) => {
                file.write_all(bytes).await.map_err(|e| sftp_err(e.to_string()))?;
                bytes.len() as u64
            }
            UploadSource::File(path) => {
                let mut chunks = read_chunks(path.clone());
                let mut written = 0u64;
                while let Some(chunk) = chunks.recv().await {
                    let chunk = chunk.map_err(|source| SshError::Local { path: path.display().to_string(), source })?;
                    file.write_all(&chunk).await.map_err(|e| sftp_err(e.to_string()))?;
                    written += chunk.len() as u64;
                }
                written
            }
        };
        file.shutdown().await.map_err(|e| sftp_err(e.to_string()))?;
        let mut attrs = russh_sftp::protocol::FileAttributes::empty();
        attrs.permissions = Some(mode);
        sftp.set_metadata(remote, attrs).await.map_err(|e| sftp_err(format!("setting mode {mode:04o}: {e}")))?;
        if let Some(owner) = owner {
            let out = self.exec(&format!("chown -- {} {}", shell_quote(owner), shell_quote(remote))).await?;
            if !out.status.success() {
                return Err(sftp_err(format!(
                    "chown {owner} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(written)
    }

    /// Ends the session politely.
    pub async fn close(self) {
        if let Some(sftp) = self.sftp.get() {
            let _ = sftp.close().await;
        }
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
}

fn signal_name_of(sig: &Sig) -> String {
    format!("{sig:?}").trim_start_matches("Custom(\"").trim_end_matches("\")").to_owned()
}

/// A running remote command whose output is read line by line.
pub struct RemoteProcess {
    channel: Channel<Msg>,
    stdout: LineSplitter,
    stderr: LineSplitter,
    ready: VecDeque<(LogStream, String)>,
    status: ExitStatus,
    closed: bool,
}

impl std::fmt::Debug for RemoteProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteProcess")
            .field("status", &self.status)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl RemoteProcess {
    /// The next line (stdout or stderr), or `None` once the command has ended and every line
    /// has been handed out; then [`RemoteProcess::status`] says how it ended.
    pub async fn next_line(&mut self) -> Result<Option<(LogStream, String)>, SshError> {
        loop {
            if let Some(line) = self.ready.pop_front() {
                return Ok(Some(line));
            }
            if self.closed {
                return Ok(None);
            }
            match self.channel.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    self.ready.extend(self.stdout.push(&data).into_iter().map(|l| (LogStream::Stdout, l)))
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    self.ready.extend(self.stderr.push(&data).into_iter().map(|l| (LogStream::Stderr, l)))
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => self.status = ExitStatus::Code(exit_status),
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, .. }) => {
                    self.status =
                        ExitStatus::Signal { name: signal_name_of(&signal_name), core_dumped, message: error_message }
                }
                Some(_) => {}
                None => {
                    self.closed = true;
                    self.ready.extend(self.stdout.finish().map(|l| (LogStream::Stdout, l)));
                    self.ready.extend(self.stderr.finish().map(|l| (LogStream::Stderr, l)));
                }
            }
        }
    }

    pub fn status(&self) -> &ExitStatus {
        &self.status
    }

    /// Stops the command (SIGTERM, then the channel is closed, which hangs up its pipes).
    pub async fn kill(&mut self) {
        let _ = self.channel.signal(Sig::TERM).await;
        let _ = self.channel.close().await;
    }
}

/// Joins bytes arriving in packets into lines; cuts lines longer than [`MAX_LINE`].
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// Dropping the rest of a line that was cut.
    cutting: bool,
}

impl LineSplitter {
    /// Feeds bytes; returns the lines they complete.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    if !self.cutting {
                        self.take(&data[..i], &mut lines);
                        let line = std::mem::take(&mut self.partial);
                        lines.push(decode(&line));
                    }
                    self.cutting = false;
                    data = &data[i + 1..];
                }
                None => {
                    if !self.cutting {
                        self.take(data, &mut lines);
                    }
                    data = &[];
                }
            }
        }
        lines
    }

    fn take(&mut self, bytes: &[u8], lines: &mut Vec<String>) {
        let room = MAX_LINE - self.partial.len();
        if bytes.len() <= room {
            self.partial.extend_from_slice(bytes);
        } else {
            self.partial.extend_from_slice(&bytes[..room]);
            let mut line = decode(&std::mem::take(&mut self.partial));
            line.push_str(&format!(" …[line cut at {MAX_LINE} bytes]"));
            lines.push(line);
            self.cutting = true;
        }
    }

    /// The last line, if the output did not end with a newline.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.partial);
        (!rest.is_empty() && !self.cutting).then(|| decode(&rest))
    }
}

fn decode(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.strip_suffix('\r').unwrap_or(&text).to_owned()
}

/// Reads a local file on a blocking thread in 1 MiB chunks, two ahead of the upload: big
/// reads keep thread hand-offs few, and at most ~3 MiB of the file is in memory at once.
fn read_chunks(path: PathBuf) -> tokio::sync::mpsc::Receiver<std::io::Result<Bytes>> {
    const CHUNK: usize = 1 << 20;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            if filled == 0 {
                return;
            }
            buf.truncate(filled);
            if tx.blocking_send(Ok(buf.into())).is_err() {
                return; // the upload was abandoned
            }
        }
    });
    rx
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A fresh ed25519 key for one job.
pub fn job_key() -> PrivateKey {
    PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519).expect("ed25519 key generation")
}

/// `SHA256:…` fingerprints in a PVE task log (the create task prints the new container's
/// host keys).
pub fn fingerprints_in(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split_whitespace()
        .filter(|w| w.starts_with("SHA256:") && w.len() > 20)
        .map(|w| w.trim_end_matches([',', '.', ')']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_join_across_packets_and_long_ones_are_cut() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"hel"), Vec::<String>::new());
        assert_eq!(s.push(b"lo\nwor"), vec!["hello"]);
        assert_eq!(s.push(b"ld\r\n\nlast"), vec!["world", ""]);
        assert_eq!(s.finish(), Some("last".to_owned()));

        let mut s = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE + 100];
        let mut lines = s.push(&long[..MAX_LINE / 2]);
        lines.extend(s.push(&long[MAX_LINE / 2..]));
        lines.extend(s.push(b"tail\nnext\n"));
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with(&"x".repeat(MAX_LINE)) && lines[0].ends_with("cut at 16384 bytes]"));
        assert_eq!(lines[1], "next");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn fingerprints_from_pve_log_lines() {
        let line = "done: SHA256:Qe3o1kFvC7f2mN9rT0yZp4sLw8XjHbUaEcVdGiKq6Ro root@ct101";
        assert_eq!(fingerprints_in(line).collect::<Vec<_>>(), ["SHA256:Qe3o1kFvC7f2mN9rT0yZp4sLw8XjHbUaEcVdGiKq6Ro"]);
        assert_eq!(fingerprints_in("extracting archive").count(), 0);
    }
}
