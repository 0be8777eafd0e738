//! Proxmox tasks: UPIDs, and waiting for a task while tailing its log.
//!
//! The first look is at once; then polling backs off from 50 ms to 2 s, so a quick task costs
//! a call or two and a long one about one call every two seconds. The log is read
//! incrementally, and its last line (`TASK OK`, `TASK ERROR: …`, `TASK WARNINGS: n`) is the
//! task's end: the status is read only every few polls, in case a worker died without writing
//! one.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use reqwest::Method;

use super::{PveClient, PveError};

/// A task id as PVE prints it: `UPID:node:pid:pstart:starttime:type:id:user:`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Upid(String);

impl Upid {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn field(&self, i: usize) -> &str {
        self.0.split(':').nth(i).unwrap_or_default()
    }

    pub fn node(&self) -> &str {
        self.field(1)
    }

    /// The task type: `vzcreate`, `vzstart`, …
    pub fn kind(&self) -> &str {
        self.field(5)
    }

    /// Whether the task is let run to its end when its job is cancelled: stopped half-way, it
    /// would leave the container neither as it was nor as asked (a rollback, a restore, a
    /// migration, a snapshot being taken or deleted).
    pub fn runs_to_its_end(&self) -> bool {
        ["vzrollback", "vzrestore", "vzmigrate", "hamigrate", "vzsnapshot", "vzdelsnapshot"].contains(&self.kind())
    }

    /// The guest the task is about (its id field), if it names one.
    pub fn id(&self) -> &str {
        self.field(6)
    }

    /// When the task began, in seconds since the epoch (its fifth field, hex).
    pub fn started(&self) -> Option<u64> {
        u64::from_str_radix(self.field(4), 16).ok()
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Upid({})", self.0)
    }
}

impl FromStr for Upid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("UPID:") && s.split(':').count() >= 8 {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!("`{s}` is not a UPID"))
        }
    }
}

/// How a finished task ended.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    /// `OK`, `WARNINGS: n`, or the error message.
    pub exitstatus: String,
    /// The log's last lines, for error messages.
    pub tail: Vec<String>,
}

/// Why a task failed, told from its exit status and log here and only here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFailure {
    /// A download whose file did not have the digest asked (`checksum mismatch: got … != expect …`).
    ChecksumMismatch { detail: String },
    /// Another task held the guest's lock (`… - got timeout`).
    LockTimeout,
    /// Anything else.
    Other,
}

impl TaskOutcome {
    /// Why the task failed (`None` when it did not).
    pub fn failure(&self) -> Option<TaskFailure> {
        if self.is_ok() {
            return None;
        }
        let lines = std::iter::once(&self.exitstatus).chain(&self.tail);
        if let Some(line) = lines.clone().find(|l| l.contains("checksum mismatch")) {
            let detail = line.trim_start_matches("TASK ERROR: ").trim().to_owned();
            return Some(TaskFailure::ChecksumMismatch { detail });
        }
        if lines.clone().any(|l| l.contains("got timeout")) {
            return Some(TaskFailure::LockTimeout);
        }
        Some(TaskFailure::Other)
    }

    pub fn is_ok(&self) -> bool {
        self.exitstatus == "OK" || self.has_warnings()
    }

    pub fn has_warnings(&self) -> bool {
        self.exitstatus.starts_with("WARNINGS")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TaskWaitError {
    #[error(transparent)]
    Pve(#[from] PveError),
    #[error("task {upid} did not finish within {after:?}")]
    Timeout { upid: Upid, after: Duration },
}

const TAIL: usize = 10;
const PAGE: usize = 500;

/// What a watched task did since the last look.
#[derive(Debug)]
pub enum TaskProgress {
    /// New lines of its log.
    Lines(Vec<String>),
    /// It stopped (any lines not yet handed out came first).
    Done(TaskOutcome),
}

/// Watches one task: call [`TaskWatch::next`] until it yields [`TaskProgress::Done`].
#[derive(Debug)]
pub struct TaskWatch<'a> {
    pve: &'a PveClient,
    upid: Upid,
    base: String,
    deadline: Instant,
    within: Duration,
    next_line: usize,
    tail: Vec<String>,
    pause: Duration,
    polls: u32,
    first: bool,
    /// The end, seen with the lines handed out last.
    ended: Option<TaskOutcome>,
}

impl PveClient {
    /// Starts watching `upid`, which must stop within `within`.
    pub fn watch_task(&self, upid: &Upid, within: Duration) -> TaskWatch<'_> {
        TaskWatch {
            pve: self,
            upid: upid.clone(),
            base: format!("/nodes/{}/tasks/{}", upid.node(), upid.as_str()),
            deadline: Instant::now() + within,
            within,
            next_line: 0,
            tail: Vec::new(),
            pause: crate::retry::TASK_LOG.first,
            polls: 0,
            first: true,
            ended: None,
        }
    }
}

impl TaskWatch<'_> {
    /// New log lines, or the task's end. The end is reported as soon as it is seen: the
    /// worker's last log line says how it ended (`TASK OK`, `TASK ERROR: …`, `TASK WARNINGS:
    /// n`), so no status call is needed; the status is read only every few polls without new
    /// lines, in case a worker died without writing one.
    pub async fn next(&mut self) -> Result<TaskProgress, TaskWaitError> {
        if let Some(outcome) = self.ended.take() {
            return Ok(TaskProgress::Done(outcome));
        }
        loop {
            if !std::mem::take(&mut self.first) {
                if Instant::now() >= self.deadline {
                    return Err(TaskWaitError::Timeout { upid: self.upid.clone(), after: self.within });
                }
                tokio::time::sleep(self.pause).await;
                self.pause = crate::retry::TASK_LOG.after(self.pause);
            }
            let mut lines = self.read_log().await?;
            self.polls += 1;
            let mut ended = lines.iter().rev().find_map(|l| exit_status_of(l));
            if ended.is_none() && self.polls % 4 == 0 {
                let status = self.pve.call(Method::GET, &format!("{}/status", self.base), &[]).await?;
                if status["status"].as_str() == Some("stopped") {
                    // Lines written between the last read and the end.
                    lines.extend(self.read_log().await?);
                    ended = Some(status["exitstatus"].as_str().unwrap_or("unknown").to_owned());
                }
            }
            let ended = ended.map(|exitstatus| TaskOutcome { exitstatus, tail: self.tail.clone() });
            match (lines.is_empty(), ended) {
                (true, Some(outcome)) => return Ok(TaskProgress::Done(outcome)),
                (false, Some(outcome)) => {
                    // Hand out the last lines first; the next call reports the end at once.
                    self.ended = Some(outcome);
                    return Ok(TaskProgress::Lines(lines));
                }
                (false, None) => return Ok(TaskProgress::Lines(lines)),
                (true, None) => {}
            }
        }
    }

