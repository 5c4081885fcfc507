//! Settings layering (defaults < file < env), errors, wt-tracker's config.json, and the
//! binary: bad config exit code, start-up log, SIGTERM with 1001, healthcheck.

use std::{
    collections::HashMap,
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::*;
use p2p_mediastream::Settings;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn write_file(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write config");
    path
}

fn load_error(file: Option<&Path>, pairs: &[(&str, &str)]) -> String {
    match Settings::load_from(file, env(pairs)) {
        Ok(settings) => panic!("expected an error, got {settings:?}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn without_file_or_env_the_defaults_apply() {
    let settings = Settings::load_from(None, HashMap::new()).expect("defaults load");
    assert_eq!(settings, Settings::default());
    assert_eq!(settings.server.host, "0.0.0.0");
    assert_eq!(settings.server.port, 8000);
    assert_eq!(settings.ws.path, "/announce");
    assert_eq!(settings.ws.max_frame_bytes, 65536);
    assert_eq!(settings.ws.max_message_bytes, 65536);
    assert_eq!(settings.tracker.announce_interval_secs, 120);
    assert_eq!(settings.tracker.peer_ttl_secs, 240);
    assert_eq!(settings.tracker.max_offers, 10);
    assert_eq!(settings.tracker.max_scrape_hashes, 255);
    assert!(!settings.tracker.full_scrape);
    assert!(settings.ws.allowed_origins.is_empty());
}

#[test]
fn env_vars_without_the_prefix_are_ignored() {
    let settings =
        Settings::load_from(None, env(&[("PORT", "1"), ("SERVER__PORT", "2")])).expect("load");
    assert_eq!(settings.server.port, 8000);
}

#[test]
fn the_documented_default_toml_equals_the_built_in_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let settings = Settings::load_from(Some(&path), HashMap::new()).expect("default.toml");
    assert_eq!(settings, Settings::default());
}

/// The README's configuration table (`| `section.key` | `default` | meaning |`) has a
/// row for every setting, and each row's default is the built-in one: strings as they
/// are (`""` when empty), anything else as its JSON text.
#[test]
fn the_readme_config_table_lists_every_setting_with_its_default() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let defaults = serde_json::to_value(Settings::default()).expect("defaults serialise");
    let sections = defaults.as_object().expect("settings are an object");
    let mut documented = HashMap::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, key, default, ..] = cells[..] else {
            continue;
        };
        let (Some(key), Some(default)) = (code(key), code(default)) else {
            continue;
        };
        let Some((section, name)) = key.split_once('.') else {
            continue;
        };
        if sections.contains_key(section) {
            documented.insert((section.to_owned(), name.to_owned()), default.to_owned());
        }
    }
    let mut settings = 0;
    for (section, values) in sections {
        let values = values.as_object().expect("a section is an object");
        for (name, value) in values {
            settings += 1;
            let expected = match value {
                serde_json::Value::String(text) if text.is_empty() => "\"\"".to_owned(),
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let row = documented
                .get(&(section.clone(), name.clone()))
                .unwrap_or_else(|| panic!("README has no row for `{section}.{name}`"));
            assert_eq!(row, &expected, "README's default for `{section}.{name}`");
        }
    }
    assert_eq!(
        documented.len(),
        settings,
        "README documents settings that do not exist: {documented:?}"
    );
}

/// The text inside a table cell that is one `code span`.
fn code(cell: &str) -> Option<&str> {
    cell.strip_prefix('`')?.strip_suffix('`')
}

