//! The example configuration shipped in `deploy/` parses as the agent reads it.

use pvefleet_agent::config::Config;

#[test]
fn example_agent_toml_parses() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token-secret");
    std::fs::write(&secret, "00000000-0000-0000-0000-000000000000\n").unwrap();
    // The example names /etc/pvefleet/token-secret; the environment overrides it, as it can in production.
    let env = |k: &str| (k == "PVEFLEET_PROXMOX_TOKEN_SECRET_FILE").then(|| secret.display().to_string());
    let config = Config::load(Some(&example), env).unwrap();
    assert_eq!(config.node.as_str(), "pve1");
    assert_eq!(config.nats.urls.len(), 3);
    assert_eq!(config.concurrency, 4);
}
