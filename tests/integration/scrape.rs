//! Scrape: single, array, unknown, empty, full (refused / allowed and capped), too many.

use crate::common::*;
use p2p_mediastream::protocol::{client::announce_text, InfoHash};
use serde_json::{json, Value};

/// Fills `swarm` with `seeders` seeders and `leechers` leechers (peer ids from `first`),
/// all on one socket, which is returned so they stay.
async fn populate(
    app: &TestApp,
    swarm: InfoHash,
    first: u32,
    seeders: u32,
    leechers: u32,
) -> TestPeer {
    let mut socket = app.peer().await;
    for n in 0..seeders + leechers {
        let left = if n < seeders { 0 } else { 100 };
        socket
            .send_text(announce_text(
                swarm,
                peer_id(first + n),
                Some("started"),
                Some(left),
                &[],
            ))
            .await;
        socket.recv_announce_reply().await;
    }
    socket
}

fn file(complete: u64, incomplete: u64) -> Value {
    // `downloaded` is reported as `complete` (no tracker here counts finished downloads).
    json!({"complete": complete, "incomplete": incomplete, "downloaded": complete})
}

#[tokio::test]
async fn scrape_of_one_hash_reports_its_seeders_and_leechers() {
    let app = spawn_app();
    let swarm = info_hash(1);
    let _peers = populate(&app, swarm, 1, 1, 2).await;
    let mut client = app.peer().await;
    client
        .send_json(json!({"action": "scrape", "info_hash": swarm.to_wire()}))
        .await;
    let reply = client.recv_json().await;
    let mut files = serde_json::Map::new();
    files.insert(swarm.to_wire(), file(1, 2));
    assert_eq!(reply, json!({"action": "scrape", "files": files}));
}

#[tokio::test]
async fn scrape_of_several_hashes_answers_each_and_zeros_for_unknown_ones() {
    let app = spawn_app();
    let (one, two, unknown) = (info_hash(1), info_hash(2), info_hash(3));
    let _one = populate(&app, one, 1, 2, 0).await;
    let _two = populate(&app, two, 10, 0, 3).await;
    let mut client = app.peer().await;
    client
        .send_json(json!({
            "action": "scrape",
            "info_hash": [one.to_wire(), two.to_wire(), unknown.to_wire()],
        }))
        .await;
    let reply = client.recv_json().await;
    let mut files = serde_json::Map::new();
    files.insert(one.to_wire(), file(2, 0));
    files.insert(two.to_wire(), file(0, 3));
    files.insert(unknown.to_wire(), file(0, 0));
    assert_eq!(reply, json!({"action": "scrape", "files": files}));
    // A scrape creates no swarm.
    let stats = app.stats().await;
    assert_eq!(peers_and_torrents(&stats), (5, 2));
}

#[tokio::test]
async fn scrape_of_an_unknown_hash_answers_zeros() {
    let app = spawn_app();
    let mut client = app.peer().await;
    // A binary info_hash, echoed byte-exact as the key.
    let unknown = InfoHash(std::array::from_fn(|i| (i as u8).wrapping_mul(37)));
    client
        .send_json(json!({"action": "scrape", "info_hash": unknown.to_wire()}))
        .await;
    let reply = client.recv_json().await;
    let mut files = serde_json::Map::new();
    files.insert(unknown.to_wire(), file(0, 0));
    assert_eq!(reply, json!({"action": "scrape", "files": files}));
    assert_eq!(peers_and_torrents(&app.stats().await), (0, 0));
}

#[tokio::test]
async fn scrape_with_an_empty_array_answers_empty_files() {
    let app = spawn_app();
    let _peers = populate(&app, info_hash(1), 1, 1, 1).await;
    let mut client = app.peer().await;
    client
        .send_json(json!({"action": "scrape", "info_hash": []}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"action": "scrape", "files": {}})
    );
}

