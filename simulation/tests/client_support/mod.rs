//! Shared setup for the client end-to-end tests: an emulator on a manual clock, a TLS
//! configuration that trusts it, Herald connections to it, scripted credentials, test
//! certificates and a TCP proxy that can stop forwarding.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_actors::apns::http2::{
    ApnsConnection, ConnectError, ConnectionConfig, SendError, connect,
};
use herald_actors::apns::{
    ApnsId, ApnsTlsConfig, AuthError, ClientIdentity, ConnectionAuth, Delivery, DeviceToken,
    Notification, Payload, PreparedRequest, PushType, Reason, Rejection, SigningKey,
    TokenConnectionAuth, TokenMinter,
};
use herald_actors::seams::{Clock, DetRng, ManualClock, SharedClock, TcpConnector, Timestamp};
use herald_sim::emulator::{Emulator, EmulatorConfig, TeamConfig};
use http::HeaderValue;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

pub const TEAM: &str = "TEAM123456";
pub const KEY_ID: &str = "KEY1234567";
pub const BUNDLE: &str = "com.example.app";
pub const START_SECS: u64 = 1_700_000_000;

/// Fail the test instead of hanging it. Bounds are generous: they catch hangs, not
/// slowness.
pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test step timed out")
}

/// Wait (bounded) until `condition` holds.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// A clock that reads another one, shifted ahead (a server whose clock runs fast).
#[derive(Debug, Clone)]
pub struct AheadClock {
    pub base: ManualClock,
    pub ahead: Duration,
}

impl Clock for AheadClock {
    fn now(&self) -> Timestamp {
        self.base.now().saturating_add(self.ahead)
    }
}

/// An emulator (TLS, self-signed) with one team, and what a Herald client needs to use it.
pub struct Env {
    pub emulator: Emulator,
    /// The client's clock (also the emulator's unless started with another one).
    pub clock: ManualClock,
    pub key: SigningKey,
    /// The default minter (30 minutes) on `clock`.
    pub minter: TokenMinter,
    pub tls: Arc<rustls::ClientConfig>,
}

/// An emulator sharing one manual clock (at `START_SECS`) with the client.
pub async fn start(tweak: impl FnOnce(&mut EmulatorConfig)) -> Env {
    let clock = ManualClock::new(Timestamp::from_secs(START_SECS));
    start_with_clocks(clock.clone(), Arc::new(clock), tweak).await
}

/// An emulator on `emulator_clock`, a client on `clock`.
pub async fn start_with_clocks(
    clock: ManualClock,
    emulator_clock: SharedClock,
    tweak: impl FnOnce(&mut EmulatorConfig),
) -> Env {
    let (team, generated) = TeamConfig::generate(TEAM, KEY_ID, &[BUNDLE]).unwrap();
    let mut config = EmulatorConfig {
        teams: vec![team],
        ..EmulatorConfig::default()
    };
    tweak(&mut config);
    let emulator = Emulator::start_with_clock(config, emulator_clock)
        .await
        .unwrap();
    let key = SigningKey::from_p8_pem(generated.p8_pem.as_bytes(), KEY_ID, TEAM).unwrap();
    let minter = TokenMinter::with_default_interval(key.clone(), Arc::new(clock.clone()));
    let tls = trusting(&emulator, None);
    Env {
        emulator,
        clock,
        key,
        minter,
        tls,
    }
}

/// A TLS client config trusting only the emulator's certificate, with an optional client
/// certificate.
pub fn trusting(
    emulator: &Emulator,
    identity: Option<ClientIdentity>,
) -> Arc<rustls::ClientConfig> {
    let ca = emulator.ca_pem().expect("emulator runs TLS");
    let mut builder = ApnsTlsConfig::new();
    builder
        .webpki_roots(false)
        .add_root_certificates_pem(ca.as_bytes());
    if let Some(identity) = identity {
        builder.client_identity(identity);
    }
    builder.build().unwrap()
}

impl Env {
    pub fn client_clock(&self) -> SharedClock {
        Arc::new(self.clock.clone())
    }

    /// A connection config for the emulator, by IP address, with generous bounds.
    pub fn config(&self) -> ConnectionConfig {
        self.config_with(self.tls.clone(), self.emulator.addr().port())
    }

