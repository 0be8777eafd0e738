//! The inventory: every container on this node carrying a pvefleet marker, written to KV
//! `pvefleet-inventory` under `<node>.<vmid>`, at start, after each job and every
//! `inventory_interval`. One `GET /nodes/{node}/lxc`, then the config of each marked
//! container: every one at start and every `inventory_interval` (a full sweep, which also
//! catches a change made outside pvefleet that the listing does not show); after a job only
//! those the job touched, new ones, and those whose listing changed (name, status, tags, lock,
//! memory, disk, cores), each written only if its entry changed. A sweep after each job of a
//! node with hundreds of containers would otherwise read every config and write every entry
//! again. A container gone from the node (deleted, or moved: its new node's agent writes it
//! under its own key) has its key deleted.
//!
//! What the agent keeps between starts (`state_dir/inventory.json`): the keys it wrote (so a
//! container deleted while the agent was down is still taken out) and, per container, the last
//! job that wrote to it and the config digest that job left (a different digest now is drift).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use pvefleet_schemas::{InventoryEntry, JobId, Timestamp, V1, Vmid, names};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::proxmox::PveClient;

/// What the inventory remembers.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    published: BTreeSet<u32>,
    /// vmid → the last job of this agent that wrote to it, and the digest it left (once read).
    applied: BTreeMap<u32, Applied>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Applied {
    job: JobId,
    digest: Option<String>,
}

/// The inventory's shared state: a poke after each job, and what it keeps.
#[derive(Debug)]
pub struct Inventory {
    poke: Notify,
    path: std::path::PathBuf,
    kept: Mutex<Kept>,
    /// Containers a move is bringing to this node, each until when it is looked for.
    expected: Mutex<BTreeMap<u32, std::time::Instant>>,
    /// Each container as the last sweep wrote it, with what its listing said then.
    last: Mutex<BTreeMap<u32, (String, InventoryEntry)>>,
}

impl Inventory {
    pub fn load(state_dir: &std::path::Path) -> Self {
        let path = state_dir.join("inventory.json");
        let kept = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Self { poke: Notify::new(), path, kept: Mutex::new(kept), expected: Mutex::default(), last: Mutex::default() }
    }

    /// A move is bringing container `vmid` here (its plan was asked of this agent): it is
    /// looked for every second, within `within`, and listed as soon as it arrives, so the
    /// coordinator sends its next jobs here without waiting for the next sweep.
    pub fn expect(&self, vmid: Vmid, within: std::time::Duration) {
        let until = std::time::Instant::now() + within.min(std::time::Duration::from_secs(3600));
        self.expected.lock().expect("inventory").insert(vmid.get(), until);
        self.poke.notify_one();
    }

    /// Whether containers are expected (and the expectations that ran out dropped).
    fn expecting(&self) -> bool {
        let mut expected = self.expected.lock().expect("inventory");
        let now = std::time::Instant::now();
        expected.retain(|_, until| *until > now);
        !expected.is_empty()
    }

    /// Whether any expected container is among `here`; those are no longer expected.
    fn arrived(&self, here: &[u32]) -> bool {
        let mut expected = self.expected.lock().expect("inventory");
        let before = expected.len();
        expected.retain(|v, _| !here.contains(v));
        expected.len() != before
    }

    /// Job `job` wrote to container `vmid`: the sweep its end makes ([`Self::poke`]) reads
    /// what it left. (No poke here: one sweep per job end, not a second right behind it.)
    pub fn touched(&self, vmid: Vmid, job: JobId) {
        self.kept.lock().expect("inventory").applied.insert(vmid.get(), Applied { job, digest: None });
    }

    /// A job ended: sweep now.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    fn save(&self, kept: &Kept) {
        let text = serde_json::to_vec(kept).expect("the inventory state serializes");
        let tmp = self.path.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path)) {
            tracing::warn!(error = %e, path = %self.path.display(), "could not keep the inventory state");
        }
    }
}

/// What a sweep reads and writes: the node's Proxmox API and its keys of the inventory bucket.
#[derive(Debug, Clone)]
pub struct Sweeper {
    pub node: pvefleet_schemas::NodeName,
    pub pve: PveClient,
    pub bucket: async_nats::jetstream::kv::Store,
    pub inventory: Arc<Inventory>,
}

