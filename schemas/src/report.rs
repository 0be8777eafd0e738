//! Errors as people read them: the message, then each cause that adds something. Many errors
//! end their message with their cause's text (async-nats' `IO error: Connection refused`
//! wraps an `io::Error` that says `Connection refused` again); a cause already said is left out.

/// `error: cause: its cause`, each cause once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("IO error: {0}")]
    struct Wrapping(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("connecting to NATS")]
    struct Outer(#[source] Wrapping);

    #[test]
    fn a_cause_already_said_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let e = Outer(Wrapping(io));
        assert_eq!(error_chain(&e), "connecting to NATS: IO error: Connection refused (os error 111)");
    }
}
