//! Deterministic shard rebalancing with bounded moves (DESIGN.md §4).

use std::collections::BTreeMap;

use super::command::NodeId;

/// Why no assignment could be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RebalanceError {
    /// No member of the region may own shards.
    #[error("no eligible member to own shards")]
    NoEligibleMembers,
    /// A shard map needs at least one shard.
    #[error("shard count must be at least 1")]
    NoShards,
}

/// The owners of `shard_count` shards after rebalancing `current` onto `members`.
///
/// `members` are the nodes that may own shards (in a region: its active members), in any
/// order, duplicates ignored. `current[s]` is shard `s`'s owner today; shards past its end
/// count as unowned, entries past `shard_count` are ignored.
///
/// The result is balanced (every member owns ⌊S/n⌋ or ⌈S/n⌉ shards) and moves as few shards
/// as possible: only shards of nodes that are not members any more (removed, draining,
/// unowned) and a member's shards above its target move; the extra shard of ⌈S/n⌉ goes to the
/// members holding most today (ties: lower id). Moved shards go, in shard order, to the
/// members below target in id order. Pure: the same input gives the same output.
///
/// # Errors
/// [`RebalanceError::NoEligibleMembers`] if `members` is empty, [`RebalanceError::NoShards`]
/// if `shard_count` is zero.
pub fn rebalance(
    members: &[NodeId],
    current: &[NodeId],
    shard_count: usize,
) -> Result<Vec<NodeId>, RebalanceError> {
    if shard_count == 0 {
        return Err(RebalanceError::NoShards);
    }
    let mut held: BTreeMap<NodeId, Vec<usize>> = members.iter().map(|&m| (m, vec![])).collect();
    if held.is_empty() {
        return Err(RebalanceError::NoEligibleMembers);
    }
    let mut owners: Vec<Option<NodeId>> = (0..shard_count)
        .map(|shard| current.get(shard).copied())
        .collect();
    let mut pool = Vec::new();
    for (shard, owner) in owners.iter_mut().enumerate() {
        match owner.and_then(|o| held.get_mut(&o)) {
            Some(shards) => shards.push(shard),
            None => {
                *owner = None;
                pool.push(shard);
            }
        }
    }

    // Targets: ⌊S/n⌋ each, plus one for the `extra` members holding most today.
    let n = held.len();
    let base = shard_count / n;
    let extra = shard_count % n;
    let mut by_load: Vec<(NodeId, usize)> = held.iter().map(|(&m, s)| (m, s.len())).collect();
    by_load.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let target: BTreeMap<NodeId, usize> = by_load
        .iter()
        .enumerate()
        .map(|(rank, &(m, _))| (m, base + usize::from(rank < extra)))
        .collect();

    // `target` has a key for every member of `held` (built from it), so indexing it below
    // cannot fail.
    // Take the excess (highest shard numbers first) from members above target.
    for (member, shards) in &mut held {
        let keep = target[member];
        while shards.len() > keep {
            if let Some(shard) = shards.pop() {
                owners[shard] = None;
                pool.push(shard);
            }
        }
    }
    pool.sort_unstable();

    // Hand the pool out, in shard order, to members below target, in id order.
    let mut pool = pool.into_iter();
    for (member, shards) in &held {
        for _ in shards.len()..target[member] {
            if let Some(shard) = pool.next() {
                owners[shard] = Some(*member);
            }
        }
    }
    debug_assert!(pool.next().is_none(), "targets sum to the shard count");
    Ok(owners
        .into_iter()
        .map(|owner| owner.unwrap_or_default())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(owners: &[NodeId]) -> BTreeMap<NodeId, usize> {
        let mut c = BTreeMap::new();
        for &o in owners {
            *c.entry(o).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn initial_assignment_is_balanced_and_ordered() {
        let owners = rebalance(&[3, 1, 2], &[], 7).unwrap();
        assert_eq!(owners, vec![1, 1, 1, 2, 2, 3, 3]);
    }

    #[test]
    fn draining_node_moves_only_its_shards() {
        let before = vec![1, 2, 3, 1, 2, 3];
        let after = rebalance(&[1, 2], &before, 6).unwrap();
        assert_eq!(after, vec![1, 2, 1, 1, 2, 2]);
    }

    #[test]
    fn new_node_takes_only_the_excess() {
        let before = vec![1, 2, 1, 2, 1, 2];
        let after = rebalance(&[1, 2, 3], &before, 6).unwrap();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 2);
        assert!(counts(&after).values().all(|&c| c == 2));
    }

    #[test]
    fn errors() {
        assert_eq!(
            rebalance(&[], &[1], 1),
            Err(RebalanceError::NoEligibleMembers)
        );
        assert_eq!(rebalance(&[1], &[], 0), Err(RebalanceError::NoShards));
    }

    fn arb_case() -> impl Strategy<Value = (Vec<NodeId>, Vec<NodeId>, usize)> {
        (1usize..200).prop_flat_map(|shards| {
            (
                proptest::collection::vec(1u64..12, 1..8),
                proptest::collection::vec(1u64..12, 0..=shards),
                Just(shards),
            )
        })
    }

    proptest! {
        #[test]
        fn balanced_minimal_deterministic((members, current, shards) in arb_case()) {
            let after = rebalance(&members, &current, shards).unwrap();
            prop_assert_eq!(after.len(), shards);
            // Only members own shards, and counts are within one of each other.
            let mut eligible: Vec<NodeId> = members.clone();
            eligible.sort_unstable();
            eligible.dedup();
            prop_assert!(after.iter().all(|o| eligible.contains(o)));
            let c = counts(&after);
            let loads: Vec<usize> = eligible.iter().map(|m| c.get(m).copied().unwrap_or(0)).collect();
            let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            prop_assert!(max - min <= 1);
            // Deterministic, whatever the order of `members`.
            let mut reversed = members.clone();
            reversed.reverse();
            prop_assert_eq!(&rebalance(&reversed, &current, shards).unwrap(), &after);
            // Bounded moves: orphans plus each member's excess over ⌈S/n⌉ at least,
            // orphans plus each member's excess over ⌊S/n⌋ at most.
            let n = eligible.len();
            let (base, ceil) = (shards / n, shards.div_ceil(n));
            let now = counts(&current[..current.len().min(shards)]);
            let orphans = (0..shards)
                .filter(|&s| current.get(s).is_none_or(|o| !eligible.contains(o)))
                .count();
            let excess = |t: usize| -> usize {
                eligible.iter().map(|m| now.get(m).copied().unwrap_or(0).saturating_sub(t)).sum()
            };
            let moved = (0..shards).filter(|&s| current.get(s) != Some(&after[s])).count();
            prop_assert!(moved >= orphans + excess(ceil));
            prop_assert!(moved <= orphans + excess(base));
            // Already balanced on the same members: nothing moves.
            prop_assert_eq!(&rebalance(&members, &after, shards).unwrap(), &after);
        }
    }
}
