//! `herald demo` end to end through the actor engine: emulator over TLS, two tenants, a
//! FileWal, retries and breakers through a 503 burst, every outcome class, and the
//! emulator's record agreeing with the summary (the demo itself fails if an accepted push
//! has no outcome or the counts differ).

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
}
