//! What a chaos run does: its seed, jobs, length, nodes and fault spacing.

use std::time::Duration;

use anyhow::Context as _;

/// What a run does.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub seed: u64,
    pub jobs: usize,
    /// How long submissions (the first 60%) and faults go on.
    pub seconds: u64,
    /// Proxmox nodes, one agent each.
    pub nodes: usize,
    pub concurrency: u32,
    /// The agents' ack wait (and job lease): short, so redeliveries happen within a run.
    pub ack_wait: Duration,
    pub shutdown_grace: Duration,
    /// Scales the time between faults; 1.0 is one every 2.5 s on average.
    pub fault_spacing: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seed: 1,
            jobs: 45,
            seconds: 90,
            nodes: 3,
            concurrency: 4,
            ack_wait: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            fault_spacing: 1.0,
        }
    }
}

impl Options {
    /// The command that runs these options again.
    pub fn command(&self) -> String {
        format!(
            "just chaos --seed {} --jobs {} --seconds {} --nodes {}",
            self.seed, self.jobs, self.seconds, self.nodes
        )
    }

    /// Reads `--seed N --jobs N --seconds N --nodes N --spacing F` (each optional).
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut opts = Self { seed: std::process::id().into(), ..Self::default() };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let value = args.next().with_context(|| format!("{flag} needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("{flag} {value}: {e}");
            match flag.as_str() {
                "--seed" => opts.seed = value.parse().map_err(|e| bad(&e))?,
                "--jobs" => opts.jobs = value.parse().map_err(|e| bad(&e))?,
                "--seconds" => opts.seconds = value.parse().map_err(|e| bad(&e))?,
                "--nodes" => opts.nodes = value.parse().map_err(|e| bad(&e))?,
                "--spacing" => opts.fault_spacing = value.parse().map_err(|e| bad(&e))?,
                other => anyhow::bail!("unknown flag {other} (flags: --seed --jobs --seconds --nodes --spacing)"),
            }
        }
        anyhow::ensure!(
            opts.nodes >= 1 && opts.jobs >= 1 && opts.seconds >= 1,
            "--nodes, --jobs and --seconds must be at least 1"
        );
        Ok(opts)
    }
}