#[test]
fn a_toml_file_overrides_defaults_and_env_overrides_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(
        dir.path(),
        "tracker.toml",
        r#"
[server]
port = 9100
host = "127.0.0.1"
trusted_proxies = ["192.168.0.0/16"]

[tracker]
max_offers = 5
announce_interval_secs = 60
peer_ttl_secs = 130

[ws]
allowed_origins = ["https://a.example"]
"#,
    );
    let settings = Settings::load_from(Some(&path), HashMap::new()).expect("file loads");
    assert_eq!(settings.server.port, 9100);
    assert_eq!(settings.server.host, "127.0.0.1");
    assert_eq!(
        settings.server.trusted_proxies,
        vec!["192.168.0.0/16".parse::<ipnet::IpNet>().expect("cidr")]
    );
    assert_eq!(settings.tracker.max_offers, 5);
    assert_eq!(settings.tracker.announce_interval_secs, 60);
    // Keys the file does not name keep their defaults.
    assert_eq!(
        settings.tracker.max_sdp_bytes,
        Settings::default().tracker.max_sdp_bytes
    );
    assert_eq!(settings.ws, {
        let mut ws = Settings::default().ws;
        ws.allowed_origins = vec!["https://a.example".into()];
        ws
    });

    let settings = Settings::load_from(
        Some(&path),
        env(&[
            ("TRACKER__SERVER__PORT", "9200"),
            (
                "TRACKER__SERVER__TRUSTED_PROXIES",
                "10.0.0.0/8,127.0.0.1/32",
            ),
            ("TRACKER__TRACKER__FULL_SCRAPE", "true"),
            (
                "TRACKER__WS__ALLOWED_ORIGINS",
                "https://b.example,https://c.example",
            ),
        ]),
    )
    .expect("file + env load");
    assert_eq!(settings.server.port, 9200, "env wins over the file");
    assert_eq!(settings.server.host, "127.0.0.1", "the file still applies");
    assert_eq!(settings.tracker.max_offers, 5);
    assert!(settings.tracker.full_scrape);
    assert_eq!(
        settings.server.trusted_proxies,
        vec![
            "10.0.0.0/8".parse::<ipnet::IpNet>().expect("cidr"),
            "127.0.0.1/32".parse::<ipnet::IpNet>().expect("cidr"),
        ]
    );
    assert_eq!(
        settings.ws.allowed_origins,
        vec![
            "https://b.example".to_string(),
            "https://c.example".to_string()
        ]
    );
}

#[test]
fn a_single_item_list_from_env_is_a_list() {
    let settings = Settings::load_from(
        None,
        env(&[("TRACKER__SERVER__TRUSTED_PROXIES", "127.0.0.1/32")]),
    )
    .expect("load");
    assert_eq!(
        settings.server.trusted_proxies,
        vec!["127.0.0.1/32".parse::<ipnet::IpNet>().expect("cidr")]
    );
}

#[test]
fn an_unknown_key_in_the_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "typo.toml", "[server]\nprot = 9000\n");
    let error = load_error(Some(&path), &[]);
    assert!(error.contains("prot"), "{error}");

    let path = write_file(dir.path(), "section.toml", "[sever]\nport = 9000\n");
    let error = load_error(Some(&path), &[]);
    assert!(error.contains("sever"), "{error}");
}

#[test]
fn an_unknown_env_key_is_an_error() {
    let error = load_error(None, &[("TRACKER__SERVER__PROT", "9000")]);
    assert!(error.contains("prot"), "{error}");
}

#[test]
fn a_bad_env_value_is_an_error_naming_the_key() {
    let error = load_error(None, &[("TRACKER__SERVER__PORT", "abc")]);
    assert!(error.contains("server.port"), "{error}");
    let error = load_error(None, &[("TRACKER__SERVER__PORT", "70000")]);
    assert!(error.contains("server.port"), "{error}");
}

#[test]
fn a_bad_file_value_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "bad.toml", "[tracker]\nmax_offers = \"ten\"\n");
    let error = load_error(Some(&path), &[]);
    assert!(error.contains("max_offers"), "{error}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let error = load_error(Some(Path::new("/nonexistent/tracker.toml")), &[]);
    assert!(error.contains("/nonexistent/tracker.toml"), "{error}");
}

