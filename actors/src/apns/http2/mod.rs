//! One HTTP/2 connection to APNs (h2 over tokio-rustls, or plaintext for simulated links).
//!
//! [`connect`] opens the byte stream through a [`Connector`], runs TLS (checking that ALPN
//! chose `h2`) when configured, and the HTTP/2 handshake, all within the connect timeout.
//! It returns a cloneable handle, [`ApnsConnection`], and a [`ConnectionDriver`] that the
//! owner must spawn: the driver runs the h2 connection, the keepalive PINGs and the
//! lifecycle ([`ConnectionState`]), and resolves to the [`CloseReason`] when it ends.
//! Handles also expose [`ApnsConnection::closed`].
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use herald_actors::apns::{CertificateAuth, PreparedRequest};
//! # use herald_actors::apns::http2::{connect, ConnectionConfig};
//! # use herald_actors::seams::{SystemClock, TcpConnector};
//! # async fn demo(tls: Arc<rustls::ClientConfig>, request: PreparedRequest) {
//! let server_name = rustls::pki_types::ServerName::try_from("api.push.apple.com").unwrap();
//! let config = ConnectionConfig::new("api.push.apple.com", 443, Some((tls, server_name)));
//! let auth = Box::new(CertificateAuth::new("TEAM123456"));
//! let (connection, driver) = connect(config, &TcpConnector, auth, Arc::new(SystemClock))
//!     .await
//!     .expect("connect");
//! tokio::spawn(driver.run());
//! let delivery = connection.send(&request).await;
//! connection.close();
//! let reason = connection.closed().await;
//! # }
//! ```
//!
//! # Streams
//! At most `min(server SETTINGS_MAX_CONCURRENT_STREAMS, config.streams_max)` requests are in
//! flight, following the server's changes; one until the credentials are confirmed
//! ([`ConnectionAuth::is_confirmed`]); before the server's SETTINGS arrive,
//! [`H2_INITIAL_STREAMS`](crate::limits::H2_INITIAL_STREAMS). A request waits at most
//! `stream_wait_max` for a slot.
//!
//! # Failures
//! [`SendError::was_sent`] says whether APNs may have processed a failed request.
//! `RST_STREAM(REFUSED_STREAM)` is resent on the same connection up to
//! [`REFUSED_STREAM_ATTEMPTS_MAX`](crate::limits::REFUSED_STREAM_ATTEMPTS_MAX) attempts.
//! On GOAWAY the connection drains: streams up to the last-stream-id finish, higher ones fail
//! with [`SendError::GoAway`] (not processed), new requests fail with [`SendError::Closed`].
//! A PING unanswered within `ping_timeout` closes the connection with
//! [`CloseReason::PingTimeout`]; requests in flight then fail with
//! [`SendError::ConnectionLost`].
//!
//! # Shutdown
//! [`ApnsConnection::close`] (or dropping every handle) drains: no new requests, in-flight
//! ones finish, then the h2 connection closes. The drain is bounded by `request_timeout +`
//! [`H2_CLOSE_TIMEOUT`](crate::limits::H2_CLOSE_TIMEOUT) ([`CloseReason::DrainTimeout`]),
//! because an h2 client connection can otherwise wait for handles that are never dropped.
//!
//! Timers use `tokio::time` only, so paused time (the simulator) drives them.

mod driver;
mod error;
mod sniff;
mod state;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Uri};
use rustls::pki_types::ServerName;
use tokio::sync::{Notify, watch};
use tracing::Instrument as _;

pub use driver::ConnectionDriver;
pub use error::{ConnectError, SendError};
pub use state::{CloseReason, Confirmation, ConnectionState, DrainCause, GoAwayInfo};

use crate::apns::{ConnectionAuth, Delivery, PreparedRequest, Reason, ResponseError};
use crate::limits;
use crate::seams::{BoxStream, Connector, SharedClock};
use sniff::{FrameSniffer, GoAwaySlot};

