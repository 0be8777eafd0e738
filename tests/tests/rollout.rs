//! The day-two verbs end to end through the `pvefleet` CLI: `ls` from the agents' inventory, a
//! container named by its hostname, its create job or node and vmid, a job routed to the node
//! a container moved to, and `--select` rollouts (max-parallel, canary, stop at the first
//! failure, a rerun with the same request id redoing only what did not finish).

use std::time::Duration;

use pvefleet_testbed::agent::{Agent, AgentOptions};
use pvefleet_testbed::cli::{Pvefleet, TestDb};
use pvefleet_testbed::fakepve::OSTEMPLATE;
use pvefleet_testbed::{Fleet, wait_until};

struct Bed {
    fleet: Fleet,
    cli: Pvefleet,
    _agents: Vec<Agent>,
    _db: TestDb,
}

async fn bed(name: &str, nodes: &[&str]) -> anyhow::Result<Bed> {
    bed_sweeping(name, nodes, "1s").await
}

/// A bed whose agents sweep their inventory every `interval` (and after each job).
async fn bed_sweeping(name: &str, nodes: &[&str], interval: &str) -> anyhow::Result<Bed> {
    let fleet = Fleet::start(name, nodes).await?;
    let db = TestDb::sqlite(&fleet.dir);
    let cli = Pvefleet::new(&fleet.dir, &fleet.nats.url(), &db);
    let setup = cli.run(&["setup"]).await?;
    anyhow::ensure!(setup.ok(), "setup failed: {setup:?}");
    let mut agents = Vec::new();
    for node in nodes {
        agents.push(fleet.agent_with(AgentOptions {
            env: vec![("PVEFLEET_INVENTORY_INTERVAL".into(), interval.into())],
            ..AgentOptions::node(node)
        })?);
    }
    Ok(Bed { fleet, cli, _agents: agents, _db: db })
}

impl Bed {
    /// `pvefleet ls --json`, once it lists `count` containers.
    async fn listed(&self, count: usize) -> anyhow::Result<Vec<serde_json::Value>> {
        wait_until(&format!("`pvefleet ls` to list {count} containers"), Duration::from_secs(30), || async {
            let run = self.cli.run(&["ls", "--json"]).await.ok()?;
            let rows: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).ok()?;
            (rows.len() == count).then_some(rows)
        })
        .await
    }

    async fn config(&self, node: &str, vmid: u64) -> anyhow::Result<serde_json::Value> {
        self.fleet.pve.api_get(&format!("/nodes/{node}/lxc/{vmid}/config")).await
    }
}

fn row<'a>(rows: &'a [serde_json::Value], hostname: &str) -> &'a serde_json::Value {
    rows.iter().find(|r| r["hostname"] == hostname).unwrap_or_else(|| panic!("{hostname} in {rows:#?}"))
}

