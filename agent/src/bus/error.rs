//! What a NATS operation of the agent can fail with.

/// A NATS failure the agent could not ride out with its retries.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("stopped while connecting to NATS")]
    Stopped,
    /// The job's event log was written by someone else: a cancel of the queued job, or
    /// another run of the job.
    #[error("the job's events were written by someone else")]
    Superseded,
    /// Another run took the job over, or this run's lease ran out.
    #[error("this run no longer holds the job's lease")]
    LeaseLost,
    /// The message says what was being done; the cause is kept whole as its source.
    #[error("{what}")]
    Nats {
        what: String,
        #[source]
        source: async_nats::Error,
    },
}

impl BusError {
    pub(crate) fn nats(what: impl Into<String>, e: impl Into<async_nats::Error>) -> Self {
        BusError::Nats { what: what.into(), source: e.into() }
    }
}
