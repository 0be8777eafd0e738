//! The cost of trust on each job: what the coordinator spends signing a job, and what the
//! agent spends deciding on it (canonical JSON, the ed25519 check, the signer's grant in a
//! policy of 50 signers, and the spec's rules), on a job with a deploy (packages, a file, a
//! script). The goal (issue 20): under 0.1 ms per job on the agent. `just bench` (release).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use pvefleet_agent::trust::Trust;
use pvefleet_schemas::signing::Identity;
use pvefleet_schemas::trust::{Action, Grant, Policy, SignedDoc};
use pvefleet_testbed::jobs::create_job;

const ROUNDS: usize = 2000;

fn per_op(rounds: usize, mut op: impl FnMut()) -> Duration {
    // Five runs, the median: one slow run (another process) does not set the figure.
    let mut runs: Vec<Duration> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..rounds {
                op();
            }
            start.elapsed() / rounds as u32
        })
        .collect();
    runs.sort();
    runs[2]
}

fn main() -> anyhow::Result<()> {
    let admin = Identity::generate();
    let operator = Identity::generate();
    let mut signers: Vec<Grant> =
        (0..49).map(|i| Grant::new(&format!("op{i}"), &Identity::generate().public())).collect();
    signers.push(Grant::everything("operator", &operator.public()));
    let policy = Policy { serial: 1, signer: signers };
    let dir = tempfile::tempdir()?;
    let trust = Trust::load(vec![admin.public()], dir.path());
    trust.adopt(&SignedDoc::sign(&admin, &policy)?.encode()).map_err(anyhow::Error::msg)?;

    let mut job = create_job("pve1", "bench", Ipv4Addr::new(127, 0, 0, 9));
    job.deploy.packages = vec!["nginx".into(), "curl".into()];
    job.deploy.files.push(pvefleet_schemas::FileSpec::new("/etc/motd", "hello\n".repeat(20)));
    job.deploy
        .scripts
        .push(serde_json::from_value(serde_json::json!({"name": "setup", "body": "echo ok\n".repeat(20)}))?);
    let node = job.node.clone();

    let sign = per_op(ROUNDS, || {
        let mut value = serde_json::to_value(&job).expect("serializes");
        operator.sign(&mut value, 60).expect("signs");
        std::hint::black_box(serde_json::to_vec(&value).expect("serializes"));
    });
    let mut value = serde_json::to_value(&job)?;
    operator.sign(&mut value, 60)?;
    let bytes = serde_json::to_vec(&value)?;
    let decide = per_op(ROUNDS, || {
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        let admitted = trust.admit(&value, Action::Create, &node, true).expect("admitted");
        let job = pvefleet_schemas::Job::decode(&bytes).expect("a job");
        admitted.grant.allows_create(&job).expect("allowed");
    });
    let decode_only = per_op(ROUNDS, || {
        std::hint::black_box(pvefleet_schemas::Job::decode(&bytes).expect("a job"));
    });
    println!("trust bench ({} bytes per signed job, 50 signers in the policy, median of 5 x {ROUNDS}):", bytes.len());
    println!("  coordinator: sign a job                       {:>8.1} µs", sign.as_secs_f64() * 1e6);
    println!(
        "  agent: decide on a job (parse, verify, grant)  {:>7.1} µs   (goal < 100 µs: {})",
        decide.as_secs_f64() * 1e6,
        if decide < Duration::from_micros(100) { "met" } else { "NOT met" }
    );
    println!(
        "  of which the decoding the agent did before    {:>7.1} µs   (trust adds {:.1} µs)",
        decode_only.as_secs_f64() * 1e6,
        (decide.saturating_sub(decode_only)).as_secs_f64() * 1e6
    );
    Ok(())
}
