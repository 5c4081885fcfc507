//! Property tests: protocol round trips, a parser that never panics, and the swarm state
//! machine against a model.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use p2p_mediastream::{
    protocol::{
        client::{announce_text, answer_text, scrape_text},
        parse, AnnounceEvent, AnnounceRequest, AnswerRequest, InMessage, InfoHash, Offer, OfferId,
        OutMessage, ParseLimits, PeerId, ScrapeRequest, Sdp,
    },
    swarm::state::{Reject, SwarmLimits, SwarmState},
};

type ConnId = p2p_mediastream::connection::ConnId;
use proptest::prelude::*;
use rand::{rngs::SmallRng, SeedableRng};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Protocol round trips
// ---------------------------------------------------------------------------------------

fn limits() -> ParseLimits {
    ParseLimits::default()
}

fn sdp() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,200}",
        "v=0\r\n[a-z=0-9 \r\n]{0,100}",
        Just(String::new()),
    ]
}

fn event() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("started")),
        Just(Some("completed")),
        Just(Some("stopped")),
        Just(Some("update")),
        Just(Some("paused")),
        Just(Some("")),
    ]
}

fn expected_event(event: Option<&str>) -> AnnounceEvent {
    match event {
        Some("started") => AnnounceEvent::Started,
        Some("completed") => AnnounceEvent::Completed,
        Some("stopped") => AnnounceEvent::Stopped,
        _ => AnnounceEvent::Update,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_20_bytes_survive_to_wire_and_from_wire(bytes in any::<[u8; 20]>()) {
        let id = PeerId(bytes);
        prop_assert_eq!(PeerId::from_wire(&id.to_wire()), Ok(id));
        prop_assert_eq!(id.to_wire().chars().count(), 20);
        // Through JSON as well (control bytes are escaped there).
        let json = serde_json::to_string(&id).expect("serialise");
        let text: String = serde_json::from_str(&json).expect("a JSON string");
        prop_assert_eq!(OfferId::from_wire(&text).map(|offer| offer.0), Ok(bytes));
        prop_assert_eq!(InfoHash::from_hex(&InfoHash(bytes).to_hex()), Some(InfoHash(bytes)));
    }

    #[test]
    fn announce_text_parses_back_to_the_same_request(
        info_hash in any::<[u8; 20]>(),
        peer_id in any::<[u8; 20]>(),
        event in event(),
        left in proptest::option::of(prop_oneof![Just(0u64), any::<u64>()]),
        offers in proptest::collection::vec((any::<[u8; 20]>(), sdp()), 0..14),
    ) {
        let offers: Vec<(OfferId, String)> =
            offers.into_iter().map(|(id, sdp)| (OfferId(id), sdp)).collect();
        let borrowed: Vec<(OfferId, &str)> =
            offers.iter().map(|(id, sdp)| (*id, sdp.as_str())).collect();
        let text = announce_text(InfoHash(info_hash), PeerId(peer_id), event, left, &borrowed);
        let kind = expected_event(event);
        let keeps_offers = matches!(kind, AnnounceEvent::Started | AnnounceEvent::Update);
        let expected = AnnounceRequest {
            info_hash: InfoHash(info_hash),
            peer_id: PeerId(peer_id),
            event: kind,
            left_is_zero: left.map(|left| left == 0),
            numwant: (!offers.is_empty()).then_some(offers.len()),
            offers: if keeps_offers {
                offers
                    .iter()
                    .take(limits().max_offers)
                    .map(|(offer_id, sdp)| Offer { offer_id: *offer_id, sdp: Sdp::from_text(sdp) })
                    .collect()
            } else {
                Vec::new()
            },
        };
        prop_assert_eq!(parse(&text, &limits()), Ok(InMessage::Announce(expected)));
    }

    #[test]
    fn answer_text_parses_back_to_the_same_request(
        info_hash in any::<[u8; 20]>(),
        peer_id in any::<[u8; 20]>(),
        to_peer_id in any::<[u8; 20]>(),
        offer_id in any::<[u8; 20]>(),
        sdp in sdp(),
    ) {
        let text = answer_text(
            InfoHash(info_hash),
            PeerId(peer_id),
            PeerId(to_peer_id),
            OfferId(offer_id),
            &sdp,
        );
        let expected = AnswerRequest {
            info_hash: InfoHash(info_hash),
            peer_id: PeerId(peer_id),
            to_peer_id: PeerId(to_peer_id),
            offer_id: OfferId(offer_id),
            sdp: Sdp::from_text(&sdp),
        };
        prop_assert_eq!(parse(&text, &limits()), Ok(InMessage::Answer(expected)));
    }

    #[test]
    fn scrape_text_parses_back_to_the_same_request(
        hashes in proptest::option::of(proptest::collection::vec(any::<[u8; 20]>(), 0..20)),
    ) {
        let hashes: Option<Vec<InfoHash>> =
            hashes.map(|hashes| hashes.into_iter().map(InfoHash).collect());
        let text = scrape_text(hashes.as_deref());
        let expected = match hashes {
            Some(hashes) => ScrapeRequest::Some(hashes),
            None => ScrapeRequest::All,
        };
        prop_assert_eq!(parse(&text, &limits()), Ok(InMessage::Scrape(expected)));
    }

    #[test]
    fn parse_never_panics_on_arbitrary_strings(text in any::<String>()) {
        check_parse(&text);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn parse_never_panics_on_arbitrary_json(value in json_value()) {
        check_parse(&value.to_string());
    }

    #[test]
    fn parse_never_panics_on_message_shaped_json(value in message_shaped()) {
        check_parse(&value.to_string());
    }
}

/// Parses without panicking; a failure names an action, a short reason, and an info_hash
/// only when the text had a valid one.
fn check_parse(text: &str) {
    let limits = ParseLimits {
        max_sdp_bytes: 64,
        max_scrape_hashes: 4,
        max_offers: 3,
    };
    if let Err(err) = parse(text, &limits) {
        assert!(!err.reason.is_empty());
        assert!(!err.kind.is_empty());
        assert!(
            err.reason.len() <= 400 + 64,
            "a failure reason is bounded: {}",
            err.reason.len()
        );
    }
}

fn id_string() -> impl Strategy<Value = String> {
    prop_oneof![
        // Valid: 20 characters <= U+00FF.
        proptest::collection::vec(any::<u8>(), 20)
            .prop_map(|bytes| bytes.into_iter().map(char::from).collect::<String>()),
        // Nearly valid.
        proptest::collection::vec(any::<u8>(), 19..=21)
            .prop_map(|bytes| bytes.into_iter().map(char::from).collect::<String>()),
        "[\u{0}-\u{10FFFF}]{20}",
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::from(1e300)),
        Just(Value::from(-1)),
        ".{0,30}".prop_map(Value::from),
        id_string().prop_map(Value::from),
        prop_oneof![
            Just("announce"),
            Just("scrape"),
            Just("offer"),
            Just("answer"),
            Just("started"),
            Just("stopped"),
            Just("completed"),
        ]
        .prop_map(Value::from),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![
            Just("action"),
            Just("info_hash"),
            Just("peer_id"),
            Just("event"),
            Just("left"),
            Just("numwant"),
            Just("offers"),
            Just("answer"),
            Just("offer"),
            Just("to_peer_id"),
            Just("offer_id"),
            Just("sdp"),
            Just("type"),
        ]
        .prop_map(String::from),
        ".{0,6}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(json_key(), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// An object with an action and a random selection of the fields clients send, so that
/// validation (not just JSON parsing) is exercised.
fn message_shaped() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("announce".to_owned()),
            Just("scrape".to_owned()),
            ".{0,8}"
        ],
        proptest::collection::btree_map(json_key(), json_value(), 0..10),
        proptest::option::of(id_string()),
        proptest::option::of(id_string()),
    )
        .prop_map(|(action, fields, info_hash, peer_id)| {
            let mut map: BTreeMap<String, Value> = fields;
            map.insert("action".into(), Value::from(action));
            if let Some(info_hash) = info_hash {
                map.insert("info_hash".into(), Value::from(info_hash));
            }
            if let Some(peer_id) = peer_id {
                map.insert("peer_id".into(), Value::from(peer_id));
            }
            Value::Object(map.into_iter().collect())
        })
}

