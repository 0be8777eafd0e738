//! Job and step durations as histograms, kept between `/metrics` scrapes: each scrape adds only
//! the jobs finished since the last one, from the time this serve process started (as any
//! Prometheus histogram counts since its process started: `rate()` sees the restart), so that
//! neither a scrape nor the start reads the whole history of a store of 100,000 jobs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    step: String,
}

/// Seconds, for job and step durations: from tenths of a second to an hour.
const BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

fn seconds_between(a: &str, b: &str) -> Option<f64> {
    let fmt = time::format_description::well_known::Rfc3339;
    let (a, b) = (time::OffsetDateTime::parse(a, &fmt).ok()?, time::OffsetDateTime::parse(b, &fmt).ok()?);
    Some((b - a).as_seconds_f64().max(0.0))
}

/// The duration histograms, kept up to date between scrapes: each scrape adds only the jobs
/// that finished since the last one (a finished job's durations never change), so a scrape
/// costs what is new, not every job the store has ever held.
#[derive(Debug)]
pub struct Durations {
    pub(super) jobs: Histogram,
    pub(super) steps: Family<StepLabels, Histogram>,
    /// The latest `finished_at` counted, and the jobs that finished at exactly that instant.
    since: Option<String>,
    at_since: std::collections::HashSet<String>,
}

impl Default for Durations {
    /// Histograms of the jobs that finish from now on.
    fn default() -> Self {
        // Written as the events' own timestamps are, so that the store compares like with like.
        let now = Some(pvefleet_schemas::Timestamp::now().to_string());
        Self {
            jobs: Histogram::new(BUCKETS),
            steps: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
            since: now,
            at_since: Default::default(),
        }
    }
}

impl Durations {
    /// Adds the jobs finished since the last call.
    pub(super) async fn catch_up(&mut self, store: &crate::store::Store) -> anyhow::Result<()> {
        let fresh: Vec<_> = store
            .finished_since(self.since.as_deref())
            .await?
            .into_iter()
            .filter(|j| !(j.finished_at == self.since && self.at_since.contains(&j.job_id)))
            .collect();
        for j in &fresh {
            if let (Some(start), Some(end)) = (&j.started_at, &j.finished_at)
                && let Some(s) = seconds_between(start, end)
            {
                self.jobs.observe(s);
            }
        }
        let ids: Vec<String> = fresh.iter().map(|j| j.job_id.clone()).collect();
        // A step lasts from its `step` event to the next one (or the job's end).
        let marks = store.step_marks_of(&ids).await?;
        for pair in marks.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.job_id == b.job_id
                && a.kind == "step"
                && let Some(s) = seconds_between(&a.timestamp, &b.timestamp)
            {
                self.steps.get_or_create(&StepLabels { step: a.step.clone().unwrap_or_default() }).observe(s);
            }
        }
        if let Some(last) = fresh.last().and_then(|j| j.finished_at.clone()) {
            if self.since.as_ref() != Some(&last) {
                self.at_since.clear();
            }
            self.at_since
                .extend(fresh.iter().filter(|j| j.finished_at.as_ref() == Some(&last)).map(|j| j.job_id.clone()));
            self.since = Some(last);
        }
        Ok(())
    }
}
