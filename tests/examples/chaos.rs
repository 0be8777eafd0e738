//! `just chaos [--seed N] [--jobs N] [--seconds N] [--nodes N] [--spacing F]`: the fault
//! harness (see `pvefleet_testbed::chaos`). Prints one summary line, then every violation with
//! its job's events; exits 1 when there is any.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let opts = match pvefleet_testbed::chaos::Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    match pvefleet_testbed::chaos::run(&opts).await {
        Ok(report) => {
            println!("{}", report.full());
            if report.ok() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("chaos: the run could not be carried out: {e:#}\nreplay: {}", opts.command());
            std::process::ExitCode::FAILURE
        }
    }
}
