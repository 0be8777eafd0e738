//! The specs people write: the container, what to deploy into it, and job options.
//!
//! Every struct here rejects unknown fields, so a typo in a spec file is an error rather than a
//! setting silently ignored, and `validate` names every field at fault.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::Vmid;
use crate::limits;
use crate::validate::{FieldError, Problems, ValidationErrors, config_id, dns_name, pve_tag};

/// How the container's `eth0` gets its IPv4 address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IpConfig {
    Dhcp,
    Static { addr: Ipv4Addr, prefix: u8 },
}

impl IpConfig {
    /// The network address of a static config, for the gateway check.
    fn contains(&self, ip: Ipv4Addr) -> bool {
        match *self {
            IpConfig::Dhcp => false,
            IpConfig::Static { addr, prefix } => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(addr) & mask == u32::from(ip) & mask
            }
        }
    }
}

impl fmt::Display for IpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpConfig::Dhcp => f.write_str("dhcp"),
            IpConfig::Static { addr, prefix } => write!(f, "{addr}/{prefix}"),
        }
    }
}

impl FromStr for IpConfig {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "dhcp" {
            return Ok(IpConfig::Dhcp);
        }
        let bad = || {
            FieldError::new(
                "ip",
                format!("`{s}` is neither `dhcp` nor an IPv4 address with a prefix like `10.0.0.5/24`"),
            )
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(1..=32).contains(&prefix) {
            return Err(FieldError::new("ip", format!("prefix /{prefix} in `{s}` is outside 1..=32")));
        }
        Ok(IpConfig::Static { addr, prefix })
    }
}

impl Serialize for IpConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cow::<str>::deserialize(d)?.parse().map_err(|e: FieldError| serde::de::Error::custom(e.problem))
    }
}

impl JsonSchema for IpConfig {
    fn schema_name() -> Cow<'static, str> {
        "IpConfig".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`dhcp`, or a static IPv4 address with its prefix length (`10.0.0.5/24`).",
            "type": "string",
            "pattern": "^(dhcp|\\d{1,3}(\\.\\d{1,3}){3}/\\d{1,2})$"
        })
    }
}

/// The container to create. Field names and units follow PVE's (`memory` and `swap` in MB,
/// `disk` in GB), so operators can carry their knowledge over.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// The container's hostname (a DNS name).
    pub hostname: String,
    /// A fixed id, or null to allocate the next free one from `/cluster/nextid`.
    #[serde(default)]
    pub vmid: Option<Vmid>,
    /// Memory in MB (at least 16).
    #[serde(default = "defaults::memory")]
    pub memory: u32,
    /// Swap in MB.
    #[serde(default = "defaults::swap")]
    pub swap: u32,
    /// CPU cores, 1..=8192.
    #[serde(default = "defaults::cores")]
    pub cores: u32,
    /// Root disk size in GB (at least 1).
    #[serde(default = "defaults::disk")]
    pub disk: u32,
    /// Storage that holds the root disk.
    #[serde(default = "defaults::storage")]
    pub storage: String,
    /// Bridge for `eth0`.
    #[serde(default = "defaults::bridge")]
    pub bridge: String,
    /// `dhcp` or `a.b.c.d/nn`.
    #[serde(default = "defaults::ip")]
    pub ip: IpConfig,
    /// Gateway for a static address; must lie in its subnet.
    #[serde(default)]
    pub gw: Option<Ipv4Addr>,
    /// DNS servers, space separated as PVE takes them; empty means the node's.
    #[serde(default)]
    pub nameserver: Option<String>,
    /// OS template volume, e.g. `local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst`. One
    /// template source is given: this, `template` or `clone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ostemplate: Option<String>,
    /// A template fetched onto the node first (download, appliance, OCI image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<crate::source::TemplateSource>,
    /// A clone of another container or template instead of a create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<crate::source::CloneSpec>,
    /// The command an application container (OCI image) runs; PVE's default is `/sbin/init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Environment of an application container.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: crate::source::Env,
    #[serde(default = "defaults::yes")]
    pub unprivileged: bool,
    /// Enables the `nesting` feature (needed by systemd in recent distributions).
    #[serde(default)]
    pub nesting: bool,
    /// PVE tags. The `pvefleet-` prefix is reserved for the ownership marker.
    #[serde(default)]
    pub tags: Vec<String>,
    /// OpenSSH public keys to authorize for root.
    #[serde(default)]
    pub ssh_public_keys: Vec<String>,
    /// Host keys (`SHA256:…` fingerprints) the deploy may trust, besides those PVE announces
    /// when it makes the container: a clone keeps its template's, which PVE does not announce.
    /// A root password is only ever sent to a host key announced or listed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_host_keys: Vec<String>,
    /// Root password, sealed to the agent of the job's node (see [`crate::seal`]): never in
    /// clear in a message, a log, a checkpoint or the store. Spec files and templates cannot
    /// hold one; `pvefleet submit` reads it from a file, a variable or a prompt and seals it.
    #[serde(default)]
    pub root_password: Option<crate::seal::Sealed>,

    // The rest of PVE's create API (see `crate::lxc`). Each is left out of the message when
    // unset, so a job written before these existed reads the same.
    /// Shown in PVE's notes; the agent adds which job made the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The resource pool the container joins (it must exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// PVE refuses to remove a protected container (a rollback lifts it first, for its own).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protection: bool,
    /// CPU limit in cores (fractions allowed), 0..=8192.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpulimit: Option<f64>,
    /// CPU weight, 1..=262144.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuunits: Option<u32>,
    /// The root disk in full; when given, `storage` and `disk` are not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<crate::lxc::RootFs>,
    /// Mount points, `mp0` onwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<crate::lxc::MountPoint>,
    /// Network interfaces, `net0` onwards; when given, `bridge`, `ip` and `gw` are not used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<crate::lxc::Nic>,
    /// DNS servers, IPv4 and IPv6 (with `nameserver`, the older single string, both go).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    /// DNS search domains, space separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub searchdomain: Option<String>,
    /// The NIC (by name) whose address the agent connects to over SSH: the first by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_nic: Option<String>,
    /// Features (with `nesting`, the older flag, both count).
    #[serde(default, skip_serializing_if = "crate::lxc::Features::is_empty")]
    pub features: crate::lxc::Features,
    /// Start at the node's boot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub onboot: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<crate::lxc::Startup>,
    /// A time zone like `Europe/Berlin`, or `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// PVE detects these from the template when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ostype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<bool>,
    /// Consoles, 0..=6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<u8>,
    /// `shell`, `console` or `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmode: Option<String>,
}

