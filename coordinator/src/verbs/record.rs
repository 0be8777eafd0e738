//! `pvefleet record`: every node's events into the store (see [`crate::recorder`]), until
//! SIGTERM or Ctrl-C.

use async_nats::jetstream;

use crate::cli::Cli;
use crate::{Outcome, recorder, shutdown};

pub async fn run(cli: &Cli) -> Outcome {
    let store = crate::open_store(cli).await?;
    let js = jetstream::new(crate::bus::connect(cli).await?);
    let stop = shutdown::shutdown_signal();
    eprintln!("recording events into the store (Ctrl-C to stop)");
    let recorded = recorder::record(js, store, stop).await;
    eprintln!("recorder stopped after recording {recorded} new events");
    Ok(())
}
