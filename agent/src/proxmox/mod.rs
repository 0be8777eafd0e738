//! The Proxmox VE API client: token or ticket auth, TLS pinned by [`crate::tls`], PVE's errors kept whole, and
//! transient failures retried with exponential backoff inside each call.
//!
//! There is one implementation and tests drive it against fakepve, a fake that validates every
//! request against PVE's schema, so no trait stands in front of it.

mod auth;
mod error;
mod facts;
mod keeping;
pub mod task;

use error::transport_error;
pub use error::{PveError, Refusal};

use auth::Auth;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use pvefleet_schemas::{NodeName, Vmid};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::config::ProxmoxConfig;
use crate::tls;

pub use facts::Facts;
pub use keeping::{Backup, MigrateCheck, Snapshot};
pub use task::{TaskOutcome, Upid};

/// A container's power state, from `status/current`.
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerStatus {
    pub status: String,
    #[serde(default)]
    pub lock: Option<String>,
}

/// One storage's figures, from `/nodes/{node}/storage`.
#[derive(Debug, Clone, Deserialize)]
pub struct StorageInfo {
    pub storage: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub avail: u64,
    #[serde(default)]
    pub active: Option<u8>,
}

/// The figures of `/nodes/{node}/status` the heartbeat reports.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub memory_total: u64,
    pub memory_free: u64,
    pub cpus: u32,
    pub cpu: f64,
}

/// The Proxmox API of one node.
#[derive(Clone)]
pub struct PveClient {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    root_login: bool,
    node: NodeName,
    retry: ExponentialBuilder,
    /// The node facts every clone shares ([`facts`]).
    facts: std::sync::Arc<Facts>,
    /// Whether this copy reads node facts from [`Self::facts`] ([`Self::with_facts`]).
    reads_facts: bool,
}

impl std::fmt::Debug for PveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PveClient").field("base", &self.base).field("node", &self.node).finish_non_exhaustive()
    }
}