pub(crate) mod defaults {
    use super::IpConfig;

    pub fn memory() -> u32 {
        512
    }
    pub fn swap() -> u32 {
        512
    }
    pub fn cores() -> u32 {
        1
    }
    pub fn disk() -> u32 {
        8
    }
    pub fn storage() -> String {
        "local-lvm".into()
    }
    pub fn bridge() -> String {
        "vmbr0".into()
    }
    pub fn ip() -> IpConfig {
        IpConfig::Dhcp
    }
    pub fn yes() -> bool {
        true
    }
    pub fn mode() -> super::FileMode {
        super::FileMode(0o644)
    }
    pub fn interpreter() -> String {
        "/bin/sh".into()
    }
}

impl ContainerSpec {
    /// A spec with every optional field at its default.
    pub fn new(hostname: impl Into<String>, ostemplate: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            vmid: None,
            memory: defaults::memory(),
            swap: defaults::swap(),
            cores: defaults::cores(),
            disk: defaults::disk(),
            storage: defaults::storage(),
            bridge: defaults::bridge(),
            ip: defaults::ip(),
            gw: None,
            nameserver: None,
            ostemplate: Some(ostemplate.into()),
            template: None,
            clone: None,
            entrypoint: None,
            env: crate::source::Env::new(),
            unprivileged: true,
            nesting: false,
            tags: Vec::new(),
            ssh_public_keys: Vec::new(),
            ssh_host_keys: Vec::new(),
            root_password: None,
            description: None,
            pool: None,
            protection: false,
            cpulimit: None,
            cpuunits: None,
            rootfs: None,
            mounts: Vec::new(),
            nics: Vec::new(),
            nameservers: Vec::new(),
            searchdomain: None,
            ssh_nic: None,
            features: crate::lxc::Features::default(),
            onboot: false,
            startup: None,
            timezone: None,
            arch: None,
            ostype: None,
            console: None,
            tty: None,
            cmode: None,
        }
    }

    /// The NICs the container gets: `nics`, or else one `eth0` from `bridge`, `ip` and `gw`.
    pub fn effective_nics(&self) -> Vec<crate::lxc::Nic> {
        if !self.nics.is_empty() {
            return self.nics.clone();
        }
        let ip = match self.ip {
            IpConfig::Dhcp => crate::lxc::Ipv4Setting::Dhcp,
            IpConfig::Static { addr, prefix } => crate::lxc::Ipv4Setting::Static { addr, prefix },
        };
        let mut nic = crate::lxc::Nic::new("eth0", &self.bridge, ip);
        nic.gw = self.gw;
        vec![nic]
    }

    /// The root disk: `rootfs`, or else `storage` and `disk`.
    pub fn effective_rootfs(&self) -> crate::lxc::RootFs {
        self.rootfs.clone().unwrap_or_else(|| crate::lxc::RootFs {
            storage: self.storage.clone(),
            size: self.disk,
            mountoptions: Vec::new(),
            acl: None,
            quota: None,
            replicate: None,
        })
    }

    /// The features: `features`, with the older `nesting` flag folded in.
    pub fn effective_features(&self) -> crate::lxc::Features {
        let mut f = self.features.clone();
        f.nesting |= self.nesting;
        f
    }

    /// DNS servers as PVE takes them (space separated), from `nameservers` and `nameserver`.
    pub fn effective_nameserver(&self) -> Option<String> {
        let mut all: Vec<String> =
            self.nameserver.iter().flat_map(|n| n.split_whitespace().map(str::to_owned)).collect();
        all.extend(self.nameservers.iter().map(IpAddr::to_string));
        (!all.is_empty()).then(|| all.join(" "))
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        if let Err(e) = dns_name(&self.hostname) {
            p.push(FieldError::new("hostname", e));
        }
        p.check("memory", self.memory >= 16, || format!("{} MB is below the minimum of 16 MB", self.memory));
        p.check("memory", self.memory <= limits::MEMORY_MB, || {
            format!("{} MB is above the maximum of {} MB", self.memory, limits::MEMORY_MB)
        });
        p.check("swap", self.swap <= limits::MEMORY_MB, || {
            format!("{} MB is above the maximum of {} MB", self.swap, limits::MEMORY_MB)
        });
        p.check("cores", (1..=8192).contains(&self.cores), || format!("{} is outside 1..=8192", self.cores));
        p.check("disk", self.disk >= 1, || format!("{} GB is below the minimum of 1 GB", self.disk));
        p.check("disk", self.disk <= limits::DISK_GB, || {
            format!("{} GB is above the maximum of {} GB", self.disk, limits::DISK_GB)
        });
        if let Err(e) = config_id(&self.storage) {
            p.push(FieldError::new("storage", e));
        }
        if let Err(e) = config_id(&self.bridge) {
            p.push(FieldError::new("bridge", e));
        }
        if let Some(gw) = self.gw {
            match self.ip {
                IpConfig::Dhcp => {
                    p.push(FieldError::new("gw", "a gateway needs a static `ip`; with `dhcp` the DHCP server gives it"))
                }
                ip => p.check("gw", ip.contains(gw) && IpConfig::Static { addr: gw, prefix: 32 } != ip, || {
                    format!("{gw} is not a host in the subnet of {ip}")
                }),
            }
        }
        if let Some(ns) = &self.nameserver {
            let all_ips = !ns.trim().is_empty() && ns.split_whitespace().all(|a| a.parse::<IpAddr>().is_ok());
            p.check("nameserver", all_ips, || format!("`{ns}` is not a space-separated list of IP addresses"));
        }
        self.validate_source(&mut p);
        p.count("tags", self.tags.len(), limits::TAGS);
        p.count("ssh_public_keys", self.ssh_public_keys.len(), limits::SSH_KEYS);
        for (i, tag) in self.tags.iter().enumerate() {
            let field = format!("tags[{i}]");
            if let Err(e) = pve_tag(tag) {
                p.push(FieldError::new(field, e));
            } else if tag.to_ascii_lowercase().starts_with(crate::MARKER_TAG_PREFIX) {
                p.push(FieldError::new(
                    field,
                    format!(
                        "`{tag}`: the `{}` prefix is reserved for pvefleet's ownership marker",
                        crate::MARKER_TAG_PREFIX
                    ),
                ));
            }
        }
        for (i, key) in self.ssh_public_keys.iter().enumerate() {
            if let Err(e) = ssh_public_key(key) {
                p.push(FieldError::new(format!("ssh_public_keys[{i}]"), e));
            }
        }
        p.count("ssh_host_keys", self.ssh_host_keys.len(), limits::SSH_KEYS);
        for (i, fp) in self.ssh_host_keys.iter().enumerate() {
            let ok = fp
                .strip_prefix("SHA256:")
                .is_some_and(|b| b.len() == 43 && b.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/'));
            p.check(&format!("ssh_host_keys[{i}]"), ok, || {
                format!("`{fp}` is not a host key fingerprint like `SHA256:` and 43 base64 characters (ssh-keygen -lf)")
            });
        }
        if let Some(pw) = &self.root_password {
            p.check("root_password", pw.to.starts_with("SHA256:") && !pw.data.is_empty(), || {
                "must be sealed to an agent's key (`to` a key fingerprint, `data` the sealed box)".into()
            });
        }
        self.validate_more(&mut p);
        p.finish()
    }

    /// The volume the create unpacks: `ostemplate`, or where `template` puts it; none for a clone.
    pub fn effective_ostemplate(&self) -> Option<String> {
        self.ostemplate.clone().or_else(|| self.template.as_ref().map(crate::source::TemplateSource::volid))
    }

    /// Exactly one template source, each sane; and what PVE cannot do to a clone.
    fn validate_source(&self, p: &mut Problems) {
        let given: Vec<&str> = [
            self.ostemplate.as_ref().map(|_| "ostemplate"),
            self.template.as_ref().map(crate::source::TemplateSource::field),
            self.clone.as_ref().map(|_| "clone"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match given.as_slice() {
            [] => p.push(FieldError::new(
                "ostemplate",
                "is required, or another template source: `template.download`, `template.appliance`, \
                 `template.oci` or `clone`",
            )),
            [_] => {}
            [first, rest @ ..] => p.push(FieldError::new(
                rest[0],
                format!("give one template source; `{first}` is given too ({} in all)", given.join(", ")),
            )),
        }
        if let Some(t) = &self.ostemplate {
            let ok =
                t.split_once(':').is_some_and(|(storage, volume)| config_id(storage).is_ok() && !volume.is_empty());
            p.check("ostemplate", ok, || {
                format!("`{t}` is not a volume id like `local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst`")
            });
        }
        if let Some(source) = &self.template {
            p.nest(source.field(), source.validate());
        }
        if let Some(entrypoint) = &self.entrypoint {
            p.bytes("entrypoint", entrypoint, limits::TEXT_BYTES);
            p.check("entrypoint", !entrypoint.is_empty() && !entrypoint.chars().any(char::is_control), || {
                "must be a command without control characters".into()
            });
        }
        crate::source::check_env(p, &self.env);
        let Some(clone) = &self.clone else { return };
        p.nest("clone", clone.validate());
        // PVE's clone copies the source; these are create-only parameters it has no way to set.
        p.check("root_password", self.root_password.is_none(), || {
            "PVE cannot set a password on a clone; the clone keeps its source's".into()
        });
        p.check("ssh_public_keys", self.ssh_public_keys.is_empty(), || {
            "PVE cannot set ssh-public-keys on a clone; put them in the template, or deploy them as a file".into()
        });
        p.check("rootfs", self.rootfs.is_none(), || {
            "a clone's root disk is its source's; `clone.storage` says where a full clone puts it".into()
        });
    }

    /// The checks of the fields beyond the first version's.
    fn validate_more(&self, p: &mut Problems) {
        if let Some(d) = &self.description {
            p.bytes("description", d, limits::DESCRIPTION_BYTES);
        }
        p.count("nameservers", self.nameservers.len(), limits::NAMESERVERS);
        if let Some(ns) = &self.nameserver {
            p.bytes("nameserver", ns, limits::TEXT_BYTES);
        }
        if let Some(domains) = &self.searchdomain {
            p.bytes("searchdomain", domains, limits::TEXT_BYTES);
        }
        if let Some(pool) = &self.pool
            && let Err(e) = config_id(pool)
        {
            p.push(FieldError::new("pool", e));
        }
        if let Some(limit) = self.cpulimit {
            p.check("cpulimit", (0.0..=8192.0).contains(&limit), || format!("{limit} is outside 0..=8192"));
        }
        if let Some(units) = self.cpuunits {
            p.check("cpuunits", (1..=262_144).contains(&units), || format!("{units} is outside 1..=262144"));
        }
        if let Some(rootfs) = &self.rootfs {
            p.nest("rootfs", rootfs.validate());
        }
        p.check("mounts", self.mounts.len() <= 256, || {
            format!("{} mount points; PVE takes mp0..mp255", self.mounts.len())
        });
        let mut paths = std::collections::HashSet::new();
        for (i, mp) in self.mounts.iter().enumerate() {
            p.nest(&format!("mounts[{i}]"), mp.validate());
            p.check(&format!("mounts[{i}].path"), paths.insert(mp.path()), || {
                format!("`{}` is mounted by an earlier mount point", mp.path())
            });
        }
        p.check("nics", self.nics.len() <= 32, || format!("{} NICs; PVE takes net0..net31", self.nics.len()));
        let mut names = std::collections::HashSet::new();
        for (i, nic) in self.nics.iter().enumerate() {
            p.nest(&format!("nics[{i}]"), nic.validate());
            p.check(&format!("nics[{i}].name"), names.insert(nic.name.as_str()), || {
                format!("`{}` is the name of an earlier NIC", nic.name)
            });
        }
        if let Some(nic) = &self.ssh_nic {
            let known = self.effective_nics().iter().any(|n| &n.name == nic);
            p.check("ssh_nic", known, || format!("`{nic}` names none of the container's NICs"));
        }
        if let Some(domains) = &self.searchdomain {
            let ok = !domains.trim().is_empty() && domains.split_whitespace().all(|d| dns_name(d).is_ok());
            p.check("searchdomain", ok, || format!("`{domains}` is not a space-separated list of DNS names"));
        }
        p.nest("features", self.features.validate());
        if let Some(tz) = &self.timezone {
            let ok = !tz.is_empty() && tz.chars().all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c));
            p.check("timezone", ok, || format!("`{tz}` is not a time zone like `Europe/Berlin` (or `host`)"));
        }
        let one_of = |p: &mut Problems, field: &str, value: &Option<String>, allowed: &[&str]| {
            if let Some(v) = value {
                p.check(field, allowed.contains(&v.as_str()), || format!("`{v}` is not one of {}", allowed.join(", ")));
            }
        };
        one_of(p, "arch", &self.arch, &["amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"]);
        one_of(
            p,
            "ostype",
            &self.ostype,
            &[
                "debian",
                "devuan",
                "ubuntu",
                "centos",
                "fedora",
                "opensuse",
                "archlinux",
                "alpine",
                "gentoo",
                "nixos",
                "unmanaged",
            ],
        );
        one_of(p, "cmode", &self.cmode, &["shell", "console", "tty"]);
        if let Some(tty) = self.tty {
            p.check("tty", tty <= 6, || format!("{tty} is outside 0..=6"));
        }
    }
}

