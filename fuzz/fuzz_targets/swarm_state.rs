//! Random sequences of swarm operations: counts stay consistent, offers never go back to
//! their sender's connection, recipients are distinct, and an answer is only accepted for
//! an offer that was relayed to the answering connection and has not expired.
#![no_main]

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2p_mediastream::{
    protocol::{AnnounceEvent, AnnounceRequest, AnswerRequest, InfoHash, Offer, OfferId, OutMessage, PeerId, Sdp},
    swarm::state::{SwarmLimits, SwarmState},
};
use rand::{rngs::SmallRng, SeedableRng};

#[derive(Arbitrary, Debug)]
enum Op {
    Announce { conn: u8, peer: u8, event: u8, left: u8, offers: u8, numwant: Option<u8> },
    Answer { conn: u8, peer: u8, to: u8, offer: u8 },
    Leave { conn: u8, peer: u8 },
    Advance { secs: u8 },
    Sweep,
}

fn peer(n: u8) -> PeerId {
    PeerId([n % 16; 20])
}

fn offer_id(n: u8) -> OfferId {
    let mut bytes = [0xAA; 20];
    bytes[0] = n;
    OfferId(bytes)
}

fuzz_target!(|input: (u64, Vec<Op>)| {
    let (seed, ops) = input;
    let limits = SwarmLimits {
        max_offers: 4,
        max_peers: 12,
        peer_ttl: Duration::from_secs(100),
        offer_ttl: Duration::from_secs(60),
        max_pending_offers: 32,
    };
    let mut state: SwarmState<u128> = SwarmState::new(InfoHash([1; 20]), limits);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut now = Instant::now();
    // offer_id -> (offerer, connection it was relayed to, expiry)
    let mut relayed: HashMap<(PeerId, OfferId), (PeerId, u128, Instant)> = HashMap::new();
    let mut next_offer = 0u8;
    for op in ops.into_iter().take(256) {
        match op {
            Op::Announce { conn, peer: n, event, left, offers, numwant } => {
                let conn = u128::from(conn % 6);
                let event = match event % 4 {
                    0 => AnnounceEvent::Started,
                    1 => AnnounceEvent::Update,
                    2 => AnnounceEvent::Completed,
                    _ => AnnounceEvent::Stopped,
                };
                let offers: Vec<Offer> = (0..offers % 8)
                    .map(|_| {
                        next_offer = next_offer.wrapping_add(1);
                        Offer { offer_id: offer_id(next_offer), sdp: Sdp::from_text("sdp") }
                    })
                    .collect();
                let request = AnnounceRequest {
                    info_hash: InfoHash([1; 20]),
                    peer_id: peer(n),
                    event,
                    left_is_zero: [None, Some(true), Some(false)][usize::from(left % 3)],
                    numwant: numwant.map(usize::from),
                    offers,
                };
                if let Ok(outcome) = state.announce(conn, conn, &request, now, &mut rng) {
                    let mut seen = HashSet::new();
                    for delivery in &outcome.deliveries {
                        assert!(seen.insert(delivery.to), "recipients are distinct");
                        let owner = state.owner(&delivery.to).expect("recipient is registered");
                        assert_ne!(owner, conn, "never the sender's connection");
                        if let OutMessage::Offer { offer_id, .. } = &delivery.message {
                            relayed.insert((delivery.to, *offer_id), (peer(n), owner, now + limits.offer_ttl));
                        }
                    }
                    assert!(outcome.deliveries.len() <= limits.max_offers);
                }
            }
            Op::Answer { conn, peer: n, to, offer } => {
                let conn = u128::from(conn % 6);
                let request = AnswerRequest {
                    info_hash: InfoHash([1; 20]),
                    peer_id: peer(n),
                    to_peer_id: peer(to),
                    offer_id: offer_id(offer),
                    sdp: Sdp::from_text("answer"),
                };
                let expected = relayed.get(&(peer(n), offer_id(offer))).copied();
                if let Ok(delivery) = state.answer(conn, &request, now) {
                    let (offerer, answer_conn, expires) = expected.expect("answer matches a relayed offer");
                    assert_eq!(offerer, peer(to));
                    assert_eq!(answer_conn, conn);
                    assert!(expires > now);
                    assert_eq!(delivery.to, peer(to));
                    relayed.remove(&(peer(n), offer_id(offer)));
                }
            }
            Op::Leave { conn, peer: n } => {
                state.leave(u128::from(conn % 6), &[peer(n)]);
            }
            Op::Advance { secs } => now += Duration::from_secs(u64::from(secs)),
            Op::Sweep => {
                state.sweep(now);
            }
        }
        let counts = state.counts();
        assert_eq!((counts.complete + counts.incomplete) as usize, state.peer_count());
        assert!(state.peer_count() <= limits.max_peers);
        assert!(state.pending_offer_count() <= limits.max_pending_offers);
    }
});
