//! `pvefleet serve` in a real browser: Debian's Chromium, headless, through WebDriver. A job
//! page opened while its job runs fills in live and ends on the result without a reload; a
//! finished job's page replays it; a script's `<script>` line is text; an unknown job is a
//! 404 page; the fleet page drops an agent within three heartbeats of its stop.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use pvefleet_testbed::agent::AgentOptions;
use pvefleet_testbed::browser::Browser;
use pvefleet_testbed::cli::{Pvefleet, TestDb};
use pvefleet_testbed::fakepve::OSTEMPLATE;
use pvefleet_testbed::{Fleet, Sshd};

const XSS: &str = "<script>alert(1)</script>";
const WITHIN: Duration = Duration::from_secs(60);

/// Each log line on the page: (its stream class, its text).
async fn log_lines(browser: &Browser) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for li in browser.client.find_all(Locator::Css("#log li")).await? {
        let class = li.attr("class").await?.unwrap_or_default();
        let line = li.find(Locator::Css(".line")).await?.text().await?;
        out.push((class, line));
    }
    Ok(out)
}

#[tokio::test]
async fn a_job_page_follows_its_job_live_and_replays_it_after() -> anyhow::Result<()> {
    let ip = Ipv4Addr::new(127, 0, 0, 160);
    let bed = Fleet::start("browser-job", &["pve1"]).await?;
    let sshd = Sshd::start(&bed.dir, ip, &bed.pve.keys_dir).await?;
    let _agent =
        bed.agent_with(AgentOptions { ssh: Some((sshd.user.clone(), sshd.port)), ..AgentOptions::node("pve1") })?;
    let db = TestDb::sqlite(&bed.dir);
    let cli = Pvefleet::new(&bed.dir, &bed.nats.url(), &db);
    cli.must(&["setup"]).await?;
    let _recorder = cli.recorder("recorder")?;
    let (_serve, url) = cli.serve("serve", "127.0.0.1", &[]).await?;
    // Slow enough to watch: PVE's tasks take seconds, the script prints over two seconds.
    bed.pve.time_scale(1.0).await?;
    bed.pve.task_secs(serde_json::json!({"create": 3, "start": 2})).await?;
    // The browser is up before the job is submitted: its page must see the job from early on.
    let browser = Browser::start(&bed.dir).await?;
    browser.client.goto(&format!("{url}/jobs")).await?;
    let spec = bed.dir.path().join("lines.toml");
    std::fs::write(
        &spec,
        format!(
            "[deploy]\n[[deploy.scripts]]\nname = \"lines\"\nbody = \"for i in 1 2 3 4 5; do echo line $i; sleep 0.4; done; echo oops >&2; echo '{XSS}'\"\n"
        ),
    )?;
    let submit = cli
        .run(&[
            "submit",
            "--node",
            "pve1",
            "--hostname",
            "live-page",
            "--ostemplate",
            OSTEMPLATE,
            "--ip",
            "127.0.0.160/32",
            "--spec",
            &spec.display().to_string(),
        ])
        .await?;
    assert!(submit.ok(), "{submit:?}");
    let job = submit.stdout.trim().to_owned();
    browser.client.goto(&format!("{url}/jobs/{job}")).await?;
    // The percent rises while the page stays open: sample it until the result shows. Once
    // the script has printed its second line the page is reloaded: it shows the job again from
    // its first event and follows it to the end.
    let (mut seen, mut after_reload) = (Vec::new(), Vec::new());
    let mut reloaded = false;
    let started = Instant::now();
    let result = loop {
        let percent = browser.client.execute("return document.getElementById('percent').value", vec![]).await?;
        let percent = percent.as_f64().unwrap_or(0.0) as u32;
        let samples = if reloaded { &mut after_reload } else { &mut seen };
        if samples.last() != Some(&percent) {
            samples.push(percent);
        }
        let result = browser.client.find(Locator::Id("result")).await?.text().await?;
        if !result.is_empty() {
            break result;
        }
        if !reloaded && log_lines(&browser).await?.iter().any(|l| l.1 == "line 2") {
            browser.client.refresh().await?;
            reloaded = true;
        }
        anyhow::ensure!(started.elapsed() < WITHIN, "no result after {WITHIN:?}; percents seen {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The terminal event sets the percent and the result at once; it may have come between
    // the two reads of the last round, so read the percent once more.
    let last = browser.client.execute("return document.getElementById('percent').value", vec![]).await?;
    let last = last.as_f64().unwrap_or(0.0) as u32;
    let samples = if reloaded { &mut after_reload } else { &mut seen };
    if samples.last() != Some(&last) {
        samples.push(last);
    }
    assert!(reloaded, "the page was reloaded mid-job");
    assert!(result.starts_with("Done:") && result.contains("127.0.0.160"), "{result}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]) && seen.len() >= 3, "the percent rose step by step: {seen:?}");
    assert_eq!(after_reload.last(), Some(&100), "after the reload it went on to the end: {after_reload:?}");
    let lines = log_lines(&browser).await?;
    let stdout: Vec<&str> = lines.iter().filter(|l| l.0 == "stdout").map(|l| l.1.as_str()).collect();
    assert_eq!(stdout, ["line 1", "line 2", "line 3", "line 4", "line 5", XSS], "{lines:?}");
    assert!(lines.iter().any(|l| l.0 == "stderr" && l.1 == "oops"), "{lines:?}");
    assert!(lines.iter().any(|l| l.0 == "task" && l.1.contains("TASK OK")), "the Proxmox task logs: {lines:?}");
    let injected = browser.client.execute("return document.querySelectorAll('#log script').length", vec![]).await?;
    assert_eq!(injected, serde_json::json!(0), "the script's line is text, not markup");
    let steps = browser.client.find_all(Locator::Css("#timeline li")).await?.len();
    assert!(steps >= 5, "{steps} steps on the timeline");
    let png = browser.client.screenshot().await?;
    std::fs::write(bed.dir.path().join("job-page.png"), &png)?;
    if std::env::var_os("PVEFLEET_BLESS").is_some() {
        std::fs::write(pvefleet_testbed::tools::workspace_root().join("docs/job-page.png"), &png)?;
    }

    // Opened again after the end: the same page, replayed.
    browser.client.goto(&format!("{url}/jobs/{job}")).await?;
    let again = browser.wait_text("#result", WITHIN, |t| !t.is_empty()).await?;
    assert_eq!(again, result);
    assert_eq!(log_lines(&browser).await?, lines, "the replay shows the same log");

    browser.client.goto(&format!("{url}/jobs/01JDQ8Z3M4X6T2E9R5W7Y1K0AB")).await?;
    let h1 = browser.wait_text("h1", WITHIN, |t| !t.is_empty()).await?;
    assert_eq!(h1, "Not found");
    browser.client.clone().close().await?;
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn the_fleet_page_lists_the_agents_and_drops_a_stopped_one_within_three_beats() -> anyhow::Result<()> {
    let bed = Fleet::start("browser-fleet", &["pve1", "pve2"]).await?;
    let _a1 = bed.agent("pve1")?;
    let mut a2 = bed.agent("pve2")?;
    let db = TestDb::sqlite(&bed.dir);
    let cli = Pvefleet::new(&bed.dir, &bed.nats.url(), &db);
    cli.must(&["setup"]).await?;
    let (_serve, url) = cli.serve("serve", "127.0.0.1", &[]).await?;
    let browser = Browser::start(&bed.dir).await?;
    browser.client.goto(&format!("{url}/")).await?;
    // Read in one script: the page redraws the cards every second, so elements go stale.
    let cards = |browser: &Browser| {
        let client = browser.client.clone();
        async move {
            let names = client
                .execute(
                    "return [...document.querySelectorAll('article.node:not(.gone)')].map(e => e.dataset.node)",
                    vec![],
                )
                .await?;
            anyhow::Ok(serde_json::from_value::<Vec<String>>(names)?)
        }
    };
    let shows = |want: &'static [&'static str]| {
        let cards = &cards;
        let browser = &browser;
        move || async move { cards(browser).await.ok().filter(|c| c == want).map(|_| ()) }
    };
    pvefleet_testbed::wait_until("the fleet page to show both agents", WITHIN, shows(&["pve1", "pve2"])).await?;
    // Heartbeats are 1 s apart in the bed: gone from the page within three.
    a2.proc().signal(nix::sys::signal::Signal::SIGTERM)?;
    pvefleet_testbed::wait_until("the fleet page to drop pve2", Duration::from_secs(3), shows(&["pve1"])).await?;
    // It stays on the page, marked gone.
    let gone = browser
        .client
        .execute(
            "return [...document.querySelectorAll('article.node.gone')].map(e => [e.dataset.node, e.textContent])",
            vec![],
        )
        .await?;
    let gone: Vec<(String, String)> = serde_json::from_value(gone)?;
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0].0, "pve2");
    assert!(gone[0].1.contains("stopped beating"), "{gone:?}");
    browser.client.clone().close().await?;
    bed.dir.pass();
    Ok(())
}

/// A test that fails mid-way drops its browser without closing the session: no Chromium may
/// be left running (CI once left one).
#[tokio::test]
async fn a_browser_dropped_without_closing_its_session_leaves_no_chromium() -> anyhow::Result<()> {
    let dir = pvefleet_testbed::TestDir::new("browser-drop");
    let browser = Browser::start(&dir).await?;
    browser.client.goto("about:blank").await?;
    let profile = browser.profile().display().to_string();
    assert!(!pvefleet_testbed::browser::processes_mentioning(&profile).is_empty(), "chromium runs");
    drop(browser);
    pvefleet_testbed::wait_until("chromium to be gone", Duration::from_secs(10), || {
        let left = pvefleet_testbed::browser::processes_mentioning(&profile);
        async move { left.is_empty().then_some(()) }
    })
    .await?;
    dir.pass();
    Ok(())
}
