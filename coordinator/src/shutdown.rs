//! The signals `record` and `serve` stop gracefully on.

/// SIGTERM (systemd's stop) or Ctrl-C: what `record` and `serve` stop gracefully on. The
/// handlers are registered when this is called, not when the future is first polled: a caller
/// that says it is ready after calling it is never killed by a SIGTERM sent at once (which, with
/// no handler yet, is fatal).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
}
