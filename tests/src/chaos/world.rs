//! The real pieces of a run and the hands that hurt them: a 3-node JetStream cluster with the
//! streams at 3 replicas (`pvefleet setup --replicas 3`), one fakepve holding every node of one
//! cluster (so `/cluster/nextid` is shared and the agents race for vmids), one agent per node,
//! the recorder, and the CLI. [`World::perform`] carries out one [`Action`].

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage};
use pvefleet_schemas::names::{JobKind, job_subject};
use pvefleet_schemas::{ContainerTarget, JobId, Vmid};
use serde_json::json;
use tokio::task::JoinSet;

use super::Options;
use super::history::{CancelRun, DayTwo, Shared, Submitted};
use super::plan::{Action, JobPlan, STRANGER_VMID, Then, Via};
use crate::agent::{Agent, AgentOptions};
use crate::cli::{Pvefleet, TestDb};
use crate::fakepve::{LostAnswer, OSTEMPLATE};
use crate::process::Proc;
use crate::{FakePve, FakePveOptions, NatsCluster, TestDir, wait_until};

/// How long the harness keeps trying a submission through outages.
const SUBMIT_FOR: Duration = Duration::from_secs(120);

pub struct World {
    pub dir: TestDir,
    pub nats: NatsCluster,
    pub pve: std::sync::Arc<FakePve>,
    pub agents: Vec<Agent>,
    pub cli: Pvefleet,
    pub db: TestDb,
    /// The store, as the coordinator that submits the wire jobs records them in it.
    store: pvefleet_coordinator::store::Store,
    pub js: jetstream::Context,
    pub nodes: Vec<String>,
    recorder: Option<Proc>,
    recorder_starts: u32,
    /// Submissions and cancels run beside the plan, so an outage never holds the plan up.
    pub tasks: JoinSet<()>,
    pub history: Shared,
    opts: Options,
    /// The stranger's config digest at the start: it must be the same at the end.
    pub stranger_digest: String,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("dir", &self.dir).field("nodes", &self.nodes).finish_non_exhaustive()
    }
}

/// Task durations in PVE seconds (fakepve runs at one PVE second per real second), long
/// enough that kills land mid-task, short enough for hundreds of jobs.
fn task_secs() -> serde_json::Value {
    json!({
        "create": 1.5, "start": 0.6, "stop": 0.3, "shutdown": 0.3, "destroy": 0.5,
        "snapshot": 0.5, "delsnapshot": 0.3, "rollback": 0.8, "vzdump": 1.0, "migrate": 1.0,
    })
}

