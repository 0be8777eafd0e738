//! The deploying step: packages (with the container's own package manager), files over SFTP,
//! then scripts whose output streams back line by line — all over one SSH connection, each
//! item checkpointed so a redelivered job does not redo what already succeeded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pvefleet_schemas::{ErrorKind, LogStream, ScriptSpec, Step};

use super::CreateJob;
use super::keys::load_key;
use crate::jobs::checks::resolve_source;
use crate::jobs::{StepError, StepResult};
use crate::ssh::{ExitStatus, HostKeyTrust, SshAuth, SshError, SshSession, SshTarget, UploadSource, shell_quote};

/// A script's lines forwarded as events, at most; the rest is counted, not sent, so a script
/// printing without end cannot flood the events stream.
pub const MAX_SCRIPT_LINES: usize = 10_000;

/// A job's script output forwarded as events, at most, over all its scripts: the events
/// stream keeps a week of every job, on every replica.
pub const MAX_JOB_LOG_BYTES: usize = 16 * 1024 * 1024;

/// Lines kept for an error message.
const TAIL_LINES: usize = 20;

/// The deploy item that marks a clone's shared key swapped for the job's own.
const TEMPLATE_KEY_SWAPPED: &str = "template-key-swapped";

impl From<SshError> for StepError {
    fn from(e: SshError) -> Self {
        StepError::failed(ErrorKind::Ssh, e.to_string())
    }
}

/// How an operator reads a command's end.
struct Finished {
    status: ExitStatus,
    tail: Vec<String>,
}

