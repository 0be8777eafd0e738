//! Who is asking, and what they may do: the gate every request passes.
//!
//! Three ways to serve, decided per request:
//! - **Users** (the store has at least one): every page needs a login (`/login`); a session is
//!   a random cookie (HttpOnly, SameSite=Strict, Secure over TLS) the store knows only by its
//!   SHA-256, expiring after `--session-hours`, ended by logout, a new password or disabling
//!   the user. Every POST carries the session's CSRF token (checked here, before any handler),
//!   and needs the role its path asks for: operator to act, admin to manage users. A refusal is
//!   403 and is audited with the user's name.
//! - **Token** (`--token-file`): a read-only kiosk; no login, no action.
//! - **Loopback, no users yet**: read-only, as before users existed.
//!
//! Logins are limited per address (in memory) and per user (the store: five wrong passwords
//! lock the user for a while).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Form, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use super::Web;
use super::frame::{failed, forbidden, page, query_value};
use super::session::{SignedIn, WHO, Who, cookie, random_token, token_hash, who};
use crate::store::Login;
use crate::users::Role;

/// The session cookie.
pub const SESSION: &str = "pvefleet_session";
/// The cookie a login form is tied to (so no other site can log a browser in as someone).
const LOGIN_NONCE: &str = "pvefleet_login";
/// The largest form a POST may carry.
const FORM_LIMIT: usize = 256 * 1024;