fn ssh_public_key(key: &str) -> Result<(), String> {
    const TYPES: [&str; 6] = [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
    ];
    let mut parts = key.split_whitespace();
    let (Some(kind), Some(body)) = (parts.next(), parts.next()) else {
        return Err("is not an OpenSSH public key line (`TYPE BASE64 [COMMENT]`)".into());
    };
    if !TYPES.contains(&kind) {
        return Err(format!("key type `{kind}` is not one of {}", TYPES.join(", ")));
    }
    if key.contains('\n') || !body.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)) {
        return Err("the key body is not base64 on one line".into());
    }
    Ok(())
}

/// A file mode, written as an octal string (`"0644"`) because JSON and TOML have no octal
/// numbers and a decimal 420 would be a trap.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FileMode(u32);

impl FileMode {
    pub const MAX: u32 = 0o7777;

    pub fn new(mode: u32) -> Result<Self, FieldError> {
        if mode <= Self::MAX { Ok(Self(mode)) } else { Err(FieldError::new("mode", format!("{mode:o} is above 7777"))) }
    }

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileMode({:04o})", self.0)
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl FromStr for FileMode {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        let mode = u32::from_str_radix(digits, 8)
            .ok()
            .filter(|_| !digits.is_empty() && digits.len() <= 5)
            .ok_or_else(|| FieldError::new("mode", format!("`{s}` is not an octal mode like \"0644\"")))?;
        Self::new(mode)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cow::<str>::deserialize(d)?.parse().map_err(|e: FieldError| serde::de::Error::custom(e.problem))
    }
}

