//! What a create job's spec is checked against on its node, shared by the validating step
//! and by a plan ([`crate::plan`]). Every check only reads: it says what it found, or why
//! the spec does not fit (naming the spec's field), and changes nothing in PVE.

use pvefleet_schemas::trust::CloneFrom as CloneRight;
use std::path::{Component, Path, PathBuf};

use pvefleet_schemas::lxc::MountPoint;
use pvefleet_schemas::source::{CloneFrom, TemplateSource};
use pvefleet_schemas::{ContainerSpec, ErrorKind, Job, Vmid};

use crate::config::Allow;
use crate::jobs::StepError;
use crate::proxmox::{Listed, PveClient};

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
            resolve_source(files_dir, source).map_err(|why| invalid(format!("deploy.files[{i}].source: {why}")))?;
            n += 1;
        }
    }
    Ok(format!("{n} file source(s) inside {}", files_dir.display()))
}

/// What PVE keeps for a root@pam login (bind mounts, features beyond nesting), said before
/// the create rather than by it.
pub(crate) fn rights(spec: &ContainerSpec, root_login: bool) -> Check {
    let mounts: Vec<(String, &MountPoint)> =
        spec.mounts.iter().enumerate().map(|(i, m)| (format!("container.mounts[{i}]"), m)).collect();
    let features = spec.effective_features();
    root_only(&mounts, Some(("container.features", &features)), spec.unprivileged, root_login)
}

