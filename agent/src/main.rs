//! `pvefleet-agent`: parses its arguments and configuration, sets up tracing, runs the agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The pvefleet agent for one Proxmox node: takes the node's create jobs from NATS JetStream,
/// drives the local Proxmox API, and publishes every step as an event.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Every configuration key can also be set as PVEFLEET_<KEY>, e.g. PVEFLEET_PROXMOX_TOKEN_ID.\n\nExample:\n  pvefleet-agent --config /etc/pvefleet/agent.toml"
)]
struct Args {
    /// The agent's TOML configuration.
    #[arg(long, env = "PVEFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .init();
    let config = match pvefleet_agent::config::Config::load(args.config.as_deref(), |k| {
        std::env::var(k).ok()
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pvefleet-agent: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("configuration OK for node {}", config.node);
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "pvefleet-agent: configuration OK for node {}; the job loop is not built yet",
        config.node
    );
    ExitCode::from(1)
}
