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

pub mod act;
pub mod auth;
mod durations;
pub mod live;
pub mod metrics;
pub mod pages;
mod people;
mod state;
mod tls;

pub use state::Web;

use std::net::SocketAddr;
use std::sync::Arc;

use async_nats::jetstream;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
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
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    if !addr.ip().is_loopback() && tls.is_none() && !args.insecure_http {
        return Err(Failure::Usage(format!(
            "--listen {addr} is not a loopback address: give --tls-cert and --tls-key, so passwords, session \
             cookies and tokens never cross the network in clear (or --insecure-http behind a TLS proxy)"
        )));
    }
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
        None => None,
    };
    let store = crate::open_store(cli).await?;
    let users = store.has_users().await?;
    if token.is_none() && !users && !addr.ip().is_loopback() {
        return Err(Failure::Usage(format!(
            "--listen {addr} is not a loopback address: add a user (`pvefleet users add NAME --role operator`) or \
             give --token-file, so only those who log in see the fleet"
        )));
    }
    let client = crate::bus::connect(cli).await?;
    let js = jetstream::new(client.clone());
    let acting = act::Acting::new(cli);
    let web = Web {
        store,
        client,
        js,
        token,
        streams: Default::default(),
        durations: Default::default(),
        attempts: Default::default(),
        session_hours: args.session_hours,
        tls: tls.is_some(),
        acting: Arc::new(acting),
    };
    // Before it says it is ready: a SIGTERM from then on stops it gracefully.
    let stop = crate::shutdown::shutdown_signal();
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("listening on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(anyhow::Error::from)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    match (&web.token, users) {
        (Some(_), _) => println!("pvefleet serve: {scheme}://{bound}/ (a token is required: open {scheme}://{bound}/?token=… once)"),
        (None, true) => println!("pvefleet serve: {scheme}://{bound}/ (log in as a user of the store)"),
        (None, false) => println!("pvefleet serve: {scheme}://{bound}/ (loopback only, read-only: no users yet)"),
    }
    if let Err(why) = web.acting.as_ref() {
        println!("pvefleet serve: read-only for everyone: {why}");
    }
    let app = router(web).into_make_service_with_connect_info::<SocketAddr>();
    let served = match tls {
        Some(acceptor) => {
            use axum::serve::ListenerExt as _;
            let listener = tls::TlsListener::new(listener, acceptor).tap_io(|_| {});
            axum::serve(listener, app).with_graceful_shutdown(stop).await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(stop).await,
    };
    served.map_err(|e| anyhow::anyhow!("serving: {e}"))?;
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
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/logout", post(auth::logout))
        .merge(act::routes())
        .fallback(|| async { pages::not_found("no such page") })
        .layer(axum::middleware::from_fn_with_state(Arc::new(web.clone()), auth::gate))
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
pub(super) fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The bearer token check of a kiosk: the request when its token is good (a `?token=` link
/// answered by a redirect that keeps it in a cookie instead), or the answer to give.
#[allow(clippy::result_large_err, reason = "the refusal is the handler's answer, returned at once")]
fn token_check(web: &Web, request: Request) -> Result<Request, Response> {
    let Some(want) = web.token else { return Ok(request) };
    let (given, from_link) = offered(request.headers(), request.uri().query());
    let ok = given.as_deref().is_some_and(|t| bool::from(digest(t).ct_eq(&want)));
    if !ok {
        return Err((StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], pages::unauthorized())
            .into_response());
    }
    if from_link {
        // Keep the token in a cookie, not in the address bar or the history.
        let path = request.uri().path().to_owned();
        let cookie =
            format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}", given.unwrap_or_default(), web.secure_flag());
        let mut response = Redirect::to(&path).into_response();
        if let Ok(value) = cookie.parse() {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return Err(response);
    }
    Ok(request)
}
