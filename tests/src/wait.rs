//! Polling with a deadline: the one way tests wait.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `probe` until it yields `Some`, backing off from 10 ms to 250 ms between tries.
/// Fails after `within`, naming what it waited for.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}
