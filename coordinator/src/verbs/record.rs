//! `pvefleet record`: a durable consumer on `PVEFLEET_EVENTS` writing every event into the
//! store and moving job states forward. It acks an event only once the store has it, and
//! recording an event twice changes nothing, so restarts of it or of NATS lose and double
//! nothing.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt as _;
use pvefleet_schemas::Event;
use pvefleet_schemas::names::EVENTS_STREAM;

use crate::Outcome;
use crate::cli::Cli;

pub const CONSUMER: &str = "pvefleet-recorder";

pub async fn run(cli: &Cli) -> Outcome {
    let store = crate::open_store(cli).await?;
    let js = jetstream::new(crate::bus::connect(&cli.nats_url, cli.nats_creds.as_deref()).await?);
    let stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("the events stream (run `pvefleet setup`): {e}"))?;
    let consumer = stream
        .get_or_create_consumer(
            CONSUMER,
            consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                description: Some("pvefleet record: events into the store".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::All,
                ack_wait: Duration::from_secs(10),
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("the recorder's consumer: {e}"))?;
    eprintln!("recording events into the store (Ctrl-C to stop)");
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut recorded = 0u64;
    loop {
        let batch = tokio::select! {
            b = consumer.fetch().max_messages(500).expires(Duration::from_secs(2)).messages() => b,
            _ = &mut stop => break,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "fetching events failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(msg) = batch.next().await {
            let Ok(msg) = msg else { continue };
            let event = match Event::decode(&msg.payload) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, subject = %msg.subject, "an unreadable event; skipped");
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            match store.record_event(&event).await {
                Ok(new) => {
                    recorded += u64::from(new);
                    if let Err(e) = msg.ack().await {
                        tracing::warn!(error = %e, "ack lost; the event comes again and is recorded once");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, job_id = %event.job_id, seq = event.seq, "storing an event failed; it comes again");
                    let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await;
                }
            }
        }
    }
    eprintln!("recorder stopped after recording {recorded} new events");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
