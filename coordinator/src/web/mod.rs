//! `pvefleet serve`: the fleet and every job's live progress in a browser, `/metrics`, and,
//! for users who log in, the actions: a new container from a form (a plan first), and each
//! container's and job's actions, run as the CLI's own verbs signed by the web view's identity
//! for the user. Who may see and do what is the gate's ([`auth`]): users and sessions in the
//! store, a read-only kiosk token (`--token-file`), or loopback read-only while there are no
//! users. Off loopback it needs TLS (`--tls-cert/--tls-key`, or `--insecure-http` behind a
//! proxy that terminates it).
//!
//! # Layout (bottom first)
//! - [`session`]: who a request is from (kept for the handler and the page), CSRF field, tokens.
//! - [`runner`]: a user's action as a `pvefleet` child process with `--acting-user`.
//! - [`frame`]: the header and page frame, the not-found and refused pages.
//! - `state`: what every handler reads; the web view's own audit records.
//! - [`auth`]: the gate (token, session, CSRF, role), login and logout.
//! - [`act`]: "New container" and the container and job actions; `people`: `/users`.
//! - [`pages`]: the server-rendered pages (maud escapes everything it prints).
//! - [`live`]: server-sent events: a job's events (replayed from the first, then followed to
//!   the terminal one, like `watch`) and the fleet.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - `tls`: HTTPS with rustls, each handshake on its own task.
//! - `assets/`: the page script and style, embedded in the binary.

pub mod act;
pub mod auth;
mod durations;
pub mod frame;
pub mod live;
pub mod metrics;
pub mod pages;
mod people;
pub mod runner;
pub mod session;
mod state;
mod tls;

pub use state::Web;

use std::net::SocketAddr;
use std::sync::Arc;

use async_nats::jetstream;
use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::cli::{Cli, ServeArgs};
use crate::{Failure, Outcome};

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
            Some(auth::digest(text))
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
    let acting = runner::Acting::new(cli);
    let web = Web {
        store,
        client,
        js,
        token,
        streams: Default::default(),
        durations: Default::default(),
        attempts: Default::default(),
        session_hours: args.session_hours,
        tls: tls.is_some() || args.insecure_http,
        acting: Arc::new(acting),
    };
    // Before it says it is ready: a SIGTERM from then on stops it gracefully.
    let stop = crate::shutdown::shutdown_signal();
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("listening on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(anyhow::Error::from)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    match (&web.token, users) {
        (Some(_), true) => println!(
            "pvefleet serve: {scheme}://{bound}/ (log in as a user of the store; the token shows, read-only, e.g. to Prometheus)"
        ),
        (Some(_), false) => {
            println!("pvefleet serve: {scheme}://{bound}/ (a token is required: open {scheme}://{bound}/?token=… once)")
        }
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
        .route("/users", get(people::users).post(people::add))
        .route("/users/{name}/{action}", post(people::change))
        .fallback(|| async { frame::not_found("no such page") })
        .layer(axum::middleware::from_fn_with_state(Arc::new(web.clone()), auth::gate))
        .layer(axum::middleware::from_fn(auth::headers))
        .with_state(web)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}
