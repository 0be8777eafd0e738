//! Where each container pvefleet made really is: the inventory the agents keep in KV
//! `pvefleet-inventory`, read by direct gets (no consumer, like the node registry), and a
//! container named the ways an operator names one: by the create job that made it, by its
//! hostname (unique among pvefleet's), or by node and vmid; many by a selection
//! (`tag=web,node=pve1,hostname=web-*`).

use async_nats::jetstream;
use pvefleet_schemas::names::{self, INVENTORY_BUCKET};
use pvefleet_schemas::{ContainerTarget, InventoryEntry, JobId, NodeName};

use crate::Failure;
use crate::store::Store;

/// Every container in the inventory, by node then vmid. An entry whose key does not name its
/// own node and vmid (a writer speaking for another node) is left out.
pub async fn read(js: &jetstream::Context) -> anyhow::Result<Vec<InventoryEntry>> {
    Ok(read_since(js, None).await?.map(|(entries, _)| entries).unwrap_or_default())
}

/// The inventory as [`read`] reads it, with the bucket's last sequence; `None` (nothing read)
/// when that is still `since`: nothing was written or deleted in between, so a reader that
/// polls (the recorder) reads the whole bucket only when it changed.
pub async fn read_since(
    js: &jetstream::Context,
    since: Option<u64>,
) -> anyhow::Result<Option<(Vec<InventoryEntry>, u64)>> {
    let bucket = format!("KV_{INVENTORY_BUCKET}");
    let stream = js
        .get_stream(&bucket)
        .await
        .map_err(|e| anyhow::anyhow!("the inventory (run `pvefleet setup`, and start an agent): {e}"))?;
    let last = stream.cached_info().state.last_sequence;
    if since == Some(last) {
        return Ok(None);
    }
    let latest =
        crate::bus::kv_latest(js, INVENTORY_BUCKET).await.map_err(|e| anyhow::anyhow!("reading the inventory: {e}"))?;
    let mut out: Vec<_> = latest.iter().filter_map(|(key, msg)| entry(key, &msg.payload)).collect();
    out.sort_by(|a, b| (a.node.as_str(), a.vmid).cmp(&(b.node.as_str(), b.vmid)));
    Ok(Some((out, last)))
}

/// The first `limit` containers by node then vmid (only `node`'s, when given), as [`read`]
/// has them, without reading the whole bucket: its keys come from its stream's subjects (one
/// request), sorted, then the values of the first ones by batched last-by-subject gets, keys
/// deleted since passed over. Also whether keys are left beyond the page (containers, or
/// keys deleted since: only a full read can tell). Ten thousand containers cost a quarter
/// second read whole, a few milliseconds this way.
pub async fn first_page(
    js: &jetstream::Context,
    node: Option<&str>,
    limit: usize,
) -> anyhow::Result<(Vec<InventoryEntry>, bool)> {
    let bucket = format!("KV_{INVENTORY_BUCKET}");
    let prefix = format!("$KV.{INVENTORY_BUCKET}.");
    let filter = node.map_or_else(|| format!("{prefix}>"), |n| format!("{prefix}{n}.*"));
    let subjects = crate::bus::stream_subjects(js, &bucket, &filter)
        .await
        .map_err(|e| anyhow::anyhow!("the inventory (run `pvefleet setup`, and start an agent): {e}"))?;
    // `<node>.<vmid>`; anything else is nobody's entry.
    let mut keys: Vec<(&str, u32)> = subjects
        .iter()
        .filter_map(|(s, _)| {
            let (node, vmid) = s.strip_prefix(&prefix)?.rsplit_once('.')?;
            Some((node, vmid.parse().ok()?))
        })
        .collect();
    keys.sort_unstable();
    let mut keys = keys.into_iter().peekable();
    let (mut page, mut ask) = (Vec::with_capacity(limit), 0);
    while page.len() < limit && keys.peek().is_some() {
        // What the page still needs, and after a round that met deleted keys twice the last
        // ask, so that a long run of them costs few round trips.
        ask = (limit - page.len()).max(ask * 2).min(MULTI_LAST_MAX);
        let subjects: Vec<String> =
            keys.by_ref().take(ask).map(|(node, vmid)| format!("{prefix}{node}.{vmid}")).collect();
        let mut got = crate::bus::direct_last_of(js, &bucket, &subjects)
            .await
            .map_err(|e| anyhow::anyhow!("reading the inventory: {e}"))?;
        got.retain(|m| m.headers.get("KV-Operation").is_none_or(|op| op.as_str() == "PUT"));
        page.extend(got.iter().filter_map(|m| entry(m.subject.as_str().strip_prefix(&prefix)?, &m.payload)));
    }
    page.sort_by(|a, b| (a.node.as_str(), a.vmid).cmp(&(b.node.as_str(), b.vmid)));
    let more = page.len() > limit || keys.peek().is_some();
    page.truncate(limit);
    Ok((page, more))
}

