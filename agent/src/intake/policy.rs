//! What a job's end means for its message: one pure function, so the delivery rules can be
//! read (and tested) in one place.

use std::time::Duration;

use crate::jobs::JobEnd;

/// What to tell JetStream about a job's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Done (succeeded or failed with its error event): remove it, confirmed by the server.
    Ack,
    /// Never runnable here: remove it without redelivery.
    Term,
    /// Redeliver, after the delay if any.
    Nak(Option<Duration>),
    /// Say nothing: another run holds the job and settles its message (or, if that run dies,
    /// the server redelivers it after its ack wait).
    Leave,
}

/// A job that hit a NATS failure is retried after this long, resuming from its checkpoint.
pub const BUS_RETRY_DELAY: Duration = Duration::from_secs(5);

pub fn decide(end: &JobEnd) -> Delivery {
    match end {
        // A failed job is not redelivered: its error event is out and its rollback done.
        JobEnd::Finished { .. } => Delivery::Ack,
        JobEnd::Rejected => Delivery::Term,
        // Stopping: hand it straight back, for this node's next agent to resume.
        JobEnd::Interrupted => Delivery::Nak(None),
        JobEnd::Bus(_) => Delivery::Nak(Some(BUS_RETRY_DELAY)),
        // Running elsewhere: come back once its lease can have run out.
        JobEnd::Busy { until } => Delivery::Nak(Some(until_then(until.0) + crate::bus::TAKEOVER_GRACE)),
        JobEnd::LeaseLost => Delivery::Leave,
    }
}

fn until_then(t: time::OffsetDateTime) -> Duration {
    (t - time::OffsetDateTime::now_utc()).try_into().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusError;

    #[test]
    fn every_end_has_its_delivery() {
        assert_eq!(decide(&JobEnd::Finished { success: true }), Delivery::Ack);
        assert_eq!(decide(&JobEnd::Finished { success: false }), Delivery::Ack);
        assert_eq!(decide(&JobEnd::Rejected), Delivery::Term);
        assert_eq!(decide(&JobEnd::Interrupted), Delivery::Nak(None));
        assert_eq!(decide(&JobEnd::Bus(BusError::Stopped)), Delivery::Nak(Some(BUS_RETRY_DELAY)));
        assert_eq!(decide(&JobEnd::LeaseLost), Delivery::Leave);
        let until = pvefleet_schemas::Timestamp(time::OffsetDateTime::now_utc() + Duration::from_secs(20));
        let Delivery::Nak(Some(delay)) = decide(&JobEnd::Busy { until }) else { panic!("a busy job is handed back") };
        assert!(delay > Duration::from_secs(19) && delay <= Duration::from_secs(20) + crate::bus::TAKEOVER_GRACE);
    }
}
