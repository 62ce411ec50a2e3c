//! The admin HTTP endpoint (HTTP/1.1, JSON), on its own port.
//!
//! | route | what |
//! |---|---|
//! | `GET /record[?token=<hex>]` | accepted notifications (oldest first), optionally for one token |
//! | `DELETE /record` | forget the record and counters |
//! | `GET /stats` | counters and per-connection stream statistics |
//! | `GET /faults`, `PUT /faults` | the fault profile (JSON [`FaultProfile`]) |
//! | `POST /devices` | set token states: a JSON array of [`DeviceEntry`] |
//! | `GET /settings`, `PUT /settings` | `{"max_concurrent_streams": n}` |
//! | `GET /channels?bundle=<id>` | the broadcast channels of one app ([`Channel`]s) |

use std::net::SocketAddr;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    AcceptedNotification, Channel, DeviceEntry, EmulatorCore, EmulatorError, FaultProfile, Stats,
};

/// The body of `GET/PUT /settings`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Settings {
    max_concurrent_streams: u32,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChannelsQuery {
    bundle: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RecordQuery {
    token: Option<String>,
}

pub(crate) async fn start(
    core: EmulatorCore,
    bind: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), EmulatorError> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|source| EmulatorError::Bind { addr: bind, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EmulatorError::Bind { addr: bind, source })?;
    let app = Router::new()
        .route("/record", get(record).delete(clear_record))
        .route("/stats", get(stats))
        .route("/faults", get(faults).put(set_faults))
        .route("/devices", axum::routing::post(set_devices))
        .route("/settings", get(settings).put(set_settings))
        .route("/channels", get(channels))
        .with_state(core);
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "emulator admin endpoint failed");
        }
    });
    Ok((addr, task))
}

async fn record(
    State(core): State<EmulatorCore>,
    Query(q): Query<RecordQuery>,
) -> Json<Vec<AcceptedNotification>> {
    let mut all = core.accepted();
    if let Some(token) = q.token {
        let token = token.to_ascii_lowercase();
        all.retain(|n| n.device_token == token);
    }
    Json(all)
}

async fn channels(
    State(core): State<EmulatorCore>,
    Query(q): Query<ChannelsQuery>,
) -> Json<Vec<Channel>> {
    Json(core.channels(&q.bundle))
}

async fn clear_record(State(core): State<EmulatorCore>) -> StatusCode {
    core.clear_record();
    StatusCode::NO_CONTENT
}

async fn stats(State(core): State<EmulatorCore>) -> Json<Stats> {
    Json(core.stats())
}

async fn faults(State(core): State<EmulatorCore>) -> Json<FaultProfile> {
    Json(core.faults())
}

async fn set_faults(
    State(core): State<EmulatorCore>,
    Json(profile): Json<FaultProfile>,
) -> StatusCode {
    match core.set_faults(profile) {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

async fn set_devices(
    State(core): State<EmulatorCore>,
    Json(entries): Json<Vec<DeviceEntry>>,
) -> StatusCode {
    core.set_devices(&entries);
    StatusCode::NO_CONTENT
}

async fn settings(State(core): State<EmulatorCore>) -> Json<Settings> {
    Json(Settings {
        max_concurrent_streams: core.max_concurrent_streams(),
    })
}

async fn set_settings(State(core): State<EmulatorCore>, Json(s): Json<Settings>) -> StatusCode {
    if s.max_concurrent_streams == 0 {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    core.set_max_concurrent_streams(s.max_concurrent_streams);
    StatusCode::NO_CONTENT
}
