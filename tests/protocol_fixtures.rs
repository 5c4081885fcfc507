//! Every frame of a real P2P Media Loader v2.3.1 session (captured with the reference
//! server, tests/fixtures/p2pml-v2.3.1-session.jsonl) through our protocol layer: each
//! client message parses into the request we expect, and for each message the reference
//! server sent, ours serialises to the same JSON (compared as values, byte-exact ids).

use std::collections::HashMap;

use p2p_mediastream::protocol::{
    parse, AnnounceEvent, InMessage, OfferId, OutMessage, ParseLimits, SwarmCounts,
};
use serde_json::Value;

struct Frame {
    dir: String,
    msg: String,
}

fn frames() -> Vec<Frame> {
    let text = include_str!("fixtures/p2pml-v2.3.1-session.jsonl");
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let record: Value = serde_json::from_str(line).expect("fixture line is JSON");
            Frame {
                dir: record["dir"].as_str().expect("dir").to_owned(),
                msg: record["msg"].as_str().expect("msg").to_owned(),
            }
        })
        .collect()
}

fn as_value(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON")
}

#[test]
fn every_client_message_parses() {
    let limits = ParseLimits::default();
    let mut announces = 0;
    let mut answers = 0;
    for frame in frames().iter().filter(|frame| frame.dir == "in") {
        match parse(&frame.msg, &limits).expect("fixture message parses") {
            InMessage::Announce(request) => {
                announces += 1;
                // P2P Media Loader: started with 5 offers, numwant 5, no `left`.
                assert_eq!(request.event, AnnounceEvent::Started);
                assert_eq!(request.offers.len(), 5);
                assert_eq!(request.numwant, Some(5));
                assert_eq!(request.left_is_zero, None);
                assert!(request.peer_id.to_wire().starts_with("-PM0203-"));
                let raw = as_value(&frame.msg);
                assert_eq!(raw["info_hash"], Value::from(request.info_hash.to_wire()));
                for (offer, raw_offer) in request
                    .offers
                    .iter()
                    .zip(raw["offers"].as_array().expect("offers"))
                {
                    assert_eq!(raw_offer["offer_id"], Value::from(offer.offer_id.to_wire()));
                    assert_eq!(
                        raw_offer["offer"]["sdp"].as_str(),
                        Some(offer.sdp.to_text().as_str())
                    );
                }
            }
            InMessage::Answer(request) => {
                answers += 1;
                let raw = as_value(&frame.msg);
                assert_eq!(raw["to_peer_id"], Value::from(request.to_peer_id.to_wire()));
                assert_eq!(raw["offer_id"], Value::from(request.offer_id.to_wire()));
                assert_eq!(
                    raw["answer"]["sdp"].as_str(),
                    Some(request.sdp.to_text().as_str())
                );
            }
            InMessage::Scrape(_) => panic!("P2P Media Loader never scrapes"),
        }
    }
    assert_eq!((announces, answers), (11, 19));
}

#[test]
fn our_responses_match_what_the_reference_server_sent() {
    let limits = ParseLimits::default();
    let mut offers = HashMap::new();
    let mut answers = HashMap::new();
    for frame in frames().iter().filter(|frame| frame.dir == "in") {
        match parse(&frame.msg, &limits).expect("parses") {
            InMessage::Announce(request) => {
                for offer in &request.offers {
                    offers.insert(
                        offer.offer_id,
                        (request.info_hash, request.peer_id, offer.sdp.clone()),
                    );
                }
            }
            InMessage::Answer(request) => {
                answers.insert(request.offer_id, request);
            }
            InMessage::Scrape(_) => {}
        }
    }

    let mut checked = 0;
    for frame in frames().iter().filter(|frame| frame.dir == "out") {
        let captured = as_value(&frame.msg);
        let ours = if captured.get("offer").is_some() {
            let offer_id =
                OfferId::from_wire(captured["offer_id"].as_str().expect("offer_id")).expect("id");
            let (info_hash, peer_id, sdp) = offers
                .get(&offer_id)
                .expect("relayed offer was announced")
                .clone();
            OutMessage::Offer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            }
        } else if captured.get("answer").is_some() {
            let offer_id =
                OfferId::from_wire(captured["offer_id"].as_str().expect("offer_id")).expect("id");
            let answer = answers.get(&offer_id).expect("relayed answer was sent");
            OutMessage::Answer {
                info_hash: answer.info_hash,
                peer_id: answer.peer_id,
                offer_id,
                sdp: answer.sdp.clone(),
            }
        } else {
            let info_hash = p2p_mediastream::protocol::InfoHash::from_wire(
                captured["info_hash"].as_str().expect("info_hash"),
            )
            .expect("id");
            OutMessage::AnnounceResponse {
                info_hash,
                counts: SwarmCounts {
                    complete: captured["complete"].as_u64().expect("complete") as u32,
                    incomplete: captured["incomplete"].as_u64().expect("incomplete") as u32,
                },
                interval_secs: captured["interval"].as_u64().expect("interval") as u32,
            }
        };
        assert_eq!(as_value(&ours.to_text()), captured, "frame {}", frame.msg);
        checked += 1;
    }
    assert_eq!(checked, 49);
}

#[test]
fn parse_failures_name_the_field_and_keep_action_and_info_hash() {
    let limits = ParseLimits::default();
    let err = parse(
        r#"{"action":"announce","info_hash":"mpEl12vYXhoeA00v0wNE","peer_id":"short"}"#,
        &limits,
    )
    .expect_err("short peer_id");
    assert_eq!(err.reason, "invalid peer_id: must be 20 characters, got 5");
    assert_eq!(
        err.info_hash.map(|hash| hash.to_wire()).as_deref(),
        Some("mpEl12vYXhoeA00v0wNE")
    );

    // A wrong type elsewhere still lets the failure carry the info_hash.
    let err = parse(
        r#"{"action":"announce","info_hash":"mpEl12vYXhoeA00v0wNE","peer_id":5}"#,
        &limits,
    )
    .expect_err("numeric peer_id");
    assert!(err.reason.contains("invalid type"), "{}", err.reason);
    assert!(err.info_hash.is_some());

    let err = parse(r#"{"action":"scrape","info_hash":["x"]}"#, &limits).expect_err("bad hash");
    assert_eq!(err.action, p2p_mediastream::protocol::Action::Scrape);
}
