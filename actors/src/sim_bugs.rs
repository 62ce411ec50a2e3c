//! Deliberately re-introduced bugs, compiled in only with the `sim-bugs` feature, each off
//! until a test turns it on for the current thread (the simulator runs every host of a run
//! on one thread). They prove the simulator's invariants catch real mistakes; see
//! `docs/simulation.md`. Never enable the feature in a production build.

use std::cell::Cell;

/// A bug the simulator must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum SimBug {
    /// The device shard skips the token-validity check: it sends to invalidated tokens.
    SkipTokenCheck,
    /// The device shard forgets its WAL's pending pushes on (re)start: a crash loses them.
    ForgetWalOnRestart,
    /// The state machine accepts a shard map whose epoch is not newer than the current one.
    AcceptStaleEpoch,
}

impl SimBug {
    /// Every bug.
    pub const ALL: [SimBug; 3] = [
        SimBug::SkipTokenCheck,
        SimBug::ForgetWalOnRestart,
        SimBug::AcceptStaleEpoch,
    ];

    fn bit(self) -> u8 {
        match self {
            SimBug::SkipTokenCheck => 1,
            SimBug::ForgetWalOnRestart => 2,
            SimBug::AcceptStaleEpoch => 4,
        }
    }
}

thread_local! {
    static ENABLED: Cell<u8> = const { Cell::new(0) };
}

/// Turn on exactly `bugs` for the current thread.
pub fn set(bugs: &[SimBug]) {
    let mask = bugs.iter().fold(0, |m, b| m | b.bit());
    ENABLED.with(|e| e.set(mask));
}

/// Whether `bug` is on for the current thread.
pub fn enabled(bug: SimBug) -> bool {
    ENABLED.with(|e| e.get() & bug.bit() != 0)
}