// ---------------------------------------------------------------------------------------
// The swarm state machine against a model
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Announce {
        conn: ConnId,
        peer: u8,
        event: u8,
        left: Option<bool>,
        offers: Vec<u8>,
        numwant: Option<u8>,
    },
    Leave {
        conn: ConnId,
        peers: Vec<u8>,
    },
    Advance {
        secs: u64,
    },
    Sweep,
    /// Answers a pending offer of the model (picked by index), maybe from the wrong
    /// connection or to a forged peer.
    AnswerPending {
        pick: usize,
        wrong_conn: Option<ConnId>,
        forged_to: Option<u8>,
    },
    /// An answer made up from scratch.
    AnswerRandom {
        conn: ConnId,
        from: u8,
        to: u8,
        offer: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (
            1u128..5,
            0u8..8,
            0u8..5,
            proptest::option::of(any::<bool>()),
            proptest::collection::vec(0u8..12, 0..6),
            proptest::option::of(0u8..6),
        )
            .prop_map(|(conn, peer, event, left, offers, numwant)| Op::Announce {
                conn,
                peer,
                event,
                left,
                offers,
                numwant,
            }),
        1 => (1u128..5, proptest::collection::vec(0u8..8, 0..4))
            .prop_map(|(conn, peers)| Op::Leave { conn, peers }),
        1 => (0u64..130).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Sweep),
        3 => (
            any::<usize>(),
            proptest::option::of(1u128..5),
            proptest::option::of(0u8..8),
        )
            .prop_map(|(pick, wrong_conn, forged_to)| Op::AnswerPending {
                pick,
                wrong_conn,
                forged_to,
            }),
        1 => (1u128..5, 0u8..8, 0u8..8, 0u8..12)
            .prop_map(|(conn, from, to, offer)| Op::AnswerRandom { conn, from, to, offer }),
    ]
}

