//! The cluster bus against a real NATS server (`nats-server`, Debian package
//! `nats-server`), started by each test on a free loopback port and killed at its end.
//! A missing `nats-server` fails the tests with a message saying how to install it: they
//! are never skipped silently.
//!
//! Timings are shortened (100 ms heartbeats, 600 ms expiry) so that losses are noticed
//! quickly; every wait is for a condition, bounded by a generous timeout, never a sleep
//! that asserts how long something took.

use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::common::NatsServer;
use p2p_mediastream::{
    cluster::{
        bus::{self, BusEvent, BusHandle, DropReason, SendRefused},
        settings::ClusterSettings,
        wire::{self, BusMessage, ConnKey, Deliver, Envelope, Relay},
    },
    protocol::{InfoHash, OfferId, PeerId, Sdp},
};

/// Long enough for a loaded 2-core CI machine; conditions normally hold in milliseconds.
const WAIT: Duration = Duration::from_secs(20);

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn fast_settings(url: &str) -> ClusterSettings {
    ClusterSettings {
        nats_urls: vec![url.to_owned()],
        heartbeat_interval_ms: 100,
        expiry_ms: 600,
        reconnect_max_delay_ms: 200,
        subject_prefix: "test".into(),
        ..ClusterSettings::default()
    }
}

/// A started bus and what it delivered.
struct Instance {
    bus: BusHandle,
    events: mpsc::Receiver<BusEvent>,
}

impl Instance {
    fn start(settings: &ClusterSettings) -> Self {
        let (tx, events) = mpsc::channel();
        let bus = bus::start_nats(
            settings,
            bus::new_instance_id(),
            Box::new(move |event| {
                let _ = tx.send(event);
            }),
        )
        .expect("the bus starts");
        Self { bus, events }
    }

    fn id(&self) -> u64 {
        self.bus.self_id()
    }

    fn sees(&self, other: &Instance) -> bool {
        let view = self.bus.view();
        view.bus_up && view.live.contains(&other.id())
    }

    /// Waits for the next data message, skipping other events.
    fn next_message(&self) -> Envelope {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(BusEvent::Message(envelope)) => return envelope,
                Ok(_) => continue,
                Err(err) => panic!("no message arrived: {err}"),
            }
        }
    }

    /// Waits for a membership event that `wanted` accepts (given its `gone` and
    /// `returned`), skipping others.
    fn wait_view_change(&self, what: &str, wanted: impl Fn(&[u64], &[u64]) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(BusEvent::Membership { gone, returned, .. }) if wanted(&gone, &returned) => {
                    return
                }
                Ok(_) => continue,
                Err(err) => panic!("no view change in which {what}: {err}"),
            }
        }
    }

    /// Waits for a membership event in which `instance` is gone.
    fn wait_gone(&self, instance: u64) {
        self.wait_view_change(&format!("{instance:016x} is gone"), |gone, _| {
            gone.contains(&instance)
        });
    }

    /// Waits for a membership event in which `instance` is back after leaving the view
    /// (so to be asked to re-join).
    fn wait_returned(&self, instance: u64) {
        self.wait_view_change(&format!("{instance:016x} returned"), |_, returned| {
            returned.contains(&instance)
        });
    }

    fn stop(self) {
        self.bus.shutdown();
        self.bus.join();
    }
}

fn offer_for(instance: u64, conn: u64) -> BusMessage {
    BusMessage::Deliver(Deliver {
        to: ConnKey { instance, conn },
        message: Relay::Offer {
            info_hash: InfoHash(*b"stream-abc-variant-0"),
            peer_id: PeerId(*b"-PM0203-qhhxsCc0iJvL"),
            offer_id: OfferId([7; 20]),
            sdp: Sdp::from_text("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"),
        },
    })
}

fn connected_pair(server: &NatsServer) -> (Instance, Instance) {
    let settings = fast_settings(&server.url());
    let a = Instance::start(&settings);
    let b = Instance::start(&settings);
    wait_for("the two instances to see each other", || {
        a.sees(&b) && b.sees(&a)
    });
    (a, b)
}

/// Publishes raw bytes on a subject with a plain NATS client (a foreign sender).
fn publish_raw(url: &str, subject: &str, payloads: Vec<Vec<u8>>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(url).await.expect("raw client connects");
        for payload in payloads {
            client
                .publish(subject.to_owned(), payload.into())
                .await
                .expect("raw publish");
        }
        client.flush().await.expect("raw flush");
    });
}

