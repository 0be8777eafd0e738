//! What a Proxmox API call can fail with, and PVE's refusals told from its words, once.

use std::collections::BTreeMap;

use reqwest::Method;

/// What went wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum PveError {
    /// PVE answered with an error status. `errors` holds its per-parameter messages (400s).
    #[error("{method} {path}: {status} {}", describe(message, errors))]
    Api { method: Method, path: String, status: u16, message: String, errors: BTreeMap<String, String> },
    /// No answer: connection refused or reset, or a timeout.
    #[error("{method} {path}: no answer from the Proxmox API")]
    Transport {
        method: Method,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server's certificate is not the one trusted; retrying cannot fix this.
    #[error("{method} {path}: the Proxmox API's TLS certificate is not trusted: {detail}")]
    Tls { method: Method, path: String, detail: String },
    /// An answer whose shape we did not expect.
    #[error("{method} {path}: unexpected answer: {detail}")]
    Shape { method: Method, path: String, detail: String },
}

fn describe(message: &str, errors: &BTreeMap<String, String>) -> String {
    let mut s = message.trim().to_owned();
    for (field, why) in errors {
        s.push_str(&format!("; {field}: {}", why.trim().replace('\n', " ")));
    }
    s
}

/// What PVE refused, told from its words here and only here: code above matches this, never
/// PVE's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// "CT 101 already exists on node 'pve1'": the node it names, if it names one.
    AlreadyExists { on: Option<String> },
    /// The guest (or its config) does not exist.
    Missing,
    /// "CT 101 not running".
    NotRunning,
    /// "CT 101 already running".
    AlreadyRunning,
    /// "can't lock file … - got timeout": another task holds the guest's lock for now.
    LockTimeout,
    /// "detected modified configuration - file changed by other user? Try again.": the
    /// config's digest is not the one the change was made against.
    DigestChanged,
    /// "disk is already at specified size".
    AlreadyAtSize,
    /// "unable to shrink disk size".
    CannotShrink,
}

impl Refusal {
    /// PVE's words for each refusal, read once.
    fn of(message: &str) -> Option<Self> {
        let m = message.to_ascii_lowercase();
        if m.contains("got timeout") {
            Some(Refusal::LockTimeout)
        } else if m.contains("detected modified configuration") {
            Some(Refusal::DigestChanged)
        } else if m.contains("already at specified size") {
            Some(Refusal::AlreadyAtSize)
        } else if m.contains("unable to shrink disk") {
            Some(Refusal::CannotShrink)
        } else if m.contains("already exists") {
            let on =
                message.split_once("on node '").and_then(|(_, rest)| rest.split_once('\'')).map(|(n, _)| n.to_owned());
            Some(Refusal::AlreadyExists { on })
        } else if m.contains("does not exist") || m.contains("no such") {
            Some(Refusal::Missing)
        } else if m.contains("not running") {
            Some(Refusal::NotRunning)
        } else if m.contains("already running") {
            Some(Refusal::AlreadyRunning)
        } else {
            None
        }
    }
}

impl PveError {
    /// What PVE refused, when it answered with one of the refusals pvefleet acts on.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            PveError::Api { message, .. } => Refusal::of(message),
            _ => None,
        }
    }

    /// Whether trying the same request again may succeed: no answer, a lock that timed out, or
    /// a 5xx that is not one of PVE's statements of fact.
    pub fn is_transient(&self) -> bool {
        match self {
            PveError::Transport { .. } => true,
            PveError::Tls { .. } | PveError::Shape { .. } => false,
            PveError::Api { status, .. } => match self.refusal() {
                Some(Refusal::LockTimeout) => true,
                Some(_) => false,
                None => *status >= 500,
            },
        }
    }

    /// PVE's "CT 101 already exists on node 'pve1'".
    pub fn is_already_exists(&self) -> bool {
        matches!(self.refusal(), Some(Refusal::AlreadyExists { .. }))
    }

    /// The guest (or its config) does not exist.
    pub fn is_missing(&self) -> bool {
        self.refusal() == Some(Refusal::Missing)
    }
}

pub(super) fn transport_error(method: Method, path: &str, source: reqwest::Error) -> PveError {
    // A refused certificate surfaces as a connect error; tell it apart, since retrying it is
    // futile, and keep rustls's words (with the pinned and seen fingerprints) for the operator.
    let mut chain: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(&source);
    while let Some(e) = next {
        chain.push(e.to_string());
        next = e.source();
    }
    let path = path.to_owned();
    match chain.iter().find(|m| m.contains("certificate")) {
        Some(detail) => PveError::Tls { method, path, detail: detail.clone() },
        None => PveError::Transport { method, path, source },
    }
}