impl JsonSchema for FileMode {
    fn schema_name() -> Cow<'static, str> {
        "FileMode".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An octal file mode as a string, at most 7777.",
            "type": "string",
            "pattern": "^(0o)?0*[0-7]{1,4}$"
        })
    }
}

/// What to put into the container once it runs.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    /// Packages installed in one go with the container's package manager.
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Run in order after packages and files.
    #[serde(default)]
    pub scripts: Vec<ScriptSpec>,
}

impl DeploySpec {
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty() && self.files.is_empty() && self.scripts.is_empty()
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        p.count("packages", self.packages.len(), limits::PACKAGES);
        p.count("files", self.files.len(), limits::FILES);
        p.count("scripts", self.scripts.len(), limits::SCRIPTS);
        for (i, pkg) in self.packages.iter().enumerate() {
            p.bytes(&format!("packages[{i}]"), pkg, limits::TEXT_BYTES);
            let ok = !pkg.is_empty()
                && !pkg.starts_with('-')
                && pkg.chars().all(|c| c.is_ascii_alphanumeric() || "+-.:_=~*".contains(c));
            p.check(&format!("packages[{i}]"), ok, || format!("`{pkg}` is not a package name"));
        }
        let mut paths = std::collections::HashSet::new();
        for (i, file) in self.files.iter().enumerate() {
            p.nest(&format!("files[{i}]"), file.validate());
            // The agent records each file as done by its path: two files at one path would
            // be one write, whichever came first.
            p.check(&format!("files[{i}].path"), paths.insert(&file.path), || {
                format!("`{}` is written by an earlier file", file.path)
            });
        }
        let mut names = std::collections::HashSet::new();
        for (i, script) in self.scripts.iter().enumerate() {
            p.nest(&format!("scripts[{i}]"), script.validate());
            p.check(&format!("scripts[{i}].name"), names.insert(&script.name), || {
                format!("`{}` is used by an earlier script; names identify scripts in events", script.name)
            });
        }
        p.finish()
    }
}

