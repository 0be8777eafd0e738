//! Destroy jobs on the wire against a real agent and fakepve: by the create job, by vmid, a
//! stranger's and a protected container refused, an agent killed mid-destroy, and a second
//! destroy of the same container.

use std::net::Ipv4Addr;
use std::time::Duration;

use pvefleet_schemas::{DestroyJob, DestroyTarget, ErrorKind, Event, EventType, Job, NodeName, Step, Vmid};
use pvefleet_testbed::Fleet;
use pvefleet_testbed::jobs::{
    JOB_WITHIN, create_job, events_until_terminal, result_of, submit, submit_destroy, wait_end, wait_for_event,
};

fn pve1() -> NodeName {
    NodeName::new("pve1").expect("a node name")
}

/// Runs a create job to success; returns its container's vmid.
async fn created(bed: &Fleet, job: &Job) -> anyhow::Result<Vmid> {
    submit(&bed.js, job).await?;
    let events = events_until_terminal(&bed.js, job.job_id, JOB_WITHIN).await?;
    anyhow::ensure!(result_of(&events).success, "{events:#?}");
    Ok(result_of(&events).vmid.expect("a vmid"))
}

/// Runs a destroy job to its end; returns its events, checked against the contract.
async fn destroyed(bed: &Fleet, target: DestroyTarget) -> anyhow::Result<Vec<Event>> {
    let job = DestroyJob::new(pve1(), target);
    submit_destroy(&bed.js, &job).await?;
    let events = wait_end(&bed.js, job.job_id).await?;
    Ok(events)
}

fn steps_of(events: &[Event]) -> Vec<Step> {
    events.iter().filter(|e| e.kind == EventType::Step).filter_map(|e| e.step).collect()
}

