//! The web view that acts: users log in, an operator creates a container from a template
//! through the form (a plan first), watches it live, cancels a job and destroys a container
//! after typing its hostname, all in a real browser; and the gate refuses what a user may not
//! do (a viewer's hand-made POST, a POST without or with a wrong CSRF token, a sixth wrong
//! password, a logged-out cookie), each refusal in the audit trail with the user's name.

use std::time::Duration;

use fantoccini::Locator;
use pvefleet_testbed::agent::Agent;
use pvefleet_testbed::browser::Browser;
use pvefleet_testbed::cli::{Pvefleet, TestDb};
use pvefleet_testbed::fakepve::OSTEMPLATE;
use pvefleet_testbed::process::Proc;
use pvefleet_testbed::{Fleet, wait_until};
use tokio::io::AsyncWriteExt as _;

const WITHIN: Duration = Duration::from_secs(60);
const ALICE: (&str, &str) = ("alice", "alice's long password");
const BOB: (&str, &str) = ("bob", "bob's long password!");

struct Bed {
    fleet: Fleet,
    cli: Pvefleet,
    _agent: Agent,
    _db: TestDb,
    _recorder: Proc,
}

/// One node and its agent, the store with a template and two users (alice operates, bob
/// views), and a recorder.
async fn bed(name: &str) -> anyhow::Result<Bed> {
    let fleet = Fleet::start(name, &["pve1"]).await?;
    let db = TestDb::sqlite(&fleet.dir);
    let cli = Pvefleet::new(&fleet.dir, &fleet.nats.url(), &db);
    cli.must(&["setup"]).await?;
    let agent = fleet.agent("pve1")?;
    let template = fleet.dir.path().join("small.toml");
    std::fs::write(
        &template,
        format!(
            "name = \"small\"\ndescription = \"a small box\"\n[container]\nostemplate = \"{OSTEMPLATE}\"\nmemory = 384\n"
        ),
    )?;
    cli.must(&["template", "add", &template.display().to_string()]).await?;
    for ((user, password), role) in [(ALICE, "operator"), (BOB, "viewer")] {
        add_user(&cli, user, role, password).await?;
    }
    let recorder = cli.recorder("recorder")?;
    Ok(Bed { fleet, cli, _agent: agent, _db: db, _recorder: recorder })
}

