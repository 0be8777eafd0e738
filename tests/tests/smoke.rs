//! `just test-proxmox`'s smoke run, pointed at the test bed's fakepve and sshd, so the path an
//! operator runs against a real node cannot rot: plan → create with a file and a script →
//! watch → destroy, nothing left; and without its variables it refuses to start.

use std::net::Ipv4Addr;
use std::time::Duration;

use pvefleet_testbed::fakepve::OSTEMPLATE;
use pvefleet_testbed::{FakePve, FakePveOptions, Sshd, TestDir, init_tracing};

fn smoke_bin() -> anyhow::Result<std::path::PathBuf> {
    let bin = pvefleet_testbed::tools::workspace_bin("pvefleet")?.with_file_name("examples").join("smoke");
    anyhow::ensure!(
        bin.is_file(),
        "{} not found: build it with `cargo build --examples` (`just test` does)",
        bin.display()
    );
    Ok(bin)
}

#[tokio::test]
async fn the_smoke_run_passes_against_the_test_bed() -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("smoke-bed");
    let ip = Ipv4Addr::new(127, 0, 0, 140);
    let pve = FakePve::start(&dir, FakePveOptions::default()).await?;
    let sshd = Sshd::start(&dir, ip, &pve.keys_dir).await?;
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(smoke_bin()?)
            .env("PVEFLEET_SMOKE_URL", &pve.url)
            .env("PVEFLEET_SMOKE_TOKEN_ID", &pve.token_id)
            .env("PVEFLEET_SMOKE_TOKEN_SECRET_FILE", &pve.token_secret_file)
            .env("PVEFLEET_SMOKE_FINGERPRINT", &pve.fingerprint)
            .env("PVEFLEET_SMOKE_NODE", "pve1")
            .env("PVEFLEET_SMOKE_STORAGE", "local-lvm")
            .env("PVEFLEET_SMOKE_BRIDGE", "vmbr0")
            .env("PVEFLEET_SMOKE_TEMPLATE", OSTEMPLATE)
            .env("PVEFLEET_SMOKE_IP", format!("{ip}/32"))
            .env("PVEFLEET_SMOKE_SSH_USER", &sshd.user)
            .env("PVEFLEET_SMOKE_SSH_PORT", sshd.port.to_string())
            .env("PVEFLEET_SMOKE_AUTHORIZED_KEYS", format!("{}/%a", pve.keys_dir.display()))
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "smoke failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("smoke: will create on pve1"), "it says what it makes first: {stdout}");
    assert!(stdout.contains("every check passes") && stdout.contains("line 3"), "{stdout}");
    assert!(stdout.contains("destroyed") && stdout.trim_end().ends_with("smoke: ok"), "{stdout}");
    assert_eq!(pve.containers().await?, Vec::<u32>::new(), "nothing left");
    dir.pass();
    Ok(())
}

#[tokio::test]
async fn the_smoke_run_refuses_to_start_without_every_variable() -> anyhow::Result<()> {
    let out = tokio::process::Command::new(smoke_bin()?)
        .env_remove("PVEFLEET_SMOKE_URL")
        .env("PVEFLEET_SMOKE_NODE", "pve1")
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PVEFLEET_SMOKE_URL") && stderr.contains("PVEFLEET_SMOKE_IP"), "{stderr}");
    assert!(!stderr.contains("PVEFLEET_SMOKE_NODE:"), "a variable that is set is not asked for: {stderr}");
    Ok(())
}
