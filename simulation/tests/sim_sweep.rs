//! A bounded sweep: every seed passes its invariants, and across the sweep every fault path
//! was reached ("sometimes" counters). The long sweep is `herald-sim sweep` (docs/simulation.md).

use std::collections::BTreeMap;
use std::time::Duration;

use herald_sim::sim::{SimConfig, run};

/// Seeds in the test sweep (the release-mode CI sweep runs 200+ with the binary).
const SEEDS: u64 = 24;

#[test]
fn a_sweep_passes_and_reaches_every_fault() {
    let mut coverage: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = vec![];
    for seed in 1000..1000 + SEEDS {
        let mut c = SimConfig::new(seed);
        c.active = Duration::from_secs(6);
        let report = run(&c).unwrap();
        for (k, v) in &report.coverage {
            *coverage.entry(k.clone()).or_default() += v;
        }
        if !report.passed() {
            failures.push(report.to_string());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for label in [
        "fault:partition",
        "fault:partition_one_way",
        "fault:crash",
        "fault:restart",
        "fault:clock_skew",
        "fault:fail_rate",
        "fault:latency",
        "fault:apns_errors",
        "fault:apns_goaway",
        "fault:apns_refused_stream",
        "fault:apns_key_revoked",
        "fault:apns_slow",
        "fault:storm_410",
        "invalidation_applied",
        "admin:stale_assignment_refused",
        "outcome:delivered",
        "outcome:unregistered",
        "routing:finished_elsewhere",
        "workload:broadcast_sent",
        "buggify:wal_append_fails",
        "buggify:connection_crash_after_send",
        "buggify:router_ack_lost",
        "buggify:peer_message_duplicated",
        "buggify:peer_message_reordered",
    ] {
        assert!(
            coverage.get(label).copied().unwrap_or(0) > 0,
            "{label} never reached in the sweep: {coverage:?}"
        );
    }
}
