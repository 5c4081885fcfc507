//! Which instance owns a swarm: rendezvous (highest random weight) hashing of the
//! info_hash over the live instances. Pure functions, called on whichever thread routes a
//! request (session workers, swarm shards, the bus task).
//!
//! Every instance scores every (info_hash, instance) pair and the highest score owns the
//! swarm. Two instances with the same live set therefore agree without talking, and when
//! an instance joins or leaves only the swarms it wins or held move: every other pair keeps
//! its score and its winner (tests below check both properties).
//!
//! The score must be the same on every instance and release, so it uses no std hasher
//! (`RandomState` is seeded per process) but a fixed mix: the 20 bytes of the info_hash are
//! folded into 64 bits, eight at a time (little-endian, the last four zero-padded), each step
//! `h = mix64(h ^ word)`; the score of an instance is `mix64(h ^ mix64(instance))`. `mix64`
//! is the SplitMix64 finaliser (Steele, Lea, Flood: "Fast splittable pseudorandom number
//! generators", 2014; the constants of Stafford's "variant 13"), a bijection on u64 whose
//! every output bit depends on every input bit. All info_hashes are folded, not just the
//! first bytes: P2P Media Loader's ids are 20 ASCII characters with long common prefixes,
//! not uniform SHA-1 output. Changing any of this moves every swarm of a running cluster
//! at once: treat it as part of the wire format.

use crate::protocol::InfoHash;

use super::wire::InstanceId;

/// Starting value of the fold (the first 64 bits of pi's fractional part, as hex digits),
/// so that an all-zero info_hash does not start from zero.
const FOLD_SEED: u64 = 0x243f_6a88_85a3_08d3;

/// SplitMix64's finaliser: a fast, well-mixing bijection on 64-bit values.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 64-bit digest of an info_hash that every score starts from.
pub fn key_hash(info_hash: &InfoHash) -> u64 {
    let bytes = &info_hash.0;
    let mut words = [0u64; 3];
    for (index, word) in words.iter_mut().enumerate() {
        let mut chunk = [0u8; 8];
        let start = index * 8;
        let end = (start + 8).min(bytes.len());
        chunk[..end - start].copy_from_slice(&bytes[start..end]);
        *word = u64::from_le_bytes(chunk);
    }
    words
        .iter()
        .fold(FOLD_SEED, |hash, &word| mix64(hash ^ word))
}

/// The weight of `instance` for the key digest `key`; the highest weight wins.
pub fn score(key: u64, instance: InstanceId) -> u64 {
    mix64(key ^ mix64(instance))
}

/// The owner of `info_hash` among `live` (any order, duplicates harmless); `None` only
/// when `live` is empty. Ties (astronomically rare) go to the larger id, so every
/// instance still agrees.
pub fn owner(info_hash: &InfoHash, live: &[InstanceId]) -> Option<InstanceId> {
    let key = key_hash(info_hash);
    live.iter()
        .copied()
        .max_by_key(|&instance| (score(key, instance), instance))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn hashes(count: u32) -> impl Iterator<Item = InfoHash> {
        // P2P Media Loader-like ids: ASCII, long shared prefix, differing at the end.
        (0..count).map(|n| {
            let mut bytes = *b"stream-abc-variant-0";
            let digits = format!("{n:08}");
            bytes[12..20].copy_from_slice(digits.as_bytes());
            InfoHash(bytes)
        })
    }

    const INSTANCES: [InstanceId; 5] = [
        0x1111_2222_3333_4444,
        0x9e37_79b9_7f4a_7c15,
        7,
        8,
        0xffff_ffff_ffff_fff0,
    ];

    #[test]
    fn values_are_stable_across_builds_and_processes() {
        // Pinned: a change here moves every swarm of a running cluster (see the module doc).
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        assert_eq!(key_hash(&InfoHash([0; 20])), key_hash(&InfoHash([0; 20])));
        let hash = InfoHash(*b"-PM0203-qhhxsCc0iJvL");
        assert_eq!(key_hash(&hash), 0xd601_2f22_8bd4_a9b0);
        assert_eq!(owner(&hash, &[1, 2, 3]), Some(2));
        assert_eq!(owner(&hash, &[3, 1, 2, 2]), Some(2));
    }

    #[test]
    fn nobody_owns_anything_in_an_empty_cluster() {
        assert_eq!(owner(&InfoHash([0; 20]), &[]), None);
        assert_eq!(owner(&InfoHash([0; 20]), &[42]), Some(42));
    }

    #[test]
    fn every_byte_of_the_info_hash_counts() {
        let base = InfoHash(*b"stream-abc-variant-0");
        let key = key_hash(&base);
        for index in 0..20 {
            let mut bytes = base.0;
            bytes[index] ^= 1;
            assert_ne!(key_hash(&InfoHash(bytes)), key, "byte {index} ignored");
        }
    }

    #[test]
    fn swarms_spread_evenly() {
        let total = 50_000u32;
        let mut per_owner: HashMap<InstanceId, u32> = HashMap::new();
        for hash in hashes(total) {
            let owner = owner(&hash, &INSTANCES).expect("non-empty");
            *per_owner.entry(owner).or_default() += 1;
        }
        let fair = f64::from(total) / INSTANCES.len() as f64;
        for instance in INSTANCES {
            let got = f64::from(per_owner.get(&instance).copied().unwrap_or(0));
            // Binomial sd is ~90 here; 5 % is over 10 sd.
            assert!(
                (got - fair).abs() < fair * 0.05,
                "instance {instance:x} owns {got}, fair share {fair}"
            );
        }
    }

    #[test]
    fn a_joining_instance_takes_only_what_it_wins() {
        let before = &INSTANCES[..4];
        let joined = INSTANCES[4];
        let mut moved = 0;
        for hash in hashes(20_000) {
            let old = owner(&hash, before).expect("non-empty");
            let new = owner(&hash, &INSTANCES).expect("non-empty");
            if old != new {
                assert_eq!(new, joined, "a swarm moved between two old instances");
                moved += 1;
            }
        }
        // About 1/5 of the swarms move to the newcomer.
        assert!((3_000..5_000).contains(&moved), "{moved} moved");
    }

    #[test]
    fn a_leaving_instance_gives_away_only_what_it_held() {
        let gone = INSTANCES[1];
        let after: Vec<InstanceId> = INSTANCES.iter().copied().filter(|&i| i != gone).collect();
        for hash in hashes(20_000) {
            let old = owner(&hash, &INSTANCES).expect("non-empty");
            let new = owner(&hash, &after).expect("non-empty");
            if old != gone {
                assert_eq!(old, new, "a swarm of a surviving instance moved");
            }
        }
    }
}
