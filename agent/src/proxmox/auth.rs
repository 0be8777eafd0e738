//! How the agent's requests are signed: an API token in a header, or a ticket got by signing
//! in with a password (PVE's `PVEAuthCookie` and, on writes, its `CSRFPreventionToken`). A
//! ticket is renewed well before PVE's two hours run out, and again after a 401.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pvefleet_schemas::Secret;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;

use super::error::{PveError, transport_error};
use crate::config::Credential;

/// PVE's tickets last two hours; one is renewed after half of that.
const RENEW_AFTER: Duration = Duration::from_secs(60 * 60);

#[derive(Clone)]
pub(crate) enum Auth {
    /// The `Authorization` header's value.
    Token(Secret),
    Login(Arc<Login>),
}

pub(crate) struct Login {
    user: String,
    password: Secret,
    session: tokio::sync::Mutex<Option<Session>>,
}

#[derive(Clone)]
struct Session {
    ticket: Secret,
    csrf: String,
    at: Instant,
}

impl Auth {
    pub(crate) fn new(credential: &Credential) -> Self {
        match credential {
            Credential::Token { id, secret } => {
                Auth::Token(Secret::new(format!("PVEAPIToken={id}={}", secret.expose())))
            }
            Credential::Login { user, password } => Auth::Login(Arc::new(Login {
                user: user.clone(),
                password: password.clone(),
                session: tokio::sync::Mutex::new(None),
            })),
        }
    }

    /// Signs `req`, signing in first when there is no fresh ticket.
    pub(crate) async fn sign(
        &self,
        req: RequestBuilder,
        method: &Method,
        http: &reqwest::Client,
        base: &str,
    ) -> Result<RequestBuilder, PveError> {
        match self {
            Auth::Token(header) => Ok(req.header("Authorization", header.expose())),
            Auth::Login(login) => {
                let session = login.session(http, base).await?;
                let req = req.header("Cookie", format!("PVEAuthCookie={}", session.ticket.expose()));
                Ok(if *method == Method::GET { req } else { req.header("CSRFPreventionToken", session.csrf) })
            }
        }
    }

    /// Forgets a ticket PVE no longer takes; true when there was one to forget (so the call
    /// is worth one more try with a new ticket).
    pub(crate) async fn refused(&self) -> bool {
        match self {
            Auth::Token(_) => false,
            Auth::Login(login) => login.session.lock().await.take().is_some(),
        }
    }
}

impl Login {
    async fn session(&self, http: &reqwest::Client, base: &str) -> Result<Session, PveError> {
        let mut held = self.session.lock().await;
        if let Some(s) = held.as_ref().filter(|s| s.at.elapsed() < RENEW_AFTER) {
            return Ok(s.clone());
        }
        let path = "/access/ticket";
        let form = [("username", self.user.as_str()), ("password", self.password.expose())];
        let resp = http
            .post(format!("{base}{path}"))
            .form(&form)
            .send()
            .await
            .map_err(|source| transport_error(Method::POST, path, source))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let data = &body["data"];
        let (Some(ticket), Some(csrf)) = (data["ticket"].as_str(), data["CSRFPreventionToken"].as_str()) else {
            return Err(PveError::Api {
                method: Method::POST,
                path: path.to_owned(),
                status: status.as_u16(),
                message: format!(
                    "signing in as {} failed: {}",
                    self.user,
                    body["message"].as_str().map_or_else(|| status.to_string(), |m| m.trim().to_owned())
                ),
                errors: Default::default(),
            });
        };
        if data["NeedTFA"].as_u64() == Some(1) {
            return Err(PveError::Api {
                method: Method::POST,
                path: path.to_owned(),
                status: status.as_u16(),
                message: format!("{} needs a second factor to sign in; the agent cannot give one", self.user),
                errors: Default::default(),
            });
        }
        let session = Session { ticket: Secret::new(ticket), csrf: csrf.to_owned(), at: Instant::now() };
        *held = Some(session.clone());
        tracing::info!(user = %self.user, "signed in to the Proxmox API");
        Ok(session)
    }
}
