//! `pvefleet watch JOB`: replay a job's events from the first, then follow it to its end,
//! whether it is queued, running or long finished.

use crate::cli::Cli;
use crate::{Outcome, follow};

pub async fn run(cli: &Cli, job: &str, json: bool) -> Outcome {
    follow::follow(cli, crate::job_id(job)?, json).await
}
