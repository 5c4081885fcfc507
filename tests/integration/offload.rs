//! Origin offload accounting over real HTTP: `/hls` bytes by stream and kind, viewer
//! reports (`POST /api/report`: what is accepted, and every kind of bad report refused
//! with its status and nothing changed), and who may open the dashboard.

use std::path::Path;

use crate::common::*;
use serde_json::{json, Value};

/// An HLS tree: a top-level playlist and segment (stream "/"), and a rendition in `v0/`.
struct Tree {
    _root: tempfile::TempDir,
    hls: std::path::PathBuf,
}

const PLAYLIST: &[u8] = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg_1.ts\n";
const SEGMENT: &[u8] = &[0x47; 1000];
const RENDITION_SEGMENT: &[u8] = &[0x11; 300];

fn tree() -> Tree {
    let root = tempfile::tempdir().expect("tempdir");
    let hls = root.path().join("hls");
    std::fs::create_dir_all(hls.join("v0")).expect("mkdir");
    let write = |path: &Path, content: &[u8]| std::fs::write(path, content).expect("write");
    write(&hls.join("live.m3u8"), PLAYLIST);
    write(&hls.join("seg_1.ts"), SEGMENT);
    write(&hls.join("v0").join("seg_3.m4s"), RENDITION_SEGMENT);
    Tree { hls, _root: root }
}

fn app_for(tree: &Tree, change: impl FnOnce(&mut p2p_mediastream::Settings)) -> TestApp {
    let hls = tree.hls.clone();
    spawn_app_configured(move |settings| {
        settings.http.hls_dir = hls;
        change(settings);
    })
}

/// A server on a fresh tree whose stream "/" is known (its playlist was served once), so
/// that reports for it count.
async fn serving_live(change: impl FnOnce(&mut p2p_mediastream::Settings)) -> (Tree, TestApp) {
    let tree = tree();
    let app = app_for(&tree, change);
    get_body(&app, "/hls/live.m3u8").await;
    (tree, app)
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    reqwest::get(app.http_url(path)).await.expect("GET")
}

async fn get_body(app: &TestApp, path: &str) -> usize {
    let response = get(app, path).await;
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.bytes().await.expect("body").len()
}

fn stream<'a>(usage: &'a Value, name: &str) -> &'a Value {
    usage["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|row| row["stream"] == name)
        .unwrap_or_else(|| panic!("no stream {name} in {usage:#}"))
}

