//! ConnectionRegistry: admission (global and per-IP caps), connection ids, and the list of
//! live sessions that shutdown closes with 1001. Touched once per connect and disconnect,
//! never per message, so one mutex is enough.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    num::NonZeroU64,
    os::fd::RawFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard,
    },
    time::Instant,
};

use actix::{dev::SendError, Addr, WeakAddr};
use log::warn;

use super::{
    conn_id, instance_of,
    session::{CloseSession, Heartbeat, OwnersChanged, PeerSession},
    ConnId, InstanceId,
};
use crate::{
    protocol::OutMessage,
    swarm::{messages::Deliver, route::Undelivered},
};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    TooManyConnections,
    TooManyFromIp,
    ShuttingDown,
}

impl AdmitError {
    pub fn label(self) -> &'static str {
        match self {
            AdmitError::TooManyConnections => "max_connections",
            AdmitError::TooManyFromIp => "max_connections_per_ip",
            AdmitError::ShuttingDown => "shutting_down",
        }
    }
}

/// The TCP socket under a session, recorded at the WebSocket upgrade.
#[derive(Debug, Clone, Copy)]
pub struct ConnSocket {
    fd: RawFd,
    /// The peer's address as `peer_key` folds it: a quarter of the 32 bytes of a
    /// `SocketAddr`, in an entry every connection has. `None` if the kernel did not say.
    peer: Option<NonZeroU64>,
}

impl ConnSocket {
    pub fn new(fd: RawFd, peer: Option<SocketAddr>) -> Self {
        Self {
            fd,
            peer: peer.map(peer_key),
        }
    }
}

/// An IPv4 peer's address and port exactly; an IPv6 one's hashed to 63 bits (with the top
/// bit set, so the two kinds never meet).
fn peer_key(peer: SocketAddr) -> NonZeroU64 {
    let key = match peer {
        SocketAddr::V4(v4) => {
            (1 << 48) | (u64::from(v4.ip().to_bits()) << 16) | u64::from(v4.port())
        }
        SocketAddr::V6(v6) => {
            use std::hash::BuildHasher;
            // A fixed seed: the key of a socket must not change between its registration and
            // the check, and nothing here is chosen by a client to aim at a bucket.
            foldhash::quality::FixedState::with_seed(0).hash_one(v6) | (1 << 63)
        }
    };
    NonZeroU64::new(key).unwrap_or(NonZeroU64::MIN)
}

struct SessionEntry {
    /// Weak: a strong address would keep the session's mailbox alive after it stopped;
    /// shutdown, the heartbeat sweep, the cluster's deliveries and its re-joins are the
    /// only uses.
    session: WeakAddr<PeerSession>,
    /// When the session last ran its heartbeat, in milliseconds since the registry started.
    /// A session whose client stopped reading freezes entirely (actix polls the actor only
    /// while the socket takes writes), so it cannot close itself: `cut_frozen` does.
    last_ran: u64,
    socket: ConnSocket,
}

#[derive(Default)]
struct Inner {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Keyed by the local part of each `ConnId` (the instance part is always ours): a u64
    /// key keeps an entry at 40 bytes where a u128 one pads it to 48.
    sessions: HashMap<u64, SessionEntry>,
    shutting_down: bool,
}

pub struct ConnectionRegistry {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    instance: InstanceId,
    max_total: usize,
    max_per_ip: usize,
    epoch: Instant,
}

