//! Test support: a small scriptable HTTP/2 server (h2 over TLS with an rcgen certificate,
//! or plaintext), a raw-frame server for misbehaviour h2 cannot produce, and fakes.
#![allow(dead_code, unreachable_pub)]

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use herald_actors::apns::http2::{ConnectionConfig, TlsSettings};
use herald_actors::apns::{AuthError, ConnectionAuth, PreparedRequest, Reason};
use herald_actors::seams::{BoxFuture, BoxStream, Connector, Timestamp};

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer with `status` and `body` after `delay`.
    Answer {
        status: u16,
        body: Bytes,
        delay: Duration,
    },
    /// `RST_STREAM(REFUSED_STREAM)`: not processed.
    Refuse,
    /// Never answer.
    Hang,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Answer {
            status: 200,
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn ok_after(delay: Duration) -> Reply {
        Reply::Answer {
            status: 200,
            body: Bytes::new(),
            delay,
        }
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Order of arrival on the server (all connections), from 0.
    pub index: usize,
    pub headers: HeaderMap,
    pub path: String,
    pub body: Vec<u8>,
}

pub type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// What the server does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Serve requests.
    Normal,
    /// After accepting `k` streams, `graceful_shutdown()` (GOAWAY, PING, final GOAWAY).
    GracefulGoAwayAfter(usize),
    /// After accepting `k` streams, `abrupt_shutdown(NO_ERROR)`.
    AbruptGoAwayAfter(usize),
    /// Complete the handshakes, then never read or write again (a dead peer).
    DeadAfterHandshake,
    /// Accept TCP and never answer the TLS handshake.
    NeverHandshake,
}

pub struct ServerOptions {
    pub tls: bool,
    pub alpn_h2: bool,
    pub max_concurrent_streams: Option<u32>,
    pub script: Script,
    pub handler: Handler,
}

impl ServerOptions {
    pub fn new(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        ServerOptions {
            tls: true,
            alpn_h2: true,
            max_concurrent_streams: Some(100),
            script: Script::Normal,
            handler: Arc::new(handler),
        }
    }
}

/// What the server observed.
#[derive(Debug, Default)]
pub struct Stats {
    /// Streams accepted (handed to the handler), all connections.
    pub accepted: AtomicUsize,
    /// Streams open now / at most.
    pub current: AtomicUsize,
    pub max_concurrent: AtomicUsize,
    /// Answers sent (incremented just before the response goes out).
    pub answered: AtomicUsize,
    /// Most streams open at once before the first answer went out.
    pub max_concurrent_before_first_answer: AtomicUsize,
    /// `apns-id` of every processed request (accepted and not refused), in order.
    pub processed: Mutex<Vec<String>>,
    /// Every request seen.
    pub seen: Mutex<Vec<Seen>>,
}

impl Stats {
    pub fn processed_ids(&self) -> Vec<String> {
        self.processed.lock().unwrap().clone()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    cert: CertificateDer<'static>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(options: ServerOptions) -> TestServer {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert: CertificateDer<'static> = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let mut server_config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        if options.alpn_h2 {
            server_config.alpn_protocols = vec![b"h2".to_vec()];
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let options = Arc::new(options);
        let task = {
            let stats = stats.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    tokio::spawn(serve_connection(
                        tcp,
                        acceptor.clone(),
                        options.clone(),
                        stats.clone(),
                    ));
                }
            })
        };
        TestServer {
            addr,
            stats,
            cert,
            task,
        }
    }

    /// Client TLS settings trusting this server's certificate.
    pub fn client_tls(&self) -> TlsSettings {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        (Arc::new(config), ServerName::try_from("localhost").unwrap())
    }

    /// A client config for this server (TLS), with short test bounds.
    pub fn config(&self) -> ConnectionConfig {
        let mut config =
            ConnectionConfig::new("127.0.0.1", self.addr.port(), Some(self.client_tls()));
        short_bounds(&mut config);
        config
    }

    /// A plaintext client config for this server.
    pub fn plain_config(&self) -> ConnectionConfig {
        let mut config = ConnectionConfig::new("127.0.0.1", self.addr.port(), None);
        short_bounds(&mut config);
        config
    }
}