/// A file to write into the container over SFTP.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path in the container; parent directories are created.
    pub path: String,
    /// The file's text. Exactly one of `content` and `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A local file whose bytes are sent. Exactly one of `content` and `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default = "defaults::mode")]
    pub mode: FileMode,
    /// `user` or `user:group`; root's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The file holds a secret (a key, a token, an env file): `pvefleet submit` seals its bytes
    /// to the node's agent for this job only, like the root password, and no store, log or page
    /// keeps them: they show its path, size and SHA-256.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// A secret file's bytes on the wire, sealed to the job's node's agent for this job (see
    /// [`crate::seal`]). Exactly one of `content`, `source` and `sealed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<crate::seal::Sealed>,
    /// What is shown of a secret file instead of its bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<FileDigest>,
}

/// A file's size and SHA-256 (hex): what the store and the pages show of a secret file.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: String,
}

impl FileDigest {
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        let sha256 = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        Self { size: bytes.len() as u64, sha256 }
    }
}

impl FileSpec {
    /// A file of `content` at `path`, mode 0644, root's.
    pub fn new(path: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            content: Some(content.into()),
            source: None,
            mode: defaults::mode(),
            owner: None,
            secret: false,
            sealed: None,
            digest: None,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        p.bytes("path", &self.path, limits::TEXT_BYTES);
        if let Some(content) = &self.content {
            p.bytes("content", content, limits::FILE_BYTES);
        }
        if let Some(source) = &self.source {
            p.bytes("source", source, limits::TEXT_BYTES);
        }
        let path_ok = self.path.starts_with('/')
            && self.path.len() > 1
            && !self.path.ends_with('/')
            && !self.path.contains('\0')
            && !self.path.split('/').any(|c| c == "..");
        p.check("path", path_ok, || {
            format!("`{}` is not an absolute file path (starts with `/`, no `..`, not a directory)", self.path)
        });
        let given = [self.content.is_some(), self.source.is_some(), self.sealed.is_some()];
        p.check("content", given.iter().filter(|g| **g).count() == 1, || {
            "give exactly one of `content` and `source` (`sealed` carries a secret file's bytes)".into()
        });
        p.check("sealed", self.sealed.is_none() || self.secret, || "only a `secret` file is sealed".into());
        if let Some(owner) = &self.owner {
            let ok = !owner.is_empty()
                && owner.split(':').count() <= 2
                && owner.split(':').all(|part| {
                    !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                });
            p.check("owner", ok, || format!("`{owner}` is not `user` or `user:group`"));
        }
        p.finish()
    }
}