impl CreateJob<'_> {
    /// The public half of the job's key, for the container's authorized keys.
    pub(crate) fn job_public_key(&self) -> Option<String> {
        let key = load_key(self.sealing, &self.job.job_id, self.core.cp.ssh_key.as_ref()?).ok()?;
        let mut line = key.public_key().to_openssh().ok()?;
        line.push_str(&format!(" pvefleet-job-{}", self.job.job_id.short()));
        Some(line)
    }

    /// Connects to the container (retrying while its sshd comes up) and keeps the session.
    pub(crate) async fn open_ssh(&mut self) -> StepResult {
        let ip = self.core.cp.ip.expect("connecting found the address");
        let own =
            self.core.cp.ssh_key.as_ref().map(|sealed| load_key(self.sealing, &self.job.job_id, sealed)).transpose()?;
        let shared = self.ssh_config.clone_key.as_ref().map(|k| k.key.clone());
        // A clone logs in first with the key its template trusts (PVE cannot give a clone the
        // job's own), until the deploy has swapped the job's key in for it; whichever is
        // refused, the other is tried (an agent may stop between the swap and its checkpoint).
        let swapped = self.core.cp.deployed.iter().any(|d| d == TEMPLATE_KEY_SWAPPED);
        let (key, other) = match (own, shared) {
            (Some(own), Some(shared)) if self.job.container.clone.is_some() && !swapped => (shared, Some(own)),
            (Some(own), shared) => (own, shared.filter(|_| self.job.container.clone.is_some())),
            (None, Some(shared)) => (shared, None),
            (None, None) => {
                return Err(StepError::failed(ErrorKind::Internal, "the job has no SSH key"));
            }
        };
        // Keys PVE announced when it made the container, and those the operator listed.
        let vouched: Vec<String> =
            self.core.cp.announced_host_keys.iter().chain(&self.job.container.ssh_host_keys).cloned().collect();
        let trust = match (&self.core.cp.host_key, vouched.is_empty()) {
            // Trusted on an earlier connection of this job: a change is an error.
            (Some(known), _) => HostKeyTrust::Only(vec![known.clone()]),
            (None, false) => HostKeyTrust::Only(vouched.clone()),
            (None, true) => HostKeyTrust::FirstSeen,
        };
        // Whether the host's key was vouched for (not merely the first one seen), which a
        // password needs: it is sent only to a host known to be the container.
        let host_vouched = match &self.core.cp.host_key {
            Some(known) => vouched.contains(known),
            None => !vouched.is_empty(),
        };
        let target = SshTarget {
            addr: SocketAddr::new(ip, self.ssh_config.port),
            user: self.ssh_config.user.clone(),
            auth: SshAuth::Key(key),
            trust: trust.clone(),
            connect_timeout: self.ssh_config.connect_timeout,
        };
        // The agent's `ssh.retry_for` caps what a job's `timeouts.ssh` may ask.
        let deadline = self.timeouts().ssh.0.min(self.ssh_config.retry_for);
        let mut connected = SshSession::connect_with_retry(&target, deadline).await;
        if let (Err(SshError::Auth { .. }), Some(other)) = (&connected, other) {
            connected =
                SshSession::connect_with_retry(&SshTarget { auth: SshAuth::Key(other), ..target.clone() }, deadline)
                    .await;
        }
        let session = match connected {
            Ok(s) => s,
            // A spec with a root password may log in with it when the key is refused, but only
            // to a host whose key PVE announced or the spec lists: a neighbour on the bridge
            // answering first would otherwise be handed the password.
            Err(SshError::Auth { .. }) if self.password.is_some() && host_vouched => {
                let password = self.password.clone().expect("checked");
                SshSession::connect_with_retry(&SshTarget { auth: SshAuth::Password(password), ..target }, deadline)
                    .await?
            }
            Err(e @ SshError::Auth { .. }) if self.password.is_some() => {
                return Err(StepError::failed(
                    ErrorKind::Ssh,
                    format!(
                        "{e}; the root password was not tried, since the host's key was neither announced by PVE \
                         nor listed in container.ssh_host_keys"
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        if matches!(trust, HostKeyTrust::FirstSeen) && self.core.cp.host_key.is_none() {
            self.core
                .events
                .warning(format!(
                    "PVE announced no host key for the container; trusting the first one seen for this job: {}",
                    session.host_key()
                ))
                .await?;
        }
        self.core.cp.host_key = Some(session.host_key().to_owned());
        self.core.save().await?;
        self.core
            .events
            .log(LogStream::Task, format!("connected over SSH to {} (host key {})", target.addr, session.host_key()))
            .await?;
        self.ssh = Some(Arc::new(session));
        Ok(())
    }

    async fn session(&mut self) -> Result<Arc<SshSession>, StepError> {
        if self.ssh.is_none() {
            // Resumed after connecting: the same host key must answer.
            self.open_ssh().await?;
        }
        Ok(self.ssh.clone().expect("just opened"))
    }

    pub(crate) async fn close_ssh(&mut self, ssh: Arc<SshSession>) {
        if let Some(dir) = self.remote_tmp.take() {
            let _ = ssh.exec(&format!("rm -rf -- {}", shell_quote(&dir))).await;
        }
        if let Ok(ssh) = Arc::try_unwrap(ssh) {
            ssh.close().await;
        }
    }

    /// Packages, then files, then scripts; each done once.
    pub(crate) async fn deploy(&mut self) -> StepResult {
        let deploy = &self.job.deploy;
        if deploy.is_empty() {
            self.core.events.log(LogStream::Task, "nothing to deploy").await?;
            if self.job.container.clone.is_some() && self.ssh_config.clone_key.is_some() {
                self.core
                    .events
                    .warning(
                        "a clone without a deploy is never logged into, so it keeps every key its template trusts \
                         (ssh.key_file's too, if the template has it); give it a deploy to have that key swapped out",
                    )
                    .await?;
            }
            return Ok(());
        }
        let total = usize::from(!deploy.packages.is_empty()) + deploy.files.len() + deploy.scripts.len();
        let mut index = 0;
        let mut progress = |what: String| {
            index += 1;
            let percent = 70 + (20 * (index - 1) / total.max(1)) as u8;
            (percent, format!("deploying {index}/{total}: {what}"))
        };
        self.swap_template_key().await?;
        if !deploy.packages.is_empty() {
            let (percent, message) = progress(format!("packages {}", deploy.packages.join(" ")));
            self.item("packages".into(), percent, message, |job| Box::pin(job.install_packages())).await?;
        }
        for (i, file) in deploy.files.iter().enumerate() {
            let (percent, message) = progress(format!("file {}", file.path));
            self.item(format!("file:{}", file.path), percent, message, move |job| Box::pin(job.write_file(i))).await?;
        }
        for (i, script) in deploy.scripts.iter().enumerate() {
            let (percent, message) = progress(format!("script `{}`", script.name));
            self.item(format!("script:{}", script.name), percent, message, move |job| Box::pin(job.run_script(i)))
                .await?;
        }
        self.remove_job_key().await
    }

    /// On a clone reached with the key its template trusts (`ssh.key_file`, shared by every
    /// clone of the node), puts the job's own key into the clone's authorized keys and takes
    /// that shared key out, in one command; the job's key goes in turn at the deploy's end. So
    /// no key that opens other containers stays in this one, unless `clone.keep_key` asks.
    async fn swap_template_key(&mut self) -> StepResult {
        let Some(clone) = &self.job.container.clone else { return Ok(()) };
        if clone.keep_key || self.core.cp.deployed.iter().any(|d| d == TEMPLATE_KEY_SWAPPED) {
            return Ok(());
        }
        let (Some(shared), Some(own)) = (&self.ssh_config.clone_key, self.job_public_key()) else {
            return Ok(());
        };
        let shared_blob =
            shared.key.public_key().to_openssh().map_err(|e| {
                StepError::failed(ErrorKind::Internal, format!("reading ssh.key_file's public key: {e}"))
            })?;
        let shared_blob = shared_blob.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let file = self.authorized_keys_file();
        let comment = format!(" pvefleet-job-{}$", self.job.job_id.short());
        // Idempotent: a second run removes the shared key (gone already) and writes the job's
        // key once. In place (`cat >`), so the file keeps its owner and mode.
        let command = format!(
            "f={file}; t=\"$f.pvefleet-$$\"; {{ grep -v -F -- {blob} \"$f\" | grep -v -- {comment}; echo {own}; }} > \"$t\" \
             && cat \"$t\" > \"$f\"; s=$?; rm -f \"$t\"; exit $s",
            file = shell_quote(&file),
            blob = shell_quote(&shared_blob),
            comment = shell_quote(&comment),
            own = shell_quote(&own),
        );
        let ssh = self.session().await?;
        let out = ssh.exec(&command).await?;
        if !out.status.success() {
            return Err(StepError::failed(
                ErrorKind::Deploy,
                format!(
                    "swapping the node's clone key (ssh.key_file) for the job's own in {file} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        self.core
            .events
            .log(LogStream::Task, format!("replaced the node's clone key with the job's own in {file}"))
            .await?;
        self.core.cp.deployed.push(TEMPLATE_KEY_SWAPPED.to_owned());
        self.core.save().await?;
        Ok(())
    }

    /// The container's authorized keys file (`ssh.authorized_keys`, `%a` its address).
    fn authorized_keys_file(&self) -> String {
        let ip = self.core.cp.ip.map(|ip| ip.to_string()).unwrap_or_default();
        self.ssh_config.authorized_keys.replace("%a", &ip)
    }

    /// Takes the job's own public key out of the container's authorized keys (the keys the
    /// spec asked for stay): a copy of its private key, wherever it went, opens nothing.
    async fn remove_job_key(&mut self) -> StepResult {
        const DONE: &str = "job-key-removed";
        // A clone that keeps its template's key never had the job's.
        let never_had = self.job.container.clone.as_ref().is_some_and(|c| c.keep_key);
        if self.core.cp.deployed.iter().any(|d| d == DONE) || self.core.cp.ssh_key.is_none() || never_had {
            return Ok(());
        }
        let comment = format!(" pvefleet-job-{}", self.job.job_id.short());
        let file = self.authorized_keys_file();
        // In place (`cat >`), so the file keeps its owner and mode; only lines ending with the
        // job's comment go.
        let command = format!(
            "f={file}; if [ -f \"$f\" ]; then t=\"$f.pvefleet-$$\"; grep -v -- {comment} \"$f\" > \"$t\"; cat \"$t\" > \"$f\"; rm -f \"$t\"; fi",
            file = shell_quote(&file),
            comment = shell_quote(&format!("{comment}$")),
        );
        let removed = match self.session().await {
            Ok(ssh) => ssh.exec(&command).await.map_err(StepError::from).map(|out| out.status),
            Err(e) => Err(e),
        };
        match removed {
            Ok(status) if status.success() => {
                self.core.events.log(LogStream::Task, format!("removed the job's own key from {file}")).await?;
            }
            // Cleaning up never fails a deployed container; say what is left.
            Ok(status) => {
                self.core.events.warning(format!("removing the job's key from {file} failed ({status})")).await?
            }
            Err(StepError::Failed { message, .. }) => {
                self.core.events.warning(format!("the job's key could not be removed from {file}: {message}")).await?
            }
            Err(e @ StepError::Bus(_)) => return Err(e),
        }
        self.core.cp.deployed.push(DONE.to_owned());
        self.core.save().await?;
        Ok(())
    }

    /// Runs one deploy item unless an earlier delivery did, then checkpoints it.
    async fn item<F>(&mut self, key: String, percent: u8, message: String, run: F) -> StepResult
    where
        F: for<'j> FnOnce(&'j mut Self) -> std::pin::Pin<Box<dyn std::future::Future<Output = StepResult> + Send + 'j>>,
    {
        if self.core.cp.deployed.contains(&key) {
            self.core.events.log(LogStream::Task, format!("{message}: done by an earlier delivery")).await?;
            return Ok(());
        }
        self.core.events.step_event(Step::Deploying, percent, message).await?;
        run(self).await?;
        self.core.cp.deployed.push(key);
        self.core.save().await?;
        Ok(())
    }

    async fn install_packages(&mut self) -> StepResult {
        let ssh = self.session().await?;
        let found = ssh
            .exec("for pm in apt-get dnf yum apk; do if command -v $pm >/dev/null 2>&1; then echo $pm; exit 0; fi; done; exit 1")
            .await?;
        let manager = String::from_utf8_lossy(&found.stdout).trim().to_owned();
        let packages = self.job.deploy.packages.iter().map(|p| shell_quote(p)).collect::<Vec<_>>().join(" ");
        let (install, refresh) = match manager.as_str() {
            "apt-get" => (
                format!("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {packages}"),
                Some("DEBIAN_FRONTEND=noninteractive apt-get update -q"),
            ),
            "dnf" | "yum" => (format!("{manager} install -y {packages}"), None),
            "apk" => (format!("apk add --no-cache {packages}"), None),
            _ => {
                return Err(StepError::failed(
                    ErrorKind::Deploy,
                    "deploy.packages: no package manager found in the container (looked for apt-get, dnf, yum, apk)",
                ));
            }
        };
        let timeout = self.timeouts().script.0;
        let mut done = self.run_streamed(&ssh, &install, "packages", timeout).await?;
        if !done.status.success()
            && let Some(refresh) = refresh
        {
            // A fresh container has no package lists: fetch them once and try again.
            self.core
                .events
                .log(LogStream::Task, "installing failed; refreshing the package lists and retrying")
                .await?;
            let refreshed = self.run_streamed(&ssh, refresh, "packages", timeout).await?;
            if refreshed.status.success() {
                done = self.run_streamed(&ssh, &install, "packages", timeout).await?;
            }
        }
        if !done.status.success() {
            return Err(StepError::failed(
                ErrorKind::Deploy,
                format!(
                    "installing packages with {manager} failed ({}); last output:\n{}",
                    done.status,
                    done.tail.join("\n")
                ),
            ));
        }
        Ok(())
    }

    async fn write_file(&mut self, i: usize) -> StepResult {
        let ssh = self.session().await?;
        let file = &self.job.deploy.files[i];
        let source = match (&file.content, &file.source, &file.sealed) {
            (Some(text), _, _) => UploadSource::Bytes(text.clone().into_bytes().into()),
            (None, Some(source), _) => {
                // Checked at validating; checked again, as the file system may have changed.
                let path = resolve_source(self.files_dir, source)
                    .map_err(|why| StepError::failed(ErrorKind::Deploy, format!("deploy.files[{i}].source: {why}")))?;
                UploadSource::File(path)
            }
            (None, None, Some(sealed)) => {
                let secret = self
                    .sealing
                    .open_for_job(&self.job.job_id, sealed)
                    .map_err(|e| StepError::failed(ErrorKind::Validation, format!("deploy.files[{i}].sealed: {e}")))?;
                UploadSource::Bytes(secret.expose().as_bytes().to_vec().into())
            }
            (None, None, None) => unreachable!("validation demands content, source or sealed"),
        };
        let bytes = ssh.upload(&source, &file.path, file.mode.bits(), file.owner.as_deref()).await?;
        self.core
            .events
            .log(
                LogStream::Task,
                format!(
                    "wrote {} ({bytes} bytes, mode {}{})",
                    file.path,
                    file.mode,
                    file.owner.as_ref().map(|o| format!(", owner {o}")).unwrap_or_default()
                ),
            )
            .await?;
        Ok(())
    }

    async fn run_script(&mut self, i: usize) -> StepResult {
        let ssh = self.session().await?;
        let script: &ScriptSpec = &self.job.deploy.scripts[i];
        let dir = match &self.remote_tmp {
            Some(d) => d.clone(),
            None => {
                let made = ssh.exec("mktemp -d /tmp/pvefleet.XXXXXXXX").await?;
                let dir = String::from_utf8_lossy(&made.stdout).trim().to_owned();
                if !made.status.success() || dir.is_empty() {
                    return Err(StepError::failed(
                        ErrorKind::Deploy,
                        format!("making a temp dir in the container failed ({})", made.status),
                    ));
                }
                self.remote_tmp = Some(dir.clone());
                dir
            }
        };
        let path = format!("{dir}/script-{i}");
        ssh.upload(&UploadSource::Bytes(script.body.clone().into_bytes().into()), &path, 0o700, None).await?;
        let timeout = script.timeout.unwrap_or(self.timeouts().script).0;
        let command = format!("{} {}", script.interpreter, shell_quote(&path));
        let done = self.run_streamed(&ssh, &command, &format!("script `{}`", script.name), timeout).await?;
        if !done.status.success() {
            return Err(StepError::failed(
                ErrorKind::Deploy,
                format!("script `{}` exited with {}; last output:\n{}", script.name, done.status, done.tail.join("\n")),
            ));
        }
        Ok(())
    }

    /// Runs a command, forwarding its lines as `log` events (up to [`MAX_SCRIPT_LINES`]),
    /// under `timeout`.
    async fn run_streamed(
        &mut self,
        ssh: &SshSession,
        command: &str,
        label: &str,
        timeout: Duration,
    ) -> Result<Finished, StepError> {
        let mut process = ssh.exec_streaming(command).await?;
        let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let mut forwarded = 0usize;
        let mut dropped = 0usize;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, process.next_line()).await {
                Ok(next) => next?,
                Err(_) => {
                    process.kill().await;
                    return Err(StepError::failed(
                        ErrorKind::Timeout,
                        format!("{label} ran past its timeout of {timeout:?} and was stopped"),
                    ));
                }
            };
            let Some((stream, line)) = next else { break };
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
            let room = forwarded < MAX_SCRIPT_LINES && self.log_bytes + line.len() <= MAX_JOB_LOG_BYTES;
            if room {
                forwarded += 1;
                self.log_bytes += line.len();
                self.core.events.log(stream, line).await?;
            } else {
                if dropped == 0 {
                    let why = if forwarded == MAX_SCRIPT_LINES {
                        format!("{MAX_SCRIPT_LINES} lines forwarded")
                    } else {
                        format!("the job's output reached {} MiB", MAX_JOB_LOG_BYTES >> 20)
                    };
                    self.core.events.warning(format!("{label}: {why}; further output is not sent as events")).await?;
                }
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.core.events.warning(format!("{label}: {dropped} more lines were not forwarded")).await?;
        }
        Ok(Finished { status: process.status().clone(), tail: tail.into_iter().collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_come_only_from_the_files_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let files = tmp.path().join("files");
        std::fs::create_dir_all(files.join("sub")).unwrap();
        std::fs::write(files.join("sub/ok.conf"), "ok").unwrap();
        std::fs::write(tmp.path().join("secret"), "token").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), files.join("leak")).unwrap();
        std::os::unix::fs::symlink(files.join("sub/ok.conf"), files.join("alias")).unwrap();

        let real = files.canonicalize().unwrap().join("sub/ok.conf");
        assert_eq!(resolve_source(&files, "sub/ok.conf").unwrap(), real);
        assert_eq!(resolve_source(&files, &files.join("sub/ok.conf").display().to_string()).unwrap(), real);
        assert_eq!(resolve_source(&files, "alias").unwrap(), real);
        for (source, why) in [
            ("/etc/passwd", "outside the agent's files_dir"),
            ("../secret", "contains `..`"),
            ("sub/../../secret", "contains `..`"),
            ("leak", "outside the agent's files_dir"),
            ("sub", "not a regular file"),
            ("missing", "is not a file in"),
        ] {
            let err = resolve_source(&files, source).unwrap_err();
            assert!(err.contains(why), "{source}: {err}");
        }
        let absent = tmp.path().join("absent");
        assert!(resolve_source(&absent, "x").unwrap_err().contains("cannot be read"));
    }
}
