//! What the agent's tasks share: its settings, its Proxmox API and NATS, its running jobs and
//! their cancel tokens.

use std::sync::Arc;

use pvefleet_schemas::JobId;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::config::Config;
use crate::heartbeat::Running;
use crate::proxmox::PveClient;

/// What every job task shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub pve: PveClient,
    pub bus: Bus,
    pub running: Running,
    /// Fires on SIGTERM: running jobs stop at their next await and are handed back.
    pub stop: CancellationToken,
    /// The agent's sealing key: opens root passwords, seals per-job SSH keys.
    pub sealing: Arc<pvefleet_schemas::seal::SecretKey>,
    /// The admin keys and the policy they signed: who may ask for what.
    pub trust: Arc<crate::trust::Trust>,
    /// The node's containers as last published ([`crate::inventory`]).
    pub inventory: Arc<crate::inventory::Inventory>,
    /// The templates this agent fetched itself ([`crate::cache`]).
    pub ledger: crate::cache::Ledger,
    /// This agent process's name in job leases (`<node>-<ulid>`), new at every start.
    pub instance: String,
    /// Running jobs' cancel tokens, fired by `pvefleet.control.<node>.cancel`.
    pub cancels: std::sync::Mutex<std::collections::HashMap<JobId, CancellationToken>>,
    /// Jobs cancelled between two deliveries (handed back, waiting out a lease): each is
    /// cancelled as soon as its next delivery starts.
    pub cancelled: std::sync::Mutex<std::collections::BTreeSet<JobId>>,
}

/// The job id of a message, if it has a readable one (even when the rest is not).
pub(crate) fn job_id_of(payload: &[u8]) -> Option<JobId> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    // A job's own, or the one a plan request carries.
    let id = value.get("job_id").or_else(|| value.get("job")?.get("job_id"))?;
    id.as_str()?.parse().ok()
}