#[tokio::test]
async fn a_container_is_destroyed_by_its_create_job_or_by_vmid_and_again_is_success() -> anyhow::Result<()> {
    let bed = Fleet::start("destroy-basic", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let first = create_job("pve1", "first", Ipv4Addr::new(127, 0, 0, 100));
    let second = create_job("pve1", "second", Ipv4Addr::new(127, 0, 0, 101));
    let (a, b) = (created(&bed, &first).await?, created(&bed, &second).await?);
    assert_eq!(bed.pve.containers().await?, vec![a.get(), b.get()]);

    let by_job = destroyed(&bed, DestroyTarget { create_job: Some(first.job_id), vmid: None }).await?;
    assert!(result_of(&by_job).success, "{by_job:#?}");
    assert_eq!(result_of(&by_job).vmid, Some(a));
    assert_eq!(steps_of(&by_job), [Step::Finding, Step::Stopping, Step::Deleting]);
    assert_eq!(bed.pve.containers().await?, vec![b.get()], "only the first is gone");

    let by_vmid = destroyed(&bed, DestroyTarget { create_job: None, vmid: Some(b) }).await?;
    assert!(result_of(&by_vmid).success, "{by_vmid:#?}");
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new());

    // Already gone: success, saying so, touching nothing.
    let again = destroyed(&bed, DestroyTarget { create_job: Some(first.job_id), vmid: None }).await?;
    assert!(result_of(&again).success, "{again:#?}");
    assert!(again.last().unwrap().message.contains("nothing to destroy"), "{again:#?}");
    let again = destroyed(&bed, DestroyTarget { create_job: None, vmid: Some(b) }).await?;
    assert!(result_of(&again).success && again.last().unwrap().message.contains("does not exist"), "{again:#?}");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_strangers_container_and_a_protected_one_are_refused_and_untouched() -> anyhow::Result<()> {
    let bed = Fleet::start("destroy-refused", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    // A container pvefleet did not make: no marker.
    bed.pve
        .api(
            reqwest::Method::POST,
            "/nodes/pve1/lxc",
            &[
                ("vmid", "900"),
                ("ostemplate", pvefleet_testbed::fakepve::OSTEMPLATE),
                ("rootfs", "local-lvm:4"),
                ("tags", "prod"),
            ],
        )
        .await?;
    pvefleet_testbed::wait_until("the stranger's create", JOB_WITHIN, || async {
        let cfg = bed.pve.api_get("/nodes/pve1/lxc/900/config").await.ok()?;
        cfg.get("lock").is_none().then_some(())
    })
    .await?;
    let stranger = destroyed(&bed, DestroyTarget { create_job: None, vmid: Some(Vmid::new(900)?) }).await?;
    let error = result_of(&stranger).error.clone().expect("refused");
    assert_eq!((error.kind, error.step), (ErrorKind::Conflict, Step::Finding), "{error:?}");
    assert!(error.message.contains("pvefleet did not make it"), "{}", error.message);

    // Named by a create job whose container is not that vmid: refused too.
    let mut protected = create_job("pve1", "protected", Ipv4Addr::new(127, 0, 0, 102));
    protected.container.protection = true;
    let vmid = created(&bed, &protected).await?;
    let mismatch =
        destroyed(&bed, DestroyTarget { create_job: Some(protected.job_id), vmid: Some(Vmid::new(900)?) }).await?;
    assert_eq!(result_of(&mismatch).error.as_ref().map(|e| e.kind), Some(ErrorKind::Conflict), "{mismatch:#?}");

    let refused = destroyed(&bed, DestroyTarget { create_job: Some(protected.job_id), vmid: None }).await?;
    let error = result_of(&refused).error.clone().expect("refused");
    assert_eq!((error.kind, error.step), (ErrorKind::Conflict, Step::Finding), "{error:?}");
    assert!(error.message.contains("protected"), "{}", error.message);
    assert_eq!(bed.pve.containers().await?, vec![vmid.get(), 900], "both untouched");
    let status = bed.pve.api_get(&format!("/nodes/pve1/lxc/{vmid}/status/current")).await?;
    assert_eq!(status["status"], "running", "the protected one was not even stopped");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_container_that_will_not_shut_down_is_stopped_then_deleted() -> anyhow::Result<()> {
    let bed = Fleet::start("destroy-stubborn", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let job = create_job("pve1", "stubborn", Ipv4Addr::new(127, 0, 0, 103));
    let vmid = created(&bed, &job).await?;
    // Its shutdown would take 30 PVE seconds; the destroy allows 1.
    bed.pve.time_scale(0.05).await?;
    bed.pve.task_secs(serde_json::json!({"shutdown": 30})).await?;
    let mut destroy = DestroyJob::new(pve1(), DestroyTarget { create_job: Some(job.job_id), vmid: Some(vmid) });
    destroy.options.shutdown_timeout = pvefleet_schemas::HumanDuration(Duration::from_secs(1));
    submit_destroy(&bed.js, &destroy).await?;
    let events = wait_end(&bed.js, destroy.job_id).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert!(
        events.iter().any(|e| e.kind == EventType::Warning && e.message.contains("did not shut down")),
        "{events:#?}"
    );
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new());
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn an_agent_killed_mid_destroy_ends_it_once_with_the_container_gone() -> anyhow::Result<()> {
    let bed = Fleet::start("destroy-kill", &["pve1"]).await?;
    let mut agent = bed.agent("pve1")?;
    let job = create_job("pve1", "doomed", Ipv4Addr::new(127, 0, 0, 104));
    let vmid = created(&bed, &job).await?;
    // A slow shutdown and a slow destroy: the agent is killed inside them.
    bed.pve.time_scale(0.2).await?;
    bed.pve.task_secs(serde_json::json!({"shutdown": 10, "destroy": 10})).await?;
    let destroy = DestroyJob::new(pve1(), DestroyTarget { create_job: Some(job.job_id), vmid: None });
    submit_destroy(&bed.js, &destroy).await?;
    wait_for_event(&bed.js, destroy.job_id, "the destroy to be stopping the container", JOB_WITHIN, |e| {
        e.step == Some(Step::Stopping) && e.kind == EventType::Step
    })
    .await?;
    agent.kill();
    agent.restart()?;
    let events = wait_end(&bed.js, destroy.job_id).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert_eq!(result_of(&events).vmid, Some(vmid));
    assert!(events.iter().any(|e| e.message.contains("resuming")), "it was redelivered and resumed: {events:#?}");
    assert_eq!(bed.pve.containers().await?, Vec::<u32>::new());
    bed.dir.pass();
    Ok(())
}

/// A destroy resumed after its agent died acts on the vmid in its checkpoint; if that
/// container went and the vmid now holds someone else's, it is refused, not deleted.
#[tokio::test]
async fn a_resumed_destroy_never_deletes_a_stranger_that_took_its_vmid() -> anyhow::Result<()> {
    let bed = Fleet::start("destroy-reused", &["pve1"]).await?;
    let mut agent = bed.agent("pve1")?;
    let job = create_job("pve1", "reused", Ipv4Addr::new(127, 0, 0, 105));
    let vmid = created(&bed, &job).await?;
    bed.pve.time_scale(0.2).await?;
    bed.pve.task_secs(serde_json::json!({"shutdown": 10})).await?;
    let destroy = DestroyJob::new(pve1(), DestroyTarget { create_job: Some(job.job_id), vmid: None });
    submit_destroy(&bed.js, &destroy).await?;
    // Killed once its shutdown has reached PVE: the `stopping` event comes before the call,
    // and an agent killed between the two leaves a container that never shuts down.
    pvefleet_testbed::wait_until("the destroy's shutdown call to reach PVE", JOB_WITHIN, || async {
        let calls = bed.pve.calls().await.ok()?;
        let shutdowns: u64 = calls
            .iter()
            .filter(|(m, p, _)| m == "POST" && p == "/nodes/{node}/lxc/{vmid}/status/shutdown")
            .map(|(_, _, n)| n)
            .sum();
        (shutdowns > 0).then_some(())
    })
    .await?;
    agent.kill();
    // While the agent is away its container goes, and a stranger's takes the same vmid.
    let path = format!("/nodes/pve1/lxc/{vmid}");
    pvefleet_testbed::wait_until("the shutdown to end", JOB_WITHIN, || async {
        let s = bed.pve.api_get(&format!("{path}/status/current")).await.ok()?;
        (s["status"] == "stopped" && s.get("lock").is_none()).then_some(())
    })
    .await?;
    bed.pve.api(reqwest::Method::DELETE, &format!("{path}?purge=1"), &[]).await?;
    pvefleet_testbed::wait_until("the container to be gone", JOB_WITHIN, || async {
        bed.pve.containers().await.ok()?.is_empty().then_some(())
    })
    .await?;
    let id = vmid.to_string();
    bed.pve
        .api(
            reqwest::Method::POST,
            "/nodes/pve1/lxc",
            &[
                ("vmid", id.as_str()),
                ("ostemplate", pvefleet_testbed::fakepve::OSTEMPLATE),
                ("rootfs", "local-lvm:4"),
                ("tags", "prod"),
            ],
        )
        .await?;
    pvefleet_testbed::wait_until("the stranger's create", JOB_WITHIN, || async {
        let cfg = bed.pve.api_get(&format!("{path}/config")).await.ok()?;
        cfg.get("lock").is_none().then_some(())
    })
    .await?;
    agent.restart()?;
    let events = wait_end(&bed.js, destroy.job_id).await?;
    let error = result_of(&events).error.clone().expect("refused");
    assert_eq!(error.kind, ErrorKind::Conflict, "{events:#?}");
    assert_eq!(bed.pve.containers().await?, vec![vmid.get()], "the stranger's container is untouched");
    let cfg = bed.pve.api_get(&format!("{path}/config")).await?;
    assert_eq!(cfg["tags"], "prod");
    bed.dir.pass();
    Ok(())
}
