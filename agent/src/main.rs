//! `pvefleet-agent`: parses its arguments and configuration, sets up tracing and signals, and
//! runs the agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The pvefleet agent for one Proxmox node: takes the node's create jobs from NATS JetStream,
/// drives the local Proxmox API, and publishes every step as an event.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Every configuration key can also be set as PVEFLEET_<KEY>, e.g. PVEFLEET_PROXMOX_TOKEN_ID.\n\
                  SIGTERM or SIGINT stops taking jobs and hands running ones back; a second one exits at once.\n\n\
                  Example:\n  pvefleet-agent --config /etc/pvefleet/agent.toml"
)]
struct Args {
    /// The agent's TOML configuration.
    #[arg(long, env = "PVEFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Print this agent's public sealing key and its fingerprint (from `state_dir`) and exit:
    /// what the operator checks before `pvefleet nodes trust NODE --fingerprint …`. Run it as
    /// the agent's user after the agent has started once (its first start makes the key).
    #[arg(long, conflicts_with = "check")]
    print_key: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let config = match pvefleet_agent::config::Config::load(args.config.as_deref(), |k| std::env::var(k).ok()) {
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
    if args.print_key {
        let keys = pvefleet_agent::sealing::load(&config.state_dir)
            .and_then(|s| Ok(s.zip(pvefleet_agent::sealing::load_identity(&config.state_dir)?)));
        return match keys {
            Ok(Some((sealing, identity))) => {
                let (sealing, identity) = (sealing.public().to_string(), identity.public().to_string());
                let fingerprint = pvefleet_schemas::trust::enrollment_fingerprint(&identity, &sealing);
                println!("node {}", config.node);
                println!("identity key {identity}");
                println!("sealing key {sealing}");
                println!("fingerprint {fingerprint}");
                println!(
                    "\nOn the coordinator, after comparing, an admin enrolls this agent:\n  pvefleet nodes enroll {} --fingerprint {fingerprint}",
                    config.node,
                );
                ExitCode::SUCCESS
            }
            Ok(None) => {
                eprintln!(
                    "pvefleet-agent: no sealing key in {} yet: start the agent once (it makes its key), then run this again",
                    config.state_dir.display()
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("pvefleet-agent: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // One thread: a job is a few milliseconds of I/O, and a second worker thread only adds
    // cross-thread wake-ups (the profile showed the agent's CPU going to the scheduler and
    // futexes, not to work). File reads for uploads still run on the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let stop = CancellationToken::new();
        tokio::spawn(signals(stop.clone()));
        match pvefleet_agent::run(config, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = pvefleet_schemas::report::error_chain(e.as_ref()), "agent failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// The first SIGTERM/SIGINT stops gracefully; a second exits at once.
async fn signals(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    for n in 0.. {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if n == 0 {
            tracing::info!("stopping: no new jobs; running jobs hand back at their next checkpoint");
            stop.cancel();
        } else {
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        }
    }
}
