//! A create job's own SSH key: made fresh for the job, sealed to the agent's key for this job
//! only as its checkpoint keeps it, and opened again by a resumed run.

use std::sync::Arc;

use pvefleet_schemas::seal::{Sealed, SecretKey};
use pvefleet_schemas::{ErrorKind, JobId};
use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;

use crate::jobs::StepError;

/// A fresh ed25519 key for one job, sealed to the agent's own key (for this job only) as the
/// checkpoint keeps it.
pub(crate) fn new_job_key(sealing: &SecretKey, job: &JobId) -> Result<Sealed, StepError> {
    let key = crate::ssh::job_key();
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| StepError::failed(ErrorKind::Internal, format!("encoding the job's SSH key: {e}")))?;
    Ok(sealing.public().seal_for_job(job, pem.as_bytes()))
}

pub(crate) fn load_key(sealing: &SecretKey, job: &JobId, sealed: &Sealed) -> Result<Arc<PrivateKey>, StepError> {
    // A key sealed by an older agent, before keys were bound to their job, still opens.
    let pem = match sealing.open_for_job(job, sealed) {
        Err(pvefleet_schemas::seal::OpenError::Unbound) => sealing.open(sealed),
        other => other,
    }
    .map_err(|e| StepError::failed(ErrorKind::Internal, format!("opening the job's SSH key: {e}")))?;
    PrivateKey::from_openssh(pem.expose())
        .map(Arc::new)
        .map_err(|e| StepError::failed(ErrorKind::Internal, format!("reading the job's SSH key: {e}")))
}