#[tokio::test]
async fn a_container_is_named_by_hostname_job_or_vmid_and_its_jobs_follow_it_to_its_new_node() -> anyhow::Result<()> {
    let bed = bed("cli-day-two", &["pve1", "pve2"]).await?;
    let _recorder = bed.cli.recorder("recorder")?;
    let made = bed
        .cli
        .must(&[
            "submit",
            "--node",
            "pve1",
            "--hostname",
            "app",
            "--ostemplate",
            OSTEMPLATE,
            "--ip",
            "127.0.0.190/32",
            "--watch",
        ])
        .await?;
    let create = made.stdout.lines().next().unwrap_or_default().trim().to_owned();
    let rows = bed.listed(1).await?;
    let app = row(&rows, "app");
    assert_eq!((app["node"].as_str(), app["status"].as_str()), (Some("pve1"), Some("running")), "{app}");
    assert_eq!(app["create_job"].as_str(), Some(create.as_str()), "{app}");
    let vmid = app["vmid"].as_u64().expect("a vmid");
    let table = bed.cli.must(&["ls"]).await?;
    assert!(table.stdout.contains("app") && table.stdout.contains("127.0.0.190/32"), "{}", table.stdout);

    // By hostname, by create job, by node and vmid.
    bed.cli.must(&["update", "app", "--memory", "1024", "--cores", "2", "--watch"]).await?;
    assert_eq!(bed.config("pve1", vmid).await?["memory"].as_u64(), Some(1024));
    bed.cli.must(&["stop", &create, "--watch"]).await?;
    let vmid_text = vmid.to_string();
    bed.cli.must(&["start", "--node", "pve1", "--vmid", &vmid_text, "--watch"]).await?;
    bed.cli.must(&["resize", "app", "rootfs=12G", "--watch"]).await?;
    assert!(bed.config("pve1", vmid).await?["rootfs"].as_str().is_some_and(|r| r.contains("size=12G")));
    // Smaller: the job fails at finding, naming the field.
    let smaller = bed.cli.run(&["resize", "app", "rootfs=4G", "--watch"]).await?;
    assert_eq!(smaller.code, Some(1), "{smaller:?}");
    assert!(smaller.stdout.contains("size_bytes") && smaller.stdout.contains("only grows"), "{smaller:?}");
    // A plan shows the diff, the restart and the exact calls, and changes nothing.
    bed.fleet.pve.reset_calls().await?;
    let plan = bed.cli.run(&["update", "app", "--memory", "1536", "--nameservers", "9.9.9.9", "--plan"]).await?;
    assert_eq!(plan.code, Some(0), "{plan:?}");
    for words in [
        "memory: 1024 → 1536",
        "nameserver: (unset) → 9.9.9.9",
        "nameserver would wait for a restart: one reboot (if-needed)",
        &format!("PUT /nodes/pve1/lxc/{vmid}/config"),
        "memory=1536",
        &format!("POST /nodes/pve1/lxc/{vmid}/status/reboot"),
    ] {
        assert!(plan.stdout.contains(words), "{words:?} in {}", plan.stdout);
    }
    let smaller = bed.cli.run(&["resize", "app", "rootfs=4G", "--plan"]).await?;
    assert!(smaller.code == Some(1) && smaller.stdout.contains("only grows"), "{smaller:?}");
    let running = bed.cli.run(&["start", "app", "--plan"]).await?;
    assert!(
        running.code == Some(0) && running.stdout.contains("already running: nothing would be sent"),
        "{running:?}"
    );
    let writes: u64 = bed.fleet.pve.calls().await?.iter().filter(|(m, _, _)| m != "GET").map(|(_, _, n)| n).sum();
    assert_eq!(writes, 0, "a plan writes nothing");

    // A job that failed is tried again as a new job, linked to it.
    let config_path = format!("/nodes/pve1/lxc/{vmid}/config");
    bed.fleet.pve.fail("PUT", &config_path, 1, 400, "refused once by the test").await?;
    let failed = bed.cli.run(&["update", "app", "--cores", "3", "--watch"]).await?;
    assert_eq!(failed.code, Some(1), "{failed:?}");
    let failed_id = failed.stdout.lines().next().unwrap_or_default().trim().to_owned();
    wait_until("the store to have the failure", Duration::from_secs(20), || async {
        let run = bed.cli.run(&["job", &failed_id, "--json"]).await.ok()?;
        (serde_json::from_str::<serde_json::Value>(&run.stdout).ok()?["state"] == "failed").then_some(())
    })
    .await?;
    let retried = bed.cli.must(&["retry", &failed_id, "--watch"]).await?;
    let retry_id = retried.stdout.lines().next().unwrap_or_default().trim().to_owned();
    assert_ne!(retry_id, failed_id);
    let shown: serde_json::Value = serde_json::from_str(&bed.cli.must(&["job", &retry_id, "--json"]).await?.stdout)?;
    assert_eq!(shown["retry_of"].as_str(), Some(failed_id.as_str()), "{shown}");
    assert_eq!(bed.config("pve1", vmid).await?["cores"].as_u64(), Some(3));
    let not_failed = bed.cli.run(&["retry", &retry_id]).await?;
    assert!(
        not_failed.code == Some(2) && not_failed.stderr.contains("only a failed or cancelled job"),
        "{not_failed:?}"
    );

    // Bad input is named before anything is published.
    let bad = bed.cli.run(&["update", "app", "--restart", "sometimes"]).await?;
    assert!(bad.code == Some(2) && bad.stderr.contains("--restart"), "{bad:?}");
    let unknown = bed.cli.run(&["reboot", "nosuch"]).await?;
    assert!(unknown.code == Some(2) && unknown.stderr.contains("no container named `nosuch`"), "{unknown:?}");

    // Moved by hand to pve2: the next job goes to pve2's agent.
    let form = [("target", "pve2"), ("restart", "1")];
    bed.fleet.pve.api(reqwest::Method::POST, &format!("/nodes/pve1/lxc/{vmid}/migrate"), &form).await?;
    wait_until("`ls` to show app on pve2", Duration::from_secs(30), || async {
        let run = bed.cli.run(&["ls", "--json"]).await.ok()?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).ok()?;
        (rows.len() == 1 && row(&rows, "app")["node"] == "pve2").then_some(())
    })
    .await?;
    let reboot = bed.cli.must(&["reboot", "app", "--json"]).await?;
    let job: serde_json::Value = serde_json::from_str(reboot.stdout.trim())?;
    assert_eq!(job["node"], "pve2", "{job}");
    bed.cli.must(&["watch", job["job_id"].as_str().unwrap_or_default()]).await?;
    let jobs = bed.cli.must(&["jobs", "--json"]).await?;
    let kinds: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&jobs.stdout)?
        .iter()
        .map(|j| j["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    for kind in ["create", "update", "power", "resize"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }

    // Two containers of one name: refused, naming both.
    bed.cli
        .must(&[
            "submit",
            "--node",
            "pve2",
            "--hostname",
            "app",
            "--ostemplate",
            OSTEMPLATE,
            "--ip",
            "127.0.0.191/32",
            "--watch",
        ])
        .await?;
    bed.listed(2).await?;
    let twice = bed.cli.run(&["stop", "app"]).await?;
    assert!(twice.code == Some(2) && twice.stderr.contains("2 containers are named `app`"), "{twice:?}");

    // Deleted in PVE's own UI: gone from `ls`, kept as gone in the store and on the web view.
    // The recorder reads the inventory every 2 s: it must have seen the container before it
    // goes, or the store never knew it (under load its reads once fell before the create, in
    // the middle of the move and after the delete).
    let store =
        pvefleet_coordinator::store::Store::open(&pvefleet_coordinator::store::database_url(Some(&bed._db.url()))?)
            .await?;
    wait_until("the store to know the moved container", Duration::from_secs(30), || async {
        let rows = store.containers().await.ok()?;
        rows.iter().any(|c| c.vmid == i64::from(vmid as u32) && c.node == "pve2" && c.state == "present").then_some(())
    })
    .await?;
    bed.fleet.pve.api(reqwest::Method::POST, &format!("/nodes/pve2/lxc/{vmid}/status/stop"), &[]).await?;
    wait_until("the stop", Duration::from_secs(20), || async {
        let s = bed.fleet.pve.api_get(&format!("/nodes/pve2/lxc/{vmid}/status/current")).await.ok()?;
        (s["status"] == "stopped").then_some(())
    })
    .await?;
    bed.fleet.pve.api(reqwest::Method::DELETE, &format!("/nodes/pve2/lxc/{vmid}"), &[]).await?;
    bed.listed(1).await?;
    let all = wait_until("`ls --all` to show the deleted one as gone", Duration::from_secs(30), || async {
        let run = bed.cli.run(&["ls", "--all", "--json"]).await.ok()?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).ok()?;
        rows.iter().any(|r| r["vmid"] == vmid && r["state"] == "gone").then_some(rows)
    })
    .await?;
    assert_eq!(all.len(), 2, "{all:#?}");
    let (_serve, url) = bed.cli.serve("serve", "127.0.0.1", &[]).await?;
    let page = reqwest::get(format!("{url}/containers")).await?.text().await?;
    assert!(page.contains(&format!(r#"data-state="gone" data-vmid="{vmid}""#)), "{page}");
    assert!(page.contains(r#"data-state="present""#), "{page}");
    bed.fleet.dir.pass();
    Ok(())
}

/// The summary line's figures: (succeeded, failed, not started).
fn figures(stdout: &str) -> Option<(usize, usize, usize)> {
    let line = stdout.lines().find(|l| l.contains("jobs succeeded"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    Some((words[0].parse().ok()?, words[5].parse().ok()?, words[7].parse().ok()?))
}

#[tokio::test]
async fn a_rollout_stops_at_the_first_failure_and_a_rerun_redoes_only_what_did_not_finish() -> anyhow::Result<()> {
    let bed = bed("cli-rollout", &["pve1", "pve2", "pve3"]).await?;
    // 20 containers tagged `web` on three nodes, and one that is not.
    for (node, count, first) in [("pve1", "7", 1), ("pve2", "7", 11), ("pve3", "6", 21)] {
        let hostname = format!("web-{node}-{{n}}");
        let ip = format!("127.0.2.{{n+{}}}/32", first - 1);
        let args = [
            "submit",
            "--count",
            count,
            "--node",
            node,
            "--hostname",
            &hostname,
            "--ostemplate",
            OSTEMPLATE,
            "--ip",
            &ip,
            "--tag",
            "web",
            "--watch",
        ];
        bed.cli.must(&args).await?;
    }
    bed.cli
        .must(&[
            "submit",
            "--node",
            "pve1",
            "--hostname",
            "db",
            "--ostemplate",
            OSTEMPLATE,
            "--ip",
            "127.0.2.99/32",
            "--watch",
        ])
        .await?;
    let rows = bed.listed(21).await?;

    let dry = bed.cli.must(&["update", "--select", "tag=web", "--memory", "777", "--dry-run"]).await?;
    assert!(dry.stderr.contains("20 containers match"), "{dry:?}");

    // The third container in order (pve1's third) refuses every change.
    let mut web: Vec<&serde_json::Value> = rows.iter().filter(|r| r["hostname"] != "db").collect();
    web.sort_by_key(|r| (r["node"].as_str().unwrap_or_default().to_owned(), r["vmid"].as_u64()));
    let bad = web[2];
    let bad_path = format!("/nodes/{}/lxc/{}/config", bad["node"].as_str().unwrap_or_default(), bad["vmid"]);
    bed.fleet.pve.fail("PUT", &bad_path, 0, 400, "refused by the test").await?;
    bed.fleet.pve.reset_calls().await?;
    let args = [
        "update",
        "--select",
        "tag=web",
        "--memory",
        "777",
        "--max-parallel",
        "4",
        "--canary",
        "1",
        "--request-id",
        "mem-777",
    ];
    let first = bed.cli.run(&args).await?;
    assert_eq!(first.code, Some(1), "{first:?}");
    let (ok, failed, waiting) = figures(&first.stdout).expect("a summary");
    assert_eq!((ok + failed + waiting, failed), (20, 1), "{}", first.stdout);
    assert!(waiting >= 1, "the rest stop at the failure: {}", first.stdout);
    let bad_name = bad["hostname"].as_str().unwrap_or_default();
    assert!(first.stdout.contains(&format!("failed: {bad_name}")), "the summary names it: {}", first.stdout);
    assert!(first.stdout.contains("not started:"), "{}", first.stdout);
    // The canary ran alone first: the first container succeeded before any other began.
    let stderr_lines: Vec<&str> = first.stderr.lines().collect();
    let first_name = web[0]["hostname"].as_str().unwrap_or_default();
    let canary_done = stderr_lines.iter().position(|l| l.starts_with(first_name) && l.ends_with("succeeded"));
    let second_job = stderr_lines.iter().position(|l| l.contains(": job ") && !l.starts_with(first_name));
    assert!(canary_done.is_some() && canary_done < second_job, "{}", first.stderr);
    let unchanged = rows.iter().find(|r| r["hostname"] == "db").expect("db");
    let db_cfg = bed
        .config(unchanged["node"].as_str().unwrap_or_default(), unchanged["vmid"].as_u64().unwrap_or_default())
        .await?;
    assert_ne!(db_cfg["memory"].as_u64(), Some(777), "not selected, not touched");

    // Again with the same request id, the fault gone: only what did not finish runs.
    bed.fleet.pve.reset().await?;
    bed.fleet.pve.reset_calls().await?;
    let again = bed.cli.run(&args).await?;
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(figures(&again.stdout), Some((20, 0, 0)), "{}", again.stdout);
    let writes: u64 = bed
        .fleet
        .pve
        .calls()
        .await?
        .iter()
        .filter(|(m, p, _)| m == "PUT" && p == "/nodes/{node}/lxc/{vmid}/config")
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(writes as usize, failed + waiting, "only the unfinished were written: {}", again.stderr);
    assert_eq!(again.stderr.matches("done before").count(), ok, "{}", again.stderr);
    for r in &web {
        let cfg = bed.config(r["node"].as_str().unwrap_or_default(), r["vmid"].as_u64().unwrap_or_default()).await?;
        assert_eq!(cfg["memory"].as_u64(), Some(777), "{}", r["hostname"]);
    }
    bed.fleet.dir.pass();
    Ok(())
}

/// The keeping verbs by name: a snapshot and `snapshots`, a guarded update, a rollback, a
/// backup, `backups` and a restore as a new container (which is then pvefleet's like any
/// other), and a move planned by the node it goes to, after which the container's next job
/// goes to its new node; a move the target has no room for is refused before anything is
/// published.
#[tokio::test]
async fn the_keeping_verbs_act_by_name_and_a_moved_container_takes_its_next_job_on_its_new_node() -> anyhow::Result<()>
{
    // Sweeps only after jobs (and hourly): a moved container is listed by its new node's agent
    // as soon as it arrives, because that agent planned the move.
    let bed = bed_sweeping("cli-keeping", &["pve1", "pve2"], "1h").await?;
    let _recorder = bed.cli.recorder("recorder")?;
    let args = ["submit", "--node", "pve1", "--hostname", "kept", "--ostemplate", OSTEMPLATE];
    bed.cli.must(&[&args[..], &["--ip", "127.0.0.195/32", "--watch"]].concat()).await?;
    let rows = bed.listed(1).await?;
    let vmid = row(&rows, "kept")["vmid"].as_u64().expect("a vmid");

    bed.cli.must(&["snapshot", "kept", "--name", "before", "--watch"]).await?;
    let listed = bed.cli.must(&["snapshots", "kept"]).await?;
    assert!(listed.stdout.contains("before") && listed.stdout.contains("1 snapshot(s)"), "{}", listed.stdout);
    bed.cli.must(&["update", "kept", "--memory", "1024", "--snapshot-before", "--watch"]).await?;
    assert_eq!(bed.config("pve1", vmid).await?["memory"].as_u64(), Some(1024));
    let json = bed.cli.must(&["snapshots", "kept", "--json"]).await?;
    let names: Vec<serde_json::Value> = serde_json::from_str(&json.stdout)?;
    assert_eq!(names.len(), 1, "the guard's snapshot is deleted after success: {names:?}");
    bed.cli.must(&["rollback", "kept", "before", "--start", "--watch"]).await?;
    assert_eq!(bed.config("pve1", vmid).await?["memory"].as_u64(), Some(512), "rolled back");

    bed.cli.must(&["backup", "kept", "--storage", "local", "--keep-last", "2", "--watch"]).await?;
    let json = bed.cli.must(&["backups", "kept", "--json"]).await?;
    let backups: Vec<serde_json::Value> = serde_json::from_str(&json.stdout)?;
    assert_eq!(backups.len(), 1, "{backups:?}");
    let volid = backups[0]["name"].as_str().expect("a volid").to_owned();
    assert!(backups[0]["job"].is_string(), "made by a pvefleet job: {backups:?}");
    let restored = bed.cli.must(&["restore", &volid, "--hostname", "kept-copy", "--watch"]).await?;
    let restore_job = restored.stdout.lines().next().unwrap_or_default().trim().to_owned();
    let rows = bed.listed(2).await?;
    let copy = row(&rows, "kept-copy");
    assert_eq!(copy["create_job"].as_str(), Some(restore_job.as_str()), "made by its restore: {copy}");
    bed.cli.must(&["stop", "kept-copy", "--watch"]).await?;

    // The node it would go to says what it found, and the exact call.
    let plan = bed.cli.run(&["move", "kept", "--to", "pve2", "--plan"]).await?;
    assert_eq!(plan.code, Some(0), "{plan:?}");
    for words in
        ["PVE allows pve2", "MB free on pve2", "storage rootfs", &format!("POST /nodes/pve1/lxc/{vmid}/migrate")]
    {
        assert!(plan.stdout.contains(words), "{words:?} in {}", plan.stdout);
    }
    bed.cli.must(&["move", "kept", "--to", "pve2", "--watch"]).await?;
    wait_until("`ls` to show it on pve2", Duration::from_secs(10), || async {
        let run = bed.cli.run(&["ls", "--json"]).await.ok()?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).ok()?;
        rows.iter().any(|r| r["hostname"] == "kept" && r["node"] == "pve2").then_some(())
    })
    .await?;
    let updated = bed.cli.must(&["update", "kept", "--memory", "768", "--watch", "--json"]).await?;
    assert!(updated.stdout.contains("\"node\":\"pve2\""), "sent to its new node: {}", updated.stdout);
    assert_eq!(bed.config("pve2", vmid).await?["memory"].as_u64(), Some(768));

    // No room on pve1: refused by its agent, nothing published.
    bed.fleet.pve.node_memory_used("pve1", 8 << 30).await?;
    let jobs_before = bed.cli.must(&["jobs", "--json"]).await?.stdout;
    let refused = bed.cli.run(&["move", "kept", "--to", "pve1"]).await?;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("cannot move there") && refused.stderr.contains("memory"), "{refused:?}");
    let jobs_after = bed.cli.must(&["jobs", "--json"]).await?.stdout;
    let count = |text: &str| serde_json::from_str::<Vec<serde_json::Value>>(text).map(|v| v.len()).unwrap_or(0);
    assert_eq!(count(&jobs_before), count(&jobs_after), "nothing recorded or published");
    bed.fleet.dir.pass();
    Ok(())
}
