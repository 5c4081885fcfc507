//! Caps: swarms and peer_ids per socket, swarm size, sockets per IP (also behind a
//! trusted proxy's X-Forwarded-For).

use super::assert_announce_refused;
use crate::common::*;

#[tokio::test]
async fn too_many_swarms_on_one_socket_are_refused() {
    let app = spawn_app_configured(|settings| settings.ws.max_swarms_per_connection = 3);
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    for n in 1..=3 {
        abuser
            .assert_counts(info_hash(n), peer_id(1), None, (0, 1))
            .await;
    }
    let reason = "too many swarms on one connection (limit 3)";
    assert_announce_refused(&mut abuser, info_hash(4), peer_id(1), reason).await;
    assert_eq!(scrape_counts(&app, info_hash(4)).await, (0, 0));
    // The honest pair's 2 peers in 1 swarm, and the abuser's 3.
    assert_eq!(peers_and_torrents(&app.stats().await), (5, 4));
    // Re-announcing in a joined swarm is still fine, also with a second peer_id; leaving
    // one frees a place.
    abuser
        .assert_counts(info_hash(2), peer_id(1), None, (0, 1))
        .await;
    abuser
        .assert_counts(info_hash(2), peer_id(2), None, (0, 2))
        .await;
    abuser
        .assert_counts(info_hash(1), peer_id(1), Some("stopped"), (0, 0))
        .await;
    abuser
        .assert_counts(info_hash(4), peer_id(1), None, (0, 1))
        .await;
    // Another socket's swarms do not count against this one's cap.
    let mut other = app.peer().await;
    other
        .assert_counts(info_hash(5), peer_id(9), Some("started"), (0, 1))
        .await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn too_many_peer_ids_in_one_swarm_on_one_socket_are_refused() {
    let app = spawn_app_configured(|settings| settings.ws.max_peer_ids_per_swarm = 2);
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    let swarm = info_hash(1);
    abuser.assert_counts(swarm, peer_id(1), None, (0, 1)).await;
    abuser.assert_counts(swarm, peer_id(2), None, (0, 2)).await;
    let reason = "too many peer_ids in one swarm on one connection (limit 2)";
    assert_announce_refused(&mut abuser, swarm, peer_id(3), reason).await;
    assert_eq!(scrape_counts(&app, swarm).await, (0, 2));
    // Re-announcing a registered one is fine.
    abuser.assert_counts(swarm, peer_id(2), None, (0, 2)).await;
    // Another swarm is a separate budget.
    abuser
        .assert_counts(info_hash(2), peer_id(3), None, (0, 1))
        .await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_full_swarm_refuses_new_peers_but_keeps_its_members() {
    let app = spawn_app_configured(|settings| settings.tracker.max_peers_per_swarm = 3);
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut members = joined_peers(app.addr, swarm, 100..103, Some("started"), 0).await;
    let mut abuser = app.peer().await;
    assert_announce_refused(&mut abuser, swarm, peer_id(1), "swarm is full (3 peers)").await;
    members[0]
        .assert_counts(swarm, peer_id(100), None, (0, 3))
        .await;
    // The refused socket still works elsewhere.
    abuser
        .assert_counts(info_hash(2), peer_id(1), Some("started"), (0, 1))
        .await;
    honest.assert_unaffected().await;
}

// Sockets per IP, and X-Forwarded-For.

#[tokio::test]
async fn too_many_sockets_from_one_ip_get_503_and_the_slot_comes_back() {
    let app = spawn_app_configured(|settings| settings.server.max_connections_per_ip = 3);
    let mut honest = HonestPair::join(&app).await;
    let abuser = app.peer().await;
    let (status, body) = refused_upgrade(&app.ws_url(), &[], "a fourth socket from one IP").await;
    assert_eq!(status, 503);
    assert!(body.contains("max_connections_per_ip"), "{body}");
    // The refused upgrade took no connection slot.
    assert_eq!(websockets(&app.stats().await), 3);
    abuser.close().await;
    wait_connections(&app, 2).await;
    let again = try_connect(&app.ws_url(), &[]).await;
    assert!(again.is_ok(), "the slot was not released");
    honest.assert_unaffected().await;
}

fn behind_proxy(settings: &mut p2p_mediastream::Settings) {
    settings.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    settings.server.max_connections_per_ip = 1;
}

async fn honest_behind_proxy(app: &TestApp) -> HonestPair {
    HonestPair::join_with(
        app,
        &[("X-Forwarded-For", "198.51.100.1")],
        &[("X-Forwarded-For", "198.51.100.2")],
    )
    .await
}

/// An upgrade forwarded for `client` (an X-Forwarded-For value); `Err` with the status
/// when refused.
async fn forwarded_for(app: &TestApp, client: &str) -> Result<TestPeer, (u16, String)> {
    try_connect(&app.ws_url(), &[("X-Forwarded-For", client)]).await
}

/// An upgrade forwarded for `client` that the per-IP cap must refuse with 503; `what`
/// names it in the panic when it is admitted.
async fn assert_forwarded_refused(app: &TestApp, client: &str, what: &str) {
    let headers = [("X-Forwarded-For", client)];
    let (status, _) = refused_upgrade(&app.ws_url(), &headers, what).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_ip_is_capped() {
    let app = spawn_app_configured(behind_proxy);
    let mut honest = honest_behind_proxy(&app).await;
    let _one = forwarded_for(&app, "203.0.113.7")
        .await
        .expect("first client admitted");
    let _two = forwarded_for(&app, "203.0.113.8")
        .await
        .expect("another client admitted");
    assert_forwarded_refused(&app, "203.0.113.7", "a second socket of 203.0.113.7").await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_without_a_trusted_proxy() {
    let app = spawn_app_configured(|settings| settings.server.max_connections_per_ip = 3);
    let mut honest = HonestPair::join(&app).await;
    let _third = forwarded_for(&app, "203.0.113.7")
        .await
        .expect("third socket from 127.0.0.1 admitted");
    let what = "a socket with a forged X-Forwarded-For (escaping the per-IP cap)";
    assert_forwarded_refused(&app, "203.0.113.8", what).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_spoofed_leftmost_forwarded_hop_does_not_escape_the_cap() {
    let app = spawn_app_configured(behind_proxy);
    let mut honest = honest_behind_proxy(&app).await;
    let _one = forwarded_for(&app, "6.6.6.6, 203.0.113.9")
        .await
        .expect("admitted as 203.0.113.9");
    let what = "a socket whose client-chosen leftmost hop was believed";
    assert_forwarded_refused(&app, "7.7.7.7, 203.0.113.9", what).await;
    let _other = forwarded_for(&app, "203.0.113.9, 203.0.113.10")
        .await
        .expect("admitted as 203.0.113.10");
    honest.assert_unaffected().await;
}
