//! Control requests: `pvefleet.control.<node>.cancel` and `.plan`, each answered on its
//! reply subject, one span per request.

use std::sync::Arc;

use futures::StreamExt as _;
use pvefleet_schemas::{JobId, PlanRequest};

use crate::jobs::plan;
use crate::shared::{Shared, job_id_of};

/// Answers plan requests until the agent stops.
pub async fn serve_plans(shared: Arc<Shared>) {
    let subject = pvefleet_schemas::names::plan_subject(&shared.config.node);
    answer_requests(&shared, subject, "plan", |payload| {
        let shared = &shared;
        async move {
            match PlanRequest::decode(&payload) {
                Ok(req) => plan::plan(&shared.pve, &shared.config, &req.job).await,
                Err(e) => plan::refused(&shared.config.node, format!("unreadable plan request: {e}")),
            }
        }
    })
    .await
}

/// Answers the control requests on `subject` until the agent stops: each request's payload
/// goes to `answer`, whose reply is sent back (a request without a reply subject is dropped).
async fn answer_requests<Fut, R>(shared: &Shared, subject: String, what: &str, answer: impl Fn(bytes::Bytes) -> Fut)
where
    Fut: std::future::Future<Output = R>,
    R: serde::Serialize,
{
    let mut requests = match shared.bus.client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %pvefleet_schemas::report::error_chain(&e), %subject, "cannot listen for {what} requests");
            return;
        }
    };
    loop {
        let request = tokio::select! {
            r = requests.next() => match r { Some(r) => r, None => return },
            _ = shared.stop.cancelled() => return,
        };
        let Some(reply) = request.reply.clone() else { continue };
        // One span per request, naming its job when it names one.
        let job_id = job_id_of(&request.payload).map(|j| j.to_string()).unwrap_or_default();
        let span = tracing::info_span!("control", request = what, %job_id);
        let payload = serde_json::to_vec(&tracing::Instrument::instrument(answer(request.payload), span).await)
            .expect("a reply serializes");
        if let Err(e) = shared.bus.client.publish(reply, payload.into()).await {
            tracing::warn!(error = %pvefleet_schemas::report::error_chain(&e), "{what} reply not sent");
        }
    }
}

/// Answers `pvefleet.control.<node>.cancel` requests: `{"job_id": …}` → `{"ok": bool, "message": …}`.
pub async fn serve_cancels(shared: Arc<Shared>) {
    let subject = pvefleet_schemas::names::cancel_subject(&shared.config.node);
    answer_requests(&shared, subject, "cancel", |payload| {
        let shared = &shared;
        async move {
            match pvefleet_schemas::CancelRequest::decode(&payload) {
                Err(e) => {
                    pvefleet_schemas::CancelReply { ok: false, message: format!("unreadable cancel request: {e}") }
                }
                Ok(req) => {
                    let running = shared.cancels.lock().expect("cancels").get(&req.job_id).cloned();
                    match running {
                        Some(token) => {
                            token.cancel();
                            tracing::info!(job_id = %req.job_id, "cancel requested");
                            pvefleet_schemas::CancelReply {
                                ok: true,
                                message: format!("job {} is being cancelled", req.job_id),
                            }
                        }
                        None => cancel_between_deliveries(shared, req.job_id).await,
                    }
                }
            }
        }
    })
    .await
}

/// A cancel for a job this agent is not running now: one that has begun here (it has a
/// checkpoint) and is waiting for its next delivery is cancelled when that delivery starts.
async fn cancel_between_deliveries(shared: &Shared, job_id: JobId) -> pvefleet_schemas::CancelReply {
    let node = &shared.config.node;
    let key = pvefleet_schemas::names::checkpoint_key(node, &job_id);
    match shared.bus.checkpoints.get(&key).await {
        Ok(Some(_)) => {
            let mut cancelled = shared.cancelled.lock().expect("cancelled");
            // Bounded: a flood of cancels for made-up jobs cannot grow it without end.
            if cancelled.len() >= 10_000 {
                cancelled.pop_first();
            }
            cancelled.insert(job_id);
            tracing::info!(%job_id, "cancel requested between deliveries");
            pvefleet_schemas::CancelReply {
                ok: true,
                message: format!("job {job_id} is between deliveries on {node}; it is cancelled when it resumes"),
            }
        }
        Ok(None) => {
            pvefleet_schemas::CancelReply { ok: false, message: format!("job {job_id} is not running on {node}") }
        }
        Err(e) => pvefleet_schemas::CancelReply {
            ok: false,
            message: format!("job {job_id}: its checkpoint could not be read on {node} ({e})"),
        },
    }
}
