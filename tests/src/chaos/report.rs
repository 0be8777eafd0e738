//! The report: one summary line (seed, jobs, outcomes, each fault class's count, each
//! violation's count), then for each violation the job's whole event history and the command
//! that replays the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Options;
use super::check::{Outcomes, Violation};
use super::history::History;
use super::observe::Observed;

/// A finished run.
#[derive(Debug)]
pub struct Report {
    pub opts: Options,
    pub outcomes: Outcomes,
    pub faults: BTreeMap<&'static str, u32>,
    pub violations: Vec<Violation>,
    /// Each violation with its job's events, ready to print.
    pub details: Vec<String>,
    pub seconds: f64,
}

impl Report {
    pub fn new(
        opts: &Options,
        history: &History,
        seen: &Observed,
        outcomes: Outcomes,
        violations: Vec<Violation>,
        seconds: f64,
    ) -> Self {
        let details = violations.iter().map(|v| detail(opts, v, seen)).collect();
        Self { opts: opts.clone(), outcomes, faults: history.faults.clone(), violations, details, seconds }
    }

    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// `chaos seed=… jobs=… (kind:n,…) completed=… failed=kind:n,… faults=class:n,… violations=n (kind:n,…)`
    pub fn summary(&self) -> String {
        let list = |m: &mut dyn Iterator<Item = (String, usize)>| {
            let parts: Vec<String> = m.map(|(k, n)| format!("{k}:{n}")).collect();
            if parts.is_empty() { "none".to_owned() } else { parts.join(",") }
        };
        let failed = list(&mut self.outcomes.failed.iter().map(|(k, n)| (k.clone(), *n)));
        let kinds = list(&mut self.outcomes.kinds.iter().map(|(k, n)| ((*k).to_owned(), *n)));
        let faults = list(&mut self.faults.iter().map(|(k, n)| ((*k).to_owned(), *n as usize)));
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &self.violations {
            *by_kind.entry(v.kind).or_default() += 1;
        }
        let violations = list(&mut by_kind.iter().map(|(k, n)| ((*k).to_owned(), *n)));
        format!(
            "chaos seed={} jobs={} ({kinds}) completed={} failed={failed} faults={faults} violations={} ({violations}) in {:.0}s",
            self.opts.seed,
            self.outcomes.jobs,
            self.outcomes.completed,
            self.violations.len(),
            self.seconds
        )
    }

    /// The summary, then every violation in full.
    pub fn full(&self) -> String {
        let mut out = self.summary();
        for d in &self.details {
            out.push_str("\n\n");
            out.push_str(d);
        }
        out
    }
}

fn detail(opts: &Options, v: &Violation, seen: &Observed) -> String {
    let mut out = format!("VIOLATION {}: {}", v.kind, v.detail);
    if let Some(job) = v.job {
        let _ = write!(out, "\n  job {job}; its events:");
        for e in seen.events.get(&job).into_iter().flatten() {
            let stream = e.stream.map(|s| format!(" [{s:?}]")).unwrap_or_default();
            let step = e.step.map(|s| s.to_string()).unwrap_or_default();
            let _ = write!(
                out,
                "\n    {:>3} {} {:?} {step} {}%{stream} {}",
                e.seq, e.timestamp, e.kind, e.percent, e.message
            );
            if let Some(r) = &e.result {
                let _ = write!(out, "\n        result: {}", serde_json::to_string(r).unwrap_or_default());
            }
        }
    }
    let _ = write!(out, "\n  replay: {}", opts.command());
    out
}
