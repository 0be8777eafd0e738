//! Vmid reservations in `pvefleet-vmids`: a KV `create` per id, which only one job can win,
//! held for [`RESERVATION_TTL`].

use async_nats::jetstream::kv::{self, CreateErrorKind};
use backon::Retryable as _;
use pvefleet_schemas::{JobId, NodeName, Timestamp, V1, Vmid, VmidReservation, names};

use super::error::BusError;

/// How long a reservation holds: long enough for the create it precedes (PVE holds the id
/// from then on); a job resumed later finds the id taken or free and acts on that.
pub const RESERVATION_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether a reservation attempt won the id.
#[derive(Debug)]
pub enum Reserve {
    Won,
    /// Reserved by another job.
    Taken,
}

/// Reserves `vmid` for `job`; a reservation it already holds (an earlier attempt whose
/// answer was lost) counts as won.
pub async fn reserve(vmids: &kv::Store, vmid: Vmid, job: JobId, node: &NodeName) -> Result<Reserve, BusError> {
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
    attempt.retry(crate::retry::nats_request()).await
}
