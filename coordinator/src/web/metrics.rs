//! `/metrics` of the fleet in the Prometheus text format: jobs by state, node and kind (the counts
//! the store keeps with every change of a job, read, not counted, at a scrape), job and step
//! durations as histograms since this serve process started (kept up to date: a scrape adds only
//! the jobs finished since the last), and the jobs queued per node.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Web;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    state: String,
    node: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
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
    for (state, node, kind, n) in web.store.job_counts().await? {
        jobs.get_or_create(&JobLabels { state, node, kind }).set(n);
    }
    let (job_seconds, steps) = {
        let mut durations = web.durations.lock().await;
        durations.catch_up(&web.store).await?;
        (durations.jobs.clone(), durations.steps.clone())
    };
    if let Ok(subjects) = crate::bus::stream_subjects(
        &web.js,
        pvefleet_schemas::names::JOBS_STREAM,
        pvefleet_schemas::names::JOBS_SUBJECTS,
    )
    .await
    {
        for (subject, n) in subjects {
            if let Some(node) = subject.split('.').nth(2) {
                queued
                    .get_or_create(&NodeLabels { node: node.to_owned() })
                    .inc_by(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
    registry.register("jobs", "Jobs recorded in the store, by state, node and kind", jobs);
    registry.register("queued_jobs", "Job messages waiting in PVEFLEET_JOBS, by node", queued);
    registry.register(
        "job_duration_seconds",
        "Finished jobs' run time, first event to terminal, since this serve process started",
        job_seconds,
    );
    registry.register(
        "step_duration_seconds",
        "Steps of finished jobs, by step, since this serve process started",
        steps,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}
