//! The fleet benchmark: a release-built agent against its own nats-server and fakepve at time
//! scale 0 (every Proxmox task ends at once), driven on the wire as the coordinator would and
//! followed like a watcher, with the floor measured in the same run.
//!
//! - one job at a time (N=100) and a burst (300 jobs, agent concurrency 4): dispatch (submit →
//!   first event), end-to-end (submit → terminal event), event delivery (the event's own
//!   timestamp → a subscriber; timestamps have millisecond resolution, so this is an upper
//!   bound by up to 1 ms), throughput;
//! - the agent's RSS idle and peak (/proc VmRSS, VmHWM) and CPU per job (/proc utime+stime);
//! - Proxmox API calls per job by method and path (fakepve's own count) and NATS messages per
//!   job (nats-server's `/varz` in_msgs);
//! - the floor: the same Proxmox calls made back to back by a bare reqwest client over one
//!   kept-alive TLS connection, plus the job's JetStream round trips (its events, checkpoint
//!   and reservation writes, its reads and its ack) made back to back by a bare async-nats
//!   client;
//! - the burst's floor: the same Proxmox calls per job made by 4 bare clients side by side (the
//!   agent's concurrency), half before the agent's burst and half after, with the inventory's
//!   read of each new container's config (which the agent makes a second after each job);
//! - a scale run: 1,000 jobs queued at once over 10 agents of one cluster.
//!
//! `just bench`; it prints a table, then one JSON line. `PVEFLEET_BENCH_SCALE_JOBS` changes the
//! scale run's size (0 skips it).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use futures::StreamExt as _;
use pvefleet_schemas::names::{JOBS_BUCKET, JobKind, VMIDS_BUCKET, job_subject};

/// The benchmark's agent's node's events stream.
const EVENTS_STREAM: &str = "PVEFLEET_EVENTS_pve1";
use pvefleet_schemas::{Event, EventType, JobId};
use pvefleet_testbed::agent::{Agent, AgentOptions};
use pvefleet_testbed::jobs::create_job;
use pvefleet_testbed::{FakePve, FakePveOptions, NatsServer, TestDir, wait_until};
use serde_json::{Value, json};

const SERIAL: usize = 100;
const BURST: usize = 300;
const WARMUP: usize = 5;

/// When each job was submitted, first heard of, and ended; and every event's delivery time.
#[derive(Default)]
struct Tracker {
    submitted: HashMap<JobId, Instant>,
    first: HashMap<JobId, Instant>,
    ended: HashMap<JobId, (Instant, bool)>,
    delivery_ms: Vec<f64>,
    redelivered: usize,
}

type Shared = Arc<Mutex<Tracker>>;

/// Follows every event on `subject` as a watcher would, recording into the tracker.
async fn follow(client: async_nats::Client, subject: &str, tracker: Shared) -> anyhow::Result<()> {
    let mut sub = client.subscribe(subject.to_owned()).await?;
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let now = Instant::now();
            let wall = time::OffsetDateTime::now_utc();
            let Ok(event) = Event::decode(&msg.payload) else { continue };
            let mut t = tracker.lock().expect("tracker");
            let delivered = (wall - event.timestamp.0).as_seconds_f64() * 1000.0;
            t.delivery_ms.push(delivered.max(0.0));
            t.first.entry(event.job_id).or_insert(now);
            if event.is_terminal() {
                t.ended.insert(event.job_id, (now, event.kind == EventType::Complete));
            }
            if event.kind == EventType::Warning && event.message.contains("redelivered") {
                t.redelivered += 1;
            }
        }
    });
    Ok(())
}

async fn submit(js: &jetstream::Context, job: &pvefleet_schemas::Job, tracker: &Shared) -> anyhow::Result<()> {
    tracker.lock().expect("tracker").submitted.insert(job.job_id, Instant::now());
    js.send_publish(
        job_subject(&job.node, JobKind::Create),
        // Signed as the coordinator signs: the agent checks every job's signature.
        PublishMessage::build().payload(pvefleet_testbed::trust::signed(job).into()).message_id(job.job_id.to_string()),
    )
    .await?
    .await?;
    Ok(())
}

