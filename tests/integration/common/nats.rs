//! A real NATS server (`nats-server`, Debian package `nats-server`) on a free loopback
//! port, and tracker instances (the real binary) clustered through it with fast
//! heartbeats. A missing `nats-server` fails the test with a message saying how to get it.

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::BinaryServer;

/// Heartbeats and expiry of the instances under test: fast, so that a death is noticed
/// within a second (the defaults are 1 s and 3 s).
pub const HEARTBEAT_MS: &str = "100";
pub const EXPIRY_MS: &str = "600";

fn nats_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|path| path.is_file())
        .expect(
            "nats-server not found: the cluster tests need a real NATS server; \
             install it with `apt-get install -y nats-server` (scripts/test.sh does)",
        )
}

/// A nats-server child process on 127.0.0.1; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
}

impl NatsServer {
    pub fn start() -> Self {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|probe| probe.local_addr())
            .expect("probe a free port")
            .port();
        Self::start_on(port)
    }

    /// Starts (again) on `port`; returns once it accepts connections.
    pub fn start_on(port: u16) -> Self {
        let child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child: Some(child),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tracker instance of the cluster behind `nats`.
pub fn cluster_instance(nats: &NatsServer, name: &str) -> BinaryServer {
    cluster_instance_with(nats, name, &[])
}

/// A tracker instance of the cluster behind `nats`, with settings of its own in `extra`
/// (`TRACKER__...` variables, overriding the ones here).
pub fn cluster_instance_with(
    nats: &NatsServer,
    name: &str,
    extra: &[(&str, &str)],
) -> BinaryServer {
    cluster_instance_at(&nats.url(), name, extra)
}

/// A tracker instance of the cluster reaching NATS at `url` (a `LinkProxy` in front of it,
/// say), with settings of its own in `extra`.
pub fn cluster_instance_at(url: &str, name: &str, extra: &[(&str, &str)]) -> BinaryServer {
    let mut env = vec![
        ("TRACKER__CLUSTER__NATS_URLS", url),
        ("TRACKER__CLUSTER__INSTANCE_ID", name),
        ("TRACKER__CLUSTER__HEARTBEAT_INTERVAL_MS", HEARTBEAT_MS),
        ("TRACKER__CLUSTER__EXPIRY_MS", EXPIRY_MS),
        ("TRACKER__CLUSTER__RECONNECT_MAX_DELAY_MS", "200"),
        // Several tests' peers share 127.0.0.1, and answers come in bursts.
        ("TRACKER__WS__MAX_MESSAGES_PER_SEC", "1000"),
        ("TRACKER__WS__MESSAGE_BURST", "1000"),
    ];
    env.extend_from_slice(extra);
    BinaryServer::start(&env)
}

/// Waits until the broker has no subscriber on the inbox of `instance` (subject prefix
/// `p2pms`, the default): asks there with a plain NATS client until NATS answers "no
/// responders", as it does once the instance's connection is closed.
pub async fn wait_inbox_unsubscribed(nats: &NatsServer, instance: u64) {
    let client = async_nats::connect(nats.url())
        .await
        .expect("a plain NATS client connects");
    let subject = format!("p2pms.inbox.{instance:016x}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let asked = client.request(subject.clone(), "probe".into());
        if let Ok(Err(err)) = tokio::time::timeout(Duration::from_millis(200), asked).await {
            if err.kind() == async_nats::RequestErrorKind::NoResponders {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{subject} still has a subscriber"
        );
    }
}
