//! Every job kind's step table, proved generically (after omicron's saga tests): for each step
//! a job of the kind runs, fail that step (the job ends once, with the right `rolled_back`, and
//! its unwind leaves nothing of the job's behind), and kill the agent right after it (the job,
//! resumed by a new agent, ends as an uninterrupted one does, no step's effect done twice).
//! The steps come from a reference run of each kind, so a kind's new step is covered at once;
//! a new kind is covered by adding it to [`Kind::ALL`].

use std::net::Ipv4Addr;

use pvefleet_schemas::names::JobKind;
use pvefleet_schemas::{
    BackupJob, ConfigChange, ContainerTarget, DeploySpec, DestroyJob, DestroyTarget, ErrorKind, Event, EventType,
    Guard, JobId, PowerAction, PowerJob, ResizeJob, RestoreJob, RollbackJob, ScriptSpec, SnapshotJob, Step, UpdateJob,
};
use pvefleet_testbed::agent::{Agent, AgentOptions};
use pvefleet_testbed::jobs::{
    JOB_WITHIN, create_job, events_until_terminal, submit, submit_destroy, submit_kind, wait_end,
};
use pvefleet_testbed::{Fleet, Sshd};

/// The kinds of job, each with how to make one in the bed and what its end leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Create,
    Destroy,
    /// Memory (applied at once) and nameservers (left pending on a running container), so
    /// its `if-needed` restart reboots once.
    Update,
    /// The root disk from 8G to 12G.
    Resize,
    /// A reboot: the one power action that must never be sent twice.
    Power,
    /// The update above, guarded: a snapshot first, deleted after; a failure after the
    /// snapshot rolls back to it.
    GuardedUpdate,
    /// A snapshot taken.
    Snapshot,
    /// A rollback to a snapshot taken (by a snapshot job) before memory was changed.
    Rollback,
    /// A backup to `local`.
    Backup,
    /// A backup (by a backup job) restored over its container after memory was changed.
    Restore,
}

impl Kind {
    const ALL: [Kind; 10] = [
        Kind::Create,
        Kind::Destroy,
        Kind::Update,
        Kind::Resize,
        Kind::Power,
        Kind::GuardedUpdate,
        Kind::Snapshot,
        Kind::Rollback,
        Kind::Backup,
        Kind::Restore,
    ];

    /// Whether failing `step` of a job of this kind undoes what it did.
    fn undone_if_failing(self, step: Step) -> bool {
        match self {
            // A container exists once `creating` has run: the rollback destroys it.
            Kind::Create => step > Step::Creating,
            // Its change, once sent (a failing `configuring` fails before its write), is rolled
            // back to the snapshot; not when only its clean-up failed.
            Kind::GuardedUpdate => step > Step::Configuring && step != Step::CleaningUp,
            _ => false,
        }
    }
}

struct Bed {
    fleet: Fleet,
    sshd: Sshd,
    ip: Ipv4Addr,
    agent: Agent,
    /// Where each job's deploy script leaves its mark, one line per run.
    marks: std::path::PathBuf,
    jobs: u32,
}

/// One job of a kind as submitted: its id, and the vmid it acts on (a destroy's target).
struct Submitted {
    job: JobId,
    hostname: String,
    target: Option<u32>,
}

impl Bed {
    async fn start(name: &str, ip: Ipv4Addr) -> anyhow::Result<Self> {
        let fleet = Fleet::start(name, &["pve1"]).await?;
        let sshd = Sshd::start(&fleet.dir, ip, &fleet.pve.keys_dir).await?;
        let agent = fleet
            .agent_with(AgentOptions { ssh: Some((sshd.user.clone(), sshd.port)), ..AgentOptions::node("pve1") })?;
        let marks = fleet.dir.sub("marks");
        Ok(Self { fleet, sshd, ip, agent, marks, jobs: 0 })
    }

    /// The agent again, with `hooks` (`PVEFLEET_TEST_…`) in its environment (restarted only
    /// when they change).
    fn agent_with_hooks(&mut self, hooks: &[(&str, Step)]) -> anyhow::Result<()> {
        let env: Vec<(String, String)> = hooks.iter().map(|(k, s)| (k.to_string(), s.to_string())).collect();
        if env == self.agent.opts.env && self.agent.is_running() {
            return Ok(());
        }
        self.agent.opts.env = env;
        self.agent.restart()
    }

