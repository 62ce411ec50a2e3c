//! Operations endpoints: `GET /metrics` (Prometheus text), `GET /healthz` (the process
//! answers) and `GET /readyz` (every [`ReadinessProbe`] says ready).
//!
//! [`router`] returns an `axum::Router` that the node merges with the HTTP API
//! (`ops::router(state).merge(api)`). Readiness is a list of named probes so a single
//! engine without a cluster, or a test, supplies only what it has: [`EngineProbe`] (the
//! engine takes pushes), [`ClusterProbe`] (a leader is known and this node applied state),
//! [`DrainProbe`] (the node is not shutting down).
//!
//! ```
//! use std::sync::Arc;
//! use herald_node::ops::{self, DrainProbe, OpsState};
//!
//! let drain = DrainProbe::new();
//! let state = OpsState::new(ops::metrics_handle()).probe("drain", Arc::new(drain.clone()));
//! let app: axum::Router = ops::router(state);
//! drain.start_draining(); // /readyz now answers 503
//! # drop(app);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_actors::Herald;
use herald_cluster::node::AppliedState;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

/// What a readiness probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Ready for traffic.
    Ready,
    /// Not ready, and why.
    NotReady(String),
}

/// One part of readiness (the engine, the cluster, shutdown …).
pub trait ReadinessProbe: Send + Sync + fmt::Debug + 'static {
    /// Is this part ready? Must not block.
    fn check(&self) -> Readiness;
}

/// Ready while the engine takes pushes ([`Herald::is_accepting`]).
#[derive(Debug, Clone)]
pub struct EngineProbe(pub Herald);

impl ReadinessProbe for EngineProbe {
    fn check(&self) -> Readiness {
        if self.0.is_accepting() {
            Readiness::Ready
        } else {
            Readiness::NotReady("the engine is not accepting pushes".to_owned())
        }
    }
}

/// Ready once this node knows a leader and has applied at least one entry (so its shard
/// map and token state are not empty placeholders).
#[derive(Debug, Clone)]
pub struct ClusterProbe(pub watch::Receiver<AppliedState>);

impl ReadinessProbe for ClusterProbe {
    fn check(&self) -> Readiness {
        let state = *self.0.borrow();
        match state.leader {
            None => Readiness::NotReady("the cluster has no known leader".to_owned()),
            Some(_) if state.applied_index == 0 => {
                Readiness::NotReady("this node has applied no cluster state yet".to_owned())
            }
            Some(_) => Readiness::Ready,
        }
    }
}

/// Not ready once the node began shutting down (load balancers stop sending first).
#[derive(Debug, Clone, Default)]
pub struct DrainProbe(Arc<AtomicBool>);

impl DrainProbe {
    /// A probe that is ready until [`start_draining`](Self::start_draining).
    pub fn new() -> Self {
        DrainProbe::default()
    }

    /// Mark the node as shutting down.
    pub fn start_draining(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl ReadinessProbe for DrainProbe {
    fn check(&self) -> Readiness {
        if self.is_draining() {
            Readiness::NotReady("the node is shutting down".to_owned())
        } else {
            Readiness::Ready
        }
    }
}

/// What the ops endpoints read.
#[derive(Clone)]
pub struct OpsState {
    metrics: PrometheusHandle,
    probes: Vec<(String, Arc<dyn ReadinessProbe>)>,
}

impl fmt::Debug for OpsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpsState")
            .field("probes", &self.probes)
            .finish_non_exhaustive()
    }
}

impl OpsState {
    /// State rendering `metrics`, with no readiness probe (always ready).
    pub fn new(metrics: PrometheusHandle) -> Self {
        OpsState {
            metrics,
            probes: Vec::new(),
        }
    }

    /// Add a readiness probe named `name` (the name appears in `/readyz`'s answer).
    pub fn probe(mut self, name: impl Into<String>, probe: Arc<dyn ReadinessProbe>) -> Self {
        self.probes.push((name.into(), probe));
        self
    }

    /// Every probe's verdict, in the order added, and whether all are ready.
    pub fn readiness(&self) -> (bool, Vec<(String, Readiness)>) {
        let checks: Vec<_> = self
            .probes
            .iter()
            .map(|(name, probe)| (name.clone(), probe.check()))
            .collect();
        let ready = checks.iter().all(|(_, r)| *r == Readiness::Ready);
        (ready, checks)
    }
}

/// The ops routes: `/metrics`, `/healthz`, `/readyz`.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The process-wide Prometheus recorder's handle, installing the recorder on first use.
///
/// The `metrics` facade has one global recorder per process; every node started in this
/// process (tests start several) shares it. No background thread is started: the node runs
/// [`PrometheusHandle::run_upkeep`] on a tokio interval ([`METRICS_UPKEEP_PERIOD`]).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Real histograms (with `_bucket` series, aggregatable across nodes) for the
            // latency; the bucket list is constant and non-empty, so this cannot fail.
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets_for_metric(
                Matcher::Suffix("_seconds".to_owned()),
                LATENCY_BUCKETS_SECONDS,
            ) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "latency buckets refused; histograms render as summaries");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "another metrics recorder is installed; /metrics shows only this node's own"
                );
            }
            handle
        })
        .clone()
}

/// Histogram buckets of every `*_seconds` metric (push latency: milliseconds to a retry
/// budget of minutes).
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// How often the node runs the Prometheus recorder's upkeep (histogram maintenance).
pub const METRICS_UPKEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

async fn metrics(State(state): State<OpsState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let (ready, checks) = state.readiness();
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, r)| {
            let v = match r {
                Readiness::Ready => "ready".to_owned(),
                Readiness::NotReady(why) => why,
            };
            (name, serde_json::Value::String(v))
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "ready": ready, "checks": body })),
    )
        .into_response()
}
