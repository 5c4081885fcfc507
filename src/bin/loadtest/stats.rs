//! What the simulated clients count and time, and how per-thread figures are merged.
//!
//! Each worker thread owns its counters and histograms, so the hot path never contends:
//! counters are atomics only so the progress printer on the main thread can read them,
//! and each has a single writer (see [`Counter::add`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// A counter with one writing thread and any number of readers.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Load + store rather than `fetch_add`: there is a single writer, so no update can be
    /// lost, and it avoids a locked instruction on every message.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters of one worker thread.
        #[derive(Default, Debug)]
        pub struct Counters {
            $($(#[$doc])* pub $name: Counter,)*
        }

        /// A plain copy of [`Counters`], summed over threads.
        #[derive(Default, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct Tally {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub fn snapshot(&self) -> Tally {
                Tally { $($name: self.$name.get(),)* }
            }
        }

        impl Tally {
            pub fn add(&mut self, other: &Tally) {
                $(self.$name = self.$name.wrapping_add(other.$name);)*
            }

            /// `self - earlier`, field by field (for per-second rates).
            pub fn since(&self, earlier: &Tally) -> Tally {
                Tally { $($name: self.$name.saturating_sub(earlier.$name),)* }
            }
        }
    };
}

counters! {
    /// TCP + WebSocket handshakes started.
    conn_attempted,
    /// Handshakes that completed (HTTP 101).
    conn_established,
    /// Handshakes that failed, whatever the cause.
    conn_failed,
    /// Sessions the server ended with a close frame.
    conn_closed_by_server,
    /// Sessions that ended on a read error or EOF without a close frame.
    conn_lost,
    /// Sessions we closed to simulate churn.
    conn_churned,
    /// Sessions that ended, for any reason (open = established - ended).
    conn_ended,
    announces_sent,
    announce_responses,
    /// Announce responses with no announce waiting for one on that connection (aquatic
    /// answers answers with an announce response too).
    announce_responses_unmatched,
    /// Offers inside announces (announces x offers).
    offers_sent,
    /// Offers the tracker should relay: sum over announces of min(offers, swarm - 1).
    offers_expected,
    /// Offers from a simulated peer received by another simulated peer.
    offers_received,
    /// Offers relayed back to the peer that made them (a server bug).
    offers_to_self,
    /// Offers that arrived tagged with an info_hash the receiver is not in.
    offers_wrong_swarm,
    /// Offers whose SDP carries no load-tester marker (real clients on the same tracker).
    offers_foreign,
    answers_sent,
    answers_received,
    /// Answers whose SDP names another offerer than the receiver.
    answers_misrouted,
    scrapes_sent,
    scrape_responses,
    /// `failure reason` messages.
    failures,
    /// Frames that are not JSON or not a tracker message.
    unparseable,
    /// Valid JSON with an action we do not know (warnings and the like).
    other_messages,
    /// Messages dropped because a connection's outbound queue was full (the server is not
    /// reading fast enough, or this client cannot write fast enough).
    queue_drops,
    msgs_out,
    msgs_in,
    bytes_out,
    bytes_in,
}

/// Window counters of the connections of one target (`--url`): what its connections
/// sent and received, each counted by the connection that did it.
#[derive(Default, Debug)]
pub struct TargetCounters {
    /// Announces its connections sent.
    pub announces_sent: Counter,
    /// Offers its connections' announces should fan out to (see `offers_expected`).
    pub offers_expected: Counter,
    /// Offers its connections received from other simulated peers.
    pub offers_received: Counter,
    /// Answers its connections sent.
    pub answers_sent: Counter,
    /// Answers that came back to its connections' offers.
    pub answers_received: Counter,
}

/// A plain copy of [`TargetCounters`], summed over threads.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TargetTally {
    pub announces_sent: u64,
    pub offers_expected: u64,
    pub offers_received: u64,
    pub answers_sent: u64,
    pub answers_received: u64,
}

