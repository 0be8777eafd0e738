//! The whole LXC spec, group by group: each test creates a container through the agent and
//! reads its config back from fakepve (which validates every request against PVE 9's schema),
//! checking each parameter exactly as PVE writes it.

use std::net::Ipv4Addr;
use std::time::Duration;

use pvefleet_schemas::lxc::{Features, Ipv4Setting, MountPoint, Nic, RootFs, Startup};
use pvefleet_schemas::{ErrorKind, Event, Step};
use pvefleet_testbed::Fleet;
use pvefleet_testbed::jobs::{
    JOB_WITHIN, create_job, events_until_terminal, lose_checkpoint, result_of, run_to_end, submit, wait_end,
    wait_for_event,
};
use serde_json::Value;

/// Runs `job` to its end and returns the container's config as PVE holds it.
async fn created(bed: &Fleet, job: pvefleet_schemas::Job) -> anyhow::Result<Value> {
    let events = run_to_end(&bed.js, &job).await?;
    let result = result_of(&events);
    anyhow::ensure!(result.success, "{events:#?}");
    let vmid = result.vmid.expect("a vmid");
    bed.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/config")).await
}

#[tokio::test]
async fn several_nics_with_ipv6_vlans_and_mtu() -> anyhow::Result<()> {
    let bed = Fleet::start("spec-network", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let mut job = create_job("pve1", "net", Ipv4Addr::new(127, 0, 0, 70));
    let mut eth0 = Nic::new("eth0", "vmbr0", "127.0.0.70/32".parse().map_err(anyhow::Error::msg)?);
    eth0.ip6 = Some("fd00::70/64".parse().map_err(anyhow::Error::msg)?);
    eth0.gw6 = Some("fd00::1".parse()?);
    eth0.mtu = Some(1450);
    eth0.firewall = true;
    // On vmbr1, VLAN-aware (VLANs 2-100): PVE takes trunks only on such a bridge.
    let mut eth1 = Nic::new("eth1", "vmbr1", Ipv4Setting::Manual);
    eth1.ip6 = Some("auto".parse().map_err(anyhow::Error::msg)?);
    eth1.tag = Some(20);
    eth1.trunks = vec![30, 40];
    eth1.hwaddr = Some("BC:24:11:00:00:70".into());
    eth1.rate = Some(12.5);
    eth1.link_down = true;
    job.container.nics = vec![eth0, eth1];
    job.container.nameservers = vec!["1.1.1.1".parse()?, "2606:4700:4700::1111".parse()?];
    job.container.searchdomain = Some("example.internal lab.example.internal".into());
    let cfg = created(&bed, job).await?;
    // PVE writes name and bridge first, the rest sorted, and adds the MAC it made and the type.
    let net0 = cfg["net0"].as_str().unwrap();
    let (mac, rest) = net0
        .split_once(",hwaddr=")
        .map(|(a, b)| (b.split(',').next().unwrap(), a.to_owned() + "," + b.split_once(',').unwrap().1))
        .unwrap();
    assert_eq!(mac.len(), 17, "{net0}");
    assert_eq!(
        rest,
        "name=eth0,bridge=vmbr0,firewall=1,gw6=fd00::1,ip=127.0.0.70/32,ip6=fd00::70/64,mtu=1450,type=veth"
    );
    assert_eq!(
        cfg["net1"],
        "name=eth1,bridge=vmbr1,hwaddr=BC:24:11:00:00:70,ip=manual,ip6=auto,link_down=1,rate=12.5,tag=20,trunks=30;40,type=veth"
    );
    assert_eq!(cfg["nameserver"], "1.1.1.1 2606:4700:4700::1111");
    assert_eq!(cfg["searchdomain"], "example.internal lab.example.internal");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn the_root_disk_and_mount_points() -> anyhow::Result<()> {
    let bed = Fleet::start("spec-storage", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let mut job = create_job("pve1", "disks", Ipv4Addr::new(127, 0, 0, 71));
    job.container.rootfs = Some(RootFs {
        storage: "local-lvm".into(),
        size: 12,
        mountoptions: vec!["noatime".into(), "nodev".into()],
        acl: Some(true),
        quota: None,
        replicate: Some(false),
    });
    job.container.mounts = vec![
        MountPoint::Volume {
            storage: "local-lvm".into(),
            size: 4,
            path: "/srv/data".into(),
            backup: Some(true),
            ro: false,
            acl: None,
            quota: None,
            replicate: None,
            mountoptions: vec!["noexec".into()],
        },
        MountPoint::Volume {
            storage: "local-lvm".into(),
            size: 1,
            path: "/srv/ro".into(),
            backup: Some(false),
            ro: true,
            acl: None,
            quota: None,
            replicate: None,
            mountoptions: vec![],
        },
    ];
    let cfg = created(&bed, job).await?;
    // PVE names the volumes it made and writes the options sorted, the size last.
    assert_eq!(cfg["rootfs"], "local-lvm:vm-100-disk-0,acl=1,mountoptions=noatime;nodev,replicate=0,size=12G");
    assert_eq!(cfg["mp0"], "local-lvm:vm-100-disk-1,backup=1,mountoptions=noexec,mp=/srv/data,size=4G");
    assert_eq!(cfg["mp1"], "local-lvm:vm-100-disk-2,backup=0,mp=/srv/ro,ro=1,size=1G");
    bed.dir.pass();
    Ok(())
}

/// The rest of the network and disk options: an IPv4 gateway, DHCP and `manual` on both
/// families, quota/acl/replicate on the root disk and a new volume, and an existing volume.
#[tokio::test]
async fn gateways_dhcp_quotas_and_an_existing_volume() -> anyhow::Result<()> {
    let bed = Fleet::start("spec-rest", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    // A volume made beforehand for vmid 174, as an operator's earlier container left it.
    bed.pve
        .api(
            reqwest::Method::POST,
            "/nodes/pve1/storage/local-lvm/content",
            &[("vmid", "174"), ("filename", "vm-174-disk-7"), ("size", "2G")],
        )
        .await?;
    let mut job = create_job("pve1", "rest", Ipv4Addr::new(127, 0, 0, 74));
    let c = &mut job.container;
    c.vmid = Some(pvefleet_schemas::Vmid::new(174)?);
    let mut eth0 = Nic::new("eth0", "vmbr0", "127.0.0.74/24".parse().map_err(anyhow::Error::msg)?);
    eth0.gw = Some("127.0.0.1".parse()?);
    eth0.ip6 = Some("dhcp".parse().map_err(anyhow::Error::msg)?);
    let mut eth1 = Nic::new("eth1", "vmbr0", Ipv4Setting::Dhcp);
    eth1.ip6 = Some("manual".parse().map_err(anyhow::Error::msg)?);
    c.nics = vec![eth0, eth1];
    c.unprivileged = false;
    c.rootfs = Some(RootFs {
        storage: "local-lvm".into(),
        size: 6,
        mountoptions: vec![],
        acl: None,
        quota: Some(true),
        replicate: None,
    });
    c.mounts = vec![
        MountPoint::Volume {
            storage: "local-lvm".into(),
            size: 2,
            path: "/srv/acl".into(),
            backup: None,
            ro: false,
            acl: Some(true),
            quota: Some(true),
            replicate: Some(false),
            mountoptions: vec![],
        },
        MountPoint::Existing {
            volume: "local-lvm:vm-174-disk-7".into(),
            path: "/srv/old".into(),
            backup: Some(false),
            ro: true,
        },
    ];
    let cfg = created(&bed, job).await?;
    let without_mac = |key: &str| -> String {
        let net = cfg[key].as_str().unwrap_or_default();
        net.split(',').filter(|p| !p.starts_with("hwaddr=")).collect::<Vec<_>>().join(",")
    };
    assert_eq!(without_mac("net0"), "name=eth0,bridge=vmbr0,gw=127.0.0.1,ip=127.0.0.74/24,ip6=dhcp,type=veth");
    assert_eq!(without_mac("net1"), "name=eth1,bridge=vmbr0,ip=dhcp,ip6=manual,type=veth");
    // Sent as `unprivileged=0`; PVE writes no line for a privileged container.
    assert_eq!(cfg["unprivileged"], Value::Null);
    assert_eq!(cfg["rootfs"], "local-lvm:vm-174-disk-0,quota=1,size=6G");
    assert_eq!(cfg["mp0"], "local-lvm:vm-174-disk-1,acl=1,mp=/srv/acl,quota=1,replicate=0,size=2G");
    assert_eq!(cfg["mp1"], "local-lvm:vm-174-disk-7,backup=0,mp=/srv/old,ro=1");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn boot_order_identity_resources_and_nesting() -> anyhow::Result<()> {
    let bed = Fleet::start("spec-boot", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    bed.pve.api(reqwest::Method::POST, "/pools", &[("poolid", "web")]).await?;
    let mut job = create_job("pve1", "booted", Ipv4Addr::new(127, 0, 0, 72));
    let c = &mut job.container;
    c.onboot = true;
    c.startup = Some(Startup { order: Some(2), up: Some(30), down: Some(60) });
    c.timezone = Some("Europe/Berlin".into());
    c.arch = Some("amd64".into());
    c.ostype = Some("debian".into());
    c.console = Some(true);
    c.tty = Some(3);
    c.cmode = Some("tty".into());
    c.description = Some("the web tier".into());
    c.pool = Some("web".into());
    c.protection = true;
    c.cpulimit = Some(1.5);
    c.cpuunits = Some(200);
    c.features = Features { nesting: true, ..Features::default() };
    let job_id = job.job_id;
    let cfg = created(&bed, job).await?;
    for (key, want) in [
        ("onboot", serde_json::json!(1)),
        ("startup", "order=2,up=30,down=60".into()),
        ("timezone", "Europe/Berlin".into()),
        ("arch", "amd64".into()),
        ("ostype", "debian".into()),
        ("console", 1.into()),
        ("tty", 3.into()),
        ("cmode", "tty".into()),
        ("protection", 1.into()),
        ("cpulimit", 1.5.into()),
        ("cpuunits", 200.into()),
        ("features", "nesting=1".into()),
        ("unprivileged", 1.into()),
        ("description", format!("the web tier\n\nCreated by pvefleet job {job_id}").into()),
    ] {
        assert_eq!(cfg[key], want, "{key}");
    }
    let pool = bed.pve.api_get("/pools/web").await?;
    assert_eq!(pool["members"].as_array().map(|m| m.iter().filter(|g| g["vmid"] == 100).count()), Some(1), "{pool}");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_protected_container_of_a_failed_job_is_still_rolled_back() -> anyhow::Result<()> {
    let bed = Fleet::start("spec-protected", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let mut job = create_job("pve1", "protected", Ipv4Addr::new(127, 0, 0, 73));
    job.container.protection = true;
    // DHCP never answers in fakepve: the connecting step times out after the container runs.
    job.container.nics = vec![Nic::new("eth0", "vmbr0", Ipv4Setting::Dhcp)];
    job.options.timeouts.ip = pvefleet_schemas::HumanDuration(Duration::from_millis(300));
    let events = run_to_end(&bed.js, &job).await?;
    let result = result_of(&events);
    assert_eq!(result.error.as_ref().map(|e| e.kind), Some(ErrorKind::Timeout), "{events:#?}");
    assert!(result.rolled_back, "{events:#?}");
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new());
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn what_pve_refuses_an_api_token_is_refused_at_validating() -> anyhow::Result<()> {
    let bed = Fleet::start("spec-refused", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let mut bind = create_job("pve1", "bind", Ipv4Addr::new(127, 0, 0, 74));
    bind.container.mounts =
        vec![MountPoint::Bind { host_path: "/srv/media".into(), path: "/media".into(), ro: true, shared: false }];
    let mut keyctl = create_job("pve1", "keyctl", Ipv4Addr::new(127, 0, 0, 75));
    keyctl.container.features = Features { nesting: true, keyctl: true, ..Features::default() };
    let mut bridge = create_job("pve1", "nobridge", Ipv4Addr::new(127, 0, 0, 76));
    bridge.container.nics = vec![Nic::new("eth0", "vmbr9", Ipv4Setting::Dhcp)];
    for (job, field, words) in [
        (bind, "container.mounts[0]", "only root@pam"),
        (keyctl, "container.features", "only `nesting`"),
        (bridge, "container.nics[0].bridge", "`vmbr9` does not exist"),
    ] {
        let events = run_to_end(&bed.js, &job).await?;
        let error = result_of(&events).error.clone().expect("refused");
        assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Validating), "{error:?}");
        assert!(error.message.starts_with(field) && error.message.contains(words), "{}", error.message);
    }
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new(), "nothing was created");
    bed.dir.pass();
    Ok(())
}

fn calls_to(calls: &[(String, String, u64)], method: &str, path: &str) -> u64 {
    calls.iter().filter(|(m, p, _)| m == method && p == path).map(|(_, _, n)| n).sum()
}

fn steps_of(events: &[Event]) -> Vec<Step> {
    events.iter().filter(|e| e.kind == pvefleet_schemas::EventType::Step).filter_map(|e| e.step).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_downloaded_template_is_fetched_once_and_its_checksum_is_checked() -> anyhow::Result<()> {
    use pvefleet_schemas::source::{ChecksumAlgorithm, Download, TemplateSource};
    use sha2::Digest as _;
    let bed = Fleet::start("spec-download", &["pve1"]).await?;
    // The bed serves its templates on loopback, which fetches may reach only when allowed.
    let _agent = bed.agent_with(pvefleet_testbed::agent::AgentOptions::fetching_from_the_bed("pve1"))?;
    let body = b"not really a root file system, but bytes with a digest".repeat(1000);
    let url = bed.pve.serve_file("custom.tar.zst", &body)?;
    let download = |filename: &str, checksum: String| {
        TemplateSource::Download(Download {
            url: url.clone(),
            checksum,
            algorithm: ChecksumAlgorithm::Sha512,
            storage: "local".into(),
            filename: filename.into(),
        })
    };
    let good = hex(&sha2::Sha512::digest(&body));
    let mut first = create_job("pve1", "fetched-1", Ipv4Addr::new(127, 0, 0, 77));
    first.container.ostemplate = None;
    first.container.template = Some(download("custom-1_amd64.tar.zst", good.clone()));
    let events = run_to_end(&bed.js, &first).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert_eq!(steps_of(&events)[..3], [Step::Validating, Step::Fetching, Step::Creating]);
    assert!(bed.pve.templates("pve1", "local").await?.contains(&"local:vztmpl/custom-1_amd64.tar.zst".to_owned()));
    assert_eq!(calls_to(&bed.pve.calls().await?, "POST", "/nodes/{node}/storage/{storage}/download-url"), 1);

    // The same template again: it is there, so it is not fetched again.
    let mut second = create_job("pve1", "fetched-2", Ipv4Addr::new(127, 0, 0, 78));
    second.container.ostemplate = None;
    second.container.template = first.container.template.clone();
    submit(&bed.js, &second).await?;
    let events = events_until_terminal(&bed.js, second.job_id, JOB_WITHIN).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert!(events.iter().any(|e| e.message.contains("not fetched again")), "{events:#?}");
    assert_eq!(calls_to(&bed.pve.calls().await?, "POST", "/nodes/{node}/storage/{storage}/download-url"), 1);

    // A wrong checksum: PVE refuses the file, the job names the field, nothing is left.
    let mut wrong = create_job("pve1", "fetched-3", Ipv4Addr::new(127, 0, 0, 79));
    wrong.container.ostemplate = None;
    wrong.container.template = Some(download("custom-3_amd64.tar.zst", "ab".repeat(64)));
    let before = bed.pve.containers().await?;
    let events = run_to_end(&bed.js, &wrong).await?;
    let error = result_of(&events).error.clone().expect("refused");
    assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Fetching), "{error:?}");
    assert!(error.message.starts_with("container.template.download.checksum:"), "{}", error.message);
    assert!(error.message.contains("checksum mismatch"), "{}", error.message);
    assert!(!bed.pve.templates("pve1", "local").await?.iter().any(|t| t.contains("custom-3")));
    assert_eq!(bed.pve.containers().await?, before, "no container was made");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn an_appliance_and_an_oci_image_are_fetched_and_an_unknown_one_refused() -> anyhow::Result<()> {
    use pvefleet_schemas::source::{Appliance, OciImage, TemplateSource};
    let bed = Fleet::start("spec-appliance", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let mut alpine = create_job("pve1", "alpine", Ipv4Addr::new(127, 0, 0, 80));
    alpine.container.ostemplate = None;
    alpine.container.template = Some(TemplateSource::Appliance(Appliance {
        name: "alpine-3.22-default_20250617_amd64.tar.xz".into(),
        storage: "local".into(),
    }));
    let mut nginx = create_job("pve1", "nginx", Ipv4Addr::new(127, 0, 0, 81));
    nginx.container.ostemplate = None;
    nginx.container.template = Some(TemplateSource::Oci(OciImage {
        reference: "docker.io/library/nginx:1.27".into(),
        storage: "local".into(),
        filename: Some("nginx-stable.tar".into()),
    }));
    nginx.container.entrypoint = Some("/docker-entrypoint.sh nginx -g 'daemon off;'".into());
    nginx.container.env = [("NGINX_PORT".to_owned(), "8080".to_owned()), ("TZ".to_owned(), "UTC".to_owned())].into();
    let cfg = created(&bed, alpine).await?;
    assert_eq!(cfg["hostname"], "alpine");
    let mut plain = create_job("pve1", "alpine-oci", Ipv4Addr::new(127, 0, 0, 79));
    plain.container.ostemplate = None;
    plain.container.template = Some(TemplateSource::Oci(OciImage {
        reference: "docker.io/library/alpine:3.22".into(),
        storage: "local".into(),
        filename: None,
    }));
    created(&bed, plain).await?;
    let cfg = created(&bed, nginx).await?;
    assert_eq!(cfg["entrypoint"], "/docker-entrypoint.sh nginx -g 'daemon off;'");
    assert_eq!(cfg["env"], "NGINX_PORT=8080\0TZ=UTC");
    let templates = bed.pve.templates("pve1", "local").await?;
    for t in [
        "local:vztmpl/alpine-3.22-default_20250617_amd64.tar.xz",
        "local:vztmpl/nginx-stable.tar",
        "local:vztmpl/docker.io_library_alpine_3.22.tar",
    ] {
        assert!(templates.contains(&t.to_owned()), "{t} in {templates:?}");
    }
    let mut unknown = create_job("pve1", "unknown", Ipv4Addr::new(127, 0, 0, 82));
    unknown.container.ostemplate = None;
    unknown.container.template = Some(TemplateSource::Appliance(Appliance {
        name: "debian-7-ancient_amd64.tar.gz".into(),
        storage: "local".into(),
    }));
    submit(&bed.js, &unknown).await?;
    let events = events_until_terminal(&bed.js, unknown.job_id, JOB_WITHIN).await?;
    let error = result_of(&events).error.clone().expect("refused");
    assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Validating), "{error:?}");
    assert!(error.message.starts_with("container.template.appliance.name:"), "{}", error.message);
    bed.dir.pass();
    Ok(())
}

/// Makes container `vmid` called `name` on pve1 from the bed's template, then a template of it.
async fn make_template(bed: &Fleet, vmid: u32, name: &str) -> anyhow::Result<()> {
    bed.pve.make_template("pve1", vmid, name).await
}

#[tokio::test]
async fn a_clone_gets_the_spec_and_its_rollback_spares_the_source() -> anyhow::Result<()> {
    use pvefleet_schemas::source::{CloneFrom, CloneSpec};
    let bed = Fleet::start("spec-clone", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    make_template(&bed, 9000, "tmpl-debian").await?;
    let clone_of = |from: CloneFrom| CloneSpec { from, full: true, snapshot: None, storage: None, keep_key: false };
    let mut job = create_job("pve1", "cloned", Ipv4Addr::new(127, 0, 0, 83));
    let c = &mut job.container;
    c.ostemplate = None;
    c.clone = Some(clone_of(CloneFrom::Name("tmpl-debian".into())));
    c.memory = 1024;
    c.cores = 2;
    c.tags = vec!["web".into()];
    c.onboot = true;
    c.nics = vec![Nic::new("eth0", "vmbr0", "127.0.0.83/32".parse().map_err(anyhow::Error::msg)?)];
    c.mounts = vec![MountPoint::Volume {
        storage: "local-lvm".into(),
        size: 2,
        path: "/srv".into(),
        backup: None,
        ro: false,
        acl: None,
        quota: None,
        replicate: None,
        mountoptions: vec![],
    }];
    let marker = job.job_id.marker_tag();
    // The clone is made but its answer is lost: the retry finds it by the marker in its
    // description and goes on with it, never a second clone.
    bed.pve.lose_answer("POST", "/nodes/pve1/lxc/9000/clone", 1, pvefleet_testbed::LostAnswer::Error).await?;
    let events = run_to_end(&bed.js, &job).await?;
    let result = result_of(&events);
    assert!(result.success, "{events:#?}");
    assert_eq!(steps_of(&events)[..3], [Step::Validating, Step::Cloning, Step::Starting]);
    let vmid = result.vmid.expect("a vmid");
    assert_eq!(bed.pve.health().await?["answers_lost"], 1);
    assert_eq!(bed.pve.containers().await?, vec![vmid.get(), 9000], "one clone");
    let cfg = bed.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/config")).await?;
    assert_eq!(cfg["hostname"], "cloned");
    assert_eq!((cfg["memory"].clone(), cfg["cores"].clone(), cfg["onboot"].clone()), (1024.into(), 2.into(), 1.into()));
    assert_eq!(cfg["tags"], format!("{marker};web"), "the source's tags are replaced by the spec's and the marker");
    assert!(cfg["net0"].as_str().unwrap().contains("ip=127.0.0.83/32"), "{}", cfg["net0"]);
    assert!(cfg.get("net1").is_none(), "the source's second NIC is gone: {cfg}");
    assert!(cfg["mp0"].as_str().unwrap().contains("mp=/srv"), "{cfg}");
    assert!(cfg["rootfs"].as_str().unwrap().starts_with("local-lvm:vm-"), "a full copy of the source's disk: {cfg}");
    let source = bed.pve.api_get("/nodes/pve1/lxc/9000/config").await?;
    assert_eq!((source["template"].clone(), source["tags"].clone()), (1.into(), "golden".into()), "{source}");

    // A clone that fails after it was made is destroyed; its source is not touched.
    let mut failing = create_job("pve1", "clone-fails", Ipv4Addr::new(127, 0, 0, 84));
    failing.container.ostemplate = None;
    failing.container.clone = Some(clone_of(CloneFrom::Vmid(pvefleet_schemas::Vmid::new(9000)?)));
    failing.container.nics = vec![Nic::new("eth0", "vmbr0", Ipv4Setting::Dhcp)];
    failing.options.timeouts.ip = pvefleet_schemas::HumanDuration(Duration::from_millis(300));
    let events = run_to_end(&bed.js, &failing).await?;
    let result = result_of(&events);
    assert!(result.rolled_back && !result.success, "{events:#?}");
    let left = bed.pve.containers().await?;
    assert_eq!(left, vec![vmid.get(), 9000], "the failed clone is gone, the source and the first clone stay");
    bed.dir.pass();
    Ok(())
}

/// The clone's own options: a linked clone (`full = false`) shares its template's base volume;
/// a clone of a snapshot of a plain container goes to the storage asked; a snapshot that does
/// not exist fails the job with PVE's words and leaves no clone.
#[tokio::test]
async fn a_linked_clone_and_a_full_clone_of_a_snapshot_to_a_storage() -> anyhow::Result<()> {
    use pvefleet_schemas::source::{CloneFrom, CloneSpec};
    let bed = Fleet::start("spec-clone-options", &["pve1"]).await?;
    // 9006 is a plain container no pvefleet job made: the node's operator lets jobs clone it.
    let _agent = bed.agent_with(pvefleet_testbed::agent::AgentOptions {
        extra_config: "[clone]\nallow_vmids = [9006]\n".into(),
        ..pvefleet_testbed::agent::AgentOptions::node("pve1")
    })?;
    make_template(&bed, 9005, "tmpl-linked").await?;
    let mut linked = create_job("pve1", "linked", Ipv4Addr::new(127, 0, 0, 91));
    linked.container.ostemplate = None;
    linked.container.clone = Some(CloneSpec {
        from: CloneFrom::Name("tmpl-linked".into()),
        full: false,
        snapshot: None,
        storage: None,
        keep_key: false,
    });
    let cfg = created(&bed, linked).await?;
    assert_eq!(cfg["hostname"], "linked");

    // A plain container with a snapshot.
    let upid = bed
        .pve
        .api(
            reqwest::Method::POST,
            "/nodes/pve1/lxc",
            &[
                ("vmid", "9006"),
                ("hostname", "plain"),
                ("ostemplate", pvefleet_testbed::fakepve::OSTEMPLATE),
                ("rootfs", "local-lvm:4"),
            ],
        )
        .await?;
    anyhow::ensure!(upid.as_str().is_some_and(|u| u.starts_with("UPID:")), "{upid}");
    pvefleet_testbed::wait_until("the plain container's create", JOB_WITHIN, || async {
        let cfg = bed.pve.api_get("/nodes/pve1/lxc/9006/config").await.ok()?;
        cfg.get("lock").is_none().then_some(())
    })
    .await?;
    bed.pve.api(reqwest::Method::POST, "/nodes/pve1/lxc/9006/snapshot", &[("snapname", "before-upgrade")]).await?;
    pvefleet_testbed::wait_until("the snapshot", JOB_WITHIN, || async {
        let snaps = bed.pve.api_get("/nodes/pve1/lxc/9006/snapshot").await.ok()?;
        snaps.as_array()?.iter().any(|s| s["name"] == "before-upgrade").then_some(())
    })
    .await?;
    let of_snapshot = |hostname: &str, ip: u8, snapshot: &str| {
        let mut job = create_job("pve1", hostname, Ipv4Addr::new(127, 0, 0, ip));
        job.container.ostemplate = None;
        job.container.clone = Some(CloneSpec {
            from: CloneFrom::Vmid(pvefleet_schemas::Vmid::new(9006).expect("a vmid")),
            full: true,
            snapshot: Some(snapshot.into()),
            storage: Some("local-lvm".into()),
            keep_key: false,
        });
        job
    };
    let cfg = created(&bed, of_snapshot("from-snapshot", 92, "before-upgrade")).await?;
    let rootfs = cfg["rootfs"].as_str().unwrap_or_default();
    assert!(rootfs.starts_with("local-lvm:vm-") && !rootfs.contains("9006"), "a full clone on local-lvm: {rootfs}");
    assert_eq!(cfg["hostname"], "from-snapshot");

    // A snapshot that is not there; a linked clone of a container that is no template (PVE
    // links only to a template's base volumes, so this proves `full=0` reached it).
    let mut linked_to_plain = of_snapshot("linked-plain", 94, "before-upgrade");
    linked_to_plain.container.clone.as_mut().expect("a clone").full = false;
    linked_to_plain.container.clone.as_mut().expect("a clone").storage = None;
    for (job, words) in [(of_snapshot("no-snapshot", 93, "nope"), "nope"), (linked_to_plain, "Linked clone feature")] {
        let before = bed.pve.containers().await?;
        let events = run_to_end(&bed.js, &job).await?;
        let error = result_of(&events).error.clone().expect("refused");
        assert!(error.message.contains(words), "{words}: {error:?}");
        assert_eq!(bed.pve.containers().await?, before, "no clone left");
    }
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_clone_deploys_with_the_key_its_template_trusts_or_is_refused_without_one() -> anyhow::Result<()> {
    use pvefleet_schemas::source::{CloneFrom, CloneSpec};
    use pvefleet_schemas::{DeploySpec, ScriptSpec};
    let ip = Ipv4Addr::new(127, 0, 0, 85);
    let bed = Fleet::start("spec-clone-deploy", &["pve1"]).await?;
    let sshd = pvefleet_testbed::Sshd::start(&bed.dir, ip, &bed.pve.keys_dir).await?;
    make_template(&bed, 9001, "tmpl-app").await?;
    let clone_job = |hostname: &str| {
        let mut job = create_job("pve1", hostname, ip);
        job.container.ostemplate = None;
        job.container.clone = Some(CloneSpec {
            from: CloneFrom::Name("tmpl-app".into()),
            full: true,
            snapshot: None,
            storage: None,
            keep_key: false,
        });
        job.container.nics = vec![Nic::new("eth0", "vmbr0", Ipv4Setting::Static { addr: ip, prefix: 32 })];
        job.deploy = DeploySpec {
            scripts: vec![ScriptSpec {
                name: "hello".into(),
                body: "echo cloned and deployed".into(),
                interpreter: "/bin/sh".into(),
                timeout: None,
            }],
            ..DeploySpec::default()
        };
        job
    };
    // Without ssh.key_file: PVE cannot give a clone the job's key, so the job is refused.
    let mut agent = bed.agent_with(pvefleet_testbed::agent::AgentOptions {
        ssh: Some((sshd.user.clone(), sshd.port)),
        ..pvefleet_testbed::agent::AgentOptions::node("pve1")
    })?;
    let refused = clone_job("no-key");
    submit(&bed.js, &refused).await?;
    let events = events_until_terminal(&bed.js, refused.job_id, JOB_WITHIN).await?;
    let error = result_of(&events).error.clone().expect("refused");
    assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Validating), "{error:?}");
    assert!(
        error.message.starts_with("container.clone:") && error.message.contains("ssh.key_file"),
        "{}",
        error.message
    );
    assert_eq!(bed.pve.containers().await?, vec![9001], "nothing was cloned");
    agent.kill();

    // With a key the template trusts (the bed's sshd reads the keys for the clone's address).
    let key = bed.dir.path().join("template-key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "template-key", "-f"])
        .arg(&key)
        .status()?;
    anyhow::ensure!(status.success(), "ssh-keygen failed");
    std::fs::copy(key.with_extension("pub"), bed.pve.keys_dir.join(ip.to_string()))?;
    let _agent = bed.agent_with(pvefleet_testbed::agent::AgentOptions {
        ssh: Some((sshd.user.clone(), sshd.port)),
        ssh_key_file: Some(key),
        ..pvefleet_testbed::agent::AgentOptions::node("pve1")
    })?;
    let job = clone_job("with-key");
    let events = run_to_end(&bed.js, &job).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e.stream == Some(pvefleet_schemas::LogStream::Stdout) && e.message == "cloned and deployed"),
        "{events:#?}"
    );
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_root_login_may_set_every_feature_and_bind_mounts() -> anyhow::Result<()> {
    let bed = Fleet::start("spec-root-login", &["pve1"]).await?;
    let agent = bed.agent_with(pvefleet_testbed::agent::AgentOptions {
        root_login: true,
        ..pvefleet_testbed::agent::AgentOptions::node("pve1")
    })?;
    let mut job = create_job("pve1", "docker-host", Ipv4Addr::new(127, 0, 0, 86));
    job.container.features = Features {
        nesting: true,
        keyctl: true,
        fuse: true,
        mknod: true,
        force_rw_sys: true,
        mount: vec!["nfs".into(), "cifs".into()],
    };
    job.container.mounts = vec![
        MountPoint::Bind { host_path: "/srv/media".into(), path: "/media".into(), ro: true, shared: false },
        MountPoint::Bind { host_path: "/srv/shared".into(), path: "/shared".into(), ro: false, shared: true },
    ];
    let cfg = created(&bed, job).await?;
    assert_eq!(cfg["features"], "force_rw_sys=1,fuse=1,keyctl=1,mknod=1,mount=nfs;cifs,nesting=1");
    assert_eq!(cfg["mp0"], "/srv/media,mp=/media,ro=1");
    assert_eq!(cfg["mp1"], "/srv/shared,mp=/shared,shared=1");
    assert_eq!(agent.log_text().matches("signed in to the Proxmox API").count(), 1, "one ticket, not the token");
    // The ticket runs out: the next call is refused with a 401, the agent signs in again.
    bed.pve.expire_tickets().await?;
    let cfg = created(&bed, create_job("pve1", "after-expiry", Ipv4Addr::new(127, 0, 0, 87))).await?;
    assert_eq!(cfg["hostname"], "after-expiry");
    assert_eq!(agent.log_text().matches("signed in to the Proxmox API").count(), 2);
    bed.dir.pass();
    Ok(())
}

/// A clone job whose checkpoint is lost while its clone task runs: the clone carries no marker
/// tag yet (its tags are the source's until the spec's are set), so the next delivery finds it
/// by the marker in its description, never making a second clone.
#[tokio::test]
async fn a_clone_whose_checkpoint_is_lost_mid_clone_is_found_by_its_description() -> anyhow::Result<()> {
    use pvefleet_schemas::source::{CloneFrom, CloneSpec};
    let bed = Fleet::start("spec-clone-forgotten", &["pve1"]).await?;
    let mut agent = bed.agent("pve1")?;
    make_template(&bed, 9003, "tmpl-forgotten").await?;
    // 8 s: longer than the redelivery (ack_wait 4 s), so the next delivery comes mid-clone.
    bed.pve.time_scale(0.2).await?;
    bed.pve.task_secs(serde_json::json!({"clone": 40})).await?;
    let mut job = create_job("pve1", "forgotten-clone", Ipv4Addr::new(127, 0, 0, 90));
    job.container.ostemplate = None;
    job.container.clone = Some(CloneSpec {
        from: CloneFrom::Name("tmpl-forgotten".into()),
        full: true,
        snapshot: None,
        storage: None,
        keep_key: false,
    });
    job.container.nics = vec![Nic::new("eth0", "vmbr0", "127.0.0.90/32".parse().map_err(anyhow::Error::msg)?)];
    submit(&bed.js, &job).await?;
    wait_for_event(&bed.js, job.job_id, "the clone task to run", JOB_WITHIN, |e| e.message.contains("clone task"))
        .await?;
    // The checkpoint is gone (expired, or its bucket made anew): only the marker is left.
    lose_checkpoint(&mut agent, &bed.js, &job).await?;
    let events = wait_end(&bed.js, job.job_id).await?;
    let result = result_of(&events);
    assert!(result.success, "{events:#?}");
    assert_eq!(bed.pve.containers().await?, vec![result.vmid.expect("a vmid").get(), 9003], "one clone");
    assert!(events.iter().any(|e| e.message.contains("found its container")), "{events:#?}");
    bed.dir.pass();
    Ok(())
}

/// An agent SIGKILLed inside a clone's task, and inside a download's: the next delivery waits
/// on the checkpointed task, so one clone and one download, each job ending once.
#[tokio::test]
async fn an_agent_killed_mid_clone_or_mid_download_resumes_with_one_of_each() -> anyhow::Result<()> {
    use pvefleet_schemas::source::{ChecksumAlgorithm, CloneFrom, CloneSpec, Download, TemplateSource};
    use sha2::Digest as _;
    let bed = Fleet::start("spec-kill", &["pve1"]).await?;
    let mut agent = bed.agent_with(pvefleet_testbed::agent::AgentOptions::fetching_from_the_bed("pve1"))?;
    make_template(&bed, 9002, "tmpl-slow").await?;
    bed.pve.time_scale(0.2).await?;
    bed.pve.task_secs(serde_json::json!({"clone": 10})).await?;
    let killed_in = |job: pvefleet_schemas::JobId, what: &'static str| {
        let js = bed.js.clone();
        async move {
            pvefleet_testbed::wait_until(what, JOB_WITHIN, || async {
                let events = pvefleet_testbed::jobs::events_now(&js, job).await.ok()?;
                events.iter().any(|e| e.message.contains(what)).then_some(())
            })
            .await
        }
    };

    let mut clone = create_job("pve1", "slow-clone", Ipv4Addr::new(127, 0, 0, 88));
    clone.container.ostemplate = None;
    clone.container.clone = Some(CloneSpec {
        from: CloneFrom::Name("tmpl-slow".into()),
        full: true,
        snapshot: None,
        storage: None,
        keep_key: false,
    });
    clone.container.nics = vec![Nic::new("eth0", "vmbr0", "127.0.0.88/32".parse().map_err(anyhow::Error::msg)?)];
    submit(&bed.js, &clone).await?;
    killed_in(clone.job_id, "clone task").await?;
    agent.kill();
    agent.restart()?;
    let events = wait_end(&bed.js, clone.job_id).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert!(events.iter().any(|e| e.message.contains("resuming")), "{events:#?}");
    let made = result_of(&events).vmid.expect("a vmid").get();
    assert_eq!(bed.pve.containers().await?, vec![made, 9002], "one clone");

    let body = b"a slow template".repeat(2048);
    let url = bed.pve.serve_file("slow.tar.zst", &body)?;
    let mut fetch = create_job("pve1", "slow-fetch", Ipv4Addr::new(127, 0, 0, 89));
    fetch.container.ostemplate = None;
    fetch.container.template = Some(TemplateSource::Download(Download {
        url,
        checksum: hex(&sha2::Sha256::digest(&body)),
        algorithm: ChecksumAlgorithm::Sha256,
        storage: "local".into(),
        filename: "slow.tar.zst".into(),
    }));
    bed.pve.reset_calls().await?;
    submit(&bed.js, &fetch).await?;
    killed_in(fetch.job_id, "fetching local:vztmpl/slow.tar.zst: task").await?;
    agent.kill();
    agent.restart()?;
    let events = wait_end(&bed.js, fetch.job_id).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert_eq!(
        calls_to(&bed.pve.calls().await?, "POST", "/nodes/{node}/storage/{storage}/download-url"),
        1,
        "one download"
    );
    bed.dir.pass();
    Ok(())
}
