//! The rest of PVE's LXC create API, as people write it: network interfaces (IPv4 and IPv6,
//! VLANs, MTU), the root disk and mount points, features, boot order. Each type turns itself
//! into the parameter string PVE takes (`net0`, `mp0`, `rootfs`, `features`, `startup`), so the
//! agent sends exactly what the spec says and tests can read it back from PVE; and reads itself
//! back from one (the coordinator's `--net`, `--mp`, … flags), through the one parser and writer
//! in [`crate::pve_string`], so the two directions cannot drift apart.
//!
//! PVE's formats are those of its API schema (`pve-api.json`, `/nodes/{node}/lxc` POST).

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::pve_string::PropertyString;
use crate::validate::{FieldError, Problems, ValidationErrors, config_id};

/// A string-typed setting: serialized with `Display`, read with `FromStr`.
macro_rules! text_setting {
    ($ty:ty, $name:literal, $desc:literal, $pattern:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Cow::<str>::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "description": $desc, "type": "string", "pattern": $pattern })
            }
        }
    };
}

/// How a NIC gets its IPv4 address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ipv4Setting {
    Dhcp,
    /// Left to the container's own configuration.
    Manual,
    Static {
        addr: Ipv4Addr,
        prefix: u8,
    },
}

impl Ipv4Setting {
    /// Whether `ip` is a host of this static address's subnet (other than the address itself).
    pub fn has_host(&self, ip: Ipv4Addr) -> bool {
        match *self {
            Ipv4Setting::Static { addr, prefix } => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(addr) & mask == u32::from(ip) & mask && addr != ip
            }
            _ => false,
        }
    }
}

impl fmt::Display for Ipv4Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ipv4Setting::Dhcp => f.write_str("dhcp"),
            Ipv4Setting::Manual => f.write_str("manual"),
            Ipv4Setting::Static { addr, prefix } => write!(f, "{addr}/{prefix}"),
        }
    }
}

impl FromStr for Ipv4Setting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dhcp" => return Ok(Ipv4Setting::Dhcp),
            "manual" => return Ok(Ipv4Setting::Manual),
            _ => {}
        }
        let bad = || format!("`{s}` is not `dhcp`, `manual` or an IPv4 address with a prefix like `10.0.0.5/24`");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(1..=32).contains(&prefix) {
            return Err(format!("prefix /{prefix} in `{s}` is outside 1..=32"));
        }
        Ok(Ipv4Setting::Static { addr, prefix })
    }
}

text_setting!(
    Ipv4Setting,
    "Ipv4Setting",
    "`dhcp`, `manual`, or a static IPv4 address with its prefix length (`10.0.0.5/24`).",
    "^(dhcp|manual|\\d{1,3}(\\.\\d{1,3}){3}/\\d{1,2})$"
);

/// How a NIC gets its IPv6 address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ipv6Setting {
    /// SLAAC.
    Auto,
    Dhcp,
    Manual,
    Static {
        addr: Ipv6Addr,
        prefix: u8,
    },
}

impl Ipv6Setting {
    /// Whether `ip` lies in this static address's prefix (other than the address itself).
    pub fn has_host(&self, ip: Ipv6Addr) -> bool {
        match *self {
            Ipv6Setting::Static { addr, prefix } => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                u128::from(addr) & mask == u128::from(ip) & mask && addr != ip
            }
            _ => false,
        }
    }
}

impl fmt::Display for Ipv6Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ipv6Setting::Auto => f.write_str("auto"),
            Ipv6Setting::Dhcp => f.write_str("dhcp"),
            Ipv6Setting::Manual => f.write_str("manual"),
            Ipv6Setting::Static { addr, prefix } => write!(f, "{addr}/{prefix}"),
        }
    }
}

impl FromStr for Ipv6Setting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => return Ok(Ipv6Setting::Auto),
            "dhcp" => return Ok(Ipv6Setting::Dhcp),
            "manual" => return Ok(Ipv6Setting::Manual),
            _ => {}
        }
        let bad =
            || format!("`{s}` is not `auto`, `dhcp`, `manual` or an IPv6 address with a prefix like `fd00::5/64`");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(1..=128).contains(&prefix) {
            return Err(format!("prefix /{prefix} in `{s}` is outside 1..=128"));
        }
        Ok(Ipv6Setting::Static { addr, prefix })
    }
}

