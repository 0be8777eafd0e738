//! The agent's SSH layer against a real OpenSSH sshd.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pvefleet_agent::ssh::{ExitStatus, HostKeyTrust, SshAuth, SshError, SshSession, SshTarget, UploadSource};
use pvefleet_schemas::{LogStream, Secret};
use pvefleet_testbed::sshd::keygen;
use pvefleet_testbed::{Sshd, TestDir, init_tracing};
use sha2::{Digest as _, Sha256};

struct Bed {
    dir: TestDir,
    sshd: Sshd,
    key: Arc<russh::keys::PrivateKey>,
}

/// An sshd on `ip` that authorizes a fresh ed25519 key.
async fn bed(name: &str, ip: Ipv4Addr) -> anyhow::Result<Bed> {
    init_tracing();
    let dir = TestDir::new(name);
    let sshd = Sshd::start(&dir, ip, &dir.sub("keys")).await?;
    let key = authorize(&dir, &sshd, "ed25519")?;
    Ok(Bed { dir, sshd, key })
}

fn authorize(dir: &TestDir, sshd: &Sshd, kind: &str) -> anyhow::Result<Arc<russh::keys::PrivateKey>> {
    let path = dir.path().join(format!("id_{kind}"));
    if kind == "ed25519" {
        keygen(&path, "test")?;
    } else {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
            .arg(&path)
            .output()?;
        anyhow::ensure!(out.status.success(), "ssh-keygen -t rsa failed");
    }
    let mut keys = std::fs::read_to_string(&sshd.authorized_keys).unwrap_or_default();
    keys.push_str(&std::fs::read_to_string(path.with_extension("pub"))?);
    std::fs::write(&sshd.authorized_keys, keys)?;
    Ok(Arc::new(russh::keys::load_secret_key(&path, None)?))
}

