//! Same seed ⇒ same trace; different seeds ⇒ different runs; a run passes its invariants.

use std::time::Duration;

use herald_sim::sim::trace::first_divergence;
use herald_sim::sim::{SimConfig, run};

fn short(seed: u64) -> SimConfig {
    let mut c = SimConfig::new(seed);
    c.active = Duration::from_secs(6);
    c
}

/// Two runs of one seed, each in a fresh process (as a replay runs): the same trace. (Two
/// runs in one process may order simultaneous events differently: tokio's task ids are
/// process-wide; see `herald-sim`'s docs.)
#[test]
fn one_seed_twice_gives_the_same_trace() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald-sim"))
        .args(["twice", "--seed", "7", "--active-secs", "6"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("identical"),
        "seed 7 twice: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn different_seeds_give_different_runs() {
    let a = run(&short(7)).unwrap();
    assert!(a.passed(), "{a}");
    assert!(a.accepted > 0, "{a}");
    let c = run(&short(8)).unwrap();
    assert_ne!(a.hash, c.hash);
    assert!(first_divergence(&a.trace, &c.trace).is_some());
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
