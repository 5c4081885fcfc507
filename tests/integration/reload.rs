//! SIGHUP reloads the info_hash access list at once (the real binary, signalled with
//! kill(1); the timer is set far beyond the test so only the signal can explain it).

use std::time::Duration;

use crate::common::*;
use p2p_mediastream::protocol::client::TrackerMessage;

#[tokio::test]
async fn sighup_reloads_the_access_list_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("allowed.txt");
    let allowed = info_hash(1);
    let later = info_hash(2);
    std::fs::write(&list, format!("{}\n", allowed.to_hex())).expect("write list");
    let list_path = list.to_str().expect("utf-8 path");
    let server = BinaryServer::start(&[
        ("TRACKER__ACCESS__MODE", "allow"),
        ("TRACKER__ACCESS__LIST_PATH", list_path),
        ("TRACKER__ACCESS__RELOAD_INTERVAL_SECS", "3600"),
    ]);
    let mut peer = TestPeer::connect(&server.ws_url()).await;

    peer.announce(later, peer_id(1), Some("started"), &[]).await;
    match peer.recv().await {
        TrackerMessage::Failure {
            reason, info_hash, ..
        } => {
            assert_eq!(reason, "info_hash not allowed on this tracker");
            assert_eq!(info_hash, Some(later));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    std::fs::write(&list, format!("{}\n{}\n", allowed.to_hex(), later.to_hex()))
        .expect("rewrite list");
    server.signal("HUP");
    server.wait_for_log("SIGHUP: access list reloaded: 2", Duration::from_secs(5));

    peer.announce(later, peer_id(1), Some("started"), &[]).await;
    match peer.recv().await {
        TrackerMessage::AnnounceResponse {
            info_hash, counts, ..
        } => {
            assert_eq!(info_hash, later);
            assert_eq!(counts.incomplete, 1);
        }
        other => panic!("expected an announce response, got {other:?}"),
    }
}

#[tokio::test]
async fn a_broken_list_on_sighup_keeps_the_previous_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("allowed.txt");
    let allowed = info_hash(3);
    std::fs::write(&list, format!("{}\n", allowed.to_hex())).expect("write list");
    let server = BinaryServer::start(&[
        ("TRACKER__ACCESS__MODE", "allow"),
        (
            "TRACKER__ACCESS__LIST_PATH",
            list.to_str().expect("utf-8 path"),
        ),
        ("TRACKER__ACCESS__RELOAD_INTERVAL_SECS", "3600"),
    ]);
    std::fs::write(&list, "not an info_hash\n").expect("break list");
    server.signal("HUP");
    let line = server.wait_for_log("SIGHUP:", Duration::from_secs(5));
    assert!(line.contains("keeping the previous list"), "{line}");

    let mut peer = TestPeer::connect(&server.ws_url()).await;
    peer.announce(allowed, peer_id(1), Some("started"), &[])
        .await;
    assert!(matches!(
        peer.recv().await,
        TrackerMessage::AnnounceResponse { .. }
    ));
}

#[tokio::test]
async fn sighup_without_an_access_list_does_not_stop_the_server() {
    let server = BinaryServer::start(&[]);
    server.signal("HUP");
    server.wait_for_log("SIGHUP: no access list configured", Duration::from_secs(5));
    let response = reqwest::get(format!("http://{}/healthz", server.addr))
        .await
        .expect("still serving");
    assert_eq!(response.status(), 200);
}
