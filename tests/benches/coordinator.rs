//! The coordinator at size: a store of 100,000 jobs and 2,000,000 events, on SQLite and on
//! Postgres, filled through the recorder from a generated event stream on a real nats-server,
//! then read as an operator and a dashboard would. Release binaries (`pvefleet record`,
//! `pvefleet serve`, the CLI), measured from outside.
//!
//! - recorder ingest: every event published first (10 nodes' streams, 20 events a job, one job
//!   with 1,000), then the recorder started on the backlog; events/s until the store has every
//!   job's end, and the recorder's CPU per event;
//! - `pvefleet jobs` and `pvefleet ls` (10,000 containers in the inventory): wall time of the
//!   whole command, process start included;
//! - the web view: the jobs page (plain and by node), the job page of the job with 1,000 events
//!   and its whole event feed, `/metrics`;
//! - 500 browsers (SSE) following 50 live jobs: each new event's delivery to every client, and
//!   the serve process's memory.
//!
//! `just bench`; `PVEFLEET_BENCH_JOBS` changes the store's size (100,000), `PVEFLEET_BENCH_DBS`
//! which stores (`sqlite,postgres`). It prints a table per store, then one JSON line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use pvefleet_schemas::names::event_subject;
use pvefleet_schemas::{
    ContainerSpec, DeploySpec, Event, EventType, Job, JobId, JobResult, LogStream, NodeName, Step, Timestamp, V1,
};
use pvefleet_testbed::cli::{Pvefleet, TestDb};
use pvefleet_testbed::{NatsServer, TestDir, wait_until};
use serde_json::{Value, json};

const NODES: usize = 10;
const EVENTS_PER_JOB: u64 = 20;
/// The job whose page is read: its events.
const BIG_JOB_EVENTS: u64 = 1_000;
const SSE_CLIENTS: usize = 500;
const LIVE_JOBS: usize = 50;
const INVENTORY: usize = 10_000;
const STEPS: [Step; 6] =
    [Step::Validating, Step::Creating, Step::Starting, Step::Connecting, Step::Deploying, Step::Finalizing];

use pvefleet_testbed::process::percentile;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

use pvefleet_testbed::process::{cpu_ms, mem_mb};

fn node(i: usize) -> NodeName {
    NodeName::new(format!("pve{}", i % NODES + 1)).expect("a node name")
}

fn event(job: &Job, seq: u64, last: u64) -> Event {
    let (kind, step, stream) = match seq {
        1 => (EventType::Accepted, None, None),
        s if s == last => (EventType::Complete, None, None),
        s if s % 3 == 2 => (EventType::Step, Some(STEPS[(s as usize / 3) % STEPS.len()]), None),
        _ => (EventType::Log, None, Some(LogStream::Stdout)),
    };
    let result = (kind == EventType::Complete).then(|| JobResult {
        success: true,
        job_id: job.job_id,
        node: job.node.clone(),
        vmid: pvefleet_schemas::Vmid::new(100).ok(),
        ip: "10.0.0.1".parse().ok(),
        error: None,
        rolled_back: false,
        host_key: None,
        moved_to: None,
    });
    Event {
        v: V1,
        job_id: job.job_id,
        node: job.node.clone(),
        seq,
        kind,
        step,
        percent: (seq * 100 / last).min(100) as u8,
        message: format!("line {seq} of the job's work, about as long as a real line of apt's output"),
        timestamp: Timestamp::now(),
        stream,
        result,
        job_seq: None,
    }
}

/// Publishes `events` with many acks in flight.
async fn publish_all(js: &jetstream::Context, events: impl Iterator<Item = Event>) -> anyhow::Result<u64> {
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut n = 0u64;
    for e in events {
        let ack = js.publish(event_subject(&e.node, &e.job_id), e.encode().into()).await?;
        pending.push(ack.into_future());
        n += 1;
        while pending.len() >= 4_000 {
            pending.next().await.expect("pending")?;
        }
    }
    while let Some(ack) = pending.next().await {
        ack?;
    }
    Ok(n)
}

