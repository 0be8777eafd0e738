//! `pvefleet serve` over HTTP: the pages, a job's events over SSE replayed then followed to
//! its end, escaping, a 404 for an unknown job, the token on a non-loopback address, and
//! `/metrics` read with a Prometheus text parser against the jobs run.

use std::net::Ipv4Addr;
use std::time::Duration;

use pvefleet_testbed::agent::AgentOptions;
use pvefleet_testbed::cli::{Pvefleet, TestDb};
use pvefleet_testbed::fakepve::OSTEMPLATE;
use pvefleet_testbed::{Fleet, Sshd, wait_until};

const XSS: &str = "<script>alert(1)</script>";

/// SSE frames as (event, data), read until the stream ends.
fn frames(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter_map(|frame| {
            let mut event = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                    data.push_str(v);
                }
            }
            (!event.is_empty()).then_some((event, data))
        })
        .collect()
}

#[tokio::test]
async fn the_pages_the_live_events_and_the_metrics_over_http() -> anyhow::Result<()> {
    let ip = Ipv4Addr::new(127, 0, 0, 150);
    let bed = Fleet::start("web-http", &["pve1"]).await?;
    let sshd = Sshd::start(&bed.dir, ip, &bed.pve.keys_dir).await?;
    let _agent =
        bed.agent_with(AgentOptions { ssh: Some((sshd.user.clone(), sshd.port)), ..AgentOptions::node("pve1") })?;
    let db = TestDb::sqlite(&bed.dir);
    let cli = Pvefleet::new(&bed.dir, &bed.nats.url(), &db);
    cli.must(&["setup"]).await?;
    let _recorder = cli.recorder("recorder")?;
    // Served from before the jobs: its duration histograms count the jobs that end after it
    // started.
    let (_serve, url) = cli.serve("serve", "127.0.0.1", &[]).await?;
    let http = reqwest::Client::new();
    let spec = bed.dir.path().join("xss.toml");
    std::fs::write(
        &spec,
        format!(
            "[deploy]\n[[deploy.scripts]]\nname = \"print\"\nbody = \"echo '{XSS}'; echo second >&2; echo third\"\n"
        ),
    )?;
    let submit = cli
        .run(&[
            "submit",
            "--node",
            "pve1",
            "--hostname",
            "web-page",
            "--ostemplate",
            OSTEMPLATE,
            "--ip",
            "127.0.0.150/32",
            "--spec",
            &spec.display().to_string(),
            "--watch",
        ])
        .await?;
    assert_eq!(submit.code, Some(0), "{submit:?}");
    let job = submit.stdout.lines().next().unwrap_or_default().trim().to_owned();
    wait_until("the recorder to record the job's end", Duration::from_secs(30), || async {
        let run = cli.run(&["job", &job, "--json"]).await.ok()?;
        (serde_json::from_str::<serde_json::Value>(&run.stdout).ok()?["state"] == "succeeded").then_some(())
    })
    .await?;
    // A job whose script fails (rolled back), and one queued for a node without an agent.
    let failing = bed.dir.path().join("failing.toml");
    std::fs::write(&failing, "[[deploy.scripts]]\nname = \"migrate\"\nbody = \"echo nope >&2; exit 3\"\n")?;
    let failed = cli
        .run(&[
            "submit",
            "--node",
            "pve1",
            "--hostname",
            "web-broken",
            "--ostemplate",
            OSTEMPLATE,
            "--ip",
            "127.0.0.150/32",
            "--spec",
            &failing.display().to_string(),
            "--watch",
        ])
        .await?;
    assert_eq!(failed.code, Some(1), "{failed:?}");
    let failed_job = failed.stdout.lines().next().unwrap_or_default().trim().to_owned();
    let queued =
        cli.run(&["submit", "--node", "pve9", "--hostname", "web-waiting", "--ostemplate", OSTEMPLATE]).await?;
    assert!(queued.ok(), "{queued:?}");
    wait_until("the recorder to record the failure", Duration::from_secs(30), || async {
        let run = cli.run(&["job", &failed_job, "--json"]).await.ok()?;
        (serde_json::from_str::<serde_json::Value>(&run.stdout).ok()?["state"] == "failed").then_some(())
    })
    .await?;
    let fleet = http.get(format!("{url}/")).send().await?;
    assert_eq!(fleet.status(), 200);
    let fleet = fleet.text().await?;
    assert!(fleet.contains("data-node=\"pve1\"") && fleet.contains("memory"), "{fleet}");

    let jobs = http.get(format!("{url}/jobs?state=succeeded&hostname=web")).send().await?.text().await?;
    assert!(jobs.contains(&format!("href=\"/jobs/{job}\"")), "{jobs}");
    let failures = http.get(format!("{url}/jobs?state=failed")).send().await?.text().await?;
    assert!(!failures.contains(&format!("/jobs/{job}\"")) && failures.contains(&format!("/jobs/{failed_job}\"")));
    assert!(failures.contains("1 job(s)"), "{failures}");
    let on_pve1 = http.get(format!("{url}/jobs?node=pve1")).send().await?.text().await?;
    assert!(on_pve1.contains(&format!("/jobs/{job}\"")) && !on_pve1.contains("web-waiting"), "{on_pve1}");
    let on_pve9 = http.get(format!("{url}/jobs?node=pve9")).send().await?.text().await?;
    assert!(on_pve9.contains("web-waiting") && !on_pve9.contains(&format!("/jobs/{job}\"")), "{on_pve9}");

    // The failed job's events end with its error and its rollback.
    let body = tokio::time::timeout(Duration::from_secs(20), async {
        http.get(format!("{url}/jobs/{failed_job}/events")).send().await?.text().await
    })
    .await??;
    let last: pvefleet_schemas::Event = serde_json::from_str(
        &frames(&body).iter().rev().find(|f| f.0 == "job").map(|f| f.1.clone()).unwrap_or_default(),
    )?;
    let result = last.result.expect("a terminal event");
    assert!(!result.success && result.rolled_back, "{result:?}");
    assert!(result.error.is_some_and(|e| e.message.contains("migrate")), "{body}");

    let page = http.get(format!("{url}/jobs/{job}")).send().await?;
    assert_eq!(page.status(), 200);
    let page = page.text().await?;
    assert!(page.contains("web-page") && page.contains(&format!("/jobs/{job}/events")), "{page}");
    assert!(!page.contains(XSS), "the script's text is escaped on the page: {page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");

    // The events: every one, in order, then `end`.
    let body = tokio::time::timeout(Duration::from_secs(20), async {
        http.get(format!("{url}/jobs/{job}/events")).send().await?.text().await
    })
    .await??;
    let frames = frames(&body);
    assert_eq!(frames.last().map(|f| f.0.as_str()), Some("end"), "{body}");
    let events: Vec<pvefleet_schemas::Event> =
        frames.iter().filter(|f| f.0 == "job").map(|f| serde_json::from_str(&f.1)).collect::<Result<_, _>>()?;
    pvefleet_testbed::jobs::check_event_contract(&events)?;
    let lines: Vec<(String, Option<pvefleet_schemas::LogStream>)> = events
        .iter()
        .filter(|e| e.stream.is_some_and(|s| s != pvefleet_schemas::LogStream::Task))
        .map(|e| (e.message.clone(), e.stream))
        .collect();
    // Each stream in its order (stdout and stderr are two pipes: their interleaving is not).
    let of = |stream| lines.iter().filter(|l| l.1 == Some(stream)).map(|l| l.0.as_str()).collect::<Vec<_>>();
    assert_eq!(of(pvefleet_schemas::LogStream::Stdout), [XSS, "third"]);
    assert_eq!(of(pvefleet_schemas::LogStream::Stderr), ["second"]);

    // Without a token it answers only to loopback names: a rebound DNS name gets nothing.
    let rebound = http.get(format!("{url}/jobs/{job}")).header("host", "evil.example:8080").send().await?;
    assert_eq!(rebound.status(), 421);
    let huge = http.get(format!("{url}/jobs?page=400000000000000000")).send().await?;
    assert_eq!(huge.status(), 200, "a huge page number is the last page, not a crash");
    let unknown = http.get(format!("{url}/jobs/01JDQ8Z3M4X6T2E9R5W7Y1K0AB")).send().await?;
    assert_eq!(unknown.status(), 404);
    assert!(unknown.text().await?.contains("no job"));
    let unknown_events = http.get(format!("{url}/jobs/01JDQ8Z3M4X6T2E9R5W7Y1K0AB/events")).send().await?;
    assert_eq!(unknown_events.status(), 404, "no endless stream for a job that does not exist");
    // Filters keep what was typed, encoded, in the page links.
    let odd = http.get(format!("{url}/jobs?hostname=a%26b")).send().await?.text().await?;
    assert!(odd.contains("value=\"a&amp;b\""), "{odd}");

    let metrics = http.get(format!("{url}/metrics")).send().await?.text().await?;
    let parsed = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned())))?;
    let jobs_succeeded: f64 = parsed
        .samples
        .iter()
        .filter(|s| s.metric == "pvefleet_jobs" && s.labels.get("state") == Some("succeeded"))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(jobs_succeeded, 1.0, "{metrics}");
    let sample = |metric: &str, label: Option<(&str, &str)>| -> f64 {
        parsed
            .samples
            .iter()
            .filter(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v)
                | prometheus_parse::Value::Counter(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(sample("pvefleet_jobs", Some(("state", "failed"))), 1.0, "{metrics}");
    let all = sample("pvefleet_jobs", None);
    assert!(all >= 2.0 && sample("pvefleet_jobs", Some(("kind", "create"))) == all, "by kind: {metrics}");
    assert_eq!(sample("pvefleet_queued_jobs", Some(("node", "pve9"))), 1.0, "{metrics}");
    let durations = parsed.samples.iter().find(|s| s.metric == "pvefleet_job_duration_seconds");
    let finished = match durations.map(|s| &s.value) {
        Some(prometheus_parse::Value::Histogram(buckets)) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
        other => anyhow::bail!("no job duration histogram: {other:?}\n{metrics}"),
    };
    assert_eq!(finished, 2.0, "the two finished jobs: {metrics}");
    assert!(parsed.samples.iter().any(|s| s.metric.starts_with("pvefleet_step_duration_seconds")), "{metrics}");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_server_off_loopback_needs_its_token() -> anyhow::Result<()> {
    let bed = Fleet::start("web-token", &["pve1"]).await?;
    let db = TestDb::sqlite(&bed.dir);
    let cli = Pvefleet::new(&bed.dir, &bed.nats.url(), &db);
    cli.must(&["setup"]).await?;
    let refused = cli.run(&["serve", "--listen", "0.0.0.0:0", "--insecure-http"]).await?;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("--token-file"), "{}", refused.stderr);

    let token = "a-token-of-some-length-42";
    let file = bed.dir.path().join("web-token");
    std::fs::write(&file, format!("{token}\n"))?;
    let (_serve, url) =
        cli.serve("serve", "0.0.0.0", &["--token-file", &file.display().to_string(), "--insecure-http"]).await?;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    assert_eq!(http.get(format!("{url}/")).send().await?.status(), 401);
    assert_eq!(http.get(format!("{url}/metrics")).bearer_auth("wrong-token-wrong-token").send().await?.status(), 401);
    assert_eq!(http.get(format!("{url}/jobs")).bearer_auth(token).send().await?.status(), 200);
    let link = http.get(format!("{url}/jobs?token={token}")).send().await?;
    assert_eq!(link.status(), 303, "the one-time link sets the cookie and drops the token from the URL");
    let cookie = link.headers()["set-cookie"].to_str()?.to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let with_cookie =
        http.get(format!("{url}/jobs")).header("cookie", cookie.split(';').next().unwrap()).send().await?;
    assert_eq!(with_cookie.status(), 200);
    // A kiosk's token shows; it never acts.
    let post = http.post(format!("{url}/jobs/01JDQ8Z3M4X6T2E9R5W7Y1K0AB/cancel")).bearer_auth(token).send().await?;
    assert_eq!(post.status(), 403);
    bed.dir.pass();
    Ok(())
}

/// `pvefleet serve` stops on SIGTERM (systemd's stop) as on Ctrl-C: at once, exit 0.
#[tokio::test]
async fn serve_stops_gracefully_on_sigterm() -> anyhow::Result<()> {
    let bed = Fleet::start("web-sigterm", &["pve1"]).await?;
    let db = TestDb::sqlite(&bed.dir);
    let cli = Pvefleet::new(&bed.dir, &bed.nats.url(), &db);
    cli.must(&["setup"]).await?;
    let (mut serve, _url) = cli.serve("serve", "127.0.0.1", &[]).await?;
    serve.signal(nix::sys::signal::Signal::SIGTERM)?;
    let status = serve.wait_exit(Duration::from_secs(10)).await?;
    assert!(status.success(), "{status}");
    bed.dir.pass();
    Ok(())
}

fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            _ => 0.0,
        })
        .sum()
}

