//! The per-connection message rate: a token bucket, plain data. The caller passes `now`
//! and the limits (`ws.max_messages_per_sec`, `ws.message_burst`), so that an idle
//! connection carries no copy of the settings.

use std::time::Instant;

/// What the session does with a message over the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Drop the message (and say so, if it expects an answer).
    Drop,
    /// The client ignored `ws.max_rate_limited_messages` refusals: close the socket.
    Close,
}

#[derive(Debug)]
pub struct RateLimit {
    tokens: f64,
    refilled: Instant,
    /// Messages refused so far; the socket closes when this reaches the cap.
    refused: u32,
}

impl RateLimit {
    /// A full bucket: a client may send `burst` messages at once when it connects.
    pub fn new(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            refilled: now,
            refused: 0,
        }
    }

    /// Takes one message's worth from the bucket, refilled at `per_sec` up to `burst`;
    /// false when the client is over its rate.
    pub fn take(&mut self, now: Instant, per_sec: u32, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * f64::from(per_sec)).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Counts one refused message; `Close` once `max_refused` have been refused.
    pub fn refuse(&mut self, max_refused: u32) -> Refusal {
        self.refused = self.refused.saturating_add(1);
        if self.refused >= max_refused {
            Refusal::Close
        } else {
            Refusal::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_sustained_rate() {
        let start = Instant::now();
        let mut rate = RateLimit::new(3, start);
        let taken = (0..5).filter(|_| rate.take(start, 10, 3)).count();
        assert_eq!(taken, 3, "the burst, then nothing without time passing");
        // 10 per second: 100 ms buys exactly one more.
        let later = start + Duration::from_millis(100);
        assert!(rate.take(later, 10, 3));
        assert!(!rate.take(later, 10, 3));
    }

    #[test]
    fn the_bucket_never_holds_more_than_the_burst() {
        let start = Instant::now();
        let mut rate = RateLimit::new(2, start);
        let much_later = start + Duration::from_secs(3600);
        let taken = (0..10).filter(|_| rate.take(much_later, 100, 2)).count();
        assert_eq!(taken, 2);
    }

    #[test]
    fn a_clock_that_goes_backwards_refills_nothing() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut rate = RateLimit::new(1, start);
        assert!(rate.take(start, 1000, 1));
        assert!(!rate.take(start - Duration::from_secs(5), 1000, 1));
    }

    #[test]
    fn refusals_close_at_the_cap() {
        let mut rate = RateLimit::new(0, Instant::now());
        assert_eq!(rate.refuse(3), Refusal::Drop);
        assert_eq!(rate.refuse(3), Refusal::Drop);
        assert_eq!(rate.refuse(3), Refusal::Close);
    }
}
