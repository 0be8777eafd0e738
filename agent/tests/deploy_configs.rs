//! The example configuration shipped in `deploy/` parses as the agent reads it.

use pvefleet_agent::config::Config;

#[test]
fn example_agent_toml_parses() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token-secret");
    std::fs::write(&secret, "00000000-0000-0000-0000-000000000000\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ca = dir.path().join("nats-ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
    // The example names files under /etc/pvefleet; the environment overrides them, as it can in production.
    let env = |k: &str| match k {
        "PVEFLEET_PROXMOX_TOKEN_SECRET_FILE" => Some(secret.display().to_string()),
        "PVEFLEET_NATS_CA_FILE" => Some(ca.display().to_string()),
        _ => None,
    };
    let config = Config::load(Some(&example), env).unwrap();
    assert_eq!(config.node.as_str(), "pve1");
    assert_eq!(config.nats.urls.len(), 3);
    assert_eq!(config.concurrency, 4);
    assert_eq!(config.nats.ca_file.as_deref(), Some(ca.as_path()));
    assert_eq!(config.files_dir, std::path::Path::new("/var/lib/pvefleet/files"));
    assert_eq!(config.state_dir, std::path::Path::new("/var/lib/pvefleet"));
}
