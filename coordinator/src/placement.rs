//! `--node auto`: the live agent with the most free memory whose node fits the container,
//! counting what the jobs placed before it by the same command take.

use async_nats::jetstream;
use pvefleet_schemas::{Job, NodeName};

use crate::Failure;

/// `--node auto`: the live agent with the most free memory whose node fits the container.
pub async fn place(js: &jetstream::Context, job: &Job) -> Result<NodeName, Failure> {
    let beats = crate::bus::heartbeats(js).await?;
    choose_node(&beats, job, &Placed::new())
}

/// Memory and disk bytes already given to jobs placed by this command, per node.
pub type Placed = std::collections::BTreeMap<NodeName, (u64, u64)>;

/// Places job `n` of `count` (on the freest node that fits it, with `--node auto`) and counts
/// what it takes against its node, so each later choice sees the jobs placed before it.
pub fn place_job(
    job: &mut Job,
    auto: bool,
    beats: &[pvefleet_schemas::Heartbeat],
    placed: &mut Placed,
    (n, count): (usize, u32),
) -> Result<(), Failure> {
    if auto {
        job.node = choose_node(beats, job, placed).map_err(|e| match e {
            Failure::Usage(m) if count > 1 => Failure::Usage(format!("job {n} of {count}: {m}")),
            other => other,
        })?;
    }
    take_share(placed, job);
    Ok(())
}

/// Counts `job`'s memory and root disk against its node.
pub fn take_share(placed: &mut Placed, job: &Job) {
    let entry = placed.entry(job.node.clone()).or_default();
    entry.0 += u64::from(job.container.memory) << 20;
    entry.1 += u64::from(job.container.effective_rootfs().size) << 30;
}

/// `--node auto`: the live agent with the most free memory that fits `job`, counting what
/// the jobs placed before it by the same command take.
pub fn choose_node(beats: &[pvefleet_schemas::Heartbeat], job: &Job, placed: &Placed) -> Result<NodeName, Failure> {
    let spec = &job.container;
    let rootfs = spec.effective_rootfs();
    let (need_mem, need_disk) = (u64::from(spec.memory) << 20, u64::from(rootfs.size) << 30);
    let mut best: Option<(u64, NodeName)> = None;
    let mut refused = Vec::new();
    for beat in beats {
        let Some(cap) = &beat.capacity else {
            refused.push(format!("{}: its Proxmox API did not answer", beat.node));
            continue;
        };
        let (mem_taken, disk_taken) = placed.get(&beat.node).copied().unwrap_or_default();
        let mem_free = cap.memory_free_bytes.saturating_sub(mem_taken);
        let storage = cap.storages.iter().find(|s| s.storage == rootfs.storage);
        match storage {
            None => refused.push(format!("{}: no storage `{}`", beat.node, rootfs.storage)),
            Some(s) if s.avail_bytes.saturating_sub(disk_taken) < need_disk => refused.push(format!(
                "{}: `{}` has {} GB free, needs {}",
                beat.node,
                rootfs.storage,
                s.avail_bytes.saturating_sub(disk_taken) >> 30,
                rootfs.size
            )),
            Some(_) if mem_free < need_mem => {
                refused.push(format!("{}: {} MB memory free, needs {}", beat.node, mem_free >> 20, spec.memory))
            }
            Some(_) => {
                if best.as_ref().is_none_or(|(free, _)| mem_free > *free) {
                    best = Some((mem_free, beat.node.clone()));
                }
            }
        }
    }
    best.map(|(_, node)| node).ok_or_else(|| {
        Failure::Usage(if refused.is_empty() {
            "--node auto: no live agent in the registry".into()
        } else {
            format!("--node auto: no live agent fits: {}", refused.join("; "))
        })
    })
}
/// A job recorded before by the same command still takes its share of its node.
pub fn count_placed(placed: &mut Placed, node: &str, spec: &str) {
    if let (Ok(node), Ok(mut job)) = (NodeName::new(node), pvefleet_schemas::Job::decode(spec.as_bytes())) {
        job.node = node;
        take_share(placed, &job);
    }
}
