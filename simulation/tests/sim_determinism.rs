//! Same seed ⇒ same trace; different seeds ⇒ different runs; a run passes its invariants.

use std::time::Duration;

use herald_sim::sim::trace::first_divergence;
use herald_sim::sim::{SimConfig, run};

fn short(seed: u64) -> SimConfig {
    let mut c = SimConfig::new(seed);
    c.active = Duration::from_secs(6);
    c
}

#[test]
fn one_seed_twice_gives_the_same_trace() {
    let a = run(&short(7)).unwrap();
    let b = run(&short(7)).unwrap();
    if let Some(d) = first_divergence(&a.trace, &b.trace) {
        panic!("seed 7 is not deterministic: {d}");
    }
    assert_eq!(a.hash, b.hash);
    assert!(a.passed(), "{a}");
    assert!(a.accepted > 0, "{a}");
    let c = run(&short(8)).unwrap();
    assert_ne!(a.hash, c.hash);
}

#[test]
fn a_fault_free_run_delivers_and_converges() {
    let mut c = short(3);
    c.faults = false;
    let report = run(&c).unwrap();
    assert!(report.passed(), "{report}");
    assert!(report.accepted > 50, "{report}");
    assert!(
        report
            .coverage
            .get("outcome:delivered")
            .copied()
            .unwrap_or(0)
            > 0,
        "{report}"
    );
    assert!(
        report
            .coverage
            .get("outcome:unregistered")
            .copied()
            .unwrap_or(0)
            > 0,
        "{report}"
    );
    assert!(
        report.trace.iter().any(|l| l.ends_with("converged")),
        "{report}"
    );
}