/// TLS settings: the client config (ALPN `h2` is added when missing) and the server name.
pub type TlsSettings = (Arc<rustls::ClientConfig>, ServerName<'static>);

/// How to open and run one connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Host to connect to; also the `:authority` of requests.
    pub host: String,
    /// Port (443 or 2197 for APNs).
    pub port: u16,
    /// TLS, or `None` for plaintext HTTP/2 (the simulator's links).
    pub tls: Option<TlsSettings>,
    /// The owner's number for this connection, shown in its tracing span. Default: 0.
    pub number: u64,
    /// The most streams this connection opens, whatever the server allows.
    /// Default: [`H2_STREAMS_MAX`](limits::H2_STREAMS_MAX).
    pub streams_max: usize,
    /// Bound on stream open + TLS + HTTP/2 handshake.
    /// Default: [`CONNECT_TIMEOUT`](limits::CONNECT_TIMEOUT).
    pub connect_timeout: Duration,
    /// Bound on one request, from sending its headers to the end of the answer.
    /// Default: [`REQUEST_TIMEOUT`](limits::REQUEST_TIMEOUT).
    pub request_timeout: Duration,
    /// Bound on waiting for a free stream. Default: [`STREAM_WAIT_MAX`](limits::STREAM_WAIT_MAX).
    pub stream_wait_max: Duration,
    /// Time between keepalive PINGs: the first this long after connecting, each next one
    /// this long after the previous PONG. Default: [`PING_INTERVAL`](limits::PING_INTERVAL).
    pub ping_interval: Duration,
    /// A PING unanswered this long means the peer is dead.
    /// Default: [`PING_TIMEOUT`](limits::PING_TIMEOUT).
    pub ping_timeout: Duration,
}

impl ConnectionConfig {
    /// A config for `host:port` with every bound at its default.
    pub fn new(host: impl Into<String>, port: u16, tls: Option<TlsSettings>) -> Self {
        ConnectionConfig {
            host: host.into(),
            port,
            tls,
            number: 0,
            streams_max: limits::H2_STREAMS_MAX,
            connect_timeout: limits::CONNECT_TIMEOUT,
            request_timeout: limits::REQUEST_TIMEOUT,
            stream_wait_max: limits::STREAM_WAIT_MAX,
            ping_interval: limits::PING_INTERVAL,
            ping_timeout: limits::PING_TIMEOUT,
        }
    }

    fn validate(&self) -> Result<(), ConnectError> {
        let bad = |what: &str| Err(ConnectError::InvalidConfig(what.to_owned()));
        if self.host.is_empty() {
            return bad("host is empty");
        }
        if let Err(e) = self.authority() {
            return bad(&format!(
                "host {:?} is not a valid authority: {e}",
                self.host
            ));
        }
        if self.streams_max == 0 {
            return bad("streams_max is zero");
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("stream_wait_max", self.stream_wait_max),
            ("ping_interval", self.ping_interval),
            ("ping_timeout", self.ping_timeout),
        ] {
            if d.is_zero() {
                return bad(&format!("{name} is zero"));
            }
        }
        Ok(())
    }

    /// The `:authority` of requests: the host, with the port unless it is 443.
    fn authority(&self) -> Result<Authority, http::uri::InvalidUri> {
        if self.port == 443 {
            Authority::try_from(self.host.as_str())
        } else {
            Authority::try_from(format!("{}:{}", self.host, self.port))
        }
    }
}

/// Open a connection: byte stream through `connector`, TLS when `config.tls` is set, then
/// the HTTP/2 handshake, all within `config.connect_timeout`.
///
/// Returns the handle and the driver. The connection makes no progress until the owner
/// runs [`ConnectionDriver::run`] (typically `tokio::spawn(driver.run())`).
pub async fn connect(
    config: ConnectionConfig,
    connector: &dyn Connector,
    auth: Box<dyn ConnectionAuth>,
    clock: SharedClock,
) -> Result<(ApnsConnection, ConnectionDriver), ConnectError> {
    config.validate()?;
    let span = tracing::debug_span!("apns_connection", host = %config.host, number = config.number);
    let timeout = config.connect_timeout;
    let goaway = Arc::new(GoAwaySlot::default());
    let opened = tokio::time::timeout(timeout, establish(&config, connector, goaway.clone()))
        .instrument(span.clone())
        .await;
    let (send_request, connection) = match opened {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            span.in_scope(|| tracing::debug!(error = %e, "connect failed"));
            return Err(e);
        }
        Err(_) => {
            span.in_scope(|| tracing::debug!(?timeout, "connect timed out"));
            return Err(ConnectError::Timeout { after: timeout });
        }
    };
    metrics::counter!("herald_apns_connections_opened_total").increment(1);
    span.in_scope(|| tracing::debug!("connected"));

    let mut state = ConnectionState::Connecting;
    state.on_connected(auth.is_confirmed().into());
    let (state_tx, _) = watch::channel(state.clone());
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            state,
            in_flight: 0,
            server_streams_max: limits::H2_INITIAL_STREAMS,
            send_request: Some(send_request),
            auth,
        }),
        slots: Notify::new(),
        driver_wake: Notify::new(),
        state_tx,
        authority: config.authority().map_err(|e| {
            ConnectError::InvalidConfig(format!(
                "host {:?} is not a valid authority: {e}",
                config.host
            ))
        })?,
        config,
        clock,
        goaway,
        span,
        handles: AtomicUsize::new(0),
    });
    let handle = ApnsConnection::new(shared.clone());
    Ok((handle, ConnectionDriver::new(shared, connection)))
}

