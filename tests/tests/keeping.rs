//! The keeping kinds on the wire against a real agent and fakepve, each idempotence rule tried
//! the way it breaks and counted in the PVE calls: a snapshot whose answer is lost, or whose
//! job loses its checkpoint mid-task, is taken once; a rollback is sent once through a lost
//! answer and an agent killed mid-rollback; a guarded update that fails is rolled back to its
//! snapshot and the config read back is what it was; a backup is taken once and pruned; a
//! restore makes a new container with its own marker (never from a stranger's backup), or puts
//! one back as it was; a move is
//! sent once through a lost answer, an agent killed mid-move and an HA migration that ends
//! early, and ends with the container on exactly one node.

use std::net::Ipv4Addr;

use pvefleet_schemas::names::JobKind;
use pvefleet_schemas::{
    BackupJob, ConfigChange, ContainerTarget, ErrorKind, Event, EventType, Guard, JobId, MoveJob, NodeName, OnFailure,
    RestartPolicy, RestoreJob, RollbackJob, SnapshotJob, Step, UpdateJob, Vmid,
};
use pvefleet_testbed::fakepve::LostAnswer;
use pvefleet_testbed::jobs::{JOB_WITHIN, create_job, lose_checkpoint_of, result_of, run_kind, submit_kind, wait_end};
use pvefleet_testbed::{Fleet, wait_until};

fn node(name: &str) -> NodeName {
    NodeName::new(name).expect("a node name")
}

async fn made_with(bed: &Fleet, mut job: pvefleet_schemas::Job) -> anyhow::Result<ContainerTarget> {
    job.container.memory = 512;
    pvefleet_testbed::jobs::made(&bed.js, &job).await
}

