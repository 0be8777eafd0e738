//! pvefleet-agent: one per Proxmox node. It takes the node's create jobs from the JetStream
//! work queue, drives the node's Proxmox API, and publishes every step as an event.
//!
//! # Layout
//! - [`config`]: `agent.toml` and its `PVEFLEET_…` overrides, checked at start.
//! - [`bus`]: NATS: connecting with backoff, streams/buckets/consumer, events, checkpoints.
//! - [`claim`]: one run at a time per job: the checkpoint, written under a lease.
//! - [`checkpoints`]: the checkpoints bucket, read and written without its stream's info.
//! - [`vmid`]: allocating vmids that concurrent jobs never share.
//! - [`worker`]: taking jobs one free slot at a time, keeping them alive, settling them.
//! - [`runner`]: the one runner of every job kind: lease, step table, checkpoints, events, undo.
//! - `checks`: what validating (and a plan) checks against the node; read-only.
//! - [`create`]: the create job's step table (validating → … → finalizing) and rollback.
//! - [`cache`]: the templates this agent fetched itself, and as what (a cache hit is checked).
//! - [`source`]: the fetching and cloning steps: templates downloaded, from the catalogue,
//!   pulled from an OCI registry; clones.
//! - [`destroy`]: the destroy job's step table (finding → stopping → deleting).
//! - [`deploy`]: the deploying step: packages, files and scripts over one SSH connection.
//! - [`metrics`]: the agent's counters and histograms, and `/metrics` on `metrics_listen`.
//! - [`plan`]: plan requests: the validating checks and the calls a create would make, changing nothing.
//! - [`policy`]: what a job's end means for its message (ack, term, nak).
//! - [`heartbeat`]: the node's entry in `pvefleet-nodes`.
//! - [`proxmox`]: the Proxmox API client, its tasks, and pinned TLS.
//! - [`sealing`]: the agent's own key pair, that root passwords are sealed to.
//! - [`ssh`]: SSH and SFTP into a new container, with host keys checked.

pub mod bus;
pub mod cache;
pub mod checkpoints;
mod checks;
pub mod claim;
pub mod config;
pub mod create;
pub mod deploy;
pub mod destroy;
pub mod heartbeat;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod proxmox;
pub mod runner;
pub mod sealing;
pub mod source;
pub mod ssh;
pub mod vmid;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusError};
use crate::config::Config;
use crate::proxmox::PveClient;

/// Runs the agent until `stop` fires, then hands running jobs back and drains the connection.
pub async fn run(config: Config, stop: CancellationToken) -> anyhow::Result<()> {
    let pve = PveClient::new(&config.proxmox, config.node.clone())?;
    let sealing = Arc::new(sealing::load_or_create(&config.state_dir)?);
    let name = format!("pvefleet-agent-{}", config.node);
    let client = match bus::connect(&config.nats, &name, &stop).await {
        Ok(c) => c,
        Err(BusError::Stopped) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let open = || Bus::open(client.clone(), &config);
    let retry = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times();
    let bus = tokio::select! {
        b = open.retry(retry).notify(|e, wait| tracing::warn!(error = %pvefleet_schemas::report::error_chain(e), retry_in = ?wait, "NATS layout not ready; retrying")) => b?,
        _ = stop.cancelled() => return Ok(()),
    };
    tracing::info!(node = %config.node, concurrency = config.concurrency, proxmox = %config.proxmox.url, "agent ready");

    let running = heartbeat::Running::default();
    let beat_stop = CancellationToken::new();
    let beat = tokio::spawn(heartbeat::beat(
        config.clone(),
        pve.clone(),
        bus.clone(),
        running.clone(),
        sealing.public(),
        beat_stop.clone(),
    ));
    let instance = format!("{}-{}", config.node, ulid::Ulid::new());
    let config_state_dir = config.state_dir.clone();
    let shared = Arc::new(worker::Shared {
        config,
        pve,
        bus,
        running,
        stop,
        instance,
        sealing,
        ledger: cache::Ledger::load(&config_state_dir),
        cancels: Default::default(),
        cancelled: Default::default(),
    });
    let control = tokio::spawn(worker::serve_cancels(shared.clone()));
    let plans = tokio::spawn(plan::serve_plans(shared.clone()));
    let metrics_stop = CancellationToken::new();
    let metrics = shared.config.metrics_listen.map(|addr| tokio::spawn(metrics::serve(addr, metrics_stop.clone())));
    worker::work(shared.clone()).await;
    control.abort();
    plans.abort();
    metrics_stop.cancel();
    if let Some(m) = metrics {
        let _ = m.await;
    }
    beat_stop.cancel();
    let _ = beat.await;
    if let Err(e) = shared.bus.client.drain().await {
        tracing::warn!(error = %pvefleet_schemas::report::error_chain(&e), "draining the NATS connection failed");
    }
    tracing::info!("agent stopped");
    Ok(())
}