impl TargetCounters {
    pub fn snapshot(&self) -> TargetTally {
        TargetTally {
            announces_sent: self.announces_sent.get(),
            offers_expected: self.offers_expected.get(),
            offers_received: self.offers_received.get(),
            answers_sent: self.answers_sent.get(),
            answers_received: self.answers_received.get(),
        }
    }
}

impl TargetTally {
    pub fn add(&mut self, other: &TargetTally) {
        self.announces_sent += other.announces_sent;
        self.offers_expected += other.offers_expected;
        self.offers_received += other.offers_received;
        self.answers_sent += other.answers_sent;
        self.answers_received += other.answers_received;
    }
}

impl Tally {
    /// Requests this client made: what an error rate is relative to.
    pub fn requests(&self) -> u64 {
        self.announces_sent + self.answers_sent + self.scrapes_sent + self.conn_attempted
    }

    /// Every outcome that counts as an error (see docs/loadtest.md).
    pub fn errors(&self) -> u64 {
        self.failures
            + self.unparseable
            + self.conn_failed
            + self.conn_closed_by_server
            + self.conn_lost
    }
}

/// Latencies in microseconds, 1 us .. 10 min, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

/// The latency distributions one worker records.
#[derive(Debug, Clone)]
pub struct Histograms {
    /// Announce sent -> its announce response.
    pub announce_rtt: Histogram<u64>,
    /// Announce with an offer sent by A -> the offer read by B.
    pub offer_relay: Histogram<u64>,
    /// Answer sent by B -> the answer read by A.
    pub answer_relay: Histogram<u64>,
    /// Offer sent by A -> the answer read by A: the signalling part of WebRTC setup.
    pub signalling_rtt: Histogram<u64>,
    /// Scrape sent -> scrape response.
    pub scrape_rtt: Histogram<u64>,
    /// TCP connect + WebSocket upgrade.
    pub handshake: Histogram<u64>,
    /// How late announce timers fired: this client's own scheduling delay.
    pub send_lag: Histogram<u64>,
}

impl Default for Histograms {
    fn default() -> Self {
        Self {
            announce_rtt: new_histogram(),
            offer_relay: new_histogram(),
            answer_relay: new_histogram(),
            signalling_rtt: new_histogram(),
            scrape_rtt: new_histogram(),
            handshake: new_histogram(),
            send_lag: new_histogram(),
        }
    }
}

impl Histograms {
    pub fn merge(&mut self, other: &Histograms) {
        // Same bounds everywhere, so `add` cannot fail; a failure would only lose samples.
        let _ = self.announce_rtt.add(&other.announce_rtt);
        let _ = self.offer_relay.add(&other.offer_relay);
        let _ = self.answer_relay.add(&other.answer_relay);
        let _ = self.signalling_rtt.add(&other.signalling_rtt);
        let _ = self.scrape_rtt.add(&other.scrape_rtt);
        let _ = self.handshake.add(&other.handshake);
        let _ = self.send_lag.add(&other.send_lag);
    }
}

/// Records a duration given in nanoseconds.
#[inline]
pub fn record_ns(histogram: &mut Histogram<u64>, nanos: u64) {
    histogram.saturating_record((nanos / 1000).max(1));
}

/// Text-keyed counts with a cap on distinct keys, so a server that puts ids or counters
/// in its error texts cannot make the report grow without bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TextCounts(pub BTreeMap<String, u64>);

/// Distinct texts kept; later ones are folded into one "(other)" entry.
pub const MAX_DISTINCT_TEXTS: usize = 50;
/// Longer texts are cut (on a char boundary).
pub const MAX_TEXT_LEN: usize = 160;
const OVERFLOW_KEY: &str = "(other texts)";

impl TextCounts {
    pub fn bump(&mut self, text: &str, n: u64) {
        if let Some(count) = self.0.get_mut(text) {
            *count += n;
            return;
        }
        let key = if self.0.len() >= MAX_DISTINCT_TEXTS {
            OVERFLOW_KEY.to_owned()
        } else {
            let mut end = text.len().min(MAX_TEXT_LEN);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        };
        *self.0.entry(key).or_insert(0) += n;
    }

