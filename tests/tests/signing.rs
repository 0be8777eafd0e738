//! Signed requests across languages: a job signed in Python with PyNaCl, following only
//! schemas/SIGNING.md, verifies in pvefleet and decodes as a job; one signed by `pvefleet sign`
//! verifies in Python; and a changed byte fails either way.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use pvefleet_schemas::Job;
use pvefleet_schemas::signing::{self, SignerKey, VerifyError};
use pvefleet_testbed::TestDir;
use pvefleet_testbed::jobs::create_job;
use pvefleet_testbed::tools::{pynacl_python, workspace_bin};

/// RFC 8785 for what pvefleet sends, in Python: SIGNING.md's, as a client in another language
/// would write it.
const PYTHON_CANONICAL: &str = r#"
import json

def canonical(v):
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, dict):
        items = sorted(v.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(canonical(k) + ":" + canonical(x) for k, x in items) + "}"
    if isinstance(v, list):
        return "[" + ",".join(canonical(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
"#;

/// Signs the job on standard input with a new key; prints the key and the signed job.
const PYTHON_SIGNER: &str = r#"
import base64, hashlib, json, sys
from nacl.signing import SigningKey


job = json.load(sys.stdin)
key = SigningKey.generate()
public = bytes(key.verify_key)
key_id = "SHA256:" + base64.b64encode(hashlib.sha256(public).digest()).decode().rstrip("=")
job["auth"] = {"signer": key_id, "not_after": sys.argv[1]}
data = b"pvefleet-request-v1\n" + canonical(job).encode()
job["auth"]["signature"] = base64.b64encode(key.sign(data).signature).decode()
print(json.dumps({"public": "ed25519:" + base64.b64encode(public).decode(), "signed": job}))
"#;

/// Verifies the job on standard input against the public key in its argument.
const PYTHON_VERIFIER: &str = r#"
import base64, json, sys
from nacl.signing import VerifyKey
from nacl.exceptions import BadSignatureError


public = base64.b64decode(sys.argv[1].removeprefix("ed25519:"))
job = json.load(sys.stdin)
signature = base64.b64decode(job["auth"].pop("signature"))
try:
    VerifyKey(public).verify(b"pvefleet-request-v1\n" + canonical(job).encode(), signature)
    print("verified")
except BadSignatureError:
    print("refused")
"#;

fn run(program: &std::path::Path, args: &[&str], stdin: &str) -> anyhow::Result<String> {
    let mut child =
        Command::new(program).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "{} {args:?}: {}", program.display(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// A job with a bit of everything canonical JSON must get right: a float, a nested map, text
/// with a control character and a non-ASCII letter.
fn job() -> anyhow::Result<serde_json::Value> {
    let mut job = create_job("pve1", "signed", Ipv4Addr::new(127, 0, 0, 9));
    job.container.cpulimit = Some(1.5);
    job.container.description = Some("Grüße\ttab \"quoted\"".into());
    job.container.env.insert("MODE".into(), "prod".into());
    Ok(serde_json::to_value(&job)?)
}

#[test]
fn a_job_signed_in_python_verifies_here_and_one_signed_here_verifies_in_python() -> anyhow::Result<()> {
    let python = pynacl_python()?;
    let not_after = pvefleet_schemas::Timestamp(time::OffsetDateTime::now_utc() + time::Duration::minutes(30));
    let out = run(
        &python,
        &["-c", &format!("{PYTHON_CANONICAL}{PYTHON_SIGNER}"), &not_after.to_string()],
        &job()?.to_string(),
    )?;
    let out: serde_json::Value = serde_json::from_str(&out)?;
    let key: SignerKey = out["public"].as_str().expect("a key").parse().map_err(anyhow::Error::msg)?;
    let signed = out["signed"].clone();
    let known = |id: &signing::SignerId| (id == &key.id()).then_some(key);
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(signing::verify(&signed, known, now), Ok(key), "{signed}");
    let decoded = Job::decode(signed.to_string().as_bytes())?;
    assert_eq!(decoded.auth.as_ref().map(|a| a.signer.clone()), Some(key.id().0));
    let mut changed = signed.clone();
    changed["container"]["memory"] = 513.into();
    assert!(matches!(signing::verify(&changed, known, now), Err(VerifyError::BadSignature(_))));

    // And the other way: `pvefleet identity new` and `pvefleet sign`, checked by PyNaCl.
    let dir = TestDir::new("signing");
    let identity = dir.path().join("me.key");
    let identity = identity.to_str().expect("a UTF-8 path");
    let pvefleet = workspace_bin("pvefleet")?;
    let made = run(&pvefleet, &["--identity", identity, "identity", "new"], "")?;
    let public = made.lines().find_map(|l| l.strip_prefix("public key: ")).expect("a public key").trim().to_owned();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(identity)?.permissions());
    assert_eq!(mode & 0o777, 0o600);
    let signed = run(&pvefleet, &["--identity", identity, "sign", "--valid", "5"], &job()?.to_string())?;
    assert_eq!(
        run(&python, &["-c", &format!("{PYTHON_CANONICAL}{PYTHON_VERIFIER}"), &public], &signed)?.trim(),
        "verified"
    );
    let tampered = signed.replace("\"pve1\"", "\"pve2\"");
    assert_ne!(tampered, signed);
    assert_eq!(
        run(&python, &["-c", &format!("{PYTHON_CANONICAL}{PYTHON_VERIFIER}"), &public], &tampered)?.trim(),
        "refused"
    );
    dir.pass();
    Ok(())
}

/// The issue's own words: a job signed with another language's library, its key named in the
/// admin's policy, is taken by a real agent and runs to its end.
#[tokio::test]
async fn an_agent_runs_a_job_signed_in_python() -> anyhow::Result<()> {
    let python = pynacl_python()?;
    let bed = pvefleet_testbed::Fleet::start("signing-python", &["pve1"]).await?;
    let not_after = pvefleet_schemas::Timestamp(time::OffsetDateTime::now_utc() + time::Duration::minutes(30));
    let job = create_job("pve1", "from-python", Ipv4Addr::new(127, 0, 0, 8));
    let out = run(
        &python,
        &["-c", &format!("{PYTHON_CANONICAL}{PYTHON_SIGNER}"), &not_after.to_string()],
        &serde_json::to_string(&job)?,
    )?;
    let out: serde_json::Value = serde_json::from_str(&out)?;
    let key: SignerKey = out["public"].as_str().expect("a key").parse().map_err(anyhow::Error::msg)?;
    let policy = pvefleet_schemas::trust::Policy {
        serial: 2,
        signer: vec![pvefleet_schemas::trust::Grant::new("python-client", &key)],
    };
    pvefleet_testbed::trust::put_policy(&bed.js, &policy, pvefleet_testbed::trust::admin()).await?;
    let _agent = bed.agent("pve1")?;
    // A recorder, running while the job runs (as `pvefleet record` always does).
    let db = pvefleet_testbed::cli::TestDb::sqlite(&bed.dir);
    let cli = pvefleet_testbed::cli::Pvefleet::new(&bed.dir, &bed.nats.url(), &db);
    let recorder = cli.recorder("recorder")?;
    pvefleet_testbed::wait_until("the recorder on pve1's events", std::time::Duration::from_secs(30), || async {
        recorder.log_text().contains("on PVEFLEET_EVENTS_pve1 is in place").then_some(())
    })
    .await?;
    let payload = serde_json::to_vec(&out["signed"])?;
    pvefleet_testbed::jobs::submit_unsigned(&bed.js, &job.node, &job.job_id.to_string(), payload).await?;
    let events = pvefleet_testbed::jobs::wait_end(&bed.js, job.job_id).await?;
    let result = pvefleet_testbed::jobs::result_of(&events);
    assert!(result.success, "{events:#?}");
    // Published on the wire, not through a store: the recorder reads the job itself (from the
    // sequence its `accepted` event names), so the store shows it with its hostname.
    assert!(events[0].job_seq.is_some(), "the accepted event names the job's sequence: {:?}", events[0]);
    let id = job.job_id.to_string();
    let shown = pvefleet_testbed::wait_until("the job in the store", std::time::Duration::from_secs(30), || async {
        let run = cli.run(&["job", &id, "--json"]).await.ok()?;
        let shown: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
        (shown["state"] == "succeeded").then_some(shown)
    })
    .await?;
    assert_eq!((shown["hostname"].as_str(), shown["kind"].as_str()), (Some("from-python"), Some("create")), "{shown}");
    bed.dir.pass();
    Ok(())
}
