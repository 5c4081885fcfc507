//! The membership view: which instances are alive, as this instance sees it. Plain data
//! with no clock of its own (callers pass `now`); owned and updated by the bus task alone,
//! which publishes each new [`LiveView`] through a [`SharedView`] for every other thread
//! (sessions and swarms read it to find a swarm's owner).
//!
//! Rules:
//! - An instance is alive from its first heartbeat until `expiry` passes without one, or
//!   it says `Leaving`. A heartbeat whose sequence number does not move forward is a
//!   duplicate and refreshes nothing.
//! - An instance the broker reports unreachable (no subscriber on its inbox) leaves at
//!   once; a heartbeat of it comes back into the view only with a sequence number past
//!   the last one heard before that (a heartbeat still in flight from a dead instance must
//!   not revive it).
//! - An instance that comes back into the view after leaving it (for whatever reason) is
//!   `Returned`, not `Joined`: its peers were dropped here when it left, and it is told so
//!   (it re-joins the swarms this instance owns). Departures are remembered for that, the
//!   latest `REMEMBERED_DEPARTURES` of them.
//! - This instance is always in the view.
//! - Our own heartbeats come back to us through the bus (NATS echoes to the publisher's
//!   own subscriptions); when they have not for `expiry`, the bus is lost for us, whatever
//!   the connection state claims (a stalled server, a silent partition). The owner of this
//!   struct then calls `bus_lost`: the view becomes this instance alone, so every swarm is
//!   owned locally and keeps working, and heartbeats of others are ignored until
//!   `bus_restored`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use crate::protocol::InfoHash;

use super::{ring, wire::InstanceId};

/// How many departed instances are remembered, to tell a returning one from a new one.
/// Every restart departs for good (a new process draws a new id), so this bounds memory,
/// not the length of an outage: only departures older than the latest this many are
/// forgotten, and an instance returning after that is taken for a new one.
const REMEMBERED_DEPARTURES: usize = 1024;

/// A change of the live set seen by `heard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// An instance never in the view (as far as we remember) sent a heartbeat.
    Joined(InstanceId),
    /// An instance that had left the view (expired, unreachable, left, or cut off with
    /// our bus) sent a heartbeat: it is back, and its peers in the swarms this instance
    /// owns were dropped when it left.
    Returned(InstanceId),
}