async fn establish(
    config: &ConnectionConfig,
    connector: &dyn Connector,
    goaway: Arc<GoAwaySlot>,
) -> Result<(SendRequest<Bytes>, h2::client::Connection<BoxStream, Bytes>), ConnectError> {
    let stream = connector
        .connect(&config.host, config.port)
        .await
        .map_err(|e| ConnectError::Io(e.to_string()))?;
    let stream: BoxStream = match &config.tls {
        None => stream,
        Some((client_config, server_name)) => {
            let client_config = if client_config.alpn_protocols.iter().any(|p| p == b"h2") {
                client_config.clone()
            } else {
                let mut with_alpn = (**client_config).clone();
                with_alpn.alpn_protocols = vec![b"h2".to_vec()];
                Arc::new(with_alpn)
            };
            let tls = tokio_rustls::TlsConnector::from(client_config)
                .connect(server_name.clone(), stream)
                .await
                .map_err(|e| ConnectError::Tls(e.to_string()))?;
            let negotiated = tls.get_ref().1.alpn_protocol();
            if negotiated != Some(b"h2".as_slice()) {
                return Err(ConnectError::AlpnNotH2 {
                    negotiated: negotiated.map(|p| String::from_utf8_lossy(p).into_owned()),
                });
            }
            Box::new(tls)
        }
    };
    let sniffed: BoxStream = Box::new(FrameSniffer::new(stream, goaway));
    h2::client::Builder::new()
        .initial_max_send_streams(limits::H2_INITIAL_STREAMS)
        // h2 times locally reset streams with the wall clock (`std::time::Instant`); keeping
        // none makes a connection's behaviour independent of real time (simulation).
        .max_concurrent_reset_streams(0)
        .enable_push(false)
        .handshake::<_, Bytes>(sniffed)
        .await
        .map_err(|e| ConnectError::Handshake(e.to_string()))
}

/// A cloneable handle to one APNs connection: send requests, watch the state, close.
///
/// When every handle is dropped the connection closes as if [`close`](Self::close) was
/// called.
#[derive(Debug)]
pub struct ApnsConnection {
    shared: Arc<Shared>,
}

impl Clone for ApnsConnection {
    fn clone(&self) -> Self {
        ApnsConnection::new(self.shared.clone())
    }
}

impl Drop for ApnsConnection {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.request_close("every handle dropped");
        }
    }
}

impl ApnsConnection {
    fn new(shared: Arc<Shared>) -> Self {
        shared.handles.fetch_add(1, Ordering::AcqRel);
        ApnsConnection { shared }
    }

    /// Send one request and read APNs' answer.
    ///
    /// Adds `authorization` from the connection's credentials, waits (up to
    /// `stream_wait_max`) for a stream slot, resends on `REFUSED_STREAM`, and bounds the
    /// exchange by `request_timeout`. Reports the answer to the credentials (`confirm` /
    /// `rejected`). A rejection is `Ok(Delivery::Rejected(..))`.
    pub async fn send(&self, request: &PreparedRequest) -> Result<Delivery, SendError> {
        let shared = &*self.shared;
        async move {
            let _permit = shared.acquire_stream().await?;
            let mut attempts = 0;
            loop {
                attempts += 1;
                match shared.attempt(request).await {
                    Ok(delivery) => return Ok(delivery),
                    Err(Attempt::Failed(e)) => return Err(e),
                    Err(Attempt::Refused) => {
                        metrics::counter!("herald_apns_streams_refused_total").increment(1);
                        tracing::debug!(attempts, "stream refused (REFUSED_STREAM)");
                        if attempts >= limits::REFUSED_STREAM_ATTEMPTS_MAX {
                            return Err(SendError::Refused { attempts });
                        }
                    }
                }
            }
        }
        .instrument(self.shared.span.clone())
        .await
    }

