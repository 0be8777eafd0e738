//! The signals `record` and `serve` stop gracefully on.

/// SIGTERM (systemd's stop) or Ctrl-C: what `record` and `serve` stop gracefully on.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
