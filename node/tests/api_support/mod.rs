//! Shared setup for the API tests: the APNs emulator (plaintext h2c on 127.0.0.1, two
//! teams), an engine with tenants `acme` and `globex`, the local backend and the router,
//! and keys for each role.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use herald_actors::apns::{DeviceToken, SigningKey, TokenMinter};
use herald_actors::backoff::Backoff;
use herald_actors::seams::{ManualClock, Timestamp};
use herald_actors::{Credentials, Endpoint, Herald, TenantConfig, Tuning};
use herald_node::api::{
    ApiKeys, ApiState, Backends, KeyRequest, LocalBackend, MemoryRevocations, Scope, TenantInfo,
    Webhooks, router,
};
use herald_sim::emulator::{Emulator, EmulatorConfig, GeneratedKey, TeamConfig};
use serde_json::Value;
use tower::ServiceExt;

pub const BUNDLE: &str = "com.example.app";
pub const START_SECS: u64 = 1_700_000_000;
pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
/// Generous: tests depend on this being long enough, never on machine speed.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Env {
    pub app: Router,
    pub emulator: Emulator,
    pub herald: Herald,
    pub local: LocalBackend,
    pub clock: ManualClock,
    /// A third team's key, for creating a tenant through the API.
    pub spare: GeneratedKey,
    pub admin: String,
    pub acme: String,
    pub acme_read: String,
    pub globex: String,
}

#[derive(Default)]
pub struct Options {
    /// Point the engine at a port where nothing listens (pushes stay queued).
    pub unreachable: bool,
    pub acme_queue_max: Option<usize>,
}

fn fast_tuning() -> Tuning {
    let mut t = Tuning::default();
    t.retry_backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(50));
    t.reconnect_backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
    t
}

pub fn credentials(key: &GeneratedKey, clock: &ManualClock) -> Credentials {
    let signing =
        SigningKey::from_p8_pem(key.p8_pem.as_bytes(), &key.key_id, &key.team_id).unwrap();
    Credentials::Token(TokenMinter::with_default_interval(
        signing,
        Arc::new(clock.clone()),
    ))
}

pub async fn start(options: Options) -> Env {
    let (acme_team, acme_key) =
        TeamConfig::generate("TEAMACME01", "KEYACME001", &[BUNDLE]).unwrap();
    let (globex_team, globex_key) =
        TeamConfig::generate("TEAMGLOBEX", "KEYGLOBEX1", &[BUNDLE]).unwrap();
    let (spare_team, spare) = TeamConfig::generate("TEAMSPARE1", "KEYSPARE01", &[BUNDLE]).unwrap();
    let mut config = EmulatorConfig::plaintext();
    config.teams = vec![acme_team, globex_team, spare_team];
    config.admin_bind = None;
    let clock = ManualClock::new(Timestamp::from_secs(START_SECS));
    let emulator = Emulator::start_with_clock(config, Arc::new(clock.clone()))
        .await
        .unwrap();
    let port = if options.unreachable {
        9
    } else {
        emulator.addr().port()
    };
    let mut acme = TenantConfig::new("acme", credentials(&acme_key, &clock));
    if let Some(max) = options.acme_queue_max {
        acme.queue_max(max);
    }
    let herald = Herald::builder()
        .endpoint(Endpoint::plaintext("127.0.0.1", port))
        .clock(Arc::new(clock.clone()))
        .rng_seed(7)
        .shards(4)
        .tuning(fast_tuning())
        .tenant(acme)
        .tenant(TenantConfig::new(
            "globex",
            credentials(&globex_key, &clock),
        ))
        .build()
        .await
        .unwrap();
    let local = LocalBackend::new(herald.clone(), Arc::new(clock.clone()));
    for id in ["acme", "globex"] {
        local.adopt_tenant(TenantInfo {
            id: id.into(),
            team_id: None,
            key_id: None,
        });
    }
    let keys = ApiKeys::hs256(SECRET, Arc::new(clock.clone())).unwrap();
    let issue = |r: KeyRequest, id: &str| keys.issue(&r, id).unwrap().key;
    let admin = issue(KeyRequest::admin(), "admin-1");
    let acme = issue(
        KeyRequest::tenant("acme", &[Scope::Push, Scope::Read]),
        "acme-1",
    );
    let acme_read = issue(KeyRequest::tenant("acme", &[Scope::Read]), "acme-read-1");
    let globex = issue(
        KeyRequest::tenant("globex", &[Scope::Push, Scope::Read]),
        "globex-1",
    );
    let state = ApiState::new(
        Backends::local(&local),
        keys,
        Arc::new(MemoryRevocations::new()),
        99,
    )
    .with_webhooks(Webhooks::start(
        herald.outcomes(),
        Arc::new(herald_actors::seams::TcpConnector),
        5,
    ));
    Env {
        app: router(state),
        emulator,
        herald,
        local,
        clock,
        spare,
        admin,
        acme,
        acme_read,
        globex,
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Env {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let raw = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.call_raw(method, path, key, raw, &[]).await
    }

    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = match body {
            Some(bytes) => request
                .header("content-type", "application/json")
                .body(Body::from(bytes))
                .unwrap(),
            None => request.body(Body::empty()).unwrap(),
        };
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Poll `GET /v1/pushes/{id}` until it is no longer pending.
    pub async fn final_status(&self, key: &str, id: &str) -> Value {
        let until = tokio::time::Instant::now() + PATIENCE;
        loop {
            let answer = self
                .call("GET", &format!("/v1/pushes/{id}"), Some(key), None)
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            if answer.body["status"] != "pending" {
                return answer.body;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "push {id} still pending"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A device token: 32 bytes derived from `n`.
pub fn token(n: u64) -> String {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    bytes[31] = 0xAB;
    DeviceToken::from_bytes(&bytes).unwrap().to_string()
}

pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
