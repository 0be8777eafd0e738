//! `pvefleet`: parses the command line, sets up tracing, runs the verb, exits 0 on success,
//! 1 on failure and 2 on bad input.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pvefleet_coordinator::cli::Cli::parse();
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
