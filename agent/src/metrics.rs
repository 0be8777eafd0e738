//! The agent's own metrics, counted always (atomics; a few per job) and served in the
//! Prometheus text format on `metrics_listen` when set (off by default): jobs running and
//! finished by result and error kind, step durations, Proxmox API calls by method and status
//! with their latency, retries, NATS reconnects, redeliveries.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Finished {
    kind: &'static str,
    result: &'static str,
    error_kind: String,
}

/// A job kind as a label: one of the kinds this build runs, or `other` (a subject names the
/// kind, and anyone who may publish a job could make up any number of them).
pub fn kind_label(kind: &str) -> &'static str {
    use pvefleet_schemas::trust::Action;
    Action::ALL.into_iter().find(|a| !a.is_control() && a.as_str() == kind).map_or("other", Action::as_str)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

/// Every metric of this agent process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    running: Gauge,
    finished: Family<Finished, Counter>,
    steps: Family<StepLabel, Histogram>,
    calls: Family<Call, Counter>,
    latency: Family<Method, Histogram>,
    retries: Counter,
    reconnects: Counter,
    redeliveries: Counter,
    /// Whether the first connection was made: the `Connected` events after it are reconnects.
    connected_once: AtomicBool,
}

const STEP_BUCKETS: [f64; 12] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0];
const CALL_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("pvefleet_agent");
        let m = Self {
            running: Gauge::default(),
            finished: Family::default(),
            steps: Family::new_with_constructor(|| Histogram::new(STEP_BUCKETS)),
            calls: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(CALL_BUCKETS)),
            retries: Counter::default(),
            reconnects: Counter::default(),
            redeliveries: Counter::default(),
            connected_once: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register("jobs_running", "Jobs this agent runs now", m.running.clone());
        registry.register("jobs_finished", "Jobs this agent ended, by kind, result and error kind", m.finished.clone());
        registry.register("step_duration_seconds", "Steps run by this agent, by step", m.steps.clone());
        registry.register("proxmox_calls", "Proxmox API requests, by method and status", m.calls.clone());
        registry.register("proxmox_call_duration_seconds", "Proxmox API request latency, by method", m.latency.clone());
        registry.register(
            "proxmox_retries",
            "Proxmox API requests retried after a transient failure",
            m.retries.clone(),
        );
        registry.register("nats_reconnects", "NATS connections made again after the first", m.reconnects.clone());
        registry.register("redeliveries", "Job messages delivered more than once", m.redeliveries.clone());
        Self { registry, ..m }
    }

    pub fn job_started(&self) {
        self.running.inc();
    }

    pub fn job_stopped(&self) {
        self.running.dec();
    }

    /// A job of `kind` ended by this agent's terminal event.
    pub fn job_finished(&self, kind: &str, error_kind: Option<pvefleet_schemas::ErrorKind>) {
        let job_kind = kind_label(kind);
        let kind = error_kind
            .and_then(|k| serde_json::to_value(k).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let result = if error_kind.is_none() { "success" } else { "failure" };
        self.finished.get_or_create(&Finished { kind: job_kind, result, error_kind: kind }).inc();
    }

    pub fn step(&self, step: pvefleet_schemas::Step, took: Duration) {
        self.steps.get_or_create(&StepLabel { step: step.as_str() }).observe(took.as_secs_f64());
    }

    pub fn call(&self, method: &reqwest::Method, status: Option<u16>, took: Duration) {
        let status = status.map_or_else(|| "transport".to_owned(), |s| s.to_string());
        self.calls.get_or_create(&Call { method: method.to_string(), status }).inc();
        self.latency.get_or_create(&Method { method: method.to_string() }).observe(took.as_secs_f64());
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn connected(&self) {
        if self.connected_once.swap(true, Ordering::Relaxed) {
            self.reconnects.inc();
        }
    }

    pub fn redelivered(&self) {
        self.redeliveries.inc();
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

/// Serves `/metrics` on `addr` until `stop`.
pub async fn serve(addr: SocketAddr, stop: CancellationToken) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                metrics().render(),
            )
        }),
    );
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %pvefleet_schemas::report::error_chain(&e), %addr, "cannot listen for /metrics");
            return;
        }
    };
    tracing::info!(%addr, "serving /metrics");
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::warn!(error = %pvefleet_schemas::report::error_chain(&e), "/metrics stopped");
    }
}