/// A script run in the container, its output streamed line by line.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptSpec {
    /// Names the script in events and errors.
    pub name: String,
    pub body: String,
    /// The program that runs the body, fed on standard input.
    #[serde(default = "defaults::interpreter")]
    pub interpreter: String,
    /// Longest the script may run (`"10m"`); the job's `options.timeouts.script` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

impl ScriptSpec {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        p.check("name", !self.name.trim().is_empty(), || "must not be empty".into());
        p.check("body", !self.body.trim().is_empty(), || "a script needs a body".into());
        p.check("interpreter", !self.interpreter.trim().is_empty(), || "must not be empty".into());
        p.bytes("name", &self.name, limits::TEXT_BYTES);
        p.bytes("body", &self.body, limits::SCRIPT_BYTES);
        p.bytes("interpreter", &self.interpreter, limits::TEXT_BYTES);
        if let Some(t) = self.timeout {
            p.duration("timeout", t.0, limits::SCRIPT);
        }
        p.finish()
    }
}

/// A duration written the way operators write them: `"30s"`, `"10m"`, `"1h 30m"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(Self)
            .map_err(|e| format!("`{s}` is not a duration like \"30s\" or \"10m\" ({e})"))
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cow::<str>::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "HumanDuration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration such as \"30s\", \"10m\" or \"1h 30m\".",
            "type": "string"
        })
    }
}

/// What happens to the container when a job fails.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RollbackPolicy {
    /// Stop and destroy the container (only ever one this job created).
    #[default]
    Destroy,
    /// Leave it for inspection.
    Keep,
}

/// Limits on each phase of a job.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// A Proxmox task (create, start, stop, destroy).
    #[serde(default = "Timeouts::task_default")]
    pub task: HumanDuration,
    /// Waiting for the container's IP address.
    #[serde(default = "Timeouts::ip_default")]
    pub ip: HumanDuration,
    /// Connecting over SSH (with retries) once the IP is known.
    #[serde(default = "Timeouts::ssh_default")]
    pub ssh: HumanDuration,
    /// Each deploy script, unless the script sets its own.
    #[serde(default = "Timeouts::script_default")]
    pub script: HumanDuration,
}