    /// The connection's current lifecycle state.
    pub fn state(&self) -> ConnectionState {
        self.shared.lock().state.clone()
    }

    /// Whether the connection takes new requests now (`state().accepts_new_streams()`
    /// without copying the state).
    pub fn accepts_new_streams(&self) -> bool {
        self.shared.lock().state.accepts_new_streams()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }

    /// How many requests may be in flight now (see the module docs).
    pub fn stream_limit(&self) -> usize {
        self.shared
            .lock()
            .stream_limit(self.shared.config.streams_max)
    }

    /// The owner's number for this connection (from the config).
    pub fn number(&self) -> u64 {
        self.shared.config.number
    }

    /// The host this connection talks to.
    pub fn host(&self) -> &str {
        &self.shared.config.host
    }

    /// Begin a graceful close: new requests fail with [`SendError::Closed`], requests in
    /// flight finish, then the connection closes. Returns at once; see [`closed`](Self::closed).
    pub fn close(&self) {
        self.shared.request_close("close requested");
    }

    /// Wait until the connection is closed and return why.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.shared.state_tx.subscribe();
        let result = rx
            .wait_for(ConnectionState::is_closed)
            .await
            .map(|state| match &*state {
                ConnectionState::Closed(reason) => reason.clone(),
                _ => CloseReason::DriverDropped,
            });
        // The sender lives in `Shared`, which this handle keeps alive: the wait cannot
        // fail. Fall back to a plausible reason rather than panic.
        result.unwrap_or(CloseReason::DriverDropped)
    }
}

/// State shared by the handles and the driver.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// Woken when a stream slot may have become free (or the state changed).
    slots: Notify,
    /// Woken when the driver should look at the state again.
    driver_wake: Notify,
    /// The state, published for `closed()`.
    state_tx: watch::Sender<ConnectionState>,
    config: ConnectionConfig,
    /// Parsed once per connection: every request's URI shares it.
    authority: Authority,
    clock: SharedClock,
    goaway: Arc<GoAwaySlot>,
    span: tracing::Span,
    /// Live `ApnsConnection` handles.
    handles: AtomicUsize,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("host", &self.config.host)
            .field("number", &self.config.number)
            .finish_non_exhaustive()
    }
}

struct Inner {
    state: ConnectionState,
    in_flight: usize,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS as h2 last reported it.
    server_streams_max: usize,
    /// Dropped once a draining connection has no stream left, so h2 can close.
    send_request: Option<SendRequest<Bytes>>,
    auth: Box<dyn ConnectionAuth>,
}

impl Inner {
    fn stream_limit(&self, streams_max: usize) -> usize {
        let limit = self
            .state
            .stream_limit(self.server_streams_max, streams_max);
        // The credentials are the authority on confirmation (a token switch unconfirms).
        if self.auth.is_confirmed() {
            limit
        } else {
            limit.min(1)
        }
    }
}

/// How one attempt on a stream ended, when it did not produce a delivery.
enum Attempt {
    /// `RST_STREAM(REFUSED_STREAM)`: not processed, may be resent.
    Refused,
    Failed(SendError),
}

impl From<SendError> for Attempt {
    fn from(e: SendError) -> Self {
        Attempt::Failed(e)
    }
}

/// One of the connection's stream slots; freed on drop.
struct StreamPermit<'a> {
    shared: &'a Shared,
}

impl Drop for StreamPermit<'_> {
    fn drop(&mut self) {
        let draining = {
            let mut inner = self.shared.lock();
            inner.in_flight = inner.in_flight.saturating_sub(1);
            matches!(inner.state, ConnectionState::Draining(_))
        };
        // One slot freed: one waiter takes it (a woken waiter that gives up passes the
        // notification on). State changes wake every waiter, see `Shared::transition`.
        self.shared.slots.notify_one();
        // Only a draining driver waits for the last stream to end; a state change to
        // draining after this point wakes the driver itself.
        if draining {
            self.shared.driver_wake.notify_one();
        }
    }
}

