//! pvefleet-agent: one per Proxmox node. It takes the node's jobs from the JetStream work
//! queue, drives the node's Proxmox API, and publishes every step as an event.
//!
//! # Layout
//! Each layer uses only the layers below it (`cargo test -p pvefleet-testbed --test layout`
//! proves there is no circle and prints the layers):
//! - the agent: [`run`] here; [`intake`] takes job messages one free slot at a time, keeps
//!   them alive and settles them ([`intake::policy`]), its [`intake::Incoming`] the table of
//!   job kinds; [`control`] answers cancel and plan requests; [`heartbeat`] writes the node's
//!   entry in `pvefleet-nodes`; [`inventory`] keeps the node's marked containers in
//!   `pvefleet-inventory`; [`shared`] is what their tasks share.
//! - [`jobs`]: the job kinds, siblings: [`jobs::create`] (its whole story in its folder:
//!   step table, parameters, vmid, template or clone, keys, deploy), [`jobs::destroy`],
//!   [`jobs::day_two`] (update, resize, power, snapshot, rollback, backup, restore, move, and
//!   their plans), [`jobs::plan`]; below them [`jobs::checks`] (read-only validating checks),
//!   `jobs::once` (what is sent once: asked, then looked up) and [`jobs::container`] (whose a
//!   container is; stop and delete); and under those the engine, `jobs/mod.rs`: lease, step
//!   table, checkpoints, events, undo, written once.
//! - the parts: [`bus`] (NATS: connecting, streams, event logs, checkpoints, claims and
//!   leases, vmid reservations), [`proxmox`] (the API client, its tasks, PVE's refusals told
//!   once), [`ssh`] (SSH and SFTP into a container, host keys checked), [`cache`] (the
//!   templates this agent fetched itself), [`sealing`] (the agent's own key pair), [`trust`]
//!   (the admin-signed policy, each request's signature, expiry, job id and rights, the audit).
//! - the ground: [`config`] (`agent.toml` and its `PVEFLEET_…` overrides, checked at start),
//!   [`tls`] (the pinned Proxmox certificate), [`retry`] (every retry and backoff number, and
//!   which errors are retried where), [`metrics`].

pub mod bus;
pub mod cache;
pub mod config;
pub mod control;
pub mod heartbeat;
pub mod intake;
pub mod inventory;
pub mod jobs;
pub mod metrics;
pub mod proxmox;
pub mod retry;
pub mod sealing;
pub mod shared;
pub mod ssh;
pub mod tls;
pub mod trust;

use backon::Retryable as _;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusError};
use crate::config::Config;
use crate::proxmox::PveClient;

/// How long a stopping agent waits for its NATS connection to drain.
const DRAIN_WITHIN: Duration = Duration::from_secs(2);

/// Runs the agent until `stop` fires, then hands running jobs back and drains the connection.
pub async fn run(config: Config, stop: CancellationToken) -> anyhow::Result<()> {
    let pve = PveClient::new(&config.proxmox, config.node.clone())?;
    let sealing = Arc::new(sealing::load_or_create(&config.state_dir)?);
    let identity = sealing::load_or_create_identity(&config.state_dir)?;
    let name = format!("pvefleet-agent-{}", config.node);
    let client = match bus::connect(&config.nats, &name, &stop).await {
        Ok(c) => c,
        Err(BusError::Stopped) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let open = || Bus::open(client.clone(), &config);
    let bus = tokio::select! {
        b = open.retry(retry::nats_layout()).notify(|e, wait| tracing::warn!(error = %pvefleet_schemas::report::error_chain(e), retry_in = ?wait, "NATS layout not ready; retrying")) => b?,
        _ = stop.cancelled() => return Ok(()),
    };
    let trust = Arc::new(trust::Trust::load(config.admin_keys.clone(), &config.state_dir));
    // Before any job is taken, so none is refused for want of a policy the bucket holds.
    let read = || trust::read_policy(&trust, &bus.trust);
    tokio::select! {
        r = read.retry(retry::nats_layout()) => r?,
        _ = stop.cancelled() => return Ok(()),
    }
    let policy_stop = CancellationToken::new();
    let policy = tokio::spawn(trust::follow_policy(trust.clone(), bus.trust.clone(), policy_stop.clone()));
    tracing::info!(node = %config.node, concurrency = config.concurrency, proxmox = %config.proxmox.url, "agent ready");

    let running = heartbeat::Running::default();
    let beat_stop = CancellationToken::new();
    let beat = tokio::spawn(heartbeat::beat(
        config.clone(),
        pve.clone(),
        bus.clone(),
        running.clone(),
        sealing.public(),
        identity,
        beat_stop.clone(),
    ));
    let instance = format!("{}-{}", config.node, ulid::Ulid::new());
    let config_state_dir = config.state_dir.clone();
    let shared = Arc::new(shared::Shared {
        config,
        pve,
        bus,
        running,
        stop,
        instance,
        sealing,
        trust,
        ledger: cache::Ledger::load(&config_state_dir),
        inventory: Arc::new(inventory::Inventory::load(&config_state_dir)),
        cancels: Default::default(),
        cancelled: Default::default(),
    });
    let control = tokio::spawn(control::serve_cancels(shared.clone()));
    let plans = tokio::spawn(control::serve_plans(shared.clone()));
    let inventory_stop = CancellationToken::new();
    let sweeper = inventory::Sweeper {
        node: shared.config.node.clone(),
        pve: shared.pve.clone(),
        bucket: shared.bus.inventory.clone(),
        inventory: shared.inventory.clone(),
    };
    let inventory = tokio::spawn(inventory::keep(sweeper, shared.config.inventory_interval, inventory_stop.clone()));
    let metrics_stop = CancellationToken::new();
    let metrics = shared.config.metrics_listen.map(|addr| tokio::spawn(metrics::serve(addr, metrics_stop.clone())));
    intake::work(shared.clone()).await;
    control.abort();
    plans.abort();
    policy_stop.cancel();
    let _ = policy.await;
    inventory_stop.cancel();
    let _ = inventory.await;
    metrics_stop.cancel();
    if let Some(m) = metrics {
        let _ = m.await;
    }
    beat_stop.cancel();
    let _ = beat.await;
    // Draining flushes what is buffered; with NATS away it would wait for its return, and
    // there is nothing it could flush.
    let connected = shared.bus.client.connection_state() == async_nats::connection::State::Connected;
    match tokio::time::timeout(if connected { DRAIN_WITHIN } else { Duration::ZERO }, shared.bus.client.drain()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %pvefleet_schemas::report::error_chain(&e), "draining the NATS connection failed")
        }
        Err(_) => tracing::warn!("NATS did not drain (it is away, or slow); stopping anyway"),
    }
    tracing::info!("agent stopped");
    Ok(())
}