    pub fn config_with(&self, tls: Arc<rustls::ClientConfig>, port: u16) -> ConnectionConfig {
        let server_name = ServerName::from(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut config = ConnectionConfig::new("127.0.0.1", port, Some((tls, server_name)));
        config.connect_timeout = Duration::from_secs(30);
        config.request_timeout = Duration::from_secs(30);
        config.stream_wait_max = Duration::from_secs(60);
        config
    }

    /// A token-auth connection on the default minter.
    pub async fn open(&self) -> ApnsConnection {
        self.open_auth(Box::new(TokenConnectionAuth::new(self.minter.clone())))
            .await
    }

    pub async fn open_auth(&self, auth: Box<dyn ConnectionAuth>) -> ApnsConnection {
        self.try_open(self.config(), auth).await.expect("connect")
    }

    pub async fn try_open(
        &self,
        config: ConnectionConfig,
        auth: Box<dyn ConnectionAuth>,
    ) -> Result<ApnsConnection, ConnectError> {
        let (connection, driver) = within(
            60,
            connect(config, &TcpConnector, auth, self.client_clock()),
        )
        .await?;
        tokio::spawn(driver.run());
        Ok(connection)
    }

    /// How many times each apns-id (lowercase) is in the emulator's record.
    pub fn record_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for n in self.emulator.accepted() {
            *counts.entry(n.apns_id.to_ascii_lowercase()).or_default() += 1;
        }
        counts
    }
}

/// Device token number `i` (64 hex digits).
pub fn device(i: u64) -> DeviceToken {
    DeviceToken::new(&format!("{:064x}", 0xD0D0_0000_u64 + i)).unwrap()
}

/// `n` distinct apns-ids from a seeded RNG.
pub fn apns_ids(n: usize, seed: u64) -> Vec<ApnsId> {
    let mut rng = DetRng::from_seed(seed);
    (0..n).map(|_| ApnsId::random(&mut rng)).collect()
}

/// An alert for `token` on `BUNDLE`, built by Herald's builder.
pub fn notification(token: &DeviceToken, apns_id: Option<ApnsId>) -> Notification {
    notification_for(token, BUNDLE, apns_id)
}

pub fn notification_for(token: &DeviceToken, topic: &str, apns_id: Option<ApnsId>) -> Notification {
    let mut payload = Payload::new();
    payload.alert("Hello from Herald");
    let mut builder = Notification::builder(token.clone(), topic.parse().unwrap(), PushType::Alert);
    builder.payload(&payload);
    if let Some(id) = apns_id {
        builder.apns_id(id);
    }
    builder.build().unwrap()
}

/// The request for a notification with `apns_id`.
pub fn request(token: &DeviceToken, apns_id: ApnsId) -> PreparedRequest {
    notification(token, Some(apns_id)).prepare()
}