impl Change {
    pub fn instance(self) -> InstanceId {
        match self {
            Change::Joined(instance) | Change::Returned(instance) => instance,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Member {
    last_heard: Instant,
    seq: u64,
}

/// Who is alive, from this instance's point of view.
#[derive(Debug)]
pub struct Members {
    self_id: InstanceId,
    expiry: Duration,
    others: HashMap<InstanceId, Member>,
    /// Instances reported unreachable, with the last sequence number heard from each and
    /// when: only a later heartbeat brings one back. Kept for one expiry.
    unreachable: HashMap<InstanceId, Member>,
    /// Instances that left the view, oldest first, at most `REMEMBERED_DEPARTURES`, each
    /// once.
    departed: VecDeque<InstanceId>,
    /// Sorted; always holds `self_id`. Kept up to date on every change so readers get a
    /// slice without sorting.
    live: Vec<InstanceId>,
    bus_down: bool,
    /// When our own heartbeat last came back through the bus.
    self_heard: Option<Instant>,
    /// Bumped on every change of `live` or of the bus state.
    generation: u64,
}

impl Members {
    /// A view holding only this instance, with the bus counted as down until our own
    /// heartbeat has come back once.
    pub fn new(self_id: InstanceId, expiry: Duration) -> Self {
        Self {
            self_id,
            expiry,
            others: HashMap::new(),
            unreachable: HashMap::new(),
            departed: VecDeque::new(),
            live: vec![self_id],
            bus_down: true,
            self_heard: None,
            generation: 0,
        }
    }

    pub fn self_id(&self) -> InstanceId {
        self.self_id
    }

    /// A heartbeat from `instance` (ours included). Returns `Joined` or `Returned` for an
    /// instance that was not in the view.
    pub fn heard(&mut self, instance: InstanceId, seq: u64, now: Instant) -> Option<Change> {
        if instance == self.self_id {
            self.self_heard = Some(now);
            return None;
        }
        if self.bus_down {
            // The view is {self} until the bus is back; others rejoin by their next
            // heartbeat after `bus_restored`.
            return None;
        }
        match self.others.get_mut(&instance) {
            Some(member) => {
                if seq > member.seq {
                    member.seq = seq;
                    member.last_heard = now;
                }
                None
            }
            None => {
                if self
                    .unreachable
                    .get(&instance)
                    .is_some_and(|gone| seq <= gone.seq)
                {
                    return None;
                }
                self.unreachable.remove(&instance);
                self.others.insert(
                    instance,
                    Member {
                        last_heard: now,
                        seq,
                    },
                );
                self.rebuild();
                let known = self.departed.iter().position(|gone| *gone == instance);
                Some(match known.and_then(|index| self.departed.remove(index)) {
                    Some(_) => Change::Returned(instance),
                    None => Change::Joined(instance),
                })
            }
        }
    }

    /// Removes the instances not heard for the expiry; returns them, sorted.
    pub fn expire(&mut self, now: Instant) -> Vec<InstanceId> {
        let expiry = self.expiry;
        self.unreachable
            .retain(|_, gone| now.saturating_duration_since(gone.last_heard) < expiry);
        let mut dead: Vec<InstanceId> = self
            .others
            .iter()
            .filter(|(_, member)| now.saturating_duration_since(member.last_heard) >= expiry)
            .map(|(&instance, _)| instance)
            .collect();
        if dead.is_empty() {
            return dead;
        }
        dead.sort_unstable();
        for &instance in &dead {
            self.others.remove(&instance);
            self.remember_departure(instance);
        }
        self.rebuild();
        dead
    }

    /// `instance` shut down cleanly; returns whether it was in the view.
    pub fn leaving(&mut self, instance: InstanceId) -> bool {
        if self.others.remove(&instance).is_some() {
            self.remember_departure(instance);
            self.rebuild();
            true
        } else {
            false
        }
    }

    /// The broker says `instance` cannot receive (its connection is gone): it leaves the
    /// view now, and returns only with a heartbeat sent after the last one heard. Returns
    /// whether it was in the view.
    pub fn unreachable(&mut self, instance: InstanceId, now: Instant) -> bool {
        let Some(member) = self.others.remove(&instance) else {
            return false;
        };
        self.unreachable.insert(
            instance,
            Member {
                last_heard: now,
                seq: member.seq,
            },
        );
        self.remember_departure(instance);
        self.rebuild();
        true
    }

    /// Whether our own heartbeat came back within the expiry: the bus delivers end to end.
    pub fn self_fresh(&self, now: Instant) -> bool {
        self.self_heard
            .is_some_and(|heard| now.saturating_duration_since(heard) < self.expiry)
    }

    /// The bus is gone: the view becomes this instance alone. Returns the instances that
    /// left the view (sorted); to this instance they are dead until heard again.
    pub fn bus_lost(&mut self) -> Vec<InstanceId> {
        let mut gone: Vec<InstanceId> = self.others.drain().map(|(instance, _)| instance).collect();
        gone.sort_unstable();
        for &instance in &gone {
            self.remember_departure(instance);
        }
        if !self.bus_down {
            self.bus_down = true;
            self.rebuild();
        }
        gone
    }

    /// The bus works again: other instances join the view as their heartbeats arrive.
    pub fn bus_restored(&mut self) {
        if self.bus_down {
            self.bus_down = false;
            self.generation += 1;
        }
    }

    pub fn is_bus_down(&self) -> bool {
        self.bus_down
    }

    /// Live instances, sorted, this one included.
    pub fn live(&self) -> &[InstanceId] {
        &self.live
    }

    pub fn is_live(&self, instance: InstanceId) -> bool {
        self.live.binary_search(&instance).is_ok()
    }

    /// The owner of a swarm in this view.
    pub fn owner(&self, info_hash: &InfoHash) -> InstanceId {
        ring::owner(info_hash, &self.live).unwrap_or(self.self_id)
    }

    /// Changes on every change of the live set or of the bus state.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A snapshot for other threads.
    pub fn view(&self) -> LiveView {
        LiveView {
            self_id: self.self_id,
            live: self.live.clone(),
            bus_up: !self.bus_down,
            generation: self.generation,
            departed: self.departed.iter().copied().collect(),
        }
    }

    /// Remembers that `instance` left the view (see `Change::Returned`).
    fn remember_departure(&mut self, instance: InstanceId) {
        if self.departed.contains(&instance) {
            return;
        }
        if self.departed.len() == REMEMBERED_DEPARTURES {
            self.departed.pop_front();
        }
        self.departed.push_back(instance);
    }

    fn rebuild(&mut self) {
        self.live.clear();
        self.live.push(self.self_id);
        self.live.extend(self.others.keys().copied());
        self.live.sort_unstable();
        self.generation += 1;
    }
}

/// A snapshot of the membership view, shared with the threads that route requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveView {
    pub self_id: InstanceId,
    /// Sorted, `self_id` included.
    pub live: Vec<InstanceId>,
    /// False while the bus is lost (then `live` is `[self_id]`).
    pub bus_up: bool,
    /// Tells one view from the next (see `Members::generation`).
    pub generation: u64,
    /// Instances that left the view and have not come back (the latest
    /// `REMEMBERED_DEPARTURES`): dead as far as this instance knows, unlike an instance it
    /// has not heard of yet.
    pub departed: Vec<InstanceId>,
}

impl LiveView {
    /// The view of an instance alone (at start, and while the bus is down).
    pub fn alone(self_id: InstanceId) -> Self {
        Self {
            self_id,
            live: vec![self_id],
            bus_up: false,
            generation: 0,
            departed: Vec::new(),
        }
    }

    /// The owner of a swarm in this view.
    pub fn owner(&self, info_hash: &InfoHash) -> InstanceId {
        ring::owner(info_hash, &self.live).unwrap_or(self.self_id)
    }

    /// Whether `instance` left this view and has not come back: to this instance it is
    /// dead, and whatever is sent to it lost. An instance never heard of is not (it may be
    /// a newcomer whose first heartbeat has not arrived yet).
    pub fn counts_gone(&self, instance: InstanceId) -> bool {
        self.departed.contains(&instance)
    }

    /// Whether this instance owns the swarm (then nothing about it touches the bus).
    pub fn is_local(&self, info_hash: &InfoHash) -> bool {
        self.owner(info_hash) == self.self_id
    }
}

/// The current [`LiveView`], written by the bus task and read by anyone. Readers take a
/// cheap `Arc` clone under a read lock and work on it without holding the lock.
#[derive(Debug)]
pub struct SharedView(RwLock<Arc<LiveView>>);

impl SharedView {
    pub fn new(view: LiveView) -> Self {
        Self(RwLock::new(Arc::new(view)))
    }

    pub fn load(&self) -> Arc<LiveView> {
        // A writer only swaps an Arc, so a poisoned lock still holds a whole view.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn store(&self, view: LiveView) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPIRY: Duration = Duration::from_secs(3);
    const ME: InstanceId = 50;

    fn restored(start: Instant) -> Members {
        let mut members = Members::new(ME, EXPIRY);
        members.heard(ME, 1, start);
        members.bus_restored();
        members
    }

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn starts_alone_with_the_bus_down() {
        let members = Members::new(ME, EXPIRY);
        assert_eq!(members.live(), &[ME]);
        assert!(members.is_bus_down());
        assert!(!members.view().bus_up);
        assert_eq!(members.owner(&InfoHash([9; 20])), ME);
    }

    #[test]
    fn others_join_on_their_first_heartbeat_only() {
        let start = Instant::now();
        let mut members = restored(start);
        assert_eq!(members.heard(70, 1, start), Some(Change::Joined(70)));
        assert_eq!(members.heard(10, 1, start), Some(Change::Joined(10)));
        assert_eq!(members.heard(70, 2, at(start, 1000)), None);
        assert_eq!(members.live(), &[10, ME, 70]);
        assert!(members.is_live(10));
        assert!(!members.is_live(11));
    }

    #[test]
    fn silent_instances_expire_and_heard_ones_stay() {
        let start = Instant::now();
        let mut members = restored(start);
        members.heard(70, 1, start);
        members.heard(10, 1, start);
        members.heard(70, 2, at(start, 2000));
        assert_eq!(members.expire(at(start, 2999)), Vec::<InstanceId>::new());
        assert_eq!(members.expire(at(start, 3000)), vec![10]);
        assert_eq!(members.live(), &[ME, 70]);
        assert_eq!(members.expire(at(start, 5000)), vec![70]);
        assert_eq!(members.live(), &[ME]);
    }

    #[test]
    fn a_replayed_heartbeat_refreshes_nothing() {
        let start = Instant::now();
        let mut members = restored(start);
        members.heard(70, 5, start);
        members.heard(70, 5, at(start, 2000));
        members.heard(70, 4, at(start, 2500));
        assert_eq!(members.expire(at(start, 3000)), vec![70]);
    }

    #[test]
    fn an_unreachable_instance_leaves_at_once_and_only_a_newer_heartbeat_revives_it() {
        let start = Instant::now();
        let mut members = restored(start);
        members.heard(70, 5, start);
        let before = members.generation();
        assert!(members.unreachable(70, at(start, 10)));
        assert!(!members.unreachable(70, at(start, 11)), "reported once");
        assert!(!members.unreachable(ME, at(start, 11)), "never ourselves");
        assert_eq!(members.live(), &[ME]);
        assert!(members.generation() > before);
        // A heartbeat sent before the report (still in flight) does not revive it...
        assert_eq!(members.heard(70, 5, at(start, 20)), None);
        assert_eq!(members.live(), &[ME]);
        // ... a later one (it reconnected) does, as a return.
        assert_eq!(
            members.heard(70, 6, at(start, 30)),
            Some(Change::Returned(70))
        );
        assert_eq!(members.live(), &[ME, 70]);
        // The record of the report goes after one expiry.
        members.unreachable(70, at(start, 40));
        members.expire(at(start, 3040));
        assert_eq!(
            members.heard(70, 1, at(start, 3050)),
            Some(Change::Returned(70))
        );
    }

    #[test]
    fn leaving_removes_at_once() {
        let start = Instant::now();
        let mut members = restored(start);
        members.heard(70, 1, start);
        assert!(members.leaving(70));
        assert!(!members.leaving(70));
        assert_eq!(members.live(), &[ME]);
        // Heard again later (a restart reuses no id, but a late heartbeat may arrive).
        assert_eq!(members.heard(70, 2, start), Some(Change::Returned(70)));
    }

    #[test]
    fn our_own_heartbeat_tells_whether_the_bus_delivers() {
        let start = Instant::now();
        let mut members = Members::new(ME, EXPIRY);
        assert!(!members.self_fresh(start));
        assert_eq!(members.heard(ME, 1, start), None);
        assert!(members.self_fresh(at(start, 2999)));
        assert!(!members.self_fresh(at(start, 3000)));
        assert_eq!(members.live(), &[ME], "self is never a joiner");
    }

    #[test]
    fn losing_the_bus_leaves_us_alone_until_it_is_back() {
        let start = Instant::now();
        let mut members = restored(start);
        members.heard(70, 1, start);
        members.heard(10, 1, start);
        let before = members.generation();
        assert_eq!(members.bus_lost(), vec![10, 70]);
        assert!(members.generation() > before);
        assert_eq!(members.live(), &[ME]);
        assert!(!members.view().bus_up);
        // Every swarm is ours while the bus is down.
        for n in 0..50u8 {
            assert_eq!(members.owner(&InfoHash([n; 20])), ME);
        }
        // Heartbeats that still trickle in do not rebuild the view.
        assert_eq!(members.heard(70, 2, at(start, 100)), None);
        assert_eq!(members.live(), &[ME]);
        members.bus_restored();
        assert!(members.view().bus_up);
        // Each comes back as a return: we dropped its peers when the bus went.
        assert_eq!(
            members.heard(70, 3, at(start, 200)),
            Some(Change::Returned(70))
        );
        assert_eq!(
            members.heard(10, 3, at(start, 200)),
            Some(Change::Returned(10))
        );
        assert_eq!(members.live(), &[10, ME, 70]);
    }

    #[test]
    fn an_expired_instance_returns_once_and_a_new_one_joins() {
        let start = Instant::now();
        let mut members = restored(start);
        assert_eq!(members.heard(70, 1, start), Some(Change::Joined(70)));
        assert_eq!(members.expire(at(start, 3000)), vec![70]);
        assert_eq!(
            members.heard(70, 2, at(start, 3100)),
            Some(Change::Returned(70))
        );
        assert_eq!(members.heard(70, 3, at(start, 3200)), None);
        // Back in the view, it is no longer a departure: its next return needs a new one.
        assert!(members.leaving(70));
        assert!(!members.leaving(70));
        assert_eq!(
            members.heard(70, 4, at(start, 3300)),
            Some(Change::Returned(70))
        );
        assert_eq!(
            members.heard(71, 1, at(start, 3300)),
            Some(Change::Joined(71))
        );
    }

    #[test]
    fn the_view_counts_gone_what_left_it_and_not_what_it_never_held() {
        let start = Instant::now();
        let mut members = restored(start);
        members.heard(70, 1, start);
        assert!(members.unreachable(70, start));
        let view = members.view();
        assert!(view.counts_gone(70));
        assert!(!view.counts_gone(71), "a newcomer not heard yet");
        assert!(!view.counts_gone(ME));
        members.heard(70, 2, at(start, 100));
        assert!(!members.view().counts_gone(70), "back");
    }

    #[test]
    fn only_the_latest_departures_are_remembered() {
        let start = Instant::now();
        let mut members = restored(start);
        let first = 1_000;
        let count = REMEMBERED_DEPARTURES as u64 + 1;
        for instance in first..first + count {
            members.heard(instance, 1, start);
            assert!(members.leaving(instance));
        }
        assert_eq!(members.departed.len(), REMEMBERED_DEPARTURES);
        // The oldest was forgotten: it looks new; the next oldest is still known.
        assert_eq!(members.heard(first, 2, start), Some(Change::Joined(first)));
        assert_eq!(
            members.heard(first + 1, 2, start),
            Some(Change::Returned(first + 1))
        );
    }

    #[test]
    fn views_agree_on_owners() {
        let start = Instant::now();
        let mut a = restored(start);
        a.heard(70, 1, start);
        let mut b = Members::new(70, EXPIRY);
        b.heard(70, 1, start);
        b.bus_restored();
        b.heard(ME, 1, start);
        for n in 0..100u8 {
            let hash = InfoHash([n; 20]);
            assert_eq!(a.owner(&hash), b.owner(&hash));
            assert_eq!(a.view().is_local(&hash), !b.view().is_local(&hash));
        }
    }

    #[test]
    fn shared_view_hands_out_the_latest_snapshot() {
        let shared = SharedView::new(LiveView::alone(ME));
        assert_eq!(shared.load().live, vec![ME]);
        let start = Instant::now();
        let mut members = restored(start);
        members.heard(70, 1, start);
        shared.store(members.view());
        let view = shared.load();
        assert_eq!(view.live, vec![ME, 70]);
        assert!(view.bus_up);
    }
}