text_setting!(
    Ipv6Setting,
    "Ipv6Setting",
    "`auto` (SLAAC), `dhcp`, `manual`, or a static IPv6 address with its prefix length (`fd00::5/64`).",
    "^(auto|dhcp|manual|[0-9a-fA-F:.]+/\\d{1,3})$"
);

/// One network interface of the container (`net0`…`net31`, in order).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// The interface's name inside the container (`eth0`).
    pub name: String,
    /// The host bridge it is plugged into.
    pub bridge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Setting>,
    /// IPv4 gateway; needs a static `ip` whose subnet holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Setting>,
    /// IPv6 gateway; needs a static `ip6` whose prefix holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw6: Option<Ipv6Addr>,
    /// VLAN tag, 1..=4094.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u16>,
    /// VLAN ids passed through (trunk), each 1..=4094.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunks: Vec<u16>,
    /// MTU, 64..=65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// PVE's firewall on this interface.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub firewall: bool,
    /// A fixed MAC address (`BC:24:11:00:00:01`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hwaddr: Option<String>,
    /// Rate limit in MB/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Created with its link down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link_down: bool,
}

impl Nic {
    /// A NIC on `bridge` with an IPv4 setting and nothing else.
    pub fn new(name: &str, bridge: &str, ip: Ipv4Setting) -> Self {
        Self {
            name: name.into(),
            bridge: bridge.into(),
            ip: Some(ip),
            gw: None,
            ip6: None,
            gw6: None,
            tag: None,
            trunks: Vec::new(),
            mtu: None,
            firewall: false,
            hwaddr: None,
            rate: None,
            link_down: false,
        }
    }

    /// PVE's `netN` string: `name=eth0,bridge=vmbr0,ip=…,gw=…,ip6=…,tag=…,…`.
    pub fn to_pve(&self) -> String {
        PropertyString::new()
            .with("name", &self.name)
            .with("bridge", &self.bridge)
            .with_opt("ip", self.ip)
            .with_opt("gw", self.gw)
            .with_opt("ip6", self.ip6)
            .with_opt("gw6", self.gw6)
            .with_opt("tag", self.tag)
            .with_list("trunks", &self.trunks)
            .with_opt("mtu", self.mtu)
            .with_switch("firewall", self.firewall)
            .with_opt("hwaddr", self.hwaddr.as_ref())
            .with_opt("rate", self.rate)
            .with_switch("link_down", self.link_down)
            .to_string()
    }

    /// Reads a `netN` string (as `--net` takes it), its keys in any order. Only its form is
    /// checked here; [`validate`](Self::validate) judges the values.
    pub fn from_pve(s: &str) -> Result<Self, String> {
        let p = PropertyString::parse_keyed(s)?;
        p.only(&NIC_KEYS)?;
        Ok(Self {
            name: p.required("name")?,
            bridge: p.required("bridge")?,
            ip: p.value("ip")?,
            gw: p.value("gw")?,
            ip6: p.value("ip6")?,
            gw6: p.value("gw6")?,
            tag: p.number("tag")?,
            trunks: p.numbers("trunks")?,
            mtu: p.number("mtu")?,
            firewall: p.switch("firewall")?,
            hwaddr: p.get("hwaddr").map(str::to_owned),
            rate: p.number("rate")?,
            link_down: p.switch("link_down")?,
        })
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        let name_ok = !self.name.is_empty()
            && self.name != "lo"
            && self.name.len() <= 15
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        p.check("name", name_ok, || {
            format!("`{}` is not an interface name (up to 15 of [A-Za-z0-9-_.], not `lo`)", self.name)
        });
        if let Err(e) = config_id(&self.bridge) {
            p.push(FieldError::new("bridge", e));
        }
        if let Some(gw) = self.gw {
            match self.ip {
                Some(ip @ Ipv4Setting::Static { .. }) => {
                    p.check("gw", ip.has_host(gw), || format!("{gw} is not a host in the subnet of {ip}"))
                }
                _ => p.push(FieldError::new(
                    "gw",
                    "a gateway needs a static `ip`; with `dhcp` the DHCP server gives it".to_owned(),
                )),
            }
        }
        if let Some(gw6) = self.gw6 {
            match self.ip6 {
                Some(ip6 @ Ipv6Setting::Static { .. }) => {
                    p.check("gw6", ip6.has_host(gw6), || format!("{gw6} is outside the prefix of {ip6}"))
                }
                _ => p.push(FieldError::new(
                    "gw6",
                    "an IPv6 gateway needs a static `ip6`; with `auto` or `dhcp` the network gives it".to_owned(),
                )),
            }
        }
        if let Some(tag) = self.tag {
            p.check("tag", (1..=4094).contains(&tag), || format!("VLAN {tag} is outside 1..=4094"));
        }
        for (i, t) in self.trunks.iter().enumerate() {
            p.check(&format!("trunks[{i}]"), (1..=4094).contains(t), || format!("VLAN {t} is outside 1..=4094"));
        }
        if let Some(mtu) = self.mtu {
            p.check("mtu", mtu >= 64, || format!("{mtu} is below 64"));
        }
        if let Some(mac) = &self.hwaddr {
            let ok = mac.split(':').count() == 6
                && mac.split(':').all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok());
            p.check("hwaddr", ok, || format!("`{mac}` is not a MAC address like `BC:24:11:00:00:01`"));
        }
        if let Some(rate) = self.rate {
            p.check("rate", rate > 0.0 && rate.is_finite(), || format!("{rate} MB/s is not a positive rate"));
        }
        p.finish()
    }
}

