//! BUGGIFY-style fault points (after FoundationDB): places in production code where a rare but
//! legal path can be forced, so the simulator reaches it in every sweep.
//!
//! Off unless a simulation turns them on for the current thread with [`enable`] (the
//! simulator runs every host of a run on one thread). Off, a point costs one thread-local
//! read and never fires. On, each point is *activated* for the run with probability
//! [`ACTIVATE_PROBABILITY`] the first time it is evaluated, and an active point fires with the
//! probability its call site gives; every draw comes from a [`DetRng`] seeded by the run, so
//! the same seed fires the same points at the same moments.
//!
//! A fault point only ever takes a path the code must handle anyway (a failed WAL append, a
//! lost connection, a lost ack): it makes the rare common, never the impossible possible.
//!
//! | point | where | what it forces |
//! |---|---|---|
//! | `wal_append_fails` | `shard.rs`, the append task | a WAL I/O error: the push is refused, not accepted |
//! | `connection_crash_after_send` | `connection.rs`, `ConnectionLink::try_send` | the connection actor crashes with a request in flight |
//! | (herald-cluster) `router_ack_lost` | `routing/router.rs` | an owner's ack is not sent: the origin re-sends |

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::seams::DetRng;

/// Chance that a point is active for a run.
pub const ACTIVATE_PROBABILITY: f64 = 0.25;

struct State {
    rng: DetRng,
    /// Each point evaluated so far: whether it is active this run, and how often it fired.
    points: BTreeMap<&'static str, (bool, u64)>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Turn fault points on for the current thread, drawing from `seed`.
pub fn enable(seed: u64) {
    STATE.with(|s| {
        *s.borrow_mut() = Some(State {
            rng: DetRng::from_seed(seed),
            points: BTreeMap::new(),
        });
    });
}

/// Turn fault points off for the current thread; answers how often each active point fired.
pub fn disable() -> BTreeMap<String, u64> {
    STATE
        .with(|s| s.borrow_mut().take())
        .map_or_else(BTreeMap::new, |state| {
            state
                .points
                .into_iter()
                .filter(|(_, (active, _))| *active)
                .map(|(point, (_, fired))| (point.to_owned(), fired))
                .collect()
        })
}

/// Whether fault point `point` fires now (with `probability` when active). Always false
/// unless [`enable`] was called on this thread.
pub fn fire(point: &'static str, probability: f64) -> bool {
    STATE.with(|s| {
        let mut guard = s.borrow_mut();
        let Some(state) = guard.as_mut() else {
            return false;
        };
        let State { rng, points } = state;
        let entry = points
            .entry(point)
            .or_insert_with(|| (rng.chance(ACTIVATE_PROBABILITY), 0));
        if entry.0 && rng.chance(probability) {
            entry.1 += 1;
            tracing::debug!(point, "buggify: fault point fired");
            return true;
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_deterministic_when_on() {
        assert!(!fire("x", 1.0));
        let draw = |seed| {
            enable(seed);
            let fired: Vec<bool> = (0..200)
                .map(|i| fire(["a", "b", "c", "d", "e", "f"][i % 6], 0.5))
                .collect();
            (fired, disable())
        };
        let (a, counts) = draw(7);
        assert_eq!((a.clone(), counts.clone()), draw(7));
        assert!(!fire("a", 1.0), "disable turns every point off");
        // Only active points fire, and they are reported.
        assert_eq!(
            a.iter().filter(|f| **f).count() as u64,
            counts.values().sum::<u64>()
        );
        // Over a few seeds some point is active and some is not.
        let actives: Vec<usize> = (0..8).map(|seed| draw(seed).1.len()).collect();
        assert!(actives.iter().any(|n| *n > 0) && actives.iter().any(|n| *n < 6));
    }
}