#[test]
fn validation_refuses_an_idle_timeout_not_above_the_ping_interval() {
    let error = load_error(
        None,
        &[
            ("TRACKER__WS__PING_INTERVAL_SECS", "20"),
            ("TRACKER__WS__IDLE_TIMEOUT_SECS", "20"),
        ],
    );
    assert!(error.contains("ws.idle_timeout_secs"), "{error}");
    let error = load_error(
        None,
        &[
            ("TRACKER__WS__PING_INTERVAL_SECS", "30"),
            ("TRACKER__WS__IDLE_TIMEOUT_SECS", "10"),
        ],
    );
    assert!(error.contains("ws.idle_timeout_secs"), "{error}");
    assert!(Settings::load_from(
        None,
        env(&[
            ("TRACKER__WS__PING_INTERVAL_SECS", "1"),
            ("TRACKER__WS__IDLE_TIMEOUT_SECS", "2"),
        ])
    )
    .is_ok());
}

#[test]
fn validation_bounds_the_memory_trim_period() {
    let error = load_error(None, &[("TRACKER__SERVER__MEMORY_TRIM_SECS", "86401")]);
    assert!(error.contains("server.memory_trim_secs"), "{error}");
    for accepted in ["0", "1", "86400"] {
        let settings = Settings::load_from(
            None,
            env(&[("TRACKER__SERVER__MEMORY_TRIM_SECS", accepted)]),
        )
        .expect("accepted");
        assert_eq!(settings.server.memory_trim_secs.to_string(), accepted);
    }
}

/// Freed memory goes back to the OS on the configured timer (the allocator would keep a
/// burst's peak otherwise); its debug line says each round ran.
#[test]
fn the_binary_returns_freed_memory_on_its_timer() {
    let server = BinaryServer::start(&[
        ("TRACKER__SERVER__MEMORY_TRIM_SECS", "1"),
        ("RUST_LOG", "info,p2p_mediastream::housekeeping=debug"),
    ]);
    let line = server.wait_for_log("memory trim:", Duration::from_secs(10));
    assert!(
        line.contains("released pages") || line.contains("nothing to release"),
        "{line}"
    );
}

#[test]
fn validation_reports_every_problem_at_once() {
    let error = load_error(
        None,
        &[
            ("TRACKER__TRACKER__MAX_OFFERS", "0"),
            ("TRACKER__WS__MAX_FRAME_BYTES", "10"),
            ("TRACKER__TRACKER__PEER_TTL_SECS", "60"),
        ],
    );
    assert!(error.contains("tracker.max_offers"), "{error}");
    assert!(error.contains("ws.max_frame_bytes"), "{error}");
    assert!(error.contains("tracker.peer_ttl_secs"), "{error}");
}

#[test]
fn a_wt_tracker_config_json_maps_onto_our_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(
        dir.path(),
        "config.json",
        r#"{
  "servers": [
    {
      "server": {"host": "127.0.0.1", "port": 8433},
      "websockets": {
        "path": "/*",
        "maxPayloadLength": 32768,
        "idleTimeout": 240,
        "compression": 1,
        "maxConnections": 500
      }
    },
    {
      "server": {"host": "::1", "port": 8434},
      "websockets": {"path": "/*", "maxPayloadLength": 32768, "idleTimeout": 240}
    }
  ],
  "tracker": {"maxOffers": 20, "announceInterval": 60},
  "websocketsAccess": {"allowOrigins": ["https://player.example"]}
}"#,
    );
    let settings = Settings::load_from(Some(&path), HashMap::new()).expect("wt config loads");
    assert_eq!(settings.server.host, "127.0.0.1");
    assert_eq!(settings.server.port, 8433);
    assert_eq!(settings.server.extra_binds, vec!["[::1]:8434".to_string()]);
    assert_eq!(settings.ws.path, "/*");
    assert_eq!(settings.ws.max_frame_bytes, 32768);
    assert_eq!(settings.ws.max_message_bytes, 32768);
    assert_eq!(settings.ws.idle_timeout_secs, 240);
    assert!(settings.ws.ping_interval_secs < settings.ws.idle_timeout_secs);
    assert_eq!(settings.server.max_connections, 500);
    assert_eq!(settings.tracker.max_offers, 20);
    assert_eq!(settings.tracker.announce_interval_secs, 60);
    assert!(settings.tracker.peer_ttl_secs > 60);
    assert_eq!(
        settings.ws.allowed_origins,
        vec!["https://player.example".to_string()]
    );

    // The environment still overrides a config.json.
    let settings = Settings::load_from(Some(&path), env(&[("TRACKER__SERVER__PORT", "9999")]))
        .expect("wt config + env");
    assert_eq!(settings.server.port, 9999);
    assert_eq!(settings.tracker.max_offers, 20);
}