impl ConnectionRegistry {
    /// `instance` goes into every connection id (see `ConnId`).
    pub fn new(max_total: usize, max_per_ip: usize, instance: InstanceId) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            next_id: AtomicU64::new(1),
            instance,
            max_total,
            max_per_ip,
            epoch: Instant::now(),
        }
    }

    /// The key of `conn` in `sessions`: its local part, if it is a connection of this
    /// instance (a relay addressed to another instance's connection must find nothing).
    fn key(&self, conn: ConnId) -> Option<u64> {
        (instance_of(conn) == self.instance).then_some(conn as u64)
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain counters behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserves a slot for a new connection from `ip`; every `Ok` must be matched by one
    /// `release` with the same ip.
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<ConnId, AdmitError> {
        let mut inner = self.lock();
        if inner.shutting_down {
            return Err(AdmitError::ShuttingDown);
        }
        if inner.total >= self.max_total {
            return Err(AdmitError::TooManyConnections);
        }
        if let Some(ip) = ip {
            let from_ip = inner.per_ip.entry(ip).or_insert(0);
            if self.max_per_ip > 0 && *from_ip >= self.max_per_ip {
                if *from_ip == 0 {
                    inner.per_ip.remove(&ip);
                }
                return Err(AdmitError::TooManyFromIp);
            }
            *from_ip += 1;
        }
        inner.total += 1;
        Ok(conn_id(
            self.instance,
            self.next_id.fetch_add(1, Ordering::Relaxed),
        ))
    }

    /// Lists a session so shutdown can close it, the heartbeat sweep reach it and the
    /// watchdog see it.
    pub fn register(&self, conn: ConnId, session: &Addr<PeerSession>, socket: ConnSocket) {
        let last_ran = self.millis();
        // `admit` made `conn`, so it is ours.
        self.lock().sessions.insert(
            conn as u64,
            SessionEntry {
                session: session.downgrade(),
                last_ran,
                socket,
            },
        );
    }

    /// Records that the session of `conn` ran its heartbeat: it is not frozen.
    pub fn touch(&self, conn: ConnId) {
        let now = self.millis();
        let Some(key) = self.key(conn) else { return };
        if let Some(entry) = self.lock().sessions.get_mut(&key) {
            entry.last_ran = now;
        }
    }

    /// Sends `Heartbeat` to the sessions in `slot` of `slots` (by connection id), so that a
    /// sweep that visits one slot per tick spreads the pings of a ping interval evenly.
    /// One shared timer instead of one per session: an idle connection keeps no timer.
    /// Returns how many were sent.
    pub fn heartbeat(&self, slot: u64, slots: u64) -> usize {
        let sessions: Vec<Addr<PeerSession>> = self
            .lock()
            .sessions
            .iter()
            .filter(|(local, _)| **local % slots == slot)
            .filter_map(|(_, entry)| entry.session.upgrade())
            .collect();
        for session in &sessions {
            // do_send: a busy session still gets it (a frozen one queues at most a few
            // before the watchdog cuts it).
            session.do_send(Heartbeat);
        }
        sessions.len()
    }

    /// Shuts down the sockets of sessions that have not run for `frozen_after`; the
    /// connection then fails and the session stops (and leaves its swarms). Returns how
    /// many were cut.
    pub fn cut_frozen(&self, frozen_after: std::time::Duration) -> usize {
        let now = self.millis();
        let limit = u64::try_from(frozen_after.as_millis()).unwrap_or(u64::MAX);
        let inner = self.lock();
        let mut cut = 0;
        for (local, entry) in &inner.sessions {
            let last = entry.last_ran;
            if now.saturating_sub(last) < limit {
                continue;
            }
            // Holding the lock: the session cannot deregister meanwhile, and shut_down
            // checks that the descriptor still belongs to this peer.
            if shut_down(entry.socket) {
                warn!(
                    "conn={} stopped reading for {} s: connection cut",
                    conn_id(self.instance, *local),
                    (now - last) / 1000
                );
                cut += 1;
            }
        }
        cut
    }

    /// Frees the slot taken by `admit`.
    pub fn release(&self, conn: ConnId, ip: Option<IpAddr>) {
        let mut inner = self.lock();
        if let Some(key) = self.key(conn) {
            inner.sessions.remove(&key);
        }
        inner.total = inner.total.saturating_sub(1);
        if let Some(ip) = ip {
            if let Some(count) = inner.per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    inner.per_ip.remove(&ip);
                }
            }
        }
    }

    pub fn open_connections(&self) -> usize {
        self.lock().total
    }

    /// Refuses new connections and asks every session to close with `message`.
    pub fn close_all(&self, message: CloseSession) -> usize {
        let sessions = {
            let mut inner = self.lock();
            inner.shutting_down = true;
            Self::live_sessions(&inner)
        };
        for session in &sessions {
            // do_send: shutdown must reach sessions even when their mailbox is full.
            session.do_send(message.clone());
        }
        sessions.len()
    }

    /// Queues a relay for the session of `conn` (the cluster's deliveries from swarms on
    /// other instances); never waits.
    pub fn deliver(&self, conn: ConnId, message: OutMessage) -> Result<(), Undelivered> {
        let session = self
            .lock()
            .sessions
            .get(&self.key(conn).ok_or(Undelivered::Closed)?)
            .and_then(|entry| entry.session.upgrade())
            .ok_or(Undelivered::Closed)?;
        session.try_send(Deliver(message)).map_err(|err| match err {
            SendError::Full(_) => Undelivered::Full,
            SendError::Closed(_) => Undelivered::Closed,
        })
    }

    /// Tells every session that swarm owners changed (the cluster's view did), so that each
    /// re-joins the swarms that moved; or with `dropped_by`, that this owner dropped our
    /// peers, so that each re-joins the swarms it holds there. Returns how many were told.
    pub fn owners_changed(&self, dropped_by: Option<InstanceId>) -> usize {
        let sessions = Self::live_sessions(&self.lock());
        for session in &sessions {
            session.do_send(OwnersChanged {
                attempt: 0,
                dropped_by,
            });
        }
        sessions.len()
    }

    fn live_sessions(inner: &Inner) -> Vec<Addr<PeerSession>> {
        inner
            .sessions
            .values()
            .filter_map(|entry| entry.session.upgrade())
            .collect()
    }
}

