//! Huge but legal JSON: thousands of unknown keys, long unknown strings, a long event.

use p2p_mediastream::protocol::client::announce_text;

use super::assert_refused;
use crate::common::*;

/// Peer 1's announce in swarm 1, led by `extra` (a JSON object body fragment, no braces).
fn announce_with_extra(extra: &str) -> String {
    let base = announce_text(info_hash(1), peer_id(1), None, None, &[]);
    format!("{{{extra},{}", &base[1..])
}

/// The abuser's announce `text`, padded with fields the tracker does not know, is answered
/// as if they were absent; the honest pair does not notice.
async fn unknown_fields_are_ignored(app: TestApp, text: String) {
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    abuser.send_text(text).await;
    assert_eq!(abuser.recv_announce_reply().await.incomplete, 1);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn ten_thousand_distinct_unknown_keys_are_ignored() {
    let app = spawn_app_configured(|settings| {
        settings.ws.max_frame_bytes = 256 * 1024;
        settings.ws.max_message_bytes = 256 * 1024;
    });
    let extra: Vec<String> = (0..10_000).map(|n| format!("\"k{n}\":0")).collect();
    unknown_fields_are_ignored(app, announce_with_extra(&extra.join(","))).await;
}

#[tokio::test]
async fn ten_thousand_repeats_of_an_unknown_key_are_ignored() {
    let text = announce_with_extra(&vec!["\"x\":0"; 10_000].join(","));
    assert!(text.len() < 65_536, "{}", text.len());
    unknown_fields_are_ignored(spawn_app(), text).await;
}

#[tokio::test]
async fn a_60_kib_string_in_an_unknown_field_is_ignored() {
    let extra = format!("\"trackerid\":\"{}\"", "z".repeat(60 * 1024));
    unknown_fields_are_ignored(spawn_app(), announce_with_extra(&extra)).await;
}

#[tokio::test]
async fn a_60_kib_event_is_refused_without_echoing_it() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let mut abuser = app.peer().await;
    let swarm = info_hash(1);
    let text = announce_text(swarm, peer_id(1), Some(&"e".repeat(60 * 1024)), None, &[]);
    abuser.send_text(text).await;
    let failure = assert_refused(&mut abuser, Some(swarm), "unknown event").await;
    let reason = failure["failure reason"].as_str().expect("reason");
    assert!(
        reason.len() < 200,
        "the failure echoes the input: {} bytes",
        reason.len()
    );
    // The socket stays open.
    abuser.assert_counts(swarm, peer_id(1), None, (0, 1)).await;
    honest.assert_unaffected().await;
}