/// The keys of a `netN` string, in the order [`Nic::to_pve`] writes them.
const NIC_KEYS: [&str; 13] =
    ["name", "bridge", "ip", "gw", "ip6", "gw6", "tag", "trunks", "mtu", "firewall", "hwaddr", "rate", "link_down"];

/// The root disk, when more than a storage and a size is wanted.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RootFs {
    pub storage: String,
    /// Size in GB.
    pub size: u32,
    /// Mount options: `discard`, `lazytime`, `noatime`, `nodev`, `noexec`, `nosuid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mountoptions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate: Option<bool>,
}

/// `local-lvm:8` as its storage and its size in GB (still text): how PVE is asked for a new
/// volume, told from an existing one (`local-lvm:vm-100-disk-1`) by the digits.
fn new_volume(head: &str) -> Option<(&str, &str)> {
    head.split_once(':')
        .filter(|(storage, size)| !storage.is_empty() && !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()))
}

fn size_gb(size: &str) -> Result<u32, String> {
    size.parse().map_err(|_| format!("{size} GB is out of range"))
}

const MOUNT_OPTIONS: [&str; 6] = ["discard", "lazytime", "noatime", "nodev", "noexec", "nosuid"];

fn check_mountoptions(p: &mut Problems, options: &[String]) {
    for (i, o) in options.iter().enumerate() {
        p.check(&format!("mountoptions[{i}]"), MOUNT_OPTIONS.contains(&o.as_str()), || {
            format!("`{o}` is not one of {}", MOUNT_OPTIONS.join(", "))
        });
    }
}

impl RootFs {
    /// PVE's `rootfs` string: `local-lvm:8,acl=1,mountoptions=noatime`.
    pub fn to_pve(&self) -> String {
        PropertyString::headed(format_args!("{}:{}", self.storage, self.size))
            .with_flag("acl", self.acl)
            .with_flag("quota", self.quota)
            .with_flag("replicate", self.replicate)
            .with_list("mountoptions", &self.mountoptions)
            .to_string()
    }

    /// Reads a `rootfs` string for a new root disk (as `--rootfs` takes it): `STORAGE:GB` first.
    pub fn from_pve(s: &str) -> Result<Self, String> {
        let p = PropertyString::parse(s)?;
        let like = "a new root disk, like local-lvm:8";
        let head = p.head().ok_or_else(|| format!("no STORAGE:GB first ({like})"))?;
        let (storage, size) = new_volume(head).ok_or_else(|| format!("`{head}` is not STORAGE:GB ({like})"))?;
        p.only(&["acl", "quota", "replicate", "mountoptions"])?;
        Ok(Self {
            storage: storage.to_owned(),
            size: size_gb(size)?,
            mountoptions: p.list("mountoptions"),
            acl: p.flag("acl")?,
            quota: p.flag("quota")?,
            replicate: p.flag("replicate")?,
        })
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        if let Err(e) = config_id(&self.storage) {
            p.push(FieldError::new("storage", e));
        }
        p.check("size", self.size >= 1, || format!("{} GB is below the minimum of 1 GB", self.size));
        p.check("size", self.size <= crate::limits::DISK_GB, || {
            format!("{} GB is above the maximum of {} GB", self.size, crate::limits::DISK_GB)
        });
        check_mountoptions(&mut p, &self.mountoptions);
        p.finish()
    }
}

