//! With the `sim-bugs` feature, each deliberately re-introduced bug is caught by an invariant
//! within 100 seeds: `cargo test -p herald-sim --features sim-bugs --test sim_bugs`.
#![cfg(feature = "sim-bugs")]

use std::time::Duration;

use herald_actors::sim_bugs::SimBug;
use herald_sim::sim::{RunReport, SimConfig, run};

/// Seeds tried per bug.
const SEEDS_MAX: u64 = 100;

fn first_catch(bug: SimBug, expect: &str) -> RunReport {
    for seed in 0..SEEDS_MAX {
        let mut c = SimConfig::new(seed);
        c.active = Duration::from_secs(6);
        c.bugs = vec![bug];
        let report = run(&c).unwrap();
        if report.violations.iter().any(|v| v.contains(expect)) {
            println!("{bug:?} caught at seed {seed}:\n{report}");
            return report;
        }
    }
    panic!("{bug:?} not caught within {SEEDS_MAX} seeds");
}

#[test]
fn skipping_the_token_check_is_caught() {
    first_catch(SimBug::SkipTokenCheck, "sent after invalidation");
}

#[test]
fn forgetting_the_wal_on_restart_is_caught() {
    first_catch(SimBug::ForgetWalOnRestart, "lost");
}

#[test]
fn accepting_a_stale_epoch_is_caught() {
    first_catch(SimBug::AcceptStaleEpoch, "two owner maps");
}