async fn made(bed: &Fleet, on: &str, hostname: &str, ip: Ipv4Addr) -> anyhow::Result<ContainerTarget> {
    made_with(bed, create_job(on, hostname, ip)).await
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

/// How many calls of `method` on the schema path `path` fakepve answered.
async fn calls(bed: &Fleet, method: &str, path: &str) -> anyhow::Result<u64> {
    bed.pve.calls_of(method, path).await
}

/// Waits until fakepve has answered (or lost the answer of) a call of `method` on `path`.
async fn called(bed: &Fleet, method: &str, path: &str) -> anyhow::Result<()> {
    wait_until(&format!("{method} {path} to reach PVE"), JOB_WITHIN, || async {
        (calls(bed, method, path).await.ok()? > 0).then_some(())
    })
    .await
}

async fn config(bed: &Fleet, on: &str, vmid: Vmid) -> anyhow::Result<serde_json::Value> {
    bed.pve.api_get(&format!("/nodes/{on}/lxc/{vmid}/config")).await
}

async fn status(bed: &Fleet, on: &str, vmid: Vmid) -> anyhow::Result<String> {
    let s = bed.pve.api_get(&format!("/nodes/{on}/lxc/{vmid}/status/current")).await?;
    Ok(s["status"].as_str().unwrap_or_default().to_owned())
}

async fn snapshot_names(bed: &Fleet, vmid: Vmid) -> anyhow::Result<Vec<(String, String)>> {
    let list = bed.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/snapshot")).await?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] != "current")
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["description"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// The nodes the cluster lists guest `vmid` on.
async fn nodes_of(bed: &Fleet, vmid: Vmid) -> anyhow::Result<Vec<String>> {
    let all = bed.pve.api_get("/cluster/resources?type=vm").await?;
    Ok(all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["vmid"].as_u64() == Some(u64::from(vmid.get())))
        .filter_map(|g| g["node"].as_str().map(str::to_owned))
        .collect())
}

fn memory_of(cfg: &serde_json::Value) -> Option<u64> {
    cfg["memory"].as_u64().or_else(|| cfg["memory"].as_str()?.parse().ok())
}

#[tokio::test]
async fn a_snapshot_is_taken_once_and_a_rollback_sent_once_whatever_happens_to_their_answers() -> anyhow::Result<()> {
    let bed = Fleet::start("keep-snapshot", &["pve1"]).await?;
    let mut agent = bed.agent("pve1")?;
    let target = made(&bed, "pve1", "snap", Ipv4Addr::new(127, 0, 0, 200)).await?;
    let vmid = target.vmid;
    let (take, rollback) =
        ("/nodes/{node}/lxc/{vmid}/snapshot", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback");

    // Its answer is lost: the list shows this job's snapshot, and none is sent again.
    bed.pve.reset_calls().await?;
    bed.pve.lose_answer("POST", "/nodes/{node}/lxc/{vmid}/snapshot", 1, LostAnswer::Error).await?;
    let job = SnapshotJob::take(node("pve1"), target.clone(), Some("before".into()));
    let events = run(&bed, "pve1", JobKind::Snapshot, job.job_id, &job).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert_eq!(calls(&bed, "POST", take).await?, 1, "one snapshot request");
    assert_eq!(events.last().and_then(|e| e.step), Some(Step::Snapshotting), "it ends on its last step run");
    let names = snapshot_names(&bed, vmid).await?;
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].0 == "before" && names[0].1.contains(&job.job_id.to_string()), "the job in it: {names:?}");

    // The agent dies while PVE takes it and the job's checkpoint is lost: the redelivery
    // finds its own snapshot by its description and sends nothing.
    bed.pve.time_scale(0.2).await?;
    bed.pve.task_secs(serde_json::json!({"snapshot": 10})).await?;
    bed.pve.reset_calls().await?;
    let second = SnapshotJob::take(node("pve1"), target.clone(), None);
    submit_kind(&bed.js, &node("pve1"), JobKind::Snapshot, second.job_id, &second).await?;
    called(&bed, "POST", take).await?;
    lose_checkpoint_of(&mut agent, &bed.js, &node("pve1"), second.job_id).await?;
    let events = wait_end(&bed.js, second.job_id).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert!(events.iter().last().is_some_and(|e| e.message.contains("was taken already")), "{events:#?}");
    assert_eq!(calls(&bed, "POST", take).await?, 1, "taken twice");
    assert!(second.name.starts_with("pf-"), "named after its job: {}", second.name);
    bed.pve.reset().await?;

    // Another job may not take over a name: `conflict`, nothing sent.
    bed.pve.reset_calls().await?;
    let taken = SnapshotJob::take(node("pve1"), target.clone(), Some("before".into()));
    let events = run(&bed, "pve1", JobKind::Snapshot, taken.job_id, &taken).await?;
    assert_eq!(result_of(&events).error.as_ref().map(|e| e.kind), Some(ErrorKind::Conflict), "{events:#?}");
    assert_eq!(calls(&bed, "POST", take).await?, 0);

    // Written after the snapshot, then rolled back: a lost answer is looked up, not resent.
    let change = ConfigChange { memory: Some(2048), ..Default::default() };
    let update = UpdateJob::new(node("pve1"), target.clone(), change);
    let events = run(&bed, "pve1", JobKind::Update, update.job_id, &update).await?;
    assert!(result_of(&events).success, "{events:#?}");
    bed.pve.reset_calls().await?;
    bed.pve.lose_answer("POST", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback", 1, LostAnswer::Error).await?;
    let mut back = RollbackJob::new(node("pve1"), target.clone(), "before".into());
    back.start = true;
    let events = run(&bed, "pve1", JobKind::Rollback, back.job_id, &back).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert_eq!(calls(&bed, "POST", rollback).await?, 1, "rolled back twice");
    assert_eq!(memory_of(&config(&bed, "pve1", vmid).await?), Some(512), "as it was at the snapshot");
    assert_eq!(status(&bed, "pve1", vmid).await?, "running", "started again (--start)");

    // The agent is killed mid-rollback: the redelivery waits on the task it sent.
    let update =
        UpdateJob::new(node("pve1"), target.clone(), ConfigChange { memory: Some(1024), ..Default::default() });
    assert!(result_of(&run(&bed, "pve1", JobKind::Update, update.job_id, &update).await?).success);
    bed.pve.time_scale(0.2).await?;
    // Long enough to be still running when the new agent looks for it (PVE lists a running
    // task only when asked for `source=all`).
    bed.pve.task_secs(serde_json::json!({"rollback": 40})).await?;
    bed.pve.reset_calls().await?;
    let back = RollbackJob::new(node("pve1"), target.clone(), "before".into());
    submit_kind(&bed.js, &node("pve1"), JobKind::Rollback, back.job_id, &back).await?;
    called(&bed, "POST", rollback).await?;
    agent.kill();
    agent.restart()?;
    let events = wait_end(&bed.js, back.job_id).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert!(events.iter().any(|e| e.message.contains("resuming")), "redelivered: {events:#?}");
    assert_eq!(calls(&bed, "POST", rollback).await?, 1, "rolled back twice");
    assert_eq!(memory_of(&config(&bed, "pve1", vmid).await?), Some(512), "rolled back");

    // Cancelled mid-rollback: the rollback is not stopped half-way; the job ends cancelled once
    // it has finished, and says so.
    let update = UpdateJob::new(node("pve1"), target.clone(), ConfigChange { memory: Some(768), ..Default::default() });
    assert!(result_of(&run(&bed, "pve1", JobKind::Update, update.job_id, &update).await?).success);
    bed.pve.reset_calls().await?;
    let back = RollbackJob::new(node("pve1"), target.clone(), "before".into());
    submit_kind(&bed.js, &node("pve1"), JobKind::Rollback, back.job_id, &back).await?;
    called(&bed, "POST", rollback).await?;
    let cancel = pvefleet_testbed::trust::signed(&pvefleet_schemas::CancelRequest::new(node("pve1"), back.job_id));
    let client = bed.nats.client().await?;
    let reply = client.request(pvefleet_schemas::names::cancel_subject(&node("pve1")), cancel.into()).await?;
    let reply: pvefleet_schemas::CancelReply = serde_json::from_slice(&reply.payload)?;
    assert!(reply.ok, "{}", reply.message);
    let events = wait_end(&bed.js, back.job_id).await?;
    let error = result_of(&events).error.clone().expect("cancelled");
    assert_eq!(error.kind, ErrorKind::Cancelled, "{events:#?}");
    assert!(events.last().is_some_and(|e| e.message.contains("vzrollback task was let finish")), "{events:#?}");
    let tasks = bed.pve.api_get(&format!("/nodes/pve1/tasks?vmid={vmid}&limit=500")).await?;
    let last = tasks.as_array().into_iter().flatten().find(|t| t["type"] == "vzrollback").expect("its task");
    assert_eq!(last["status"], "OK", "not stopped half-way: {last}");
    assert_eq!(memory_of(&config(&bed, "pve1", vmid).await?), Some(512), "rolled back in full");
    bed.pve.reset().await?;

    // Deleted, then deleted again: the second finds nothing to delete and sends nothing.
    for already in [false, true] {
        bed.pve.reset_calls().await?;
        let delete = SnapshotJob::delete(node("pve1"), target.clone(), second.name.clone());
        let events = run(&bed, "pve1", JobKind::Snapshot, delete.job_id, &delete).await?;
        assert!(result_of(&events).success, "{events:#?}");
        let deletes = calls(&bed, "DELETE", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}").await?;
        assert_eq!(deletes, u64::from(!already), "{events:#?}");
    }
    assert_eq!(snapshot_names(&bed, vmid).await?.into_iter().map(|(n, _)| n).collect::<Vec<_>>(), ["before"]);

    // On storage without snapshots: refused at finding, naming why, nothing sent.
    let form = [("storage", "plain"), ("type", "dir"), ("path", "/srv/plain"), ("content", "rootdir,images")];
    bed.pve.api(reqwest::Method::POST, "/storage", &form).await?;
    let mut job = create_job("pve1", "plain", Ipv4Addr::new(127, 0, 0, 201));
    job.container.storage = "plain".into();
    let plain = made_with(&bed, job).await?;
    bed.pve.reset_calls().await?;
    let job = SnapshotJob::take(node("pve1"), plain.clone(), None);
    let events = run(&bed, "pve1", JobKind::Snapshot, job.job_id, &job).await?;
    let error = result_of(&events).error.clone().expect("refused");
    assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Finding), "{events:#?}");
    assert!(error.message.contains("without snapshots"), "{error:?}");
    assert_eq!(calls(&bed, "POST", take).await?, 0);
    bed.dir.pass();
    Ok(())
}

