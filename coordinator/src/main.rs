//! `pvefleet`: the operator's CLI. This build parses the verbs and global flags of the
//! contract; the verbs themselves arrive with the coordinator issue.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Create Proxmox VE containers through a fleet of per-node agents driven by NATS JetStream.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "PVEFLEET_NATS_URL", default_value = "nats://127.0.0.1:4222", global = true)]
    nats_url: String,
    /// NATS credentials file.
    #[arg(long, env = "PVEFLEET_NATS_CREDS", global = true)]
    nats_creds: Option<std::path::PathBuf>,
    /// The store: a SQLite path or a postgres:// URL.
    #[arg(long, env = "PVEFLEET_DB", global = true)]
    db: Option<String>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Create or update the streams and KV buckets (idempotent).
    Setup,
    /// Validate and publish a create job.
    Submit,
    /// Replay a job's events, then follow it to its end.
    Watch { job: String },
    /// List jobs.
    Jobs,
    /// Show one job.
    Job { job: String },
    /// Cancel a queued or running job.
    Cancel { job: String },
    /// Live agents and their capacity.
    Nodes,
    /// Record events into the store (long-running).
    Record,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    eprintln!("pvefleet: `{:?}` is not built yet in this version", cli.verb);
    ExitCode::from(1)
}
