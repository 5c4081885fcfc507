//! The HTTP side: /hls types, caching, CORS and safety; the player; service endpoints.

use std::path::Path;

use crate::common::*;
use serde_json::{json, Value};

const SECRET: &str = "SECRET-OUTSIDE-THE-SERVED-DIRECTORIES";

/// A temp tree: `root/hls` (the stream), `root/public` (the player) and secrets next to
/// them that must never be served.
struct Tree {
    _root: tempfile::TempDir,
    hls: std::path::PathBuf,
    public: std::path::PathBuf,
}

fn tree() -> Tree {
    let root = tempfile::tempdir().expect("tempdir");
    let hls = root.path().join("hls");
    let public = root.path().join("public");
    std::fs::create_dir_all(hls.join("v0")).expect("mkdir");
    std::fs::create_dir_all(&public).expect("mkdir");
    let write = |path: &Path, content: &[u8]| std::fs::write(path, content).expect("write");
    write(
        &hls.join("live.m3u8"),
        b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n",
    );
    write(
        &hls.join("master.m3u8"),
        b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nlive.m3u8\n",
    );
    write(&hls.join("seg_1.ts"), b"\x47ts-segment");
    write(&hls.join("seg_2.m4s"), b"fmp4-segment");
    write(&hls.join("init.mp4"), b"fmp4-init");
    write(&hls.join("foo.ts.tmp"), b"in-progress");
    write(&hls.join("v0").join("seg_3.m4s"), b"nested-segment");
    write(
        &public.join("index.html"),
        b"<!doctype html><title>player</title>",
    );
    write(&public.join("app.js"), b"console.log('player')");
    write(&root.path().join("Cargo.toml"), SECRET.as_bytes());
    Tree {
        hls,
        public,
        _root: root,
    }
}

fn app_for(tree: &Tree) -> TestApp {
    let hls = tree.hls.clone();
    let public = tree.public.clone();
    spawn_app_configured(move |settings| {
        settings.http.hls_dir = hls;
        settings.http.public_dir = public;
    })
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("ascii header")
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    reqwest::get(app.http_url(path)).await.expect("GET")
}

#[tokio::test]
async fn hls_files_get_their_mime_types_and_cache_rules() {
    let tree = tree();
    let app = app_for(&tree);
    let expectations = [
        (
            "/hls/live.m3u8",
            "application/vnd.apple.mpegurl",
            "no-cache",
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n",
        ),
        (
            "/hls/master.m3u8",
            "application/vnd.apple.mpegurl",
            "public, max-age=5",
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nlive.m3u8\n",
        ),
        (
            "/hls/seg_1.ts",
            "video/mp2t",
            "public, max-age=31536000, immutable",
            "\x47ts-segment",
        ),
        (
            "/hls/seg_2.m4s",
            "video/mp4",
            "public, max-age=31536000, immutable",
            "fmp4-segment",
        ),
        (
            "/hls/init.mp4",
            "video/mp4",
            "public, max-age=60",
            "fmp4-init",
        ),
        (
            "/hls/v0/seg_3.m4s",
            "video/mp4",
            "public, max-age=31536000, immutable",
            "nested-segment",
        ),
    ];
    for (path, content_type, cache_control, body) in expectations {
        let response = get(&app, path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "content-type"), content_type, "{path}");
        assert_eq!(header(&response, "cache-control"), cache_control, "{path}");
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            "*",
            "{path}"
        );
        assert!(
            response.headers().get("content-disposition").is_none(),
            "{path}: media is served inline"
        );
        assert_eq!(response.text().await.expect("body"), body, "{path}");
    }
}

#[tokio::test]
async fn hls_range_requests_work_for_segments() {
    let tree = tree();
    let app = app_for(&tree);
    let response = reqwest::Client::new()
        .get(app.http_url("/hls/seg_2.m4s"))
        .header("Range", "bytes=0-3")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 206);
    assert_eq!(header(&response, "content-type"), "video/mp4");
    assert_eq!(response.text().await.expect("body"), "fmp4");
}

#[tokio::test]
async fn in_progress_tmp_files_are_not_served() {
    let tree = tree();
    let app = app_for(&tree);
    let response = get(&app, "/hls/foo.ts.tmp").await;
    assert_eq!(response.status(), 404);
    assert!(!response.text().await.expect("body").contains("in-progress"));
}

