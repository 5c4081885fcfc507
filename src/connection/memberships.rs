//! The swarms one connection has joined, and its peer_ids in each.
//!
//! A connection almost always joins a single swarm (a P2P Media Loader viewer announces
//! one info_hash per stream variant it plays), so this is a vector searched linearly: the
//! smallest HashMap table (4 buckets) costs over 300 bytes per connection, which counts at
//! tens of thousands of idle sockets. Its length is bounded by
//! `ws.max_swarms_per_connection`, so a scan stays cheap.

use super::requests::SwarmHandle;
use crate::protocol::{InfoHash, PeerId};

/// One swarm joined: how to reach it (`S`: a `SwarmHandle`, or anything in unit tests) and
/// this connection's peer_ids in it.
pub struct Joined<S = SwarmHandle> {
    pub swarm: S,
    pub peer_ids: Vec<PeerId>,
}

pub struct Memberships<S = SwarmHandle>(Vec<(InfoHash, Joined<S>)>);

impl<S> Default for Memberships<S> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<S> Memberships<S> {
    pub fn get(&self, info_hash: &InfoHash) -> Option<&Joined<S>> {
        self.0
            .iter()
            .find(|(joined_hash, _)| joined_hash == info_hash)
            .map(|(_, joined)| joined)
    }

    /// How many swarms.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records that `peer_id` is registered in the swarm of `info_hash`, reached through
    /// `swarm` (which replaces the one known so far: the swarm may have been re-created).
    pub fn add(&mut self, info_hash: InfoHash, peer_id: PeerId, swarm: S) {
        if let Some((_, joined)) = self.0.iter_mut().find(|(hash, _)| *hash == info_hash) {
            joined.swarm = swarm;
            if !joined.peer_ids.contains(&peer_id) {
                joined.peer_ids.push(peer_id);
            }
            return;
        }
        if self.0.is_empty() {
            // Room for exactly the one swarm most connections ever join.
            self.0.reserve_exact(1);
        }
        // vec![x] allocates room for exactly one.
        let peer_ids = vec![peer_id];
        self.0.push((info_hash, Joined { swarm, peer_ids }));
    }

    /// Records the outcome of an announce of `peer_id` (`registered`: the swarm holds it
    /// now; else it left or was refused) whose owner was chosen by view `routed_by`, with
    /// `view` the cluster's view now (generations; 0 and 0 outside a cluster). Returns
    /// whether the membership must be re-joined at the swarm's current owner: the view
    /// changed while the announce was on its way, so the session may already have checked
    /// its memberships against the new view without this one (and an owner that lost the
    /// swarm in between dropped the peer even if it owns the swarm again now).
    pub fn record(
        &mut self,
        info_hash: InfoHash,
        peer_id: PeerId,
        swarm: S,
        registered: bool,
        routed_by: u64,
        view: u64,
    ) -> bool {
        if registered {
            self.add(info_hash, peer_id, swarm);
            routed_by != view
        } else {
            self.remove(&info_hash, &peer_id);
            false
        }
    }

    /// Forgets `peer_id` in the swarm of `info_hash`; the swarm goes when no peer_id of
    /// this connection is left in it.
    pub fn remove(&mut self, info_hash: &InfoHash, peer_id: &PeerId) {
        let Some(index) = self.0.iter().position(|(hash, _)| hash == info_hash) else {
            return;
        };
        let peer_ids = &mut self.0[index].1.peer_ids;
        peer_ids.retain(|known| known != peer_id);
        if peer_ids.is_empty() {
            self.0.swap_remove(index);
        }
    }

    /// Every membership.
    pub fn iter(&self) -> impl Iterator<Item = (&InfoHash, &Joined<S>)> + '_ {
        self.0.iter().map(|(info_hash, joined)| (info_hash, joined))
    }

    /// Empties the set, handing over every membership.
    pub fn drain(&mut self) -> impl Iterator<Item = (InfoHash, Joined<S>)> + '_ {
        self.0.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(byte: u8) -> InfoHash {
        InfoHash([byte; 20])
    }

    fn peer(byte: u8) -> PeerId {
        PeerId([byte; 20])
    }

    /// The swarm handle here is a generation number.
    #[test]
    fn peer_ids_accumulate_per_swarm_and_a_swarm_goes_with_its_last_peer_id() {
        let mut joined = Memberships::<u64>::default();
        assert!(joined.is_empty());
        joined.add(hash(1), peer(1), 1);
        joined.add(hash(1), peer(2), 2);
        joined.add(hash(1), peer(1), 3);
        joined.add(hash(2), peer(1), 1);
        assert_eq!(joined.len(), 2);
        let first = joined.get(&hash(1)).expect("swarm 1");
        assert!(first.peer_ids == [peer(1), peer(2)]);
        assert_eq!(first.swarm, 3, "the newest swarm handle wins");

        joined.remove(&hash(1), &peer(1));
        assert!(joined.get(&hash(1)).expect("still joined").peer_ids == [peer(2)]);
        joined.remove(&hash(1), &peer(9));
        joined.remove(&hash(3), &peer(2));
        assert_eq!(joined.len(), 2, "unknown ids change nothing");
        joined.remove(&hash(1), &peer(2));
        assert!(joined.get(&hash(1)).is_none());
        assert_eq!(joined.len(), 1);

        let drained: Vec<InfoHash> = joined.drain().map(|(hash, _)| hash).collect();
        assert!(drained == [hash(2)]);
        assert!(joined.is_empty());
    }
    #[test]
    fn a_membership_recorded_under_an_outdated_view_is_to_be_rejoined() {
        let mut joined = Memberships::<u64>::default();
        assert!(
            !joined.record(hash(1), peer(1), 7, true, 3, 3),
            "current view"
        );
        assert!(
            joined.record(hash(2), peer(1), 8, true, 3, 4),
            "the view changed"
        );
        assert_eq!(joined.get(&hash(2)).expect("recorded").swarm, 8);
        // Gone or refused: nothing to re-join, whatever the view.
        assert!(!joined.record(hash(2), peer(1), 9, false, 3, 5));
        assert!(joined.get(&hash(2)).is_none());
        assert_eq!(joined.len(), 1);
    }
}
