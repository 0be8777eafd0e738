//! `/metrics` of the fleet in the Prometheus text format: jobs by state and node (counted by the
//! database at each scrape), job and step durations as histograms (kept up to date: a scrape
//! adds only the jobs finished since the last), and the jobs queued per node.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Web;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    state: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

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
    jobs: Histogram,
    steps: Family<StepLabels, Histogram>,
    /// The latest `finished_at` counted, and the jobs that finished at exactly that instant.
    since: Option<String>,
    at_since: std::collections::HashSet<String>,
}

impl Default for Durations {
    fn default() -> Self {
        Self {
            jobs: Histogram::new(BUCKETS),
            steps: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
            since: None,
            at_since: Default::default(),
        }
    }
}

impl Durations {
    /// Adds the jobs finished since the last call.
    async fn catch_up(&mut self, store: &crate::store::Store) -> anyhow::Result<()> {
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

pub async fn metrics(State(web): State<Web>) -> Response {
    match render(&web).await {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn render(web: &Web) -> anyhow::Result<String> {
    let mut registry = Registry::with_prefix("pvefleet");
    let jobs = Family::<JobLabels, Gauge>::default();
    let queued = Family::<NodeLabels, Gauge>::default();
    for (state, node, n) in web.store.job_counts().await? {
        jobs.get_or_create(&JobLabels { state, node }).set(n);
    }
    let (job_seconds, steps) = {
        let mut durations = web.durations.lock().await;
        durations.catch_up(&web.store).await?;
        (durations.jobs.clone(), durations.steps.clone())
    };
    if let Ok(stream) = web.js.get_stream(pvefleet_schemas::names::JOBS_STREAM).await
        && let Ok(mut subjects) = stream.info_with_subjects(pvefleet_schemas::names::JOBS_SUBJECTS).await
    {
        use futures::StreamExt as _;
        while let Some(Ok((subject, n))) = subjects.next().await {
            if let Some(node) = subject.split('.').nth(2) {
                queued
                    .get_or_create(&NodeLabels { node: node.to_owned() })
                    .inc_by(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
    registry.register("jobs", "Jobs recorded in the store, by state and node", jobs);
    registry.register("queued_jobs", "Job messages waiting in PVEFLEET_JOBS, by node", queued);
    registry.register("job_duration_seconds", "Finished jobs' run time, first event to terminal", job_seconds);
    registry.register("step_duration_seconds", "Steps of finished jobs, by step", steps);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}