#[tokio::test]
async fn the_hls_directory_is_not_listed() {
    let tree = tree();
    let app = app_for(&tree);
    for path in ["/hls/", "/hls", "/hls/v0/", "/hls/v0"] {
        let response = get(&app, path).await;
        assert_eq!(response.status(), 404, "{path}");
        let body = response.text().await.expect("body");
        assert!(!body.contains("seg_"), "{path} listed files: {body}");
    }
}

#[tokio::test]
async fn missing_hls_files_are_404_and_not_cached() {
    let tree = tree();
    let app = app_for(&tree);
    let response = get(&app, "/hls/seg_999.ts").await;
    assert_eq!(response.status(), 404);
    assert_eq!(header(&response, "cache-control"), "no-cache");
}

#[tokio::test]
async fn path_traversal_out_of_the_served_directories_is_refused() {
    let tree = tree();
    let app = app_for(&tree);
    for path in [
        "/hls/../Cargo.toml",
        "/hls/%2e%2e/Cargo.toml",
        "/hls/%2E%2E/Cargo.toml",
        "/hls/..%2fCargo.toml",
        "/hls/%2e%2e%2fCargo.toml",
        "/hls/..%5cCargo.toml",
        "/hls/v0/../../Cargo.toml",
        "/hls//../Cargo.toml",
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/hls/%2e%2e/public/index.html",
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            app.addr
        );
        let (status, _, body) = raw_http(app.addr, &request).await;
        assert_ne!(status, 200, "{path}");
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains(SECRET), "{path} leaked the file");
        assert!(!body.contains("<title>player"), "{path} escaped /hls");
    }
}

#[tokio::test]
async fn hls_cors_preflight_answers_204() {
    let tree = tree();
    let app = app_for(&tree);
    let response = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, app.http_url("/hls/live.m3u8"))
        .header("Origin", "https://elsewhere.example")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "range")
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(response.status(), 204);
    assert_eq!(header(&response, "access-control-allow-origin"), "*");
    assert!(header(&response, "access-control-allow-methods").contains("GET"));
    assert!(header(&response, "access-control-allow-headers")
        .to_ascii_lowercase()
        .contains("range"));
}

#[tokio::test]
async fn root_serves_the_player_index_html() {
    let tree = tree();
    let app = app_for(&tree);
    let response = get(&app, "/").await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/html"));
    assert_eq!(
        response.text().await.expect("body"),
        "<!doctype html><title>player</title>"
    );
    let response = get(&app, "/app.js").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("body"),
        "console.log('player')"
    );
    assert_eq!(get(&app, "/nope.html").await.status(), 404);
}

#[tokio::test]
async fn a_plain_get_on_the_tracker_path_answers_426() {
    let app = spawn_app();
    let response = get(&app, "/announce").await;
    assert_eq!(response.status(), 426);
    assert_eq!(header(&response, "upgrade"), "websocket");
}

#[tokio::test]
async fn healthz_answers_ok() {
    let app = spawn_app();
    let response = get(&app, "/healthz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body").trim(), "ok");
}

#[tokio::test]
async fn readyz_answers_ready_true() {
    let app = spawn_app();
    let response = get(&app, "/readyz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, json!({"ready": true}));
}

#[tokio::test]
async fn stats_json_reflects_connections_swarms_and_peers() {
    let app = spawn_app();
    let stats = app.stats().await;
    assert_eq!(stats["torrentsCount"], 0);
    assert_eq!(stats["peersCount"], 0);
    assert_eq!(stats["servers"][0]["webSocketsCount"], 0);

    let mut peer = app.peer().await;
    let stats = app.stats().await;
    assert_eq!(stats["servers"][0]["webSocketsCount"], 1);
    assert_eq!(stats["torrentsCount"], 0);

    peer.announce(info_hash(1), peer_id(1), Some("started"), &[])
        .await;
    peer.recv_announce_reply().await;
    peer.announce(info_hash(2), peer_id(1), Some("started"), &[])
        .await;
    peer.recv_announce_reply().await;
    peer.announce(info_hash(2), peer_id(2), Some("started"), &[])
        .await;
    peer.recv_announce_reply().await;
    let stats = app.stats().await;
    assert_eq!(stats["torrentsCount"], 2);
    assert_eq!(stats["peersCount"], 3);
    assert_eq!(stats["servers"][0]["webSocketsCount"], 1);
    assert_eq!(
        stats["servers"][0]["server"].as_str(),
        Some(app.addr.to_string().as_str())
    );

    peer.close().await;
    let stats = wait_for_stats(&app, |stats| {
        stats["servers"][0]["webSocketsCount"] == 0 && peers_and_torrents(stats) == (0, 0)
    })
    .await;
    assert_eq!(peers_and_torrents(&stats), (0, 0));
}

/// The value of the first sample line `name{labels} value` (or `name value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == series).then(|| value.parse().ok())?
        })
}