#[tokio::test]
async fn hls_bytes_are_counted_by_stream_and_kind_as_they_are_sent() {
    let tree = tree();
    let app = app_for(&tree, |_| {});
    let mut expected_segment = 0;
    expected_segment += get_body(&app, "/hls/seg_1.ts").await;
    expected_segment += get_body(&app, "/hls/seg_1.ts").await;
    let playlist = get_body(&app, "/hls/live.m3u8").await;
    let rendition = get_body(&app, "/hls/v0/seg_3.m4s").await;
    // A range counts what it carries.
    let client = reqwest::Client::new();
    let ranged = client
        .get(app.http_url("/hls/seg_1.ts"))
        .header("Range", "bytes=0-99")
        .send()
        .await
        .expect("range");
    assert_eq!(ranged.status(), 206);
    expected_segment += ranged.bytes().await.expect("body").len();
    // Neither HEAD, nor 404, nor 304 send a body.
    let head = client
        .head(app.http_url("/hls/seg_1.ts"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 200);
    assert_eq!(get(&app, "/hls/missing.ts").await.status(), 404);
    let etag = get(&app, "/hls/live.m3u8").await.headers()["etag"].clone();
    let cached = client
        .get(app.http_url("/hls/live.m3u8"))
        .header("If-None-Match", etag)
        .send()
        .await
        .expect("conditional");
    assert_eq!(cached.status(), 304);

    assert_eq!(expected_segment, 2 * SEGMENT.len() + 100);
    let usage = app.stats().await["usage"].clone();
    let root = stream(&usage, "/");
    assert_eq!(root["origin"]["segmentBytes"], expected_segment);
    assert_eq!(root["origin"]["playlistBytes"], 2 * playlist);
    assert_eq!(
        root["origin"]["segmentRequests"], 3,
        "HEAD and 404 are not counted"
    );
    assert_eq!(stream(&usage, "v0")["origin"]["segmentBytes"], rendition);
    assert_eq!(
        usage["total"]["origin"]["bytes"],
        expected_segment + 2 * playlist + rendition
    );
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric_value(&metrics, "hls_bytes_total"),
        (expected_segment + 2 * playlist + rendition) as f64,
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            r#"hls_bytes_total{{stream="v0",kind="segment"}} {rendition}"#
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn streams_beyond_the_cap_are_counted_as_other() {
    let tree = tree();
    std::fs::create_dir_all(tree.hls.join("v1")).expect("mkdir");
    std::fs::write(tree.hls.join("v1").join("a.ts"), b"abc").expect("write");
    let app = app_for(&tree, |settings| settings.http.hls_max_streams = 2);
    get_body(&app, "/hls/live.m3u8").await;
    get_body(&app, "/hls/v0/seg_3.m4s").await;
    get_body(&app, "/hls/v1/a.ts").await;
    let usage = app.stats().await["usage"].clone();
    let names: Vec<&str> = usage["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|row| row["stream"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["/", "v0", "other"]);
    assert_eq!(stream(&usage, "other")["origin"]["segmentBytes"], 3);
}

fn good_report() -> Value {
    json!({
        "v": 1, "stream": "/hls/live.m3u8", "ms": 10000, "p2p": 750000, "http": 250000,
        "up": 500000, "stalls": 1, "stallMs": 400, "startupMs": 900, "peers": 3
    })
}

async fn post(app: &TestApp, body: impl Into<reqwest::Body>) -> (u16, String) {
    post_from(app, body, None).await
}

async fn post_from(
    app: &TestApp,
    body: impl Into<reqwest::Body>,
    forwarded_for: Option<&str>,
) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(app.http_url("/api/report"))
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(forwarded_for) = forwarded_for {
        request = request.header("X-Forwarded-For", forwarded_for);
    }
    let response = request.send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.text().await.expect("text"))
}

/// POSTs `chunks` chunks of `size` spaces with chunked transfer encoding (no length
/// declared) on a raw socket; the status code of the answer.
async fn post_chunked(app: &TestApp, chunks: usize, size: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let mut request = format!(
        "POST /api/report HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        app.addr
    );
    for _ in 0..chunks {
        request.push_str(&format!("{size:x}\r\n{}\r\n", " ".repeat(size)));
    }
    request.push_str("0\r\n\r\n");
    // The server may answer and close before it has read everything.
    let _ = socket.write_all(request.as_bytes()).await;
    let mut head = vec![0; 12];
    tokio::time::timeout(RECV_TIMEOUT, socket.read_exact(&mut head))
        .await
        .expect("an answer in time")
        .expect("status line");
    let line = String::from_utf8_lossy(&head).into_owned();
    line[9..12]
        .parse()
        .unwrap_or_else(|_| panic!("status line {line:?}"))
}

async fn reported(app: &TestApp) -> Value {
    app.stats().await["usage"]["total"]["reported"].clone()
}

#[tokio::test]
async fn a_good_report_adds_to_its_stream() {
    let (_tree, app) = serving_live(|_| {}).await;
    // Absolute URLs of this server's stream count too.
    let mut absolute = good_report();
    absolute["stream"] = Value::from(app.http_url("/hls/live.m3u8?x=1"));
    absolute
        .as_object_mut()
        .expect("object")
        .remove("startupMs");
    for body in [good_report(), absolute] {
        let (status, text) = post(&app, body.to_string()).await;
        assert_eq!(status, 204, "{text}");
    }
    let totals = reported(&app).await;
    assert_eq!(totals["p2pBytes"], 1_500_000);
    assert_eq!(totals["httpBytes"], 500_000);
    assert_eq!(totals["uploadedBytes"], 1_000_000);
    assert_eq!(totals["stalls"], 2);
    assert_eq!(totals["startups"], 1);
    assert_eq!(totals["watchSeconds"], 20.0);
    assert_eq!(totals["p2pShare"], 75.0);
    let dashboard: Value = get(&app, "/dashboard.json")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(dashboard["usage"]["total"]["reported"], totals);
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"p2p_viewer_bytes_total{stream="/",source="p2p"} 1500000"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"p2p_reports_total{result="accepted"} 2"#),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "p2p_viewer_watch_seconds_total"),
        20.0
    );
}

