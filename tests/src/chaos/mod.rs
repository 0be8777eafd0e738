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
mod options;
pub mod plan;
pub mod report;
pub mod world;

use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use options::Options;
pub use report::Report;

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
        // The cluster may still be electing a stream's leader after the last fault: a read
        // that times out is tried again, up to the deadline.
        let events = match observe::events(&world.js).await {
            Ok((events, _)) => events,
            Err(e) if Instant::now() < deadline => {
                eprintln!("chaos: reading the events failed ({e:#}); trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let left = world::unfinished(&events, &ids);
        if left == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    observe::recorder_caught_up(&world.js, Duration::from_secs(120)).await?;

    let (events, unreadable) = crate::wait_until("the events, read whole", Duration::from_secs(60), || async {
        observe::events(&world.js).await.inspect_err(|e| eprintln!("chaos: reading the events failed ({e:#})")).ok()
    })
    .await?;
    let history = std::mem::take(&mut *history.lock().expect("history"));
    let guests = observe::guests(&world.pve).await?;
    let vmids = history.jobs.values().filter_map(|j| j.day_two.map(|d| d.vmid)).chain([plan::STRANGER_VMID]);
    let containers = observe::containers(&world.pve, &guests, vmids).await?;
    let seen = observe::Observed {
        events,
        unreadable,
        guests,
        store: observe::store(&world.db.url()).await?,
        containers,
        stranger_digest_before: world.stranger_digest.clone(),
    };
    let (outcomes, violations) = check::check(&history, &seen);
    let report = Report::new(opts, &history, &seen, outcomes, violations, started.elapsed().as_secs_f64());
    if report.ok() {
        world.dir.pass();
    } else {
        eprintln!("chaos: violations found; everything is kept in {}", world.dir.path().display());
    }
    Ok(report)
}