impl PveClient {
    pub fn new(config: &ProxmoxConfig, node: NodeName) -> Result<Self, tls::TlsError> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls::client_config(&config.trust)?)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| tls::TlsError::Client(e.to_string()))?;
        Ok(Self {
            http,
            base: format!("{}/api2/json", config.url),
            auth: Auth::new(&config.credential),
            root_login: config.credential.is_root_login(),
            node,
            retry: crate::retry::pve_call(),
            facts: std::sync::Arc::new(Facts::new(config.facts_ttl)),
            reads_facts: false,
        })
    }

    /// A copy whose calls retry transient errors differently (tests and start-up use this).
    pub fn with_retry(mut self, retry: ExponentialBuilder) -> Self {
        self.retry = retry;
        self
    }

    pub fn node(&self) -> &NodeName {
        &self.node
    }

    /// A copy whose reads of node facts (storages, templates, bridges, the appliance
    /// catalogue, where vmids are free) may be answered from what was read in the last
    /// `proxmox.facts_ttl`: for a job's checks and a plan, which ask them again fresh before
    /// refusing ([`Facts`]). Every other call, and every call of the plain client, reads PVE.
    pub fn with_facts(&self) -> Self {
        Self { reads_facts: true, ..self.clone() }
    }

    /// Forgets the node facts: a failure they could explain was seen, or a check would refuse.
    pub fn forget_facts(&self) {
        self.facts.forget();
    }

    /// One request, retried while the failure is transient. Returns PVE's `data`. A node fact
    /// read through [`Self::with_facts`] may come from what was kept.
    pub async fn call(&self, method: Method, path: &str, params: &[(&str, String)]) -> Result<Value, PveError> {
        let rest = path.strip_prefix("/nodes/").and_then(|p| p.strip_prefix(self.node.as_str()));
        let key = (self.reads_facts && method == Method::GET).then(|| self.facts.key(rest, path, params)).flatten();
        if let Some(key) = &key
            && let Some(kept) = self.facts.get(key)
        {
            return Ok(kept);
        }
        let data = self.call_fresh(method, path, params).await?;
        if let Some(key) = key {
            self.facts.put(key, data.clone());
        }
        Ok(data)
    }

    async fn call_fresh(&self, method: Method, path: &str, params: &[(&str, String)]) -> Result<Value, PveError> {
        (|| self.call_once(method.clone(), path, params))
            .retry(self.retry)
            .when(PveError::is_transient)
            .notify(|e, wait| {
                crate::metrics::metrics().retry();
                tracing::warn!(error = %pvefleet_schemas::report::error_chain(e), retry_in = ?wait, "Proxmox API call failed; retrying");
            })
            .await
    }

    /// One request, no retry (but for one new ticket when PVE refused an old one).
    pub async fn call_once(&self, method: Method, path: &str, params: &[(&str, String)]) -> Result<Value, PveError> {
        match self.request(method.clone(), path, params).await {
            Err(PveError::Api { status: 401, .. }) if self.auth.refused().await => {
                self.request(method, path, params).await
            }
            other => other,
        }
    }

    /// Whether this client signed in as `root@pam` (not with a token): what PVE requires for
    /// bind mounts and features other than `nesting`.
    pub fn is_root_login(&self) -> bool {
        self.root_login
    }

    async fn request(&self, method: Method, path: &str, params: &[(&str, String)]) -> Result<Value, PveError> {
        let started = std::time::Instant::now();
        let outcome = self.request_untimed(method.clone(), path, params).await;
        let status = match &outcome {
            Ok(_) => Some(200),
            Err(PveError::Api { status, .. }) => Some(*status),
            Err(_) => None,
        };
        crate::metrics::metrics().call(&method, status, started.elapsed());
        outcome
    }

    async fn request_untimed(&self, method: Method, path: &str, params: &[(&str, String)]) -> Result<Value, PveError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.auth.sign(self.http.request(method.clone(), &url), &method, &self.http, &self.base).await?;
        req = if method == Method::GET || method == Method::DELETE { req.query(params) } else { req.form(params) };
        let resp = req.send().await.map_err(|source| transport_error(method.clone(), path, source))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|source| transport_error(method.clone(), path, source))?;
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(parsed.get("data").cloned().unwrap_or(Value::Null));
        }
        let message = parsed
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| status.canonical_reason().map(str::to_owned))
            .unwrap_or_default();
        let errors = parsed
            .get("errors")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect()
            })
            .unwrap_or_default();
        Err(PveError::Api {
            method,
            path: path.to_owned(),
            status: status.as_u16(),
            message: message.trim().to_owned(),
            errors,
        })
    }

    fn node_path(&self, rest: &str) -> String {
        format!("/nodes/{}{rest}", self.node)
    }

    fn shape(&self, method: Method, path: &str, detail: impl Into<String>) -> PveError {
        PveError::Shape { method, path: path.to_owned(), detail: detail.into() }
    }

    /// The next free vmid in the cluster.
    pub async fn next_vmid(&self) -> Result<Vmid, PveError> {
        let data = self.call(Method::GET, "/cluster/nextid", &[]).await?;
        let id = data
            .as_str()
            .and_then(|s| s.parse::<u32>().ok())
            .or_else(|| data.as_u64().and_then(|n| u32::try_from(n).ok()))
            .and_then(|n| Vmid::new(n).ok());
        id.ok_or_else(|| self.shape(Method::GET, "/cluster/nextid", format!("{data}")))
    }

    /// A vmid above `after` (or the lowest) that no guest in the cluster had when the node
    /// facts were read, nor any job since: read afresh (`/cluster/nextid` and the guests of
    /// `/cluster/resources`) when the facts are older than `proxmox.facts_ttl`. A guest made
    /// meanwhile by someone else is PVE's "already exists" at the create.
    pub async fn free_vmid(&self, after: Option<Vmid>) -> Result<Vmid, PveError> {
        let after = after.map(Vmid::get);
        if let Some(n) = self.facts.free_vmid(after) {
            return Ok(Vmid::new(n).expect("a kept candidate is in range"));
        }
        let from = self.next_vmid().await?;
        let used: std::collections::BTreeSet<u32> =
            self.guests(|_| true).await?.into_iter().map(|(_, v)| v.get()).collect();
        let found = facts::lowest_free(from.get(), &used, after);
        self.facts.set_vmids(from.get(), used);
        let n = found.ok_or_else(|| self.shape(Method::GET, "/cluster/nextid", "no free vmid above it"))?;
        Vmid::new(n).map_err(|e| self.shape(Method::GET, "/cluster/nextid", e.to_string()))
    }

    /// `vmid` went to a job or is reserved by another: the kept facts skip it from now on.
    pub fn vmid_used(&self, vmid: Vmid) {
        self.facts.used(vmid.get());
    }

    /// Whether `vmid` is free in the whole cluster (PVE answers 400 for a taken one).
    pub async fn vmid_is_free(&self, vmid: Vmid) -> Result<bool, PveError> {
        match self.call(Method::GET, "/cluster/nextid", &[("vmid", vmid.to_string())]).await {
            Ok(_) => Ok(true),
            Err(PveError::Api { status: 400, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The guests in the cluster carrying `tag`, as `(node, vmid)`.
    pub async fn guests_tagged(&self, tag: &str) -> Result<Vec<(String, Vmid)>, PveError> {
        self.guests(|g| g["tags"].as_str().is_some_and(|tags| has_tag(tags, tag))).await
    }

    /// The node guest `vmid` is on, from `/cluster/resources`, if it is anywhere.
    pub async fn guest_node(&self, vmid: Vmid) -> Result<Option<String>, PveError> {
        Ok(self.guests(|g| vmid_in(g) == Some(vmid)).await?.into_iter().next().map(|(node, _)| node))
    }

    /// The guests of the cluster (`/cluster/resources`) that `pick` takes, as `(node, vmid)`.
    async fn guests(&self, pick: impl Fn(&Value) -> bool) -> Result<Vec<(String, Vmid)>, PveError> {
        let data = self.call(Method::GET, "/cluster/resources", &[("type", "vm".to_owned())]).await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| pick(g))
            .filter_map(|g| Some((g["node"].as_str()?.to_owned(), vmid_in(g)?)))
            .collect())
    }

    /// The containers on this node as `GET /nodes/{node}/lxc` lists them: read from their
    /// configs at the call (unlike `/cluster/resources`, whose names come from pvestatd's
    /// figures, seconds late), so a container's name, tags and lock agree.
    pub async fn containers_here(&self) -> Result<Vec<Listed>, PveError> {
        let data = self.call(Method::GET, &self.node_path("/lxc"), &[]).await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| {
                let vmid = vmid_in(g)?;
                let text = |key: &str| g[key].as_str().map(str::to_owned);
                let template = g["template"].as_u64() == Some(1) || g["template"].as_str() == Some("1");
                Some(Listed { vmid, name: text("name"), tags: text("tags"), lock: text("lock"), template })
            })
            .collect())
    }

    /// A container's config on this node, or `None` when it does not exist here.
    pub async fn container_config(&self, vmid: Vmid) -> Result<Option<Value>, PveError> {
        match self.call(Method::GET, &self.node_path(&format!("/lxc/{vmid}/config")), &[]).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn create_container(&self, params: &[(&str, String)]) -> Result<Upid, PveError> {
        let path = self.node_path("/lxc");
        self.task(Method::POST, &path, params).await
    }

    pub async fn status(&self, vmid: Vmid) -> Result<ContainerStatus, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}/status/current"));
        let data = self.call(Method::GET, &path, &[]).await?;
        serde_json::from_value(data).map_err(|e| self.shape(Method::GET, &path, e.to_string()))
    }

    pub async fn start(&self, vmid: Vmid) -> Result<Upid, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}/status/start"));
        self.task(Method::POST, &path, &[]).await
    }

    /// A clean shutdown, given `within` to finish (PVE's task fails if it does not).
    pub async fn shutdown(&self, vmid: Vmid, within: Duration) -> Result<Upid, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}/status/shutdown"));
        self.task(Method::POST, &path, &[("timeout", within.as_secs().max(1).to_string())]).await
    }

    pub async fn stop(&self, vmid: Vmid) -> Result<Upid, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}/status/stop"));
        self.task(Method::POST, &path, &[]).await
    }

    /// Deletes the container with its disks and every reference to it (jobs, HA, replication).
    pub async fn destroy(&self, vmid: Vmid) -> Result<Upid, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}"));
        let params = [("purge", "1".to_owned()), ("destroy-unreferenced-disks", "1".to_owned())];
        self.task(Method::DELETE, &path, &params).await
    }

    /// Stops a running task (PVE's `DELETE /nodes/{node}/tasks/{upid}`).
    pub async fn stop_task(&self, upid: &Upid) -> Result<(), PveError> {
        let path = format!("/nodes/{}/tasks/{}", upid.node(), upid.as_str());
        self.call(Method::DELETE, &path, &[]).await.map(drop)
    }

    pub async fn set_config(&self, vmid: Vmid, params: &[(&str, String)]) -> Result<(), PveError> {
        self.call(Method::PUT, &self.node_path(&format!("/lxc/{vmid}/config")), params).await.map(drop)
    }

    /// A config change made only if the config is still the one read (its `digest`): PVE
    /// refuses it otherwise ([`Refusal::DigestChanged`]). Sent once, never retried: a change
    /// whose answer was lost is found by reading the config again.
    pub async fn put_config(&self, vmid: Vmid, params: &[(&str, String)]) -> Result<(), PveError> {
        self.call_once(Method::PUT, &self.node_path(&format!("/lxc/{vmid}/config")), params).await.map(drop)
    }

    /// The keys PVE keeps pending for the container's next start (`GET …/pending`).
    pub async fn pending(&self, vmid: Vmid) -> Result<Vec<String>, PveError> {
        let data = self.call(Method::GET, &self.node_path(&format!("/lxc/{vmid}/pending")), &[]).await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter(|item| item.get("pending").is_some() || item.get("delete").is_some_and(|d| d != 0))
            .filter_map(|item| item["key"].as_str().map(str::to_owned))
            .collect())
    }

    /// Grows a disk to `size` (PVE's spelling, `20G`).
    pub async fn resize(&self, vmid: Vmid, disk: &str, size: &str) -> Result<Upid, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}/resize"));
        self.task(Method::PUT, &path, &[("disk", disk.to_owned()), ("size", size.to_owned())]).await
    }

    /// A reboot (a clean shutdown within `within`, then a start), sent once: sending it again
    /// after a lost answer would reboot twice, so a lost answer is looked for in the node's
    /// task list first ([`Self::task_since`]).
    pub async fn reboot_once(&self, vmid: Vmid, within: Duration) -> Result<Upid, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}/status/reboot"));
        self.task_once(Method::POST, &path, &[("timeout", within.as_secs().max(1).to_string())]).await
    }

    /// The newest task of `kind` for `vmid` on this node begun at or after `since` (seconds
    /// since the epoch): how a request whose answer was lost is found to have been carried out.
    pub async fn task_since(&self, vmid: Vmid, kind: &str, since: u64) -> Result<Option<Upid>, PveError> {
        // `all`: PVE's default source is the archive, which holds only tasks that have ended.
        let params = [("vmid", vmid.to_string()), ("limit", "50".to_owned()), ("source", "all".to_owned())];
        let data = self.call(Method::GET, &self.node_path("/tasks"), &params).await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["upid"].as_str()?.parse::<Upid>().ok())
            .filter(|u| u.kind() == kind && u.id() == vmid.to_string() && u.started().is_some_and(|s| s >= since))
            .max_by_key(|u| u.started()))
    }

    /// `GET /nodes/{node}/lxc` as PVE answers it: one object per container on the node.
    pub async fn containers_listed(&self) -> Result<Vec<Value>, PveError> {
        let data = self.call(Method::GET, &self.node_path("/lxc"), &[]).await?;
        Ok(data.as_array().cloned().unwrap_or_default())
    }

    /// The address of the container's interface `nic` (IPv4 first, else a global IPv6), if
    /// it has one yet; `configured` are the static addresses the spec gave it.
    pub async fn container_ip(&self, vmid: Vmid, nic: &str, configured: &[IpAddr]) -> Result<Option<IpAddr>, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}/interfaces"));
        let data = self.call(Method::GET, &path, &[]).await?;
        Ok(address_of(&data, nic, configured))
    }

    pub async fn node_status(&self) -> Result<NodeStatus, PveError> {
        let path = self.node_path("/status");
        let d = self.call_once(Method::GET, &path, &[]).await?;
        let num = |v: &Value| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)).unwrap_or(0);
        Ok(NodeStatus {
            memory_total: num(&d["memory"]["total"]),
            memory_free: num(&d["memory"]["available"]).max(num(&d["memory"]["free"])),
            cpus: num(&d["cpuinfo"]["cpus"]) as u32,
            cpu: d["cpu"].as_f64().unwrap_or(0.0),
        })
    }

    /// Active storages on this node that can hold container root disks.
    pub async fn rootdir_storages(&self) -> Result<Vec<StorageInfo>, PveError> {
        self.storages_with("rootdir").await
    }

    /// Active storages on this node that can hold backups.
    pub async fn backup_storages(&self) -> Result<Vec<StorageInfo>, PveError> {
        self.storages_with("backup").await
    }

    /// Active storages on this node whose content includes `content`.
    async fn storages_with(&self, content: &str) -> Result<Vec<StorageInfo>, PveError> {
        let path = self.node_path("/storage");
        let data = self.call(Method::GET, &path, &[("content", content.to_owned())]).await?;
        let all: Vec<StorageInfo> =
            serde_json::from_value(data).map_err(|e| self.shape(Method::GET, &path, e.to_string()))?;
        Ok(all.into_iter().filter(|s| s.active != Some(0) && s.content.split(',').any(|c| c == content)).collect())
    }

    /// Whether `volid` (`local:vztmpl/…`) is a container template on this node.
    pub async fn template_exists(&self, volid: &str) -> Result<bool, PveError> {
        Ok(self.template_file(volid).await?.is_some())
    }

    /// The template file `volid` (`local:vztmpl/…`) as its storage lists it: its size and
    /// ctime, which change when anyone writes other bytes under its name.
    pub async fn template_file(&self, volid: &str) -> Result<Option<StoredFile>, PveError> {
        let storage = volid.split(':').next().unwrap_or_default();
        let path = self.node_path(&format!("/storage/{storage}/content"));
        let data = match self.call(Method::GET, &path, &[("content", "vztmpl".to_owned())]).await {
            Ok(d) => d,
            Err(e) if e.is_missing() || matches!(e, PveError::Api { status: 400..=499, .. }) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(data.as_array().into_iter().flatten().find(|i| i["volid"].as_str() == Some(volid)).map(|i| StoredFile {
            size: i["size"].as_u64().unwrap_or_default(),
            ctime: i["ctime"].as_i64().unwrap_or_default(),
        }))
    }

    /// Active storages on this node that can hold container templates.
    pub async fn template_storages(&self) -> Result<Vec<StorageInfo>, PveError> {
        self.storages_with("vztmpl").await
    }

    /// Fetches a template onto its storage as `fetch` says (see [`Fetch`]).
    pub async fn fetch(&self, fetch: &Fetch) -> Result<Upid, PveError> {
        self.task(Method::POST, &self.node_path(&fetch.path), &fetch.params).await
    }

    /// The template names in this node's appliance catalogue (`pveam available`).
    pub async fn appliances(&self) -> Result<Vec<String>, PveError> {
        let data = self.call(Method::GET, &self.node_path("/aplinfo"), &[]).await?;
        Ok(data.as_array().into_iter().flatten().filter_map(|a| a["template"].as_str().map(str::to_owned)).collect())
    }

    /// The pool guest `vmid` belongs to, if any (`/cluster/resources`).
    pub async fn pool_of(&self, vmid: Vmid) -> Result<Option<String>, PveError> {
        let data = self.call(Method::GET, "/cluster/resources", &[("type", "vm".to_owned())]).await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| vmid_in(g) == Some(vmid))
            .and_then(|g| g["pool"].as_str().map(str::to_owned)))
    }

    /// `POST /lxc/{from}/clone` to `newid` (in `params`).
    pub async fn clone_container(&self, from: Vmid, params: &[(&str, String)]) -> Result<Upid, PveError> {
        let path = self.node_path(&format!("/lxc/{from}/clone"));
        self.task(Method::POST, &path, params).await
    }

    /// The privileges the agent's credential holds, by path (`GET /access/permissions`).
    pub async fn permissions(&self) -> Result<BTreeMap<String, Vec<String>>, PveError> {
        let data = self.call(Method::GET, "/access/permissions", &[]).await?;
        Ok(data
            .as_object()
            .into_iter()
            .flatten()
            .map(|(path, privs)| {
                let held = privs
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, v)| v.as_u64() == Some(1) || v.as_bool() == Some(true));
                (path.clone(), held.map(|(k, _)| k.clone()).collect())
            })
            .collect())
    }

    /// The node's own addresses: those of its interfaces (`GET /nodes/{node}/network`) and the
    /// API's host when it is written as an address.
    pub async fn node_addresses(&self) -> Result<Vec<IpAddr>, PveError> {
        let path = self.node_path("/network");
        let data = self.call(Method::GET, &path, &[]).await?;
        let mut found: Vec<IpAddr> = data
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| ["address", "address6", "cidr", "cidr6"].map(|k| i[k].as_str().map(str::to_owned)))
            .flatten()
            .filter_map(|a| a.split('/').next().and_then(|a| a.parse().ok()))
            .collect();
        let host = reqwest::Url::parse(&self.base).ok().and_then(|u| u.host_str().map(str::to_owned));
        if let Some(ip) = host.and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok()) {
            found.push(ip);
        }
        Ok(found)
    }

    /// The node's interfaces a NIC may name, with their VLAN settings.
    pub async fn bridges(&self) -> Result<Vec<Bridge>, PveError> {
        let path = self.node_path("/network");
        let data = self.call(Method::GET, &path, &[]).await?;
        Ok(data.as_array().into_iter().flatten().filter_map(Bridge::from_iface).collect())
    }

    /// Sends a request that starts a task, and reads the task's UPID from PVE's answer.
    async fn task(&self, method: Method, path: &str, params: &[(&str, String)]) -> Result<Upid, PveError> {
        let data = self.call(method.clone(), path, params).await?;
        data.as_str()
            .and_then(|s| s.parse::<Upid>().ok())
            .ok_or_else(|| self.shape(method, path, format!("expected a task UPID, got {data}")))
    }
}

