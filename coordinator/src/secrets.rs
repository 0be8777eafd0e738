//! A job's secrets (its root password, its secret files' bytes) sealed for its node's agent
//! alone, to the key an operator trusted for that node, and never to a key seen only on the
//! wire.

use async_nats::jetstream;
use pvefleet_schemas::seal::PublicKey;
use pvefleet_schemas::{DeploySpec, Job, NodeName, Secret};

use crate::Failure;
use crate::spec::BadInput;
use crate::store::Store;

/// The sealing key of `node`'s agent that secrets may be sealed to: the one pinned for it (after
/// an operator checked it on the node: `pvefleet nodes trust`). The registry's key is never
/// trusted on sight, since the node's agent user writes it; a key that differs from the pinned
/// one is refused, naming both.
pub async fn trusted_key(store: &Store, js: &jetstream::Context, node: &NodeName) -> Result<PublicKey, Failure> {
    let live = crate::bus::heartbeats(js).await?.into_iter().find(|b| &b.node == node).and_then(|b| b.sealing_key);
    let live: Option<PublicKey> = live
        .map(|k| k.parse())
        .transpose()
        .map_err(|e| anyhow::anyhow!("the agent of {node} shows a sealing key that cannot be read: {e}"))?;
    let pinned: Option<PublicKey> = match store.node_key(node.as_str()).await? {
        Some(row) => Some(row.public_key.parse().map_err(|e| anyhow::anyhow!("the key pinned for {node}: {e}"))?),
        None => None,
    };
    let key = match (pinned, live) {
        (Some(pinned), Some(live)) if pinned != live => {
            return Err(anyhow::anyhow!(
                "the sealing key of {node}'s agent has changed: pinned {}, the agent now shows {}; nothing was \
                 sent. If you know why (a reinstalled agent), check it on the node (`pvefleet-agent --print-key`) \
                 and trust it with `pvefleet nodes trust {node} --fingerprint …`",
                pinned.fingerprint(),
                live.fingerprint()
            )
            .into());
        }
        (Some(pinned), _) => pinned,
        (None, live) => {
            let shown = live.map(|k| format!(" (its agent shows {} now)", k.fingerprint())).unwrap_or_default();
            return Err(anyhow::anyhow!(
                "no sealing key is trusted for {node} yet{shown}, so nothing secret can be sent to it; nothing was \
                 published. Run `pvefleet-agent --config /etc/pvefleet/agent.toml --print-key` on {node}, then \
                 `pvefleet nodes trust {node} --fingerprint SHA256:…` with what it prints"
            )
            .into());
        }
    };
    Ok(key)
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
