//! The simulated population: which swarm each connection joins, the ids it uses, and the
//! marker carried inside every SDP so that a receiver can tell who sent an offer and when.
//!
//! Everything here is pure and deterministic for a given seed, so a scenario can be
//! replayed and unit-tested without a network.

use std::fmt::Write as _;

use p2p_mediastream::protocol::{InfoHash, OfferId, PeerId, ID_LEN};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

/// How connections are spread over swarms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwarmShape {
    /// Total swarms (info_hashes), hot ones included.
    pub swarms: u32,
    /// Swarms 0..hot_swarms share `hot_share` of the connections evenly, like the few
    /// renditions of a live channel.
    pub hot_swarms: u32,
    /// Fraction of connections in the hot swarms (0..=1).
    pub hot_share: f64,
    /// The other connections pick a quiet swarm with probability proportional to
    /// 1 / rank^exponent (Zipf): 0 is uniform, 1 is the classic long tail.
    pub zipf_exponent: f64,
}

/// Assigns a swarm to each of `connections` slots.
///
/// Hot swarms get exact, even quotas (so a run always has the intended hot-spot); quiet
/// swarms are sampled, which leaves many of them with 0 or 1 peer as in real catalogues.
/// The result is shuffled so hot and quiet slots interleave in the ramp-up order and
/// across worker threads.
pub fn assign_swarms(connections: u32, shape: SwarmShape, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let quiet_swarms = shape.swarms.saturating_sub(shape.hot_swarms);
    let hot_connections = if shape.hot_swarms == 0 {
        0
    } else if quiet_swarms == 0 {
        connections
    } else {
        // The share is validated to 0..=1, so the product fits in u32.
        (f64::from(connections) * shape.hot_share.clamp(0.0, 1.0)).round() as u32
    };
    let mut out = Vec::with_capacity(connections as usize);
    for index in 0..hot_connections {
        out.push(index % shape.hot_swarms);
    }
    if hot_connections < connections {
        let cumulative = zipf_cumulative(quiet_swarms.max(1), shape.zipf_exponent);
        let total = cumulative.last().copied().unwrap_or(1.0);
        for _ in hot_connections..connections {
            let point = rng.random::<f64>() * total;
            let rank = cumulative
                .partition_point(|&edge| edge <= point)
                .min(cumulative.len() - 1);
            // rank < quiet_swarms <= u32::MAX by construction.
            out.push(shape.hot_swarms + rank as u32);
        }
    }
    // Fisher-Yates with our seeded generator, so the order is reproducible.
    for index in (1..out.len()).rev() {
        let other = rng.random_range(0..=index);
        out.swap(index, other);
    }
    out
}

/// Running sums of 1/k^s for k = 1..=n.
fn zipf_cumulative(n: u32, exponent: f64) -> Vec<f64> {
    let mut sum = 0.0;
    (1..=n)
        .map(|rank| {
            sum += 1.0 / f64::from(rank).powf(exponent);
            sum
        })
        .collect()
}

/// A summary of an assignment, echoed in the report so results can be compared.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SwarmSummary {
    /// Swarms with at least one connection.
    pub occupied: u32,
    /// Swarms with exactly one connection (nobody to send offers to).
    pub singletons: u32,
    /// Size of the largest swarm.
    pub largest: u32,
    /// Connections in the hot swarms.
    pub in_hot: u32,
    /// Offers one announce round can deliver, as a share of offers sent: the part of the
    /// load that really fans out (sum over peers of min(offers, swarm - 1) / (peers * offers)).
    pub deliverable_share: f64,
}

pub fn summarise(assignment: &[u32], shape: SwarmShape, offers: usize) -> SwarmSummary {
    let mut sizes = vec![0u32; shape.swarms as usize];
    for &swarm in assignment {
        if let Some(size) = sizes.get_mut(swarm as usize) {
            *size += 1;
        }
    }
    let mut deliverable = 0u64;
    for &size in &sizes {
        let per_peer = (offers as u64).min(u64::from(size.saturating_sub(1)));
        deliverable += per_peer * u64::from(size);
    }
    let sent = assignment.len() as u64 * offers as u64;
    SwarmSummary {
        occupied: sizes.iter().filter(|&&size| size > 0).count() as u32,
        singletons: sizes.iter().filter(|&&size| size == 1).count() as u32,
        largest: sizes.iter().copied().max().unwrap_or(0),
        in_hot: sizes.iter().take(shape.hot_swarms as usize).sum(),
        deliverable_share: if sent == 0 {
            0.0
        } else {
            deliverable as f64 / sent as f64
        },
    }
}

/// A value in [0, 1) per index, evenly spread (golden-ratio sequence).
pub fn spread(index: u32) -> f64 {
    (f64::from(index) * 0.618_033_988_749_894_9).fract()
}

