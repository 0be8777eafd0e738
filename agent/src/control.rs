//! Control requests: `pvefleet.control.<node>.cancel` and `.plan`, each answered on its
//! reply subject, one span per request.

use std::sync::Arc;

use futures::StreamExt as _;
use pvefleet_schemas::trust::Action;
use pvefleet_schemas::{JobId, PlanRequest};

use crate::jobs::plan;
use crate::shared::{Shared, job_id_of};

/// Answers plan requests until the agent stops.
pub async fn serve_plans(shared: Arc<Shared>) {
    let subject = pvefleet_schemas::names::plan_subject(&shared.config.node);
    answer_requests(&shared, subject, "plan", |payload| {
        let shared = &shared;
        async move {
            let node = &shared.config.node;
            let req = match PlanRequest::decode(&payload) {
                Ok(req) => req,
                Err(e) => return plan::refused(node, format!("unreadable plan request: {e}")),
            };
            match admit(shared, &payload, Action::Plan, Some(req.job.job_id)).await {
                Ok(admitted) => plan::plan(&shared.pve, &shared.config, &req.job, &admitted.grant).await,
                Err(why) => plan::refused(node, why),
            }
        }
    })
    .await
}

/// Checks a control request's signature, expiry and its signer's right to `action` on this
/// node, and stores the decision in the audit stream; the refusal's sentence when refused (or
/// when the decision could not be stored: nothing is done that is not audited).
async fn admit(
    shared: &Shared,
    payload: &[u8],
    action: Action,
    job_id: Option<JobId>,
) -> Result<crate::trust::Admitted, String> {
    let node = &shared.config.node;
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| format!("unreadable request: {e}"))?;
    let mut admitted = shared.trust.admit(&value, action, node, true);
    if admitted.is_err() && crate::trust::refresh(&shared.trust, &shared.bus.trust).await {
        admitted = shared.trust.admit(&value, action, node, true);
    }
    let record = crate::trust::record(
        node,
        action.as_str(),
        job_id,
        &value,
        admitted.as_ref().ok().map(|a| &a.grant),
        admitted.as_ref().err(),
    );
    crate::trust::audit(&shared.bus.js, node, &record, None)
        .await
        .map_err(|e| format!("the request was not acted on: its audit record could not be stored ({e})"))?;
    admitted.map_err(|refusal| {
        tracing::warn!(%refusal, request = action.as_str(), "refused a control request");
        refusal.to_string()
    })
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
                Ok(req) if req.node != shared.config.node => pvefleet_schemas::CancelReply {
                    ok: false,
                    message: format!("the cancel is for node {}, this agent runs {}", req.node, shared.config.node),
                },
                Ok(req) => {
                    if let Err(why) = admit(shared, &payload, Action::Cancel, Some(req.job_id)).await {
                        return pvefleet_schemas::CancelReply { ok: false, message: why };
                    }
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
