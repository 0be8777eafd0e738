//! The heartbeat: every few seconds the agent writes what it is and what its node can still
//! take into `pvefleet-nodes`, signed with its identity; the bucket's max age drops an agent
//! that stops beating.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pvefleet_schemas::{Capacity, Heartbeat, JobId, StorageCapacity, Timestamp, V1, names};
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::config::Config;
use crate::proxmox::PveClient;

/// The jobs this agent is running now, shared with the worker; a change is beaten at once, so
/// `pvefleet nodes` never shows a job running a whole heartbeat after it ended.
pub type Running = Arc<RunningJobs>;

#[derive(Debug, Default)]
pub struct RunningJobs {
    set: Mutex<BTreeSet<JobId>>,
    changed: tokio::sync::Notify,
}

impl RunningJobs {
    pub fn started(&self, job: JobId) {
        self.set.lock().expect("running set").insert(job);
        self.changed.notify_one();
    }

    pub fn ended(&self, job: &JobId) {
        self.set.lock().expect("running set").remove(job);
        self.changed.notify_one();
    }

    pub fn now(&self) -> Vec<JobId> {
        self.set.lock().expect("running set").iter().copied().collect()
    }
}

/// A change beat waits this long for more changes, so a burst of jobs makes a few beats, not
/// one per job start and end.
const COALESCE: Duration = Duration::from_millis(200);

/// Beats until `stop`, then removes the node's entry so it leaves the registry at once.
pub async fn beat(
    config: Config,
    pve: PveClient,
    bus: Bus,
    running: Running,
    sealing_key: pvefleet_schemas::seal::PublicKey,
    identity: pvefleet_schemas::signing::Identity,
    stop: CancellationToken,
) {
    let key = names::heartbeat_key(&config.node);
    // A beat reports what the API says now; retrying inside a beat would only delay it (and
    // let the entry expire while the API is down, which is right: the node cannot take jobs).
    let pve = pve.with_retry(crate::retry::none());
    let started_at = Timestamp::now();
    let mut tick = tokio::time::interval(config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut capacity = None;
    loop {
        let full = tokio::select! {
            // A stop wins over a beat that is due at the same moment.
            biased;
            _ = stop.cancelled() => break,
            _ = tick.tick() => true,
            () = running.changed.notified() => false,
        };
        if full {
            capacity = match self::capacity(&pve).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %pvefleet_schemas::report::error_chain(&e), "heartbeat without capacity: the Proxmox API did not answer");
                    None
                }
            };
        } else {
            // Only the running set changed: the last capacity stands, and no API call is made.
            tokio::select! {
                () = tokio::time::sleep(COALESCE) => {}
                _ = stop.cancelled() => break,
            }
        }
        let mut beat = Heartbeat {
            v: V1,
            node: config.node.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            concurrency: config.concurrency,
            running_jobs: running.now(),
            capacity: capacity.clone(),
            started_at,
            last_seen: Timestamp::now(),
            sealing_key: Some(sealing_key.to_string()),
            identity_key: None,
            signature: None,
        };
        // Signed by the key an admin enrolled: readers believe no other beat for this node.
        pvefleet_schemas::trust::sign_heartbeat(&mut beat, &identity);
        let payload = serde_json::to_vec(&beat).expect("a heartbeat serializes");
        // A put waits up to its ack timeout while NATS is away: a stop does not wait with it.
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            put = bus.nodes.put(&key, payload.into()) => if let Err(e) = put {
                tracing::warn!(error = %pvefleet_schemas::report::error_chain(&e), "heartbeat not written");
            },
        }
    }
    // With NATS away the entry cannot be removed: it expires on its own.
    if bus.client.connection_state() == async_nats::connection::State::Connected {
        let _ = tokio::time::timeout(Duration::from_secs(2), bus.nodes.delete(&key)).await;
    }
}

async fn capacity(pve: &PveClient) -> Result<Capacity, crate::proxmox::PveError> {
    let status = pve.node_status().await?;
    let storages = pve.rootdir_storages().await?;
    Ok(Capacity {
        memory_total_bytes: status.memory_total,
        memory_free_bytes: status.memory_free,
        cpus: status.cpus,
        cpu_load: status.cpu,
        storages: storages
            .into_iter()
            .map(|s| StorageCapacity { storage: s.storage, total_bytes: s.total, avail_bytes: s.avail })
            .collect(),
    })
}
