//! `/metrics` of the fleet in the Prometheus text format, built at each scrape from what the
//! store recorded and what the jobs stream holds: jobs by state and node, job and step
//! durations as histograms, and the jobs queued per node.

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
struct StepLabels {
    step: String,
}

/// Seconds, for job and step durations: from tenths of a second to an hour.
const BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

fn seconds_between(a: &str, b: &str) -> Option<f64> {
    let fmt = time::format_description::well_known::Rfc3339;
    let (a, b) = (time::OffsetDateTime::parse(a, &fmt).ok()?, time::OffsetDateTime::parse(b, &fmt).ok()?);
    Some((b - a).as_seconds_f64().max(0.0))
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
    let job_seconds = Histogram::new(BUCKETS);
    let steps = Family::<StepLabels, Histogram>::new_with_constructor(|| Histogram::new(BUCKETS));
    let mut finished = std::collections::HashSet::new();
    for j in web.store.jobs(None, None).await? {
        jobs.get_or_create(&JobLabels { state: j.state.clone(), node: j.node.clone() }).inc();
        if let (Some(start), Some(end)) = (&j.started_at, &j.finished_at)
            && let Some(s) = seconds_between(start, end)
        {
            job_seconds.observe(s);
        }
        if j.finished_at.is_some() {
            finished.insert(j.job_id);
        }
    }
    // A step of a finished job lasts from its `step` event to the next one (or the job's end).
    let marks = web.store.step_marks().await?;
    for pair in marks.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.job_id == b.job_id
            && a.kind == "step"
            && finished.contains(&a.job_id)
            && let Some(s) = seconds_between(&a.timestamp, &b.timestamp)
        {
            steps.get_or_create(&StepLabels { step: a.step.clone().unwrap_or_default() }).observe(s);
        }
    }
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