/// The agent's `/metrics` (`metrics_listen`), read with a Prometheus text parser, counts what
/// it ran: one job that succeeded, one whose task failed, its Proxmox calls and its steps.
#[tokio::test]
async fn the_agents_metrics_count_the_jobs_it_ran() -> anyhow::Result<()> {
    use pvefleet_testbed::jobs::{create_job, events_until_terminal, submit};
    let bed = Fleet::start("web-agent-metrics", &["pve1"]).await?;
    let port = pvefleet_testbed::free_port("127.0.0.1");
    let _agent = bed
        .agent_with(AgentOptions { metrics_listen: Some(format!("127.0.0.1:{port}")), ..AgentOptions::node("pve1") })?;
    let good = create_job("pve1", "counted", Ipv4Addr::new(127, 0, 0, 151));
    submit(&bed.js, &good).await?;
    events_until_terminal(&bed.js, good.job_id, Duration::from_secs(60)).await?;
    bed.pve.task_error("vzcreate", "unable to create CT 101 - out of luck").await?;
    let bad = create_job("pve1", "failed", Ipv4Addr::new(127, 0, 0, 152));
    submit(&bed.js, &bad).await?;
    events_until_terminal(&bed.js, bad.job_id, Duration::from_secs(60)).await?;
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?.text().await?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
    assert_eq!(
        sample(&scrape, "pvefleet_agent_jobs_finished_total", &[("kind", "create"), ("result", "success")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&scrape, "pvefleet_agent_jobs_finished_total", &[("result", "failure"), ("error_kind", "task")]),
        1.0,
        "{text}"
    );
    assert_eq!(sample(&scrape, "pvefleet_agent_jobs_running", &[]), 0.0, "{text}");
    assert!(
        sample(&scrape, "pvefleet_agent_proxmox_calls_total", &[("method", "POST"), ("status", "200")]) >= 3.0,
        "{text}"
    );
    assert_eq!(sample(&scrape, "pvefleet_agent_step_duration_seconds", &[("step", "creating")]), 2.0, "{text}");
    bed.dir.pass();
    Ok(())
}