    async fn read_log(&mut self) -> Result<Vec<String>, PveError> {
        let mut out = Vec::new();
        loop {
            let params = [("start", self.next_line.to_string()), ("limit", PAGE.to_string())];
            let data = self.pve.call(Method::GET, &format!("{}/log", self.base), &params).await?;
            let n = data.as_array().map_or(0, Vec::len);
            self.next_line += n;
            out.extend(
                data.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l["t"].as_str())
                    .filter(|l| *l != "no content")
                    .map(str::to_owned),
            );
            if n < PAGE {
                remember(&mut self.tail, &out);
                return Ok(out);
            }
        }
    }
}

/// The exit status a worker's last log line states, as the task's status would give it:
/// `TASK OK` → `OK`, `TASK WARNINGS: 2` → `WARNINGS: 2`, `TASK ERROR: why` → `why`.
fn exit_status_of(line: &str) -> Option<String> {
    let rest = line.strip_prefix("TASK ")?;
    if rest == "OK" || rest.starts_with("WARNINGS: ") {
        return Some(rest.to_owned());
    }
    rest.strip_prefix("ERROR: ").map(str::to_owned)
}

fn remember(tail: &mut Vec<String>, lines: &[String]) {
    tail.extend(lines.iter().cloned());
    if tail.len() > TAIL {
        tail.drain(..tail.len() - TAIL);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_tasks_failure_is_told_from_its_words_once() {
        let outcome = |status: &str, tail: &[&str]| TaskOutcome {
            exitstatus: status.into(),
            tail: tail.iter().map(|l| (*l).to_owned()).collect(),
        };
        assert_eq!(outcome("OK", &[]).failure(), None);
        assert_eq!(outcome("WARNINGS: 1", &[]).failure(), None);
        assert_eq!(
            outcome("download task failed", &["TASK ERROR: checksum mismatch: got 'a' != expect 'b'"]).failure(),
            Some(TaskFailure::ChecksumMismatch { detail: "checksum mismatch: got 'a' != expect 'b'".into() })
        );
        assert_eq!(outcome("can't lock file - got timeout", &[]).failure(), Some(TaskFailure::LockTimeout));
        assert_eq!(outcome("unable to create CT 101", &[]).failure(), Some(TaskFailure::Other));
    }

    use super::*;

    #[test]
    fn the_last_line_says_how_a_task_ended() {
        assert_eq!(exit_status_of("TASK OK").as_deref(), Some("OK"));
        assert_eq!(exit_status_of("TASK WARNINGS: 2").as_deref(), Some("WARNINGS: 2"));
        assert_eq!(
            exit_status_of("TASK ERROR: unable to create CT 100 - boom").as_deref(),
            Some("unable to create CT 100 - boom")
        );
        assert_eq!(exit_status_of("extracting archive"), None);
        assert_eq!(exit_status_of("TASK STARTED"), None);
    }

    #[test]
    fn upid_fields() {
        let u: Upid = "UPID:pve1:000003E8:00001B58:6B0921F9:vzcreate:101:root@pam!pvefleet:".parse().unwrap();
        assert_eq!(u.node(), "pve1");
        assert_eq!(u.kind(), "vzcreate");
        assert!("UPID:short".parse::<Upid>().is_err());
    }
}