impl Timeouts {
    fn task_default() -> HumanDuration {
        HumanDuration::secs(600)
    }
    fn ip_default() -> HumanDuration {
        HumanDuration::secs(120)
    }
    fn ssh_default() -> HumanDuration {
        HumanDuration::secs(120)
    }
    fn script_default() -> HumanDuration {
        HumanDuration::secs(1800)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            task: Self::task_default(),
            ip: Self::ip_default(),
            ssh: Self::ssh_default(),
            script: Self::script_default(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobOptions {
    #[serde(default)]
    pub rollback: RollbackPolicy,
    #[serde(default)]
    pub timeouts: Timeouts,
}

impl JobOptions {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        let t = &self.timeouts;
        for (name, d, max) in [
            ("task", t.task, limits::TASK),
            ("ip", t.ip, limits::IP),
            ("ssh", t.ssh, limits::SSH),
            ("script", t.script, limits::SCRIPT),
        ] {
            p.duration(&format!("timeouts.{name}"), d.0, max);
        }
        p.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn spec() -> ContainerSpec {
        ContainerSpec::new("web", "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst")
    }

    fn fields(r: Result<(), ValidationErrors>) -> Vec<String> {
        r.unwrap_err().0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_validate() {
        spec().validate().unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut ContainerSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("hostname", Box::new(|s| s.hostname = "bad_host".into())),
            ("memory", Box::new(|s| s.memory = 15)),
            ("cores", Box::new(|s| s.cores = 0)),
            ("cores", Box::new(|s| s.cores = 8193)),
            ("disk", Box::new(|s| s.disk = 0)),
            ("storage", Box::new(|s| s.storage = "9bad".into())),
            ("bridge", Box::new(|s| s.bridge = "vm br0".into())),
            ("gw", Box::new(|s| s.gw = Some("10.0.0.1".parse().unwrap()))),
            (
                "gw",
                Box::new(|s| {
                    s.ip = "10.0.0.5/24".parse().unwrap();
                    s.gw = Some("10.0.1.1".parse().unwrap());
                }),
            ),
            ("nameserver", Box::new(|s| s.nameserver = Some("dns.example".into()))),
            ("ostemplate", Box::new(|s| s.ostemplate = Some("debian.tar.zst".into()))),
            ("tags[1]", Box::new(|s| s.tags = vec!["ok".into(), "not ok".into()])),
            ("tags[0]", Box::new(|s| s.tags = vec!["pvefleet-forged".into()])),
            ("ssh_public_keys[0]", Box::new(|s| s.ssh_public_keys = vec!["hello".into()])),
            (
                "root_password",
                Box::new(|s| s.root_password = Some(crate::seal::Sealed { to: "pve1".into(), data: "x".into() })),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert_eq!(fields(s.validate()), vec![field.to_string()]);
        }
    }

    #[test]
    fn static_ip_with_gateway_in_subnet() {
        let mut s = spec();
        s.ip = "192.168.1.50/24".parse().unwrap();
        s.gw = Some("192.168.1.1".parse().unwrap());
        s.validate().unwrap();
        for bad in ["10.0.0.1", "10.0.0.1/33", "10.0.0.1/0", "10.0.0/24", "dhcp4"] {
            assert_eq!(bad.parse::<IpConfig>().unwrap_err().field, "ip", "{bad}");
        }
    }

    #[test]
    fn secret_never_in_debug() {
        let dbg = format!("{:?}", Secret::new("hunter2-very-secret"));
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("[redacted]"));
        let mut s = spec();
        s.root_password = Some(crate::seal::SecretKey::generate().public().seal(b"hunter2-very-secret"));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2") && dbg.contains("Sealed(to SHA256:"), "{dbg}");
    }

    #[test]
    fn file_modes_are_octal_strings_up_to_7777() {
        assert_eq!("0644".parse::<FileMode>().unwrap().bits(), 0o644);
        assert_eq!("0o7777".parse::<FileMode>().unwrap().bits(), 0o7777);
        assert!("10000".parse::<FileMode>().is_err());
        assert!("0x1".parse::<FileMode>().is_err());
        assert!("".parse::<FileMode>().is_err());
        assert_eq!(serde_json::to_string(&FileMode(0o755)).unwrap(), "\"0755\"");
    }

    #[test]
    fn deploy_problems_are_named_with_their_index() {
        let d = DeploySpec {
            packages: vec!["curl".into(), "--force".into()],
            files: vec![
                FileSpec {
                    path: "etc/motd".into(),
                    content: Some("hi".into()),
                    source: Some("/tmp/x".into()),
                    mode: FileMode(0o644),
                    owner: Some("a:b:c".into()),
                    secret: false,
                    sealed: None,
                    digest: None,
                },
                FileSpec {
                    path: "etc/motd".into(),
                    content: Some("again".into()),
                    source: None,
                    mode: FileMode(0o644),
                    owner: None,
                    secret: false,
                    sealed: None,
                    digest: None,
                },
            ],
            scripts: vec![
                ScriptSpec { name: "s".into(), body: " ".into(), interpreter: "/bin/sh".into(), timeout: None },
                ScriptSpec { name: "s".into(), body: "true".into(), interpreter: "/bin/sh".into(), timeout: None },
            ],
        };
        assert_eq!(
            fields(d.validate()),
            [
                "packages[1]",
                "files[0].path",
                "files[0].content",
                "files[0].owner",
                "files[1].path",
                "files[1].path",
                "scripts[0].body",
                "scripts[1].name"
            ]
        );
    }

    #[test]
    fn the_whole_spec_refuses_what_pve_would_and_names_the_field() {
        use crate::lxc::{Ipv4Setting, Nic};
        let mut s = spec();
        let mut eth0 = Nic::new("eth0", "vmbr0", Ipv4Setting::Dhcp);
        eth0.gw = Some("10.0.0.1".parse().unwrap());
        let mut again = Nic::new("eth0", "vmbr1", "10.0.0.5/24".parse().unwrap());
        again.ip6 = Some("fd00::5/64".parse().unwrap());
        again.gw6 = Some("fd01::1".parse().unwrap());
        s.nics = vec![eth0, again];
        s.ssh_nic = Some("eth9".into());
        s.tty = Some(7);
        assert_eq!(
            fields(s.validate()),
            ["nics[0].gw", "nics[1].gw6", "nics[1].name", "ssh_nic", "tty"],
            "ip=dhcp with a gw, a gw6 outside its prefix, two NICs with one name"
        );
        // A NIC without a bridge does not even read.
        let err = toml::from_str::<ContainerSpec>(
            "hostname = 'web'\nostemplate = 'local:vztmpl/x.tar.zst'\n[[nics]]\nname = 'eth0'\nip = 'dhcp'\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing field `bridge`"), "{err}");
    }

    #[test]
    fn one_template_source_is_given_and_a_clone_is_not_asked_what_pve_cannot_do() {
        let read = |extra: &str| {
            toml::from_str::<ContainerSpec>(&format!("hostname = 'web'\n{extra}")).map_err(|e| e.to_string())
        };
        let none = read("").unwrap();
        assert_eq!(fields(none.validate()), ["ostemplate"]);
        let two = read("ostemplate = 'local:vztmpl/x.tar.zst'\n[clone]\nfrom = 9000\n").unwrap();
        assert_eq!(fields(two.validate()), ["clone"], "the second source is named");
        let download = read(
            "[template.download]\nurl = 'https://example.com/t.tar.zst'\nchecksum = 'zz'\nfilename = 't.tar.zst'\n",
        )
        .unwrap();
        assert_eq!(fields(download.validate()), ["template.download.checksum"]);
        assert_eq!(download.effective_ostemplate().as_deref(), Some("local:vztmpl/t.tar.zst"));
        let mut clone = read("[clone]\nfrom = 'tmpl-debian'\n").unwrap();
        clone.validate().unwrap();
        assert!(clone.clone.as_ref().unwrap().full, "full clones by default");
        clone.ssh_public_keys =
            vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfakefakefakefakefakefakefakefakefakefakefake x".into()];
        clone.rootfs = Some(crate::lxc::RootFs {
            storage: "local-lvm".into(),
            size: 4,
            mountoptions: vec![],
            acl: None,
            quota: None,
            replicate: None,
        });
        assert_eq!(fields(clone.validate()), ["ssh_public_keys", "rootfs"]);
        assert!(
            read("[template.oci]\nreference = 'nginx:1'\nbogus = 1\n").unwrap_err().contains("unknown field `bogus`")
        );
    }

    #[test]
    fn a_spec_in_the_first_versions_format_reads_as_before() {
        let s: ContainerSpec = toml::from_str(
            "hostname = 'web'\nostemplate = 'local:vztmpl/x.tar.zst'\nbridge = 'vmbr1'\nip = '10.0.0.5/24'\ngw = '10.0.0.1'\nnesting = true\ndisk = 20\nstorage = 'fast'\n",
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.effective_nics()[0].to_pve(), "name=eth0,bridge=vmbr1,ip=10.0.0.5/24,gw=10.0.0.1");
        assert_eq!(s.effective_rootfs().to_pve(), "fast:20");
        assert_eq!(s.effective_features().to_pve(), "nesting=1");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err =
            toml::from_str::<ContainerSpec>("hostname = 'web'\nostemplate = 'local:vztmpl/x.tar.zst'\nmemroy = 1024\n")
                .unwrap_err();
        assert!(err.to_string().contains("memroy"), "{err}");
    }
}
