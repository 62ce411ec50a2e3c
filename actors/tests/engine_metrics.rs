//! The engine's metrics, under a recording `metrics` recorder: a run with deliveries, a 410, a
//! retry and a provider-token refresh emits every documented series, and every series it emits
//! is documented in docs/operations.md.
//!
//! `metrics` recorders are global (the engine's actors run on several threads, so a
//! thread-local recorder would miss them): this binary holds exactly one test.

mod engine_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use engine_support::*;
use herald_actors::Outcome;
use herald_actors::apns::Reason;
use herald_sim::emulator::{Burst, DeviceState, FaultProfile};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// A series: name and sorted labels.
type Series = (String, Vec<(String, String)>);

/// Records every counter, gauge and histogram by series.
#[derive(Debug, Default)]
struct Recording {
    counters: Mutex<BTreeMap<Series, Arc<Cell>>>,
    gauges: Mutex<BTreeMap<Series, Arc<Cell>>>,
    histograms: Mutex<BTreeMap<Series, Arc<Samples>>>,
}

/// A counter's total or a gauge's value (f64 bits).
#[derive(Debug, Default)]
struct Cell(AtomicU64);

#[derive(Debug, Default)]
struct Samples(Mutex<Vec<f64>>);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                Some((f64::from_bits(b) + value).to_bits())
            });
    }
    fn decrement(&self, value: f64) {
        GaugeFn::increment(self, -value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst);
    }
}

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

fn series(key: &Key) -> Series {
    let mut labels: Vec<(String, String)> = key
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    (key.name().to_owned(), labels)
}

#[derive(Debug, Clone, Default)]
struct TestRecorder(Arc<Recording>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = self
            .0
            .counters
            .lock()
            .unwrap()
            .entry(series(key))
            .or_default()
            .clone();
        Counter::from_arc(cell)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let cell = self
            .0
            .gauges
            .lock()
            .unwrap()
            .entry(series(key))
            .or_default()
            .clone();
        Gauge::from_arc(cell)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let samples = self
            .0
            .histograms
            .lock()
            .unwrap()
            .entry(series(key))
            .or_default()
            .clone();
        Histogram::from_arc(samples)
    }
}

impl Recording {
    /// Sum of a counter over every series whose labels include `labels`.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, l), _)| n == name && has(l, labels))
            .map(|(_, c)| c.0.load(Ordering::SeqCst))
            .sum()
    }

    fn gauges(&self, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        self.gauges
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), c)| (l.clone(), f64::from_bits(c.0.load(Ordering::SeqCst))))
            .collect()
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.histograms
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, l), _)| n == name && has(l, labels))
            .map(|(_, s)| s.0.lock().unwrap().len())
            .sum()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .counters
            .lock()
            .unwrap()
            .keys()
            .chain(self.gauges.lock().unwrap().keys())
            .chain(self.histograms.lock().unwrap().keys())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

fn has(labels: &[(String, String)], wanted: &[(&str, &str)]) -> bool {
    wanted
        .iter()
        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_emits_the_documented_metrics() {
    let recorder = TestRecorder::default();
    let recording = recorder.0.clone();
    metrics::set_global_recorder(recorder).expect("the only recorder of this binary");

    let env = start(|_| {}, |_| {}).await;
    // A 410 for one device; the first request of all answered 503 (a retry), the next one
    // 403 ExpiredProviderToken (a provider-token refresh, then a retry).
    env.emulator.set_device(
        token(9).as_str(),
        DeviceState::Unregistered {
            at_ms: (START_SECS - 60) * 1000,
        },
    );
    env.emulator
        .set_faults(FaultProfile {
            bursts: vec![
                Burst {
                    reason: Reason::ServiceUnavailable,
                    requests: Some(1),
                    duration_ms: None,
                },
                Burst {
                    reason: Reason::ExpiredProviderToken,
                    requests: Some(1),
                    duration_ms: None,
                },
            ],
            ..FaultProfile::default()
        })
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(env.herald.send(TENANT, alert(n)).await.unwrap());
    }
    let gone = env.herald.send(TENANT, alert(9)).await.unwrap();
    ids.push(gone);
    let got = outcomes(&env.herald, &ids).await;
    assert!(matches!(got[&gone], Outcome::Unregistered { .. }));
    assert!(ids[..5].iter().all(|id| delivered(&got[id])), "{got:?}");

    let r = &recording;
    assert_eq!(
        r.counter(
            "herald_pushes_total",
            &[("outcome", "delivered"), ("reason", "")]
        ),
        5
    );
    assert_eq!(
        r.counter("herald_pushes_total", &[("outcome", "unregistered")]),
        1
    );
    assert_eq!(
        r.samples("herald_push_latency_seconds", &[("outcome", "delivered")]),
        5
    );
    assert_eq!(
        r.samples(
            "herald_push_latency_seconds",
            &[("outcome", "unregistered")]
        ),
        1
    );
    assert!(
        r.counter("herald_retries_total", &[]) >= 2,
        "503 and 403 retried"
    );
    // Mints are counted from the minter's count on the tenant's next tick (≤ `POOL_TICK`).
    eventually("a provider token mint is counted", || {
        r.counter("herald_provider_token_rotations_total", &[]) >= 1
    })
    .await;
    assert!(r.counter("herald_apns_connections_opened_total", &[]) >= 1);
    eventually("every shard's queue is empty", || {
        let depth = r.gauges("herald_queue_depth");
        !depth.is_empty()
            && depth
                .iter()
                .all(|(labels, v)| labels[0].0 == "shard" && *v == 0.0)
    })
    .await;
    let inflight = r.gauges("herald_inflight");
    assert!(!inflight.is_empty() && inflight.iter().all(|(_, v)| *v == 0.0));
    eventually("a connection is open", || {
        r.gauges("herald_connections")
            .iter()
            .any(|(_, v)| *v >= 1.0)
    })
    .await;
    eventually("the breaker state is published", || {
        r.gauges("herald_breaker_state")
            .iter()
            .any(|(labels, v)| labels == &[("tenant".into(), TENANT.into())] && *v == 0.0)
    })
    .await;

    // Every series emitted is documented, under its name, in the operations guide.
    let doc = include_str!("../../docs/operations.md");
    let undocumented: Vec<String> = r
        .names()
        .into_iter()
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect();
    assert!(undocumented.is_empty(), "undocumented: {undocumented:?}");
}