/// How long a sweep after a job's end waits for other jobs to end: a burst is swept once.
const POKE_GATHER: std::time::Duration = std::time::Duration::from_secs(1);

/// Sweeps at start, when poked (a second after, gathering other pokes), and fully every
/// `interval`, until `stop`; while a container is expected, the node's list is read every
/// second and a sweep made when it arrives.
pub async fn keep(sweeper: Sweeper, interval: std::time::Duration, stop: CancellationToken) {
    let mut next_full = tokio::time::Instant::now();
    loop {
        let full = tokio::time::Instant::now() >= next_full;
        if let Err(e) = sweep(&sweeper, full).await {
            tracing::warn!(error = %e, "inventory sweep failed; trying again at the next");
        }
        if full {
            next_full = tokio::time::Instant::now() + interval;
        }
        loop {
            let wake = if sweeper.inventory.expecting() {
                next_full.min(tokio::time::Instant::now() + std::time::Duration::from_secs(1))
            } else {
                next_full
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = sweeper.inventory.poke.notified() => {
                    tokio::select! {
                        () = tokio::time::sleep(POKE_GATHER) => break,
                        () = stop.cancelled() => return,
                    }
                }
                () = stop.cancelled() => return,
            }
            if tokio::time::Instant::now() >= next_full {
                break;
            }
            let here: Vec<u32> = match sweeper.pve.containers_listed().await {
                Ok(listed) => {
                    listed.iter().filter_map(|i| i["vmid"].as_u64()).filter_map(|v| u32::try_from(v).ok()).collect()
                }
                Err(_) => continue,
            };
            if sweeper.inventory.arrived(&here) {
                break;
            }
        }
    }
}