/// Bind mounts and features PVE keeps for root@pam, named by their field, refused when the
/// agent signs in with an API token (a create's spec, or an update's change).
pub(crate) fn root_only(
    mounts: &[(String, &MountPoint)],
    features: Option<(&str, &pvefleet_schemas::lxc::Features)>,
    unprivileged: bool,
    root_login: bool,
) -> Check {
    if root_login {
        return Ok("signed in as root@pam: every feature and bind mount is allowed".into());
    }
    const WHY: &str = "the agent signs in with an API token, which PVE refuses this (even root's own); \
                       proxmox.user = \"root@pam\" with proxmox.password_file allows it";
    for (field, mp) in mounts {
        if matches!(mp, MountPoint::Bind { .. }) {
            return Err(invalid(format!("{field}: PVE lets only root@pam make a bind mount; {WHY}")));
        }
    }
    let Some((field, features)) = features else { return Ok("nothing that PVE keeps for root@pam".into()) };
    let beyond = features.beyond_nesting();
    if !unprivileged && !features.is_empty() {
        return Err(invalid(format!("{field}: on a privileged container PVE lets only root@pam set features; {WHY}")));
    }
    if !beyond.is_empty() {
        return Err(invalid(format!(
            "{field}: PVE lets an API token set only `nesting` on an unprivileged container \
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
    allow: &Allow,
    clone_right: CloneRight,
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
            return Ok((format!("{volid} is there (fetched again unless this agent fetched it as this)"), None));
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
        None => clone_source(pve, job, &clone.from, allow, clone_right).await?,
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

/// The vmid to clone: the one given (on this node), or the one template of that name here; and
/// only one a job may copy: a template, a container pvefleet made (it carries a marker), or one
/// the agent's `clone.allow_vmids` / `clone.allow_pools` list. A clone copies its source's
/// whole disk to an address of the submitter's choosing: a stranger's container is not theirs
/// to copy.
async fn clone_source(
    pve: &PveClient,
    job: &Job,
    from: &CloneFrom,
    allow: &Allow,
    clone_right: CloneRight,
) -> Result<Vmid, StepError> {
    let here = pve.containers_here().await?;
    let name_of = |l: &Listed| l.name.clone().unwrap_or_default();
    let found = match from {
        CloneFrom::Vmid(vmid) => here
            .iter()
            .find(|l| l.vmid == *vmid)
            .ok_or_else(|| invalid(format!("container.clone.from: there is no container {vmid} on {}", job.node)))?,
        CloneFrom::Name(name) => {
            let found: Vec<&Listed> = here.iter().filter(|l| l.template && l.name.as_ref() == Some(name)).collect();
            match found.as_slice() {
                [one] => *one,
                [] => {
                    return Err(invalid(format!(
                        "container.clone.from: no template called `{name}` on {} (templates here: {})",
                        job.node,
                        here.iter()
                            .filter(|l| l.template)
                            .map(|l| format!("{} ({})", name_of(l), l.vmid))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                many => {
                    return Err(invalid(format!(
                        "container.clone.from: {} templates are called `{name}` on {} ({}); give a vmid",
                        many.len(),
                        job.node,
                        many.iter().map(|l| l.vmid.to_string()).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
    };
    if !found.template && clone_right == CloneRight::Templates {
        return Err(StepError::failed(
            ErrorKind::Unauthorized,
            format!(
                "refused by rule `clone_from`: {} is not a template, and the job's signer may clone templates only \
                 (`clone_from = \"node\"` in the policy lets it clone what the node allows)",
                found.vmid
            ),
        ));
    }
    if found.template || found.has_marker() || allow.clone_vmids.contains(&found.vmid) {
        return Ok(found.vmid);
    }
    if !allow.clone_pools.is_empty()
        && let Some(pool) = pve.pool_of(found.vmid).await?
        && allow.clone_pools.contains(&pool)
    {
        return Ok(found.vmid);
    }
    Err(invalid(format!(
        "container.clone.from: {} is neither a template nor a container pvefleet made, so a job may not copy it; \
         the node's agent.toml lists any other it may ([clone] allow_vmids, allow_pools)",
        found.vmid
    )))
}

/// The vmid that owns volume `volume` by PVE's naming (`local-lvm:vm-100-disk-1`,
/// `local:subvol-100-disk-0`, `base-100-disk-0`), if its name says.
fn volume_owner(volume: &str) -> Option<u32> {
    let name = volume.split_once(':')?.1;
    let name = name.rsplit('/').next()?;
    let rest = ["vm-", "subvol-", "base-"].iter().find_map(|p| name.strip_prefix(p))?;
    rest.split('-').next()?.parse().ok()
}

/// Every existing volume a job mounts is its own container's (by PVE's naming, the job's
/// vmid) or one the agent's `mounts.allow_existing` lists: any other guest's disk is not a
/// job's to mount, and a root@pam login would let it.
pub(crate) fn volumes(job: &Job, vmid: Option<Vmid>, allow: &Allow) -> Check {
    let mut n = 0;
    for (i, mp) in job.container.mounts.iter().enumerate() {
        let MountPoint::Existing { volume, .. } = mp else { continue };
        n += 1;
        if allow.existing_volumes.iter().any(|v| v == volume) {
            continue;
        }
        let owner = volume_owner(volume);
        if owner.is_some() && owner == vmid.map(|v| v.get()) {
            continue;
        }
        let whose = owner.map_or_else(|| "no guest by its name".to_owned(), |o| format!("guest {o}"));
        return Err(invalid(format!(
            "container.mounts[{i}].volume: `{volume}` belongs to {whose}, not to this job's container; the node's \
             agent.toml lists the volumes jobs may mount ([mounts] allow_existing)"
        )));
    }
    Ok(format!("{n} existing volume(s), each the job's own or allowed"))
}

/// Why PVE must not be sent to fetch from `addr`, if it must not: the node itself (loopback,
/// its own addresses), the networks behind it (private, shared, unique-local) and link-local
/// (cloud metadata lives at 169.254.169.254). PVE fetches a template from the node, so a URL
/// there is a request from inside the operator's network, and its task log comes back to
/// whoever watches the job.
pub(crate) fn forbidden_fetch(addr: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("an unspecified address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_private() {
                Some("a private address")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Some("a shared (carrier-grade NAT) address")
            } else if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 {
                Some("a multicast or reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_fetch(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("an unspecified address")
            } else if first & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if first & 0xfe00 == 0xfc00 {
                Some("a unique-local (private) address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
    }
}

/// A download URL or an OCI registry reaches only public addresses, not the node itself nor
/// the networks behind it, unless the node's `fetch.allow` lists the host or the prefix. The
/// host is resolved here, on the node, as PVE will resolve it; a name that does not resolve
/// here is left for PVE to fail on. (A name whose answers change between this check and
/// PVE's fetch, DNS rebinding, is beyond what a check before the fetch can see.)
pub(crate) async fn fetch_target(pve: &PveClient, job: &Job, allow: &crate::config::Allow) -> Check {
    let Some(source) = &job.container.template else { return Ok("nothing is fetched".into()) };
    let (field, host, port) = match source {
        TemplateSource::Download(d) => {
            let url = reqwest::Url::parse(&d.url)
                .map_err(|e| invalid(format!("container.template.download.url: `{}` is not a URL ({e})", d.url)))?;
            let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned();
            ("container.template.download.url", host, url.port_or_known_default().unwrap_or(443))
        }
        TemplateSource::Oci(o) => {
            let (registry, _, _) = o.parts();
            let (host, port) = match registry.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_owned(), p.parse().unwrap_or(443)),
                _ => (registry, 443),
            };
            ("container.template.oci.reference", host, port)
        }
        // The catalogue's own URLs, which PVE signs.
        TemplateSource::Appliance(_) => return Ok("from the appliance catalogue".into()),
    };
    let addrs: Vec<std::net::IpAddr> = match host.parse() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let lookup = tokio::net::lookup_host((host.as_str(), port));
            match tokio::time::timeout(std::time::Duration::from_secs(3), lookup).await {
                Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                _ => return Ok(format!("{host} does not resolve on this node; PVE will try it itself")),
            }
        }
    };
    let own = pve.node_addresses().await?;
    for addr in &addrs {
        if allow.fetch.iter().any(|a| a.allows(&host, *addr)) {
            continue;
        }
        let why = forbidden_fetch(*addr).or_else(|| own.contains(addr).then_some("an address of this node"));
        if let Some(why) = why {
            return Err(invalid(format!(
                "{field}: `{host}` reaches {addr}, {why}; PVE would fetch it from inside the node. The node's \
                 agent.toml lists the hosts and prefixes fetches may reach ([fetch] allow)"
            )));
        }
    }
    Ok(format!("{host} reaches {}", addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")))
}

/// The file `source` names inside `files_dir`, the one directory a job may copy files from:
/// a relative source is taken inside it, an absolute one must lie inside it, `..` is refused,
/// and a symlink is followed only if it ends inside it. Anything else would let whoever may
/// publish a job copy the agent's own secrets (its API token, its NATS password) into a
/// container of their choosing.
pub fn resolve_source(files_dir: &Path, source: &str) -> Result<PathBuf, String> {
    let given = Path::new(source);
    if given.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("`{source}` contains `..`; sources are files inside the agent's files_dir"));
    }
    let path = if given.is_absolute() { given.to_path_buf() } else { files_dir.join(given) };
    let root = files_dir
        .canonicalize()
        .map_err(|e| format!("the agent's files_dir {} cannot be read ({e})", files_dir.display()))?;
    let real = path.canonicalize().map_err(|e| format!("`{source}` is not a file in {} ({e})", files_dir.display()))?;
    if !real.starts_with(&root) {
        return Err(format!(
            "`{source}` is outside the agent's files_dir {}; only files there may be copied",
            files_dir.display()
        ));
    }
    if !real.is_file() {
        return Err(format!("`{source}` is not a regular file"));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetches_never_reach_the_node_or_the_networks_behind_it() {
        for (addr, why) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared"),
            ("0.0.0.0", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique-local"),
            ("::ffff:127.0.0.1", "loopback"),
        ] {
            let found = forbidden_fetch(addr.parse().unwrap());
            assert!(found.is_some_and(|f| f.contains(why)), "{addr}: {found:?}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "100.128.0.1"] {
            assert_eq!(forbidden_fetch(public.parse().unwrap()), None, "{public}");
        }
    }

    #[test]
    fn an_existing_volume_names_its_owner() {
        assert_eq!(volume_owner("local-lvm:vm-100-disk-1"), Some(100));
        assert_eq!(volume_owner("local:subvol-204-disk-0"), Some(204));
        assert_eq!(volume_owner("local:100/vm-100-disk-0.raw"), Some(100));
        assert_eq!(volume_owner("nfs:shared-data"), None);
    }
}
