//! Node facts: what a job's checks read about its node that changes rarely (storages with
//! their free space, the template lists, the network's bridges and VLANs, the appliance
//! catalogue) and where vmids are free, read once and kept for `proxmox.facts_ttl` (10 s by
//! default), shared by every job on the node and by `plan`.
//!
//! A fact may be stale, so it may only ever *pass* a check: a check that would refuse on a kept
//! fact is asked again on fresh ones (the caller [`Facts::forget`]s and checks again), and a
//! job whose PVE call failed forgets them all, so the next job reads afresh. A stale fact that
//! passes a job PVE then refuses (a storage filled meanwhile, a template deleted) ends the job
//! as PVE's own refusal would, with its rollback. A vmid chosen from the kept list is reserved
//! in the vmids bucket like any other, and PVE's own "already exists" answers a guest made
//! meanwhile (the job takes another vmid, and the facts are forgotten).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The node facts of one agent. Cheap to share: every [`super::PveClient`] clone holds the same.
#[derive(Debug)]
pub struct Facts {
    ttl: Duration,
    kept: Mutex<HashMap<String, (Instant, Value)>>,
    vmids: Mutex<Option<Vmids>>,
}

/// Where vmids are free: `/cluster/nextid` and the guests of `/cluster/resources` as read, plus
/// every vmid handed out or found reserved since.
#[derive(Debug)]
struct Vmids {
    read_at: Instant,
    from: u32,
    used: BTreeSet<u32>,
}

/// The GET paths (under `/nodes/{node}`) whose answers are node facts. Anything else, the
/// containers, their configs and tasks, and the cluster's guests, is always read fresh.
fn is_fact(rest: &str, params: &[(&str, String)]) -> bool {
    match rest {
        "/storage" | "/network" | "/aplinfo" => true,
        // A storage's templates (its backups change with every backup job).
        _ => {
            rest.strip_prefix("/storage/").is_some_and(|s| s.ends_with("/content") && s.matches('/').count() == 1)
                && params.iter().any(|(k, v)| *k == "content" && v == "vztmpl")
        }
    }
}

impl Facts {
    /// Facts kept for `ttl`; zero keeps none (every check reads PVE).
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, kept: Mutex::default(), vmids: Mutex::default() }
    }

    /// The key a GET of `path` (relative to the node, `rest`) is kept under, if it is a fact.
    pub(super) fn key(&self, rest: Option<&str>, path: &str, params: &[(&str, String)]) -> Option<String> {
        if self.ttl.is_zero() || !is_fact(rest?, params) {
            return None;
        }
        let mut key = path.to_owned();
        for (k, v) in params {
            key.push_str(&format!("&{k}={v}"));
        }
        Some(key)
    }

    pub(super) fn get(&self, key: &str) -> Option<Value> {
        self.get_at(key, Instant::now())
    }

    /// The fact kept under `key` if it is still fresh at `now`.
    fn get_at(&self, key: &str, now: Instant) -> Option<Value> {
        let kept = self.kept.lock().expect("facts");
        kept.get(key).filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl).map(|(_, v)| v.clone())
    }

    pub(super) fn put(&self, key: String, value: Value) {
        self.kept.lock().expect("facts").insert(key, (Instant::now(), value));
    }

    /// Forgets every fact: the next check reads PVE again.
    pub fn forget(&self) {
        self.kept.lock().expect("facts").clear();
        *self.vmids.lock().expect("facts") = None;
    }

    /// The lowest vmid at or above `after + 1` (or the start PVE gave) that is neither a guest
    /// nor handed out since the read, if the read is still fresh.
    pub(super) fn free_vmid(&self, after: Option<u32>) -> Option<u32> {
        let vmids = self.vmids.lock().expect("facts");
        let v = vmids.as_ref().filter(|v| v.read_at.elapsed() < self.ttl)?;
        lowest_free(v.from, &v.used, after)
    }

    pub(super) fn set_vmids(&self, from: u32, used: BTreeSet<u32>) {
        if self.ttl.is_zero() {
            return;
        }
        *self.vmids.lock().expect("facts") = Some(Vmids { read_at: Instant::now(), from, used });
    }

    /// `vmid` is taken (handed to a job, or found reserved by another): no later job tries it
    /// while the read lasts.
    pub fn used(&self, vmid: u32) {
        if let Some(v) = self.vmids.lock().expect("facts").as_mut() {
            v.used.insert(vmid);
        }
    }
}

/// The lowest vmid from `from` (PVE's `/cluster/nextid`) and above `after` that `used` lacks.
pub(super) fn lowest_free(from: u32, used: &BTreeSet<u32>, after: Option<u32>) -> Option<u32> {
    let start = after.map_or(from, |a| a.saturating_add(1).max(from));
    (start..=pvefleet_schemas::Vmid::MAX).find(|n| !used.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_node_facts_are_kept() {
        let f = Facts::new(Duration::from_secs(10));
        let vztmpl = [("content", "vztmpl".to_owned())];
        let backup = [("content", "backup".to_owned())];
        assert!(f.key(Some("/storage"), "/nodes/pve1/storage", &[("content", "rootdir".into())]).is_some());
        assert!(f.key(Some("/network"), "/nodes/pve1/network", &[]).is_some());
        assert!(f.key(Some("/storage/local/content"), "/nodes/pve1/storage/local/content", &vztmpl).is_some());
        assert!(f.key(Some("/storage/local/content"), "/nodes/pve1/storage/local/content", &backup).is_none());
        assert!(f.key(Some("/lxc"), "/nodes/pve1/lxc", &[]).is_none());
        assert!(f.key(Some("/lxc/100/config"), "/nodes/pve1/lxc/100/config", &[]).is_none());
        assert!(f.key(None, "/cluster/resources", &[]).is_none());
        // Different parameters, different facts.
        let a = f.key(Some("/storage"), "/nodes/pve1/storage", &[("content", "rootdir".into())]);
        let b = f.key(Some("/storage"), "/nodes/pve1/storage", &[("content", "vztmpl".into())]);
        assert_ne!(a, b);
        assert!(Facts::new(Duration::ZERO).key(Some("/network"), "/nodes/pve1/network", &[]).is_none());
    }

    #[test]
    fn a_fact_is_kept_for_its_time_and_forgotten_on_demand() {
        let f = Facts::new(Duration::from_secs(10));
        f.put("k".into(), Value::from(1));
        assert_eq!(f.get("k"), Some(Value::from(1)));
        f.forget();
        assert_eq!(f.get("k"), None);
        f.put("k".into(), Value::from(2));
        let later = Instant::now() + Duration::from_secs(10);
        assert_eq!(f.get_at("k", later), None, "a fact older than its time is read again");
        assert_eq!(f.get("k"), Some(Value::from(2)));
    }

    #[test]
    fn free_vmids_skip_guests_and_what_was_handed_out() {
        let f = Facts::new(Duration::from_secs(10));
        assert_eq!(f.free_vmid(None), None, "nothing read yet");
        f.set_vmids(101, [100, 102, 103, 200].into());
        assert_eq!(f.free_vmid(None), Some(101));
        f.used(101);
        assert_eq!(f.free_vmid(None), Some(104));
        assert_eq!(f.free_vmid(Some(104)), Some(105));
        assert_eq!(f.free_vmid(Some(199)), Some(201));
        f.forget();
        assert_eq!(f.free_vmid(None), None);
    }
}