/// A mount point (`mp0`…`mp255`): a new volume, an existing volume, or a directory of the host.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MountPoint {
    /// A new volume on `storage`, of `size` GB.
    Volume {
        storage: String,
        size: u32,
        /// Where it is mounted in the container.
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<bool>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ro: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        acl: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quota: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replicate: Option<bool>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mountoptions: Vec<String>,
    },
    /// A volume that exists already (`local-lvm:vm-100-disk-1`).
    Existing {
        volume: String,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<bool>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ro: bool,
    },
    /// A directory of the host (only `root@pam` may make these on PVE; an API token is
    /// refused, so the agent refuses it at validating).
    Bind {
        host_path: String,
        path: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ro: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        shared: bool,
    },
}

impl MountPoint {
    pub fn path(&self) -> &str {
        match self {
            MountPoint::Volume { path, .. } | MountPoint::Existing { path, .. } | MountPoint::Bind { path, .. } => path,
        }
    }

    /// PVE's `mpN` string: `local-lvm:4,mp=/srv/data,backup=1`.
    pub fn to_pve(&self) -> String {
        let p = match self {
            MountPoint::Volume { storage, size, path, backup, ro, acl, quota, replicate, mountoptions } => {
                PropertyString::headed(format_args!("{storage}:{size}"))
                    .with("mp", path)
                    .with_flag("backup", *backup)
                    .with_switch("ro", *ro)
                    .with_flag("acl", *acl)
                    .with_flag("quota", *quota)
                    .with_flag("replicate", *replicate)
                    .with_list("mountoptions", mountoptions)
            }
            MountPoint::Existing { volume, path, backup, ro } => {
                PropertyString::headed(volume).with("mp", path).with_flag("backup", *backup).with_switch("ro", *ro)
            }
            MountPoint::Bind { host_path, path, ro, shared } => {
                PropertyString::headed(host_path).with("mp", path).with_switch("ro", *ro).with_switch("shared", *shared)
            }
        };
        p.to_string()
    }

    /// Reads an `mpN` string (as `--mp` takes it). What comes first says the kind: a host
    /// directory (`/srv/media`), a new volume (`local-lvm:4`) or an existing one
    /// (`local-lvm:vm-100-disk-1`); a key that kind does not take is refused by name.
    pub fn from_pve(s: &str) -> Result<Self, String> {
        let p = PropertyString::parse(s)?;
        let head = p.head().ok_or("no volume first (`local-lvm:4`, `local-lvm:vm-100-disk-1` or a host directory)")?;
        p.only(&["mp", "backup", "ro", "acl", "quota", "replicate", "shared", "mountoptions"])?;
        let path = p.required("mp")?;
        let ro = p.switch("ro")?;
        if head.starts_with('/') {
            refuse(&p, "a host directory", &["backup", "acl", "quota", "replicate", "mountoptions"])?;
            Ok(MountPoint::Bind { host_path: head.to_owned(), path, ro, shared: p.switch("shared")? })
        } else if let Some((storage, size)) = new_volume(head) {
            refuse(&p, "a new volume", &["shared"])?;
            Ok(MountPoint::Volume {
                storage: storage.to_owned(),
                size: size_gb(size)?,
                path,
                backup: p.flag("backup")?,
                ro,
                acl: p.flag("acl")?,
                quota: p.flag("quota")?,
                replicate: p.flag("replicate")?,
                mountoptions: p.list("mountoptions"),
            })
        } else {
            refuse(&p, "an existing volume", &["acl", "quota", "replicate", "shared", "mountoptions"])?;
            Ok(MountPoint::Existing { volume: head.to_owned(), path, backup: p.flag("backup")?, ro })
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        let path = self.path();
        p.check(
            "path",
            path.starts_with('/') && path != "/" && !path.contains(',') && !path.split('/').any(|c| c == ".."),
            || format!("`{path}` is not an absolute path in the container (not `/`, no `..`, no commas)"),
        );
        match self {
            MountPoint::Volume { storage, size, mountoptions, .. } => {
                if let Err(e) = config_id(storage) {
                    p.push(FieldError::new("storage", e));
                }
                p.check("size", *size >= 1, || format!("{size} GB is below the minimum of 1 GB"));
                p.check("size", *size <= crate::limits::DISK_GB, || {
                    format!("{size} GB is above the maximum of {} GB", crate::limits::DISK_GB)
                });
                check_mountoptions(&mut p, mountoptions);
            }
            MountPoint::Existing { volume, .. } => {
                let ok = volume
                    .split_once(':')
                    .is_some_and(|(s, v)| config_id(s).is_ok() && !v.is_empty() && !v.contains(','));
                p.check("volume", ok, || format!("`{volume}` is not a volume id like `local-lvm:vm-100-disk-1`"));
            }
            MountPoint::Bind { host_path, .. } => {
                p.check("host_path", host_path.starts_with('/') && !host_path.contains(','), || {
                    format!("`{host_path}` is not an absolute path on the host")
                });
            }
        }
        p.finish()
    }
}

/// Refuses the first of `keys` that `p` gives: they do not apply to `kind` of mount.
fn refuse(p: &PropertyString, kind: &str, keys: &[&str]) -> Result<(), String> {
    match keys.iter().find(|key| p.get(key).is_some()) {
        Some(key) => Err(format!("`{key}` does not apply to {kind}")),
        None => Ok(()),
    }
}

/// Container features. An API token may set only `nesting` on an unprivileged container (PVE:
/// pve-container `check_ct_modify_config_perm`): the agent refuses the rest at validating.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Features {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nesting: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keyctl: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fuse: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mknod: bool,
    /// File systems the container may mount (`nfs`, `cifs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_rw_sys: bool,
}

