//! ConnectionRegistry: admission (global and per-IP caps), connection ids, and the list of
//! live sessions that shutdown closes with 1001. Touched once per connect and disconnect,
//! never per message, so one mutex is enough.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard,
    },
};

use actix::Recipient;

use crate::{messages::CloseSession, swarm::state::ConnId};

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

#[derive(Default)]
struct Inner {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    sessions: HashMap<ConnId, Recipient<CloseSession>>,
    shutting_down: bool,
}

pub struct ConnectionRegistry {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    max_total: usize,
    max_per_ip: usize,
}

impl ConnectionRegistry {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            next_id: AtomicU64::new(1),
            max_total,
            max_per_ip,
        }
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
        Ok(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Lists a started session so shutdown can close it.
    pub fn register(&self, conn: ConnId, session: Recipient<CloseSession>) {
        self.lock().sessions.insert(conn, session);
    }

    /// Frees the slot taken by `admit`.
    pub fn release(&self, conn: ConnId, ip: Option<IpAddr>) {
        let mut inner = self.lock();
        inner.sessions.remove(&conn);
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
        let sessions: Vec<Recipient<CloseSession>> = {
            let mut inner = self.lock();
            inner.shutting_down = true;
            inner.sessions.values().cloned().collect()
        };
        for session in &sessions {
            // do_send: shutdown must reach sessions even when their mailbox is full.
            session.do_send(message.clone());
        }
        sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_enforced_and_released() {
        let registry = ConnectionRegistry::new(3, 2);
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
    fn ids_are_unique() {
        let registry = ConnectionRegistry::new(10, 0);
        let one = registry.admit(None).expect("one");
        let two = registry.admit(None).expect("two");
        assert_ne!(one, two);
    }
}
