//! What the harness did, as the checker needs it: the jobs it submitted (and what each
//! `pvefleet submit` printed), each cancel and what it said, and how many faults of each
//! class it injected.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pvefleet_schemas::JobId;

/// A job the harness knows it submitted.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub index: usize,
    pub node: String,
    /// The request id, for a job submitted through `pvefleet submit`.
    pub request_id: Option<String>,
    /// A day-two job: on which container, asking what. None for a create.
    pub day_two: Option<DayTwo>,
}

/// A day-two job the harness submitted.
#[derive(Debug, Clone, Copy)]
pub struct DayTwo {
    pub vmid: u32,
    /// What it asks; None for one aimed at the stranger's container (it must be refused).
    pub then: Option<super::plan::Then>,
}

/// One `pvefleet cancel` run.
#[derive(Debug, Clone)]
pub struct CancelRun {
    pub job: JobId,
    pub code: Option<i32>,
    pub said: String,
}

#[derive(Debug, Default)]
pub struct History {
    pub jobs: BTreeMap<JobId, Submitted>,
    /// Request id → the job id each successful `pvefleet submit` of it printed.
    pub requests: BTreeMap<String, Vec<JobId>>,
    /// Submissions that never went through (the harness gave up on them).
    pub unsubmitted: Vec<String>,
    pub cancels: Vec<CancelRun>,
    /// Fault class → how many were injected.
    pub faults: BTreeMap<&'static str, u32>,
}

/// The history, shared by the harness's tasks.
pub type Shared = Arc<Mutex<History>>;

impl History {
    pub fn count(&mut self, class: &'static str) {
        *self.faults.entry(class).or_default() += 1;
    }
}