#[tokio::test]
async fn full_scrape_is_refused_by_default_with_action_scrape() {
    let app = spawn_app();
    let _peers = populate(&app, info_hash(1), 1, 1, 1).await;
    let mut client = app.peer().await;
    client.send_json(json!({"action": "scrape"})).await;
    let failure = client.recv_failure().await;
    assert_eq!(failure["action"], "scrape");
    assert!(failure.get("files").is_none(), "{failure}");
    // The socket still works.
    client
        .send_json(json!({"action": "scrape", "info_hash": info_hash(1).to_wire()}))
        .await;
    let reply = client.recv_json().await;
    assert_eq!(reply["files"][info_hash(1).to_wire()], file(1, 1));
}

#[tokio::test]
async fn full_scrape_when_enabled_lists_swarms_up_to_max_scrape_hashes() {
    let app = spawn_app_configured(|settings| {
        settings.tracker.full_scrape = true;
        settings.tracker.max_scrape_hashes = 2;
    });
    let _a = populate(&app, info_hash(1), 1, 1, 0).await;
    let _b = populate(&app, info_hash(2), 10, 0, 2).await;
    let _c = populate(&app, info_hash(3), 20, 3, 1).await;
    let mut client = app.peer().await;
    client.send_json(json!({"action": "scrape"})).await;
    let reply = client.recv_json().await;
    assert_eq!(reply["action"], "scrape");
    let files = reply["files"].as_object().expect("files object");
    assert_eq!(files.len(), 2, "capped at max_scrape_hashes: {reply}");
    let expected = [
        (info_hash(1).to_wire(), file(1, 0)),
        (info_hash(2).to_wire(), file(0, 2)),
        (info_hash(3).to_wire(), file(3, 1)),
    ];
    for (key, value) in files {
        let (_, want) = expected
            .iter()
            .find(|(hash, _)| hash == key)
            .unwrap_or_else(|| panic!("unexpected swarm {key:?}"));
        assert_eq!(value, want, "{key:?}");
    }
}

#[tokio::test]
async fn full_scrape_when_enabled_lists_every_swarm_under_the_cap() {
    let app = spawn_app_configured(|settings| settings.tracker.full_scrape = true);
    let _a = populate(&app, info_hash(1), 1, 1, 0).await;
    let _b = populate(&app, info_hash(2), 10, 0, 2).await;
    let mut client = app.peer().await;
    client.send_json(json!({"action": "scrape"})).await;
    let mut files = serde_json::Map::new();
    files.insert(info_hash(1).to_wire(), file(1, 0));
    files.insert(info_hash(2).to_wire(), file(0, 2));
    assert_eq!(
        client.recv_json().await,
        json!({"action": "scrape", "files": files})
    );
}

#[tokio::test]
async fn scrape_of_more_hashes_than_max_scrape_hashes_is_refused() {
    let app = spawn_app_configured(|settings| settings.tracker.max_scrape_hashes = 2);
    let mut client = app.peer().await;
    let hashes: Vec<String> = (1..=3).map(|n| info_hash(n).to_wire()).collect();
    client
        .send_json(json!({"action": "scrape", "info_hash": hashes}))
        .await;
    let failure = client.recv_failure().await;
    assert_eq!(failure["action"], "scrape");
    // Exactly the limit is fine.
    client
        .send_json(json!({"action": "scrape", "info_hash": &hashes[..2]}))
        .await;
    let reply = client.recv_json().await;
    assert_eq!(reply["files"].as_object().map(|files| files.len()), Some(2));
}

#[tokio::test]
async fn scrape_with_an_invalid_hash_in_the_array_is_refused_with_action_scrape() {
    let app = spawn_app();
    let mut client = app.peer().await;
    client
        .send_json(json!({"action": "scrape", "info_hash": [info_hash(1).to_wire(), "short"]}))
        .await;
    let failure = client.recv_failure().await;
    assert_eq!(failure["action"], "scrape");
    client
        .send_json(json!({"action": "scrape", "info_hash": [info_hash(1).to_wire()]}))
        .await;
    assert_eq!(client.recv_json().await["action"], "scrape");
}
