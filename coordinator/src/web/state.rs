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
}