impl Features {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Those of the features only `root@pam` may set.
    pub fn beyond_nesting(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (name, on) in
            [("keyctl", self.keyctl), ("fuse", self.fuse), ("mknod", self.mknod), ("force_rw_sys", self.force_rw_sys)]
        {
            if on {
                out.push(name);
            }
        }
        if !self.mount.is_empty() {
            out.push("mount");
        }
        out
    }

    /// PVE's `features` string, keys as PVE writes them back (sorted): `keyctl=1,nesting=1`.
    pub fn to_pve(&self) -> String {
        PropertyString::new()
            .with_switch("force_rw_sys", self.force_rw_sys)
            .with_switch("fuse", self.fuse)
            .with_switch("keyctl", self.keyctl)
            .with_switch("mknod", self.mknod)
            .with_list("mount", &self.mount)
            .with_switch("nesting", self.nesting)
            .to_string()
    }

    /// Reads a `features` string (as `--features` takes it): `nesting=1,mount=nfs;cifs`.
    pub fn from_pve(s: &str) -> Result<Self, String> {
        let p = PropertyString::parse_keyed(s)?;
        p.only(&["nesting", "keyctl", "fuse", "mknod", "mount", "force_rw_sys"])?;
        Ok(Self {
            nesting: p.switch("nesting")?,
            keyctl: p.switch("keyctl")?,
            fuse: p.switch("fuse")?,
            mknod: p.switch("mknod")?,
            mount: p.list("mount"),
            force_rw_sys: p.switch("force_rw_sys")?,
        })
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        for (i, fs) in self.mount.iter().enumerate() {
            let ok = !fs.is_empty() && fs.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            p.check(&format!("mount[{i}]"), ok, || format!("`{fs}` is not a file system type like `nfs`"));
        }
        p.finish()
    }
}

/// Start and shutdown order at boot (`startup`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Startup {
    /// Lower starts first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
    /// Seconds to wait after starting it before the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<u32>,
    /// Seconds to wait for it to shut down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<u32>,
}

impl Startup {
    /// PVE's `startup` string: `order=1,up=30,down=60`.
    pub fn to_pve(&self) -> String {
        PropertyString::new()
            .with_opt("order", self.order)
            .with_opt("up", self.up)
            .with_opt("down", self.down)
            .to_string()
    }