/// The job id in a description the agent wrote (`Created by pvefleet job <id>`, `Cloned by
/// pvefleet job <id> (<marker>)`, `Restored by pvefleet job <id> …`), if its marker is among
/// `markers`.
fn made_by(description: &str, markers: &[String]) -> Option<JobId> {
    description.lines().find_map(|line| {
        let rest = ["Created", "Cloned", "Restored"]
            .iter()
            .find_map(|v| line.strip_prefix(&format!("{v} by pvefleet job ")))?;
        let id: JobId = rest.split_whitespace().next()?.parse().ok()?;
        markers.contains(&id.marker_tag()).then_some(id)
    })
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// One container's entry, from its listing and its config.
fn entry(node: &pvefleet_schemas::NodeName, vmid: Vmid, listed: &Value, cfg: &Value, kept: &Kept) -> InventoryEntry {
    let tags: Vec<String> = crate::proxmox::tags(&text(cfg, "tags").unwrap_or_default()).collect();
    let markers: Vec<String> =
        tags.iter().filter(|t| t.starts_with(pvefleet_schemas::MARKER_TAG_PREFIX)).cloned().collect();
    let create_job = made_by(&text(cfg, "description").unwrap_or_default(), &markers);
    let ip = text(cfg, "net0").and_then(|n| {
        n.split(',').find_map(|p| p.strip_prefix("ip=")).filter(|ip| ip.contains('/')).map(str::to_owned)
    });
    let disk = text(cfg, "rootfs").and_then(|r| r.split(',').find_map(|p| p.strip_prefix("size=")).map(str::to_owned));
    let applied = kept.applied.get(&vmid.get());
    InventoryEntry {
        v: V1,
        node: node.clone(),
        vmid,
        hostname: text(cfg, "hostname").unwrap_or_default(),
        status: text(listed, "status").unwrap_or_else(|| "unknown".into()),
        tags,
        create_job,
        markers,
        digest: text(cfg, "digest").unwrap_or_default(),
        memory_mb: text(cfg, "memory").and_then(|m| m.parse().ok()),
        cores: text(cfg, "cores").and_then(|m| m.parse().ok()),
        disk,
        ip,
        lock: text(cfg, "lock"),
        last_job: applied.map(|a| a.job),
        applied_digest: applied.and_then(|a| a.digest.clone()),
        last_seen: Timestamp::now(),
    }
}

/// What a container's listing says that a change of it would change: when it is the same as at
/// the last sweep (and no job touched the container), its config need not be read again.
fn listing_mark(item: &Value) -> String {
    ["name", "status", "tags", "lock", "maxmem", "maxdisk", "cpus", "template"]
        .iter()
        .map(|k| text(item, k).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// Reads the node's marked containers into the inventory: every config when `full`, else only
/// what may have changed (see the module's doc).
async fn sweep(sweeper: &Sweeper, full: bool) -> anyhow::Result<()> {
    let node = &sweeper.node;
    // The containers whose last job's digest is still to be read: only a config read after
    // the job ended tells it (a job ending during this sweep is read at the next, which its
    // end pokes).
    let unread: BTreeSet<u32> = {
        let kept = sweeper.inventory.kept.lock().expect("inventory");
        kept.applied.iter().filter(|(_, a)| a.digest.is_none()).map(|(v, _)| *v).collect()
    };
    let listed = sweeper.pve.containers_listed().await?;
    let last = std::mem::take(&mut *sweeper.inventory.last.lock().expect("inventory"));
    let mut seen = BTreeMap::new();
    let mut same = BTreeMap::new();
    for item in &listed {
        let Some(vmid) = item["vmid"].as_u64().and_then(|v| u32::try_from(v).ok()).and_then(|v| Vmid::new(v).ok())
        else {
            continue;
        };
        let marked = text(item, "tags").is_some_and(|t| crate::proxmox::has_marker_tag(&t));
        let template = text(item, "template").is_some_and(|t| t == "1");
        if !marked || template {
            continue;
        }
        let mark = listing_mark(item);
        if !full
            && !unread.contains(&vmid.get())
            && let Some((was, entry)) = last.get(&vmid.get())
            && *was == mark
        {
            same.insert(vmid, (mark, entry.clone()));
            continue;
        }
        let Some(cfg) = sweeper.pve.container_config(vmid).await? else { continue };
        seen.insert(vmid, (item, cfg, mark));
    }
    let mut entries = Vec::new();
    {
        let mut kept = sweeper.inventory.kept.lock().expect("inventory");
        for (vmid, (item, cfg, mark)) in &seen {
            if let Some(applied) = kept.applied.get_mut(&vmid.get())
                && applied.digest.is_none()
                && unread.contains(&vmid.get())
            {
                // The first read after the job that wrote it: what that job left.
                applied.digest = text(cfg, "digest");
            }
            entries.push((mark.clone(), entry(node, *vmid, item, cfg, &kept)));
        }
    }
    let mut now_listed: BTreeMap<u32, (String, InventoryEntry)> =
        same.into_iter().map(|(v, kept)| (v.get(), kept)).collect();
    for (mark, e) in entries {
        // An entry as it was (but for when it was seen) is written again only by a full sweep.
        let unchanged = last
            .get(&e.vmid.get())
            .is_some_and(|(_, was)| InventoryEntry { last_seen: was.last_seen, ..e.clone() } == *was);
        if full || !unchanged {
            let key = names::inventory_key(node, e.vmid);
            let bytes = serde_json::to_vec(&e).expect("an inventory entry serializes");
            sweeper.bucket.put(key, bytes.into()).await?;
        }
        now_listed.insert(e.vmid.get(), (mark, e));
    }
    let gone: Vec<u32> = {
        let kept = sweeper.inventory.kept.lock().expect("inventory");
        kept.published.iter().copied().filter(|v| !now_listed.contains_key(v)).collect()
    };
    for vmid in &gone {
        let key = format!("{node}.{vmid}");
        sweeper.bucket.delete(&key).await?;
        tracing::info!(vmid, "a container left this node (deleted or moved): taken out of the inventory");
    }
    let mut kept = sweeper.inventory.kept.lock().expect("inventory");
    let published: BTreeSet<u32> = now_listed.keys().copied().collect();
    kept.applied.retain(|v, _| published.contains(v));
    kept.published = published;
    sweeper.inventory.save(&kept);
    *sweeper.inventory.last.lock().expect("inventory") = now_listed;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_create_job_is_read_from_the_note_and_proven_by_its_marker() {
        let job = JobId::new();
        let markers = vec![job.marker_tag()];
        assert_eq!(made_by(&format!("web\n\nCreated by pvefleet job {job}"), &markers), Some(job));
        assert_eq!(made_by(&format!("Cloned by pvefleet job {job} ({})", job.marker_tag()), &markers), Some(job));
        // A note naming a job whose marker the container does not carry proves nothing.
        assert_eq!(made_by(&format!("Created by pvefleet job {}", JobId::new()), &markers), None);
    }
}
