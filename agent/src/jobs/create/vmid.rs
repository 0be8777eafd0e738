//! Choosing a vmid for a job that did not fix one. `/cluster/nextid` answers every caller with
//! the same id until a container takes it, so forty jobs allocating at once all hear "100".
//! Each candidate is therefore reserved for the job in `pvefleet-vmids` ([`crate::bus::reserve`],
//! which only one job can win) and then checked free in the cluster; a candidate lost on either
//! count is skipped for the next. Allocation goes on until the deadline, or until the id
//! range is really exhausted.

use std::time::Instant;

use async_nats::jetstream::kv;
use pvefleet_schemas::{JobId, NodeName, Vmid};

use crate::bus::{BusError, Reserve, reserve};
use crate::jobs::StepError;
use crate::proxmox::{PveClient, PveError};
use pvefleet_schemas::ErrorKind;

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

impl From<AllocError> for StepError {
    fn from(e: AllocError) -> Self {
        match e {
            AllocError::Pve(e) => e.into(),
            AllocError::Bus(e) => StepError::Bus(e),
            e @ AllocError::Deadline { .. } => StepError::failed(ErrorKind::Timeout, format!("allocating a vmid: {e}")),
            e @ AllocError::Exhausted { .. } => {
                StepError::failed(ErrorKind::Proxmox, format!("allocating a vmid: {e}"))
            }
        }
    }
}
