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
//! - [`trust`]: the bed's admin and operator keys, its allow-all policy, jobs signed as the operator.
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
pub mod trust;
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

/// A port free on `ip` now, for a server the test starts. It is taken below Linux's ephemeral
/// range (32768–60999), where the kernel never picks the source port of an outgoing
/// connection, and never handed out twice by this process: a port from `bind(0)` could be
/// taken by some other test's outgoing connection before the server binds it ("address
/// already in use", seen once in the route test).
pub fn free_port(ip: &str) -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> = Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = rand::random_range(20_000..32_768u16);
        if !given.contains(&port) && std::net::TcpListener::bind((ip, port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port on {ip} in 20000..32768 after 1000 tries")
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