/// Times `runs` runs of `f`, in milliseconds.
async fn timed<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        f().await?;
        times.push(ms(started.elapsed()));
    }
    Ok(times)
}

fn p50_p99(v: &[f64]) -> Value {
    json!({"p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99)})
}

/// The SSE frames of `body` as (event, data).
fn frames(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter_map(|frame| {
            let (mut event, mut data) = (String::new(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            (!event.is_empty()).then_some((event, data))
        })
        .collect()
}

/// Writes the inventory entries of `jobs[from..to]` as their agents would.
async fn fill_inventory(js: &jetstream::Context, jobs: &[Job], from: usize, to: usize) -> anyhow::Result<()> {
    let inventory = js.get_key_value(pvefleet_schemas::names::INVENTORY_BUCKET).await?;
    let mut puts = futures::stream::FuturesUnordered::new();
    for (i, job) in jobs.iter().enumerate().take(to).skip(from) {
        let vmid = pvefleet_schemas::Vmid::new(100 + (i / NODES) as u32)?;
        let entry = pvefleet_schemas::InventoryEntry {
            v: V1,
            node: job.node.clone(),
            vmid,
            hostname: job.container.hostname.clone(),
            status: "running".into(),
            tags: vec![job.job_id.marker_tag()],
            create_job: Some(job.job_id),
            markers: vec![job.job_id.marker_tag()],
            digest: "0123456789abcdef".into(),
            memory_mb: Some(1024),
            cores: Some(1),
            disk: Some("8G".into()),
            ip: Some("10.0.0.1/24".into()),
            lock: None,
            last_job: Some(job.job_id),
            applied_digest: Some("0123456789abcdef".into()),
            last_seen: Timestamp::now(),
        };
        let key = pvefleet_schemas::names::inventory_key(&job.node, vmid);
        let inventory = inventory.clone();
        puts.push(
            async move { inventory.put(key, serde_json::to_vec(&entry)?.into()).await.map_err(anyhow::Error::from) },
        );
        while puts.len() >= 1_000 {
            puts.next().await.expect("pending")?;
        }
    }
    while let Some(put) = puts.next().await {
        put?;
    }
    Ok(())
}

async fn run(which: &str, jobs: usize) -> anyhow::Result<Value> {
    let dir = TestDir::new(&format!("bench-coordinator-{which}"));
    let db = match which {
        "postgres" => TestDb::postgres("bench_coordinator")?,
        _ => TestDb::sqlite(&dir),
    };
    let nats = NatsServer::start(&dir).await?;
    let cli = Pvefleet::new(&dir, &nats.url(), &db);
    let mut setup = vec!["setup".to_owned()];
    for i in 0..NODES {
        setup.extend(["--node".to_owned(), node(i).to_string()]);
    }
    cli.must(&setup.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let client = nats.client().await?;
    let js = jetstream::new(client.clone());
    let url = pvefleet_coordinator::store::database_url(Some(&db.url()))?;
    let store = pvefleet_coordinator::store::Store::open(&url).await?;

    // The jobs, queued as a coordinator would record them.
    let started = Instant::now();
    let all: Vec<Job> = (0..jobs + LIVE_JOBS)
        .map(|i| {
            let mut spec =
                ContainerSpec::new(format!("bench-{i}"), "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst");
            spec.memory = 1024;
            Job::create(node(i), spec, DeploySpec::default())
        })
        .collect();
    for chunk in all.chunks(5_000) {
        store.insert_jobs(chunk).await?;
    }
    let (finished, live) = all.split_at(jobs);
    let queued_s = started.elapsed().as_secs_f64();

    // Their events, all published before the recorder starts: one job has 1,000, the others
    // share the rest of 20 a job; interleaved over nodes as agents would publish them.
    let big = &finished[0];
    let total_events = jobs as u64 * EVENTS_PER_JOB;
    let per_other = (total_events - BIG_JOB_EVENTS) / (jobs as u64 - 1).max(1);
    let started = Instant::now();
    let mut published = publish_all(&js, (1..=BIG_JOB_EVENTS).map(|s| event(big, s, BIG_JOB_EVENTS))).await?;
    for chunk in finished[1..].chunks(1_000) {
        let events = (1..=per_other).flat_map(|s| chunk.iter().map(move |j| event(j, s, per_other)));
        published += publish_all(&js, events).await?;
    }
    published += publish_all(&js, live.iter().map(|j| event(j, 1, 1_000))).await?;
    let publish_s = started.elapsed().as_secs_f64();

    // The recorder on the backlog.
    let mut recorder = cli.recorder("recorder")?;
    let pid = recorder.pid().expect("the recorder runs");
    let started = Instant::now();
    let cpu0 = cpu_ms(pid)?;
    wait_until("the recorder to record every job's end", Duration::from_secs(3_600), || {
        let store = store.clone();
        async move { (store.job_total(None, Some("succeeded")).await.ok()? == jobs as u64).then_some(()) }
    })
    .await?;
    let ingest_s = started.elapsed().as_secs_f64();
    let recorder_cpu_ms = cpu_ms(pid)? - cpu0;
    // The live jobs' first events too.
    wait_until("the live jobs to run", Duration::from_secs(60), || {
        let store = store.clone();
        async move { (store.job_total(None, Some("running")).await.ok()? == LIVE_JOBS as u64).then_some(()) }
    })
    .await?;
    let recorded = total_events as f64;

    // The CLI, as an operator runs it.
    let cli_jobs = timed(30, || async { cli.must(&["jobs"]).await.map(drop) }).await?;
    let cli_jobs_node =
        timed(30, || async { cli.must(&["jobs", "--node", "pve3", "--state", "succeeded"]).await.map(drop) }).await?;
    // ls over 1,000 containers (a rollout's fleet), then over 10,000.
    fill_inventory(&js, finished, 0, 1_000).await?;
    let cli_ls_1000 = timed(30, || async { cli.must(&["ls"]).await.map(drop) }).await?;
    fill_inventory(&js, finished, 1_000, INVENTORY).await?;
    let cli_ls = timed(30, || async { cli.must(&["ls"]).await.map(drop) }).await?;
    // Where ls's time goes: the bucket's walk, and the walk with every entry read.
    let kv_walk = timed(10, || async {
        pvefleet_coordinator::bus::kv_latest(&js, pvefleet_schemas::names::INVENTORY_BUCKET).await.map(drop)
    })
    .await?;
    let inventory_read = timed(10, || async { pvefleet_coordinator::inventory::read(&js).await.map(drop) }).await?;
    let cli_ls_all = timed(10, || async { cli.must(&["ls", "--limit", "0", "--json"]).await.map(drop) }).await?;
    let listed = cli.must(&["ls", "--json", "--limit", "0"]).await?;
    let listed: Value = serde_json::from_str(&listed.stdout)?;
    anyhow::ensure!(
        listed.as_array().map(Vec::len) == Some(INVENTORY),
        "ls listed {:?} containers",
        listed.as_array().map(Vec::len)
    );

    // The web view.
    let (serve, url) = cli.serve("serve", "127.0.0.1", &[]).await?;
    let serve_pid = serve.pid().expect("serve runs");
    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let resp = http.get(format!("{url}{path}")).send().await?;
            anyhow::ensure!(resp.status().is_success(), "{path}: {}", resp.status());
            resp.bytes().await?;
            Ok(())
        }
    };
    let jobs_page = timed(100, || get("/jobs".into())).await?;
    let jobs_node = timed(100, || get("/jobs?node=pve3&state=succeeded".into())).await?;
    let jobs_deep = timed(30, || get("/jobs?page=1000".into())).await?;
    let job_page = timed(100, || get(format!("/jobs/{}", big.job_id))).await?;
    let big_feed = timed(20, || async {
        let body = http.get(format!("{url}/jobs/{}/events", big.job_id)).send().await?.text().await?;
        let n = frames(&body).iter().filter(|f| f.0 == "job").count() as u64;
        anyhow::ensure!(n == BIG_JOB_EVENTS, "the feed gave {n} events");
        Ok(())
    })
    .await?;
    let metrics = timed(100, || get("/metrics".into())).await?;
    // What /metrics asks, each on its own from here: the kept counts, the jobs finished since
    // now (none), the jobs stream's subjects.
    let metrics_counts = timed(30, || async { store.job_counts().await.map(drop) }).await?;
    let now = Timestamp::now().to_string();
    let metrics_finished = timed(30, || async { store.finished_after(Some(&now), 500).await.map(drop) }).await?;
    let metrics_queue = timed(30, || async {
        let (stream, subjects) = (pvefleet_schemas::names::JOBS_STREAM, pvefleet_schemas::names::JOBS_SUBJECTS);
        pvefleet_coordinator::bus::stream_subjects(&js, stream, subjects).await.map(drop)
    })
    .await?;

    // 500 browsers following 50 live jobs, 10 each, from 25 loopback addresses (serve lets
    // one address follow 32 feeds at once).
    let rss_before = mem_mb(serve_pid, "VmRSS")?;
    type Arrivals = Arc<Mutex<Vec<(JobId, u64, Instant)>>>;
    let arrivals: Arrivals = Arc::default();
    let mut followers = Vec::new();
    for c in 0..SSE_CLIENTS {
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 1, (c / 20) as u8 + 1));
        let http = reqwest::Client::builder().local_address(ip).build()?;
        let job = live[c % LIVE_JOBS].job_id;
        let (url, arrivals) = (url.clone(), arrivals.clone());
        followers.push(tokio::spawn(async move {
            let mut resp = http.get(format!("{url}/jobs/{job}/events")).send().await?;
            anyhow::ensure!(resp.status().is_success(), "a feed: {}", resp.status());
            let mut text = String::new();
            while let Some(chunk) = resp.chunk().await? {
                let now = Instant::now();
                text.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = text.find("\n\n") {
                    let frame: String = text.drain(..end + 2).collect();
                    for (kind, data) in frames(&frame) {
                        if kind == "job"
                            && let Ok(e) = serde_json::from_str::<Event>(&data)
                        {
                            arrivals.lock().expect("arrivals").push((e.job_id, e.seq, now));
                            if e.is_terminal() {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            Ok(())
        }));
    }
    wait_until("every browser to see its job's first event", Duration::from_secs(120), || {
        let n = arrivals.lock().expect("arrivals").len();
        async move { (n >= SSE_CLIENTS).then_some(()) }
    })
    .await?;
    let rss_following = mem_mb(serve_pid, "VmRSS")?;
    // Each live job's next 20 events, one job's event every 2 ms, as 50 agents would publish.
    let mut sent: HashMap<(JobId, u64), Instant> = HashMap::new();
    for seq in 2..=21u64 {
        for j in live {
            let mut e = event(j, seq, 21);
            e.timestamp = Timestamp::now();
            sent.insert((j.job_id, seq), Instant::now());
            js.publish(event_subject(&e.node, &e.job_id), e.encode().into()).await?.await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let expected = SSE_CLIENTS * 21;
    wait_until("every browser to see every event", Duration::from_secs(120), || {
        let n = arrivals.lock().expect("arrivals").len();
        async move { (n >= expected).then_some(()) }
    })
    .await?;
    let rss_peak = mem_mb(serve_pid, "VmHWM")?;
    for f in followers {
        f.await??;
    }
    let delivery: Vec<f64> = arrivals
        .lock()
        .expect("arrivals")
        .iter()
        .filter_map(|(job, seq, at)| Some(ms(at.saturating_duration_since(*sent.get(&(*job, *seq))?))))
        .collect();
    recorder.kill();
    drop(serve);

    let figures = json!({
        "store": which, "jobs": jobs, "events": total_events, "queued_s": queued_s,
        "publish_s": publish_s, "published": published,
        "ingest_s": ingest_s, "ingest_events_per_s": recorded / ingest_s,
        "recorder_cpu_us_per_event": recorder_cpu_ms * 1000.0 / recorded,
        "cli_jobs": p50_p99(&cli_jobs), "cli_jobs_node_state": p50_p99(&cli_jobs_node), "cli_ls": p50_p99(&cli_ls), "cli_ls_1000": p50_p99(&cli_ls_1000), "cli_ls_all": p50_p99(&cli_ls_all),
        "kv_walk_10000": p50_p99(&kv_walk), "inventory_read_10000": p50_p99(&inventory_read),
        "web_jobs": p50_p99(&jobs_page), "web_jobs_node_state": p50_p99(&jobs_node), "web_jobs_page_1000": p50_p99(&jobs_deep),
        "web_job_page": p50_p99(&job_page), "web_job_feed_1000_events": p50_p99(&big_feed),
        "metrics": p50_p99(&metrics), "metrics_counts": p50_p99(&metrics_counts),
        "metrics_finished_since": p50_p99(&metrics_finished), "metrics_queue": p50_p99(&metrics_queue),
        "sse_clients": SSE_CLIENTS, "sse_deliveries": delivery.len(), "sse_delivery": p50_p99(&delivery),
        "serve_rss_mb": {"idle": rss_before, "following": rss_following, "peak": rss_peak},
    });
    let row = |name: &str, v: &Value, target: &str| {
        println!(
            "  {name:<52} {:>9.2} ms {:>9.2} ms   {target}",
            v["p50_ms"].as_f64().unwrap_or(f64::NAN),
            v["p99_ms"].as_f64().unwrap_or(f64::NAN)
        );
    };
    println!("coordinator benchmark on {which}: {jobs} jobs, {total_events} events, release binaries");
    println!(
        "  recorder ingest of the backlog: {:.0} events/s ({total_events} in {ingest_s:.1} s), {:.1} µs CPU per event   target ≥ 5,000/s on Postgres",
        recorded / ingest_s,
        recorder_cpu_ms * 1000.0 / recorded
    );
    println!("  {:<52} {:>12} {:>12}", "", "p50", "p99");
    row("pvefleet jobs (whole command)", &figures["cli_jobs"], "p99 ≤ 50 ms");
    row("pvefleet jobs --node pve3 --state succeeded", &figures["cli_jobs_node_state"], "");
    row("pvefleet ls, first page of 1,000 containers", &figures["cli_ls_1000"], "p99 ≤ 50 ms");
    row("pvefleet ls, first page of 10,000 containers", &figures["cli_ls"], "p99 ≤ 50 ms");
    row("pvefleet ls --limit 0 --json, all 10,000", &figures["cli_ls_all"], "");
    row("  of which: the bucket's walk (in process)", &figures["kv_walk_10000"], "");
    row("  of which: the walk and every entry read", &figures["inventory_read_10000"], "");
    row("web: /jobs", &figures["web_jobs"], "p99 ≤ 100 ms");
    row("web: /jobs?node=pve3&state=succeeded", &figures["web_jobs_node_state"], "");
    row("web: /jobs?page=1000", &figures["web_jobs_page_1000"], "");
    row("web: the page of a job with 1,000 events", &figures["web_job_page"], "p99 ≤ 100 ms");
    row("web: that job's whole event feed", &figures["web_job_feed_1000_events"], "p99 ≤ 100 ms");
    row("web: /metrics", &figures["metrics"], "≤ 20 ms");
    row("  its parts from here: the kept counts", &figures["metrics_counts"], "");
    row("  jobs finished since now (by the index)", &figures["metrics_finished_since"], "");
    row("  the jobs stream's subjects (NATS)", &figures["metrics_queue"], "");
    row(
        &format!("SSE: {SSE_CLIENTS} browsers on {LIVE_JOBS} live jobs, delivery"),
        &figures["sse_delivery"],
        "p99 ≤ 50 ms",
    );
    println!(
        "  serve RSS: {rss_before:.1} MB before the browsers, {rss_following:.1} MB with them, {rss_peak:.1} MB peak   target < 100 MB"
    );
    dir.pass();
    Ok(figures)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // reqwest's TLS (the bench speaks plain HTTP, but every client is built with it).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let jobs: usize = std::env::var("PVEFLEET_BENCH_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dbs = std::env::var("PVEFLEET_BENCH_DBS").unwrap_or_else(|_| "sqlite,postgres".into());
    let mut all = Vec::new();
    for which in dbs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        all.push(run(which, jobs).await?);
    }
    println!("{}", Value::Array(all));
    Ok(())
}