fn guarded(target: &ContainerTarget, change: ConfigChange, guard: Guard) -> UpdateJob {
    let mut job = UpdateJob::new(node("pve1"), target.clone(), change);
    job.restart = RestartPolicy::Always;
    job.guard = Some(guard);
    job
}

#[tokio::test]
async fn a_guarded_update_that_fails_leaves_the_container_as_it_was() -> anyhow::Result<()> {
    let bed = Fleet::start("keep-guarded", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let target = made(&bed, "pve1", "guarded", Ipv4Addr::new(127, 0, 0, 202)).await?;
    let vmid = target.vmid;
    let before = config(&bed, "pve1", vmid).await?;
    let change = ConfigChange { memory: Some(2048), cores: Some(3), onboot: Some(true), ..Default::default() };

    // The reboot the change needs fails: the snapshot taken first is rolled back to.
    bed.pve.task_error("vzreboot", "command 'lxc-stop -n 100' failed: exit code 1").await?;
    let job = guarded(&target, change.clone(), Guard::default());
    let events = run(&bed, "pve1", JobKind::Update, job.job_id, &job).await?;
    let result = result_of(&events);
    let error = result.error.clone().expect("the reboot failed");
    assert_eq!(error.step, Step::Restarting, "{events:#?}");
    assert!(result.rolled_back, "{events:#?}");
    let last = &events.last().expect("a terminal event").message;
    assert!(last.contains("rolled back to snapshot pf-"), "{last}");
    assert!(events.iter().any(|e| e.kind == EventType::Step && e.step == Some(Step::RollingBack)), "{events:#?}");
    let after = config(&bed, "pve1", vmid).await?;
    for key in ["memory", "cores", "onboot", "hostname", "tags", "net0", "rootfs"] {
        assert_eq!(after.get(key), before.get(key), "{key} as it was: {after}");
    }
    assert_eq!(status(&bed, "pve1", vmid).await?, "running", "started again, as it ran");
    let kept = snapshot_names(&bed, vmid).await?;
    assert!(kept.iter().any(|(n, _)| *n == format!("pf-{}", job.job_id.short())), "kept: {kept:?}");

    // --on-failure keep: the change stays, so does the snapshot, and the error says how back.
    bed.pve.task_error("vzreboot", "command 'lxc-stop -n 100' failed: exit code 1").await?;
    let keep = guarded(&target, change.clone(), Guard { on_failure: OnFailure::Keep, keep_snapshot: false });
    let events = run(&bed, "pve1", JobKind::Update, keep.job_id, &keep).await?;
    assert!(!result_of(&events).rolled_back, "{events:#?}");
    assert!(events.last().is_some_and(|e| e.message.contains("pvefleet rollback")), "{events:#?}");
    assert_eq!(memory_of(&config(&bed, "pve1", vmid).await?), Some(2048));

    // Another user edits the config at every read: nothing of the job is written, so nothing is
    // rolled back (a rollback would throw away that user's edits).
    let config_path = "/nodes/{node}/lxc/{vmid}/config";
    bed.pve.edit_after("GET", config_path, 0, 0, vmid.get(), serde_json::json!({"description": "edit {n}"})).await?;
    bed.pve.reset_calls().await?;
    let busy = guarded(&target, ConfigChange { cores: Some(2), ..Default::default() }, Guard::default());
    let events = run(&bed, "pve1", JobKind::Update, busy.job_id, &busy).await?;
    bed.pve.reset().await?;
    let error = result_of(&events).error.clone().expect("a conflict");
    assert_eq!((error.kind, error.step), (ErrorKind::Conflict, Step::Configuring), "{events:#?}");
    assert!(!result_of(&events).rolled_back, "nothing was written, so nothing to roll back: {events:#?}");
    assert_eq!(calls(&bed, "POST", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback").await?, 0);
    assert!(config(&bed, "pve1", vmid).await?["description"].as_str().is_some_and(|d| d.starts_with("edit ")));

    // A guarded update that succeeds deletes its snapshot (unless kept).
    let ok = guarded(&target, ConfigChange { memory: Some(1024), ..Default::default() }, Guard::default());
    let events = run(&bed, "pve1", JobKind::Update, ok.job_id, &ok).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert!(events.iter().any(|e| e.step == Some(Step::CleaningUp)), "{events:#?}");
    let names: Vec<String> = snapshot_names(&bed, vmid).await?.into_iter().map(|(n, _)| n).collect();
    assert!(!names.contains(&format!("pf-{}", ok.job_id.short())), "deleted after success: {names:?}");
    assert_eq!(names.len(), 3, "the failures' snapshots stay: {names:?}");
    bed.dir.pass();
    Ok(())
}

async fn backups(bed: &Fleet, vmid: Vmid) -> anyhow::Result<Vec<serde_json::Value>> {
    let list = bed.pve.api_get(&format!("/nodes/pve1/storage/local/content?content=backup&vmid={vmid}")).await?;
    Ok(list.as_array().cloned().unwrap_or_default())
}

#[tokio::test]
async fn a_backup_is_taken_once_and_restores_as_a_new_container_or_over_its_own() -> anyhow::Result<()> {
    let bed = Fleet::start("keep-backup", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let target = made(&bed, "pve1", "saved", Ipv4Addr::new(127, 0, 0, 203)).await?;
    let vmid = target.vmid;
    let vzdump = "/nodes/{node}/vzdump";

    // Its answer is lost while it runs: found by its task, one backup, with the job in its notes.
    bed.pve.time_scale(0.2).await?;
    bed.pve.task_secs(serde_json::json!({"vzdump": 20})).await?;
    bed.pve.reset_calls().await?;
    bed.pve.lose_answer("POST", "/nodes/pve1/vzdump", 1, LostAnswer::Error).await?;
    let job = BackupJob::new(node("pve1"), target.clone(), "local".into());
    let events = run(&bed, "pve1", JobKind::Backup, job.job_id, &job).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert_eq!(calls(&bed, "POST", vzdump).await?, 1, "backed up twice");
    let list = backups(&bed, vmid).await?;
    assert_eq!(list.len(), 1, "{list:#?}");
    let first = list[0]["volid"].as_str().expect("a volid").to_owned();
    assert!(list[0]["notes"].as_str().is_some_and(|n| n.contains(&job.job_id.to_string())), "{list:#?}");
    assert!(events.last().is_some_and(|e| e.message.contains(&first)), "the volume named: {events:#?}");
    bed.pve.reset().await?;

    // A storage that takes no backups: refused at finding, nothing sent.
    bed.pve.reset_calls().await?;
    let wrong = BackupJob::new(node("pve1"), target.clone(), "local-lvm".into());
    let events = run(&bed, "pve1", JobKind::Backup, wrong.job_id, &wrong).await?;
    let error = result_of(&events).error.clone().expect("refused");
    assert!(error.kind == ErrorKind::Validation && error.message.starts_with("storage:"), "{error:?}");
    assert_eq!(calls(&bed, "POST", vzdump).await?, 0);

    // Changed since, then restored over from the first: as it was, still ours, running.
    let change = ConfigChange { memory: Some(2048), ..Default::default() };
    let update = UpdateJob::new(node("pve1"), target.clone(), change);
    assert!(result_of(&run(&bed, "pve1", JobKind::Update, update.job_id, &update).await?).success);
    let mut over = RestoreJob::new(node("pve1"), first.clone());
    over.over = Some(target.clone());
    let events = run(&bed, "pve1", JobKind::Restore, over.job_id, &over).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert!(events.iter().any(|e| e.message.contains("is lost")), "says what is lost: {events:#?}");
    let cfg = config(&bed, "pve1", vmid).await?;
    assert_eq!(memory_of(&cfg), Some(512), "{cfg}");
    let marker = target.create_job.expect("its create job").marker_tag();
    assert!(cfg["tags"].as_str().is_some_and(|t| t.contains(&marker)), "still ours: {cfg}");
    assert_eq!(status(&bed, "pve1", vmid).await?, "running", "it ran, so it runs again");

    // As a new container, its answer lost: one restore, the new container with its own marker.
    bed.pve.reset_calls().await?;
    bed.pve.lose_answer("POST", "/nodes/pve1/lxc", 1, LostAnswer::Error).await?;
    let mut copy = RestoreJob::new(node("pve1"), first.clone());
    copy.hostname = Some("saved-copy".into());
    let events = run(&bed, "pve1", JobKind::Restore, copy.job_id, &copy).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert_eq!(calls(&bed, "POST", "/nodes/{node}/lxc").await?, 1, "restored twice");
    let new = result_of(&events).vmid.expect("the new container's vmid");
    assert_ne!(new, vmid);
    let cfg = config(&bed, "pve1", new).await?;
    let tags = cfg["tags"].as_str().unwrap_or_default();
    assert!(tags.contains(&copy.job_id.marker_tag()) && !tags.contains(&marker), "its own marker only: {cfg}");
    assert_eq!(cfg["hostname"].as_str(), Some("saved-copy"), "{cfg}");
    assert!(cfg["description"].as_str().is_some_and(|d| d.contains("Restored by pvefleet job")), "{cfg}");

    // Kept to the newest one: the older is pruned.
    let mut pruned = BackupJob::new(node("pve1"), target.clone(), "local".into());
    pruned.keep_last = Some(1);
    let events = run(&bed, "pve1", JobKind::Backup, pruned.job_id, &pruned).await?;
    assert!(result_of(&events).success, "{events:#?}");
    let list = backups(&bed, vmid).await?;
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_ne!(list[0]["volid"].as_str(), Some(first.as_str()), "the older one pruned: {list:#?}");

    // A backup of a container pvefleet did not make is not restored: it would copy a stranger's.
    bed.pve.make_container("pve1", 900, &[("hostname", "theirs"), ("tags", "prod")]).await?;
    bed.pve.api(reqwest::Method::POST, "/nodes/pve1/vzdump", &[("vmid", "900"), ("storage", "local")]).await?;
    let theirs = wait_until("the stranger's backup", JOB_WITHIN, || async {
        let list = bed.pve.api_get("/nodes/pve1/storage/local/content?content=backup&vmid=900").await.ok()?;
        list.as_array()?.first()?["volid"].as_str().map(str::to_owned)
    })
    .await?;
    bed.pve.reset_calls().await?;
    let copy = RestoreJob::new(node("pve1"), theirs);
    let events = run(&bed, "pve1", JobKind::Restore, copy.job_id, &copy).await?;
    let error = result_of(&events).error.clone().expect("refused");
    assert!(error.kind == ErrorKind::Conflict && error.message.contains("did not make"), "{error:?}");
    assert_eq!(calls(&bed, "POST", "/nodes/{node}/lxc").await?, 0, "nothing restored");

    // Listing: ours are listed; a stranger's backups are not, nor is a storage that is no id.
    let ask = |vmid: u32, storage: Option<&str>| {
        let mut request = pvefleet_schemas::ListRequest::new(
            pvefleet_schemas::ListWhat::Backups,
            node("pve1"),
            Vmid::new(vmid).unwrap(),
        );
        request.storage = storage.map(str::to_owned);
        let client = bed.nats.client();
        async move {
            let payload = pvefleet_testbed::trust::signed(&request);
            let reply =
                client.await?.request(pvefleet_schemas::names::plan_subject(&node("pve1")), payload.into()).await?;
            anyhow::Ok(serde_json::from_slice::<pvefleet_schemas::ListReply>(&reply.payload)?)
        }
    };
    let ours = ask(vmid.get(), Some("local")).await?;
    assert!(ours.error.is_none() && ours.items.len() == 1, "{ours:?}");
    assert_eq!(ours.items[0].job, Some(pruned.job_id), "{ours:?}");
    let theirs = ask(900, None).await?;
    assert!(theirs.error.as_deref().is_some_and(|e| e.contains("no pvefleet marker")), "{theirs:?}");
    let sneaky = ask(vmid.get(), Some("../../access/users")).await?;
    assert!(sneaky.error.as_deref().is_some_and(|e| e.contains("storage")), "{sneaky:?}");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_move_is_sent_once_and_ends_with_the_container_on_one_node() -> anyhow::Result<()> {
    let bed = Fleet::start("keep-move", &["pve1", "pve2"]).await?;
    let _pve1 = bed.agent("pve1")?;
    let mut pve2 = bed.agent("pve2")?;
    let target = made(&bed, "pve1", "mover", Ipv4Addr::new(127, 0, 0, 204)).await?;
    let vmid = target.vmid;
    let migrate = "/nodes/{node}/lxc/{vmid}/migrate";

    // Its answer is lost: found in the task list, one migration, on pve2 only.
    bed.pve.reset_calls().await?;
    bed.pve.lose_answer("POST", "/nodes/{node}/lxc/{vmid}/migrate", 1, LostAnswer::Error).await?;
    let job = MoveJob::new(node("pve1"), target.clone(), node("pve2"));
    let events = run(&bed, "pve1", JobKind::Move, job.job_id, &job).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert!(events.last().is_some_and(|e| e.message.contains("moved from pve1 to pve2")), "{events:#?}");
    assert_eq!(result_of(&events).moved_to, Some(node("pve2")), "the result names the new node");
    assert_eq!(calls(&bed, "POST", migrate).await?, 1, "migrated twice");
    assert_eq!(nodes_of(&bed, vmid).await?, ["pve2"]);
    assert_eq!(status(&bed, "pve2", vmid).await?, "running", "moved in restart mode");

    // Back, its agent killed mid-move: the redelivery finds its migration, sends none.
    bed.pve.time_scale(0.2).await?;
    bed.pve.task_secs(serde_json::json!({"migrate": 40})).await?;
    bed.pve.reset_calls().await?;
    let back = MoveJob::new(node("pve2"), target.clone(), node("pve1"));
    submit_kind(&bed.js, &node("pve2"), JobKind::Move, back.job_id, &back).await?;
    called(&bed, "POST", migrate).await?;
    pve2.kill();
    pve2.restart()?;
    let events = wait_end(&bed.js, back.job_id).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert_eq!(calls(&bed, "POST", migrate).await?, 1, "migrated twice");
    assert_eq!(nodes_of(&bed, vmid).await?, ["pve1"]);
    bed.pve.reset().await?;

    // HA-managed: `hamigrate` ends before it arrives; the job waits until it is there.
    bed.pve.ha(vmid.get(), Some("started")).await?;
    let ha = MoveJob::new(node("pve1"), target.clone(), node("pve2"));
    let events = run(&bed, "pve1", JobKind::Move, ha.job_id, &ha).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert!(events.iter().any(|e| e.message.contains("HA took the request")), "{events:#?}");
    assert_eq!(nodes_of(&bed, vmid).await?, ["pve2"], "there when the job ended");

    // Where PVE does not allow it: refused at finding, nothing sent.
    bed.pve.reset_calls().await?;
    let nowhere = MoveJob::new(node("pve2"), target.clone(), node("pve9"));
    let events = run(&bed, "pve2", JobKind::Move, nowhere.job_id, &nowhere).await?;
    let error = result_of(&events).error.clone().expect("refused");
    assert!(error.kind == ErrorKind::Validation && error.message.starts_with("to:"), "{error:?}");
    assert_eq!(calls(&bed, "POST", migrate).await?, 0);
    bed.dir.pass();
    Ok(())
}
