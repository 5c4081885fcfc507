//! Ids with characters above U+00FF (which a 20-byte id cannot hold) in every id field.

use p2p_mediastream::protocol::client::answer_text;
use serde_json::json;

use super::{
    answers::{assert_answer_refused, assert_answer_relayed, relayed_offer},
    assert_refused,
    offers::offer_announce_is_refused,
};
use crate::common::*;

#[tokio::test]
async fn info_hash_with_a_character_above_u00ff_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let mut abuser = app.peer().await;
    let mut value = announce_value(info_hash(1), peer_id(1), &[], None);
    value["info_hash"] = json!(format!("{}\u{0100}", &info_hash(1).to_wire()[..19]));
    abuser.send_json(value).await;
    let reason = "invalid info_hash: has a character above U+00FF";
    assert_refused(&mut abuser, None, reason).await;
    // The socket stays usable.
    abuser
        .assert_counts(info_hash(1), peer_id(1), None, (0, 1))
        .await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn peer_id_with_an_astral_character_escape_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let mut abuser = app.peer().await;
    let swarm = info_hash(1);
    // 19 ASCII characters and one emoji written as a JSON surrogate pair.
    let text = format!(
        r#"{{"action":"announce","info_hash":{},"peer_id":"-XX0001-0123456789a\ud83d\ude00"}}"#,
        serde_json::to_string(&swarm.to_wire()).expect("json")
    );
    abuser.send_text(text).await;
    let reason = "invalid peer_id: has a character above U+00FF";
    assert_refused(&mut abuser, Some(swarm), reason).await;
    assert_eq!(scrape_counts(&app, swarm).await, (0, 0));
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn lone_surrogate_escape_in_an_id_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let mut abuser = app.peer().await;
    abuser
        .send_text(r#"{"action":"announce","info_hash":"0123456789012345678\ud800","peer_id":"-XX0001-0123456789ab"}"#)
        .await;
    assert_refused(&mut abuser, None, "invalid message").await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn offer_id_above_u00ff_is_refused_and_nothing_is_relayed() {
    let mut value = announce_value(info_hash(1), peer_id(1), &offers(1, 1, 100), Some(json!(1)));
    value["offers"][0]["offer_id"] = json!("\u{2603}123456789012345678X");
    let reason = "invalid offer_id: has a character above U+00FF";
    offer_announce_is_refused(spawn_app(), value, reason).await;
}

#[tokio::test]
async fn to_peer_id_above_u00ff_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    let answer = answer_text(swarm, peer_id(2), peer_id(1), offer, "v=0 answer");
    let mut value: serde_json::Value = serde_json::from_str(&answer).expect("json");
    value["to_peer_id"] = json!("\u{0101}".repeat(20));
    answerer.send_json(value).await;
    let reason = "invalid to_peer_id: has a character above U+00FF";
    assert_answer_refused(&mut answerer, &mut offerer, swarm, reason).await;
    // The offer is still answerable.
    assert_answer_relayed(&mut answerer, &mut offerer, swarm, offer).await;
    honest.assert_unaffected().await;
}