    /// A create job with a deploy script that marks each run of it.
    fn create(&mut self) -> pvefleet_schemas::Job {
        self.jobs += 1;
        let hostname = format!("step-{}", self.jobs);
        let mut job = create_job("pve1", &hostname, self.ip);
        let mark = self.marks.join(&hostname);
        job.deploy = DeploySpec {
            scripts: vec![ScriptSpec {
                name: "mark".into(),
                body: format!("echo ran >> '{}'", mark.display()),
                interpreter: "/bin/sh".into(),
                timeout: None,
            }],
            ..DeploySpec::default()
        };
        job
    }

    /// Makes and submits a job of `kind`, run by an agent with `hooks`; what it acts on (its
    /// container, a snapshot or backup before) is made first by an agent without them.
    async fn submit(&mut self, kind: Kind, hooks: &[(&str, Step)]) -> anyhow::Result<Submitted> {
        let create = self.create();
        let hostname = create.container.hostname.clone();
        let hooked = if kind == Kind::Create { hooks } else { &[] };
        self.agent_with_hooks(hooked)?;
        match kind {
            Kind::Create => {
                submit(&self.fleet.js, &create).await?;
                Ok(Submitted { job: create.job_id, hostname, target: None })
            }
            _ => {
                submit(&self.fleet.js, &create).await?;
                let events = events_until_terminal(&self.fleet.js, create.job_id, JOB_WITHIN).await?;
                let result = events.last().and_then(|e| e.result.clone()).expect("a result");
                anyhow::ensure!(result.success, "the {kind:?} job's container was not made: {events:#?}");
                let vmid = result.vmid.expect("a vmid");
                let node = create.node.clone();
                let target =
                    ContainerTarget { vmid, create_job: Some(create.job_id), hostname: Some(hostname.clone()) };
                let job = match kind {
                    Kind::Destroy => {
                        let destroy =
                            DestroyJob::new(node, DestroyTarget { create_job: Some(create.job_id), vmid: Some(vmid) });
                        self.agent_with_hooks(hooks)?;
                        submit_destroy(&self.fleet.js, &destroy).await?;
                        destroy.job_id
                    }
                    Kind::Update | Kind::GuardedUpdate => {
                        let change = ConfigChange {
                            memory: Some(768),
                            nameservers: Some(vec!["9.9.9.9".parse()?]),
                            ..Default::default()
                        };
                        let mut update = UpdateJob::new(node.clone(), target, change);
                        if kind == Kind::GuardedUpdate {
                            update.guard = Some(Guard::default());
                        }
                        self.agent_with_hooks(hooks)?;
                        submit_kind(&self.fleet.js, &node, JobKind::Update, update.job_id, &update).await?;
                        update.job_id
                    }
                    Kind::Snapshot => {
                        let snapshot = SnapshotJob::take(node.clone(), target, None);
                        self.agent_with_hooks(hooks)?;
                        submit_kind(&self.fleet.js, &node, JobKind::Snapshot, snapshot.job_id, &snapshot).await?;
                        snapshot.job_id
                    }
                    Kind::Rollback => {
                        let snapshot = SnapshotJob::take(node.clone(), target.clone(), Some("before".into()));
                        self.before(JobKind::Snapshot, snapshot.job_id, &snapshot, &target).await?;
                        let rollback = RollbackJob::new(node.clone(), target, "before".into());
                        self.agent_with_hooks(hooks)?;
                        submit_kind(&self.fleet.js, &node, JobKind::Rollback, rollback.job_id, &rollback).await?;
                        rollback.job_id
                    }
                    Kind::Backup => {
                        let backup = BackupJob::new(node.clone(), target, "local".into());
                        self.agent_with_hooks(hooks)?;
                        submit_kind(&self.fleet.js, &node, JobKind::Backup, backup.job_id, &backup).await?;
                        backup.job_id
                    }
                    Kind::Restore => {
                        let backup = BackupJob::new(node.clone(), target.clone(), "local".into());
                        self.before(JobKind::Backup, backup.job_id, &backup, &target).await?;
                        let volid = self.backups(vmid.get()).await?.pop().expect("the backup");
                        let mut restore = RestoreJob::new(node.clone(), volid);
                        restore.over = Some(target);
                        self.agent_with_hooks(hooks)?;
                        submit_kind(&self.fleet.js, &node, JobKind::Restore, restore.job_id, &restore).await?;
                        restore.job_id
                    }
                    Kind::Resize => {
                        let resize = ResizeJob::new(node.clone(), target, "rootfs", 12 << 30);
                        self.agent_with_hooks(hooks)?;
                        submit_kind(&self.fleet.js, &node, JobKind::Resize, resize.job_id, &resize).await?;
                        resize.job_id
                    }
                    Kind::Power => {
                        let power = PowerJob::new(node.clone(), target, PowerAction::Reboot);
                        self.agent_with_hooks(hooks)?;
                        submit_kind(&self.fleet.js, &node, JobKind::Power, power.job_id, &power).await?;
                        power.job_id
                    }
                    Kind::Create => unreachable!("above"),
                };
                Ok(Submitted { job, hostname, target: Some(vmid.get()) })
            }
        }
    }