#[tokio::test]
async fn bad_reports_are_refused_with_their_status_and_change_nothing() {
    let (_tree, app) = serving_live(|settings| {
        // This test is about the checks, not the flood limits.
        settings.reports.per_ip_report_burst = 1000;
    })
    .await;
    let with = |key: &str, value: Value| {
        let mut report = good_report();
        report[key] = value;
        report.to_string()
    };
    let mut unknown_field = good_report();
    unknown_field["viewerId"] = Value::from("abc");
    let mut missing = good_report();
    missing.as_object_mut().expect("object").remove("http");
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "oversized",
            format!("{}{}", good_report(), " ".repeat(600)),
            413,
        ),
        ("not JSON", "{\"v\":1,".into(), 400),
        ("a string for a number", with("p2p", json!("750000")), 400),
        ("negative", with("http", json!(-1)), 400),
        ("fraction", with("up", json!(0.5)), 400),
        ("unknown field", unknown_field.to_string(), 400),
        ("missing field", missing.to_string(), 400),
        ("another version", with("v", json!(2)), 400),
        (
            "absurd bytes",
            with("p2p", json!(1_000_000_000_000u64)),
            422,
        ),
        ("absurd interval", with("ms", json!(86_400_000)), 422),
        (
            "stalled longer than the interval",
            with("stallMs", json!(20_000)),
            422,
        ),
        ("absurd peers", with("peers", json!(100_000)), 422),
        (
            "a stream never served",
            with("stream", json!("/hls/v7/x.m3u8")),
            422,
        ),
        ("outside /hls", with("stream", json!("/etc/passwd")), 422),
    ];
    let before = reported(&app).await;
    for (what, body, expected) in cases {
        let (status, text) = post(&app, body).await;
        assert_eq!(status, expected, "{what}: {text}");
        let answer: Value = serde_json::from_str(&text).expect("a JSON refusal");
        assert!(
            answer["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{what}: {text}"
        );
        assert_eq!(reported(&app).await, before, "{what} changed the sums");
    }
    // A body that never says how long it is, streamed past the cap.
    assert_eq!(post_chunked(&app, 4, 400).await, 413);
    assert_eq!(reported(&app).await, before);
    // Only the one good report counts.
    assert_eq!(post(&app, good_report().to_string()).await.0, 204);
    assert_eq!(reported(&app).await["p2pBytes"], 750_000);
    let metrics = app.metrics_text().await;
    for (result, count) in [
        ("too_large", 2),
        ("malformed", 7),
        ("implausible", 4),
        ("unknown_stream", 2),
    ] {
        assert!(
            metrics.contains(&format!(
                r#"p2p_reports_total{{result="{result}"}} {count}"#
            )),
            "{result}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_flood_from_one_address_is_limited_whatever_it_claims_to_forward() {
    let (_tree, app) = serving_live(|settings| {
        settings.reports.per_ip_report_burst = 10;
        settings.reports.per_ip_reports_per_sec = 2;
    })
    .await;
    let mut small = good_report();
    small["ms"] = Value::from(0);
    small["p2p"] = Value::from(1000);
    small["http"] = Value::from(0);
    small["up"] = Value::from(0);
    small["stalls"] = Value::from(0);
    small["stallMs"] = Value::from(0);
    let started = std::time::Instant::now();
    let mut accepted = 0;
    let mut limited = 0;
    for n in 0..40 {
        // X-Forwarded-For from an untrusted peer is not believed: one address throughout.
        let forwarded = format!("198.51.100.{n}");
        let (status, text) = post_from(&app, small.to_string(), Some(&forwarded)).await;
        match status {
            204 => accepted += 1,
            429 => limited += 1,
            other => panic!("{other}: {text}"),
        }
    }
    // Burst 10, then 2 per second.
    let allowed = 10 + (started.elapsed().as_secs_f64() * 2.0).ceil() as u64;
    assert!(
        accepted <= allowed,
        "{accepted} accepted, {allowed} allowed"
    );
    assert!(limited >= 40 - allowed, "{limited} limited");
    assert_eq!(reported(&app).await["p2pBytes"], accepted * 1000);
}

#[tokio::test]
async fn one_address_cannot_claim_more_viewing_than_its_viewers() {
    let (_tree, app) = serving_live(|settings| settings.reports.max_viewers_per_ip = 1).await;
    let mut long = good_report();
    long["ms"] = Value::from(59_000);
    // One viewer's budget: 60 s plus one grace second; 59 s + 1 s fits, then no more.
    assert_eq!(post(&app, long.to_string()).await.0, 204);
    let before = reported(&app).await;
    let (status, text) = post(&app, long.to_string()).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("budget_exceeded"), "{text}");
    assert_eq!(reported(&app).await, before);
}

#[tokio::test]
async fn reports_and_the_dashboard_can_be_switched_off() {
    let tree = tree();
    let app = app_for(&tree, |settings| {
        settings.reports.enabled = false;
        settings.dashboard.enabled = false;
    });
    assert_eq!(post(&app, good_report().to_string()).await.0, 404);
    assert_eq!(get(&app, "/dashboard").await.status(), 404);
    assert_eq!(get(&app, "/dashboard.json").await.status(), 404);
    let config: Value = get(&app, "/config.json").await.json().await.expect("json");
    assert!(config.get("reportPath").is_none(), "{config}");

    let open = app_for(&tree, |_| {});
    let config: Value = get(&open, "/config.json").await.json().await.expect("json");
    assert_eq!(config["reportPath"], "/api/report");
    let page = get(&open, "/dashboard").await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("html").contains("Origin offload"));
}

