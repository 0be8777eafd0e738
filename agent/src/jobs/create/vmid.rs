//! Choosing a vmid for a job that did not fix one. `/cluster/nextid` answers every caller with
//! the same id until a container takes it, so forty jobs allocating at once all hear "100".
//! Candidates therefore come from the node facts ([`PveClient::free_vmid`]: `/cluster/nextid`
//! and the cluster's guests, read at most once per `proxmox.facts_ttl`, skipping every vmid
//! handed out since), and each is reserved for the job in `pvefleet-vmids`
//! ([`crate::bus::reserve`], which only one job can win); a candidate another job holds is
//! skipped for the next. A guest made outside pvefleet since the facts were read is PVE's
//! "already exists" at the create, which takes another vmid on fresh facts. Allocation goes on
//! until the deadline, or until the id range is really exhausted.

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

/// A vmid free in the cluster (as the node facts know it) and reserved for `job`.
pub async fn allocate(
    pve: &PveClient,
    vmids: &kv::Store,
    job: JobId,
    node: &NodeName,
    deadline: Instant,
) -> Result<Vmid, AllocError> {
    let from = pve.free_vmid(None).await?;
    let mut candidate = from;
    let mut tried = 0u32;
    loop {
        if Instant::now() >= deadline {
            return Err(AllocError::Deadline { from, tried });
        }
        tried += 1;
        let won = matches!(reserve(vmids, candidate, job, node).await?, Reserve::Won);
        pve.vmid_used(candidate);
        if won {
            return Ok(candidate);
        }
        candidate = match pve.free_vmid(Some(candidate)).await {
            Ok(next) => next,
            Err(PveError::Shape { .. }) => return Err(AllocError::Exhausted { from }),
            Err(e) => return Err(e.into()),
        };
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
