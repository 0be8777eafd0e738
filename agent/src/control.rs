//! Control requests: `pvefleet.control.<node>.cancel` and `.plan`, each answered on its
//! reply subject, one span per request.

use std::sync::Arc;

use futures::StreamExt as _;
use pvefleet_schemas::trust::Action;
use pvefleet_schemas::{JobId, PlanRequest};

use crate::jobs::plan;
use crate::shared::{Shared, job_id_of};

/// Answers plan (and list) requests until the agent stops.
pub async fn serve_plans(shared: Arc<Shared>) {
    let subject = pvefleet_schemas::names::plan_subject(&shared.config.node);
    answer_requests(&shared, subject, "plan", |payload| {
        let shared = &shared;
        async move {
            let node = &shared.config.node;
            let kind = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned));
            let refused = |why: String| Some(answer_of(&plan::refused(node, why)));
            match kind.as_deref() {
                Some("list") => {
                    let req = match pvefleet_schemas::ListRequest::decode(&payload) {
                        Ok(req) => req,
                        Err(e) => return Some(listed_refusal(node, format!("unreadable list request: {e}"))),
                    };
                    if req.node != *node {
                        let why = format!("the request is for {}, this agent runs {node}", req.node);
                        return Some(listed_refusal(node, why));
                    }
                    match admit(shared, &payload, Action::Plan, None).await {
                        Ok(_) => Some(answer_of(&crate::jobs::day_two::list(&shared.pve, &req).await)),
                        Err(Denied::Say(why)) => Some(listed_refusal(node, why)),
                        Err(Denied::Silent) => None,
                    }
                }
                Some("plan_change") => {
                    let req = match pvefleet_schemas::ChangePlanRequest::decode(&payload) {
                        Ok(req) => req,
                        Err(e) => return refused(format!("unreadable plan request: {e}")),
                    };
                    match admit(shared, &payload, Action::Plan, Some(req.job.job_id())).await {
                        Ok(admitted) => {
                            let reply = crate::jobs::day_two::plan::plan(
                                &shared.pve,
                                &shared.config,
                                &req.job,
                                &admitted.grant,
                            )
                            .await;
                            if let pvefleet_schemas::DayTwoJob::Move(j) = &req.job
                                && j.to == *node
                                && reply.ok
                                && req.before_submit
                            {
                                // The container is about to arrive: list it as soon as it does.
                                shared.inventory.expect(j.target.vmid, j.options.task_timeout.0);
                            }
                            Some(answer_of(&reply))
                        }
                        Err(Denied::Say(why)) => refused(why),
                        Err(Denied::Silent) => None,
                    }
                }
                _ => {
                    let req = match PlanRequest::decode(&payload) {
                        Ok(req) => req,
                        Err(e) => return refused(format!("unreadable plan request: {e}")),
                    };
                    match admit(shared, &payload, Action::Plan, Some(req.job.job_id)).await {
                        Ok(admitted) => {
                            Some(answer_of(&plan::plan(&shared.pve, &shared.config, &req.job, &admitted.grant).await))
                        }
                        Err(Denied::Say(why)) => refused(why),
                        Err(Denied::Silent) => None,
                    }
                }
            }
        }
    })
    .await
}

fn answer_of(reply: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(reply).expect("a reply serializes")
}

fn listed_refusal(node: &pvefleet_schemas::NodeName, why: String) -> serde_json::Value {
    answer_of(&pvefleet_schemas::ListReply {
        v: pvefleet_schemas::V1,
        node: node.clone(),
        error: Some(why),
        items: vec![],
    })
}

/// Why a control request is not acted on: said in its reply, or not answered at all (a replay:
/// whoever sent it again gets nothing, and while two agents of a node overlap in a restart,
/// the other's answer is the one its sender reads).
enum Denied {
    Say(String),
    Silent,
}

/// Checks a control request's signature, expiry, its signer's right to `action` on this node,
/// and that the same signed request was not received before; stores the decision in the audit
/// stream (nothing is done that is not audited).
async fn admit(
    shared: &Shared,
    payload: &[u8],
    action: Action,
    job_id: Option<JobId>,
) -> Result<crate::trust::Admitted, Denied> {
    let node = &shared.config.node;
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| Denied::Say(format!("unreadable request: {e}")))?;
    let mut admitted = shared.trust.admit(&value, action, node, true);
    if admitted.is_err() && crate::trust::refresh(&shared.trust, &shared.bus.trust).await {
        admitted = shared.trust.admit(&value, action, node, true);
    }
    // Each signed request is acted on once: the same bytes again (captured and replayed while
    // still valid) are refused.
    if admitted.is_ok() {
        let signature = value.pointer("/auth/signature").and_then(serde_json::Value::as_str).unwrap_or_default();
        match crate::trust::take_request(&shared.bus.requests, node, signature).await {
            Ok(true) => {}
            Ok(false) => {
                admitted = Err(pvefleet_schemas::trust::Refusal::new(
                    "replay",
                    "this signed request was already received once; sign a new one".into(),
                ))
            }
            Err(e) => return Err(Denied::Say(format!("the request was not acted on: {e}"))),
        }
    }
    let record = crate::trust::record(
        node,
        action.as_str(),
        job_id,
        &value,
        admitted.as_ref().ok().map(|a| &a.grant),
        admitted.as_ref().err(),
    );
    crate::trust::audit(&shared.bus.js, node, &record, None).await.map_err(|e| {
        Denied::Say(format!("the request was not acted on: its audit record could not be stored ({e})"))
    })?;
    admitted.map_err(|refusal| {
        tracing::warn!(%refusal, request = action.as_str(), "refused a control request");
        if refusal.rule == "replay" { Denied::Silent } else { Denied::Say(refusal.to_string()) }
    })
}

/// Answers the control requests on `subject` until the agent stops: each request's payload
/// goes to `answer`, whose reply is sent back (a request without a reply subject is dropped;
/// one `answer` gives none for is not answered).
async fn answer_requests<Fut, R>(shared: &Shared, subject: String, what: &str, answer: impl Fn(bytes::Bytes) -> Fut)
where
    Fut: std::future::Future<Output = Option<R>>,
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
        let Some(answered) = tracing::Instrument::instrument(answer(request.payload), span).await else { continue };
        let payload = serde_json::to_vec(&answered).expect("a reply serializes");
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
            Some(match pvefleet_schemas::CancelRequest::decode(&payload) {
                Err(e) => {
                    pvefleet_schemas::CancelReply { ok: false, message: format!("unreadable cancel request: {e}") }
                }
                Ok(req) if req.node != shared.config.node => pvefleet_schemas::CancelReply {
                    ok: false,
                    message: format!("the cancel is for node {}, this agent runs {}", req.node, shared.config.node),
                },
                Ok(req) => {
                    match admit(shared, &payload, Action::Cancel, Some(req.job_id)).await {
                        Ok(_) => {}
                        Err(Denied::Say(why)) => {
                            return Some(pvefleet_schemas::CancelReply { ok: false, message: why });
                        }
                        Err(Denied::Silent) => return None,
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
            })
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