async fn add_user(cli: &Pvefleet, user: &str, role: &str, password: &str) -> anyhow::Result<()> {
    let mut cmd = cli.command(&["users", "add", user, "--role", role, "--password-stdin"])?;
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    child.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).await?;
    let out = child.wait_with_output().await?;
    anyhow::ensure!(out.status.success(), "users add {user}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// `serve`, signing with the bed's operator identity as the web view's own.
async fn serve(bed: &Bed, extra: &[&str]) -> anyhow::Result<(Proc, String)> {
    let identity = pvefleet_testbed::trust::operator_file(bed.fleet.dir.path())?.display().to_string();
    let mut args = vec!["--identity", identity.as_str()];
    args.extend(extra);
    bed.cli.serve("serve", "127.0.0.1", &args).await
}

async fn log_in(browser: &Browser, url: &str, (user, password): (&str, &str)) -> anyhow::Result<()> {
    browser.client.goto(&format!("{url}/login")).await?;
    browser.client.find(Locator::Id("user")).await?.send_keys(user).await?;
    browser.client.find(Locator::Id("password")).await?.send_keys(password).await?;
    browser.client.find(Locator::Id("login")).await?.click().await?;
    if let Err(e) = browser.wait_text("#whoami", WITHIN, |t| t.starts_with(user)).await {
        let source = browser.client.source().await.unwrap_or_default();
        anyhow::bail!("{e}: not logged in as {user}; the page: {source}");
    }
    Ok(())
}

async fn select(browser: &Browser, id: &str, value: &str) -> anyhow::Result<()> {
    let css = format!("#{id} option[value='{value}']");
    browser.client.find(Locator::Css(&css)).await?.click().await?;
    Ok(())
}

async fn type_into(browser: &Browser, id: &str, text: &str) -> anyhow::Result<()> {
    let field = browser.client.find(Locator::Id(id)).await?;
    field.clear().await?;
    field.send_keys(text).await?;
    Ok(())
}

async fn disabled(browser: &Browser, id: &str) -> anyhow::Result<bool> {
    Ok(browser.client.find(Locator::Id(id)).await?.attr("disabled").await?.is_some())
}

/// The job id of the job page the browser is on, once a click has led it there.
async fn job_on_page(browser: &Browser) -> anyhow::Result<String> {
    wait_until("a job's page", WITHIN, || async {
        let url = browser.client.current_url().await.ok()?;
        let id = url.path().strip_prefix("/jobs/")?.to_owned();
        (id.len() == 26).then_some(id)
    })
    .await
}

/// Clicks `button` (a CSS selector), follows the browser to the job's page it leads to, waits
/// for the job to end and says it succeeded; returns the job's id.
async fn done_from(browser: &Browser, button: &str, what: &str) -> anyhow::Result<String> {
    browser.client.find(Locator::Css(button)).await?.click().await?;
    let job = job_on_page(browser).await?;
    let result = browser.wait_text("#result", WITHIN, |t| !t.is_empty()).await?;
    anyhow::ensure!(result.starts_with("Done:"), "{what}: {result}");
    Ok(job)
}

#[tokio::test]
async fn an_operator_creates_from_a_template_watches_cancels_and_destroys_in_the_browser() -> anyhow::Result<()> {
    let bed = bed("dash-operator").await?;
    let (_serve, url) = serve(&bed, &[]).await?;
    let browser = Browser::start(&bed.fleet.dir).await?;

    // Not logged in: any page leads to the login.
    browser.client.goto(&format!("{url}/new")).await?;
    browser.wait_text("h1", WITHIN, |t| t == "Log in").await?;
    log_in(&browser, &url, ALICE).await?;

    // The form: Create stays disabled until a plan of these values passes.
    browser.client.goto(&format!("{url}/new")).await?;
    select(&browser, "template", "small").await?;
    type_into(&browser, "hostname", "slow-web").await?;
    select(&browser, "node", "pve1").await?;
    type_into(&browser, "ip", "127.0.0.171/32").await?;
    assert!(disabled(&browser, "create").await?, "Create is enabled before any plan");
    // A bad value: the CLI's own error, beside its field, and nothing submitted.
    type_into(&browser, "memory", "0").await?;
    browser.client.find(Locator::Id("plan")).await?.click().await?;
    let error = browser.wait_text("#memory-error", WITHIN, |t| !t.is_empty()).await?;
    assert!(error.contains("memory"), "{error}");
    assert!(disabled(&browser, "create").await?);
    type_into(&browser, "memory", "").await?;
    browser.client.find(Locator::Id("plan")).await?.click().await?;
    browser.wait_text("#plan-result h2", WITHIN, |t| t.contains("every check passes")).await?;
    let plan = browser.client.find(Locator::Css("#plan-result pre")).await?.text().await?;
    assert!(plan.contains("POST /nodes/pve1/lxc") && plan.contains("memory=384"), "the template's memory: {plan}");
    assert!(!disabled(&browser, "create").await?, "Create is enabled once the plan passed");
    let png = browser.client.screenshot().await?;
    std::fs::write(bed.fleet.dir.path().join("new-container.png"), &png)?;
    if std::env::var_os("PVEFLEET_BLESS").is_some() {
        std::fs::write(pvefleet_testbed::tools::workspace_root().join("docs/new-container.png"), &png)?;
    }

    // A slow create, cancelled from its page.
    bed.fleet.pve.time_scale(1.0).await?;
    bed.fleet.pve.task_secs(serde_json::json!({"create": 30})).await?;
    type_into(&browser, "password", "a root password").await?;
    browser.client.find(Locator::Id("create")).await?.click().await?;
    browser.wait_text("#step", WITHIN, |t| t.contains("creating")).await?;
    let slow = job_on_page(&browser).await?;
    browser.client.find(Locator::Id("cancel")).await?.click().await?;
    let result = browser.wait_text("#result", WITHIN, |t| !t.is_empty()).await?;
    assert!(result.to_lowercase().contains("cancel"), "{result}");
    assert_eq!(job_on_page(&browser).await?, slow, "back on the job's page");

    // A create that completes, watched without a reload.
    bed.fleet.pve.task_secs(serde_json::json!({"create": 2})).await?;
    browser.client.goto(&format!("{url}/new")).await?;
    select(&browser, "template", "small").await?;
    type_into(&browser, "hostname", "from-web").await?;
    select(&browser, "node", "pve1").await?;
    type_into(&browser, "ip", "127.0.0.172/32").await?;
    browser.client.find(Locator::Id("plan")).await?.click().await?;
    browser.wait_text("#plan-result h2", WITHIN, |t| t.contains("every check passes")).await?;
    browser.client.find(Locator::Id("create")).await?.click().await?;
    let made = job_on_page(&browser).await?;
    let result = browser.wait_text("#result", WITHIN, |t| !t.is_empty()).await?;
    assert!(result.starts_with("Done:") && result.contains("127.0.0.172"), "{result}");
    assert!(browser.client.find(Locator::Id("cancel")).await.is_err(), "an ended job offers no cancel");
    let png = browser.client.screenshot().await?;
    std::fs::write(bed.fleet.dir.path().join("job-page-acting.png"), &png)?;
    if std::env::var_os("PVEFLEET_BLESS").is_some() {
        std::fs::write(pvefleet_testbed::tools::workspace_root().join("docs/job-page-acting.png"), &png)?;
    }
    let vmid = wait_until("the container in PVE", WITHIN, || async {
        bed.fleet.pve.containers().await.ok()?.first().copied()
    })
    .await?;
    let config = bed.fleet.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/config")).await?;
    assert_eq!(config["memory"].as_u64(), Some(384), "{config}");

    // Its container's page: destroy only after typing its hostname.
    wait_until("the container in the inventory", WITHIN, || async {
        let ls = bed.cli.run(&["ls", "--json"]).await.ok()?;
        ls.stdout.contains("from-web").then_some(())
    })
    .await?;
    // Its page shows its last job's progress (replayed), and its day-two actions run as jobs.
    browser.client.goto(&format!("{url}/containers/pve1/{vmid}")).await?;
    let last = browser.wait_text("#result", WITHIN, |t| !t.is_empty()).await?;
    assert!(last.starts_with("Done:"), "{last}");
    type_into(&browser, "update-memory", "512").await?;
    let update = done_from(&browser, "#update", "the update").await?;
    let config = bed.fleet.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/config")).await?;
    assert_eq!(config["memory"].as_u64(), Some(512), "{config}");
    browser.client.goto(&format!("{url}/containers/pve1/{vmid}")).await?;
    type_into(&browser, "resize-size", "12G").await?;
    let resize = done_from(&browser, "#resize", "the resize").await?;
    let config = bed.fleet.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/config")).await?;
    assert!(config["rootfs"].as_str().is_some_and(|r| r.contains("size=12G")), "{config}");
    browser.client.goto(&format!("{url}/containers/pve1/{vmid}")).await?;
    let reboot = done_from(&browser, "#reboot", "the reboot").await?;
    browser.client.goto(&format!("{url}/containers/pve1/{vmid}")).await?;
    type_into(&browser, "snapshot-name", "before-web").await?;
    let snapshot = done_from(&browser, "#snapshot", "the snapshot").await?;
    let snapshots = bed.fleet.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/snapshot")).await?;
    assert!(snapshots.to_string().contains("before-web"), "{snapshots}");
    // A backup, then its list beside the snapshots': delete the snapshot, restore the backup as
    // a new container.
    browser.client.goto(&format!("{url}/containers/pve1/{vmid}")).await?;
    let backup = done_from(&browser, "#backup", "the backup").await?;
    browser.client.goto(&format!("{url}/containers/pve1/{vmid}/keeping")).await?;
    browser.wait_text("#snapshots", WITHIN, |t| t.contains("before-web")).await?;
    browser.wait_text("#backups", WITHIN, |t| t.contains("vzdump-lxc")).await?;
    let deleted = done_from(&browser, "tr[data-snapshot='before-web'] button.delete", "the snapshot's delete").await?;
    let snapshots = bed.fleet.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/snapshot")).await?;
    assert!(!snapshots.to_string().contains("before-web"), "{snapshots}");
    browser.client.goto(&format!("{url}/containers/pve1/{vmid}/keeping")).await?;
    let restore_form = browser.client.find(Locator::Css("#backups tr input[name='hostname']")).await?;
    restore_form.send_keys("restored-web").await?;
    let restored = done_from(&browser, "#backups tr button.restore-new", "the restore").await?;
    assert_eq!(bed.fleet.pve.containers().await?.len(), 2, "the restored one beside it");
    browser.client.goto(&format!("{url}/containers/pve1/{vmid}")).await?;
    type_into(&browser, "confirm", "from-wep").await?;
    browser.client.find(Locator::Id("destroy")).await?.click().await?;
    let refused = browser.wait_text("#action-error", WITHIN, |t| !t.is_empty()).await?;
    assert!(refused.contains("from-web"), "{refused}");
    assert!(bed.fleet.pve.containers().await?.contains(&vmid), "nothing destroyed");
    browser.client.goto(&format!("{url}/containers/pve1/{vmid}")).await?;
    type_into(&browser, "confirm", "from-web").await?;
    browser.client.find(Locator::Id("destroy")).await?.click().await?;
    let destroy = job_on_page(&browser).await?;
    assert_ne!(destroy, made);
    let result = browser.wait_text("#result", WITHIN, |t| !t.is_empty()).await?;
    assert!(result.starts_with("Done:"), "{result}");
    assert!(!bed.fleet.pve.containers().await?.contains(&vmid), "destroyed");

    // The cancelled job, tried again from its page: a new job, linked to it.
    browser.client.goto(&format!("{url}/jobs/{slow}")).await?;
    browser.client.find(Locator::Id("retry")).await?.click().await?;
    let retried = wait_until("the retry's page", WITHIN, || async {
        let url = browser.client.current_url().await.ok()?;
        let id = url.path().strip_prefix("/jobs/")?.to_owned();
        (id.len() == 26 && id != slow).then_some(id)
    })
    .await?;
    let result = browser.wait_text("#result", WITHIN, |t| !t.is_empty()).await?;
    let error = browser.client.find(Locator::Id("action-error")).await.is_ok();
    assert!(result.starts_with("Done:") && !error, "the retry: {result}");
    let shown = bed.cli.must(&["job", &retried, "--json"]).await?;
    assert!(shown.stdout.contains(&slow), "linked to the cancelled job: {}", shown.stdout);

    // The agents' audit records name alice beside the web view's key, and so does the page.
    let audit = wait_until("alice's create and destroy in the audit trail", WITHIN, || async {
        let run = bed.cli.run(&["audit", "--json"]).await.ok()?;
        let records: Vec<serde_json::Value> = run.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let by_alice = |job: &str| records.iter().any(|r| r["job_id"] == job && r["user"] == "alice");
        [&made, &destroy, &slow, &update, &resize, &reboot, &snapshot, &backup, &deleted, &restored]
            .into_iter()
            .all(|j| by_alice(j))
            .then_some(records)
    })
    .await?;
    assert!(audit.iter().any(|r| r["action"] == "web /login" && r["user"] == "alice"), "the login: {audit:#?}");
    browser.client.goto(&format!("{url}/audit")).await?;
    let users = browser.wait_text("#audit", WITHIN, |t| t.contains("alice")).await?;
    assert!(users.contains(&made), "{users}");

    // Logged out, the session is gone: every page leads to the login again.
    browser.client.find(Locator::Id("logout")).await?.click().await?;
    browser.wait_text("h1", WITHIN, |t| t == "Log in").await?;
    browser.client.goto(&format!("{url}/jobs/{made}")).await?;
    browser.wait_text("h1", WITHIN, |t| t == "Log in").await?;
    // A viewer sees everything and no action.
    log_in(&browser, &url, BOB).await?;
    browser.client.goto(&format!("{url}/jobs/{slow}")).await?;
    browser.wait_text("#result", WITHIN, |t| !t.is_empty()).await?;
    for id in ["actions", "retry", "cancel", "new-link"] {
        assert!(browser.client.find(Locator::Id(id)).await.is_err(), "a viewer sees #{id}");
    }
    browser.client.goto(&format!("{url}/new")).await?;
    assert!(disabled(&browser, "plan").await? && disabled(&browser, "create").await?, "a viewer's form acts not");
    browser.client.clone().close().await?;
    bed.fleet.dir.pass();
    Ok(())
}

/// A client of the web view by hand, as a script (or an attacker) would be: no browser.
struct Client {
    http: reqwest::Client,
    url: String,
}

/// What a login gave: the session cookie (`name=value`), the whole Set-Cookie line, the CSRF
/// token of its forms.
struct Session {
    cookie: String,
    set_cookie: String,
    csrf: String,
}

fn hidden(page: &str, name: &str) -> Option<String> {
    let at = page.find(&format!(r#"name="{name}" value=""#))?;
    let rest = &page[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

impl Client {
    fn new(url: &str, ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = ca {
            http = http.tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(ca)?)?]);
        }
        Ok(Self { http: http.build()?, url: url.to_owned() })
    }

    /// Logs in; the answer's status and, on success, the session.
    async fn log_in(&self, (user, password): (&str, &str)) -> anyhow::Result<(u16, String, Option<Session>)> {
        let form = self.http.get(format!("{}/login", self.url)).send().await?;
        let nonce_cookie = form.headers()["set-cookie"].to_str()?.split(';').next().unwrap_or_default().to_owned();
        let page = form.text().await?;
        let nonce = hidden(&page, "nonce").expect("a nonce in the login form");
        let answer = self
            .http
            .post(format!("{}/login", self.url))
            .header("cookie", nonce_cookie)
            .form(&[("user", user), ("password", password), ("nonce", &nonce), ("next", "/jobs")])
            .send()
            .await?;
        let status = answer.status().as_u16();
        let set_cookie = answer
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("pvefleet_session="))
            .map(str::to_owned);
        let body = answer.text().await?;
        let Some(set_cookie) = set_cookie else { return Ok((status, body, None)) };
        let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
        let page = self.http.get(format!("{}/jobs", self.url)).header("cookie", &cookie).send().await?.text().await?;
        let csrf = hidden(&page, "csrf").expect("a CSRF token in the page's forms");
        Ok((status, body, Some(Session { cookie, set_cookie, csrf })))
    }

    async fn post(&self, path: &str, cookie: &str, form: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
        let answer = self.http.post(format!("{}{path}", self.url)).header("cookie", cookie).form(form).send().await?;
        Ok((answer.status().as_u16(), answer.text().await?))
    }

    async fn get(&self, path: &str, cookie: &str) -> anyhow::Result<(u16, String)> {
        let answer = self.http.get(format!("{}{path}", self.url)).header("cookie", cookie).send().await?;
        Ok((answer.status().as_u16(), answer.text().await?))
    }
}

#[tokio::test]
async fn the_gate_refuses_what_a_user_may_not_do_and_audits_it() -> anyhow::Result<()> {
    let bed = bed("dash-gate").await?;
    add_user(&bed.cli, "carol", "operator", "carol's long password").await?;
    // A token beside the users: it shows (a Prometheus scrape), it never acts.
    let token = "a-scraper-token-of-some-length";
    let token_file = bed.fleet.dir.path().join("token");
    std::fs::write(&token_file, token)?;
    let (_serve, url) = serve(&bed, &["--token-file", &token_file.display().to_string()]).await?;
    let web = Client::new(&url, None)?;
    let scrape = web.http.get(format!("{url}/metrics")).bearer_auth(token).send().await?;
    assert_eq!(scrape.status(), 200);
    let wrong = web.http.get(format!("{url}/metrics")).bearer_auth("not-the-token-not-the-token").send().await?;
    assert_eq!(wrong.status(), 401);
    let post = web.http.post(format!("{url}/jobs/01JDQ8Z3M4X6T2E9R5W7Y1K0AB/cancel")).bearer_auth(token).send().await?;
    assert_eq!(post.status(), 403, "a token never acts");
    let made = bed
        .cli
        .must(&[
            "submit",
            "--node",
            "pve1",
            "--template",
            "small",
            "--hostname",
            "gate",
            "--ip",
            "127.0.0.173/32",
            "--watch",
        ])
        .await?;
    let job = made.stdout.lines().next().unwrap_or_default().trim().to_owned();
    let vmid = wait_until("the container in the inventory", WITHIN, || async {
        let ls = bed.cli.run(&["ls", "--json"]).await.ok()?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&ls.stdout).ok()?;
        rows.first()?["vmid"].as_u64()
    })
    .await?;

    // Without a session: the login, for a page; 401 for a POST.
    let (status, _) = web.get("/jobs", "").await?;
    assert_eq!(status, 303);
    let (status, _) = web.post(&format!("/containers/pve1/{vmid}/reboot"), "", &[]).await?;
    assert_eq!(status, 401);

    // A viewer sees no action, and a hand-made POST is refused (403) and audited.
    let (status, _, bob) = web.log_in(BOB).await?;
    let bob = bob.expect("bob logs in");
    assert_eq!(status, 303);
    assert!(bob.set_cookie.contains("HttpOnly") && bob.set_cookie.contains("SameSite=Strict"), "{}", bob.set_cookie);
    assert!(!bob.set_cookie.contains("Secure"), "plain HTTP on loopback: {}", bob.set_cookie);
    let (_, page) = web.get(&format!("/jobs/{job}"), &bob.cookie).await?;
    assert!(page.contains("bob (viewer)") && !page.contains(r#"id="actions""#), "no action for a viewer");
    let (_, page) = web.get(&format!("/containers/pve1/{vmid}"), &bob.cookie).await?;
    assert!(!page.contains(r#"id="reboot""#), "no reboot button for a viewer");
    let (status, page) =
        web.post(&format!("/containers/pve1/{vmid}/reboot"), &bob.cookie, &[("csrf", &bob.csrf)]).await?;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("bob is a viewer"), "{page}");

    // An operator's POST without its CSRF token, or with another's, is refused.
    let (_, _, alice) = web.log_in(ALICE).await?;
    let alice = alice.expect("alice logs in");
    let reboot = format!("/containers/pve1/{vmid}/reboot");
    assert_eq!(web.post(&reboot, &alice.cookie, &[]).await?.0, 403);
    assert_eq!(web.post(&reboot, &alice.cookie, &[("csrf", &bob.csrf)]).await?.0, 403);
    assert_eq!(web.post(&reboot, &alice.cookie, &[("csrf", "not-the-token")]).await?.0, 403);
    // With it, the reboot is a job, signed for alice.
    let (status, _) = web.post(&reboot, &alice.cookie, &[("csrf", &alice.csrf)]).await?;
    assert_eq!(status, 303, "the reboot's job page");
    // A GET never acts.
    assert_eq!(web.get(&reboot, &alice.cookie).await?.0, 405);
    // A value that would pass for a flag of the verb run for her is refused, not run.
    let rollback = format!("/containers/pve1/{vmid}/rollback");
    let (status, page) =
        web.post(&rollback, &alice.cookie, &[("csrf", &alice.csrf), ("name", "--acting-user=bob")]).await?;
    assert!(status == 422 && page.contains("may not begin with"), "{status} {page}");
    // Never in a frame, nothing but this site's own script.
    let answer = web.http.get(format!("{url}/jobs")).header("cookie", &alice.cookie).send().await?;
    assert_eq!(answer.headers()["x-frame-options"], "DENY");
    assert!(answer.headers()["content-security-policy"].to_str()?.contains("frame-ancestors 'none'"));

    // Five wrong passwords lock the user, even against the right one, for a while.
    for _ in 0..4 {
        let (status, _, none) = web.log_in(("carol", "not carol's password")).await?;
        assert!(status == 401 && none.is_none());
    }
    let (status, body, _) = web.log_in(("carol", "not carol's password")).await?;
    assert_eq!(status, 429, "the fifth: {body}");
    let (status, body, none) = web.log_in(("carol", "carol's long password")).await?;
    assert!(status == 429 && none.is_none() && body.contains("locked until"), "{status} {body}");
    let users = bed.cli.must(&["users", "list"]).await?;
    assert!(users.stdout.contains("locked until"), "{}", users.stdout);

    // A logged-out cookie opens nothing any more.
    let (status, _) = web.post("/logout", &alice.cookie, &[("csrf", &alice.csrf)]).await?;
    assert_eq!(status, 303);
    assert_eq!(web.get("/jobs", &alice.cookie).await?.0, 303, "back to the login");
    assert_eq!(web.post(&reboot, &alice.cookie, &[("csrf", &alice.csrf)]).await?.0, 401);
    // Disabling a user ends their sessions at once.
    bed.cli.must(&["users", "disable", "bob"]).await?;
    assert_eq!(web.get("/jobs", &bob.cookie).await?.0, 303);

    // The trail names the user for each decision: bob's refusal, the CSRF refusals, the
    // reboot signed for alice.
    let records = wait_until("the refusals and the reboot in the audit trail", WITHIN, || async {
        let run = bed.cli.run(&["audit", "--json"]).await.ok()?;
        let records: Vec<serde_json::Value> = run.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let role = records.iter().any(|r| r["user"] == "bob" && r["rule"] == "role" && r["decision"] == "refused");
        let csrf = records.iter().filter(|r| r["user"] == "alice" && r["rule"] == "csrf").count() == 3;
        let reboot =
            records.iter().any(|r| r["action"] == "power" && r["user"] == "alice" && r["decision"] == "accepted");
        let locked = records.iter().any(|r| r["user"] == "carol" && r["rule"] == "locked");
        (role && csrf && reboot && locked).then_some(records)
    })
    .await?;
    assert!(records.iter().all(|r| r["user"] != "bob" || r["decision"] == "refused" || r["action"] == "web /login"));
    bed.fleet.dir.pass();
    Ok(())
}

#[tokio::test]
async fn off_loopback_serve_needs_tls_and_a_login_and_its_cookies_are_secure() -> anyhow::Result<()> {
    let bed = bed("dash-tls").await?;
    let refused = bed.cli.run(&["serve", "--listen", "0.0.0.0:0"]).await?;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("--tls-cert") && refused.stderr.contains("in clear"), "{}", refused.stderr);
    let ca = pvefleet_testbed::tls::TestCa::make(&bed.fleet.dir)?;
    let port = pvefleet_testbed::free_port("127.0.0.1");
    let identity = pvefleet_testbed::trust::operator_file(bed.fleet.dir.path())?.display().to_string();
    let listen = format!("0.0.0.0:{port}");
    let (cert, key) = (ca.cert.display().to_string(), ca.key.display().to_string());
    let cmd = bed.cli.command(&[
        "--identity",
        &identity,
        "serve",
        "--listen",
        &listen,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ])?;
    let cmd = cmd.into_std();
    let _serve = Proc::spawn(&bed.fleet.dir, "serve-tls", cmd)?;
    let url = format!("https://127.0.0.1:{port}");
    let web = Client::new(&url, Some(&ca.ca))?;
    wait_until("serve over TLS", WITHIN, || async { web.http.get(format!("{url}/login")).send().await.ok() }).await?;
    let (status, _, alice) = web.log_in(ALICE).await?;
    let alice = alice.expect("alice logs in over TLS");
    assert_eq!(status, 303);
    assert!(alice.set_cookie.contains("Secure") && alice.set_cookie.contains("HttpOnly"), "{}", alice.set_cookie);
    let (status, page) = web.get("/jobs", &alice.cookie).await?;
    assert!(status == 200 && page.contains("alice (operator)"), "{status}");
    // Plain HTTP to the TLS port gets nothing.
    assert!(reqwest::get(format!("http://127.0.0.1:{port}/login")).await.is_err());
    bed.fleet.dir.pass();
    Ok(())
}
