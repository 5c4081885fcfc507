//! The server under test: in-process on 127.0.0.1 port 0 (its own actix System on a
//! thread), or the real binary as a child process; and readers of what it reports
//! (/stats.json, /metrics).

use std::{net::SocketAddr, sync::mpsc, thread, time::Duration};

use p2p_mediastream::Settings;

use super::{test_settings, TestPeer};

/// A running server; stopped when dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: Option<thread::JoinHandle<()>>,
}

pub fn spawn_app() -> TestApp {
    spawn_app_with(test_settings())
}

/// Starts a server with `test_settings()` changed by `change`.
pub fn spawn_app_configured(change: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings();
    change(&mut settings);
    spawn_app_with(settings)
}

pub fn spawn_app_with(settings: Settings) -> TestApp {
    let (tx, rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        let system = actix_web::rt::System::new();
        system.block_on(async move {
            match p2p_mediastream::start(settings) {
                Ok(running) => {
                    let _ = tx.send(Ok((running.addrs[0], running.handle.clone())));
                    let _ = running.server.await;
                }
                Err(err) => {
                    let _ = tx.send(Err(err.to_string()));
                }
            }
        });
    });
    let (addr, handle) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server did not start in time")
        .expect("server failed to start");
    TestApp {
        addr,
        handle,
        thread: Some(thread),
    }
}

impl TestApp {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/announce", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn peer(&self) -> TestPeer {
        TestPeer::connect(&self.ws_url()).await
    }

    /// GETs /stats.json.
    pub async fn stats(&self) -> serde_json::Value {
        reqwest::get(self.http_url("/stats.json"))
            .await
            .expect("GET /stats.json")
            .json()
            .await
            .expect("stats json")
    }

    /// GETs /metrics as text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.http_url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// `N` WebSocket clients, connected one after the other.
    pub async fn peers<const N: usize>(&self) -> [TestPeer; N] {
        let mut peers = Vec::with_capacity(N);
        for _ in 0..N {
            peers.push(self.peer().await);
        }
        match peers.try_into() {
            Ok(peers) => peers,
            Err(_) => unreachable!("exactly N peers were connected"),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Sends the stop command at once; the returned future only waits for completion.
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads a Prometheus counter (sum over its label sets) from /metrics text.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, value| sum + value)
}

/// Open WebSocket connections: `connections` of /stats.json (the same number as
/// `servers[0].webSocketsCount`).
pub fn websockets(stats: &serde_json::Value) -> u64 {
    stats["connections"].as_u64().expect("connections")
}

/// `peersCount` and `torrentsCount` of /stats.json.
pub fn peers_and_torrents(stats: &serde_json::Value) -> (u64, u64) {
    (
        stats["peersCount"].as_u64().expect("peersCount"),
        stats["torrentsCount"].as_u64().expect("torrentsCount"),
    )
}

/// The real binary, started on 127.0.0.1 with an OS-chosen port and the given extra
/// environment (`TRACKER__…`); its stderr is drained by a thread into `lines`. Killed on
/// drop if a test did not stop it.
pub struct BinaryServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub lines: mpsc::Receiver<String>,
}

impl BinaryServer {
    pub fn start(env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut command = Command::new(env!("CARGO_BIN_EXE_p2p-mediastream"));
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("TRACKER__SERVER__HOST", "127.0.0.1")
            .env("TRACKER__SERVER__PORT", "0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start the binary");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Keep draining even when nobody listens, so the child never blocks.
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no 'listening on' line; stderr so far: {seen:#?}"));
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().expect("address");
                break addr.parse().expect("socket address");
            }
            seen.push(line);
        };
        Self { child, addr, lines }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/announce", self.addr)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap_or_else(|err| panic!("GET {path}: {err}"))
    }

    /// GETs `path` and parses the JSON body.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).await.json().await.expect("JSON body")
    }

    /// GETs /metrics as text.
    pub async fn metrics_text(&self) -> String {
        self.get("/metrics")
            .await
            .text()
            .await
            .expect("metrics text")
    }

    /// Sends a signal by name (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for a stderr line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no log line containing {needle:?} within {timeout:?}"),
            }
        }
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