pub fn short_bounds(config: &mut ConnectionConfig) {
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(2);
    config.stream_wait_max = Duration::from_secs(2);
    config.ping_interval = Duration::from_secs(10);
    config.ping_timeout = Duration::from_secs(5);
}

async fn serve_connection(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    options: Arc<ServerOptions>,
    stats: Arc<Stats>,
) {
    if options.script == Script::NeverHandshake {
        let _held = tcp;
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }
    if options.tls {
        let Ok(tls) = acceptor.accept(tcp).await else {
            return;
        };
        serve_h2(tls, options, stats).await;
    } else {
        serve_h2(tcp, options, stats).await;
    }
}

/// HTTP/2 (no TLS) over any byte stream.
async fn serve_h2<T>(io: T, options: Arc<ServerOptions>, stats: Arc<Stats>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    if let Some(max) = options.max_concurrent_streams {
        builder.max_concurrent_streams(max);
    }
    let Ok(conn) = builder.handshake::<_, Bytes>(io).await else {
        return;
    };
    run_h2(conn, options, stats).await;
}

/// A [`Connector`] whose streams are in-memory pipes to an in-process h2 server
/// (plaintext): the shape of the simulator's links, usable under paused time.
pub struct DuplexConnector {
    pub options: Arc<ServerOptions>,
    pub stats: Arc<Stats>,
}

impl std::fmt::Debug for DuplexConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DuplexConnector")
    }
}

impl DuplexConnector {
    pub fn new(options: ServerOptions) -> DuplexConnector {
        DuplexConnector {
            options: Arc::new(options),
            stats: Arc::new(Stats::default()),
        }
    }
}

impl Connector for DuplexConnector {
    fn connect<'a>(&'a self, _host: &'a str, _port: u16) -> BoxFuture<'a, io::Result<BoxStream>> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve_h2(server, self.options.clone(), self.stats.clone()));
        Box::pin(async move { Ok(Box::new(client) as BoxStream) })
    }
}

async fn run_h2<T>(
    mut conn: h2::server::Connection<T, Bytes>,
    options: Arc<ServerOptions>,
    stats: Arc<Stats>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if options.script == Script::DeadAfterHandshake {
        // Hold the connection without polling it: nothing is read or answered.
        let _held = conn;
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        return;
    }
    let mut accepted_here = 0;
    while let Some(next) = conn.accept().await {
        let Ok((request, respond)) = next else {
            return;
        };
        accepted_here += 1;
        tokio::spawn(handle_stream(
            request,
            respond,
            options.handler.clone(),
            stats.clone(),
        ));
        match options.script {
            Script::GracefulGoAwayAfter(k) if accepted_here == k => conn.graceful_shutdown(),
            Script::AbruptGoAwayAfter(k) if accepted_here == k => {
                conn.abrupt_shutdown(h2::Reason::NO_ERROR)
            }
            _ => {}
        }
    }
}