/// SplitMix64: a cheap, well-mixed way to turn (seed, index) into id bytes.
pub fn mix64(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

/// Binary info_hash (as WebTorrent's SHA-1 hashes are), unique per run and swarm so a
/// tracker still holding peers from an earlier run does not skew the counts.
pub fn info_hash(run_nonce: u64, swarm: u32) -> InfoHash {
    let mut bytes = [0u8; ID_LEN];
    let mut state = run_nonce ^ (u64::from(swarm) << 32);
    for chunk in bytes.chunks_mut(8) {
        state = mix64(state);
        let word = state.to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    InfoHash(bytes)
}

/// A 64-bit identity per simulated peer: run nonce (16 bits), slot (24), reconnect
/// generation (24). It is written into peer_ids and SDP markers.
pub fn peer_token(run_nonce: u64, slot: u32, generation: u32) -> u64 {
    ((run_nonce & 0xFFFF) << 48)
        | ((u64::from(slot) & 0xFF_FFFF) << 24)
        | (u64::from(generation) & 0xFF_FFFF)
}

/// `-LT0001-` + 12 base-62 characters of the token: ASCII like P2P Media Loader's ids,
/// and unique per token (62^12 > 2^64).
pub fn peer_id(token: u64) -> PeerId {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut bytes = *b"-LT0001-000000000000";
    let mut rest = token;
    for byte in bytes[8..].iter_mut().rev() {
        *byte = ALPHABET[(rest % 62) as usize];
        rest /= 62;
    }
    PeerId(bytes)
}

/// Offer ids are binary (WebTorrent's are 20 random bytes): token, a per-peer counter
/// and a tail of bytes above 0x7F so every server's latin-1 handling is exercised.
pub fn offer_id(token: u64, counter: u64) -> OfferId {
    let mut bytes = [0u8; ID_LEN];
    bytes[..8].copy_from_slice(&token.to_le_bytes());
    bytes[8..16].copy_from_slice(&counter.to_le_bytes());
    bytes[16..].copy_from_slice(&[0xC3, 0xA9, 0x80, 0xFF]);
    OfferId(bytes)
}

/// What a simulated client writes into each SDP it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The offering peer's token (an answer copies it from the offer).
    pub offerer: u64,
    /// When the offer was handed to the socket, ns since the run's clock base.
    pub offer_ns: u64,
    /// When the answer was handed to the socket (0 in an offer).
    pub answer_ns: u64,
}

const MARKER_TAG: &str = "a=x-loadtest:";
/// 16 hex digits, ':' , 16, ':' , 16.
const MARKER_LEN: usize = 16 * 3 + 2;
const PAD_TAG: &str = "a=x-pad:";

/// Writes an SDP of exactly `size` bytes (or the minimum, about 130, if `size` is smaller)
/// that looks like a WebRTC session description and carries `marker`.
pub fn write_sdp(out: &mut String, size: usize, marker: Marker) {
    out.clear();
    // `write!` into a String cannot fail.
    let _ = write!(
        out,
        "v=0\r\no=- {:016x} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n{MARKER_TAG}",
        marker.offerer
    );
    push_marker_fields(out, marker);
    out.push_str("\r\n");
    let overhead = PAD_TAG.len() + 2;
    if size > out.len() + overhead {
        let pad = size - out.len() - overhead;
        out.push_str(PAD_TAG);
        out.extend(std::iter::repeat_n('x', pad));
        out.push_str("\r\n");
    }
}

fn push_marker_fields(out: &mut String, marker: Marker) {
    let _ = write!(
        out,
        "{:016x}:{:016x}:{:016x}",
        marker.offerer, marker.offer_ns, marker.answer_ns
    );
}

/// An SDP built once per session whose marker is rewritten in place for each offer or
/// answer: the padding is never regenerated, which matters at 100k messages/s.
pub struct SdpTemplate {
    text: String,
    marker_at: usize,
    fields: String,
}

impl SdpTemplate {
    pub fn new(size: usize) -> SdpTemplate {
        let mut text = String::with_capacity(size + 16);
        let blank = Marker {
            offerer: 0,
            offer_ns: 0,
            answer_ns: 0,
        };
        write_sdp(&mut text, size, blank);
        let marker_at = text.find(MARKER_TAG).map_or(0, |at| at + MARKER_TAG.len());
        SdpTemplate {
            text,
            marker_at,
            fields: String::with_capacity(MARKER_LEN),
        }
    }

    /// The SDP carrying `marker`.
    pub fn stamp(&mut self, marker: Marker) -> &str {
        self.fields.clear();
        push_marker_fields(&mut self.fields, marker);
        // Same length in and out, so this is an in-place copy of 50 bytes.
        self.text
            .replace_range(self.marker_at..self.marker_at + MARKER_LEN, &self.fields);
        &self.text
    }
}

/// Reads the marker back; `None` for an SDP that no load tester wrote.
pub fn read_marker(sdp: &str) -> Option<Marker> {
    let start = sdp.find(MARKER_TAG)? + MARKER_TAG.len();
    let field = sdp.get(start..start + MARKER_LEN)?;
    let hex = |range: std::ops::Range<usize>| u64::from_str_radix(field.get(range)?, 16).ok();
    if field.as_bytes().get(16) != Some(&b':') || field.as_bytes().get(33) != Some(&b':') {
        return None;
    }
    Some(Marker {
        offerer: hex(0..16)?,
        offer_ns: hex(17..33)?,
        answer_ns: hex(34..50)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(swarms: u32, hot: u32, share: f64) -> SwarmShape {
        SwarmShape {
            swarms,
            hot_swarms: hot,
            hot_share: share,
            zipf_exponent: 1.0,
        }
    }

    fn sizes(assignment: &[u32], swarms: u32) -> Vec<u32> {
        let mut sizes = vec![0u32; swarms as usize];
        for &swarm in assignment {
            sizes[swarm as usize] += 1;
        }
        sizes
    }

    #[test]
    fn hot_swarms_get_exact_even_quotas() {
        let assignment = assign_swarms(1000, shape(500, 4, 0.6), 7);
        assert_eq!(assignment.len(), 1000);
        let sizes = sizes(&assignment, 500);
        assert_eq!(&sizes[..4], &[150, 150, 150, 150]);
        assert_eq!(sizes[4..].iter().sum::<u32>(), 400);
    }

    #[test]
    fn quiet_swarms_follow_a_long_tail() {
        let assignment = assign_swarms(20_000, shape(1000, 0, 0.0), 3);
        let sizes = sizes(&assignment, 1000);
        let head: u32 = sizes[..10].iter().sum();
        let tail: u32 = sizes[990..].iter().sum();
        // Zipf(1) over 1000 ranks: the first 10 hold ~39 %, the last 10 ~0.13 %.
        assert!(head > 6000, "head {head}");
        assert!(tail < 200, "tail {tail}");
    }

    #[test]
    fn exponent_zero_is_uniform() {
        let mut flat = shape(10, 0, 0.0);
        flat.zipf_exponent = 0.0;
        let sizes = sizes(&assign_swarms(10_000, flat, 5), 10);
        assert!(
            sizes.iter().all(|&size| (850..1150).contains(&size)),
            "{sizes:?}"
        );
    }

    #[test]
    fn same_seed_same_scenario() {
        let a = assign_swarms(500, shape(100, 2, 0.5), 42);
        let b = assign_swarms(500, shape(100, 2, 0.5), 42);
        let c = assign_swarms(500, shape(100, 2, 0.5), 43);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn all_hot_when_there_are_no_quiet_swarms() {
        let sizes = sizes(&assign_swarms(10, shape(2, 2, 0.1), 1), 2);
        assert_eq!(sizes, vec![5, 5]);
    }

    #[test]
    fn summary_counts_deliverable_offers() {
        // Swarm sizes 3, 1, 0: a 3-peer swarm delivers min(5, 2) = 2 per peer.
        let summary = summarise(&[0, 0, 0, 1], shape(3, 1, 0.75), 5);
        assert_eq!(summary.occupied, 2);
        assert_eq!(summary.singletons, 1);
        assert_eq!(summary.largest, 3);
        assert_eq!(summary.in_hot, 3);
        assert!((summary.deliverable_share - 6.0 / 20.0).abs() < 1e-9);
    }

    #[test]
    fn spread_covers_the_unit_interval() {
        let mut buckets = [0u32; 10];
        for index in 0..1000 {
            let value = spread(index);
            assert!((0.0..1.0).contains(&value));
            buckets[(value * 10.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (90..=110).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn ids_are_distinct_and_valid() {
        let a = peer_id(peer_token(9, 1, 0));
        let b = peer_id(peer_token(9, 1, 1));
        assert_ne!(a, b);
        assert!(a.0.starts_with(b"-LT0001-"));
        assert_eq!(PeerId::from_wire(&a.to_wire()), Ok(a));
        assert_ne!(info_hash(1, 0), info_hash(1, 1));
        assert_ne!(info_hash(1, 0), info_hash(2, 0));
        let id = offer_id(5, 6);
        assert_eq!(OfferId::from_wire(&id.to_wire()), Ok(id));
    }

    #[test]
    fn sdp_has_the_requested_size_and_its_marker() {
        let marker = Marker {
            offerer: 0xDEAD_BEEF,
            offer_ns: 123_456_789,
            answer_ns: 0,
        };
        let mut sdp = String::new();
        write_sdp(&mut sdp, 1500, marker);
        assert_eq!(sdp.len(), 1500);
        assert!(sdp.starts_with("v=0\r\n"));
        assert_eq!(read_marker(&sdp), Some(marker));
        write_sdp(&mut sdp, 10, marker);
        assert!(sdp.len() < 200);
        assert_eq!(read_marker(&sdp), Some(marker));
    }

    #[test]
    fn template_stamps_markers_in_place() {
        let mut template = SdpTemplate::new(1200);
        for offer_ns in [1u64, u64::MAX, 77] {
            let marker = Marker {
                offerer: 9,
                offer_ns,
                answer_ns: offer_ns / 2,
            };
            let sdp = template.stamp(marker);
            assert_eq!(sdp.len(), 1200);
            assert_eq!(read_marker(sdp), Some(marker));
        }
    }

    #[test]
    fn foreign_sdp_has_no_marker() {
        assert_eq!(read_marker("v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"), None);
        assert_eq!(read_marker("a=x-loadtest:zz"), None);
        assert_eq!(read_marker("a=x-loadtest:0000000000000001-0000"), None);
    }
}
