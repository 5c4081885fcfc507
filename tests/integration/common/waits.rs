//! Bounded waits: how long a test waits for what it expects, and polls of the server's
//! state for effects that happen a moment later (after a socket closes, a process exits).

use std::{process::Child, process::ExitStatus, time::Duration};

use super::{websockets, TestApp};

/// How long a test waits for a frame it expects.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure that nothing arrives.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// Polls /stats.json until `check` holds; panics after `RECV_TIMEOUT`.
pub async fn wait_for_stats(
    app: &TestApp,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for_stats_within(app, RECV_TIMEOUT, check).await
}

/// Polls /stats.json until `check` holds; panics after `within`.
pub async fn wait_for_stats_within(
    app: &TestApp,
    within: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let stats = app.stats().await;
        if check(&stats) {
            return stats;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("stats never reached the expected state within {within:?}: {stats}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until /stats.json counts `open` WebSocket connections.
pub async fn wait_connections(app: &TestApp, open: u64) {
    wait_for_stats(app, |stats| websockets(stats) == open).await;
}

/// Waits at most `within` for `child` to exit; `None` if it is still running.
pub async fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