/// A template fetch as PVE takes it: what the client sends and what a plan shows, written
/// once. `download-url` fetches a URL onto the storage and checks its checksum before it keeps
/// it; `aplinfo` downloads from the node's appliance catalogue (`pveam download`);
/// `oci-registry-pull` pulls an OCI image as a template file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// The path under `/nodes/{node}` (always a `POST`).
    pub path: String,
    pub params: Vec<(&'static str, String)>,
}

impl Fetch {
    pub fn of(source: &pvefleet_schemas::source::TemplateSource) -> Self {
        use pvefleet_schemas::source::TemplateSource;
        match source {
            TemplateSource::Download(d) => Fetch {
                path: format!("/storage/{}/download-url", d.storage),
                params: vec![
                    ("content", "vztmpl".to_owned()),
                    ("filename", d.filename.clone()),
                    ("url", d.url.clone()),
                    ("checksum", d.checksum.to_ascii_lowercase()),
                    ("checksum-algorithm", d.algorithm.as_str().to_owned()),
                ],
            },
            TemplateSource::Appliance(a) => Fetch {
                path: "/aplinfo".to_owned(),
                params: vec![("storage", a.storage.clone()), ("template", a.name.clone())],
            },
            TemplateSource::Oci(o) => Fetch {
                path: format!("/storage/{}/oci-registry-pull", o.storage),
                params: vec![("reference", o.reference.clone()), ("filename", source.filename())],
            },
        }
    }
}

