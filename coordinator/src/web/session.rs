//! Who a request is from, as the gate found it: kept for the handler and the page it renders
//! (the header, the CSRF field of each form), and the small things sessions are made of.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use maud::html;
use sha2::Digest as _;

use crate::users::Role;

/// Login attempts one address may make in [`ATTEMPTS_WINDOW`].
pub const ATTEMPTS_PER_ADDRESS: usize = 20;
const ATTEMPTS_WINDOW: Duration = Duration::from_secs(300);

/// Who a request is from.
#[derive(Clone, Debug)]
pub enum Who {
    /// Loopback, no users in the store: read-only.
    Local,
    /// The bearer token of a read-only kiosk.
    Kiosk,
    /// Not logged in yet (the login page).
    Nobody,
    User(SignedIn),
}

/// A logged-in user.
#[derive(Clone, Debug)]
pub struct SignedIn {
    pub name: String,
    pub role: Role,
    /// The token every form of this session carries.
    pub csrf: String,
}

impl Who {
    /// The user, when they may act.
    pub fn acting(&self) -> Option<&SignedIn> {
        match self {
            Who::User(u) if u.role.acts() => Some(u),
            _ => None,
        }
    }
}

tokio::task_local! {
    /// Who the request being answered is from (set by the gate around every handler).
    pub static WHO: Who;
}

/// Who the request being answered is from.
pub fn who() -> Who {
    WHO.try_with(Clone::clone).unwrap_or(Who::Nobody)
}

/// Login attempts per address, in memory.
#[derive(Debug, Default)]
pub struct Attempts(std::sync::Mutex<std::collections::HashMap<IpAddr, Vec<Instant>>>);

impl Attempts {
    /// Counts an attempt from `ip`; `false` when it has made too many lately.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let mut map = self.0.lock().expect("the attempts lock");
        let now = Instant::now();
        map.retain(|_, times| {
            times.retain(|t| now.duration_since(*t) < ATTEMPTS_WINDOW);
            !times.is_empty()
        });
        let times = map.entry(ip).or_default();
        if times.len() >= ATTEMPTS_PER_ADDRESS {
            return false;
        }
        times.push(now);
        true
    }
}

pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pvefleet_schemas::secret::random_bytes::<32>())
}

pub fn token_hash(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(&format!("{name}=")).map(str::to_owned))
        .next()
}

/// The hidden CSRF field every form of the current session carries.
pub fn csrf_field() -> maud::Markup {
    match who() {
        Who::User(me) => html! { input type="hidden" name="csrf" value=(me.csrf); },
        _ => html! {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_a_bounded_number_of_login_attempts() {
        let attempts = Attempts::default();
        let (one, other): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..ATTEMPTS_PER_ADDRESS {
            assert!(attempts.allow(one));
        }
        assert!(!attempts.allow(one), "one more than the bound");
        assert!(attempts.allow(other), "another address has its own");
    }
}
