//! Server-sent events. A job's stream replays its events from the first and then follows
//! them, ending after the terminal one (as `watch` does), so a page opened or reloaded mid-job
//! shows everything from the start. The fleet's stream sends the registry every second.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream};
use pvefleet_schemas::{JobId, NodeName};

use super::Web;
use crate::bus::EventFeed;

fn sse(s: impl Stream<Item = Result<Sse, Infallible>> + Send + 'static, slot: Slot) -> Response {
    use futures::StreamExt as _;
    // The slot is held as long as the stream is, and given back when the client goes.
    let s = s.map(move |item| {
        let _held = &slot;
        item
    });
    axum::response::Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// Live streams one client address may hold open at once. Each holds a NATS subscription and a
/// task here; without a cap, one client (or one script gone wrong) could hold them without end.
/// Behind a reverse proxy every client has the proxy's address: raise it there, or cap there.
pub const STREAMS_PER_CLIENT: usize = 32;

/// One live stream of one client, counted while it is held.
#[derive(Debug)]
pub struct Slot {
    streams: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    client: std::net::IpAddr,
}

impl Slot {
    /// A slot for `client`, or `None` when it holds [`STREAMS_PER_CLIENT`] already.
    fn take(web: &Web, client: std::net::IpAddr) -> Option<Self> {
        let mut open = web.streams.lock().expect("the stream counts");
        let count = open.entry(client).or_default();
        if *count >= STREAMS_PER_CLIENT {
            return None;
        }
        *count += 1;
        Some(Self { streams: web.streams.clone(), client })
    }

    /// The answer to a client that holds all its slots.
    fn refused(client: std::net::IpAddr) -> Response {
        let why = format!("{client} holds {STREAMS_PER_CLIENT} live streams already; close one first");
        (axum::http::StatusCode::TOO_MANY_REQUESTS, why).into_response()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.streams.lock()
            && let Some(count) = open.get_mut(&self.client)
        {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

pub async fn job_events(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    let Some(slot) = Slot::take(&web, peer.ip()) else { return Slot::refused(peer.ip()) };
    let Ok(job_id) = id.parse::<JobId>() else { return super::frame::not_found("not a job id") };
    let row = match web.store.job(&job_id).await {
        Ok(row) => row,
        Err(e) => return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let node = row.as_ref().and_then(|r| NodeName::new(&r.node).ok());
    let feed = match EventFeed::open(&web.client, &web.js, &job_id, node).await {
        Ok(f) => f,
        Err(e) => return (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    if !feed.had_events {
        match &row {
            // Neither recorded nor with any event: no such job (as `watch` says).
            None => return super::frame::not_found("no such job"),
            // Finished longer ago than the events stream keeps: what the store recorded.
            Some(r) if !r.state.is_live() => return recorded(&web, &job_id, slot).await,
            Some(_) => {}
        }
    }
    // `Some(feed)` while following; `None` once the end has been said.
    // Following the feed, then `end` once after the terminal event. A broken feed says
    // `trouble` and closes without `end`, so the browser reconnects and replays (the page
    // skips the events it has).
    enum Feed {
        Following(Box<EventFeed>),
        Ending,
        Done,
    }
    let events = stream::unfold(Feed::Following(Box::new(feed)), |state| async move {
        match state {
            Feed::Following(mut feed) => match feed.next().await {
                Ok(Some(event)) => {
                    let data = serde_json::to_string(&event).expect("an event serializes");
                    let next = if event.is_terminal() { Feed::Ending } else { Feed::Following(feed) };
                    Some((Ok(Sse::default().event("job").data(data)), next))
                }
                Ok(None) => None,
                Err(e) => Some((Ok(Sse::default().event("trouble").data(e.to_string())), Feed::Done)),
            },
            Feed::Ending => Some((Ok(Sse::default().event("end").data("end")), Feed::Done)),
            Feed::Done => None,
        }
    });
    sse(events, slot)
}

/// A finished job's events as the store recorded them, then `end`.
async fn recorded(web: &Web, job: &JobId, slot: Slot) -> Response {
    let rows = match web.store.events(job).await {
        Ok(rows) => rows,
        Err(e) => return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let items: Vec<Result<Sse, Infallible>> = rows
        .into_iter()
        .map(|r| {
            let event = serde_json::json!({
                "job_id": r.job_id, "seq": r.seq, "type": r.kind, "step": r.step, "percent": r.percent,
                "message": r.message, "timestamp": r.timestamp, "stream": r.stream,
            });
            Ok(Sse::default().event("job").data(event.to_string()))
        })
        .chain(std::iter::once(Ok(Sse::default().event("end").data("end"))))
        .collect();
    sse(stream::iter(items), slot)
}

pub async fn fleet(State(web): State<Web>, ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>) -> Response {
    let Some(slot) = Slot::take(&web, peer.ip()) else { return Slot::refused(peer.ip()) };
    let ticks = stream::unfold((web, true), |(web, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let data = match crate::bus::heartbeats(&web.js).await {
            Ok(beats) => serde_json::to_string(&beats).expect("heartbeats serialize"),
            Err(e) => serde_json::json!({"error": e.to_string()}).to_string(),
        };
        Some((Ok(Sse::default().event("fleet").data(data)), (web, false)))
    });
    sse(ticks, slot)
}