fn peer(n: u8) -> PeerId {
    let mut bytes = [b'p'; 20];
    bytes[19] = n;
    PeerId(bytes)
}

fn offer(n: u8) -> OfferId {
    let mut bytes = [b'o'; 20];
    bytes[0] = 0xE9;
    bytes[19] = n;
    OfferId(bytes)
}

const HASH: InfoHash = InfoHash(*b"swarm-under-test-000");

const LIMITS: SwarmLimits = SwarmLimits {
    max_offers: 3,
    max_peers: 6,
    peer_ttl: Duration::from_secs(240),
    offer_ttl: Duration::from_secs(60),
    max_pending_offers: 100_000,
};

#[derive(Debug, Clone, Copy)]
struct ModelPeer {
    conn: ConnId,
    seeder: bool,
    last: Instant,
}

#[derive(Debug, Clone, Copy)]
struct ModelOffer {
    offerer: PeerId,
    answerer_conn: ConnId,
    expires: Instant,
}

#[derive(Default)]
struct Model {
    peers: HashMap<PeerId, ModelPeer>,
    pending: BTreeMap<(PeerId, OfferId), ModelOffer>,
}

impl Model {
    fn counts(&self) -> (u32, u32) {
        let seeders = self.peers.values().filter(|peer| peer.seeder).count() as u32;
        (seeders, self.peers.len() as u32 - seeders)
    }
}

