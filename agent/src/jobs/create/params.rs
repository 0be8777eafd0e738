//! What a create job sends PVE, built from its spec alone: the create's parameters, the
//! clone's, and the config a clone gets afterwards. A plan shows the same.

use pvefleet_schemas::{Job, Vmid};
use serde_json::Value;

/// PVE's create parameters for `job` as container `vmid`: every field the spec sets, in PVE's
/// formats (`pvefleet_schemas::lxc` builds each string), plus the marker tag, the job's own
/// public key and the root password when given (a plan passes a mask for it).
pub(crate) fn create_params(
    job: &Job,
    vmid: Vmid,
    marker: &str,
    job_key: Option<String>,
    password: Option<String>,
) -> Vec<(String, String)> {
    let spec = &job.container;
    let mut tags: Vec<String> = spec.tags.iter().map(|t| t.to_ascii_lowercase()).collect();
    tags.push(marker.to_owned());
    let mut params: Vec<(String, String)> = vec![
        ("vmid".into(), vmid.to_string()),
        ("hostname".into(), spec.hostname.clone()),
        ("ostemplate".into(), spec.effective_ostemplate().unwrap_or_default()),
        ("memory".into(), spec.memory.to_string()),
        ("swap".into(), spec.swap.to_string()),
        ("cores".into(), spec.cores.to_string()),
        ("rootfs".into(), spec.effective_rootfs().to_pve()),
        // Always explicit: the schema's default is 0, while PVE makes unprivileged ones when
        // it is left out.
        ("unprivileged".into(), u8::from(spec.unprivileged).to_string()),
        ("tags".into(), tags.join(";")),
    ];
    for (i, nic) in spec.effective_nics().iter().enumerate() {
        params.push((format!("net{i}"), nic.to_pve()));
    }
    for (i, mp) in spec.mounts.iter().enumerate() {
        params.push((format!("mp{i}"), mp.to_pve()));
    }
    let features = spec.effective_features();
    if !features.is_empty() {
        params.push(("features".into(), features.to_pve()));
    }
    let mut put = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            params.push((key.into(), v));
        }
    };
    put("nameserver", spec.effective_nameserver());
    put("searchdomain", spec.searchdomain.clone());
    put("description", Some(description(job)));
    put("pool", spec.pool.clone());
    put("protection", spec.protection.then(|| "1".into()));
    put("cpulimit", spec.cpulimit.map(|c| c.to_string()));
    put("cpuunits", spec.cpuunits.map(|c| c.to_string()));
    put("onboot", spec.onboot.then(|| "1".into()));
    put("startup", spec.startup.as_ref().map(|s| s.to_pve()).filter(|s| !s.is_empty()));
    put("timezone", spec.timezone.clone());
    put("arch", spec.arch.clone());
    put("ostype", spec.ostype.clone());
    put("console", spec.console.map(|c| u8::from(c).to_string()));
    put("tty", spec.tty.map(|t| t.to_string()));
    put("cmode", spec.cmode.clone());
    put("entrypoint", spec.entrypoint.clone());
    put("env", (!spec.env.is_empty()).then(|| pvefleet_schemas::source::env_to_pve(&spec.env)));
    let mut keys = spec.ssh_public_keys.clone();
    keys.extend(job_key);
    if !keys.is_empty() {
        params.push(("ssh-public-keys".into(), keys.join("\n")));
    }
    if let Some(pw) = password {
        params.push(("password".into(), pw));
    }
    params
}

/// The container's description: the spec's, then which job made it (and from which named
/// template), sent with the create so that no later `PUT config` is needed.
pub(crate) fn description(job: &Job) -> String {
    let mut description = job.container.description.clone().map(|d| format!("{d}\n\n")).unwrap_or_default();
    description.push_str(&format!("Created by pvefleet job {}", job.job_id));
    if let Some(t) = &job.template {
        description.push_str(&format!(" from template {t}"));
    }
    description
}

/// What the clone call itself takes. Its description carries the marker: tags are copied
/// from the source, and the clone's own are set only once it exists.
pub(crate) fn clone_params(job: &Job, vmid: Vmid, marker: &str) -> Vec<(&'static str, String)> {
    let spec = &job.container;
    let clone = spec.clone.as_ref().expect("a clone job");
    let mut description = spec.description.clone().map(|d| format!("{d}\n\n")).unwrap_or_default();
    description.push_str(&format!("Cloned by pvefleet job {} ({})", job.job_id, marker));
    let mut params = vec![
        ("newid", vmid.to_string()),
        ("hostname", spec.hostname.clone()),
        ("full", u8::from(clone.full).to_string()),
        ("description", description),
    ];
    if let Some(snap) = &clone.snapshot {
        params.push(("snapname", snap.clone()));
    }
    if let Some(storage) = &clone.storage {
        params.push(("storage", storage.clone()));
    }
    if let Some(pool) = &spec.pool {
        params.push(("pool", pool.clone()));
    }
    params
}

/// The rest of the spec as a config update of the clone: the create's parameters but for
/// those PVE sets only at create, the source's extra NICs deleted, and mount points added
/// after the source's own (each only once: a mount point already there is this job's).
pub(crate) fn clone_config(
    create: Vec<(String, String)>,
    job: &Job,
    cfg: &Value,
    source: &Value,
) -> Vec<(String, String)> {
    const CREATE_ONLY: [&str; 8] =
        ["vmid", "ostemplate", "rootfs", "unprivileged", "ssh-public-keys", "password", "pool", "hostname"];
    let mut params: Vec<(String, String)> =
        create.into_iter().filter(|(k, _)| !CREATE_ONLY.contains(&k.as_str()) && !k.starts_with("mp")).collect();
    let nics = job.container.effective_nics().len();
    let has = |key: &str| cfg.get(key).is_some_and(|v| !v.is_null());
    let extra: Vec<String> = (nics..32).map(|i| format!("net{i}")).filter(|k| has(k)).collect();
    if !extra.is_empty() {
        params.push(("delete".into(), extra.join(",")));
    }
    // The source's mount points keep their numbers; the spec's follow the highest of them.
    let first =
        (0..256).rev().find(|i| source.get(format!("mp{i}")).is_some_and(|v| !v.is_null())).map_or(0, |i| i + 1);
    for (i, mp) in job.container.mounts.iter().enumerate() {
        let key = format!("mp{}", first + i);
        if !has(&key) {
            params.push((key, mp.to_pve()));
        }
    }
    params
}
