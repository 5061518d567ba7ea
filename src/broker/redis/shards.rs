//! Which Redis shard holds a user.
//!
//! With several independent Redis servers (`REDIS_URL` lists them), everything about a user — its
//! positions, history, presence and channel — lives on one of them, chosen from the user id
//! alone, so that every node agrees without talking to the others: the shard is
//! `jump(splitmix64(fnv1a64(user_id)), N)`, where `jump` is Lamping and Veach's jump consistent
//! hash ("A Fast, Minimal Memory, Consistent Hash Algorithm", 2014). Adding an (N+1)th shard moves
//! about 1/(N+1) of the users, all of them to the new shard; the others keep theirs. The order of
//! the list matters: every node must list the same servers in the same order.

/// The index (0-based) of the shard that holds `user` among `shards` shards.
pub fn shard_of(user: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    jump(splitmix64(fnv1a64(user.as_bytes())), shards)
}

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finalizer: spreads similar ids (`user-1`, `user-2`, …) over the whole range.
fn splitmix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Jump consistent hash: a bucket in `0..buckets` for `key`.
fn jump(mut key: u64, buckets: usize) -> usize {
    let buckets = i64::try_from(buckets).unwrap_or(i64::MAX);
    let (mut bucket, mut next) = (-1_i64, 0_i64);
    while next < buckets {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let scale = (1_u64 << 31) as f64 / ((key >> 33) + 1) as f64;
        next = ((bucket + 1) as f64 * scale) as i64;
    }
    usize::try_from(bucket).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(n: usize) -> impl Iterator<Item = String> {
        (0..n).map(|i| format!("user-{i}"))
    }

    #[test]
    fn users_spread_evenly_over_the_shards() {
        const USERS: usize = 100_000;
        for shards in 2..=8 {
            let mut counts = vec![0_usize; shards];
            for user in users(USERS) {
                counts[shard_of(&user, shards)] += 1;
            }
            let even = USERS / shards;
            for (shard, &count) in counts.iter().enumerate() {
                assert!(
                    count.abs_diff(even) * 20 < even,
                    "{shards} shards: shard {shard} holds {count} of {USERS} (even: {even})"
                );
            }
        }
    }

    #[test]
    fn adding_a_shard_moves_about_its_share_of_the_users_and_only_to_it() {
        const USERS: usize = 100_000;
        for shards in 1..=6 {
            let mut moved = 0_usize;
            for user in users(USERS) {
                let (before, after) = (shard_of(&user, shards), shard_of(&user, shards + 1));
                if before != after {
                    assert_eq!(after, shards, "{user} moved between old shards");
                    moved += 1;
                }
            }
            let share = USERS / (shards + 1);
            assert!(
                moved.abs_diff(share) * 10 < share,
                "{shards} → {}: {moved} users moved (expected about {share})",
                shards + 1
            );
        }
    }

    #[test]
    fn the_mapping_is_stable_across_versions() {
        // Nodes of different versions must agree: these values pin the algorithm.
        assert_eq!(shard_of("anything", 1), 0);
        let pinned: Vec<usize> = ["42", "alice", "user-7", "é"]
            .iter()
            .map(|user| shard_of(user, 5))
            .collect();
        assert_eq!(pinned, PINNED);
    }

    /// `shard_of` of "42", "alice", "user-7" and "é" among 5 shards.
    const PINNED: [usize; 4] = [3, 2, 3, 0];
}