fn target(sshd: &Sshd, key: &Arc<russh::keys::PrivateKey>) -> SshTarget {
    SshTarget {
        addr: SocketAddr::from((sshd.ip, sshd.port)),
        user: sshd.user.clone(),
        auth: SshAuth::Key(key.clone()),
        trust: HostKeyTrust::Only(vec![sshd.host_fingerprint()]),
        connect_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn exec_keeps_streams_apart_and_reports_exit_codes_and_signals() -> anyhow::Result<()> {
    let bed = bed("ssh-exec", Ipv4Addr::new(127, 0, 0, 91)).await?;
    let ssh = SshSession::connect(&target(&bed.sshd, &bed.key)).await?;
    assert_eq!(ssh.host_key(), bed.sshd.host_fingerprint());
    let out = ssh.exec("echo to-out; echo to-err >&2; exit 7").await?;
    assert_eq!(out.stdout, b"to-out\n");
    assert_eq!(out.stderr, b"to-err\n");
    assert_eq!(out.status, ExitStatus::Code(7));
    assert!(ssh.exec("true").await?.status.success());
    // Output written after the command's exit status is still collected.
    let late = ssh.exec("(sleep 0.2; echo late) & exit 0").await?;
    assert_eq!(late.stdout, b"late\n");
    // Output without end is read to the end but not kept.
    let endless = ssh.exec("head -c 20000000 /dev/zero; echo done >&2").await?;
    assert!(endless.status.success() && endless.cut);
    assert_eq!(endless.stdout.len(), pvefleet_agent::ssh::EXEC_OUTPUT_MAX);
    assert_eq!(endless.stderr, b"done\n");
    let killed = ssh.exec("kill -KILL $$").await?;
    assert!(matches!(&killed.status, ExitStatus::Signal { name, .. } if name.contains("KILL")), "{:?}", killed.status);
    ssh.close().await;
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn streamed_lines_arrive_in_order_with_their_stream() -> anyhow::Result<()> {
    let bed = bed("ssh-stream", Ipv4Addr::new(127, 0, 0, 92)).await?;
    let ssh = SshSession::connect(&target(&bed.sshd, &bed.key)).await?;
    let mut run = ssh
        .exec_streaming("for i in 1 2 3; do echo out-$i; sleep 0.05; echo err-$i >&2; sleep 0.05; done; printf 'no-newline'; exit 3")
        .await?;
    let mut lines = Vec::new();
    while let Some(line) = run.next_line().await? {
        lines.push(line);
    }
    use LogStream::{Stderr, Stdout};
    let want: Vec<(LogStream, String)> = vec![
        (Stdout, "out-1".into()),
        (Stderr, "err-1".into()),
        (Stdout, "out-2".into()),
        (Stderr, "err-2".into()),
        (Stdout, "out-3".into()),
        (Stderr, "err-3".into()),
        (Stdout, "no-newline".into()),
    ];
    assert_eq!(lines, want);
    assert_eq!(run.status(), &ExitStatus::Code(3));
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn uploads_arrive_byte_identical_with_exact_modes() -> anyhow::Result<()> {
    let bed = bed("ssh-upload", Ipv4Addr::new(127, 0, 0, 93)).await?;
    let ssh = SshSession::connect(&target(&bed.sshd, &bed.key)).await?;
    let big = bed.dir.path().join("big.bin");
    let data = pvefleet_testbed::test_bytes(64 << 20);
    std::fs::write(&big, &data)?;
    let remote_dir = bed.dir.path().join("remote/a/b");
    // sshd's sftp runs with umask 077: the modes below only hold if set explicitly.
    for (name, mode) in [("secret.bin", 0o600), ("tool.bin", 0o755)] {
        let remote = remote_dir.join(name);
        let n = ssh.upload(&UploadSource::File(big.clone()), remote.to_str().unwrap(), mode, None).await?;
        assert_eq!(n, data.len() as u64);
        let got = std::fs::read(&remote)?;
        assert_eq!(Sha256::digest(&got), Sha256::digest(&data), "{name} differs");
        assert_eq!(std::fs::metadata(&remote)?.permissions().mode() & 0o7777, mode, "{name}");
    }
    let small = remote_dir.join("motd");
    ssh.upload(&UploadSource::Bytes("hello\n".into()), small.to_str().unwrap(), 0o644, Some(&bed.sshd.user)).await?;
    assert_eq!(std::fs::read_to_string(&small)?, "hello\n");
    assert_eq!(std::fs::metadata(&small)?.permissions().mode() & 0o7777, 0o644);
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn rsa_keys_sign_with_the_servers_best_hash() -> anyhow::Result<()> {
    let bed = bed("ssh-rsa", Ipv4Addr::new(127, 0, 0, 94)).await?;
    let rsa = authorize(&bed.dir, &bed.sshd, "rsa")?;
    let ssh = SshSession::connect(&target(&bed.sshd, &rsa)).await?;
    assert!(ssh.exec("true").await?.status.success());
    // OpenSSH 8.8+ refuses SHA-1 RSA signatures, so success means rsa-sha2 was used.
    assert!(bed.sshd.log_text().contains("Accepted publickey"), "{}", bed.sshd.log_text());
    bed.dir.pass();
    Ok(())
}

#[tokio::test]
async fn retry_waits_for_a_late_sshd_and_gives_up_at_its_deadline() -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("ssh-retry");
    let keys = dir.sub("keys");
    let mut late = Sshd::prepare(&dir, Ipv4Addr::new(127, 0, 0, 95), &keys)?;
    let key = authorize(&dir, &late, "ed25519")?;
    let t = target(&late, &key);
    let connecting = tokio::spawn(async move { SshSession::connect_with_retry(&t, Duration::from_secs(30)).await });
    // The scenario itself, not a wait for a condition: sshd comes up 3 s late.
    let late_by = Duration::from_secs(3);
    tokio::time::sleep(late_by).await;
    // Still trying, not given up at the first refusal.
    assert!(!connecting.is_finished(), "connect_with_retry ended before sshd came up: {:?}", connecting.await?.err());
    late.launch().await?;
    let ssh = connecting.await??;
    assert!(ssh.exec("true").await?.status.success());
    assert_eq!(late.log_text().matches("Accepted publickey").count(), 1, "{}", late.log_text());

    // Nothing ever listens here: it gives up at the deadline, naming the last failure.
    let never = Sshd::prepare(&dir, Ipv4Addr::new(127, 0, 0, 96), &keys)?;
    let started = Instant::now();
    let err = SshSession::connect_with_retry(&target(&never, &key), Duration::from_secs(2)).await.unwrap_err();
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(4), "{took:?}");
    // It names the last attempt's failure, not only that it gave up.
    assert!(matches!(&err, SshError::GaveUp { last, .. } if last.contains("Connection refused")), "{err}");
    dir.pass();
    Ok(())
}

#[tokio::test]
async fn wrong_host_keys_and_bad_credentials_fail_at_once() -> anyhow::Result<()> {
    let bed = bed("ssh-refuse", Ipv4Addr::new(127, 0, 0, 97)).await?;
    let connections_before = bed.sshd.log_text().matches("Connection from").count();
    let mut wrong = target(&bed.sshd, &bed.key);
    wrong.trust = HostKeyTrust::Only(vec!["SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()]);
    let started = Instant::now();
    let err = SshSession::connect_with_retry(&wrong, Duration::from_secs(20)).await.unwrap_err();
    assert!(matches!(&err, SshError::HostKey { seen, .. } if *seen == bed.sshd.host_fingerprint()), "{err}");

    let stranger = Arc::new(pvefleet_agent::ssh::job_key());
    let err = SshSession::connect_with_retry(&target(&bed.sshd, &stranger), Duration::from_secs(20)).await.unwrap_err();
    assert!(matches!(err, SshError::Auth { method: "public key", .. }), "{err}");
    let mut password = target(&bed.sshd, &bed.key);
    password.auth = SshAuth::Password(Secret::new("not-the-password"));
    let err = SshSession::connect_with_retry(&password, Duration::from_secs(20)).await.unwrap_err();
    assert!(matches!(err, SshError::Auth { method: "password", .. }), "{err}");
    // No retries: all three came back well before any backoff could add up.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let log = bed.sshd.log_text();
    assert_eq!(log.matches("Connection from").count() - connections_before, 3, "{log}");

    // Trusting the first key seen: the real key is accepted and reported.
    let mut tofu = target(&bed.sshd, &bed.key);
    tofu.trust = HostKeyTrust::FirstSeen;
    let ssh = SshSession::connect(&tofu).await?;
    assert_eq!(ssh.host_key(), bed.sshd.host_fingerprint());
    bed.dir.pass();
    Ok(())
}
