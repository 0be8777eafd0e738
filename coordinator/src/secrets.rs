//! A job's secrets (its root password, its secret files' bytes) sealed for its node's agent
//! alone, to the key an operator trusted for that node, and never to a key seen only on the
//! wire.

use async_nats::jetstream;
use pvefleet_schemas::seal::PublicKey;
use pvefleet_schemas::{DeploySpec, Job, NodeName, Secret};

use crate::Failure;
use crate::spec::BadInput;
use crate::store::Store;

/// The sealing key of `node`'s agent that secrets may be sealed to: the one an admin enrolled
/// for it (`pvefleet nodes enroll`, after checking the fingerprint on the node), signed in the
/// trust bucket where every operator's CLI reads it, and shown by a live agent whose beat is
/// signed by the enrolled identity. A key seen only in the registry is never trusted on sight.
pub async fn trusted_key(_store: &Store, js: &jetstream::Context, node: &NodeName) -> Result<PublicKey, Failure> {
    let registry = crate::bus::registry(js).await?;
    if let Some(beat) = registry.beats.iter().find(|b| &b.node == node) {
        let key = beat.sealing_key.as_deref().unwrap_or_default();
        return Ok(key.parse().map_err(|e| anyhow::anyhow!("the sealing key enrolled for {node}: {e}"))?);
    }
    let why = registry
        .ignored
        .iter()
        .find(|(key, _)| key == node.as_str())
        .map_or_else(|| format!("no live agent for {node}"), |(_, why)| why.clone());
    Err(anyhow::anyhow!(
        "nothing secret can be sent to {node}: {why}; nothing was published. An admin checks the agent's keys on \
         the node (`pvefleet-agent --config /etc/pvefleet/agent.toml --print-key`) and runs `pvefleet nodes enroll \
         {node} --fingerprint SHA256:…` with what it prints"
    )
    .into())
}

/// Seals what a job carries for its agent alone, each for this job only, to the key trusted for
/// its node: the root password, and every secret file's bytes (which keep their size and
/// SHA-256 for the store and the pages to show). Nothing secret is left in clear in the job.
pub async fn seal_secrets(
    store: &Store,
    js: &jetstream::Context,
    job: &mut Job,
    password: Option<&Secret>,
) -> Result<(), Failure> {
    let files = job.deploy.files.iter().any(|f| f.secret && f.content.is_some());
    if password.is_none() && !files {
        return Ok(());
    }
    let key = trusted_key(store, js, &job.node).await?;
    if let Some(pw) = password {
        job.container.root_password = Some(key.seal_for_job(&job.job_id, pw.expose().as_bytes()));
    }
    for file in &mut job.deploy.files {
        if file.secret
            && let Some(content) = file.content.take()
        {
            let content = Secret::new(content);
            file.digest = Some(pvefleet_schemas::FileDigest::of(content.expose().as_bytes()));
            file.sealed = Some(key.seal_for_job(&job.job_id, content.expose().as_bytes()));
        }
    }
    Ok(())
}

/// Gives a recorded job (the store keeps no secret file's bytes) its secret files again, from
/// what the same command reads now; a file whose bytes changed since is refused, naming it.
pub fn refill_secrets(job: &mut Job, now: &DeploySpec) -> Result<(), Failure> {
    for (i, file) in job.deploy.files.iter_mut().enumerate() {
        if !file.secret || file.content.is_some() || file.sealed.is_some() {
            continue;
        }
        let again = now.files.iter().find(|f| f.path == file.path && f.secret).and_then(|f| f.content.clone());
        let Some(content) = again else {
            return Err(BadInput::field(
                &format!("deploy.files[{i}]"),
                format!("the recorded job has the secret file {}, which this command does not give", file.path),
            )
            .into());
        };
        if file.digest.as_ref() != Some(&pvefleet_schemas::FileDigest::of(content.as_bytes())) {
            return Err(BadInput::field(
                &format!("deploy.files[{i}]"),
                format!(
                    "the secret file {} has changed since the job was recorded; submit it as a new request",
                    file.path
                ),
            )
            .into());
        }
        file.content = Some(content);
    }
    Ok(())
}
