//! PVE's property strings round-trip: every type that writes one reads back what it wrote
//! (`from_pve(to_pve(x)) == x`), and the raw parser and writer agree on any well-formed string,
//! so what the coordinator reads from a flag is what the agent sends to PVE.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use pvefleet_schemas::lxc::{Features, Ipv4Setting, Ipv6Setting, MountPoint, Nic, RootFs, Startup};
use pvefleet_schemas::pve_string::PropertyString;

/// A name, storage or mount option: no `,` `=` `;` or `:`, which the format or a volume id
/// would read as separators.
fn word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_.-]{0,11}"
}

/// An absolute path without `,`.
fn path() -> impl Strategy<Value = String> {
    "(/[a-z0-9_.-]{1,8}){1,3}"
}

fn words() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(word(), 0..4)
}

fn ipv4() -> impl Strategy<Value = Ipv4Setting> {
    prop_oneof![
        Just(Ipv4Setting::Dhcp),
        Just(Ipv4Setting::Manual),
        (any::<u32>(), 1u8..=32).prop_map(|(a, prefix)| Ipv4Setting::Static { addr: Ipv4Addr::from(a), prefix }),
    ]
}

fn ipv6() -> impl Strategy<Value = Ipv6Setting> {
    prop_oneof![
        Just(Ipv6Setting::Auto),
        Just(Ipv6Setting::Dhcp),
        Just(Ipv6Setting::Manual),
        (any::<u128>(), 1u8..=128).prop_map(|(a, prefix)| Ipv6Setting::Static { addr: Ipv6Addr::from(a), prefix }),
    ]
}

fn nic() -> impl Strategy<Value = Nic> {
    let addresses = (
        word(),
        word(),
        prop::option::of(ipv4()),
        prop::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
        prop::option::of(ipv6()),
        prop::option::of(any::<u128>().prop_map(Ipv6Addr::from)),
    );
    let link = (
        prop::option::of(any::<u16>()),
        prop::collection::vec(any::<u16>(), 0..4),
        prop::option::of(any::<u16>()),
        any::<bool>(),
        prop::option::of(word()),
        prop::option::of(prop::num::f64::NORMAL),
        any::<bool>(),
    );
    (addresses, link).prop_map(
        |((name, bridge, ip, gw, ip6, gw6), (tag, trunks, mtu, firewall, hwaddr, rate, link_down))| Nic {
            name,
            bridge,
            ip,
            gw,
            ip6,
            gw6,
            tag,
            trunks,
            mtu,
            firewall,
            hwaddr,
            rate,
            link_down,
        },
    )
}

fn switches() -> impl Strategy<Value = (Option<bool>, Option<bool>, Option<bool>)> {
    (prop::option::of(any::<bool>()), prop::option::of(any::<bool>()), prop::option::of(any::<bool>()))
}

fn rootfs() -> impl Strategy<Value = RootFs> {
    (word(), any::<u32>(), words(), switches()).prop_map(|(storage, size, mountoptions, (acl, quota, replicate))| {
        RootFs { storage, size, mountoptions, acl, quota, replicate }
    })
}

fn mount_point() -> impl Strategy<Value = MountPoint> {
    let volume = (word(), any::<u32>(), path(), prop::option::of(any::<bool>()), any::<bool>(), switches(), words())
        .prop_map(|(storage, size, path, backup, ro, (acl, quota, replicate), mountoptions)| MountPoint::Volume {
            storage,
            size,
            path,
            backup,
            ro,
            acl,
            quota,
            replicate,
            mountoptions,
        });
    let existing =
        ("[a-z][a-z0-9-]{0,8}:(vm|subvol)-[0-9]{1,4}-disk-[0-9]", path(), any::<Option<bool>>(), any::<bool>())
            .prop_map(|(volume, path, backup, ro)| MountPoint::Existing { volume, path, backup, ro });
    let bind = (path(), path(), any::<bool>(), any::<bool>())
        .prop_map(|(host_path, path, ro, shared)| MountPoint::Bind { host_path, path, ro, shared });
    prop_oneof![volume, existing, bind]
}

fn features() -> impl Strategy<Value = Features> {
    (any::<[bool; 5]>(), words()).prop_map(|([nesting, keyctl, fuse, mknod, force_rw_sys], mount)| Features {
        nesting,
        keyctl,
        fuse,
        mknod,
        mount,
        force_rw_sys,
    })
}

fn startup() -> impl Strategy<Value = Startup> {
    any::<(Option<u32>, Option<u32>, Option<u32>)>().prop_map(|(order, up, down)| Startup { order, up, down })
}

/// A well-formed property string as built by the writer: perhaps a bare value first, then
/// pairs with distinct keys (a value may hold `=` and `;`, and be empty).
fn property_string() -> impl Strategy<Value = PropertyString> {
    let head = prop::option::of("[A-Za-z0-9:/._-]{1,12}");
    let pairs = prop::collection::vec(("[a-z_][a-z0-9_]{0,7}", "[A-Za-z0-9:/;=._-]{0,12}"), 0..6);
    (head, pairs).prop_map(|(head, pairs)| {
        let start = head.map_or_else(PropertyString::new, PropertyString::headed);
        pairs.into_iter().fold(start, |p, (key, value)| if p.get(&key).is_some() { p } else { p.with(&key, value) })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_nic_reads_back_what_it_writes(nic in nic()) {
        prop_assert_eq!(Nic::from_pve(&nic.to_pve()), Ok(nic));
    }

    #[test]
    fn a_mount_point_reads_back_what_it_writes(mp in mount_point()) {
        prop_assert_eq!(MountPoint::from_pve(&mp.to_pve()), Ok(mp));
    }

    #[test]
    fn a_root_disk_reads_back_what_it_writes(rootfs in rootfs()) {
        prop_assert_eq!(RootFs::from_pve(&rootfs.to_pve()), Ok(rootfs));
    }

    #[test]
    fn features_read_back_what_they_write(features in features()) {
        prop_assert_eq!(Features::from_pve(&features.to_pve()), Ok(features));
    }

    #[test]
    fn startup_reads_back_what_it_writes(startup in startup()) {
        prop_assert_eq!(Startup::from_pve(&startup.to_pve()), Ok(startup));
    }

    #[test]
    fn a_written_property_string_parses_back_to_itself(p in property_string()) {
        let text = p.to_string();
        prop_assert_eq!(PropertyString::parse(&text), Ok(p));
        prop_assert_eq!(PropertyString::parse(&text).map(|p| p.to_string()), Ok(text));
    }

    /// Any text either fails to parse or parses to a string that writes and reads back the
    /// same: the parser never panics, and what it accepts the writer can say.
    #[test]
    fn whatever_parses_writes_back_the_same(text in "[a-z0-9=,;:/]{0,24}") {
        if let Ok(p) = PropertyString::parse(&text) {
            prop_assert_eq!(PropertyString::parse(&p.to_string()), Ok(p));
        }
    }
}
