//! What the world holds once the faults are over: every event in the events stream (by job,
//! in stream order, duplicates and all), every guest fakepve has (with its tags), and every
//! job row in the coordinator's store.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use pvefleet_schemas::{Event, JobId};

use crate::FakePve;

/// A guest in the Proxmox cluster.
#[derive(Debug, Clone)]
pub struct Guest {
    pub vmid: u32,
    pub node: String,
    pub tags: Vec<String>,
}

/// A job as the store has it.
#[derive(Debug, Clone)]
pub struct Row {
    pub state: String,
    pub vmid: Option<i64>,
    pub request_id: Option<String>,
}

/// A container a day-two job acted on (or the stranger's), as PVE has it at the end.
#[derive(Debug, Clone, Default)]
pub struct Container {
    /// Its config with what is pending (what an update is checked against).
    pub config: serde_json::Value,
    pub status: String,
    /// The node it is on, and on how many nodes the cluster lists its vmid.
    pub node: String,
    pub nodes: usize,
    /// How many reboot, resize and rollback tasks ran on it (on the node it is on).
    pub reboots: usize,
    pub resizes: usize,
    pub rollbacks: usize,
    /// Its snapshots' descriptions, and its backups' notes (on `local`).
    pub snapshots: Vec<String>,
    pub backups: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Observed {
    pub events: BTreeMap<JobId, Vec<Event>>,
    /// Events whose payload could not be read, with their subject.
    pub unreadable: Vec<String>,
    pub guests: Vec<Guest>,
    pub store: BTreeMap<JobId, Row>,
    /// By vmid: the containers day-two jobs acted on, and the stranger's.
    pub containers: BTreeMap<u32, Container>,
    /// The stranger's config digest when the run began.
    pub stranger_digest_before: String,
}

/// Each of `vmids` that still exists, wherever it is, with its task counts.
pub async fn containers(
    pve: &FakePve,
    guests: &[Guest],
    vmids: impl IntoIterator<Item = u32>,
) -> anyhow::Result<BTreeMap<u32, Container>> {
    let mut out = BTreeMap::new();
    for vmid in vmids {
        let Some(guest) = guests.iter().find(|g| g.vmid == vmid) else { continue };
        let node = &guest.node;
        let config = pve.api_get(&format!("/nodes/{node}/lxc/{vmid}/config")).await?;
        let status = pve.api_get(&format!("/nodes/{node}/lxc/{vmid}/status/current")).await?;
        let tasks = pve.api_get(&format!("/nodes/{node}/tasks?vmid={vmid}&limit=1000")).await?;
        let count = |kind: &str| tasks.as_array().into_iter().flatten().filter(|t| t["type"] == kind).count();
        let texts = |list: serde_json::Value, key: &str| -> Vec<String> {
            list.as_array().into_iter().flatten().filter_map(|i| i[key].as_str().map(str::to_owned)).collect()
        };
        let snapshots = texts(pve.api_get(&format!("/nodes/{node}/lxc/{vmid}/snapshot")).await?, "description");
        let backups = pve.api_get(&format!("/nodes/{node}/storage/local/content?content=backup&vmid={vmid}")).await?;
        out.insert(
            vmid,
            Container {
                status: status["status"].as_str().unwrap_or_default().to_owned(),
                node: node.clone(),
                nodes: guests.iter().filter(|g| g.vmid == vmid).count(),
                reboots: count("vzreboot"),
                resizes: count("resize"),
                rollbacks: count("vzrollback"),
                snapshots,
                backups: texts(backups, "notes"),
                config,
            },
        );
    }
    Ok(out)
}

/// Every event in every node's events stream, grouped by job in stream order.
pub async fn events(js: &jetstream::Context) -> anyhow::Result<(BTreeMap<JobId, Vec<Event>>, Vec<String>)> {
    let mut by_job: BTreeMap<JobId, Vec<Event>> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for (_, stream) in crate::jobs::events_streams(js).await? {
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await?;
        loop {
            let mut batch = consumer.fetch().max_messages(5_000).expires(Duration::from_secs(1)).messages().await?;
            let mut got = 0;
            while let Some(msg) = batch.next().await {
                let msg = msg.map_err(anyhow::Error::from_boxed)?;
                got += 1;
                match Event::decode(&msg.payload) {
                    Ok(e) => by_job.entry(e.job_id).or_default().push(e),
                    Err(e) => unreadable.push(format!("{}: {e}", msg.subject)),
                }
            }
            if got == 0 {
                break;
            }
        }
    }
    Ok((by_job, unreadable))
}

/// Every guest in the fake cluster.
pub async fn guests(pve: &FakePve) -> anyhow::Result<Vec<Guest>> {
    let data = pve.api_get("/cluster/resources?type=vm").await?;
    Ok(data
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| Guest {
            vmid: g["vmid"].as_u64().unwrap_or_default() as u32,
            node: g["node"].as_str().unwrap_or_default().to_owned(),
            tags: g["tags"].as_str().unwrap_or_default().split([';', ',', ' ']).map(str::to_owned).collect(),
        })
        .collect())
}

/// Every job in the store.
pub async fn store(url: &str) -> anyhow::Result<BTreeMap<JobId, Row>> {
    let store = pvefleet_coordinator::store::Store::open(&store_url(url)).await?;
    let mut rows = BTreeMap::new();
    for job in store.jobs(None, None, 0).await? {
        let id: JobId = job.job_id.parse().map_err(|e| anyhow::anyhow!("stored job id {}: {e}", job.job_id))?;
        rows.insert(id, Row { state: job.state.to_string(), vmid: job.vmid, request_id: job.request_id });
    }
    Ok(rows)
}

fn store_url(db: &str) -> String {
    pvefleet_coordinator::store::database_url(Some(db)).unwrap_or_else(|_| db.to_owned())
}

/// Waits until the recorder's consumer on every node's events stream has nothing left to
/// deliver or acknowledge.
pub async fn recorder_caught_up(js: &jetstream::Context, within: Duration) -> anyhow::Result<()> {
    crate::wait_until("the recorder to catch up", within, || async {
        for (_, stream) in crate::jobs::events_streams(js).await.ok()? {
            let mut consumer = stream.get_consumer::<consumer::pull::Config>("pvefleet-recorder").await.ok()?;
            let info = consumer.info().await.ok()?;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                return None;
            }
        }
        Some(())
    })
    .await
}