/// A file on a storage, as its content listing shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredFile {
    pub size: u64,
    /// When it was last written (seconds since the epoch).
    pub ctime: i64,
}

/// A container as `GET /nodes/{node}/lxc` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub vmid: Vmid,
    /// Its hostname (PVE shows `CT<vmid>` or nothing while a create has not written it).
    pub name: Option<String>,
    /// PVE's tag list (`a;b`).
    pub tags: Option<String>,
    /// `create` while a create or a clone runs, `backup`, `migrate`, …
    pub lock: Option<String>,
    /// Whether it is a template (what a clone is made from).
    pub template: bool,
}

impl Listed {
    /// Whether it carries a pvefleet marker tag (`pvefleet-<short job id>`).
    pub fn has_marker(&self) -> bool {
        self.tags.as_deref().is_some_and(|tags| {
            tags.split([';', ',', ' ']).any(|t| t.to_ascii_lowercase().starts_with(pvefleet_schemas::MARKER_TAG_PREFIX))
        })
    }
}

/// An interface of the node a NIC may name, and the VLANs it carries when it is VLAN-aware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    /// PVE's interface type: `bridge` (Linux), `OVSBridge`, …
    pub kind: String,
    /// `bridge_vids` of a VLAN-aware Linux bridge (PVE's default `2-4094` when unset); `None`
    /// for one that is not VLAN-aware (PVE makes a `vmbrNvX` bridge for any tag on it).
    pub vids: Option<String>,
}