/// The most subjects one last-by-subject batch may name (nats-server answers more with 413).
const MULTI_LAST_MAX: usize = 1_024;

/// The entry under inventory key `key`, if it reads and speaks for its own key.
fn entry(key: &str, payload: &[u8]) -> Option<InventoryEntry> {
    match InventoryEntry::decode(payload) {
        Ok(e) if key == names::inventory_key(&e.node, e.vmid) => Some(e),
        Ok(_) => {
            tracing::warn!(%key, "an inventory entry under another node's key; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(%key, error = %e, "an unreadable inventory entry; ignored");
            None
        }
    }
}

/// A selection of containers: `tag=web,node=pve1,hostname=web-*` (each part must match; `*`
/// in a hostname matches any run of characters).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    tags: Vec<String>,
    nodes: Vec<String>,
    hostnames: Vec<String>,
}

impl std::str::FromStr for Selection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut sel = Selection::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!("`{part}` is not `key=value` (keys: tag, node, hostname)"));
            };
            let value = value.trim().to_owned();
            if value.is_empty() {
                return Err(format!("`{part}` has no value"));
            }
            match key.trim() {
                "tag" => sel.tags.push(value.to_ascii_lowercase()),
                "node" => sel.nodes.push(value),
                "hostname" => sel.hostnames.push(value),
                other => return Err(format!("`{other}` is not a selection key: tag, node or hostname")),
            }
        }
        if sel == Selection::default() {
            return Err("selects nothing: give tag=, node= or hostname=".into());
        }
        Ok(sel)
    }
}

impl Selection {
    pub fn matches(&self, e: &InventoryEntry) -> bool {
        self.tags.iter().all(|t| e.tags.contains(t))
            && self.nodes.iter().all(|n| e.node.as_str() == n)
            && self.hostnames.iter().all(|h| glob(h, &e.hostname))
    }
}

/// Whether `text` matches `pattern`, whose `*` stands for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// The containers of the inventory `selection` matches; none is the operator's mistake.
pub async fn select(js: &jetstream::Context, selection: &Selection) -> Result<Vec<InventoryEntry>, Failure> {
    let chosen: Vec<InventoryEntry> = read(js).await?.into_iter().filter(|e| selection.matches(e)).collect();
    if chosen.is_empty() {
        return Err(Failure::Usage("--select matches no container in the inventory (see `pvefleet ls`)".into()));
    }
    Ok(chosen)
}

/// How an operator names one container.
#[derive(Debug, Clone, Default)]
pub struct Naming {
    /// A create job's id, or a hostname.
    pub target: Option<String>,
    pub node: Option<String>,
    pub vmid: Option<u32>,
}