/// Send every request concurrently on `connection`; results in input order.
pub async fn send_all(
    connection: &ApnsConnection,
    requests: &[PreparedRequest],
) -> Vec<Result<Delivery, SendError>> {
    let tasks: Vec<_> = requests
        .iter()
        .map(|request| {
            let connection = connection.clone();
            let request = request.clone();
            tokio::spawn(async move { connection.send(&request).await })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(within(120, task).await.expect("send task panicked"));
    }
    results
}

/// Assert an accepted answer echoing `apns_id`.
#[track_caller]
pub fn assert_accepted(result: &Result<Delivery, SendError>, apns_id: &ApnsId) {
    match result {
        Ok(Delivery::Accepted {
            apns_id: Some(echoed),
        }) => {
            assert!(
                echoed.eq_ignore_ascii_case(&apns_id.as_str()),
                "echoed {echoed}, sent {}",
                &*apns_id.as_str()
            );
        }
        other => panic!("expected Accepted({}), got {other:?}", &*apns_id.as_str()),
    }
}

/// Assert a rejection with `reason` and its status, carrying an apns-id; returns it.
#[track_caller]
pub fn assert_rejected(result: Result<Delivery, SendError>, reason: Reason) -> Rejection {
    match result {
        Ok(Delivery::Rejected(rejection)) => {
            assert_eq!(rejection.reason, reason, "{rejection:?}");
            assert_eq!(rejection.status, reason.status(), "{rejection:?}");
            assert!(rejection.apns_id.is_some(), "no apns-id: {rejection:?}");
            rejection
        }
        other => panic!("expected {reason}, got {other:?}"),
    }
}

/// Credentials that present a scripted sequence of `authorization` headers (the last one
/// repeats) and log every rejection the connection reports.
#[derive(Debug)]
pub struct ScriptedAuth {
    team: String,
    headers: Vec<Option<HeaderValue>>,
    next: usize,
    confirmed: bool,
    pub rejections: Arc<Mutex<Vec<Reason>>>,
}

impl ScriptedAuth {
    pub fn new(headers: Vec<Option<HeaderValue>>) -> Self {
        assert!(!headers.is_empty());
        ScriptedAuth {
            team: TEAM.to_owned(),
            headers,
            next: 0,
            confirmed: false,
            rejections: Arc::default(),
        }
    }
}

impl ConnectionAuth for ScriptedAuth {
    fn team_id(&self) -> &str {
        &self.team
    }

    fn authorization(&mut self, _now: Timestamp) -> Result<Option<HeaderValue>, AuthError> {
        let i = self.next.min(self.headers.len() - 1);
        self.next += 1;
        Ok(self.headers[i].clone())
    }

    fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    fn confirm(&mut self) {
        self.confirmed = true;
    }

    fn rejected(&mut self, reason: Reason, _now: Timestamp) {
        self.rejections.lock().unwrap().push(reason);
    }
}

/// One `authorization` header a connection presented, and when.
#[derive(Debug, Clone)]
pub struct Presented {
    pub at: Timestamp,
    pub jwt: String,
}

/// `TokenConnectionAuth` that logs every header it hands out.
#[derive(Debug)]
pub struct RecordingAuth {
    inner: TokenConnectionAuth,
    pub log: Arc<Mutex<Vec<Presented>>>,
}

impl RecordingAuth {
    pub fn new(minter: TokenMinter) -> Self {
        RecordingAuth {
            inner: TokenConnectionAuth::new(minter),
            log: Arc::default(),
        }
    }
}

impl ConnectionAuth for RecordingAuth {
    fn team_id(&self) -> &str {
        self.inner.team_id()
    }

    fn authorization(&mut self, now: Timestamp) -> Result<Option<HeaderValue>, AuthError> {
        let header = self.inner.authorization(now)?;
        if let Some(value) = &header {
            let text = value.to_str().unwrap();
            let jwt = text.strip_prefix("bearer ").unwrap().to_owned();
            self.log.lock().unwrap().push(Presented { at: now, jwt });
        }
        Ok(header)
    }

    fn is_confirmed(&self) -> bool {
        self.inner.is_confirmed()
    }

    fn confirm(&mut self) {
        self.inner.confirm();
    }

    fn rejected(&mut self, reason: Reason, now: Timestamp) {
        self.inner.rejected(reason, now);
    }
}

/// A client-certificate CA (rcgen).
pub struct TestCa {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A client certificate with this subject, loaded as Herald loads Apple's.
    pub fn identity(&self, subject: &[(rcgen::DnType, &str)]) -> ClientIdentity {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ClientIdentity::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
    }
}

/// The X.500 `UID` attribute, where Apple puts the bundle id.
pub fn uid() -> rcgen::DnType {
    rcgen::DnType::CustomDnType(vec![0, 9, 2342, 19_200_300, 100, 1, 1])
}

/// A TCP proxy in front of `upstream` that forwards both ways until `blackhole` is set,
/// then swallows everything in both directions (a peer that is silently gone).
pub struct Proxy {
    pub addr: SocketAddr,
    pub blackhole: Arc<AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blackhole = Arc::new(AtomicBool::new(false));
        let dead = blackhole.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, dead.clone()));
                tokio::spawn(pipe(server_read, client_write, dead.clone()));
            }
        });
        Proxy { addr, blackhole }
    }

    pub fn cut(&self) {
        self.blackhole.store(true, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    blackhole: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
