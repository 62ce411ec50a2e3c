//! `herald demo` end to end: three cluster nodes in two regions (Raft over mutual TLS), the
//! emulator over TLS, two tenants, file WALs, retries and breakers through a 503 burst, every
//! outcome class, the emulator's record agreeing with the summary, and invalidations learned
//! on one node stopping sends on the others (the demo itself fails if an accepted push has
//! no outcome, the counts differ, or a second-wave push reaches APNs).

use herald_node::demo::{DemoArgs, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_and_its_summary_matches_the_emulator() {
    let report = run(DemoArgs {
        pushes: 1_500,
        devices: 300,
        connections: 2,
        window: 64,
        seed: 11,
        quiet: true,
        shards: 4,
        memory_wal: false,
    })
    .await
    .expect("demo run");
    let summary = &report.summary;
    assert_eq!(summary.finished(), 1_500, "every push ends with an outcome");
    assert_eq!(
        report.emulator_accepted, summary.delivered,
        "nothing lost, nothing duplicated: {report:?}"
    );
    assert!(summary.delivered > 1_000, "{report:?}");
    assert!(
        summary.invalidated > 0,
        "unregistered devices answer 410: {report:?}"
    );
    assert!(
        summary.failed.get("BadDeviceToken").copied().unwrap_or(0) > 0,
        "bad devices fail with BadDeviceToken: {report:?}"
    );
    assert!(summary.retried > 0, "the 503 burst is retried: {report:?}");
    assert!(report.emulator_503 > 0, "the burst happened: {report:?}");
    assert!(
        report.breaker_opened_total() > 0,
        "the 503 burst opens a breaker: {report:?}"
    );
    assert_eq!(
        summary.failed.keys().collect::<Vec<_>>(),
        vec!["BadDeviceToken"],
        "nothing else fails: {report:?}"
    );
    // Every node took pushes from the app servers and sent pushes for its shards.
    assert_eq!(report.nodes.len(), 3);
    assert!(
        report
            .nodes
            .iter()
            .all(|n| n.accepted > 0 && n.finished > 0),
        "{:?}",
        report.nodes
    );
    assert_eq!(
        report.nodes.iter().map(|n| n.finished).sum::<u64>(),
        1_500 + report.second_wave,
        "each push (both waves) finished once"
    );
    // Invalidations are cluster-wide: the second wave ends unregistered without a send.
    assert!(report.second_wave > 0, "{report:?}");
    assert_eq!(report.second_wave_unregistered, report.second_wave);
    assert_eq!(report.second_wave_sent, 0);
}