async fn handle_stream(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    handler: Handler,
    stats: Arc<Stats>,
) {
    let current = stats.current.fetch_add(1, Ordering::SeqCst) + 1;
    stats.max_concurrent.fetch_max(current, Ordering::SeqCst);
    if stats.answered.load(Ordering::SeqCst) == 0 {
        stats
            .max_concurrent_before_first_answer
            .fetch_max(current, Ordering::SeqCst);
    }
    let index = stats.accepted.fetch_add(1, Ordering::SeqCst);
    let (parts, mut body) = request.into_parts();
    let mut data = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let seen = Seen {
        index,
        headers: parts.headers.clone(),
        path: parts.uri.path().to_owned(),
        body: data,
    };
    stats.seen.lock().unwrap().push(seen.clone());
    let reply = handler(&seen);
    let apns_id = parts
        .headers
        .get("apns-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match reply {
        Reply::Refuse => {
            stats.current.fetch_sub(1, Ordering::SeqCst);
            respond.send_reset(h2::Reason::REFUSED_STREAM);
        }
        Reply::Hang => {
            stats.processed.lock().unwrap().push(apns_id);
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(respond);
        }
        Reply::Answer {
            status,
            body,
            delay,
        } => {
            stats.processed.lock().unwrap().push(apns_id.clone());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut response = Response::builder().status(status);
            if !apns_id.is_empty() {
                response = response.header("apns-id", apns_id);
            }
            let response = response.body(()).unwrap();
            stats.current.fetch_sub(1, Ordering::SeqCst);
            stats.answered.fetch_add(1, Ordering::SeqCst);
            let end = body.is_empty();
            if let Ok(mut stream) = respond.send_response(response, end)
                && !end
            {
                let _ = stream.send_data(body, true);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw frames: for behaviour h2's server cannot produce (GOAWAY debug data, bad frames,
// SETTINGS changes mid-connection). Plaintext only.

pub const FRAME_DATA: u8 = 0x0;
pub const FRAME_HEADERS: u8 = 0x1;
pub const FRAME_SETTINGS: u8 = 0x4;
pub const FRAME_PING: u8 = 0x6;
pub const FRAME_GOAWAY: u8 = 0x7;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn settings_max_streams(max: u32) -> Vec<u8> {
    let mut payload = vec![0x0, 0x3];
    payload.extend_from_slice(&max.to_be_bytes());
    frame(FRAME_SETTINGS, 0, 0, &payload)
}

pub fn go_away(last: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let mut payload = last.to_be_bytes().to_vec();
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(debug);
    frame(FRAME_GOAWAY, 0, 0, &payload)
}

/// A `:status 200` HEADERS frame ending the stream (HPACK static index 8).
pub fn ok_headers(stream: u32) -> Vec<u8> {
    frame(
        FRAME_HEADERS,
        FLAG_END_HEADERS | FLAG_END_STREAM,
        stream,
        &[0x88],
    )
}

pub struct RawFrame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> io::Result<RawFrame> {
    let mut header = [0u8; 9];
    r.read_exact(&mut header).await?;
    let len =
        (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await?;
    Ok(RawFrame {
        kind: header[3],
        flags: header[4],
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// A plaintext listener whose every connection is handed to `script` after the client
/// preface was read and an empty SETTINGS frame sent.
pub async fn raw_server<F, Fut>(script: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut preface = [0u8; 24];
            if tcp.read_exact(&mut preface).await.is_err() || preface != PREFACE {
                continue;
            }
            tokio::spawn(script(tcp));
        }
    });
    (addr, task)
}

pub async fn write(tcp: &mut TcpStream, bytes: &[u8]) {
    let _ = tcp.write_all(bytes).await;
}

// ---------------------------------------------------------------------------------------
// Fakes.

/// Token auth with a fixed token; unconfirmed until told (or until the first answer).
#[derive(Debug, Clone)]
pub struct FakeAuth {
    pub confirmed: Arc<AtomicBool>,
    pub confirms: Arc<AtomicUsize>,
    pub rejections: Arc<Mutex<Vec<Reason>>>,
}

impl FakeAuth {
    pub fn new(confirmed: bool) -> FakeAuth {
        FakeAuth {
            confirmed: Arc::new(AtomicBool::new(confirmed)),
            confirms: Arc::new(AtomicUsize::new(0)),
            rejections: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl ConnectionAuth for FakeAuth {
    fn team_id(&self) -> &str {
        "TEAM123456"
    }

    fn authorization(&mut self, _now: Timestamp) -> Result<Option<HeaderValue>, AuthError> {
        Ok(Some(HeaderValue::from_static("bearer fixed.test.token")))
    }

    fn is_confirmed(&self) -> bool {
        self.confirmed.load(Ordering::SeqCst)
    }

    fn confirm(&mut self) {
        self.confirms.fetch_add(1, Ordering::SeqCst);
        self.confirmed.store(true, Ordering::SeqCst);
    }

    fn rejected(&mut self, reason: Reason, _now: Timestamp) {
        self.rejections.lock().unwrap().push(reason);
        self.confirmed.store(false, Ordering::SeqCst);
    }
}

/// A request whose `apns-id` is `id` (the server records it).
pub fn request(id: &str) -> PreparedRequest {
    let mut headers = HeaderMap::new();
    headers.insert("apns-topic", HeaderValue::from_static("com.example.app"));
    headers.insert("apns-push-type", HeaderValue::from_static("alert"));
    headers.insert("apns-id", HeaderValue::from_str(id).unwrap());
    PreparedRequest {
        path: "/3/device/00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0".into(),
        headers,
        body: Bytes::from_static(br#"{"aps":{"alert":"hi"}}"#),
    }
}
