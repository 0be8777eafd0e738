//! The frame every page shares: the header (who is logged in, their links, the logout
//! button), the page around a body, and the pages that say something failed or is missing.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::session::{Who, csrf_field, who};
use crate::users::Role;

pub fn layout(title: &str, body: Markup) -> Markup {
    let who = who();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · pvefleet" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "pvefleet" }
                    nav { a href="/" { "Fleet" } " " a href="/containers" { "Containers" } " " a href="/jobs" { "Jobs" } " " a href="/audit" { "Audit" }
                        @if who.acting().is_some() { " " a #new-link href="/new" { "New container" } }
                        @if let Who::User(me) = &who { @if me.role == Role::Admin { " " a href="/users" { "Users" } } }
                    }
                    @if let Who::User(me) = &who {
                        form.whoami method="post" action="/logout" {
                            span #whoami data-role=(me.role.as_str()) { (me.name) " (" (me.role.as_str()) ")" } " "
                            (csrf_field()) button #logout type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn page(status: StatusCode, title: &str, body: Markup) -> Response {
    (status, Html(layout(title, body).into_string())).into_response()
}

pub fn failed(e: impl std::fmt::Display) -> Response {
    page(StatusCode::INTERNAL_SERVER_ERROR, "Error", html! { h1 { "Something failed" } p.error { (e.to_string()) } })
}

pub fn not_found(what: &str) -> Response {
    page(StatusCode::NOT_FOUND, "Not found", html! { h1 { "Not found" } p { (what) } })
}

pub fn unauthorized() -> Html<String> {
    Html(
        layout(
            "Token required",
            html! { h1 { "A token is required" } p { "Open the link with ?token=… that the operator gave you, or send it as a bearer token." } },
        )
        .into_string(),
    )
}

/// A filter value as it goes into a link's query: letters, digits and `-._~` as they are,
/// every other byte percent-encoded.
pub fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A refusal: 403 and why.
pub fn forbidden(why: &str) -> Response {
    page(StatusCode::FORBIDDEN, "Refused", html! { h1 { "Refused" } p.error #refused { (why) } })
}

/// A job's live progress (filled in by `assets/app.js` from its events, replayed from the first
/// and followed to the end): on its own page, and on its container's for the last job there.
pub fn job_live(job_id: &str) -> Markup {
    html! {
        section #job data-events=(format!("/jobs/{job_id}/events")) {
            p { progress #percent max="100" value="0" {} " " span #percent-text { "0%" } " " span #step {} }
            h2 { "Steps" }
            ol #timeline {}
            h2 { "Log" }
            ol #log {}
            h2 { "Warnings" }
            ul #warnings {}
            div #result {}
        }
    }
}
