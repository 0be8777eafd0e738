//! `pvefleet`: parses the command line, sets up tracing, runs the verb, exits 0 on success,
//! 1 on failure and 2 on bad input.

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};

fn main() -> ExitCode {
    let matches = pvefleet_coordinator::cli::Cli::command().get_matches();
    let cli = match pvefleet_coordinator::cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // A password on the command line is shown by `ps` to everyone on this machine; in the
    // environment or a creds file it is not.
    if matches.value_source("nats_url") == Some(clap::parser::ValueSource::CommandLine)
        && cli.nats_url.split(',').any(|u| u.parse::<async_nats::ServerAddr>().is_ok_and(|a| a.password().is_some()))
    {
        eprintln!(
            "pvefleet: warning: --nats-url carries a password, which `ps` shows to every user of this machine; give \
             it in PVEFLEET_NATS_URL (e.g. from coordinator.env) or use --nats-creds"
        );
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,async_nats=error".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    runtime.block_on(pvefleet_coordinator::run(cli))
}
