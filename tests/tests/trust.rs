//! Who asked, and may they (issue 20), tried as an attacker would on real servers: a job
//! straight onto the wire unsigned, signed by a stranger, changed after signing, expired,
//! replayed under a taken job id, asking for more than its signer may (scripts, a host path,
//! a clone source, another node), and policies forged or put back. Each is refused with one
//! `unauthorized` error naming its rule, nothing is written on fakepve, and every decision is
//! in the audit trail with its signer.

use std::net::Ipv4Addr;
use std::time::Duration;

use pvefleet_schemas::signing::Identity;
use pvefleet_schemas::source::{CloneFrom, CloneSpec};
use pvefleet_schemas::trust::{AuditRecord, Decision, Grant, Policy};
use pvefleet_schemas::{ErrorKind, Job, JobId, NodeName, Step, Timestamp};
use pvefleet_testbed::cli::{Pvefleet, TestDb};
use pvefleet_testbed::jobs::{create_job, result_of, run_to_end, submit_unsigned, wait_end};
use pvefleet_testbed::trust::{self, admin, operator, put_policy, signed_by};
use pvefleet_testbed::{Fleet, wait_until};

/// Publishes these bytes as `job`'s create message (its own id as the dedup id, unless `msg_id`).
async fn publish(bed: &Fleet, job: &Job, payload: Vec<u8>, msg_id: Option<&str>) -> anyhow::Result<()> {
    submit_unsigned(&bed.js, &job.node, msg_id.unwrap_or(&job.job_id.to_string()), payload).await
}

/// The job ended with one `unauthorized` error at validating, naming `rule`.
async fn refused(bed: &Fleet, job: JobId, rule: &str) -> anyhow::Result<()> {
    let events = wait_end(&bed.js, job).await?;
    let terminals = events.iter().filter(|e| e.is_terminal()).count();
    assert_eq!(terminals, 1, "{events:#?}");
    let error = result_of(&events).error.clone().expect("refused");
    assert_eq!((error.kind, error.step), (ErrorKind::Unauthorized, Step::Validating), "{error:?}");
    assert!(error.message.contains(&format!("`{rule}`")), "rule {rule} named in: {}", error.message);
    Ok(())
}

/// A job signed by `by` as the coordinator would sign it, but with `edit` made to it first.
fn job_by(node: &str, name: &str, ip: u8, edit: impl FnOnce(&mut Job)) -> Job {
    let mut job = create_job(node, name, Ipv4Addr::new(127, 0, 0, ip));
    edit(&mut job);
    job
}