#[test]
fn two_instances_see_each_other_and_exchange_an_inbox_message() {
    let server = NatsServer::start();
    let (a, b) = connected_pair(&server);
    assert_eq!(a.bus.view().live, b.bus.view().live, "both views agree");

    a.bus
        .try_send(b.id(), offer_for(b.id(), 7))
        .expect("the bus takes it");
    let envelope = b.next_message();
    assert_eq!(envelope.from, a.id());
    assert_eq!(envelope.body, offer_for(b.id(), 7));
    assert!(
        a.bus
            .stats()
            .heartbeat_rtt_micros
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    let a_id = a.id();
    a.stop();
    b.wait_gone(a_id);
    assert_eq!(b.bus.view().live, vec![b.id()]);
    b.stop();
    drop(server);
}

#[test]
fn misaddressed_garbage_and_foreign_messages_are_dropped_and_counted() {
    let server = NatsServer::start();
    let (a, b) = connected_pair(&server);
    let stats = b.bus.stats().clone();

    // A Deliver for a socket of another instance, sent to b's inbox.
    a.bus
        .try_send(b.id(), offer_for(a.id(), 1))
        .expect("the bus takes it");
    wait_for("not_for_us", || {
        stats.dropped_count(DropReason::NotForUs) == 1
    });

    let inbox = bus::inbox_subject("test", b.id());
    let mut foreign = wire::encode(&Envelope {
        from: a.id(),
        sent_at_ms: 0,
        body: offer_for(b.id(), 1),
    })
    .expect("encodes");
    foreign[0] = wire::WIRE_VERSION + 1;
    publish_raw(
        &server.url(),
        &inbox,
        vec![vec![], vec![wire::WIRE_VERSION, 0xff, 0xff], foreign],
    );
    wait_for("malformed and foreign_version", || {
        stats.dropped_count(DropReason::Malformed) == 2
            && stats.dropped_count(DropReason::ForeignVersion) == 1
    });

    // The bus is still fine: a good message still arrives.
    a.bus
        .try_send(b.id(), offer_for(b.id(), 2))
        .expect("the bus takes it");
    assert_eq!(b.next_message().body, offer_for(b.id(), 2));
    a.stop();
    b.stop();
}

#[test]
fn losing_nats_leaves_each_instance_alone_and_a_restart_brings_the_cluster_back() {
    let mut server = NatsServer::start();
    let port = server.port;
    let (a, b) = connected_pair(&server);

    server.kill();
    wait_for("both buses to go down", || {
        !a.bus.stats().is_bus_up() && !b.bus.stats().is_bus_up()
    });
    assert_eq!(a.bus.view().live, vec![a.id()], "a owns every swarm alone");
    assert_eq!(b.bus.view().live, vec![b.id()], "b owns every swarm alone");
    assert_eq!(
        a.bus.try_send(b.id(), offer_for(b.id(), 3)),
        Err(SendRefused::BusDown)
    );
    assert!(a.bus.stats().dropped_count(DropReason::BusDown) >= 1);

    // Same port, new server process: the buses reconnect by themselves.
    let server = NatsServer::start_on(port);
    wait_for("the two instances to see each other again", || {
        a.sees(&b) && b.sees(&a)
    });
    assert!(
        a.bus
            .stats()
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // Each had cut the other off (and dropped its peers): each sees the other come back,
    // not join anew, and so asks it to re-join (the tracker does, on this event).
    a.wait_returned(b.id());
    b.wait_returned(a.id());
    a.bus
        .try_send(b.id(), offer_for(b.id(), 4))
        .expect("the bus takes it");
    // Then comes the new offer: what was refused while the bus was down was dropped, not
    // queued for later.
    assert_eq!(b.next_message().body, offer_for(b.id(), 4));
    a.stop();
    b.stop();
    drop(server);
}

#[test]
fn an_instance_without_a_subscriber_on_its_inbox_leaves_before_its_expiry() {
    let server = NatsServer::start();
    // An expiry of two minutes: within this test only the broker's "no responders" can
    // take the phantom out of the view.
    let settings = ClusterSettings {
        expiry_ms: 120_000,
        ..fast_settings(&server.url())
    };
    let a = Instance::start(&settings);
    wait_for("a's bus", || a.bus.stats().is_bus_up());

    // A phantom instance: heartbeats on the control subject, nobody on its inbox.
    let phantom: u64 = 0x0bad_cafe;
    let heartbeat = |seq| {
        wire::encode(&Envelope {
            from: phantom,
            sent_at_ms: 0,
            body: BusMessage::Heartbeat(wire::Heartbeat {
                seq,
                started_at_ms: 0,
                name: "phantom".into(),
                advertise_url: String::new(),
            }),
        })
        .expect("encodes")
    };
    publish_raw(
        &server.url(),
        &bus::control_subject("test"),
        vec![heartbeat(1)],
    );
    wait_for("the phantom to join", || {
        a.bus.view().live.contains(&phantom)
    });

    a.bus
        .try_send(phantom, offer_for(phantom, 1))
        .expect("the bus takes it");
    a.wait_gone(phantom);
    assert_eq!(a.bus.view().live, vec![a.id()]);
    assert!(a.bus.view().bus_up, "the bus itself is fine");
    assert_eq!(
        a.bus
            .stats()
            .unreachable
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    a.stop();
    drop(server);
}
