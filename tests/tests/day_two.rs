//! The day-two kinds on the wire against a real agent and fakepve: power (already in the asked
//! state is success), update (only what differs is sent; a concurrent edit by another PVE user
//! is not overwritten; a change PVE leaves pending reboots once under `if-needed` and never
//! under `never`), resize (twice is one resize; never shrinks), a stranger's container refused,
//! and the inventory following a container moved to another node or deleted in PVE.

use std::net::Ipv4Addr;
use std::time::Duration;

use pvefleet_schemas::names::{INVENTORY_BUCKET, JobKind};
use pvefleet_schemas::{
    ConfigChange, ContainerTarget, ErrorKind, Event, InventoryEntry, JobId, NodeName, PowerAction, PowerJob, ResizeJob,
    RestartPolicy, UpdateJob, Vmid,
};
use pvefleet_testbed::agent::AgentOptions;
use pvefleet_testbed::jobs::{create_job, result_of, run_kind};
use pvefleet_testbed::{Fleet, wait_until};

fn node(name: &str) -> NodeName {
    NodeName::new(name).expect("a node name")
}

/// A container made by a create job on `on`: its target for day-two jobs.
async fn made(bed: &Fleet, on: &str, hostname: &str, ip: Ipv4Addr) -> anyhow::Result<ContainerTarget> {
    pvefleet_testbed::jobs::made(&bed.js, &create_job(on, hostname, ip)).await
}

async fn run(
    bed: &Fleet,
    on: &str,
    kind: JobKind,
    id: JobId,
    message: &impl serde::Serialize,
) -> anyhow::Result<Vec<Event>> {
    run_kind(&bed.js, on, kind, id, message).await
}

async fn power(bed: &Fleet, target: &ContainerTarget, action: PowerAction) -> anyhow::Result<Vec<Event>> {
    let job = PowerJob::new(node("pve1"), target.clone(), action);
    run(bed, "pve1", JobKind::Power, job.job_id, &job).await
}

async fn update(
    bed: &Fleet,
    target: &ContainerTarget,
    change: ConfigChange,
    restart: RestartPolicy,
) -> anyhow::Result<Vec<Event>> {
    let mut job = UpdateJob::new(node("pve1"), target.clone(), change);
    job.restart = restart;
    run(bed, "pve1", JobKind::Update, job.job_id, &job).await
}

async fn status(bed: &Fleet, vmid: Vmid) -> anyhow::Result<String> {
    let s = bed.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/status/current")).await?;
    Ok(s["status"].as_str().unwrap_or_default().to_owned())
}

/// How many calls of `method` on the schema path `path` fakepve answered.
async fn calls(bed: &Fleet, method: &str, path: &str) -> anyhow::Result<u64> {
    bed.pve.calls_of(method, path).await
}

fn last_message(events: &[Event]) -> &str {
    &events.last().expect("a terminal event").message
}