impl Bridge {
    fn from_iface(iface: &Value) -> Option<Self> {
        let name = iface["iface"].as_str()?.to_owned();
        let kind = iface["type"].as_str().unwrap_or_default().to_owned();
        let aware = &iface["bridge_vlan_aware"];
        let aware = aware.as_u64() == Some(1) || aware == "1" || aware.as_bool() == Some(true);
        let vids = aware.then(|| iface["bridge_vids"].as_str().unwrap_or("2-4094").to_owned());
        Some(Self { name, kind, vids })
    }

    /// Whether a NIC on this bridge may use VLAN `id`: always on a bridge that is not
    /// VLAN-aware, and VLAN 1 always (the bridge's own, sent untagged); else one that
    /// `bridge_vids` lists, as ids and ranges separated by spaces or commas (`2 10-20`).
    pub fn carries(&self, id: u16) -> bool {
        let Some(vids) = &self.vids else { return true };
        id == 1
            || vids.split([' ', ',', ';']).filter(|p| !p.is_empty()).any(|part| match part.split_once('-') {
                Some((lo, hi)) => {
                    matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&id))
                }
                None => part.parse::<u16>() == Ok(id),
            })
    }

    /// Whether a NIC on this bridge may carry trunks: PVE refuses them on a Linux bridge that
    /// is not VLAN-aware ("vlan aware feature need to be enabled to use trunks"), at start.
    pub fn takes_trunks(&self) -> bool {
        self.vids.is_some() || self.kind != "bridge"
    }
}