/// Shuts the socket down in both directions if `fd` is still the socket to `peer`.
///
/// The descriptor could in principle have been closed and reused by a new connection in
/// the instant between the old connection's end and its session's deregistration; the
/// peer address check (ip and port, exact for IPv4, a 63-bit hash for IPv6) makes acting
/// on a stranger's socket impossible in practice.
fn shut_down(socket: ConnSocket) -> bool {
    use std::os::fd::BorrowedFd;
    let Some(peer) = socket.peer else {
        return false;
    };
    // SAFETY: the descriptor is only borrowed for the two calls below, while the registry
    // lock keeps the owning session registered; `SockRef` never closes it.
    let fd = unsafe { BorrowedFd::borrow_raw(socket.fd) };
    let sock = socket2::SockRef::from(&fd);
    let same_peer = sock
        .peer_addr()
        .ok()
        .and_then(|addr| addr.as_socket())
        .is_some_and(|addr| peer_key(addr) == peer);
    same_peer && sock.shutdown(std::net::Shutdown::Both).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_enforced_and_released() {
        let registry = ConnectionRegistry::new(3, 2, 0);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let first = registry.admit(Some(a)).expect("first");
        registry.admit(Some(a)).expect("second");
        assert_eq!(registry.admit(Some(a)), Err(AdmitError::TooManyFromIp));
        registry.admit(Some(b)).expect("other ip");
        assert_eq!(registry.admit(Some(b)), Err(AdmitError::TooManyConnections));
        registry.release(first, Some(a));
        assert!(registry.admit(Some(a)).is_ok());
        assert_eq!(registry.open_connections(), 3);
    }

    #[test]
    fn only_this_instances_connections_have_a_key() {
        let registry = ConnectionRegistry::new(10, 0, 7);
        let ours = registry.admit(None).expect("ours");
        assert_eq!(registry.key(ours), Some(ours as u64));
        // The same local number on another instance is another connection.
        let theirs = super::super::conn_id(8, ours as u64);
        assert_eq!(registry.key(theirs), None);
    }

    #[test]
    fn ids_are_unique_and_carry_the_instance() {
        let registry = ConnectionRegistry::new(10, 0, 7);
        let one = registry.admit(None).expect("one");
        let two = registry.admit(None).expect("two");
        assert_ne!(one, two);
        assert_eq!(super::super::instance_of(one), 7);
        assert_eq!(super::super::instance_of(two), 7);
    }

    #[test]
    fn peer_keys_tell_addresses_and_families_apart() {
        let key = |text: &str| peer_key(text.parse().expect("socket address"));
        assert_eq!(key("192.0.2.1:4000"), key("192.0.2.1:4000"));
        assert_ne!(key("192.0.2.1:4000"), key("192.0.2.1:4001"));
        assert_ne!(key("192.0.2.1:4000"), key("192.0.2.2:4000"));
        assert_ne!(key("[2001:db8::1]:4000"), key("[2001:db8::1]:4001"));
        assert_ne!(key("[2001:db8::1]:4000"), key("[2001:db8::2]:4000"));
        assert_ne!(key("[::ffff:192.0.2.1]:4000"), key("192.0.2.1:4000"));
        assert!(key("[2001:db8::1]:4000").get() >= 1 << 63);
        assert!(key("255.255.255.255:65535").get() < 1 << 63);
    }

    #[test]
    fn only_the_socket_to_the_recorded_peer_is_shut_down() {
        use std::{io::Read, os::fd::AsRawFd};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, peer) = listener.accept().expect("accept");
        let mut stranger = peer;
        stranger.set_port(peer.port().wrapping_add(1));
        assert!(!shut_down(ConnSocket::new(
            accepted.as_raw_fd(),
            Some(stranger)
        )));
        assert!(!shut_down(ConnSocket::new(accepted.as_raw_fd(), None)));
        assert!(shut_down(ConnSocket::new(accepted.as_raw_fd(), Some(peer))));
        // The client sees the end of the stream.
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).expect("read"), 0);
    }
}