fn set_cookie(response: &mut Response, value: &str) {
    if let Ok(v) = value.parse() {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The role a POST to `path` needs.
fn needs(path: &str) -> Option<Role> {
    match path {
        "/login" | "/logout" => None,
        p if p.starts_with("/users") => Some(Role::Admin),
        _ => Some(Role::Operator),
    }
}

/// Every answer says: never in a frame (no click-jacking of the action buttons), nothing
/// but this site's own script and style, no sniffing, no full URL to other sites.
pub async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("content-security-policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
    ] {
        h.insert(name, axum::http::HeaderValue::from_static(value));
    }
    response
}

/// The gate: who the request is from, and whether they may ask it.
pub async fn gate(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if path.starts_with("/assets/") {
        return next.run(request).await;
    }
    if path == "/favicon.ico" {
        return StatusCode::NOT_FOUND.into_response();
    }
    let has_users = match web.store.has_users().await {
        Ok(h) => h,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("the store: {e}")).into_response(),
    };
    // A token (a kiosk, a Prometheus scrape) shows and never acts; with users, a request that
    // shows no token goes on to the login.
    let request = match token_check(&web, request) {
        Token::Good(request) if request.method() == Method::GET || request.method() == Method::HEAD => {
            return WHO.scope(Who::Kiosk, next.run(request)).await;
        }
        Token::Good(_) => return forbidden("a token opens a read-only view: nothing can be changed with it"),
        Token::Answer(response) => return response,
        Token::NotShown(request) if has_users || web.token.is_none() => request,
        Token::NotShown(_) => return token_refused(),
    };
    if !has_users {
        if !loopback_host(request.headers()) {
            let why = "without users or --token-file this server answers only to localhost, 127.0.0.1 or [::1]";
            return (StatusCode::MISDIRECTED_REQUEST, why).into_response();
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return forbidden("no users yet, so this view is read-only: `pvefleet users add NAME --role operator`");
        }
        return WHO.scope(Who::Local, next.run(request)).await;
    }
    if path == "/login" {
        return WHO.scope(Who::Nobody, next.run(request)).await;
    }
    let session = match cookie(request.headers(), SESSION) {
        Some(token) => match web.store.session(&token_hash(&token)).await {
            Ok(found) => found,
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("the store: {e}")).into_response(),
        },
        None => None,
    };
    let Some((session, user)) = session else {
        if request.method() == Method::GET {
            let next_page = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            return Redirect::to(&format!("/login?next={}", query_value(&next_page))).into_response();
        }
        return (StatusCode::UNAUTHORIZED, "log in first (your session ended or was never there)").into_response();
    };
    let Some(role) = Role::parse(&user.role) else {
        return forbidden(&format!("user {} has an unknown role `{}`", user.name, user.role));
    };
    let me = SignedIn { name: user.name.clone(), role, csrf: session.csrf.clone() };
    let mut request = request;
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
            return (StatusCode::PAYLOAD_TOO_LARGE, "the form is too large").into_response();
        };
        let given = form_urlencoded::parse(&bytes).find(|(k, _)| k == "csrf").map(|(_, v)| v.into_owned());
        let good = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(session.csrf.as_bytes())));
        if !good {
            web.audit_web(&me.name, &path, false, Some("csrf"), "a POST without this session's CSRF token").await;
            return forbidden(
                "this form is not from this session (its CSRF token is missing or wrong): reload the page",
            );
        }
        if let Some(role) = needs(&path).filter(|r| me.role < *r) {
            let why = format!("{} is a {}; this needs {}", me.name, me.role.as_str(), role.as_str());
            web.audit_web(&me.name, &path, false, Some("role"), &why).await;
            return forbidden(&why);
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    WHO.scope(Who::User(me), next.run(request)).await
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Where to go after logging in: a path on this site only. Browsers drop tabs and newlines
/// from a URL and read `\` as `/`, so `/\t/evil.example` would leave the site: only visible
/// ASCII is kept, and no second `/` or `\` right after the first.
fn next_page(next: Option<&str>) -> String {
    match next {
        Some(n) if on_this_site(n) => n.to_owned(),
        _ => "/".to_owned(),
    }
}

fn on_this_site(path: &str) -> bool {
    let b = path.as_bytes();
    b.first() == Some(&b'/') && !matches!(b.get(1), Some(b'/' | b'\\')) && b.iter().all(u8::is_ascii_graphic)
}

/// The login page. Its form is tied to the browser by a nonce cookie, kept while it is there:
/// a second tab's login page (or the browser's own request for an icon, led here) must not
/// make the first tab's form stale.
fn login_page(web: &Web, headers: &HeaderMap, next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let nonce = cookie(headers, LOGIN_NONCE).filter(|n| n.len() == 43).unwrap_or_else(random_token);
    let markup = html! {
        h1 { "Log in" }
        @if let Some(e) = error { p.error #login-error { (e) } }
        form.login method="post" action="/login" {
            input type="hidden" name="nonce" value=(nonce);
            input type="hidden" name="next" value=(next);
            label { "user " input #user name="user" autocomplete="username" required; }
            label { "password " input #password name="password" type="password" autocomplete="current-password" required; }
            button #login type="submit" { "Log in" }
        }
    };
    let mut response = page(status, "Log in", markup);
    set_cookie(
        &mut response,
        &format!("{LOGIN_NONCE}={nonce}; Path=/login; HttpOnly; SameSite=Strict{}", web.secure_flag()),
    );
    response
}

pub async fn login_form(State(web): State<Web>, headers: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    login_page(&web, &headers, &next_page(q.next.as_deref()), None, StatusCode::OK)
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    nonce: String,
    next: Option<String>,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginForm").field("user", &self.user).finish_non_exhaustive()
    }
}

pub async fn login(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let password = zeroize::Zeroizing::new(form.password);
    let next = next_page(form.next.as_deref());
    let nonce_ok = cookie(&headers, LOGIN_NONCE).is_some_and(|c| bool::from(c.as_bytes().ct_eq(form.nonce.as_bytes())));
    if !nonce_ok {
        return login_page(
            &web,
            &headers,
            &next,
            Some("This login form is stale: log in again."),
            StatusCode::FORBIDDEN,
        );
    }
    if !web.attempts.allow(peer.ip()) {
        return login_page(
            &web,
            &headers,
            &next,
            Some("Too many login attempts from this address: wait a few minutes."),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let name = form.user.trim().to_owned();
    // Named in the trail only when it could be a user name (not a password typed in the wrong box).
    let audited = if crate::users::check_name(&name).is_ok() { name.as_str() } else { "?" };
    let outcome = match web.store.login(&name, &password).await {
        Ok(o) => o,
        Err(e) => return failed(e),
    };
    match outcome {
        Login::Ok(user) => {
            let (token, csrf) = (random_token(), random_token());
            if let Err(e) = web.store.open_session(&user.name, &token_hash(&token), &csrf, web.session_hours).await {
                return failed(e);
            }
            web.audit_web(&user.name, "/login", true, None, "logged in").await;
            let mut response = Redirect::to(&next).into_response();
            set_cookie(
                &mut response,
                &format!(
                    "{SESSION}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                    web.session_hours * 3600,
                    web.secure_flag()
                ),
            );
            set_cookie(&mut response, &format!("{LOGIN_NONCE}=; Path=/login; Max-Age=0"));
            response
        }
        Login::Refused => {
            web.audit_web(audited, "/login", false, Some("password"), "a wrong user name or password").await;
            login_page(&web, &headers, &next, Some("Wrong user name or password."), StatusCode::UNAUTHORIZED)
        }
        Login::Locked(until) => {
            web.audit_web(audited, "/login", false, Some("locked"), &format!("locked until {until}")).await;
            let why = format!("Too many wrong passwords: this user is locked until {until}.");
            login_page(&web, &headers, &next, Some(&why), StatusCode::TOO_MANY_REQUESTS)
        }
    }
}

pub async fn logout(State(web): State<Web>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, SESSION) {
        if let Err(e) = web.store.end_session(&token_hash(&token)).await {
            return failed(e);
        }
    }
    if let Who::User(me) = who() {
        web.audit_web(&me.name, "/logout", true, None, "logged out").await;
    }
    let mut response = Redirect::to("/login").into_response();
    set_cookie(
        &mut response,
        &format!("{SESSION}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}", web.secure_flag()),
    );
    response
}

/// The kiosk token's cookie.
const COOKIE: &str = "pvefleet_token";

pub(super) fn digest(token: &str) -> [u8; 32] {
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

/// The bearer token check of a kiosk: the request when its token is good (a `?token=` link
/// answered by a redirect that keeps it in a cookie instead), or the answer to give.
/// What the kiosk token check found.
enum Token {
    /// The right token: a read-only view.
    Good(Request),
    /// No token shown (or none is needed).
    NotShown(Request),
    /// The answer to give now: a wrong token's 401, or a link's redirect that keeps it in a cookie.
    Answer(Response),
}

fn token_refused() -> Response {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], super::frame::unauthorized()).into_response()
}

fn token_check(web: &Web, request: Request) -> Token {
    let Some(want) = web.token else { return Token::NotShown(request) };
    let (given, from_link) = offered(request.headers(), request.uri().query());
    let Some(shown) = given.as_deref() else { return Token::NotShown(request) };
    if !bool::from(digest(shown).ct_eq(&want)) {
        return Token::Answer(token_refused());
    }
    if from_link {
        // Keep the token in a cookie, not in the address bar or the history.
        let path = Some(request.uri().path()).filter(|p| on_this_site(p)).unwrap_or("/").to_owned();
        let cookie =
            format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}", given.unwrap_or_default(), web.secure_flag());
        let mut response = Redirect::to(&path).into_response();
        if let Ok(value) = cookie.parse() {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return Token::Answer(response);
    }
    Token::Good(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_the_login_only_a_path_of_this_site_is_followed() {
        assert_eq!(next_page(Some("/jobs?state=failed")), "/jobs?state=failed");
        for away in ["//evil.example", "/\t/evil.example", "/\\evil.example", "https://evil.example", "/\n/x", ""] {
            assert_eq!(next_page(Some(away)), "/", "{away:?}");
        }
        assert_eq!(next_page(None), "/");
    }
}