/// A guest's vmid in a listing, which PVE writes as a number (or, in some listings, a string).
fn vmid_in(guest: &Value) -> Option<Vmid> {
    let n = guest["vmid"].as_u64().or_else(|| guest["vmid"].as_str().and_then(|v| v.parse().ok()))?;
    Vmid::new(u32::try_from(n).ok()?).ok()
}

/// Whether PVE's tag list (`a;b`, also split on `,` and spaces) holds `tag`, as PVE compares
/// them: without regard to case.
pub fn has_tag(tags: &str, tag: &str) -> bool {
    tags.split([';', ',', ' ']).any(|t| t.eq_ignore_ascii_case(tag))
}

/// PVE's tag list as PVE keeps the tags: each lowercased, none empty.
pub fn tags(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split([';', ',', ' ']).filter(|t| !t.is_empty()).map(str::to_ascii_lowercase)
}

/// Whether PVE's tag list holds a pvefleet marker (`pvefleet-…`).
pub fn has_marker_tag(text: &str) -> bool {
    tags(text).any(|t| t.starts_with(pvefleet_schemas::MARKER_TAG_PREFIX))
}

/// The address of interface `nic`: its first IPv4 address, else its first global IPv6 one.
/// Never an unspecified or link-local one (169.254/16, fe80::/10), and a loopback one (127/8,
/// ::1) only when the spec set it on this NIC itself: no real container has one on a NIC, but
/// the test bed's play containers do, and then it is the address the spec says to use.
fn address_of(data: &Value, nic: &str, configured: &[IpAddr]) -> Option<IpAddr> {
    let iface = data.as_array()?.iter().find(|i| i["name"].as_str() == Some(nic))?;
    let listed = iface["ip-addresses"].as_array().into_iter().flatten().filter_map(|a| a["ip-address"].as_str());
    let inet =
        ["inet", "inet6"].into_iter().filter_map(|k| iface[k].as_str()).map(|s| s.split('/').next().unwrap_or(s));
    let usable = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_link_local() && (!v4.is_loopback() || configured.contains(ip)),
        IpAddr::V6(v6) => {
            !v6.is_unspecified()
                && (v6.segments()[0] & 0xffc0) != 0xfe80
                && (!v6.is_loopback() || configured.contains(ip))
        }
    };
    let found: Vec<IpAddr> = listed.chain(inet).filter_map(|t| t.parse().ok()).filter(usable).collect();
    found.iter().find(|ip| ip.is_ipv4()).or_else(|| found.first()).copied()
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_vlan_aware_bridge_carries_only_its_vids() {
        let bridge =
            |vids: Option<&str>| Bridge { name: "vmbr1".into(), kind: "bridge".into(), vids: vids.map(str::to_owned) };
        assert!(bridge(None).carries(4000), "a bridge not VLAN-aware takes any tag");
        assert!(bridge(Some("2-100")).carries(2) && bridge(Some("2-100")).carries(100));
        assert!(!bridge(Some("2-100")).carries(101) && bridge(Some("2-100")).carries(1), "VLAN 1 is the bridge's own");
        assert!(!bridge(None).takes_trunks() && bridge(Some("2-100")).takes_trunks());
        assert!(Bridge { kind: "OVSBridge".into(), ..bridge(None) }.takes_trunks());
        let by_bool = Bridge::from_iface(&serde_json::json!({"iface": "vmbr2", "bridge_vlan_aware": true})).unwrap();
        assert!(by_bool.vids.is_some());
        assert!(bridge(Some("10 20-30")).carries(25) && !bridge(Some("10 20-30")).carries(11));
        let aware = Bridge::from_iface(&serde_json::json!({"iface": "vmbr1", "bridge_vlan_aware": 1})).unwrap();
        assert_eq!(aware.vids.as_deref(), Some("2-4094"));
        let plain = Bridge::from_iface(&serde_json::json!({"iface": "vmbr0"})).unwrap();
        assert_eq!(plain.vids, None);
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn addresses_are_the_named_nics_preferring_ipv4_never_link_local() {
        let data = json!([
            {"name": "lo", "inet": "127.0.0.1/8", "ip-addresses": [{"ip-address": "127.0.0.1"}]},
            {"name": "eth0", "ip-addresses": [{"ip-address": "fe80::1"}, {"ip-address": "fd00::5"}, {"ip-address": "10.0.0.5", "prefix": "24"}]},
            {"name": "eth1", "ip-addresses": [{"ip-address": "fe80::2"}, {"ip-address": "2001:db8::7"}]}
        ]);
        assert_eq!(address_of(&data, "eth0", &[]), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(address_of(&data, "eth1", &[]), Some("2001:db8::7".parse().unwrap()));
        assert_eq!(address_of(&data, "lo", &[]), None, "127/8 is never taken unless the spec set it");
        // A loopback address only when the spec put it on the NIC (the bed's play containers).
        let play = json!([{"name": "eth0", "inet": "127.0.0.71/32"}]);
        assert_eq!(address_of(&play, "eth0", &[]), None);
        assert_eq!(address_of(&play, "eth0", &["127.0.0.71".parse().unwrap()]), Some("127.0.0.71".parse().unwrap()));
        let both =
            json!([{"name": "eth0", "ip-addresses": [{"ip-address": "127.0.0.71"}, {"ip-address": "fd00::71"}]}]);
        assert_eq!(address_of(&both, "eth0", &[]), Some("fd00::71".parse().unwrap()));
        let dhcp_pending = json!([{"name": "lo", "inet": "127.0.0.1/8"}, {"name": "eth0", "ip-addresses": [{"ip-address": "fe80::1"}]}]);
        assert_eq!(address_of(&dhcp_pending, "eth0", &[]), None);
        assert_eq!(address_of(&Value::Null, "eth0", &[]), None);
    }

    fn api(status: u16, message: &str) -> PveError {
        PveError::Api {
            method: Method::POST,
            path: "/x".into(),
            status,
            message: message.into(),
            errors: BTreeMap::new(),
        }
    }

    #[test]
    fn refusals_are_told_from_pves_words_once() {
        assert_eq!(
            api(500, "CT 101 already exists on node 'pve2'").refusal(),
            Some(Refusal::AlreadyExists { on: Some("pve2".into()) })
        );
        assert_eq!(
            api(500, "Configuration file 'nodes/pve1/lxc/101.conf' does not exist").refusal(),
            Some(Refusal::Missing)
        );
        assert_eq!(api(500, "CT 101 not running").refusal(), Some(Refusal::NotRunning));
        assert_eq!(api(500, "CT 101 already running").refusal(), Some(Refusal::AlreadyRunning));
        assert_eq!(
            api(500, "can't lock file '/run/lock/lxc/pve-config-101.conf' - got timeout").refusal(),
            Some(Refusal::LockTimeout)
        );
        assert_eq!(api(400, "Parameter verification failed.").refusal(), None);
    }

    #[test]
    fn transient_or_not() {
        assert!(api(500, "boom").is_transient());
        assert!(api(595, "No route to host").is_transient());
        assert!(api(500, "can't lock file '/run/lock/lxc/pve-config-101.conf' - got timeout").is_transient());
        assert!(!api(500, "CT 101 already exists on node 'pve1'").is_transient());
        assert!(!api(500, "Configuration file 'nodes/pve1/lxc/101.conf' does not exist").is_transient());
        assert!(!api(400, "Parameter verification failed.").is_transient());
        assert!(!api(403, "Permission check failed").is_transient());
    }

    #[test]
    fn field_errors_are_in_the_message() {
        let mut errors = BTreeMap::new();
        errors.insert("memory".to_owned(), "value must have a minimum value of 16\n".to_owned());
        let e = PveError::Api {
            method: Method::POST,
            path: "/nodes/pve1/lxc".into(),
            status: 400,
            message: "Parameter verification failed.".into(),
            errors,
        };
        assert_eq!(
            e.to_string(),
            "POST /nodes/pve1/lxc: 400 Parameter verification failed.; memory: value must have a minimum value of 16"
        );
    }
}
