//! The whole LXC spec, group by group: each test creates a container through the agent and
//! reads its config back from fakepve (which validates every request against PVE 9's schema),
//! checking each parameter exactly as PVE writes it.

use std::net::Ipv4Addr;
use std::time::Duration;

use pvefleet_schemas::lxc::{Features, Ipv4Setting, MountPoint, Nic, RootFs, Startup};
use pvefleet_schemas::{ErrorKind, Event, JobResult, Step};
use pvefleet_testbed::Fleet;
use pvefleet_testbed::jobs::{check_event_contract, create_job, events_until_terminal, submit};
use serde_json::Value;

const JOB_WITHIN: Duration = Duration::from_secs(60);

fn result_of(events: &[Event]) -> &JobResult {
    events.last().and_then(|e| e.result.as_ref()).expect("a terminal event with a result")
}

/// Runs `job` to its end and returns the container's config as PVE holds it.
async fn created(bed: &Fleet, job: pvefleet_schemas::Job) -> anyhow::Result<Value> {
    submit(&bed.js, &job).await?;
    let events = events_until_terminal(&bed.js, job.job_id, JOB_WITHIN).await?;
    check_event_contract(&events)?;
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
    let mut eth1 = Nic::new("eth1", "vmbr0", Ipv4Setting::Manual);
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
        "name=eth1,bridge=vmbr0,hwaddr=BC:24:11:00:00:70,ip=manual,ip6=auto,link_down=1,rate=12.5,tag=20,trunks=30;40,type=veth"
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
    submit(&bed.js, &job).await?;
    let events = events_until_terminal(&bed.js, job.job_id, JOB_WITHIN).await?;
    check_event_contract(&events)?;
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
        submit(&bed.js, &job).await?;
        let events = events_until_terminal(&bed.js, job.job_id, JOB_WITHIN).await?;
        check_event_contract(&events)?;
        let error = result_of(&events).error.clone().expect("refused");
        assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Validating), "{error:?}");
        assert!(error.message.starts_with(field) && error.message.contains(words), "{}", error.message);
    }
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new(), "nothing was created");
    bed.dir.pass();
    Ok(())
}