async fn dashboard_status(app: &TestApp, query: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = reqwest::Client::new().get(app.http_url(&format!("/dashboard.json{query}")));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("GET").status().as_u16()
}

#[tokio::test]
async fn a_dashboard_token_is_needed_when_one_is_set() {
    let tree = tree();
    let app = app_for(&tree, |settings| settings.dashboard.token = "s3cret".into());
    assert_eq!(dashboard_status(&app, "", &[]).await, 401);
    assert_eq!(dashboard_status(&app, "?token=wrong", &[]).await, 401);
    assert_eq!(dashboard_status(&app, "?token=s3cret", &[]).await, 200);
    assert_eq!(
        dashboard_status(&app, "", &[("Authorization", "Bearer s3cret")]).await,
        200
    );
    assert_eq!(
        dashboard_status(&app, "", &[("Authorization", "Bearer s3cre")]).await,
        401
    );
    let page = reqwest::get(app.http_url("/dashboard")).await.expect("GET");
    assert_eq!(page.status(), 401);
}

#[tokio::test]
async fn a_loopback_only_dashboard_refuses_forwarded_clients() {
    let tree = tree();
    let app = app_for(&tree, |settings| settings.dashboard.loopback_only = true);
    assert_eq!(dashboard_status(&app, "", &[]).await, 200);
    // A local proxy that is not trusted: the socket is local, the client is not.
    assert_eq!(
        dashboard_status(&app, "", &[("X-Forwarded-For", "127.0.0.1")]).await,
        403
    );

    let proxied = app_for(&tree, |settings| {
        settings.dashboard.loopback_only = true;
        settings.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    });
    assert_eq!(
        dashboard_status(&proxied, "", &[("X-Forwarded-For", "203.0.113.5")]).await,
        403
    );
    assert_eq!(
        dashboard_status(&proxied, "", &[("X-Forwarded-For", "127.0.0.1")]).await,
        200
    );
}

/// Every metric the Grafana dashboard in deploy/grafana queries is one the server exports.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana");
    let text = std::fs::read_to_string(dir.join("p2p-mediastream-offload.json")).expect("read");
    let dashboard: Value = serde_json::from_str(&text).expect("JSON");
    let app = spawn_app();
    let metrics = app.metrics_text().await;
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            // Metric names: identifiers right before `{` (every query selects labels).
            for (index, _) in expr.match_indices('{') {
                let name: String = expr[..index]
                    .chars()
                    .rev()
                    .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if !name.is_empty() && name != "by" {
                    names.insert(name);
                }
            }
        }
    }
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        let family = name.strip_suffix("_total").unwrap_or(&name);
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "{name} is not exported:\n{metrics}"
        );
    }
}