#[tokio::test]
async fn power_jobs_reach_the_asked_state_and_already_there_is_success() -> anyhow::Result<()> {
    let bed = Fleet::start("day-two-power", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let target = made(&bed, "pve1", "pow", Ipv4Addr::new(127, 0, 0, 180)).await?;
    assert_eq!(status(&bed, target.vmid).await?, "running");

    let stopped = power(&bed, &target, PowerAction::Stop).await?;
    assert!(result_of(&stopped).success, "{stopped:#?}");
    assert_eq!(status(&bed, target.vmid).await?, "stopped");
    let again = power(&bed, &target, PowerAction::Shutdown).await?;
    assert!(result_of(&again).success && last_message(&again).contains("already stopped"), "{again:#?}");
    let reboot = power(&bed, &target, PowerAction::Reboot).await?;
    let error = result_of(&reboot).error.clone().expect("a stopped container is not rebooted");
    assert!(error.kind == ErrorKind::Conflict && error.message.contains("not running"), "{reboot:#?}");

    let started = power(&bed, &target, PowerAction::Start).await?;
    assert!(result_of(&started).success, "{started:#?}");
    assert_eq!(status(&bed, target.vmid).await?, "running");
    let again = power(&bed, &target, PowerAction::Start).await?;
    assert!(result_of(&again).success && last_message(&again).contains("already running"), "{again:#?}");

    // A reboot whose answer is lost is found in the task list, not sent again.
    bed.pve.reset_calls().await?;
    bed.pve
        .lose_answer("POST", "/nodes/{node}/lxc/{vmid}/status/reboot", 1, pvefleet_testbed::fakepve::LostAnswer::Error)
        .await?;
    let reboot = power(&bed, &target, PowerAction::Reboot).await?;
    assert!(result_of(&reboot).success, "{reboot:#?}");
    assert_eq!(calls(&bed, "POST", "/nodes/{node}/lxc/{vmid}/status/reboot").await?, 1, "rebooted twice");
    assert_eq!(status(&bed, target.vmid).await?, "running");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn an_update_sends_only_what_differs_and_reboots_only_for_what_pve_left_pending() -> anyhow::Result<()> {
    let bed = Fleet::start("day-two-update", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let target = made(&bed, "pve1", "upd", Ipv4Addr::new(127, 0, 0, 181)).await?;
    let vmid = target.vmid;
    let reboots = "/nodes/{node}/lxc/{vmid}/status/reboot";
    // Memory is applied to a running container at once; nameservers wait for a restart.
    let change = ConfigChange {
        memory: Some(1024),
        nameservers: Some(vec!["9.9.9.9".parse()?]),
        tags: Some(vec!["web".into()]),
        ..Default::default()
    };
    bed.pve.reset_calls().await?;
    let never = update(&bed, &target, change.clone(), RestartPolicy::Never).await?;
    assert!(result_of(&never).success, "{never:#?}");
    assert!(last_message(&never).contains("pending until its next restart: nameserver"), "{never:#?}");
    assert_eq!(calls(&bed, "POST", reboots).await?, 0, "`never` rebooted");
    let pending = bed.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/pending")).await?;
    let waiting: Vec<&str> = pending
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p.get("pending").is_some())
        .filter_map(|p| p["key"].as_str())
        .collect();
    assert_eq!(waiting, ["nameserver"], "{pending}");
    let cfg = bed.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/config?current=1")).await?;
    assert_eq!(cfg["memory"].as_u64(), Some(1024), "memory is applied at once: {cfg}");
    let tags = cfg["tags"].as_str().unwrap_or_default();
    let marker = target.create_job.expect("a create job").marker_tag();
    assert!(tags.contains("web") && tags.contains(&marker), "the marker stays: {tags}");

    // The same change under `if-needed`: nothing to write, one reboot for what is pending.
    bed.pve.reset_calls().await?;
    let needed = update(&bed, &target, change.clone(), RestartPolicy::IfNeeded).await?;
    assert!(result_of(&needed).success, "{needed:#?}");
    assert!(needed.iter().any(|e| e.message.contains("to apply nameserver (pending)")), "{needed:#?}");
    assert_eq!(calls(&bed, "PUT", "/nodes/{node}/lxc/{vmid}/config").await?, 0, "wrote what was already asked");
    assert_eq!(calls(&bed, "POST", reboots).await?, 1, "one reboot");
    let cfg = bed.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/config?current=1")).await?;
    assert_eq!(cfg["nameserver"].as_str(), Some("9.9.9.9"), "applied by the reboot: {cfg}");

    // Once more: already as asked, nothing written, no reboot.
    bed.pve.reset_calls().await?;
    let again = update(&bed, &target, change, RestartPolicy::IfNeeded).await?;
    assert!(result_of(&again).success && last_message(&again).contains("already as asked"), "{again:#?}");
    assert_eq!(calls(&bed, "PUT", "/nodes/{node}/lxc/{vmid}/config").await?, 0);
    assert_eq!(calls(&bed, "POST", reboots).await?, 0);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_concurrent_edit_by_another_user_is_not_overwritten() -> anyhow::Result<()> {
    let bed = Fleet::start("day-two-concurrent", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let target = made(&bed, "pve1", "edit", Ipv4Addr::new(127, 0, 0, 182)).await?;
    let vmid = target.vmid.get();
    let config = "/nodes/{node}/lxc/{vmid}/config";
    // The inventory reads the config after each job: let its reads after the create pass, so
    // the edit comes between the update's own read and write.
    swept(&bed, &format!("pve1.{vmid}")).await?;
    // Between the update's read of the config (its second: finding reads it first) and its
    // write, another user changes the description and the cores.
    let edit = serde_json::json!({"description": "edited by alice", "cores": "3"});
    bed.pve.edit_after("GET", config, 1, 1, vmid, edit).await?;
    bed.pve.reset_calls().await?;
    let change = ConfigChange { memory: Some(2048), ..Default::default() };
    let events = update(&bed, &target, change, RestartPolicy::IfNeeded).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert!(events.iter().any(|e| e.message.contains("changed while this job read it")), "{events:#?}");
    assert_eq!(calls(&bed, "PUT", config).await?, 2, "the first write is refused by its digest, the second made");
    let cfg = bed.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/config")).await?;
    assert_eq!(cfg["description"].as_str(), Some("edited by alice"), "alice's edit kept: {cfg}");
    assert_eq!(cfg["cores"].to_string().trim_matches('"'), "3", "alice's edit kept: {cfg}");
    assert_eq!(cfg["memory"].as_u64(), Some(2048), "ours made: {cfg}");

    // Someone who edits at every read: three tries, then `conflict` naming the keys, and
    // nothing of the job written.
    bed.pve.edit_after("GET", config, 0, 0, vmid, serde_json::json!({"description": "edit {n}"})).await?;
    bed.pve.reset_calls().await?;
    let change = ConfigChange { memory: Some(4096), ..Default::default() };
    let events = update(&bed, &target, change, RestartPolicy::IfNeeded).await?;
    let error = result_of(&events).error.clone().expect("a conflict");
    assert_eq!(error.kind, ErrorKind::Conflict, "{events:#?}");
    assert!(error.message.contains("memory") && error.message.contains("3 times"), "{error:?}");
    assert_eq!(calls(&bed, "PUT", config).await?, 3);
    bed.pve.reset().await?;
    let cfg = bed.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/config")).await?;
    assert_eq!(cfg["memory"].as_u64(), Some(2048), "not written: {cfg}");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_resize_twice_is_one_resize_and_a_disk_never_shrinks() -> anyhow::Result<()> {
    let bed = Fleet::start("day-two-resize", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let target = made(&bed, "pve1", "grow", Ipv4Addr::new(127, 0, 0, 183)).await?;
    let vmid = target.vmid;
    let resize = "/nodes/{node}/lxc/{vmid}/resize";
    let grow = |size: u64| ResizeJob::new(node("pve1"), target.clone(), "rootfs", size);
    bed.pve.reset_calls().await?;
    // Its answer is lost: the client sends it again, and PVE says it is done.
    bed.pve.lose_answer("PUT", resize, 1, pvefleet_testbed::fakepve::LostAnswer::Error).await?;
    let job = grow(12 << 30);
    let events = run(&bed, "pve1", JobKind::Resize, job.job_id, &job).await?;
    assert!(result_of(&events).success, "{events:#?}");
    let rootfs = |cfg: &serde_json::Value| cfg["rootfs"].as_str().unwrap_or_default().to_owned();
    let cfg = bed.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/config")).await?;
    assert!(rootfs(&cfg).contains("size=12G"), "{cfg}");
    let tasks = bed.pve.api_get(&format!("/nodes/pve1/tasks?vmid={vmid}&limit=500")).await?;
    let resizes = tasks.as_array().into_iter().flatten().filter(|t| t["type"] == "resize").count();
    assert_eq!(resizes, 1, "one resize task: {tasks}");

    // The same size again: already there, nothing sent.
    bed.pve.reset_calls().await?;
    let job = grow(12 << 30);
    let events = run(&bed, "pve1", JobKind::Resize, job.job_id, &job).await?;
    assert!(result_of(&events).success && last_message(&events).contains("already at 12G"), "{events:#?}");
    assert_eq!(calls(&bed, "PUT", resize).await?, 0);

    // Smaller: refused at finding, naming the field, nothing sent.
    let job = grow(10 << 30);
    let events = run(&bed, "pve1", JobKind::Resize, job.job_id, &job).await?;
    let error = result_of(&events).error.clone().expect("a refusal");
    assert_eq!((error.kind, error.step), (ErrorKind::Validation, pvefleet_schemas::Step::Finding), "{events:#?}");
    assert!(error.message.starts_with("size_bytes:") && error.message.contains("only grows"), "{error:?}");
    assert_eq!(calls(&bed, "PUT", resize).await?, 0);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_strangers_container_is_never_written_to() -> anyhow::Result<()> {
    let bed = Fleet::start("day-two-stranger", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let theirs = [("hostname", "theirs"), ("tags", "prod")];
    bed.pve.make_container("pve1", 900, &theirs).await?;
    let ours = made(&bed, "pve1", "ours", Ipv4Addr::new(127, 0, 0, 184)).await?;
    bed.pve.reset_calls().await?;
    // Named by vmid only: any pvefleet marker would do, and it has none.
    let anyone = ContainerTarget { vmid: Vmid::new(900)?, create_job: None, hostname: None };
    let events =
        update(&bed, &anyone, ConfigChange { memory: Some(64), ..Default::default() }, RestartPolicy::Never).await?;
    let error = result_of(&events).error.clone().expect("refused");
    assert!(error.kind == ErrorKind::Conflict && error.message.contains("did not make it"), "{events:#?}");
    // Named as made by our job, but it is our job's vmid that is ours, not 900.
    let borrowed = ContainerTarget { vmid: Vmid::new(900)?, ..ours.clone() };
    let job = PowerJob::new(node("pve1"), borrowed, PowerAction::Stop);
    let events = run(&bed, "pve1", JobKind::Power, job.job_id, &job).await?;
    assert_eq!(result_of(&events).error.as_ref().map(|e| e.kind), Some(ErrorKind::Conflict), "{events:#?}");
    let writes: u64 = bed.pve.calls().await?.iter().filter(|(m, _, _)| m != "GET").map(|(_, _, n)| n).sum();
    assert_eq!(writes, 0, "nothing but reads");
    bed.dir.pass();
    Ok(())
}

/// Waits until the agent's inventory has read what the last job left at `key`.
async fn swept(bed: &Fleet, key: &str) -> anyhow::Result<InventoryEntry> {
    wait_until(&format!("the inventory to read {key} after its job"), Duration::from_secs(20), || async {
        inventory(bed).await.ok()?.remove(key).filter(|e| e.applied_digest.is_some())
    })
    .await
}

/// The inventory entries of the test's server, by key.
async fn inventory(bed: &Fleet) -> anyhow::Result<std::collections::BTreeMap<String, InventoryEntry>> {
    use futures::TryStreamExt as _;
    let kv = bed.js.get_key_value(INVENTORY_BUCKET).await?;
    let keys: Vec<String> = kv.keys().await?.try_collect().await?;
    let mut out = std::collections::BTreeMap::new();
    for key in keys {
        if let Some(bytes) = kv.get(&key).await? {
            out.insert(key, InventoryEntry::decode(&bytes)?);
        }
    }
    Ok(out)
}

#[tokio::test]
async fn the_inventory_follows_a_move_and_a_delete_and_a_moved_container_is_refused_on_its_old_node()
-> anyhow::Result<()> {
    let bed = Fleet::start("day-two-inventory", &["pve1", "pve2"]).await?;
    let quick = |n: &str| AgentOptions {
        env: vec![("PVEFLEET_INVENTORY_INTERVAL".into(), "1s".into())],
        ..AgentOptions::node(n)
    };
    let _pve1 = bed.agent_with(quick("pve1"))?;
    let _pve2 = bed.agent_with(quick("pve2"))?;
    let target = made(&bed, "pve1", "mover", Ipv4Addr::new(127, 0, 0, 185)).await?;
    let vmid = target.vmid;
    let (on1, on2) = (format!("pve1.{vmid}"), format!("pve2.{vmid}"));
    let entry = wait_until("the container in the inventory", Duration::from_secs(20), || async {
        inventory(&bed).await.ok()?.remove(&on1)
    })
    .await?;
    assert_eq!((entry.hostname.as_str(), entry.status.as_str()), ("mover", "running"), "{entry:?}");
    assert_eq!(entry.create_job, target.create_job, "made by its create job: {entry:?}");
    assert_eq!(entry.ip.as_deref(), Some("127.0.0.185/32"));
    assert_eq!(entry.last_job, target.create_job, "the last job that wrote to it: {entry:?}");

    // Moved by hand (as HA would): found on its new node, gone from the old.
    let form = [("target", "pve2"), ("restart", "1")];
    bed.pve.api(reqwest::Method::POST, &format!("/nodes/pve1/lxc/{vmid}/migrate"), &form).await?;
    wait_until("the inventory to follow the move", Duration::from_secs(20), || async {
        let now = inventory(&bed).await.ok()?;
        (now.contains_key(&on2) && !now.contains_key(&on1)).then_some(())
    })
    .await?;
    // A job sent to the old node is answered `moved`, naming the new one, and touches nothing.
    let stale = PowerJob::new(node("pve1"), target.clone(), PowerAction::Stop);
    let events = run(&bed, "pve1", JobKind::Power, stale.job_id, &stale).await?;
    let error = result_of(&events).error.clone().expect("moved");
    assert!(error.kind == ErrorKind::Moved && error.message.contains("on pve2 now"), "{events:#?}");
    // On its new node it is the same container, ours.
    let there = PowerJob::new(node("pve2"), target.clone(), PowerAction::Stop);
    let events = run(&bed, "pve2", JobKind::Power, there.job_id, &there).await?;
    assert!(result_of(&events).success, "{events:#?}");

    // Deleted in PVE's own UI: it leaves the inventory.
    bed.pve.api(reqwest::Method::DELETE, &format!("/nodes/pve2/lxc/{vmid}"), &[]).await?;
    wait_until("the deleted container to leave the inventory", Duration::from_secs(20), || async {
        (!inventory(&bed).await.ok()?.contains_key(&on2)).then_some(())
    })
    .await?;
    bed.dir.pass();
    Ok(())
}
