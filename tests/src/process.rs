//! A child process whose output goes to a log in the test dir, killed when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

use crate::dir::TestDir;

#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `<dir>/<name>.log`.
    pub fn spawn(dir: &TestDir, name: &str, mut cmd: Command) -> anyhow::Result<Self> {
        let log = dir.path().join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        dir.register_log(log.clone());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self { name: name.to_owned(), child: Some(child), log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log so far, for assertions and error messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited, with its status.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends a signal (SIGTERM for a graceful stop).
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = self.pid().context("process already reaped")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
            .with_context(|| format!("signalling {}", self.name))
    }

    /// SIGKILL and reap: the crash a test simulates.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A process that ended before the test stopped it says so in its log: a crash, or a
            // kill from outside the test, would otherwise leave no trace there.
            if let Ok(Some(status)) = child.try_wait() {
                self.note(&format!("[testbed] {} had already exited ({status}) when the test stopped it", self.name));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Appends a line of the test bed's own to the process's log.
    fn note(&self, line: &str) {
        use std::io::Write as _;
        if let Ok(mut log) = std::fs::OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(log, "{line}");
        }
    }

    /// Waits (polling, up to `within`) for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, within: std::time::Duration) -> anyhow::Result<std::process::ExitStatus> {
        let name = self.name.clone();
        let status = crate::wait_until(&format!("{name} to exit"), within, || {
            let s = self.try_wait();
            async move { s }
        })
        .await?;
        self.child = None;
        Ok(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The CPU time process `pid` has used, in milliseconds, summed over its threads from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds; `stat`'s 10 ms ticks are too coarse for a job);
/// a thread that ends while it is read is left out. For the benchmarks.
pub fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else { continue };
        ns += text.split_whitespace().next().unwrap_or("0").parse::<u64>()?;
    }
    Ok(ns as f64 / 1e6)
}

/// A `/proc/<pid>/status` figure in MB (`VmRSS`, `VmHWM`). For the benchmarks.
pub fn mem_mb(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim_start_matches(':').split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// The `p` quantile (0–1) of `values`, the nearest rank; NaN when there are none. For the
/// benchmarks.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}