fn run(ops: &[Op], seed: u64) -> Result<(), TestCaseError> {
    let mut state: SwarmState<ConnId> = SwarmState::new(HASH, LIMITS);
    let mut model = Model::default();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut now = Instant::now();

    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Announce {
                conn,
                peer: n,
                event,
                left,
                offers,
                numwant,
            } => {
                let conn = *conn;
                let sender = peer(*n);
                let event = match event {
                    0 => AnnounceEvent::Started,
                    1 => AnnounceEvent::Completed,
                    2 => AnnounceEvent::Stopped,
                    _ => AnnounceEvent::Update,
                };
                let request = AnnounceRequest {
                    info_hash: HASH,
                    peer_id: sender,
                    event,
                    left_is_zero: *left,
                    numwant: numwant.map(usize::from),
                    offers: offers
                        .iter()
                        .map(|&id| Offer {
                            offer_id: offer(id),
                            sdp: Sdp::from_text(&format!("sdp {step} {id}")),
                        })
                        .collect(),
                };
                let result = state.announce(conn, conn, &request, now, &mut rng);

                if event == AnnounceEvent::Stopped {
                    if model.peers.get(&sender).is_some_and(|p| p.conn == conn) {
                        model.peers.remove(&sender);
                    }
                    let outcome = result
                        .map_err(|err| TestCaseError::fail(format!("stopped refused: {err:?}")))?;
                    prop_assert!(outcome.deliveries.is_empty());
                    prop_assert!(!outcome.registered);
                    let counts = (outcome.counts.complete, outcome.counts.incomplete);
                    prop_assert_eq!(counts, model.counts());
                } else {
                    let becomes_seeder = match (event, left) {
                        (AnnounceEvent::Completed, _) | (_, Some(true)) => Some(true),
                        (_, Some(false)) => Some(false),
                        _ => None,
                    };
                    let known = model.peers.contains_key(&sender);
                    if !known && model.peers.len() >= LIMITS.max_peers {
                        prop_assert_eq!(
                            result.err(),
                            Some(Reject::SwarmFull {
                                max_peers: LIMITS.max_peers
                            })
                        );
                        continue;
                    }
                    let entry = model.peers.entry(sender).or_insert(ModelPeer {
                        conn,
                        seeder: false,
                        last: now,
                    });
                    let took_over = known && entry.conn != conn;
                    entry.conn = conn;
                    entry.last = now;
                    if let Some(seeder) = becomes_seeder {
                        entry.seeder = seeder;
                    }
                    let outcome = result
                        .map_err(|err| TestCaseError::fail(format!("announce refused: {err:?}")))?;
                    prop_assert!(outcome.registered);
                    prop_assert_eq!(outcome.took_over, took_over);
                    let counts = (outcome.counts.complete, outcome.counts.incomplete);
                    prop_assert_eq!(counts, model.counts());

                    // Fan-out: min(offers, numwant, max_offers, peers of other connections).
                    let eligible = model.peers.values().filter(|p| p.conn != conn).count();
                    let wanted = request
                        .offers
                        .len()
                        .min(request.numwant.unwrap_or(usize::MAX))
                        .min(LIMITS.max_offers)
                        .min(eligible);
                    prop_assert_eq!(outcome.deliveries.len(), wanted);
                    let mut receivers = HashSet::new();
                    for (index, delivery) in outcome.deliveries.iter().enumerate() {
                        prop_assert!(receivers.insert(delivery.to), "receivers are distinct");
                        prop_assert_ne!(delivery.to, sender, "never the sender");
                        let receiver = model.peers.get(&delivery.to).copied();
                        let receiver = receiver.ok_or_else(|| {
                            TestCaseError::fail("an offer went to an unknown peer")
                        })?;
                        prop_assert_ne!(receiver.conn, conn, "never the sender's connection");
                        prop_assert_eq!(state.recipient(&delivery.to), Some(&receiver.conn));
                        match &delivery.message {
                            OutMessage::Offer {
                                info_hash,
                                peer_id,
                                offer_id,
                                sdp,
                            } => {
                                prop_assert_eq!(*info_hash, HASH);
                                prop_assert_eq!(*peer_id, sender);
                                prop_assert_eq!(*offer_id, request.offers[index].offer_id);
                                prop_assert_eq!(sdp, &request.offers[index].sdp);
                            }
                            other => {
                                return Err(TestCaseError::fail(format!(
                                    "expected an offer, got {other:?}"
                                )))
                            }
                        }
                        model.pending.insert(
                            (delivery.to, request.offers[index].offer_id),
                            ModelOffer {
                                offerer: sender,
                                answerer_conn: receiver.conn,
                                expires: now + LIMITS.offer_ttl,
                            },
                        );
                    }
                }
            }
            Op::Leave { conn, peers } => {
                let ids: Vec<PeerId> = peers.iter().map(|&n| peer(n)).collect();
                let mut expected = 0;
                let unique: HashSet<PeerId> = ids.iter().copied().collect();
                for id in &unique {
                    if model.peers.get(id).is_some_and(|p| p.conn == *conn) {
                        model.peers.remove(id);
                        expected += 1;
                    }
                }
                prop_assert_eq!(state.leave(*conn, &ids), expected);
            }
            Op::Advance { secs } => now += Duration::from_secs(*secs),
            Op::Sweep => {
                let removed: HashSet<PeerId> = state.sweep(now).into_iter().collect();
                let expected: HashSet<PeerId> = model
                    .peers
                    .iter()
                    .filter(|(_, p)| now.saturating_duration_since(p.last) >= LIMITS.peer_ttl)
                    .map(|(id, _)| *id)
                    .collect();
                prop_assert_eq!(&removed, &expected);
                model.peers.retain(|id, _| !expected.contains(id));
                model.pending.retain(|_, pending| pending.expires > now);
            }
            Op::AnswerPending {
                pick,
                wrong_conn,
                forged_to,
            } => {
                let Some((&(from, offer_id), &pending)) = (!model.pending.is_empty())
                    .then(|| model.pending.iter().nth(pick % model.pending.len()))
                    .flatten()
                else {
                    continue;
                };
                let conn = wrong_conn.unwrap_or(pending.answerer_conn);
                let to = forged_to.map(peer).unwrap_or(pending.offerer);
                check_answer(&mut state, &mut model, now, conn, from, to, offer_id, step)?;
            }
            Op::AnswerRandom {
                conn,
                from,
                to,
                offer: id,
            } => {
                check_answer(
                    &mut state,
                    &mut model,
                    now,
                    *conn,
                    peer(*from),
                    peer(*to),
                    offer(*id),
                    step,
                )?;
            }
        }

        // Invariants after every step.
        let counts = state.counts();
        prop_assert_eq!((counts.complete, counts.incomplete), model.counts());
        prop_assert_eq!(
            (counts.complete + counts.incomplete) as usize,
            state.peer_count()
        );
        prop_assert_eq!(state.is_empty(), model.peers.is_empty());
        for (id, p) in &model.peers {
            prop_assert_eq!(state.owner(id), Some(p.conn));
        }
        prop_assert_eq!(state.pending_offer_count(), model.pending.len());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_answer(
    state: &mut SwarmState<ConnId>,
    model: &mut Model,
    now: Instant,
    conn: ConnId,
    from: PeerId,
    to: PeerId,
    offer_id: OfferId,
    step: usize,
) -> Result<(), TestCaseError> {
    let request = AnswerRequest {
        info_hash: HASH,
        peer_id: from,
        to_peer_id: to,
        offer_id,
        sdp: Sdp::from_text(&format!("answer {step}")),
    };
    let actual = state.answer(conn, &request, now);
    // Accepted only for an offer relayed to `from` by `to`, unexpired, answered from the
    // connection it was relayed to, while the offerer is still there.
    let expected = match model.pending.get(&(from, offer_id)).copied() {
        Some(pending) if pending.expires > now && pending.offerer == to => {
            if pending.answerer_conn != conn {
                Err(Reject::NotYourOffer)
            } else {
                model.pending.remove(&(from, offer_id));
                if model.peers.contains_key(&to) {
                    Ok(to)
                } else {
                    Err(Reject::OffererGone)
                }
            }
        }
        _ => Err(Reject::UnknownOffer),
    };
    match (actual, expected) {
        (Ok(delivery), Ok(to)) => {
            prop_assert_eq!(delivery.to, to);
            prop_assert_eq!(
                delivery.message,
                OutMessage::Answer {
                    info_hash: HASH,
                    peer_id: from,
                    offer_id,
                    sdp: request.sdp.clone(),
                }
            );
        }
        (actual, expected) => {
            prop_assert_eq!(actual.map(|delivery| delivery.to), expected);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn swarm_state_matches_its_model(
        ops in proptest::collection::vec(op(), 1..80),
        seed in any::<u64>(),
    ) {
        run(&ops, seed)?;
    }
}
