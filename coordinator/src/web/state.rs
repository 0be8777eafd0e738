//! What every handler of `pvefleet serve` reads from.

use std::sync::Arc;

use async_nats::jetstream;

use crate::store::Store;

/// What every handler reads from.
#[derive(Clone, Debug)]
pub struct Web {
    pub store: Store,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// SHA-256 of the bearer token, when one is required.
    pub(super) token: Option<[u8; 32]>,
    /// Live streams open now, per client address ([`super::live::Slot`]).
    pub streams: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    /// `/metrics`' duration histograms, kept between scrapes.
    pub durations: Arc<tokio::sync::Mutex<super::durations::Durations>>,
    /// Login attempts per address.
    pub attempts: Arc<super::session::Attempts>,
    /// How long a login lasts.
    pub session_hours: i64,
    /// Served over TLS, here or by the proxy in front (`--insecure-http`): cookies are `Secure`.
    pub tls: bool,
    /// How this server acts for its users, or why it cannot (no identity to sign with).
    pub acting: Arc<Result<super::runner::Acting, String>>,
}

impl Web {
    /// `; Secure` when served over TLS.
    pub fn secure_flag(&self) -> &'static str {
        if self.tls { "; Secure" } else { "" }
    }

    /// Records a decision of the web view itself (a login, a refused POST, a user managed) in
    /// the audit trail, with the user's name. A trail that cannot be written is logged.
    pub async fn audit_web(&self, user: &str, action: &str, accepted: bool, rule: Option<&str>, message: &str) {
        let signer = self.acting.as_ref().as_ref().ok().map(|a| a.signer.clone());
        if let Err(e) = crate::trust::web_action(&self.js, signer, user, action, accepted, rule, message).await {
            tracing::warn!(error = %e, %user, %action, "recording a web decision in the audit trail failed");
        }
    }
}