async fn metrics_text(app: &TestApp) -> String {
    let response = get(app, "/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        header(&response, "content-type").starts_with("application/openmetrics-text"),
        "{}",
        header(&response, "content-type")
    );
    response.text().await.expect("body")
}

#[tokio::test]
async fn metrics_are_openmetrics_text_and_count_connections_and_announces() {
    let app = spawn_app();
    let text = metrics_text(&app).await;
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    assert_eq!(sample(&text, "tracker_ws_connections"), Some(0.0), "{text}");
    let announces = r#"tracker_messages_in_total{kind="announce"}"#;
    let before = sample(&text, announces).expect("announce counter");

    let mut peer = app.peer().await;
    peer.announce(info_hash(1), peer_id(1), Some("started"), &[])
        .await;
    peer.recv_announce_reply().await;
    let text = metrics_text(&app).await;
    assert_eq!(sample(&text, "tracker_ws_connections"), Some(1.0), "{text}");
    assert_eq!(sample(&text, announces), Some(before + 1.0), "{text}");

    peer.announce(info_hash(1), peer_id(1), None, &[]).await;
    peer.recv_announce_reply().await;
    let text = metrics_text(&app).await;
    assert_eq!(sample(&text, announces), Some(before + 2.0), "{text}");
}

#[tokio::test]
async fn config_json_tells_the_player_the_tracker_path_ice_servers_and_stream() {
    let app = spawn_app();
    let response = get(&app, "/config.json").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["announcePath"], "/announce");
    assert_eq!(body["streamUrl"], "/hls/live.m3u8");
    assert_eq!(
        body["iceServers"],
        json!([{"urls": ["stun:127.0.0.1:3478"]}])
    );

    // `{host}` is the host the page was loaded from, without its port.
    let request =
        "GET /config.json HTTP/1.1\r\nHost: stream.example.org:8000\r\nConnection: close\r\n\r\n";
    let (status, _, body) = raw_http(app.addr, request).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        body["iceServers"],
        json!([{"urls": ["stun:stream.example.org:3478"]}])
    );

    // A Host header that is not a plausible host name is not echoed.
    let request = "GET /config.json HTTP/1.1\r\nHost: evil\"<script>\r\nConnection: close\r\n\r\n";
    let (status, _, body) = raw_http(app.addr, request).await;
    if status == 200 {
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("<script>"), "{text}");
    }
}

#[tokio::test]
async fn config_json_follows_the_settings() {
    let app = spawn_app_configured(|settings| {
        settings.player.ice_servers = vec![
            "stun:{host}:3478".into(),
            "stun:stun.example.net:19302".into(),
        ];
        settings.player.stream_url = "/hls/master.m3u8".into();
        settings.ws.path = "/tracker".into();
    });
    let body: Value = get(&app, "/config.json").await.json().await.expect("json");
    assert_eq!(body["announcePath"], "/tracker");
    assert_eq!(body["streamUrl"], "/hls/master.m3u8");
    assert_eq!(
        body["iceServers"],
        json!([{"urls": ["stun:127.0.0.1:3478", "stun:stun.example.net:19302"]}])
    );
    // The tracker now answers at /tracker.
    let mut peer = TestPeer::connect(&format!("ws://{}/tracker", app.addr)).await;
    peer.announce(info_hash(1), peer_id(1), Some("started"), &[])
        .await;
    assert_eq!(peer.recv_announce_reply().await.incomplete, 1);
}