/// What a stream's answer came to.
struct Answer {
    status: u16,
    apns_id: Option<String>,
    body: Result<Vec<u8>, ResponseError>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` consistent before anything that could
        // panic, so a poisoned lock holds usable data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Apply `event` to the state under the lock; publish and wake everyone on a change.
    fn transition(&self, event: impl FnOnce(&mut Inner) -> bool) -> bool {
        let changed = {
            let mut inner = self.lock();
            let changed = event(&mut inner);
            if changed {
                let state = inner.state.clone();
                tracing::debug!(%state, "connection state");
                self.state_tx.send_replace(state);
            }
            changed
        };
        if changed {
            self.slots.notify_waiters();
            self.driver_wake.notify_one();
        }
        changed
    }

    fn request_close(&self, why: &'static str) {
        let _span = self.span.enter();
        if self.transition(|inner| inner.state.on_close_requested()) {
            tracing::debug!(why, "draining");
        }
    }

    fn closed_error(&self, state: &ConnectionState) -> SendError {
        SendError::Closed(state.to_string())
    }

    /// Wait (bounded by `stream_wait_max`) for a stream slot.
    async fn acquire_stream(&self) -> Result<StreamPermit<'_>, SendError> {
        let waited = self.config.stream_wait_max;
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            let notified = self.slots.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                if !inner.state.accepts_new_streams() {
                    return Err(self.closed_error(&inner.state));
                }
                if inner.in_flight < inner.stream_limit(self.config.streams_max) {
                    inner.in_flight += 1;
                    return Ok(StreamPermit { shared: self });
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                metrics::counter!("herald_apns_stream_wait_timeouts_total").increment(1);
                return Err(SendError::StreamWaitTimeout { waited });
            }
        }
    }

    /// One attempt: open a stream, send, read the answer.
    async fn attempt(&self, request: &PreparedRequest) -> Result<Delivery, Attempt> {
        let sender = {
            let inner = self.lock();
            match (&inner.send_request, inner.state.accepts_new_streams()) {
                (Some(sender), true) => sender.clone(),
                _ => return Err(self.closed_error(&inner.state).into()),
            }
        };
        let waited = self.config.stream_wait_max;
        let mut sender = match tokio::time::timeout(waited, sender.ready()).await {
            Err(_) => return Err(SendError::StreamWaitTimeout { waited }.into()),
            Ok(Err(e)) => return Err(self.unsent_error(&e).into()),
            Ok(Ok(sender)) => sender,
        };
        let authorization = self
            .lock()
            .auth
            .authorization(self.clock.now())
            .map_err(SendError::Auth)?;
        let http_request = self.build_request(request, authorization)?;
        let end_of_stream = request.body.is_empty();
        let (response, mut body) = sender
            .send_request(http_request, end_of_stream)
            .map_err(|e| self.unsent_error(&e))?;
        drop(sender);
        let stream_id = response.stream_id().as_u32();
        if !end_of_stream && let Err(e) = body.send_data(request.body.clone(), true) {
            // The stream closed before the body could be queued: the server may have
            // answered from the headers alone and reset the stream or closed the connection
            // (RFC 9113 §8.1 allows an early answer; a client must not discard it). Read
            // the answer; if there is none, its error says why (e.g. REFUSED_STREAM).
            tracing::debug!(stream_id, error = %e, "request body not sent; reading the answer");
        }
        let timeout = self.config.request_timeout;
        let answer = match tokio::time::timeout(timeout, read_answer(response)).await {
            Err(_) => {
                tracing::debug!(stream_id, ?timeout, "request timed out");
                return Err(SendError::Timeout { after: timeout }.into());
            }
            Ok(Err(e)) => return Err(self.stream_error(stream_id, &e)),
            Ok(Ok(answer)) => answer,
        };
        drop(body);
        let parsed = answer
            .body
            .and_then(|body| crate::apns::parse_response(answer.status, answer.apns_id, &body));
        self.credentials_answered(&parsed);
        parsed.map_err(|e| SendError::MalformedResponse(e).into())
    }

    fn build_request(
        &self,
        request: &PreparedRequest,
        authorization: Option<HeaderValue>,
    ) -> Result<Request<()>, SendError> {
        // The scheme is https even on plaintext links: they stand in for TLS.
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTPS);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = Some(
            PathAndQuery::try_from(request.path.as_str())
                .map_err(|e| SendError::InvalidRequest(e.to_string()))?,
        );
        let uri = Uri::from_parts(uri).map_err(|e| SendError::InvalidRequest(e.to_string()))?;
        let mut http_request = Request::new(());
        *http_request.method_mut() = Method::POST;
        *http_request.uri_mut() = uri;
        let headers = http_request.headers_mut();
        *headers = request.headers.clone();
        if let Some(value) = authorization {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        Ok(http_request)
    }

    /// Tell the credentials how APNs answered, and follow their confirmation.
    fn credentials_answered(&self, parsed: &Result<Delivery, ResponseError>) {
        self.transition(|inner| {
            match parsed {
                Ok(Delivery::Rejected(r))
                    if r.status == 403 || r.reason == Reason::TooManyProviderTokenUpdates =>
                {
                    inner.auth.rejected(r.reason, self.clock.now());
                }
                Ok(_) => inner.auth.confirm(),
                Err(
                    ResponseError::MalformedBody { status, .. }
                    | ResponseError::UnknownReason { status, .. },
                ) if *status != 403 && *status != 429 => inner.auth.confirm(),
                Err(_) => {}
            }
            let confirmation = inner.auth.is_confirmed().into();
            inner.state.on_confirmation(confirmation)
        });
    }

    /// The request never left: classify an error from `ready()` / `send_request`.
    fn unsent_error(&self, e: &h2::Error) -> SendError {
        match self.goaway.get() {
            Some(info) => SendError::GoAway(info),
            None => {
                let state = self.lock().state.clone();
                if state.accepts_new_streams() {
                    SendError::Closed(e.to_string())
                } else {
                    self.closed_error(&state)
                }
            }
        }
    }

    /// A stream failed after its headers were handed to h2.
    fn stream_error(&self, stream_id: u32, e: &h2::Error) -> Attempt {
        if let Some(info) = self.goaway.get()
            && info.was_unprocessed(stream_id)
        {
            tracing::debug!(stream_id, goaway = %info, "stream not processed before GOAWAY");
            return SendError::GoAway(info).into();
        }
        if e.is_remote() && e.is_reset() {
            return match e.reason() {
                Some(h2::Reason::REFUSED_STREAM) => Attempt::Refused,
                Some(reason) => SendError::StreamReset(format!("{reason:?}")).into(),
                None => SendError::StreamReset(e.to_string()).into(),
            };
        }
        if e.is_remote() && e.is_go_away() {
            // h2 fails a stream with the peer's GOAWAY only when its id is above the
            // last-stream-id; the sniffer normally saw the frame first.
            let info = GoAwayInfo::new(0, e.reason().map_or(0, u32::from), b"");
            return SendError::GoAway(info).into();
        }
        let state = self.lock().state.clone();
        let detail = match state {
            ConnectionState::Closed(reason) => reason.to_string(),
            _ => e.to_string(),
        };
        SendError::ConnectionLost(detail).into()
    }
}

/// Await the response head and read the body, bounded by `RESPONSE_BODY_BYTES_MAX`,
/// releasing flow-control capacity as it goes.
async fn read_answer(response: ResponseFuture) -> Result<Answer, h2::Error> {
    let response = response.await?;
    let status = response.status().as_u16();
    let apns_id = response
        .headers()
        .get(crate::apns::headers::APNS_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut stream = response.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = stream.data().await {
        let chunk = chunk?;
        // Releasing can only fail for capacity not held; nothing to recover.
        let _ = stream.flow_control().release_capacity(chunk.len());
        if body.len() + chunk.len() > limits::RESPONSE_BODY_BYTES_MAX {
            // Dropping `stream` resets the stream (CANCEL); the answer is unusable.
            return Ok(Answer {
                status,
                apns_id,
                body: Err(ResponseError::MalformedBody {
                    status,
                    detail: format!("body exceeds {} bytes", limits::RESPONSE_BODY_BYTES_MAX),
                }),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        apns_id,
        body: Ok(body),
    })
}
