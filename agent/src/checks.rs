//! What a create job's spec is checked against on its node, shared by the validating step
//! and by a plan ([`crate::plan`]). Every check only reads: it says what it found, or why
//! the spec does not fit (naming the spec's field), and changes nothing in PVE.

use std::path::Path;

use pvefleet_schemas::lxc::MountPoint;
use pvefleet_schemas::source::{CloneFrom, TemplateSource};
use pvefleet_schemas::{ContainerSpec, ErrorKind, Job, Vmid};

use crate::proxmox::PveClient;
use crate::runner::StepError;

/// What a check found (`Ok`), or why the job cannot run here.
pub(crate) type Check = Result<String, StepError>;

fn invalid(message: String) -> StepError {
    StepError::failed(ErrorKind::Validation, message)
}

/// Every `deploy.files[].source` lies inside the agent's `files_dir`.
pub(crate) fn files(job: &Job, files_dir: &Path) -> Check {
    let mut n = 0;
    for (i, file) in job.deploy.files.iter().enumerate() {
        if let Some(source) = &file.source {
            crate::deploy::resolve_source(files_dir, source)
                .map_err(|why| invalid(format!("deploy.files[{i}].source: {why}")))?;
            n += 1;
        }
    }
    Ok(format!("{n} file source(s) inside {}", files_dir.display()))
}

/// What PVE keeps for a root@pam login (bind mounts, features beyond nesting), said before
/// the create rather than by it.
pub(crate) fn rights(spec: &ContainerSpec, root_login: bool) -> Check {
    if root_login {
        return Ok("signed in as root@pam: every feature and bind mount is allowed".into());
    }
    const WHY: &str = "the agent signs in with an API token, which PVE refuses this (even root's own); \
                       proxmox.user = \"root@pam\" with proxmox.password_file allows it";
    for (i, mp) in spec.mounts.iter().enumerate() {
        if matches!(mp, MountPoint::Bind { .. }) {
            return Err(invalid(format!("container.mounts[{i}]: PVE lets only root@pam make a bind mount; {WHY}")));
        }
    }
    let features = spec.effective_features();
    let beyond = features.beyond_nesting();
    if !spec.unprivileged && !features.is_empty() {
        return Err(invalid(format!(
            "container.features: on a privileged container PVE lets only root@pam set features; {WHY}"
        )));
    }
    if !beyond.is_empty() {
        return Err(invalid(format!(
            "container.features: PVE lets an API token set only `nesting` on an unprivileged container \
             (pve-container check_ct_modify_config_perm); `{}` need root@pam: {WHY}",
            beyond.join("`, `")
        )));
    }
    Ok("nothing that PVE keeps for root@pam".into())
}

/// The storages of the root disk and of each new mount point exist here and have the room.
pub(crate) async fn storage(pve: &PveClient, job: &Job) -> Check {
    let spec = &job.container;
    let storages = pve.rootdir_storages().await?;
    let rootfs = spec.effective_rootfs();
    let field = if spec.rootfs.is_some() { "container.rootfs" } else { "container" };
    let mut wanted: Vec<(String, &str, u32)> = Vec::new();
    if spec.clone.is_none() {
        // A clone's root disk is its source's.
        wanted.push((format!("{field}.storage"), rootfs.storage.as_str(), rootfs.size));
    }
    for (i, mp) in spec.mounts.iter().enumerate() {
        if let MountPoint::Volume { storage, size, .. } = mp {
            wanted.push((format!("container.mounts[{i}].storage"), storage.as_str(), *size));
        }
    }
    let mut found = Vec::new();
    for (field, name, size) in wanted {
        let Some(storage) = storages.iter().find(|s| s.storage == name) else {
            let have: Vec<&str> = storages.iter().map(|s| s.storage.as_str()).collect();
            return Err(invalid(format!(
                "{field}: `{name}` is not an active storage for containers on {} (it has: {})",
                job.node,
                have.join(", ")
            )));
        };
        let free = storage.avail as f64 / f64::from(1u32 << 30);
        // A storage that reports no figures (total 0) is not judged; a full one is.
        if storage.total > 0 && storage.avail < u64::from(size) << 30 {
            return Err(invalid(format!("{field}: {size} GB does not fit on `{name}`, which has {free:.1} GB free")));
        }
        found.push(format!("{size} GB on {name} ({free:.1} GB free)"));
    }
    Ok(if found.is_empty() { "no new volume".into() } else { found.join(", ") })
}

