//! The calls of the keeping kinds: snapshots, rollbacks, backups (vzdump), restores and
//! migrations. What must never run twice (a rollback, a restore over a container, a migration,
//! a backup) is sent with [`PveClient::task_once`]: no retry, a lost answer is looked for in
//! the node's task list ([`PveClient::task_since`]) by the job.

use reqwest::Method;
use serde_json::Value;

use super::{PveClient, PveError, Upid};
use pvefleet_schemas::Vmid;

/// One snapshot of a container, as `GET …/snapshot` lists it (without PVE's `current`).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub name: String,
    pub description: String,
    /// `prepare` or `delete` while a task makes or deletes it.
    pub snapstate: Option<String>,
    pub snaptime: i64,
    pub parent: Option<String>,
}

/// One backup volume, as the storage's content lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    pub volid: String,
    pub notes: String,
    pub protected: bool,
    pub ctime: i64,
    pub size: u64,
    pub vmid: Option<Vmid>,
}

/// What `GET …/migrate?target=` says about a migration.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrateCheck {
    pub running: bool,
    pub allowed_nodes: Vec<String>,
    /// Why a node is not allowed, as PVE says it (HA resources blocking it).
    pub not_allowed: Vec<String>,
}

impl PveClient {
    /// A request that starts a task, sent once (no retry): for what must never run twice.
    pub(crate) async fn task_once(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<Upid, PveError> {
        let data = self.call_once(method.clone(), path, params).await?;
        data.as_str()
            .and_then(|s| s.parse::<Upid>().ok())
            .ok_or_else(|| self.shape(method, path, format!("expected a task UPID, got {data}")))
    }

    /// The container's snapshots, oldest first.
    pub async fn snapshots(&self, vmid: Vmid) -> Result<Vec<Snapshot>, PveError> {
        let data = self.call(Method::GET, &self.node_path(&format!("/lxc/{vmid}/snapshot")), &[]).await?;
        let text = |v: &Value, k: &str| v[k].as_str().map(str::to_owned);
        let mut out: Vec<Snapshot> = data
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"].as_str() != Some("current"))
            .filter_map(|s| {
                Some(Snapshot {
                    name: text(s, "name")?,
                    description: text(s, "description").unwrap_or_default(),
                    snapstate: text(s, "snapstate"),
                    snaptime: s["snaptime"].as_i64().unwrap_or_default(),
                    parent: text(s, "parent"),
                })
            })
            .collect();
        out.sort_by_key(|s| s.snaptime);
        Ok(out)
    }

    /// Whether PVE can do `feature` (`snapshot`, `clone`, `copy`) with the container's volumes.
    pub async fn has_feature(&self, vmid: Vmid, feature: &str) -> Result<bool, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}/feature"));
        let data = self.call(Method::GET, &path, &[("feature", feature.to_owned())]).await?;
        Ok(matches!(&data["hasFeature"], Value::Bool(true)) || data["hasFeature"].as_u64() == Some(1))
    }

    /// Takes a snapshot, sent once: a second one of the same name fails in its task
    /// ("already used"), so a lost answer is looked for in the snapshot list instead.
    pub async fn take_snapshot(&self, vmid: Vmid, name: &str, description: &str) -> Result<Upid, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}/snapshot"));
        self.task_once(Method::POST, &path, &[("snapname", name.to_owned()), ("description", description.to_owned())])
            .await
    }

    pub async fn delete_snapshot(&self, vmid: Vmid, name: &str) -> Result<Upid, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}/snapshot/{name}"));
        self.task_once(Method::DELETE, &path, &[]).await
    }

    /// Rolls back to a snapshot (and starts the container after, if `start`). Sent once.
    pub async fn rollback(&self, vmid: Vmid, name: &str, start: bool) -> Result<Upid, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}/snapshot/{name}/rollback"));
        let params: Vec<(&str, String)> = if start { vec![("start", "1".to_owned())] } else { vec![] };
        self.task_once(Method::POST, &path, &params).await
    }

    /// Starts a vzdump backup of one container. Sent once.
    pub async fn vzdump(&self, params: &[(&str, String)]) -> Result<Upid, PveError> {
        self.task_once(Method::POST, &self.node_path("/vzdump"), params).await
    }

    /// The container backups on `storage` (of `vmid` only, when given).
    pub async fn backups(&self, storage: &str, vmid: Option<Vmid>) -> Result<Vec<Backup>, PveError> {
        let path = self.node_path(&format!("/storage/{storage}/content"));
        let mut params = vec![("content", "backup".to_owned())];
        if let Some(vmid) = vmid {
            params.push(("vmid", vmid.to_string()));
        }
        let data = self.call(Method::GET, &path, &params).await?;
        let mut out: Vec<Backup> = data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| {
                Some(Backup {
                    volid: b["volid"].as_str()?.to_owned(),
                    notes: b["notes"].as_str().unwrap_or_default().to_owned(),
                    protected: b["protected"].as_u64() == Some(1) || b["protected"] == Value::Bool(true),
                    ctime: b["ctime"].as_i64().unwrap_or_default(),
                    size: b["size"].as_u64().unwrap_or_default(),
                    vmid: b["vmid"].as_u64().and_then(|v| Vmid::new(u32::try_from(v).ok()?).ok()),
                })
            })
            .collect();
        out.sort_by_key(|b| b.ctime);
        Ok(out)
    }

    /// The config a backup holds, as PVE prints it (`key: value` lines).
    pub async fn backup_config(&self, volid: &str) -> Result<String, PveError> {
        let path = self.node_path("/vzdump/extractconfig");
        let data = self.call(Method::GET, &path, &[("volume", volid.to_owned())]).await?;
        data.as_str().map(str::to_owned).ok_or_else(|| self.shape(Method::GET, &path, format!("{data}")))
    }

    /// Whether the container may go to `target`, and what PVE says stands in the way.
    pub async fn migrate_check(&self, vmid: Vmid, target: &str) -> Result<MigrateCheck, PveError> {
        self.migrate_check_from(self.node.as_str(), vmid, target).await
    }

    /// [`Self::migrate_check`] of a container on another node (the agent of the node it would
    /// go to asks, for its plan).
    pub async fn migrate_check_from(&self, node: &str, vmid: Vmid, target: &str) -> Result<MigrateCheck, PveError> {
        let path = format!("/nodes/{node}/lxc/{vmid}/migrate");
        let data = self.call(Method::GET, &path, &[("target", target.to_owned())]).await?;
        let names = |v: &Value| -> Vec<String> {
            v.as_array().into_iter().flatten().filter_map(|n| n.as_str().map(str::to_owned)).collect()
        };
        let blocking = data["not-allowed-nodes"]["blocking-ha-resources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                format!("HA resource {} ({})", b["sid"].as_str().unwrap_or("?"), b["cause"].as_str().unwrap_or("?"))
            })
            .collect();
        Ok(MigrateCheck {
            running: data["running"].as_u64() == Some(1) || data["running"] == Value::Bool(true),
            allowed_nodes: names(&data["allowed-nodes"]),
            not_allowed: blocking,
        })
    }

    /// Migrates the container to `target` (restart mode when it runs). Sent once.
    pub async fn migrate(
        &self,
        vmid: Vmid,
        target: &str,
        restart: Option<std::time::Duration>,
        target_storage: Option<&str>,
    ) -> Result<Upid, PveError> {
        let path = self.node_path(&format!("/lxc/{vmid}/migrate"));
        let mut params = vec![("target", target.to_owned())];
        if let Some(within) = restart {
            params.push(("restart", "1".to_owned()));
            params.push(("timeout", within.as_secs().max(1).to_string()));
        }
        if let Some(storage) = target_storage {
            params.push(("target-storage", storage.to_owned()));
        }
        self.task_once(Method::POST, &path, &params).await
    }

    /// A container's config on another node of the cluster, or `None` when it is not there.
    pub async fn config_on(&self, node: &str, vmid: Vmid) -> Result<Option<Value>, PveError> {
        match self.call(Method::GET, &format!("/nodes/{node}/lxc/{vmid}/config"), &[]).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Restores a backup as a container (`POST /nodes/{node}/lxc` with `restore=1`). Sent once.
    pub async fn restore(&self, params: &[(&str, String)]) -> Result<Upid, PveError> {
        self.task_once(Method::POST, &self.node_path("/lxc"), params).await
    }
}
