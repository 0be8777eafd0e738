//! A secret value held in memory: never in a log line, wiped when dropped.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A secret value (the root password). Its `Debug` never shows it and it has no `Display`, so
/// it cannot reach a log line by accident; only the job message itself carries it. It is wiped
/// from memory when dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must send it (the PVE create call).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    /// Wiped, so a core dump or a reused allocation shows no trace of it.
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// `N` bytes from the operating system's random source (session cookies, CSRF tokens).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use crypto_box::aead::rand_core::RngCore as _;
    let mut bytes = [0u8; N];
    crypto_box::aead::OsRng.fill_bytes(&mut bytes);
    bytes
}