async fn audit(cli: &Pvefleet) -> anyhow::Result<Vec<AuditRecord>> {
    let run = cli.must(&["audit", "--json"]).await?;
    run.stdout.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

#[tokio::test]
async fn every_request_is_checked_before_anything_and_every_decision_is_audited() -> anyhow::Result<()> {
    let bed = Fleet::start("trust-refusals", &["pve1", "pve2"]).await?;
    let limited = Identity::generate();
    // The policy as an admin sets it: the bed's operator may do everything; `limited` may act
    // on pve1 only, with the defaults (no scripts here, no host paths, clones of templates).
    let policy = Policy {
        serial: 2,
        signer: vec![
            trust::everything().signer.into_iter().next().expect("the operator"),
            Grant { nodes: vec!["pve1".into()], scripts: false, ..Grant::new("limited", &limited.public()) },
        ],
    };
    put_policy(&bed.js, &policy, admin()).await?;
    let _pve1 = bed.agent("pve1")?;
    let _pve2 = bed.agent("pve2")?;

    // One job as it should be: it runs, and makes the container a later clone names.
    let good = create_job("pve1", "good", Ipv4Addr::new(127, 0, 0, 60));
    let events = run_to_end(&bed.js, &good).await?;
    let made = result_of(&events).vmid.expect("made a container");
    assert!(result_of(&events).success, "{events:#?}");
    bed.pve.reset_calls().await?;
    let containers = bed.pve.containers().await?;

    let stranger = Identity::generate();
    let mut cases: Vec<(Job, Vec<u8>, &str)> = Vec::new();
    let unsigned = job_by("pve1", "unsigned", 61, |_| {});
    cases.push((unsigned.clone(), unsigned.encode(), "signature"));
    let unknown = job_by("pve1", "unknown", 62, |_| {});
    cases.push((unknown.clone(), signed_by(&unknown, &stranger), "signer"));
    let changed = job_by("pve1", "changed", 63, |_| {});
    let mut bytes: serde_json::Value = serde_json::from_slice(&trust::signed(&changed))?;
    bytes["container"]["memory"] = 4096.into();
    cases.push((changed, serde_json::to_vec(&bytes)?, "signature"));
    let expired = job_by("pve1", "expired", 64, |_| {});
    let mut value = serde_json::to_value(&expired)?;
    operator().sign_until(&mut value, Timestamp(time::OffsetDateTime::now_utc() - time::Duration::minutes(1)))?;
    cases.push((expired, serde_json::to_vec(&value)?, "expiry"));
    let scripts = job_by("pve1", "scripts", 65, |j| {
        j.deploy.scripts.push(serde_json::from_value(serde_json::json!({"name": "x", "body": "id"})).unwrap())
    });
    cases.push((scripts.clone(), signed_by(&scripts, &limited), "scripts"));
    let bind = job_by("pve1", "bind", 66, |j| {
        j.container.mounts.push(pvefleet_schemas::lxc::MountPoint::Bind {
            host_path: "/".into(),
            path: "/host".into(),
            ro: false,
            shared: false,
        })
    });
    cases.push((bind.clone(), signed_by(&bind, &limited), "host_paths"));
    let elsewhere = job_by("pve2", "elsewhere", 67, |_| {});
    cases.push((elsewhere.clone(), signed_by(&elsewhere, &limited), "nodes"));
    let clone = job_by("pve1", "clone", 68, |j| {
        j.container.ostemplate = None;
        j.container.clone =
            Some(CloneSpec { from: CloneFrom::Vmid(made), full: true, snapshot: None, storage: None, keep_key: false });
    });
    cases.push((clone.clone(), signed_by(&clone, &limited), "clone_from"));
    for (job, payload, _) in &cases {
        publish(&bed, job, payload.clone(), None).await?;
    }
    for (job, _, rule) in &cases {
        refused(&bed, job.job_id, rule).await?;
    }
    // A replay: the good job's message again (past the dedup window, as an attacker would wait),
    // and a new request under its job id. Both refused; the good job's events stay as they are.
    publish(&bed, &good, trust::signed(&good), Some("replayed")).await?;
    let mut twin = create_job("pve1", "twin", Ipv4Addr::new(127, 0, 0, 69));
    twin.job_id = good.job_id;
    publish(&bed, &twin, trust::signed(&twin), Some("twin")).await?;

    let cli = Pvefleet::new(&bed.dir, &bed.nats.url(), &TestDb::sqlite(&bed.dir));
    let records = wait_until("every decision in the audit trail", Duration::from_secs(30), || async {
        let records = audit(&cli).await.ok()?;
        let replays = records.iter().filter(|r| r.rule.as_deref() == Some("replay")).count();
        let clone = records.iter().any(|r| r.rule.as_deref() == Some("clone_from"));
        (replays == 2 && clone && records.len() >= cases.len() + 1 + 2).then_some(records)
    })
    .await?;
    let rule_of = |job: JobId| records.iter().find(|r| r.job_id == Some(job) && r.decision == Decision::Refused);
    for (job, _, rule) in &cases {
        // clone_from is decided at validating, where the source is found: in the trail then.
        let record = rule_of(job.job_id).unwrap_or_else(|| panic!("{} refused in the audit: {records:#?}", job.job_id));
        assert_eq!(record.rule.as_deref(), Some(*rule));
        assert_eq!(record.node.as_ref().map(NodeName::as_str), Some(job.node.as_str()));
    }
    let accepted = records.iter().find(|r| r.job_id == Some(good.job_id) && r.decision == Decision::Accepted);
    let accepted = accepted.expect("the good job's acceptance is audited");
    assert_eq!(accepted.signer.as_deref(), Some(operator().public().id().0.as_str()));
    assert_eq!(accepted.signer_name.as_deref(), Some("bed-operator"));
    let limited_id = limited.public().id().0;
    assert!(records.iter().any(|r| r.job_id == Some(scripts.job_id) && r.signer.as_deref() == Some(&limited_id)));

    // The recorder keeps the trail, and the web view shows it with each signer and rule.
    let _recorder = cli.recorder("recorder")?;
    let (_serve, web) = cli.serve("serve", "127.0.0.1", &[]).await?;
    wait_until("the audit page", Duration::from_secs(30), || async {
        let body = reqwest::get(format!("{web}/audit")).await.ok()?.text().await.ok()?;
        let shows = ["host_paths", "clone_from", "replay", "limited", "bed-operator", "refused", "accepted"];
        shows.iter().all(|s| body.contains(s)).then_some(())
    })
    .await?;

    let after = wait_end(&bed.js, good.job_id).await?;
    assert_eq!(after, events, "a replay leaves the first job's events as they were");
    assert_eq!(bed.pve.containers().await?, containers, "no container made or removed");
    let writes: Vec<_> = bed.pve.calls().await?.into_iter().filter(|(method, ..)| method != "GET").collect();
    assert!(writes.is_empty(), "nothing written on fakepve: {writes:?}");
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn a_policy_not_signed_by_the_admin_or_older_than_the_last_is_ignored() -> anyhow::Result<()> {
    let bed = Fleet::start("trust-forged", &["pve1"]).await?;
    let agent = bed.agent("pve1")?;
    wait_until("the agent to take the bed's policy", Duration::from_secs(20), || async {
        agent.log_text().contains("policy taken").then_some(())
    })
    .await?;
    let mallory = Identity::generate();
    // Whoever can write the trust bucket, without the admin key: a policy of their own.
    let forged = Policy { serial: 99, signer: vec![Grant::everything("mallory", &mallory.public())] };
    put_policy(&bed.js, &forged, &mallory).await?;
    wait_until("the agent to ignore the forged policy", Duration::from_secs(20), || async {
        agent.log_text().contains("IGNORED a policy").then_some(())
    })
    .await?;
    let job = create_job("pve1", "mallory", Ipv4Addr::new(127, 0, 0, 70));
    publish(&bed, &job, signed_by(&job, &mallory), None).await?;
    refused(&bed, job.job_id, "signer").await?;

    // An older policy the admin did sign once, put back: its serial is below the one held.
    let newer = Policy { serial: 5, ..trust::everything() };
    put_policy(&bed.js, &newer, admin()).await?;
    wait_until("the agent to take serial 5", Duration::from_secs(20), || async {
        agent.log_text().contains("policy taken serial=5").then_some(())
    })
    .await?;
    let older = Policy { serial: 3, signer: vec![Grant::everything("mallory", &mallory.public())] };
    put_policy(&bed.js, &older, admin()).await?;
    wait_until("the agent to ignore the older policy", Duration::from_secs(20), || async {
        agent.log_text().contains("below the one held").then_some(())
    })
    .await?;
    let again = create_job("pve1", "mallory-2", Ipv4Addr::new(127, 0, 0, 71));
    publish(&bed, &again, signed_by(&again, &mallory), None).await?;
    refused(&bed, again.job_id, "signer").await?;
    // The last good policy still stands: the operator's job runs.
    let good = create_job("pve1", "still-good", Ipv4Addr::new(127, 0, 0, 72));
    let events = run_to_end(&bed.js, &good).await?;
    assert!(result_of(&events).success, "{events:#?}");
    assert_eq!(bed.pve.containers().await?.len(), 1);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn an_agent_without_a_policy_or_admin_key_refuses_everything_and_says_how_to_fix_it() -> anyhow::Result<()> {
    let bed = Fleet::start("trust-none", &["pve1"]).await?;
    // No admin key in its config.
    let _agent = bed.agent_with(pvefleet_testbed::agent::AgentOptions {
        extra_config: "[trust]\nadmin_keys = []\n".into(),
        ..pvefleet_testbed::agent::AgentOptions::node("pve1")
    })?;
    let job = create_job("pve1", "no-admin", Ipv4Addr::new(127, 0, 0, 73));
    publish(&bed, &job, trust::signed(&job), None).await?;
    refused(&bed, job.job_id, "policy").await?;
    let events = wait_end(&bed.js, job.job_id).await?;
    assert!(result_of(&events).error.as_ref().unwrap().message.contains("admin_keys"), "says how to fix it");
    assert!(bed.pve.containers().await?.is_empty());
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn control_requests_are_signed_and_checked_too() -> anyhow::Result<()> {
    let bed = Fleet::start("trust-control", &["pve1"]).await?;
    let _agent = bed.agent("pve1")?;
    let client = bed.nats.client().await?;
    let node = NodeName::new("pve1")?;
    let job = JobId::new();
    let ask = |payload: Vec<u8>| {
        let client = client.clone();
        let node = node.clone();
        async move {
            let reply = wait_until("the agent to answer", Duration::from_secs(20), || {
                let (client, payload, node) = (client.clone(), payload.clone(), node.clone());
                async move { client.request(pvefleet_schemas::names::cancel_subject(&node), payload.into()).await.ok() }
            })
            .await?;
            anyhow::Ok(serde_json::from_slice::<pvefleet_schemas::CancelReply>(&reply.payload)?)
        }
    };
    let request = pvefleet_schemas::CancelRequest::new(node.clone(), job);
    let unsigned = ask(serde_json::to_vec(&request)?).await?;
    assert!(!unsigned.ok && unsigned.message.contains("`signature`"), "{unsigned:?}");
    let stranger = ask(signed_by(&request, &Identity::generate())).await?;
    assert!(!stranger.ok && stranger.message.contains("`signer`"), "{stranger:?}");
    let bytes = trust::signed(&request);
    let signed = ask(bytes.clone()).await?;
    assert!(signed.message.contains("not running"), "checked, then answered: {signed:?}");
    // The same signed request again, as whoever captured it would send it: not acted on, not
    // answered, and in the audit trail.
    let replayed = tokio::time::timeout(
        Duration::from_secs(3),
        client.request(pvefleet_schemas::names::cancel_subject(&node), bytes.into()),
    )
    .await;
    assert!(!matches!(replayed, Ok(Ok(_))), "a replayed cancel is not answered: {replayed:?}");
    let cli = Pvefleet::new(&bed.dir, &bed.nats.url(), &TestDb::sqlite(&bed.dir));
    wait_until("the replay in the audit trail", Duration::from_secs(20), || async {
        let records = audit(&cli).await.ok()?;
        records.iter().any(|r| r.action == "cancel" && r.rule.as_deref() == Some("replay")).then_some(())
    })
    .await?;
    bed.dir.pass();
    Ok(())
}