    /// What a rollback or restore undoes, made first: `job` (a snapshot or backup) run to
    /// its end, then memory changed to 1024.
    async fn before(
        &self,
        kind: JobKind,
        job: JobId,
        message: &impl serde::Serialize,
        target: &ContainerTarget,
    ) -> anyhow::Result<()> {
        let (js, node) = (&self.fleet.js, pvefleet_schemas::NodeName::new("pve1")?);
        submit_kind(js, &node, kind, job, message).await?;
        let events = wait_end(js, job).await?;
        anyhow::ensure!(end_of(&events).success, "the {kind:?} before: {events:#?}");
        let change = ConfigChange { memory: Some(1024), ..Default::default() };
        let update = UpdateJob::new(node.clone(), target.clone(), change);
        submit_kind(js, &node, JobKind::Update, update.job_id, &update).await?;
        let events = wait_end(js, update.job_id).await?;
        anyhow::ensure!(end_of(&events).success, "the update before: {events:#?}");
        Ok(())
    }

    /// The volume ids of `vmid`'s backups on `local`, oldest first.
    async fn backups(&self, vmid: u32) -> anyhow::Result<Vec<String>> {
        let path = format!("/nodes/pve1/storage/local/content?content=backup&vmid={vmid}");
        let list = self.fleet.pve.api_get(&path).await?;
        let mut items: Vec<(i64, String)> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| Some((b["ctime"].as_i64()?, b["volid"].as_str()?.to_owned())))
            .collect();
        items.sort();
        Ok(items.into_iter().map(|(_, v)| v).collect())
    }

    async fn containers(&self) -> anyhow::Result<Vec<u32>> {
        self.fleet.pve.containers().await
    }

    /// How many tasks of `kind` (`vzcreate`, `vzstart`, `vzdestroy`) ran for `vmid`.
    async fn tasks(&self, vmid: u32, kind: &str) -> anyhow::Result<usize> {
        let tasks = self.fleet.pve.api_get(&format!("/nodes/pve1/tasks?vmid={vmid}&limit=500")).await?;
        Ok(tasks.as_array().into_iter().flatten().filter(|t| t["type"] == kind).count())
    }

    /// A day-two job's effect is there, and was made once.
    async fn day_two_done_once(&self, kind: Kind, vmid: u32, after: Step) -> anyhow::Result<()> {
        let cfg = self.fleet.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/config?current=1")).await?;
        match kind {
            Kind::Update => {
                assert_eq!((cfg["memory"].as_u64(), cfg["nameserver"].as_str()), (Some(768), Some("9.9.9.9")), "{cfg}");
                assert_eq!(self.tasks(vmid, "vzreboot").await?, 1, "{kind:?} after {after}: rebooted {cfg}");
            }
            Kind::Resize => {
                assert!(
                    cfg["rootfs"].as_str().is_some_and(|r| r.contains("size=12G")),
                    "{kind:?} after {after}: {cfg}"
                );
                assert_eq!(self.tasks(vmid, "resize").await?, 1, "{kind:?} after {after}: resized twice");
            }
            Kind::Power => {
                assert_eq!(self.tasks(vmid, "vzreboot").await?, 1, "{kind:?} after {after}: rebooted twice");
            }
            Kind::GuardedUpdate => {
                assert_eq!((cfg["memory"].as_u64(), cfg["nameserver"].as_str()), (Some(768), Some("9.9.9.9")), "{cfg}");
                assert_eq!(self.tasks(vmid, "vzreboot").await?, 1, "{kind:?} after {after}: rebooted twice");
                assert_eq!(self.tasks(vmid, "vzsnapshot").await?, 1, "{kind:?} after {after}: two snapshots");
                assert_eq!(self.tasks(vmid, "vzdelsnapshot").await?, 1, "{kind:?} after {after}: snapshot kept");
            }
            Kind::Snapshot => {
                assert_eq!(self.tasks(vmid, "vzsnapshot").await?, 1, "{kind:?} after {after}: two snapshots");
            }
            Kind::Rollback => {
                assert_eq!(cfg["memory"].as_u64(), Some(512), "{kind:?} after {after}: not rolled back {cfg}");
                assert_eq!(self.tasks(vmid, "vzrollback").await?, 1, "{kind:?} after {after}: rolled back twice");
            }
            Kind::Backup => {
                assert_eq!(self.tasks(vmid, "vzdump").await?, 1, "{kind:?} after {after}: backed up twice");
                assert_eq!(self.backups(vmid).await?.len(), 1, "{kind:?} after {after}: two backups");
            }
            Kind::Restore => {
                assert_eq!(cfg["memory"].as_u64(), Some(512), "{kind:?} after {after}: not restored {cfg}");
                assert_eq!(self.tasks(vmid, "vzrestore").await?, 1, "{kind:?} after {after}: restored twice");
            }
            Kind::Create | Kind::Destroy => unreachable!("not a day-two kind"),
        }
        Ok(())
    }

    /// How many times the deploy script of the job named `hostname` ran.
    fn marks(&self, hostname: &str) -> usize {
        std::fs::read_to_string(self.marks.join(hostname)).map_or(0, |t| t.lines().count())
    }
}