    pub fn merge(&mut self, other: &TextCounts) {
        for (text, &count) in &other.0 {
            self.bump(text, count);
        }
    }

    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// Everything a worker hands back when it finishes.
#[derive(Debug, Clone, Default)]
pub struct WorkerOutcome {
    pub histograms: Histograms,
    /// `failure reason` texts (inside the measurement window).
    pub failure_reasons: TextCounts,
    /// Close codes the server sent, or how a connection ended without one (whole run).
    pub close_codes: TextCounts,
    /// Handshake failures by cause (whole run).
    pub connect_failures: TextCounts,
    /// Samples of frames we could not read.
    pub unparseable: TextCounts,
}

impl WorkerOutcome {
    pub fn merge(&mut self, other: &WorkerOutcome) {
        self.histograms.merge(&other.histograms);
        self.failure_reasons.merge(&other.failure_reasons);
        self.close_codes.merge(&other.close_codes);
        self.connect_failures.merge(&other.connect_failures);
        self.unparseable.merge(&other.unparseable);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_snapshot_and_sum() {
        let a = Counters::default();
        a.announces_sent.add(3);
        a.announces_sent.add(2);
        a.failures.add(1);
        let b = Counters::default();
        b.announces_sent.add(10);
        let mut sum = a.snapshot();
        sum.add(&b.snapshot());
        assert_eq!(sum.announces_sent, 15);
        assert_eq!(sum.failures, 1);
        let later = {
            let mut t = sum;
            t.announces_sent += 4;
            t
        };
        assert_eq!(later.since(&sum).announces_sent, 4);
        assert_eq!(sum.since(&later).announces_sent, 0);
    }

    #[test]
    fn errors_and_requests() {
        let tally = Tally {
            announces_sent: 90,
            answers_sent: 5,
            scrapes_sent: 1,
            conn_attempted: 4,
            failures: 2,
            conn_failed: 1,
            conn_lost: 1,
            unparseable: 1,
            ..Tally::default()
        };
        assert_eq!(tally.requests(), 100);
        assert_eq!(tally.errors(), 5);
    }

    #[test]
    fn histograms_merge_across_workers() {
        let mut a = Histograms::default();
        let mut b = Histograms::default();
        for ms in 1..=100u64 {
            record_ns(&mut a.announce_rtt, ms * 1_000_000);
        }
        record_ns(&mut b.announce_rtt, 5_000_000_000);
        a.merge(&b);
        assert_eq!(a.announce_rtt.len(), 101);
        assert!(a.announce_rtt.max() >= 4_990_000);
        let p50 = a.announce_rtt.value_at_quantile(0.5);
        assert!((50_000..=51_100).contains(&p50), "{p50}");
        // Sub-microsecond samples still count.
        record_ns(&mut a.offer_relay, 10);
        assert_eq!(a.offer_relay.len(), 1);
    }

    #[test]
    fn text_counts_are_capped() {
        let mut counts = TextCounts::default();
        for index in 0..(MAX_DISTINCT_TEXTS + 10) {
            counts.bump(&format!("reason {index}"), 1);
        }
        counts.bump("reason 0", 1);
        assert_eq!(counts.0.len(), MAX_DISTINCT_TEXTS + 1);
        assert_eq!(counts.0.get(OVERFLOW_KEY), Some(&10));
        assert_eq!(counts.total(), MAX_DISTINCT_TEXTS as u64 + 11);
        let long = "é".repeat(200);
        let mut other = TextCounts::default();
        other.bump(&long, 1);
        let key = other.0.keys().next().map(String::len).unwrap_or(0);
        assert!(key <= MAX_TEXT_LEN);
        counts.merge(&other);
        assert_eq!(counts.0.get(OVERFLOW_KEY), Some(&11));
    }
}