/// Every NIC's bridge exists here, and a VLAN-aware one carries the NIC's VLAN and trunks.
pub(crate) async fn network(pve: &PveClient, job: &Job) -> Check {
    let spec = &job.container;
    let bridges = pve.bridges().await?;
    let nics = spec.effective_nics();
    for (i, nic) in nics.iter().enumerate() {
        let Some(bridge) = bridges.iter().find(|b| b.name == nic.bridge) else {
            let field = if spec.nics.is_empty() {
                "container.bridge".to_owned()
            } else {
                format!("container.nics[{i}].bridge")
            };
            return Err(invalid(format!("{field}: `{}` does not exist on {}", nic.bridge, job.node)));
        };
        let vids = bridge.vids.as_deref().unwrap_or_default();
        if let Some(tag) = nic.tag.filter(|t| !bridge.carries(*t)) {
            return Err(invalid(format!(
                "container.nics[{i}].tag: VLAN {tag} is not among {}'s VLANs ({vids})",
                bridge.name
            )));
        }
        if !nic.trunks.is_empty() && !bridge.takes_trunks() {
            return Err(invalid(format!(
                "container.nics[{i}].trunks: `{}` is not VLAN-aware, and PVE takes trunks only on a VLAN-aware bridge",
                bridge.name
            )));
        }
        if let Some((j, id)) = nic.trunks.iter().enumerate().find(|(_, t)| !bridge.carries(**t)) {
            return Err(invalid(format!(
                "container.nics[{i}].trunks[{j}]: VLAN {id} is not among {}'s VLANs ({vids})",
                bridge.name
            )));
        }
    }
    Ok(nics
        .iter()
        .map(|n| match n.tag {
            Some(tag) => format!("{} on {} (VLAN {tag})", n.name, n.bridge),
            None => format!("{} on {}", n.name, n.bridge),
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// The template source is usable here: the template is there (or its storage takes one, or
/// the catalogue has it), or the clone's source is; with the clone's source found once.
pub(crate) async fn source(
    pve: &PveClient,
    job: &Job,
    has_clone_key: bool,
    known_source: Option<Vmid>,
) -> Result<(String, Option<Vmid>), StepError> {
    let spec = &job.container;
    if let Some(source) = &spec.template {
        let storages = pve.template_storages().await?;
        let storage = source.storage();
        if !storages.iter().any(|s| s.storage == storage) {
            let have: Vec<&str> = storages.iter().map(|s| s.storage.as_str()).collect();
            return Err(invalid(format!(
                "container.{}.storage: `{storage}` is not an active storage for templates on {} (it has: {})",
                source.field(),
                job.node,
                have.join(", ")
            )));
        }
        let volid = source.volid();
        if pve.template_exists(&volid).await? {
            return Ok((format!("{volid} is there; it will not be fetched again"), None));
        }
        if let TemplateSource::Appliance(a) = source {
            let catalogue = pve.appliances().await?;
            if !catalogue.contains(&a.name) {
                let mut near: Vec<&str> = catalogue.iter().map(String::as_str).collect();
                near.truncate(8);
                return Err(invalid(format!(
                    "container.template.appliance.name: `{}` is not in {}'s appliance catalogue \
                     (`pveam update` refreshes it; it lists: {})",
                    a.name,
                    job.node,
                    near.join(", ")
                )));
            }
        }
        return Ok((format!("{volid} would be fetched ({})", source.field()), None));
    }
    if let Some(ostemplate) = &spec.ostemplate {
        if !pve.template_exists(ostemplate).await? {
            return Err(invalid(format!(
                "container.ostemplate: `{ostemplate}` is not a container template on {}",
                job.node
            )));
        }
        return Ok((format!("{ostemplate} is there"), None));
    }
    let clone = spec.clone.as_ref().expect("a spec names one template source");
    if !job.deploy.is_empty() && !has_clone_key {
        return Err(invalid(
            "container.clone: PVE cannot give a clone the job's own SSH key, so its deploy needs a key the \
             template already trusts: set ssh.key_file in this node's agent.toml"
                .into(),
        ));
    }
    let source = match known_source {
        Some(vmid) => vmid,
        None => clone_source(pve, job, &clone.from).await?,
    };
    if Some(source) == spec.vmid {
        return Err(invalid(format!("container.vmid: {source} is the clone's own source")));
    }
    if let Some(storage) = &clone.storage {
        let storages = pve.rootdir_storages().await?;
        if !storages.iter().any(|s| &s.storage == storage) {
            return Err(invalid(format!(
                "container.clone.storage: `{storage}` is not an active storage for containers on {}",
                job.node
            )));
        }
    }
    Ok((format!("a {} clone of {source}", if clone.full { "full" } else { "linked" }), Some(source)))
}

/// The vmid to clone: the one given (on this node), or the one template of that name here.
async fn clone_source(pve: &PveClient, job: &Job, from: &CloneFrom) -> Result<Vmid, StepError> {
    let here = pve.containers().await?;
    match from {
        CloneFrom::Vmid(vmid) => {
            if here.iter().any(|(v, _, _)| v == vmid) {
                Ok(*vmid)
            } else {
                Err(invalid(format!("container.clone.from: there is no container {vmid} on {}", job.node)))
            }
        }
        CloneFrom::Name(name) => {
            let found: Vec<Vmid> =
                here.iter().filter(|(_, n, template)| *template && n == name).map(|(v, _, _)| *v).collect();
            match found.as_slice() {
                [one] => Ok(*one),
                [] => Err(invalid(format!(
                    "container.clone.from: no template called `{name}` on {} (templates here: {})",
                    job.node,
                    here.iter()
                        .filter(|(_, _, t)| *t)
                        .map(|(v, n, _)| format!("{n} ({v})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
                many => Err(invalid(format!(
                    "container.clone.from: {} templates are called `{name}` on {} ({}); give a vmid",
                    many.len(),
                    job.node,
                    many.iter().map(Vmid::to_string).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}
