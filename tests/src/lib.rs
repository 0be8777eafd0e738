//! The test bed: each test brings up its own real nats-server (single or a 3-node JetStream
//! cluster), fakepve and OpenSSH sshd on free loopback ports in a temp dir. Processes die with
//! their handles; when a test fails its temp dir and logs are kept and their paths printed.
//!
//! # Layout
//! - [`dir`]: the per-test temp dir that outlives a failing test, and the log registry.
//! - [`process`]: a child process whose output goes to a kept log and which dies on drop.
//! - [`wait`]: polling with a deadline (tests never sleep a fixed time).
//! - [`tools`]: finding the right binaries, with errors that say how to install them.
//! - [`nats`]: nats-server with JetStream, and a 3-node cluster with kill/restart.
//! - [`fakepve`]: the fake Proxmox VE API (PyPI `fakepve`, run by `bed/fakepve_launcher.py`)
//!   and its fault-injection controls.
//! - [`agent`]: `pvefleet-agent` as a real process against the bed's servers.
//! - [`chaos`]: the fault harness: generated faults against a whole fleet, and a checker.
//! - [`cli`]: the `pvefleet` CLI with a store on SQLite or the machine's Postgres.
//! - [`fleet`]: the usual start of a test: dir, nats-server with the streams, fakepve, agents.
//! - [`imports`]: the import graph of a crate, drawn from its sources, its circles and layers.
//! - [`jobs`]: building and publishing jobs, reading their events back, the event contract.
//! - [`shipped`]: the shipped `deploy/nats` configs on loopback, and clients logged in as their users.
//! - [`tls`]: a CA of the test's own and a server certificate, for NATS over TLS.
//! - [`sshd`]: OpenSSH's sshd on a chosen `127.0.0.x`, playing the containers.

pub mod agent;
pub mod browser;
pub mod chaos;
pub mod cli;
pub mod dir;
pub mod fakepve;
pub mod fleet;
pub mod imports;
pub mod jobs;
pub mod nats;
pub mod process;
pub mod shipped;
pub mod sshd;
pub mod tls;
pub mod tools;
pub mod wait;

pub use dir::TestDir;
pub use fakepve::{FakePve, FakePveOptions, LostAnswer};
pub use fleet::Fleet;
pub use nats::{NatsCluster, NatsServer};
pub use sshd::Sshd;
pub use wait::wait_until;

/// Sets up `tracing` output for a test once (honouring `RUST_LOG`), captured per test.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A free TCP port on `ip`, for servers that must be told their port before they start
/// (cluster routes, sshd). The listener is closed at once; on loopback the window in which
/// another process could take the port is negligible.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}

/// `len` bytes of xorshift output: incompressible, so nothing along the way (SSH compression,
/// a filesystem) can make a transfer look better than it is, and the same on every run.
pub fn test_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
