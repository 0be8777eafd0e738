//! `pvefleet serve`: the fleet and every job's live progress in a browser, and `/metrics`.
//! Read-only: it shows and follows what the store, the node registry and the events stream
//! hold; it never submits or cancels. Loopback by default; any other address needs a bearer
//! token (`--token-file`), compared in constant time, taken from an `Authorization` header, a
//! cookie, or once from a `?token=` link (which sets the cookie and drops itself from the URL).
//!
//! # Layout
//! - [`pages`]: the server-rendered pages (maud escapes everything it prints).
//! - [`live`]: server-sent events: a job's events (replayed from the first, then followed to
//!   the terminal one, like `watch`) and the fleet.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - `assets/`: the page script and style, embedded in the binary.

mod durations;
pub mod live;
pub mod metrics;
pub mod pages;
mod state;

pub use state::Web;

use std::net::SocketAddr;
use std::sync::Arc;

use async_nats::jetstream;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use crate::cli::{Cli, ServeArgs};
use crate::{Failure, Outcome};

const COOKIE: &str = "pvefleet_token";

pub async fn run(cli: &Cli, args: &ServeArgs) -> Outcome {
    let addr: SocketAddr = args
        .listen
        .parse()
        .map_err(|e| Failure::Usage(format!("--listen `{}` is not an address: {e}", args.listen)))?;
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("--token-file {}: {e}", path.display())))?;
            let text = text.trim();
            if text.len() < 16 {
                return Err(Failure::Usage(format!(
                    "--token-file {}: a token needs at least 16 characters",
                    path.display()
                )));
            }
            Some(digest(text))
        }
        None if !addr.ip().is_loopback() => {
            return Err(Failure::Usage(format!(
                "--listen {addr} is not a loopback address: give --token-file, so only holders of the token see the fleet"
            )));
        }
        None => None,
    };
    let store = crate::open_store(cli).await?;
    let client = crate::bus::connect(cli).await?;
    let js = jetstream::new(client.clone());
    let web = Web { store, client, js, token, streams: Default::default(), durations: Default::default() };
    // Before it says it is ready: a SIGTERM from then on stops it gracefully.
    let stop = crate::shutdown::shutdown_signal();
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("listening on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(anyhow::Error::from)?;
    match &web.token {
        Some(_) => println!("pvefleet serve: http://{bound}/ (a token is required: open http://{bound}/?token=… once)"),
        None => println!("pvefleet serve: http://{bound}/ (loopback only, no token)"),
    }
    axum::serve(listener, router(web).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| anyhow::anyhow!("serving: {e}"))?;
    Ok(())
}

/// Every route, behind the token check.
pub fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(pages::fleet))
        .route("/jobs", get(pages::jobs))
        .route("/audit", get(pages::audit))
        .route("/containers", get(pages::containers))
        .route("/jobs/{id}", get(pages::job))
        .route("/jobs/{id}/events", get(live::job_events))
        .route("/live/fleet", get(live::fleet))
        .route("/metrics", get(metrics::metrics))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", include_str!("assets/app.js")) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("assets/style.css")) }),
        )
        .fallback(|| async { pages::not_found("no such page") })
        .layer(axum::middleware::from_fn_with_state(Arc::new(web.clone()), authorize))
        .with_state(web)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

fn digest(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// The token from the request: a bearer header, the cookie, or a `?token=` link.
fn offered(headers: &HeaderMap, query: Option<&str>) -> (Option<String>, bool) {
    if let Some(bearer) =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    {
        return (Some(bearer.trim().to_owned()), false);
    }
    // A link beats a cookie: after the token changes, the new link must work at once.
    if let Some(link) = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=").map(str::to_owned))) {
        return (Some(link), true);
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_owned))
        .next();
    (cookie, false)
}

/// Whether a request names this server by a loopback name: without a token, anything else
/// (a page elsewhere whose name was rebound to 127.0.0.1) is refused.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn authorize(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    let Some(want) = web.token else {
        if !loopback_host(request.headers()) {
            let why = "without --token-file this server answers only to localhost, 127.0.0.1 or [::1]";
            return (StatusCode::MISDIRECTED_REQUEST, why).into_response();
        }
        return next.run(request).await;
    };
    let (given, from_link) = offered(request.headers(), request.uri().query());
    let ok = given.as_deref().is_some_and(|t| bool::from(digest(t).ct_eq(&want)));
    if !ok {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], pages::unauthorized())
            .into_response();
    }
    if from_link {
        // Keep the token in a cookie, not in the address bar or the history.
        let path = request.uri().path().to_owned();
        let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", given.unwrap_or_default());
        let mut response = Redirect::to(&path).into_response();
        if let Ok(value) = cookie.parse() {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return response;
    }
    next.run(request).await
}
