//! The agent's node facts (issue 24): a plain create makes only the Proxmox calls its work
//! needs once the node's storages, templates, bridges and free vmids are known, and a kept
//! fact never refuses a job nor lets one through without PVE's own refusal ending it cleanly.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use pvefleet_schemas::{ErrorKind, EventType, Job, Step};
use pvefleet_testbed::agent::AgentOptions;
use pvefleet_testbed::fakepve::OSTEMPLATE;
use pvefleet_testbed::jobs::{create_job, result_of, run_to_end};

type Bed = pvefleet_testbed::Fleet;

/// An agent on pve1 whose node facts last the whole test (the default is 10 s), so that what is
/// kept and what is read again does not depend on the machine's speed.
fn agent(bed: &Bed) -> anyhow::Result<pvefleet_testbed::agent::Agent> {
    bed.agent_with(AgentOptions {
        env: vec![("PVEFLEET_PROXMOX_FACTS_TTL".into(), "1h".into())],
        ..AgentOptions::node("pve1")
    })
}

/// The Proxmox calls since the last reset, by `METHOD path`.
async fn calls(bed: &Bed) -> anyhow::Result<BTreeMap<String, u64>> {
    Ok(bed.pve.calls().await?.into_iter().map(|(m, p, n)| (format!("{m} {p}"), n)).collect())
}

fn job(n: u8) -> Job {
    create_job("pve1", &format!("facts-{n}"), Ipv4Addr::new(127, 0, 0, 40 + n))
}

#[tokio::test]
async fn a_plain_create_makes_at_most_six_proxmox_calls_once_the_node_is_known() -> anyhow::Result<()> {
    let bed = Bed::start("facts-calls", &["pve1"]).await?;
    let _agent = agent(&bed)?;
    // The first job reads the node's facts; the second uses them.
    let first = result_of(&run_to_end(&bed.js, &job(1)).await?).clone();
    assert!(first.success, "{first:?}");
    bed.pve.reset_calls().await?;
    let second = job(2);
    let result = result_of(&run_to_end(&bed.js, &second).await?).clone();
    assert!(result.success, "{result:?}");
    let calls = calls(&bed).await?;
    let total: u64 = calls.values().sum();
    assert!(total <= 6, "a plain create made {total} Proxmox calls: {calls:#?}");
    for read_once in [
        "GET /cluster/nextid",
        "GET /cluster/resources",
        "GET /nodes/{node}/storage",
        "GET /nodes/{node}/storage/{storage}/content",
        "GET /nodes/{node}/network",
        "PUT /nodes/{node}/lxc/{vmid}/config",
    ] {
        assert!(!calls.contains_key(read_once), "{read_once} was called: {calls:#?}");
    }
    // The two jobs took two vmids, and the description went with the create.
    let (a, b) = (first.vmid.expect("a vmid"), result.vmid.expect("a vmid"));
    assert_ne!(a, b);
    let cfg = bed.pve.api_get(&format!("/nodes/pve1/lxc/{b}/config")).await?;
    assert_eq!(cfg["description"].as_str(), Some(format!("Created by pvefleet job {}", second.job_id).as_str()));
    Ok(())
}

#[tokio::test]
async fn a_kept_fact_never_refuses_a_job_and_a_stale_one_ends_in_pves_own_refusal() -> anyhow::Result<()> {
    let bed = Bed::start("facts-stale", &["pve1"]).await?;
    let _agent = agent(&bed)?;
    assert!(result_of(&run_to_end(&bed.js, &job(1)).await?).clone().success);

    // A template that came after the facts were read: kept facts lack it, fresh ones have it.
    let url = bed.pve.serve_file("late.tar.zst", b"a late template")?;
    let upid = bed
        .pve
        .api(
            reqwest::Method::POST,
            "/nodes/pve1/storage/local/download-url",
            &[("content", "vztmpl"), ("filename", "late.tar.zst"), ("url", &url)],
        )
        .await?;
    wait_task(&bed, &upid).await?;
    let mut late = job(2);
    late.container.ostemplate = Some("local:vztmpl/late.tar.zst".into());
    let result = result_of(&run_to_end(&bed.js, &late).await?).clone();
    assert!(result.success, "a template missing only from the kept facts refused the job: {result:?}");

    // The bed's template deleted after it was read: the kept facts still have it, PVE refuses
    // the create, and the job ends with PVE's refusal and nothing made.
    let before = bed.pve.containers().await?;
    let upid =
        bed.pve.api(reqwest::Method::DELETE, &format!("/nodes/pve1/storage/local/content/{OSTEMPLATE}"), &[]).await?;
    wait_task(&bed, &upid).await?;
    let stale = job(3);
    let events = run_to_end(&bed.js, &stale).await?;
    let result = result_of(&events).clone();
    let error = result.error.as_ref().expect("the create failed");
    assert_eq!(error.step, Step::Creating, "{error:?}");
    assert_ne!(error.kind, ErrorKind::Validation, "kept facts passed it: {error:?}");
    assert_eq!(events.iter().filter(|e| e.is_terminal()).count(), 1);
    assert_eq!(bed.pve.containers().await?, before, "a refused create left a container");

    // That failure made the agent read its facts again: the next job is refused at validating.
    let events = run_to_end(&bed.js, &job(4)).await?;
    let error = result_of(&events).error.clone().expect("refused");
    assert_eq!((error.kind, error.step), (ErrorKind::Validation, Step::Validating), "{error:?}");
    assert!(error.message.contains("is not a container template"), "{}", error.message);
    assert!(events.iter().all(|e| e.kind != EventType::Step || e.step == Some(Step::Validating)));
    Ok(())
}

#[tokio::test]
async fn a_vmid_taken_after_the_facts_were_read_is_replaced_on_fresh_ones() -> anyhow::Result<()> {
    let bed = Bed::start("facts-vmid", &["pve1"]).await?;
    let _agent = agent(&bed)?;
    let first = result_of(&run_to_end(&bed.js, &job(1)).await?).clone();
    let taken = first.vmid.expect("a vmid").get() + 1;
    // Somebody makes the next vmid outside pvefleet, after the agent read where vmids are free.
    bed.pve.make_container("pve1", taken, &[("hostname", "not-ours")]).await?;
    let events = run_to_end(&bed.js, &job(2)).await?;
    let result = result_of(&events).clone();
    assert!(result.success, "{result:?}");
    let vmid = result.vmid.expect("a vmid").get();
    assert_ne!(vmid, taken);
    assert!(
        events.iter().any(|e| e.kind == EventType::Warning && e.message.contains(&format!("vmid {taken} was taken"))),
        "no warning about the taken vmid"
    );
    let stranger = bed.pve.api_get(&format!("/nodes/pve1/lxc/{taken}/config")).await?;
    assert_eq!(stranger["hostname"], "not-ours", "the stranger's container was touched");
    Ok(())
}

/// Waits for a task of the test's own to end well.
async fn wait_task(bed: &Bed, upid: &serde_json::Value) -> anyhow::Result<()> {
    let upid = upid.as_str().expect("a UPID").to_owned();
    pvefleet_testbed::wait_until("the task", std::time::Duration::from_secs(30), || async {
        let status = bed.pve.api_get(&format!("/nodes/pve1/tasks/{upid}/status")).await.ok()?;
        (status["status"] == "stopped").then_some(status)
    })
    .await
    .and_then(|s| {
        anyhow::ensure!(s["exitstatus"] == "OK", "task {upid}: {s}");
        Ok(())
    })
}