async fn wait_ended(tracker: &Shared, ids: &[JobId], within: Duration) -> anyhow::Result<()> {
    wait_until("the jobs to end", within, || {
        let t = tracker.lock().expect("tracker");
        let done = ids.iter().all(|id| t.ended.contains_key(id));
        async move { done.then_some(()) }
    })
    .await?;
    let t = tracker.lock().expect("tracker");
    let failed = ids.iter().filter(|id| !t.ended[id].1).count();
    anyhow::ensure!(failed == 0, "{failed} jobs failed");
    Ok(())
}

use pvefleet_testbed::process::percentile;

use pvefleet_testbed::process::{cpu_ms, mem_mb};

async fn in_msgs(nats: &NatsServer) -> anyhow::Result<u64> {
    let url = format!("{}/varz", nats.monitor_url().expect("the bed's server has a monitor"));
    let v: Value = reqwest::get(url).await?.json().await?;
    v["in_msgs"].as_u64().ok_or_else(|| anyhow::anyhow!("no in_msgs in /varz"))
}

async fn last_seq(js: &jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    Ok(js.get_stream(stream).await?.info().await?.state.last_sequence)
}

/// What a serial floor run calls ([`FloorClient::new`]'s warm-up and [`FloorClient::job`]), by
/// method and path template: left out of the agent's count.
const FLOOR_CALLS: [(&str, &str); 6] = [
    ("GET", "/version"),
    ("POST", "/nodes/{node}/lxc"),
    ("GET", "/nodes/{node}/tasks/{upid}/log"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/start"),
    ("GET", "/nodes/{node}/tasks/{upid}/log"),
    ("GET", "/nodes/{node}/lxc/{vmid}/interfaces"),
];

/// A bare Proxmox client on one kept-alive TLS connection, as the floor's.
struct FloorClient {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl FloorClient {
    /// A client whose connection is made (by a `GET /version`, left out of the counts).
    async fn new(pve: &FakePve) -> anyhow::Result<Self> {
        let trust = pvefleet_agent::tls::Trust::Fingerprint(pve.fingerprint.parse()?);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(pvefleet_agent::tls::client_config(&trust)?)
            .pool_max_idle_per_host(1)
            .build()?;
        let c = Self { http, base: format!("{}/api2/json", pve.url), auth: pve.auth_header() };
        c.call(reqwest::Method::GET, "/version".into(), vec![]).await?;
        Ok(c)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: String,
        form: Vec<(&'static str, String)>,
    ) -> anyhow::Result<Value> {
        let req = self.http.request(method.clone(), format!("{}{path}", self.base)).header("Authorization", &self.auth);
        let req = if method == reqwest::Method::GET { req.query(&form) } else { req.form(&form) };
        let resp = req.send().await?;
        anyhow::ensure!(resp.status().is_success(), "{method} {path}: {}", resp.status());
        let body: Value = resp.json().await?;
        Ok(body["data"].clone())
    }

    /// One plain create's Proxmox calls, in the agent's order, back to back: what the agent
    /// needs per job once its node facts are known (the create with its description and
    /// marker, its task log, the start, its task log, the address).
    async fn job(&self, vmid: u32, with_inventory: bool) -> anyhow::Result<()> {
        use reqwest::Method;
        let upid = self
            .call(
                Method::POST,
                "/nodes/pve1/lxc".into(),
                vec![
                    ("vmid", vmid.to_string()),
                    ("hostname", format!("floor-{vmid}")),
                    ("ostemplate", pvefleet_testbed::fakepve::OSTEMPLATE.into()),
                    ("rootfs", "local-lvm:8".into()),
                    ("net0", "name=eth0,bridge=vmbr0,ip=10.9.0.1/32".into()),
                    ("unprivileged", "1".into()),
                    ("tags", format!("pvefleet-floor{vmid}")),
                    ("description", format!("Created by the floor, {vmid}")),
                ],
            )
            .await?;
        let log = vec![("start", "0".into()), ("limit", "500".into())];
        let upid = upid.as_str().unwrap_or_default().to_owned();
        self.call(Method::GET, format!("/nodes/pve1/tasks/{upid}/log"), log.clone()).await?;
        let upid = self.call(Method::POST, format!("/nodes/pve1/lxc/{vmid}/status/start"), vec![]).await?;
        let upid = upid.as_str().unwrap_or_default().to_owned();
        self.call(Method::GET, format!("/nodes/pve1/tasks/{upid}/log"), log).await?;
        self.call(Method::GET, format!("/nodes/pve1/lxc/{vmid}/interfaces"), vec![]).await?;
        if with_inventory {
            // The inventory's read of what the job left, a second after its end: off the job's
            // own path, but fakepve serves it too while a burst runs.
            self.call(Method::GET, format!("/nodes/pve1/lxc/{vmid}/config"), vec![]).await?;
        }
        Ok(())
    }
}

/// One job's Proxmox calls made back to back on a warm connection: how long they took.
async fn pve_floor(pve: &FakePve, vmid: u32) -> anyhow::Result<Duration> {
    let client = FloorClient::new(pve).await?;
    let started = Instant::now();
    client.job(vmid, false).await?;
    Ok(started.elapsed())
}

/// `jobs` jobs' Proxmox calls made by `at_once` bare clients side by side, as the agent runs
/// its jobs: how long they took. The burst's floor.
async fn pve_burst_floor(pve: &FakePve, first_vmid: u32, jobs: usize, at_once: usize) -> anyhow::Result<Duration> {
    let mut clients = Vec::new();
    for _ in 0..at_once {
        clients.push(FloorClient::new(pve).await?);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    futures::future::try_join_all(clients.iter().map(|c| {
        let next = &next;
        async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= jobs {
                    return anyhow::Ok(());
                }
                c.job(first_vmid + i as u32, true).await?;
            }
        }
    }))
    .await?;
    Ok(started.elapsed())
}

/// The median round trip of a JetStream publish and its ack, by a bare client.
async fn js_round_trip(js: &jetstream::Context) -> anyhow::Result<Duration> {
    js.create_stream(jetstream::stream::Config {
        name: "BENCH_FLOOR".into(),
        subjects: vec!["bench.floor.>".into()],
        ..Default::default()
    })
    .await?;
    let mut times = Vec::new();
    for i in 0..300 {
        let started = Instant::now();
        js.publish(format!("bench.floor.{}", i % 10), "{\"v\":1}".into()).await?.await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dir = TestDir::new("bench-fleet");
    let nats = NatsServer::start(&dir).await?;
    let pve = FakePve::start(&dir, FakePveOptions { nodes: vec!["pve1".into()], ..Default::default() }).await?;
    let client = nats.client().await?;
    let js = jetstream::new(client.clone());
    pvefleet_testbed::jobs::ensure_streams(&js, &["pve1"]).await?;
    let mut agent = Agent::start(
        &dir,
        &[nats.url()],
        &pve,
        AgentOptions {
            concurrency: 4,
            ack_wait: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            ..AgentOptions::node("pve1")
        },
    )?;
    let pid = agent.proc().pid().expect("running");
    let tracker = Shared::default();
    follow(client.clone(), "pvefleet.events.pve1.>", tracker.clone()).await?;
    let job =
        |i: usize| create_job("pve1", &format!("b{i}"), Ipv4Addr::new(10, 2, (i / 250) as u8, (i % 250) as u8 + 1));

    // Warm up (connections, the consumer), then let it settle for the idle figure.
    let mut n = 0;
    for _ in 0..WARMUP {
        let j = job(n);
        n += 1;
        submit(&js, &j, &tracker).await?;
        wait_ended(&tracker, &[j.job_id], Duration::from_secs(30)).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = mem_mb(pid, "VmRSS")?;

    // One job at a time.
    pve.reset_calls().await?;
    let (msgs0, cpu0) = (in_msgs(&nats).await?, cpu_ms(pid)?);
    let (events0, kv0, vmids0) = (
        last_seq(&js, EVENTS_STREAM).await?,
        last_seq(&js, &format!("KV_{JOBS_BUCKET}")).await?,
        last_seq(&js, &format!("KV_{VMIDS_BUCKET}")).await?,
    );
    tracker.lock().expect("tracker").delivery_ms.clear();
    let mut serial = Vec::new();
    let mut cpu_serial = 0.0;
    let mut pve_floors = Vec::new();
    for i in 0..SERIAL {
        let j = job(n);
        n += 1;
        let cpu_before = cpu_ms(pid)?;
        submit(&js, &j, &tracker).await?;
        wait_ended(&tracker, &[j.job_id], Duration::from_secs(30)).await?;
        cpu_serial += cpu_ms(pid)? - cpu_before;
        serial.push(j.job_id);
        if i % 3 == 0 {
            // The floor's Proxmox calls, under the same conditions (fakepve slows as it fills).
            pve_floors.push(pve_floor(&pve, 90_000 + i as u32).await?);
        }
    }
    let (msgs1, cpu1) = (in_msgs(&nats).await?, cpu_ms(pid)?);
    let _ = cpu1;
    let (events1, kv1, vmids1) = (
        last_seq(&js, EVENTS_STREAM).await?,
        last_seq(&js, &format!("KV_{JOBS_BUCKET}")).await?,
        last_seq(&js, &format!("KV_{VMIDS_BUCKET}")).await?,
    );
    let calls = pve.calls().await?;
    let per = |a: u64, b: u64| (b - a) as f64 / SERIAL as f64;
    let (dispatch, e2e, delivery) = {
        let t = tracker.lock().expect("tracker");
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
        let dispatch: Vec<f64> = serial.iter().map(|id| ms(t.submitted[id], t.first[id])).collect();
        let e2e: Vec<f64> = serial.iter().map(|id| ms(t.submitted[id], t.ended[id].0)).collect();
        (dispatch, e2e, t.delivery_ms.clone())
    };
    // Only the agent's own time on its jobs: its heartbeat and the floor's calls are left out.
    let _ = cpu0;
    let cpu_per_job = cpu_serial / SERIAL as f64;
    let (events_per_job, kv_per_job, vmid_writes_per_job) = (per(events0, events1), per(kv0, kv1), per(vmids0, vmids1));

    // The burst.
    let burst: Vec<_> = (0..BURST).map(|i| job(n + i)).collect();

    // The burst's floor, half before the agent's burst and half after (fakepve slows as it
    // fills, so neither goes last alone).
    let floor_before = pve_burst_floor(&pve, 70_000, BURST / 2, 4).await?;
    let cpu_b0 = cpu_ms(pid)?;
    let pve_pid = pve.pid().expect("fakepve runs");
    let pve_cpu0 = cpu_ms(pve_pid)?;
    let started = Instant::now();
    for j in &burst {
        submit(&js, j, &tracker).await?;
    }
    let ids: Vec<JobId> = burst.iter().map(|j| j.job_id).collect();
    wait_ended(&tracker, &ids, Duration::from_secs(300)).await?;
    let burst_took = {
        let t = tracker.lock().expect("tracker");
        ids.iter().map(|id| t.ended[id].0).max().expect("jobs") - started
    };
    let burst_cpu_per_job = (cpu_ms(pid)? - cpu_b0) / BURST as f64;
    // fakepve is one Python process: near 100% of a core means it sets the pace.
    let pve_busy = (cpu_ms(pve_pid)? - pve_cpu0) / (burst_took.as_secs_f64() * 1000.0);
    let rss_peak = mem_mb(pid, "VmHWM")?;
    let floor_after = pve_burst_floor(&pve, 75_000, BURST - BURST / 2, 4).await?;
    let burst_floor_jobs_s = BURST as f64 / (floor_before + floor_after).as_secs_f64();
    let redelivered = tracker.lock().expect("tracker").redelivered;

    // The floor, in the same run.
    pve_floors.sort();
    let pve_floor_ms = pve_floors[pve_floors.len() / 2].as_secs_f64() * 1000.0;
    let rtt_ms = js_round_trip(&js).await?.as_secs_f64() * 1000.0;
    // Writes (events, checkpoints, reservations), the fetch and the final ack: each one
    // JetStream round trip (a first delivery reads nothing).
    let nats_trips = events_per_job + kv_per_job + vmid_writes_per_job + 2.0;
    let floor_ms = pve_floor_ms + nats_trips * rtt_ms;
    agent.kill();

    // The scale run: 1,000 jobs queued at once over 10 agents of one cluster.
    let scale_jobs: usize =
        std::env::var("PVEFLEET_BENCH_SCALE_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let scale = if scale_jobs > 0 { Some(scale_run(&dir, scale_jobs).await?) } else { None };

    // The report.
    let ratio = |v: f64| v / floor_ms;
    let floor_runs = pve_floors.len() as u64;
    let calls_per_job: BTreeMap<String, f64> = calls
        .iter()
        .map(|(m, p, c)| {
            let floor = FLOOR_CALLS.iter().filter(|(fm, fp)| fm == m && fp == p).count() as u64 * floor_runs;
            (format!("{m} {p}"), c.saturating_sub(floor) as f64 / SERIAL as f64)
        })
        .filter(|(_, c)| *c >= 0.01)
        .collect();
    let total_calls: f64 = calls_per_job.values().sum();
    println!("fleet benchmark: release agent, nats-server, fakepve at time scale 0; floor measured in the same run");
    println!(
        "  floor per job: {floor_ms:.2} ms = Proxmox calls back to back {pve_floor_ms:.2} ms + {nats_trips:.1} JetStream round trips × {rtt_ms:.3} ms"
    );
    println!("  {:<46} {:>9} {:>9} {:>12}", "figure", "p50", "p99", "p50 / floor");
    println!(
        "  {:<46} {:>7.2}ms {:>7.2}ms {:>11.2}x",
        "one job at a time: submit → terminal event",
        percentile(&e2e, 0.5),
        percentile(&e2e, 0.99),
        ratio(percentile(&e2e, 0.5))
    );
    println!(
        "  {:<46} {:>7.2}ms {:>7.2}ms",
        "one job at a time: dispatch (submit → 1st event)",
        percentile(&dispatch, 0.5),
        percentile(&dispatch, 0.99)
    );
    println!(
        "  {:<46} {:>7.2}ms {:>7.2}ms   (ms timestamps: up to 1 ms over)",
        "event delivery (publish → a subscriber)",
        percentile(&delivery, 0.5),
        percentile(&delivery, 0.99)
    );
    println!(
        "  {:<46} {:>9.1} jobs/s  ({BURST} jobs in {:.2} s)",
        "burst of 300 jobs at concurrency 4",
        BURST as f64 / burst_took.as_secs_f64(),
        burst_took.as_secs_f64()
    );
    println!(
        "  {:<46} {:>9.1} jobs/s  (the agent's burst: {:.2}x; target ≥ 0.9x)",
        "burst floor: bare clients, 4 at a time",
        burst_floor_jobs_s,
        BURST as f64 / burst_took.as_secs_f64() / burst_floor_jobs_s
    );
    println!("  {:<46} {:>9.2} ms (serial), {:.2} ms (burst)", "agent CPU per job", cpu_per_job, burst_cpu_per_job);
    println!("  {:<46} {:>9.1} MB idle, {:.1} MB peak", "agent RSS", rss_idle, rss_peak);
    println!(
        "  {:<46} {:>9.1} (events {events_per_job:.1}, checkpoint writes {kv_per_job:.1}, vmid {vmid_writes_per_job:.1})",
        "NATS messages in per job",
        per(msgs0, msgs1)
    );
    println!("  Proxmox API calls per job: {total_calls:.1}");
    for (call, count) in &calls_per_job {
        println!("    {count:>5.2}  {call}");
    }
    if let Some(s) = &scale {
        println!(
            "  scale: {} jobs over 10 agents: {} completed in {:.1} s ({:.0} jobs/s), {} redeliveries",
            s.jobs,
            s.completed,
            s.seconds,
            s.jobs as f64 / s.seconds,
            s.redelivered
        );
    }
    if let Some(r) = scale.as_ref().map(|s| &s.rollout) {
        println!(
            "  rollout: update --select over {} containers on 10 nodes, --max-parallel 40: {:.1} s ({:.0} items/s), fakepve at {:.0}% of its core, {:.1} Proxmox calls per item",
            r.items,
            r.seconds,
            r.items as f64 / r.seconds,
            r.fakepve_core_share * 100.0,
            r.pve_calls_per_item
        );
        println!(
            "           CPU per item: agents {:.2} ms, the CLI (coordinator) {:.2} ms",
            r.agents_cpu_ms_per_item, r.cli_cpu_ms_per_item
        );
    }
    println!("  redeliveries in the serial and burst runs: {redelivered}");
    let line = json!({
        "floor_ms": floor_ms, "pve_floor_ms": pve_floor_ms, "js_rtt_ms": rtt_ms, "nats_trips_per_job": nats_trips,
        "e2e_p50_ms": percentile(&e2e, 0.5), "e2e_p99_ms": percentile(&e2e, 0.99), "e2e_p50_over_floor": ratio(percentile(&e2e, 0.5)),
        "dispatch_p50_ms": percentile(&dispatch, 0.5), "dispatch_p99_ms": percentile(&dispatch, 0.99),
        "delivery_p50_ms": percentile(&delivery, 0.5), "delivery_p99_ms": percentile(&delivery, 0.99),
        "burst_jobs_per_s": BURST as f64 / burst_took.as_secs_f64(), "burst_fakepve_core_share": pve_busy,
        "burst_floor_jobs_per_s": burst_floor_jobs_s, "burst_over_floor": BURST as f64 / burst_took.as_secs_f64() / burst_floor_jobs_s,
        "pve_calls_per_job_total": total_calls,
        "cpu_ms_per_job": cpu_per_job, "burst_cpu_ms_per_job": burst_cpu_per_job,
        "rss_idle_mb": rss_idle, "rss_peak_mb": rss_peak,
        "nats_msgs_in_per_job": per(msgs0, msgs1), "events_per_job": events_per_job,
        "pve_calls_per_job": calls_per_job, "redeliveries": redelivered,
        "scale": scale.as_ref().map(|s| json!({"jobs": s.jobs, "completed": s.completed, "seconds": s.seconds, "redeliveries": s.redelivered,
            "rollout": {"items": s.rollout.items, "seconds": s.rollout.seconds, "agents_cpu_ms_per_item": s.rollout.agents_cpu_ms_per_item,
                "cli_cpu_ms_per_item": s.rollout.cli_cpu_ms_per_item, "fakepve_core_share": s.rollout.fakepve_core_share,
                "pve_calls_per_item": s.rollout.pve_calls_per_item}})),
    });
    println!("{line}");
    dir.pass();
    Ok(())
}

struct Scale {
    jobs: usize,
    completed: usize,
    seconds: f64,
    redelivered: usize,
    rollout: Rollout,
}

/// `pvefleet update --select` over every container the scale run made.
struct Rollout {
    items: usize,
    seconds: f64,
    /// The agents' CPU (all ten) and the CLI's, per container, in ms.
    agents_cpu_ms_per_item: f64,
    cli_cpu_ms_per_item: f64,
    /// fakepve's share of its one core during the rollout.
    fakepve_core_share: f64,
    pve_calls_per_item: f64,
}

async fn scale_run(parent: &TestDir, jobs: usize) -> anyhow::Result<Scale> {
    let _ = parent;
    let dir = TestDir::new("bench-fleet-scale");
    let nodes: Vec<String> = (1..=10).map(|i| format!("pve{i}")).collect();
    let nats = NatsServer::start(&dir).await?;
    let pve = FakePve::start(&dir, FakePveOptions { nodes: nodes.clone(), ..Default::default() }).await?;
    let client = nats.client().await?;
    let js = jetstream::new(client.clone());
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    pvefleet_testbed::jobs::ensure_streams(&js, &names).await?;
    let tracker = Shared::default();
    follow(client, "pvefleet.events.>", tracker.clone()).await?;
    let all: Vec<_> = (0..jobs)
        .map(|i| {
            create_job(
                &nodes[i % nodes.len()],
                &format!("s{i}"),
                Ipv4Addr::new(10, 3, (i / 250) as u8, (i % 250) as u8 + 1),
            )
        })
        .collect();
    // Recorded in the coordinator's store, as `pvefleet submit` records them, for the rollout.
    let db = pvefleet_testbed::cli::TestDb::sqlite(&dir);
    let store =
        pvefleet_coordinator::store::Store::open(&pvefleet_coordinator::store::database_url(Some(&db.url()))?).await?;
    store.insert_jobs(&all).await?;
    let mut ids = Vec::new();
    for j in &all {
        submit(&js, j, &tracker).await?;
        ids.push(j.job_id);
    }
    let started = Instant::now();
    let mut agents = nodes
        .iter()
        .map(|n| {
            Agent::start(
                &dir,
                &[nats.url()],
                &pve,
                AgentOptions { ack_wait: Duration::from_secs(30), ..AgentOptions::node(n) },
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    wait_until("the scale run to end", Duration::from_secs(900), || {
        let t = tracker.lock().expect("tracker");
        let done = ids.iter().all(|id| t.ended.contains_key(id));
        async move { done.then_some(()) }
    })
    .await?;
    let (last, completed, redelivered) = {
        let t = tracker.lock().expect("tracker");
        let last = ids.iter().map(|id| t.ended[id].0).max().expect("jobs");
        (last, ids.iter().filter(|id| t.ended[id].1).count(), t.redelivered)
    };
    let seconds = (last - started).as_secs_f64();
    let rollout = rollout_run(&dir, &nats, &pve, &mut agents, &db, &store, jobs).await?;
    dir.pass();
    Ok(Scale { jobs, completed, seconds, redelivered, rollout })
}

/// A rollout at fleet size: `pvefleet update --select hostname=s* --memory 777 --max-parallel
/// 40` over the `items` containers the scale run made on its 10 nodes, through the CLI as an
/// operator runs it.
async fn rollout_run(
    dir: &TestDir,
    nats: &NatsServer,
    pve: &FakePve,
    agents: &mut [Agent],
    db: &pvefleet_testbed::cli::TestDb,
    store: &pvefleet_coordinator::store::Store,
    items: usize,
) -> anyhow::Result<Rollout> {
    let cli = pvefleet_testbed::cli::Pvefleet::new(dir, &nats.url(), db);
    cli.must(&["setup"]).await?;
    // The store learns how the creates ended (the rollout finds each container's create job).
    let _recorder = cli.recorder("recorder")?;
    wait_until("the store to know every create's end", Duration::from_secs(180), || async {
        (store.job_total(None, Some("succeeded")).await.ok()? >= items as u64).then_some(())
    })
    .await?;
    // Every agent has listed what it made.
    wait_until("the inventory to list every container", Duration::from_secs(180), || async {
        let run = cli.run(&["ls", "--json", "--limit", "0"]).await.ok()?;
        let rows: Vec<Value> = serde_json::from_str(&run.stdout).ok()?;
        (rows.len() >= items).then_some(())
    })
    .await?;
    let agent_pids: Vec<u32> = agents.iter_mut().filter_map(|a| a.proc().pid()).collect();
    let agents_cpu = || agent_pids.iter().map(|p| cpu_ms(*p).unwrap_or(0.0)).sum::<f64>();
    let pve_pid = pve.pid().expect("fakepve runs");
    pve.reset_calls().await?;
    let (agents0, pve0) = (agents_cpu(), cpu_ms(pve_pid)?);
    let started = Instant::now();
    let args =
        ["update", "--select", "hostname=s*", "--memory", "777", "--max-parallel", "40", "--request-id", "bench"];
    let mut child =
        cli.command(&args)?.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn()?;
    let pid = child.id().expect("the CLI runs");
    let mut stderr = child.stderr.take().expect("piped");
    let said = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await.map(|_| text)
    });
    // The CLI's CPU, read while it runs (its last read is within 50 ms of its exit).
    let mut cli_cpu = 0.0;
    let status = loop {
        if let Ok(ms) = cpu_ms(pid) {
            cli_cpu = ms;
        }
        tokio::select! {
            status = child.wait() => break status?,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let said = said.await??;
    anyhow::ensure!(
        status.success(),
        "the rollout failed: {status}: {}",
        said.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let (agents1, pve1) = (agents_cpu(), cpu_ms(pve_pid)?);
    let calls: u64 = pve.calls().await?.iter().map(|(_, _, n)| n).sum();
    Ok(Rollout {
        items,
        seconds,
        agents_cpu_ms_per_item: (agents1 - agents0) / items as f64,
        cli_cpu_ms_per_item: cli_cpu / items as f64,
        fakepve_core_share: (pve1 - pve0) / (seconds * 1000.0),
        pve_calls_per_item: calls as f64 / items as f64,
    })
}
