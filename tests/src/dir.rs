//! The per-test temp dir: removed when the test passes, kept (with every log's path and tail
//! printed) when it fails, so a CI failure can be read without re-running it.
//!
//! A test that returns `Err` through `?` unwinds nothing, so "failed" cannot be read from a
//! panic alone: a test calls [`TestDir::pass`] as its last step, and a dir dropped without
//! that is kept.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Shared by every process a test starts; the dir goes when the last holder is dropped.
#[derive(Clone, Debug)]
pub struct TestDir(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    dir: Mutex<Option<tempfile::TempDir>>,
    logs: Mutex<Vec<PathBuf>>,
    passed: AtomicBool,
}

impl TestDir {
    /// A fresh dir whose name starts with `name`.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pvefleet-{name}-"))
            .tempdir()
            .expect("creating the test's temp dir");
        Self(Arc::new(Inner {
            path: dir.path().to_owned(),
            dir: Mutex::new(Some(dir)),
            logs: Mutex::new(Vec::new()),
            passed: AtomicBool::new(false),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// A sub-directory, created.
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.0.path.join(name);
        std::fs::create_dir_all(&p).expect("creating a test sub-directory");
        p
    }

    /// Marks the test as passed: its dir is removed. Call it last.
    pub fn pass(&self) {
        self.0.passed.store(true, Ordering::SeqCst);
    }

    /// Records a log file to report if the test fails.
    pub fn register_log(&self, path: PathBuf) {
        self.0.logs.lock().unwrap().push(path);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.passed.load(Ordering::SeqCst) && !std::thread::panicking() {
            return;
        }
        if let Some(dir) = self.dir.lock().unwrap().take() {
            let kept = dir.keep();
            eprintln!("\n=== test failed: kept its temp dir {}", kept.display());
        }
        eprintln!("=== machine: {}", machine_facts(&self.path));
        for log in self.logs.lock().unwrap().iter() {
            eprintln!("=== log {}", log.display());
            if let Ok(text) = std::fs::read_to_string(log) {
                let lines: Vec<&str> = text.lines().collect();
                for line in &lines[lines.len().saturating_sub(30)..] {
                    eprintln!("    {line}");
                }
            }
        }
    }
}

/// What the machine had when a test failed: a process that died without a word in its log
/// (killed from outside, or out of memory or disk) shows here.
fn machine_facts(path: &Path) -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let available = meminfo.lines().find(|l| l.starts_with("MemAvailable:")).unwrap_or("MemAvailable: ?").to_owned();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let disk = std::process::Command::new("df")
        .args(["-h", "--output=avail,target"])
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().nth(1).unwrap_or("?").trim().to_owned())
        .unwrap_or_else(|e| format!("df: {e}"));
    format!("{}, load {}, disk free {disk}", available.split_whitespace().collect::<Vec<_>>().join(" "), load.trim())
}