impl World {
    pub async fn start(opts: &Options, history: Shared) -> anyhow::Result<Self> {
        crate::init_tracing();
        let dir = TestDir::new(&format!("chaos-{}", opts.seed));
        let nats = NatsCluster::start(&dir).await?;
        let nodes: Vec<String> = (1..=opts.nodes).map(|i| format!("pve{i}")).collect();
        let pve = FakePve::start(&dir, FakePveOptions { nodes: nodes.clone(), ..Default::default() }).await?;
        // A container pvefleet did not make: day-two jobs aimed at it are refused, and
        // nothing may ever write to it.
        pve.make_container(&nodes[0], STRANGER_VMID, &[("hostname", "stranger"), ("tags", "theirs")]).await?;
        let stranger = pve.api_get(&format!("/nodes/{}/lxc/{STRANGER_VMID}/config", nodes[0])).await?;
        let stranger_digest = stranger["digest"].as_str().unwrap_or_default().to_owned();
        let pve = std::sync::Arc::new(pve);
        pve.time_scale(1.0).await?;
        pve.task_secs(task_secs()).await?;
        let db = TestDb::sqlite(&dir);
        let cli = Pvefleet::new(&dir, &nats.urls().join(","), &db);
        wait_until("a JetStream leader, then setup with 3 replicas", Duration::from_secs(60), || async {
            let mut args = vec!["setup", "--replicas", "3"];
            args.extend(nodes.iter().flat_map(|n| ["--node", n.as_str()]));
            cli.run(&args).await.ok().filter(|r| r.ok()).map(drop)
        })
        .await?;
        let js = jetstream::new(nats.client().await?);
        let store =
            pvefleet_coordinator::store::Store::open(&pvefleet_coordinator::store::database_url(Some(&db.url()))?)
                .await?;
        let agents = nodes
            .iter()
            .map(|node| {
                Agent::start(
                    &dir,
                    &nats.urls(),
                    &pve,
                    AgentOptions {
                        concurrency: opts.concurrency,
                        ack_wait: opts.ack_wait,
                        shutdown_grace: opts.shutdown_grace,
                        ..AgentOptions::node(node)
                    },
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut world = Self {
            dir,
            nats,
            pve,
            agents,
            cli,
            db,
            store,
            js,
            nodes,
            recorder: None,
            recorder_starts: 0,
            tasks: JoinSet::new(),
            history,
            opts: opts.clone(),
            stranger_digest,
        };
        world.start_recorder()?;
        Ok(world)
    }

    fn start_recorder(&mut self) -> anyhow::Result<()> {
        self.recorder_starts += 1;
        self.recorder = Some(self.cli.recorder(&format!("recorder-{}", self.recorder_starts))?);
        Ok(())
    }

    /// Carries out one action; submissions and cancels are started and left to run.
    pub async fn perform(&mut self, action: &Action, plan_jobs: &[JobPlan]) -> anyhow::Result<()> {
        if let Some(class) = action.class() {
            self.history.lock().expect("history").count(class);
        }
        match action {
            Action::Submit(i) => self.submit(&plan_jobs[*i]),
            Action::Stranger(k) => self.stranger(*k),
            Action::KillAgent(n) => self.agents[*n].kill(),
            Action::TermAgent(n) => {
                if self.agents[*n].is_running() {
                    self.agents[*n].proc().signal(nix::sys::signal::Signal::SIGTERM)?;
                }
            }
            Action::StartAgent(n) => {
                let agent = &mut self.agents[*n];
                if agent.is_running() {
                    // A SIGTERMed agent hands its jobs back before it exits.
                    agent.proc().wait_exit(self.opts.shutdown_grace + Duration::from_secs(5)).await?;
                }
                agent.restart()?;
            }
            Action::KillNats(m) => self.nats.kill(*m),
            Action::StartNats(m) => self.nats.restart(*m).await?,
            Action::Blackout => (0..3).for_each(|m| self.nats.kill(m)),
            Action::EndBlackout => {
                for node in &mut self.nats.nodes {
                    node.relaunch()?;
                }
                for node in &mut self.nats.nodes {
                    node.ready().await?;
                }
            }
            Action::Pve5xx { request: (method, path), times } => {
                self.pve.fail(method, path, *times, 500, "fakepve: injected failure before acting").await?;
            }
            Action::LoseAnswer { request: (method, path), drop } => {
                let how = if *drop { LostAnswer::Drop } else { LostAnswer::Error };
                self.pve.lose_answer(method, path, 1, how).await?;
            }
            Action::TaskError { task } => {
                let message = match *task {
                    "vzcreate" => "unable to create CT - injected failure",
                    "vzstart" => "startup for container failed - injected failure",
                    other => &format!("{other} failed - injected failure"),
                };
                self.pve.task_error(task, message).await?;
            }
            Action::FlakyOn => self.pve.flaky(0.04, 0.02, 2.0, self.opts.seed).await?,
            Action::FlakyOff => self.pve.flaky(0.0, 0.0, 0.0, self.opts.seed).await?,
            Action::Cancel(i) => self.cancel(&plan_jobs[*i]),
            Action::KillRecorder => drop(self.recorder.take()),
            Action::StartRecorder => self.start_recorder()?,
        }
        Ok(())
    }

    /// Every fault lifted: fakepve without faults (its task durations as at the start), every
    /// agent, NATS member and the recorder running.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        self.pve.reset().await?;
        self.pve.time_scale(1.0).await?;
        self.pve.task_secs(task_secs()).await?;
        for node in &mut self.nats.nodes {
            if !node.is_up() {
                node.relaunch()?;
            }
        }
        for node in &mut self.nats.nodes {
            node.ready().await?;
        }
        for agent in &mut self.agents {
            if !agent.is_running() {
                agent.restart()?;
            }
        }
        if self.recorder.as_mut().is_none_or(|r| r.try_wait().is_some()) {
            self.start_recorder()?;
        }
        Ok(())
    }

    fn submit(&mut self, job: &JobPlan) {
        let node = self.nodes[job.node].clone();
        let hostname = format!("chaos-{}", job.index);
        let history = self.history.clone();
        match &job.via {
            Via::Wire { twice } => {
                let mut built = crate::jobs::create_job(&node, &hostname, job.ip);
                built.container.vmid = job.vmid.map(|v| Vmid::new(v).expect("a valid vmid"));
                history.lock().expect("history").jobs.insert(
                    built.job_id,
                    Submitted { index: job.index, node: node.clone(), request_id: None, day_two: None },
                );
                let js = self.js.clone();
                let store = self.store.clone();
                let times = if *twice { 2 } else { 1 };
                let after = self.follow_up(job, &node, &hostname);
                self.tasks.spawn(async move {
                    // Recorded first, as a coordinator sharing the store does: the recorder
                    // keeps only jobs it saw queued.
                    let recorded = async {
                        // `Err` here is the job recorded before: nothing more to record.
                        let _recorded_before = store.insert_job(&built, None).await?;
                        anyhow::Ok(())
                    };
                    if let Err(e) = recorded.await {
                        history.lock().expect("history").unsubmitted.push(format!("job {}: {e:#}", built.job_id));
                        return;
                    }
                    for _ in 0..times {
                        if let Err(e) = publish(&js, &built).await {
                            history.lock().expect("history").unsubmitted.push(format!("job {}: {e:#}", built.job_id));
                            return;
                        }
                    }
                    if let Some(after) = after {
                        after.run(built.job_id).await;
                    }
                });
            }
            Via::Cli { request_id, runs } => {
                let mut args: Vec<String> = [
                    "submit",
                    "--node",
                    &node,
                    "--hostname",
                    &hostname,
                    "--ostemplate",
                    OSTEMPLATE,
                    "--ip",
                    &format!("{}/32", job.ip),
                    "--request-id",
                    request_id,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                if let Some(vmid) = job.vmid {
                    args.extend(["--vmid".into(), vmid.to_string()]);
                }
                // A repeated request runs at the same time as the first.
                for run in 0..*runs {
                    let (cli, args, history) = (self.cli.clone(), args.clone(), history.clone());
                    let (index, node, request_id) = (job.index, node.clone(), request_id.clone());
                    let after = if run == 0 { self.follow_up(job, &node, &hostname) } else { None };
                    self.tasks.spawn(async move {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        match submit_until_taken(&cli, &args).await {
                            Ok(id) => {
                                {
                                    let mut h = history.lock().expect("history");
                                    h.requests.entry(request_id.clone()).or_default().push(id);
                                    let submitted =
                                        Submitted { index, node, request_id: Some(request_id), day_two: None };
                                    h.jobs.entry(id).or_insert(submitted);
                                }
                                if let Some(after) = after {
                                    after.run(id).await;
                                }
                            }
                            Err(e) => history.lock().expect("history").unsubmitted.push(format!("{request_id}: {e:#}")),
                        }
                    });
                }
            }
        }
    }

    /// What submits `job`'s day-two job once its create has succeeded, if it has one.
    fn follow_up(&self, job: &JobPlan, node: &str, hostname: &str) -> Option<FollowUp> {
        Some(FollowUp {
            then: job.then?,
            index: job.index,
            node: node.to_owned(),
            hostname: hostname.to_owned(),
            js: self.js.clone(),
            store: self.store.clone(),
            pve: self.pve.clone(),
            history: self.history.clone(),
        })
    }

    /// An update aimed at the stranger's container by vmid (any pvefleet marker would do; it
    /// has none): it must be refused, and the container left untouched.
    fn stranger(&mut self, k: usize) {
        let node = pvefleet_schemas::NodeName::new(&self.nodes[0]).expect("a node name");
        let target =
            ContainerTarget { vmid: Vmid::new(STRANGER_VMID).expect("a vmid"), create_job: None, hostname: None };
        let change = pvefleet_schemas::ConfigChange { memory: Some(128 + k as u32), ..Default::default() };
        let job = pvefleet_schemas::DayTwoJob::Update(Box::new(pvefleet_schemas::UpdateJob::new(node, target, change)));
        let day_two = DayTwo { vmid: STRANGER_VMID, then: None };
        let submitted =
            Submitted { index: usize::MAX - k, node: job.node().to_string(), request_id: None, day_two: Some(day_two) };
        self.history.lock().expect("history").jobs.insert(job.job_id(), submitted);
        let (js, store, history) = (self.js.clone(), self.store.clone(), self.history.clone());
        self.tasks.spawn(async move {
            if let Err(e) = submit_day_two(&store, &js, &job).await {
                history.lock().expect("history").unsubmitted.push(format!("stranger job {}: {e:#}", job.job_id()));
            }
        });
    }

    fn cancel(&mut self, job: &JobPlan) {
        let known = {
            let h = self.history.lock().expect("history");
            h.jobs.iter().find(|(_, s)| s.index == job.index).map(|(id, _)| *id)
        };
        let Some(id) = known else { return };
        let (cli, history) = (self.cli.clone(), self.history.clone());
        self.tasks.spawn(async move {
            let run = cli.run(&["cancel", &id.to_string()]).await;
            let (code, said) = match run {
                Ok(r) => (r.code, format!("{}{}", r.stdout, r.stderr)),
                Err(e) => (None, format!("{e:#}")),
            };
            history.lock().expect("history").cancels.push(CancelRun { job: id, code, said });
        });
    }
}

/// A create job's day-two job, submitted (recorded, then published, as the coordinator does)
/// once the create has succeeded; none if it did not.
struct FollowUp {
    then: Then,
    index: usize,
    node: String,
    hostname: String,
    js: jetstream::Context,
    store: pvefleet_coordinator::store::Store,
    pve: std::sync::Arc<FakePve>,
    history: Shared,
}

impl FollowUp {
    async fn run(self, create: JobId) {
        if let Err(e) = self.submit(create).await {
            self.history.lock().expect("history").unsubmitted.push(format!("day-two job after {create}: {e:#}"));
        }
    }

    async fn submit(&self, create: JobId) -> anyhow::Result<()> {
        let Some(result) = self.end_of(create).await?.filter(|r| r.success) else { return Ok(()) };
        let vmid = result.vmid.context("a completed create names its vmid")?;
        let node = pvefleet_schemas::NodeName::new(&self.node)?;
        let target = ContainerTarget { vmid, create_job: Some(create), hostname: Some(self.hostname.clone()) };
        let job = match self.then {
            Then::Update { memory, concurrent_edit } => {
                let change = pvefleet_schemas::ConfigChange {
                    memory: Some(memory),
                    nameservers: Some(vec!["9.9.9.9".parse()?]),
                    ..Default::default()
                };
                let job = pvefleet_schemas::UpdateJob::new(node.clone(), target.clone(), change);
                if concurrent_edit {
                    // Another PVE user edits the description right after a read of this
                    // container's config (the update's own, often): its write must not
                    // overwrite the edit, nor fail for it.
                    let path = format!("/nodes/{node}/lxc/{vmid}/config");
                    let edit = json!({"description": "edited by another user ({n})"});
                    self.pve.edit_after("GET", &path, 1, 1, vmid.get(), edit).await?;
                }
                pvefleet_schemas::DayTwoJob::Update(Box::new(job))
            }
            Then::Resize { gib } => {
                let job =
                    pvefleet_schemas::ResizeJob::new(node.clone(), target.clone(), "rootfs", u64::from(gib) << 30);
                pvefleet_schemas::DayTwoJob::Resize(job)
            }
            Then::Power(action) => {
                let job = pvefleet_schemas::PowerJob::new(node.clone(), target.clone(), action);
                pvefleet_schemas::DayTwoJob::Power(job)
            }
            Then::Snapshot => {
                pvefleet_schemas::DayTwoJob::Snapshot(pvefleet_schemas::SnapshotJob::take(node.clone(), target, None))
            }
            Then::Rollback => {
                // A snapshot of its own first; the rollback only once it is taken.
                let snapshot = pvefleet_schemas::SnapshotJob::take(node.clone(), target.clone(), None);
                let name = snapshot.name.clone();
                self.record(snapshot.job_id, vmid, Then::Snapshot);
                let snapshot = pvefleet_schemas::DayTwoJob::Snapshot(snapshot);
                submit_day_two(&self.store, &self.js, &snapshot).await?;
                if !self.end_of(snapshot.job_id()).await?.is_some_and(|r| r.success) {
                    return Ok(());
                }
                let job = pvefleet_schemas::RollbackJob::new(node.clone(), target, name);
                pvefleet_schemas::DayTwoJob::Rollback(job)
            }
            Then::Backup => {
                let job = pvefleet_schemas::BackupJob::new(node.clone(), target, "local".into());
                pvefleet_schemas::DayTwoJob::Backup(job)
            }
            Then::Move { to } => {
                let to = pvefleet_schemas::NodeName::new(format!("pve{}", to + 1))?;
                pvefleet_schemas::DayTwoJob::Move(pvefleet_schemas::MoveJob::new(node.clone(), target, to))
            }
        };
        self.record(job.job_id(), vmid, self.then);
        submit_day_two(&self.store, &self.js, &job).await
    }

    fn record(&self, job: JobId, vmid: Vmid, then: Then) {
        let day_two = DayTwo { vmid: vmid.get(), then: Some(then) };
        let submitted =
            Submitted { index: self.index, node: self.node.clone(), request_id: None, day_two: Some(day_two) };
        self.history.lock().expect("history").jobs.insert(job, submitted);
    }

    /// How `job` ended (followed through outages).
    async fn end_of(&self, job: JobId) -> anyhow::Result<Option<pvefleet_schemas::JobResult>> {
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            match crate::jobs::events_until_terminal(&self.js, job, Duration::from_secs(60)).await {
                Ok(events) => return Ok(events.last().and_then(|e| e.result.clone())),
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_secs(1)).await,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Records a day-two job in the store and publishes it, as the coordinator does, through
/// outages.
async fn submit_day_two(
    store: &pvefleet_coordinator::store::Store,
    js: &jetstream::Context,
    job: &pvefleet_schemas::DayTwoJob,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + SUBMIT_FOR;
    loop {
        match store.insert_day_two_job(job, None).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => return Err(e),
        }
    }
    publish_kind(js, job.node(), job.subject_kind(), job.job_id(), job).await
}

/// Publishes a job as the coordinator does, through outages, with its id as the dedup id.
async fn publish(js: &jetstream::Context, job: &pvefleet_schemas::Job) -> anyhow::Result<()> {
    publish_kind(js, &job.node, JobKind::Create, job.job_id, job).await
}

/// Publishes a job of `kind`, signed once as the coordinator signs it, through outages.
async fn publish_kind(
    js: &jetstream::Context,
    node: &pvefleet_schemas::NodeName,
    kind: JobKind,
    id: JobId,
    message: &impl serde::Serialize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + SUBMIT_FOR;
    // Signed once, as the coordinator signs it: every try is the same message.
    let payload = bytes::Bytes::from(crate::trust::signed(message));
    loop {
        let sent = async {
            js.send_publish(
                job_subject(node, kind),
                PublishMessage::build().payload(payload.clone()).message_id(id.to_string()),
            )
            .await?
            .await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(10), sent).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if Instant::now() >= deadline => return Err(e),
            Err(_) if Instant::now() >= deadline => anyhow::bail!("publishing timed out"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Runs `pvefleet submit` until it exits 0 (an outage makes it exit 1; with the same
/// request id, running it again is safe), returning the job id it printed.
async fn submit_until_taken(cli: &Pvefleet, args: &[&str]) -> anyhow::Result<JobId> {
    let deadline = Instant::now() + SUBMIT_FOR;
    loop {
        let run = cli.run(args).await?;
        if run.ok() {
            return run.stdout.trim().parse().with_context(|| format!("submit printed {:?}", run.stdout));
        }
        if run.code == Some(2) || Instant::now() >= deadline {
            anyhow::bail!("pvefleet submit exited {:?}: {}", run.code, run.stderr.trim());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The job ids of the events stream's jobs that have not ended, of those in `ids`.
pub fn unfinished(events: &std::collections::BTreeMap<JobId, Vec<pvefleet_schemas::Event>>, ids: &[JobId]) -> usize {
    ids.iter().filter(|id| !events.get(id).is_some_and(|e| e.iter().any(|e| e.is_terminal()))).count()
}
