//! The fault harness, in the manner of Jepsen: real pieces, generated faults, then a checker
//! over the whole history.
//!
//! A run: [`plan`] turns a seed into timed submissions and faults; [`world`] brings up the
//! pieces (a 3-node JetStream cluster, one fakepve cluster of several nodes, an agent per node,
//! the recorder, the CLI) and carries the plan out; once every fault is lifted and every job
//! has ended, [`observe`] reads what the world holds, [`check`] holds it against [`history`],
//! and [`report`] prints one summary line and every violation with its job's events and the
//! command that replays the run.
//!
//! `just chaos --jobs N --seconds S --seed X` runs it; a short fixed-seed run is part of
//! `just test` (`tests/tests/chaos.rs`).

pub mod check;
pub mod history;
pub mod observe;
pub mod plan;
pub mod report;
pub mod world;

use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use report::Report;

/// What a run does.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub seed: u64,
    pub jobs: usize,
    /// How long submissions (the first 60%) and faults go on.
    pub seconds: u64,
    /// Proxmox nodes, one agent each.
    pub nodes: usize,
    pub concurrency: u32,
    /// The agents' ack wait (and job lease): short, so redeliveries happen within a run.
    pub ack_wait: Duration,
    pub shutdown_grace: Duration,
    /// Scales the time between faults; 1.0 is one every 2.5 s on average.
    pub fault_spacing: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seed: 1,
            jobs: 45,
            seconds: 90,
            nodes: 3,
            concurrency: 4,
            ack_wait: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            fault_spacing: 1.0,
        }
    }
}

impl Options {
    /// The command that runs these options again.
    pub fn command(&self) -> String {
        format!(
            "just chaos --seed {} --jobs {} --seconds {} --nodes {}",
            self.seed, self.jobs, self.seconds, self.nodes
        )
    }

    /// Reads `--seed N --jobs N --seconds N --nodes N --spacing F` (each optional).
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut opts = Self { seed: std::process::id().into(), ..Self::default() };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let value = args.next().with_context(|| format!("{flag} needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("{flag} {value}: {e}");
            match flag.as_str() {
                "--seed" => opts.seed = value.parse().map_err(|e| bad(&e))?,
                "--jobs" => opts.jobs = value.parse().map_err(|e| bad(&e))?,
                "--seconds" => opts.seconds = value.parse().map_err(|e| bad(&e))?,
                "--nodes" => opts.nodes = value.parse().map_err(|e| bad(&e))?,
                "--spacing" => opts.fault_spacing = value.parse().map_err(|e| bad(&e))?,
                other => anyhow::bail!("unknown flag {other} (flags: --seed --jobs --seconds --nodes --spacing)"),
            }
        }
        anyhow::ensure!(
            opts.nodes >= 1 && opts.jobs >= 1 && opts.seconds >= 1,
            "--nodes, --jobs and --seconds must be at least 1"
        );
        Ok(opts)
    }
}

/// Runs the plan of `opts` against a fresh world, lifts every fault, waits for every job to
/// end, and checks the history. The temp dir is kept (and named) when the run has violations.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let plan = plan::Plan::generate(opts);
    let history = history::Shared::default();
    let mut world = world::World::start(opts, history.clone()).await?;
    eprintln!(
        "chaos: seed {} — {} jobs over {} nodes, {} actions in {} s; everything in {}",
        opts.seed,
        opts.jobs,
        opts.nodes,
        plan.actions.len(),
        opts.seconds,
        world.dir.path().display()
    );
    let t0 = tokio::time::Instant::now();
    for timed in &plan.actions {
        tokio::time::sleep_until(t0 + timed.at).await;
        tracing::info!(at = ?timed.at, action = ?timed.action, "chaos");
        world.perform(&timed.action, &plan.jobs).await.with_context(|| format!("carrying out {:?}", timed.action))?;
    }
    world.heal().await.context("lifting the faults")?;
    eprintln!("chaos: faults over after {:.0?}; waiting for every job to end", started.elapsed());

    let settle = Duration::from_secs(300) + Duration::from_millis(500 * opts.jobs as u64);
    tokio::time::timeout(settle, async { while world.tasks.join_next().await.is_some() {} })
        .await
        .map_err(|_| anyhow::anyhow!("submissions and cancels still running after {settle:?}"))?;
    let ids: Vec<pvefleet_schemas::JobId> = history.lock().expect("history").jobs.keys().copied().collect();
    let deadline = Instant::now() + settle;
    loop {
        let (events, _) = observe::events(&world.js).await?;
        let left = world::unfinished(&events, &ids);
        if left == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    observe::recorder_caught_up(&world.js, Duration::from_secs(120)).await?;

    let (events, unreadable) = observe::events(&world.js).await?;
    let seen = observe::Observed {
        events,
        unreadable,
        guests: observe::guests(&world.pve).await?,
        store: observe::store(&world.db.url()).await?,
    };
    let history = std::mem::take(&mut *history.lock().expect("history"));
    let (outcomes, violations) = check::check(&history, &seen);
    let report = Report::new(opts, &history, &seen, outcomes, violations, started.elapsed().as_secs_f64());
    if report.ok() {
        world.dir.pass();
    } else {
        eprintln!("chaos: violations found; everything is kept in {}", world.dir.path().display());
    }
    Ok(report)
}
