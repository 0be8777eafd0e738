//! `/users` (admins only, for every POST; the gate checks the role): the web view's users,
//! added, disabled and enabled from the browser as `pvefleet users` does, each change in the
//! audit trail with the admin's name.

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::Web;
use super::frame::{failed, forbidden, not_found, page};
use super::session::{Who, csrf_field, who};
use crate::users::{Role, check_name, check_password, hash};

pub async fn users(State(web): State<Web>) -> Response {
    list(&web, None).await
}

async fn list(web: &Web, error: Option<String>) -> Response {
    if !admin() {
        return forbidden("only an admin sees the users");
    }
    let rows = match web.store.users().await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let markup = html! {
        h1 { "Users" }
        @if let Some(e) = &error { p.error #users-error { (e) } }
        table #users { thead { tr { th { "name" } th { "role" } th { "state" } th {} } }
            tbody { @for u in &rows {
                tr data-user=(u.name) { td { (u.name) } td { (u.role) }
                    td { @if u.disabled { "disabled" } @else if let Some(t) = &u.locked_until { "locked until " (t) } @else { "active" } }
                    td { form.inline method="post" action=(format!("/users/{}/{}", u.name, if u.disabled { "enable" } else { "disable" })) {
                        (csrf_field()) button type="submit" { @if u.disabled { "Enable" } @else { "Disable" } } } }
                }
            } }
        }
        h2 { "Add a user" }
        form #add-user method="post" action="/users" { (csrf_field())
            label { "name " input name="name" required; } " "
            label { "role " select name="role" { @for r in Role::ALL { option { (r.as_str()) } } } } " "
            label { "password " input name="password" type="password" autocomplete="new-password" required; } " "
            button type="submit" { "Add" } }
    };
    page(if error.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK }, "Users", markup)
}

#[derive(Deserialize)]
pub struct NewUser {
    name: String,
    role: String,
    password: String,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

fn admin_name() -> String {
    match who() {
        Who::User(me) => me.name,
        _ => "?".into(),
    }
}

fn admin() -> bool {
    matches!(who(), Who::User(me) if me.role == Role::Admin)
}

pub async fn add(State(web): State<Web>, Form(form): Form<NewUser>) -> Response {
    if !admin() {
        return forbidden("only an admin adds users");
    }
    let password = zeroize::Zeroizing::new(form.password);
    let checked = check_name(&form.name)
        .and_then(|()| {
            Role::parse(&form.role).ok_or_else(|| format!("role `{}`: viewer, operator or admin", form.role))
        })
        .and_then(|role| check_password(&password).map(|()| role));
    let role = match checked {
        Ok(r) => r,
        Err(e) => return list(&web, Some(e)).await,
    };
    let hashed = match hash(&password) {
        Ok(h) => h,
        Err(e) => return failed(e),
    };
    match web.store.add_user(&form.name, role.as_str(), &hashed).await {
        Ok(true) => {}
        Ok(false) => return list(&web, Some(format!("user `{}` exists", form.name))).await,
        Err(e) => return failed(e),
    }
    let what = format!("added user {} ({})", form.name, role.as_str());
    web.audit_web(&admin_name(), "/users", true, None, &what).await;
    Redirect::to("/users").into_response()
}

pub async fn change(State(web): State<Web>, Path((name, action)): Path<(String, String)>) -> Response {
    if !admin() {
        return forbidden("only an admin changes users");
    }
    let disabled = match action.as_str() {
        "disable" => true,
        "enable" => false,
        other => return not_found(&format!("no action `{other}` on a user")),
    };
    match web.store.set_disabled(&name, disabled).await {
        Ok(true) => {}
        Ok(false) => return not_found(&format!("no user `{name}`")),
        Err(e) => return failed(e),
    }
    web.audit_web(&admin_name(), &format!("/users/{action}"), true, None, &format!("{action}d user {name}")).await;
    Redirect::to("/users").into_response()
}