/// The one container `naming` names, as the inventory has it now, or why none.
pub fn find<'e>(entries: &'e [InventoryEntry], naming: &Naming) -> Result<&'e InventoryEntry, Failure> {
    let usage = |m: String| Failure::Usage(m);
    match (&naming.target, &naming.node, naming.vmid) {
        (Some(target), None, None) => {
            if let Ok(job) = target.parse::<JobId>() {
                let marker = job.marker_tag();
                let made: Vec<&InventoryEntry> = entries.iter().filter(|e| e.markers.contains(&marker)).collect();
                return match made.as_slice() {
                    [one] => Ok(one),
                    [] => Err(usage(format!(
                        "no container in the inventory was made by job {job} (gone, or its agent has not listed it \
                         yet: see `pvefleet ls`)"
                    ))),
                    many => Err(usage(format!("job {job}'s marker is on {} containers: {}", many.len(), listed(many)))),
                };
            }
            let named: Vec<&InventoryEntry> = entries.iter().filter(|e| e.hostname == *target).collect();
            match named.as_slice() {
                [one] => Ok(one),
                [] => Err(usage(format!(
                    "no container named `{target}` in the inventory (`pvefleet ls` lists them; a create job's id \
                     works too)"
                ))),
                many => Err(usage(format!(
                    "{} containers are named `{target}`: {}; name one by --node and --vmid, or by its create job",
                    many.len(),
                    listed(many)
                ))),
            }
        }
        (None, Some(node), Some(vmid)) => {
            if let Some(e) = entries.iter().find(|e| e.node.as_str() == node && e.vmid.get() == vmid) {
                return Ok(e);
            }
            // Moved since the operator looked: the same vmid elsewhere is where it is now.
            match entries.iter().find(|e| e.vmid.get() == vmid) {
                Some(e) => {
                    eprintln!("container {vmid} is on {} now, not {node}: the job goes there", e.node);
                    Ok(e)
                }
                None => Err(usage(format!(
                    "no container {vmid} with a pvefleet marker is in the inventory (on {node} or elsewhere)"
                ))),
            }
        }
        _ => {
            Err(usage("name the container: TARGET (its create job or hostname), or --node NODE --vmid VMID".to_owned()))
        }
    }
}

fn listed(entries: &[&InventoryEntry]) -> String {
    entries.iter().map(|e| format!("{} on {} ({})", e.vmid, e.node, e.hostname)).collect::<Vec<_>>().join(", ")
}

/// The target a job names for `entry`: its create job, when the store knows that job made it.
/// The marker alone (any PVE user who may tag guests can write one) is taken only with
/// `force_marker`.
pub async fn target_of(
    store: &Store,
    entry: &InventoryEntry,
    force_marker: bool,
) -> Result<(NodeName, ContainerTarget), Failure> {
    let known = match entry.create_job {
        Some(job) => store.job(&job).await?.is_some_and(|row| row.kind.makes_containers()),
        None => false,
    };
    if !known && !force_marker {
        return Err(Failure::Usage(format!(
            "no job in this store made container {} on {} ({}); its pvefleet marker tag alone proves nothing (any \
             PVE user who may tag guests can write one). Give --force-marker if you know it is pvefleet's",
            entry.vmid, entry.node, entry.hostname
        )));
    }
    let target = ContainerTarget {
        vmid: entry.vmid,
        create_job: entry.create_job.filter(|_| known),
        hostname: Some(entry.hostname.clone()),
    };
    Ok((entry.node.clone(), target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_match_globs() {
        assert!(glob("web-*", "web-01"));
        assert!(glob("*", "anything"));
        assert!(glob("w*b*1", "web-01"));
        assert!(!glob("web-*", "db-01"));
        assert!(!glob("web", "web-01"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn a_selection_names_its_bad_part() {
        assert!("tag=web,node=pve1,hostname=web-*".parse::<Selection>().is_ok());
        assert!("color=red".parse::<Selection>().unwrap_err().contains("color"));
        assert!("tag".parse::<Selection>().unwrap_err().contains("key=value"));
        assert!("".parse::<Selection>().is_err());
    }
}
