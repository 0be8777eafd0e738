//! A headless Chromium for the browser tests: Debian's `chromium` driven through its
//! `chromium-driver` (WebDriver on a free loopback port) with fantoccini, on an empty profile
//! and with Chromium's background networking off (nothing is fetched from outside).

use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::dir::TestDir;
use crate::process::Proc;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A WebDriver session; the driver and the browser die with it.
#[derive(Debug)]
pub struct Browser {
    pub client: fantoccini::Client,
    _driver: Proc,
    /// The browser's own profile dir: every Chromium process started for this session names it.
    profile: std::path::PathBuf,
}

impl Drop for Browser {
    /// A test that fails before it closes the session would leave Chromium running (the
    /// driver's death does not end it): the processes started with this profile are killed.
    fn drop(&mut self) {
        for pid in processes_mentioning(&self.profile.display().to_string()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The pids of the processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            found.push(pid);
        }
    }
    found
}

impl Browser {
    pub async fn start(dir: &TestDir) -> anyhow::Result<Self> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            anyhow::ensure!(
                std::path::Path::new(bin).is_file(),
                "{bin} is missing: install Debian's chromium and chromium-driver (`bash scripts/bootstrap` does)"
            );
        }
        // Plain HTTP on loopback; reqwest still wants a TLS provider chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = crate::free_port("127.0.0.1");
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()]);
        let driver = Proc::spawn(dir, "chromedriver", cmd)?;
        let url = format!("http://127.0.0.1:{port}");
        crate::wait_until("chromedriver to listen", Duration::from_secs(20), || {
            let status = format!("{url}/status");
            async move { reqwest::get(&status).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await?;
        let profile = dir.sub("chromium-profile");
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        });
        let serde_json::Value::Object(caps) = caps else { unreachable!("an object") };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .context("starting a headless Chromium through chromedriver")?;
        Ok(Self { client, _driver: driver, profile })
    }

    /// The browser's profile dir.
    pub fn profile(&self) -> &std::path::Path {
        &self.profile
    }

    /// The text of the element `css`, waiting up to `within` for it to say `want`.
    pub async fn wait_text(&self, css: &str, within: Duration, want: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let text = match self.client.find(fantoccini::Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if want(&text) {
                return Ok(text);
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "`{css}` still says {text:?} after {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