    /// Reads a `startup` string (as `--startup` takes it).
    pub fn from_pve(s: &str) -> Result<Self, String> {
        let p = PropertyString::parse_keyed(s)?;
        p.only(&["order", "up", "down"])?;
        Ok(Self { order: p.number("order")?, up: p.number("up")?, down: p.number("down")? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nics_become_pves_net_strings() {
        let mut nic = Nic::new("eth0", "vmbr0", "10.0.0.5/24".parse().unwrap());
        nic.gw = Some("10.0.0.1".parse().unwrap());
        nic.ip6 = Some("fd00::5/64".parse().unwrap());
        nic.gw6 = Some("fd00::1".parse().unwrap());
        nic.tag = Some(20);
        nic.trunks = vec![30, 40];
        nic.mtu = Some(9000);
        nic.firewall = true;
        assert_eq!(
            nic.to_pve(),
            "name=eth0,bridge=vmbr0,ip=10.0.0.5/24,gw=10.0.0.1,ip6=fd00::5/64,gw6=fd00::1,tag=20,trunks=30;40,mtu=9000,firewall=1"
        );
        nic.validate().unwrap();
    }

    #[test]
    fn nic_problems_are_named() {
        let mut nic = Nic::new("eth 0", "vmbr0", Ipv4Setting::Dhcp);
        nic.gw = Some("10.0.0.1".parse().unwrap());
        nic.ip6 = Some("fd00::5/64".parse().unwrap());
        nic.gw6 = Some("fd01::1".parse().unwrap());
        nic.tag = Some(4095);
        let fields: Vec<String> = nic.validate().unwrap_err().0.into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["name", "gw", "gw6", "tag"]);
        assert!("10.0.0.5".parse::<Ipv4Setting>().is_err());
        assert_eq!("auto".parse::<Ipv6Setting>().unwrap(), Ipv6Setting::Auto);
    }

    #[test]
    fn mounts_features_and_startup_become_pve_strings() {
        let mp = MountPoint::Volume {
            storage: "local-lvm".into(),
            size: 4,
            path: "/srv/data".into(),
            backup: Some(true),
            ro: false,
            acl: None,
            quota: None,
            replicate: Some(false),
            mountoptions: vec!["noatime".into()],
        };
        assert_eq!(mp.to_pve(), "local-lvm:4,mp=/srv/data,backup=1,replicate=0,mountoptions=noatime");
        let bind = MountPoint::Bind { host_path: "/mnt/media".into(), path: "/media".into(), ro: true, shared: false };
        assert_eq!(bind.to_pve(), "/mnt/media,mp=/media,ro=1");
        let f = Features { nesting: true, keyctl: true, mount: vec!["nfs".into()], ..Features::default() };
        assert_eq!(f.to_pve(), "keyctl=1,mount=nfs,nesting=1");
        assert_eq!(f.beyond_nesting(), ["keyctl", "mount"]);
        let s = Startup { order: Some(1), up: Some(30), down: None };
        assert_eq!(s.to_pve(), "order=1,up=30");
        let bad = MountPoint::Existing { volume: "nope".into(), path: "relative".into(), backup: None, ro: false };
        let fields: Vec<String> = bad.validate().unwrap_err().0.into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["path", "volume"]);
    }

    #[test]
    fn pve_strings_read_back_naming_what_is_wrong() {
        let old = MountPoint::from_pve("local-lvm:vm-100-disk-1,mp=/srv/old,backup=0").unwrap();
        assert_eq!(old.to_pve(), "local-lvm:vm-100-disk-1,mp=/srv/old,backup=0");
        let bind = MountPoint::from_pve("/mnt/media,mp=/media,backup=1").unwrap_err();
        assert_eq!(bind, "`backup` does not apply to a host directory");
        assert_eq!(MountPoint::from_pve("local-lvm:4").unwrap_err(), "`mp=` is missing");
        assert_eq!(Nic::from_pve("name=eth0,ip=dhcp").unwrap_err(), "`bridge=` is missing");
        let ip = Nic::from_pve("name=eth0,bridge=vmbr0,ip=10.0.0.5").unwrap_err();
        assert!(ip.starts_with("ip: `10.0.0.5` is not `dhcp`"), "{ip}");
        assert_eq!(Startup::from_pve("order=first").unwrap_err(), "`order=first` is not a number");
        assert_eq!(RootFs::from_pve("acl=1").unwrap_err(), "no STORAGE:GB first (a new root disk, like local-lvm:8)");
        assert_eq!(Features::from_pve("nesting").unwrap_err(), "`nesting` is not key=value");
    }
}