fn steps_of(events: &[Event]) -> Vec<Step> {
    let mut steps: Vec<Step> = events.iter().filter(|e| e.kind == EventType::Step).filter_map(|e| e.step).collect();
    steps.dedup();
    steps
}

fn end_of(events: &[Event]) -> pvefleet_schemas::JobResult {
    events.last().and_then(|e| e.result.clone()).expect("a terminal event with a result")
}

/// Every step of `kind`, failed in turn, then interrupted after in turn.
async fn prove(kind: Kind, name: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    let mut bed = Bed::start(name, ip).await?;
    // The reference: the steps a job of this kind runs, uninterrupted.
    let reference = bed.submit(kind, &[]).await?;
    let events = wait_end(&bed.fleet.js, reference.job).await?;
    anyhow::ensure!(end_of(&events).success, "{kind:?}'s reference run failed: {events:#?}");
    let steps = steps_of(&events);
    anyhow::ensure!(steps.len() >= 2, "{kind:?} ran {steps:?}");

    for &step in &steps {
        // The step fails: the job ends once, at that step, and leaves nothing of its own.
        let before = bed.containers().await?;
        let job = bed.submit(kind, &[("PVEFLEET_TEST_FAIL_IN", step)]).await?;
        let events = wait_end(&bed.fleet.js, job.job).await?;
        let end = end_of(&events);
        let error = end.error.clone().expect("failed");
        assert_eq!((error.kind, error.step), (ErrorKind::Internal, step), "{kind:?} failing {step}: {events:#?}");
        assert_eq!(end.rolled_back, kind.undone_if_failing(step), "{kind:?} failing {step}: {events:#?}");
        match kind {
            Kind::Create => {
                assert_eq!(bed.containers().await?, before, "{kind:?} failing {step} left a container");
            }
            _ => {
                // A destroy or a day-two job leaves its container (a guarded update's as it was).
                let target = job.target.expect("a target");
                assert!(bed.containers().await?.contains(&target), "{kind:?} failing {step} removed it anyway");
                if end.rolled_back {
                    let cfg = bed.fleet.pve.api_get(&format!("/nodes/pve1/lxc/{target}/config")).await?;
                    assert_eq!(cfg["memory"].as_u64(), Some(512), "{kind:?} failing {step}: not rolled back {cfg}");
                }
            }
        }

        // The agent dies right after the step; a new one resumes the job to the same end.
        let before = bed.containers().await?;
        let job = bed.submit(kind, &[("PVEFLEET_TEST_STOP_AFTER", step)]).await?;
        pvefleet_testbed::wait_until("the agent to die after the step", JOB_WITHIN, || {
            let running = bed.agent.is_running();
            async move { (!running).then_some(()) }
        })
        .await?;
        bed.agent_with_hooks(&[])?;
        let events = wait_end(&bed.fleet.js, job.job).await?;
        let end = end_of(&events);
        assert!(end.success, "{kind:?} resumed after {step}: {events:#?}");
        assert!(events.iter().any(|e| e.message.contains("resuming")), "{kind:?} after {step} was not resumed");
        assert_eq!(steps_of(&events).first(), Some(&steps[0]), "{kind:?} after {step}");
        match kind {
            Kind::Create => {
                let vmid = end.vmid.expect("a vmid").get();
                let mut now = before.clone();
                now.push(vmid);
                now.sort_unstable();
                assert_eq!(bed.containers().await?, now, "{kind:?} resumed after {step}: one container");
                assert_eq!(bed.tasks(vmid, "vzcreate").await?, 1, "{kind:?} resumed after {step}: created twice");
                assert_eq!(bed.tasks(vmid, "vzstart").await?, 1, "{kind:?} resumed after {step}: started twice");
                assert_eq!(bed.marks(&job.hostname), 1, "{kind:?} resumed after {step}: deployed twice");
            }
            Kind::Destroy => {
                let target = job.target.expect("a target");
                assert!(!bed.containers().await?.contains(&target), "{kind:?} resumed after {step}: not removed");
                assert_eq!(bed.tasks(target, "vzdestroy").await?, 1, "{kind:?} resumed after {step}: removed twice");
            }
            _ => {
                let target = job.target.expect("a target");
                assert!(bed.containers().await?.contains(&target), "{kind:?} resumed after {step}: container gone");
                bed.day_two_done_once(kind, target, step).await?;
            }
        }
    }
    drop(bed.sshd);
    bed.fleet.dir.pass();
    Ok(())
}