#[test]
fn a_wt_tracker_config_json_with_max_connections_zero_means_no_override() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(
        dir.path(),
        "config.json",
        r#"{"servers":[{"server":{"port":8000},"websockets":{"maxConnections":0}}]}"#,
    );
    let settings = Settings::load_from(Some(&path), HashMap::new()).expect("loads");
    assert_eq!(
        settings.server.max_connections,
        Settings::default().server.max_connections
    );
}

#[test]
fn a_wt_tracker_config_json_with_tls_keys_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(
        dir.path(),
        "config.json",
        r#"{"servers":[{"server":{"port":443,"host":"0.0.0.0","key_file_name":"key.pem","cert_file_name":"cert.pem"}}]}"#,
    );
    let error = load_error(Some(&path), &[]);
    assert!(error.contains("TLS"), "{error}");
    assert!(error.contains("servers[0]"), "{error}");
}

#[test]
fn a_wt_tracker_config_json_with_an_unknown_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(
        dir.path(),
        "config.json",
        r#"{"tracker":{"maxOffers":5,"anounceInterval":60}}"#,
    );
    let error = load_error(Some(&path), &[]);
    assert!(error.contains("anounceInterval"), "{error}");
}

// --- The binary -------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_p2p-mediastream");

/// A command for the binary with no TRACKER__ variables inherited from the test runner.
fn command() -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("TRACKER__") {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "info");
    command
}

#[test]
fn the_binary_exits_2_with_a_message_when_the_config_file_is_missing() {
    let output = command()
        .args(["--config", "/nonexistent.toml"])
        .stdin(Stdio::null())
        .output()
        .expect("run binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent.toml"), "{stderr}");
}

#[test]
fn the_binary_exits_2_on_an_invalid_env_setting() {
    let output = command()
        .env("TRACKER__SERVER__PORT", "abc")
        .stdin(Stdio::null())
        .output()
        .expect("run binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.port"), "{stderr}");
}

fn start_binary() -> BinaryServer {
    BinaryServer::start(&[("TRACKER__SERVER__WORKERS", "1")])
}

fn healthcheck(port: u16) -> std::process::Output {
    command()
        .arg("healthcheck")
        .env("TRACKER__SERVER__PORT", port.to_string())
        .env("TRACKER__SERVER__HOST", "127.0.0.1")
        .stdin(Stdio::null())
        .output()
        .expect("run healthcheck")
}

#[tokio::test]
async fn the_binary_serves_logs_its_address_and_stops_on_sigterm_closing_sockets_with_1001() {
    let mut server = start_binary();
    let base = format!("http://127.0.0.1:{}", server.port());
    let response = reqwest::get(format!("{base}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body").trim(), "ok");

    // The healthcheck subcommand agrees.
    let output = healthcheck(server.port());
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut peer = TestPeer::connect(&server.ws_url()).await;
    peer.announce(info_hash(1), peer_id(1), Some("started"), &[])
        .await;
    assert_eq!(peer.recv_announce_reply().await.incomplete, 1);

    server.signal("TERM");
    let sent = Instant::now();
    // The open socket is told the server is going away, before the process exits.
    assert_eq!(peer.expect_close().await, Some(1001));
    drop(peer);
    let exit = wait_exit(&mut server.child, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM"));
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?}",
        sent.elapsed()
    );
    // The process is gone, so its stderr ends: read what is left (bounded).
    let mut rest = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(line) = server
        .lines
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        rest.push(line);
    }
    assert!(
        rest.iter().any(|line| line.contains("SIGTERM")),
        "shutdown is logged: {rest:#?}"
    );
}

#[test]
fn the_healthcheck_subcommand_exits_1_when_nothing_listens() {
    // A port that was free a moment ago.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let output = healthcheck(port);
    assert_eq!(output.status.code(), Some(1));
    assert!(!output.stderr.is_empty());
}
