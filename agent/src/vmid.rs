//! Choosing a vmid for a job that did not fix one. `/cluster/nextid` answers every caller with
//! the same id until a container takes it, so forty jobs allocating at once all hear "100".
//! Each candidate is therefore reserved for the job in `pvefleet-vmids` (a KV `create`, which
//! only one job can win) and then checked free in the cluster; a candidate lost on either
//! count is skipped for the next. Allocation goes on until the deadline, or until the id
//! range is really exhausted.

use std::time::Instant;

use async_nats::jetstream::kv::{self, CreateErrorKind};
use backon::Retryable as _;
use pvefleet_schemas::{JobId, NodeName, Timestamp, V1, Vmid, VmidReservation, names};

use crate::bus::{BusError, nats_retry};
use crate::proxmox::{PveClient, PveError};

/// How long a reservation holds: long enough for the create it precedes (PVE holds the id
/// from then on); a job resumed later finds the id taken or free and acts on that.
pub const RESERVATION_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Why no vmid was found.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Pve(#[from] PveError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("no free vmid found before the deadline ({tried} ids tried from {from})")]
    Deadline { from: Vmid, tried: u32 },
    #[error("the vmid range is exhausted above {from}")]
    Exhausted { from: Vmid },
}

/// Whether a reservation attempt won the id.
enum Reserve {
    Won,
    /// Reserved by another job.
    Taken,
}

/// A vmid free in the cluster and reserved for `job`, at or above `/cluster/nextid`.
pub async fn allocate(
    pve: &PveClient,
    vmids: &kv::Store,
    job: JobId,
    node: &NodeName,
    deadline: Instant,
) -> Result<Vmid, AllocError> {
    let from = pve.next_vmid().await?;
    let mut candidate = from;
    let mut tried = 0u32;
    loop {
        if Instant::now() >= deadline {
            return Err(AllocError::Deadline { from, tried });
        }
        tried += 1;
        // The first candidate is what /cluster/nextid just called free; later ones are checked.
        if let Reserve::Won = reserve(vmids, candidate, job, node).await?
            && (candidate == from || pve.vmid_is_free(candidate).await?)
        {
            return Ok(candidate);
        }
        candidate =
            candidate.get().checked_add(1).and_then(|n| Vmid::new(n).ok()).ok_or(AllocError::Exhausted { from })?;
    }
}

/// Reserves `vmid` for `job`; a reservation it already holds (an earlier attempt whose
/// answer was lost) counts as won.
async fn reserve(vmids: &kv::Store, vmid: Vmid, job: JobId, node: &NodeName) -> Result<Reserve, BusError> {
    let key = names::vmid_key(vmid);
    let value: bytes::Bytes =
        VmidReservation { v: V1, vmid, job_id: job, node: node.clone(), reserved_at: Timestamp::now() }.encode().into();
    let attempt = || async {
        match vmids.create_with_ttl(&key, value.clone(), RESERVATION_TTL).await {
            Ok(_) => Ok(Reserve::Won),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let holder = vmids.get(&key).await.map_err(|e| BusError::nats(format!("reading vmid {key}"), e))?;
                let ours = holder.and_then(|b| VmidReservation::decode(&b).ok()).is_some_and(|r| r.job_id == job);
                Ok(if ours { Reserve::Won } else { Reserve::Taken })
            }
            Err(e) => Err(BusError::nats(format!("reserving vmid {key}"), e)),
        }
    };
    attempt.retry(nats_retry()).await
}
