//! The README's demo, end to end: it finishes, exits 0, and leaves no process and no files;
//! Ctrl-C stops it cleanly at any moment.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt as _;

fn demo_binary() -> anyhow::Result<std::path::PathBuf> {
    let bin = pvefleet_testbed::tools::workspace_bin("pvefleet")?.with_file_name("examples").join("demo");
    anyhow::ensure!(
        bin.is_file(),
        "{} not found: build it with `cargo build --examples` (`just test` does)",
        bin.display()
    );
    Ok(bin)
}

/// Processes whose command line mentions `needle` (the demo's temp dir).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

async fn start()
-> anyhow::Result<(tokio::process::Child, tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>)> {
    let mut child = tokio::process::Command::new(demo_binary()?)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    Ok((child, lines))
}

/// Reads lines until one contains `marker`; returns everything read.
async fn read_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    marker: &str,
    out: &mut String,
) -> anyhow::Result<()> {
    while let Some(line) = lines.next_line().await? {
        out.push_str(&line);
        out.push('\n');
        if line.contains(marker) {
            return Ok(());
        }
    }
    anyhow::bail!("the demo ended before printing {marker:?}:\n{out}")
}

fn temp_dir_of(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.split("starting a local fleet in ").nth(1))
        .expect("the demo names its dir")
        .trim_end_matches("\u{1b}[0m")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn the_demo_runs_to_the_end_and_leaves_nothing() -> anyhow::Result<()> {
    let started = Instant::now();
    let (mut child, mut lines) = start().await?;
    let mut out = String::new();
    while let Some(line) = lines.next_line().await? {
        out.push_str(&line);
        out.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(180), child.wait()).await??;
    assert!(status.success(), "the demo failed:\n{out}");
    assert!(started.elapsed() < Duration::from_secs(180), "{:?}", started.elapsed());
    for expected in [
        "1/3",
        "2/3",
        "3/3",
        "warm-up: done",
        "script `migrate-db` exited with status 3",
        "container 102 destroyed",
        "the web view: http://127.0.0.1:",
        "/login as user `demo`, password `",
        "demo finished",
    ] {
        assert!(out.contains(expected), "the demo did not show {expected:?}:\n{out}");
    }
    assert!(out.contains("succeeded") && out.contains("failed"), "jobs table missing:\n{out}");
    // `pvefleet nodes` right after the last job: no finished job's slot shows as running.
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("pve") && l.contains("s ago")).collect();
    assert!(rows.len() == 2 && rows.iter().all(|r| r.contains(" 0/")), "the nodes table: {rows:#?}");
    let dir = temp_dir_of(&out);
    assert!(!std::path::Path::new(&dir).exists(), "{dir} was left behind");
    assert_eq!(processes_mentioning(&dir), Vec::<String>::new(), "processes left running");
    Ok(())
}

#[tokio::test]
async fn ctrl_c_stops_the_demo_cleanly() -> anyhow::Result<()> {
    let (mut child, mut lines) = start().await?;
    let mut out = String::new();
    read_until(&mut lines, "1/3", &mut out).await?;
    let dir = temp_dir_of(&out);
    assert!(!processes_mentioning(&dir).is_empty(), "the fleet should be running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().expect("running") as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert_eq!(status.code(), Some(130));
    // Give the kernel a moment to reap: poll with a deadline.
    pvefleet_testbed::wait_until("the fleet's processes to be gone", Duration::from_secs(10), || {
        let left = processes_mentioning(&dir);
        async move { left.is_empty().then_some(()) }
    })
    .await?;
    assert!(!std::path::Path::new(&dir).exists(), "{dir} was left behind");
    Ok(())
}
