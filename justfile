# pvefleet's front door: every developer and CI entry point.
# `bash scripts/bootstrap` first on a fresh machine; it installs `just` into ./.venv/bin.

# The project's pinned tools (nats-server ≥ 2.11, fakepve, just) come before the system's.
export PATH := justfile_directory() / ".venv/bin" + ":" + env_var("PATH")

default:
    @just --list

# Install the pinned test tools (idempotent).
bootstrap:
    bash scripts/bootstrap

# Build everything.
build:
    cargo build --workspace --all-targets

# The whole test suite: unit tests and integration tests against real servers. The
# integration tests run the built binaries, so those are built first.
test: lint
    cargo build --workspace --bins --examples --locked
    cargo test --workspace --locked

# Format check and lints, as CI would want them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Regenerate the checked-in JSON Schemas after changing a message type.
schemas:
    PVEFLEET_BLESS=1 cargo test -p pvefleet-schemas --test golden checked_in_schemas_are_current

# The fault harness: a 3-node JetStream cluster, fakepve with several nodes, an agent each,
# generated faults, and a checker over the whole history. Flags: --seed N --jobs N
# --seconds N --nodes N --spacing F. Exits 1 on any violation.
chaos *FLAGS:
    cargo build --workspace --bins --examples --locked
    cargo run -q -p pvefleet-testbed --example chaos --locked -- {{FLAGS}}

# The smoke run against a real Proxmox VE node (not in CI): its own nats-server and agent,
# then plan -> create (a file, a script) -> watch -> destroy, and nothing left. The target comes
# from PVEFLEET_SMOKE_* variables (it lists them when one is missing); README: "A smoke run".
test-proxmox:
    cargo build --workspace --bins --examples --locked
    ./target/debug/examples/smoke

# The demo fleet: a local NATS, fake Proxmox, sshd and two agents running three jobs.
demo:
    bash scripts/demo

# Benchmarks (release build), printing their figures: the fleet (latency, throughput, CPU,
# memory, calls per job, each against the floor measured in the same run), SFTP upload
# against OpenSSH's sftp, what signing and deciding on a job cost, and the coordinator with
# 100,000 jobs and 2,000,000 events on SQLite and Postgres (PVEFLEET_BENCH_JOBS,
# PVEFLEET_BENCH_DBS change them; it takes about 15 minutes).
bench:
    cargo build --release --workspace --bins --locked
    cargo bench -p pvefleet-testbed --bench fleet --locked
    cargo bench -p pvefleet-testbed --bench sftp --locked
    cargo bench -p pvefleet-testbed --bench trust --locked
    cargo bench -p pvefleet-testbed --bench coordinator --locked
