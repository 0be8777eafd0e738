//! Upload throughput: the agent's SFTP (russh-sftp) against OpenSSH's own `sftp` client, to the
//! same sshd, same 256 MiB file, in the same run. Prints MiB/s for both and the ratio.
//!
//! `just bench` (release build). Set `PVEFLEET_BENCH_MIB` to change the size.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pvefleet_agent::ssh::{HostKeyTrust, SshAuth, SshSession, SshTarget, UploadSource};
use pvefleet_testbed::sshd::keygen;
use pvefleet_testbed::{Sshd, TestDir, tools};

const RUNS: usize = 3;

fn sha256_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize().to_vec())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mib: usize = std::env::var("PVEFLEET_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let dir = TestDir::new("bench-sftp");
    let ip = Ipv4Addr::new(127, 0, 0, 120);
    let sshd = Sshd::start(&dir, ip, &dir.sub("keys")).await?;
    let key_path = dir.path().join("id_ed25519");
    keygen(&key_path, "bench")?;
    std::fs::copy(key_path.with_extension("pub"), &sshd.authorized_keys)?;
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("{}\n", sshd.known_hosts_line()))?;

    let local = dir.path().join("payload.bin");
    let data = pvefleet_testbed::test_bytes(mib << 20);
    std::fs::write(&local, &data)?;
    drop(data);
    let remote = dir.sub("remote");

    let target = SshTarget {
        addr: SocketAddr::from((ip, sshd.port)),
        user: sshd.user.clone(),
        auth: SshAuth::Key(Arc::new(russh::keys::load_secret_key(&key_path, None)?)),
        trust: HostKeyTrust::Only(vec![sshd.host_fingerprint()]),
        connect_timeout: Duration::from_secs(5),
    };
    let session = SshSession::connect(&target).await?;
    let mut ours = Vec::new();
    for i in 0..RUNS {
        let dest = remote.join(format!("ours-{i}.bin"));
        let started = Instant::now();
        session.upload(&UploadSource::File(local.clone()), dest.to_str().unwrap(), 0o644, None).await?;
        ours.push(started.elapsed());
        anyhow::ensure!(sha256_file(&dest)? == sha256_file(&local)?, "our upload differs");
        std::fs::remove_file(&dest)?;
    }
    session.close().await;

    let want = sha256_file(&local)?;
    let mut openssh_runs = Vec::new();
    // OpenSSH as operators run it, and tuned to what the agent does (255 KiB requests, AES-GCM).
    for (label, tuning) in [
        ("OpenSSH sftp, defaults:", vec![]),
        ("OpenSSH sftp, -B 255K -c aes256-gcm:", vec!["-B", "261120", "-R", "64", "-c", "aes256-gcm@openssh.com"]),
    ] {
        let mut openssh = Vec::new();
        for i in 0..RUNS {
            let dest = remote.join(format!("openssh-{i}.bin"));
            let batch = dir.path().join("batch");
            std::fs::write(&batch, format!("put {} {}\n", local.display(), dest.display()))?;
            let started = Instant::now();
            let out = Command::new(tools::openssh_client("sftp")?)
                .arg("-q")
                .args(&tuning)
                .arg("-b")
                .arg(&batch)
                .arg("-i")
                .arg(&key_path)
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
                .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
                .args(["-P", &sshd.port.to_string()])
                .arg(format!("{}@{ip}", sshd.user))
                .output()?;
            openssh.push(started.elapsed());
            anyhow::ensure!(out.status.success(), "sftp failed: {}", String::from_utf8_lossy(&out.stderr));
            anyhow::ensure!(sha256_file(&dest)? == want, "OpenSSH's upload differs");
            std::fs::remove_file(&dest)?;
        }
        openssh_runs.push((label, median(openssh)));
    }

    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    let ours = median(ours);
    println!(
        "sftp upload of {mib} MiB to OpenSSH sshd on loopback, median of {RUNS} runs (every upload checked by SHA-256)"
    );
    println!("  {:<40} {:8.1} MiB/s  ({:.2} s)", "pvefleet-agent (russh-sftp):", rate(ours), ours.as_secs_f64());
    for (label, took) in &openssh_runs {
        println!(
            "  {label:<40} {:8.1} MiB/s  ({:.2} s)   ratio ours/this: {:.2}x",
            rate(*took),
            took.as_secs_f64(),
            rate(ours) / rate(*took)
        );
    }
    dir.pass();
    Ok(())
}