/// Each kind in its own bed at once (the beds share nothing but the machine).
#[tokio::test]
async fn every_step_of_every_kind_fails_cleanly_and_resumes_once() -> anyhow::Result<()> {
    let proofs = Kind::ALL.iter().enumerate().map(|(i, &kind)| {
        let name = format!("steps-{}", format!("{kind:?}").to_ascii_lowercase());
        async move { prove(kind, &name, Ipv4Addr::new(127, 0, 0, 170 + i as u8)).await }
    });
    futures::future::try_join_all(proofs).await?;
    Ok(())
}

/// A checkpoint as the previous build wrote it (with `current` and `vmid_allocated`, which
/// this build no longer keeps) still resumes its job to the same end: one container, one
/// create, one start, one deploy.
#[tokio::test]
async fn a_checkpoint_written_by_the_previous_build_still_resumes() -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut bed = Bed::start("steps-old-checkpoint", Ipv4Addr::new(127, 0, 0, 124)).await?;
    let job = bed.submit(Kind::Create, &[("PVEFLEET_TEST_STOP_AFTER", Step::Creating)]).await?;
    pvefleet_testbed::wait_until("the agent to die after creating", JOB_WITHIN, || {
        let running = bed.agent.is_running();
        async move { (!running).then_some(()) }
    })
    .await?;
    let kv = bed.fleet.js.get_key_value(pvefleet_schemas::names::JOBS_BUCKET).await?;
    let key = pvefleet_schemas::names::checkpoint_key(&pvefleet_schemas::NodeName::new("pve1")?, &job.job);
    let mut cp: serde_json::Value = serde_json::from_slice(&kv.get(&key).await?.context("the job's checkpoint")?)?;
    // The create's outputs are in it (a step that only moved the job on is not written).
    anyhow::ensure!(cp["vmid"].is_u64() && cp["upid"].as_str().is_some_and(|u| u.contains(":vzcreate:")), "{cp}");
    cp["current"] = "starting".into();
    cp["vmid_allocated"] = true.into();
    kv.put(&key, serde_json::to_vec(&cp)?.into()).await?;

    bed.agent_with_hooks(&[])?;
    let events = wait_end(&bed.fleet.js, job.job).await?;
    let end = end_of(&events);
    assert!(end.success, "{events:#?}");
    assert!(events.iter().any(|e| e.message.contains("resuming after")), "{events:#?}");
    let vmid = end.vmid.expect("a vmid").get();
    assert_eq!(Some(u64::from(vmid)), cp["vmid"].as_u64(), "the checkpoint's container, not another");
    assert_eq!(bed.containers().await?, [vmid]);
    assert_eq!(bed.tasks(vmid, "vzcreate").await?, 1, "created twice");
    assert_eq!(bed.tasks(vmid, "vzstart").await?, 1, "started twice");
    assert_eq!(bed.marks(&job.hostname), 1, "deployed twice");
    drop(bed.sshd);
    bed.fleet.dir.pass();
    Ok(())
}
