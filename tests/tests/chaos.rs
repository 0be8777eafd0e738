//! The fault harness's short run: fixed seeds, every fault class, a checker over the whole
//! history. `just chaos` runs longer ones (see the README for the long run's figures).

use pvefleet_testbed::chaos::{Options, run};

async fn no_violations(seed: u64) -> anyhow::Result<()> {
    let opts = Options { seed, jobs: 40, seconds: 75, ..Options::default() };
    let report = run(&opts).await?;
    println!("{}", report.summary());
    assert!(report.ok(), "{}", report.full());
    // The run did what it claims: faults of most classes, and jobs that completed.
    assert!(report.faults.len() >= 7, "too few fault classes: {}", report.summary());
    assert!(report.outcomes.completed >= opts.jobs / 2, "{}", report.summary());
    Ok(())
}

#[tokio::test]
async fn a_short_run_under_every_fault_keeps_every_promise() -> anyhow::Result<()> {
    no_violations(20261127).await
}
