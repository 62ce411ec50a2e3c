//! `herald demo` end to end: emulator, TLS, HTTP/2, retries through a 503 burst, and the
//! emulator's record agreeing with the summary (the demo itself fails if they differ).

use herald_node::demo::{DemoArgs, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_and_its_summary_matches_the_emulator() {
    let summary = run(DemoArgs {
        pushes: 1_500,
        devices: 300,
        connections: 2,
        window: 64,
        seed: 11,
        quiet: true,
    })
    .await
    .expect("demo run");
    assert_eq!(summary.finished(), 1_500, "every push ends with an outcome");
    assert!(summary.delivered > 1_000, "{summary:?}");
    assert!(
        summary.invalidated > 0,
        "unregistered devices answer 410: {summary:?}"
    );
    assert!(
        summary.failed.get("BadDeviceToken").copied().unwrap_or(0) > 0,
        "bad devices fail with BadDeviceToken: {summary:?}"
    );
    assert!(summary.retried > 0, "the 503 burst is retried: {summary:?}");
    assert_eq!(
        summary.failed.keys().collect::<Vec<_>>(),
        vec!["BadDeviceToken"],
        "nothing else fails: {summary:?}"
    );
}
