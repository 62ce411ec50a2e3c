//! The listener and the HTTP/2 connections: accept, TLS, h2 server, one task per stream.
//!
//! Each connection runs one loop that accepts streams (drawing each stream's fault plan
//! in accept order, so answers are deterministic for a seed), sends GOAWAY when a fault,
//! a settings change or shutdown asks for it, and spawns a task per stream that reads the
//! body, decides the answer and sends it after the planned delay.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::faults::StreamPlan;
use super::{Answer, CertIdentity, ConnCounters, ConnCtx, Counted, RequestView, Shared, tls};
use herald_actors::apns::Reason;
use herald_actors::limits::PAYLOAD_VOIP_BYTES_MAX;

/// TLS plus HTTP/2 handshake deadline for a new connection.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request bodies are read up to this size; a larger body is answered 413 at once.
pub(crate) const BODY_READ_MAX: usize = 64 * 1024;
/// How long shutdown waits for connections to finish after GOAWAY.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const _: () = assert!(PAYLOAD_VOIP_BYTES_MAX < BODY_READ_MAX);

/// Accept TCP connections until shutdown; each gets TLS (if configured) and HTTP/2.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "emulator accept failed");
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    match acceptor {
                        None => serve_h2(shared, tcp, None, shutdown).await,
                        Some(acceptor) => {
                            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "emulator TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            };
                            let identity = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|cert| tls::identity_of(cert.as_ref()).unwrap_or_default());
                            serve_h2(shared, tls, identity, shutdown).await;
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
}

/// Serve one HTTP/2 connection until it closes, shutdown is signalled, or a fault drops it.
pub(crate) async fn serve_h2<S>(
    shared: Arc<Shared>,
    io: S,
    identity: Option<CertIdentity>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut settings = shared.settings_tx.subscribe();
    let limit = *settings.borrow_and_update();
    let counters = shared.register_connection(limit);
    run_connection(
        &shared,
        io,
        identity,
        &mut shutdown,
        &mut settings,
        &counters,
    )
    .await;
    shared.close_connection(&counters);
}

async fn run_connection<S>(
    shared: &Arc<Shared>,
    io: S,
    identity: Option<CertIdentity>,
    shutdown: &mut watch::Receiver<bool>,
    settings: &mut watch::Receiver<u32>,
    counters: &Arc<ConnCounters>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = Sniffer::new(io, counters.clone());
    let mut builder = h2::server::Builder::new();
    builder.max_concurrent_streams(counters.max_concurrent_streams);
    let mut conn =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, builder.handshake::<_, Bytes>(io)).await {
            Ok(Ok(conn)) => conn,
            _ => return,
        };
    let ctx = Arc::new(ConnCtx {
        id: counters.id,
        identity,
        tokens: Default::default(),
    });
    let profile = shared.fault_profile();
    let goaway_at = profile
        .goaway_every_ms
        .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms.max(1))));
    let goaway_timer = tokio::time::sleep_until(goaway_at.unwrap_or_else(Instant::now));
    tokio::pin!(goaway_timer);
    let mut timer_armed = goaway_at.is_some();
    let mut streams: u64 = 0;
    let mut closing = false;
    let mut last_activity = Instant::now();
    let mut tasks = JoinSet::new();
    let go_away = |conn: &mut h2::server::Connection<_, Bytes>,
                   closing: &mut bool,
                   reason: Option<Reason>| {
        if !*closing {
            *closing = true;
            *counters
                .goaway_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = reason;
            conn.graceful_shutdown();
            shared.count(Counted::GoAway);
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed(), if !closing => {
                go_away(&mut conn, &mut closing, Some(Reason::Shutdown));
            }
            // A new stream limit: no reason, the client just reconnects.
            _ = settings.changed(), if !closing => go_away(&mut conn, &mut closing, None),
            _ = &mut goaway_timer, if timer_armed && !closing => {
                timer_armed = false;
                go_away(&mut conn, &mut closing, Some(Reason::Shutdown));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            next = conn.accept() => {
                let (request, mut respond) = match next {
                    Some(Ok(x)) => x,
                    Some(Err(e)) => {
                        tracing::debug!(connection = counters.id, error = %e, "emulator connection error");
                        break;
                    }
                    None => break,
                };
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                let plan = shared.plan_stream();
                if plan.drop_connection {
                    shared.count(Counted::Dropped);
                    return; // dropping `conn` closes the transport without GOAWAY
                }
                if plan.refuse {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    shared.count(Counted::Refused);
                    continue;
                }
                let profile = shared.fault_profile();
                let idle = profile
                    .idle_timeout_ms
                    .is_some_and(|ms| last_activity.elapsed() > Duration::from_millis(ms));
                last_activity = Instant::now();
                if idle {
                    let apns_id = plan.generated_id.hyphenated().to_string().to_uppercase();
                    let answer = shared.reject(Reason::IdleTimeout, None, apns_id);
                    tasks.spawn(send_answer(respond, answer, Duration::ZERO));
                    go_away(&mut conn, &mut closing, Some(Reason::IdleTimeout));
                    continue;
                }
                streams += 1;
                tasks.spawn(handle_stream(shared.clone(), ctx.clone(), request, respond, plan));
                if profile.goaway_after_streams.is_some_and(|n| streams >= n) {
                    go_away(&mut conn, &mut closing, Some(Reason::Shutdown));
                }
            }
        }
    }
    // The connection is closed: in-flight stream tasks cannot answer any more.
    tasks.abort_all();
}

async fn handle_stream(
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    request: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    plan: StreamPlan,
) {
    let (parts, mut body) = request.into_parts();
    let mut data = Vec::new();
    let mut len = 0usize;
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        len += chunk.len();
        if len > BODY_READ_MAX {
            break;
        }
        data.extend_from_slice(&chunk);
    }
    let view = RequestView {
        method: &parts.method,
        path: parts.uri.path(),
        headers: &parts.headers,
        body: &data,
        body_len: len,
    };
    let answer = shared.answer(&ctx, &view, &plan);
    send_answer(respond, answer, plan.delay).await;
}

async fn send_answer(
    mut respond: h2::server::SendResponse<Bytes>,
    answer: Answer,
    delay: Duration,
) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut builder = Response::builder()
        .status(answer.status)
        .header("apns-id", answer.apns_id.as_str());
    if let Some(unique) = &answer.unique_id {
        builder = builder.header("apns-unique-id", unique.as_str());
    }
    if !answer.body.is_empty() {
        builder = builder.header("content-type", "application/json");
    }
    let Ok(response) = builder.body(()) else {
        return;
    };
    let end = answer.body.is_empty();
    match respond.send_response(response, end) {
        Ok(mut send) if !end => {
            let _ = send.send_data(answer.body, true);
        }
        _ => {}
    }
}

/// A transport wrapper that reads HTTP/2 frame headers in both directions to count
/// streams on the wire: how many were open at once, and how many the client opened
/// beyond the advertised `SETTINGS_MAX_CONCURRENT_STREAMS` once it had acknowledged it.
///
/// It also adds APNs-style JSON debug data (`{"reason":"Shutdown"}`) to the GOAWAY frames
/// h2 writes, which h2's server API cannot do: outgoing bytes are copied into `pending`
/// with GOAWAY frames lengthened, and `pending` is written out before anything else.
#[derive(Debug)]
struct Sniffer<S> {
    inner: S,
    pending: Vec<u8>,
    /// Debug data still to append once the current GOAWAY frame's payload has passed.
    trailer: Option<Vec<u8>>,
    counters: Arc<ConnCounters>,
    client: FrameReader,
    server: FrameReader,
    /// Stream id → (client finished sending, server finished sending).
    open: std::collections::BTreeMap<u32, (bool, bool)>,
    last_client_stream: u32,
    settings_acked: bool,
    goaway_sent: bool,
}

const CLIENT_PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
/// A GOAWAY without debug data: last stream id and error code.
const GOAWAY_PAYLOAD_LEN: usize = 8;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;

/// Incremental parser of frame headers in one direction.
#[derive(Debug)]
struct FrameReader {
    skip: usize,
    header: [u8; FRAME_HEADER_LEN],
    filled: usize,
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameReader {
    fn new(preface: usize) -> Self {
        FrameReader {
            skip: preface,
            header: [0; FRAME_HEADER_LEN],
            filled: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(FrameHeader)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == FRAME_HEADER_LEN {
                let h = self.header;
                self.filled = 0;
                self.skip =
                    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7FFF_FFFF;
                on_frame(FrameHeader {
                    kind: h[3],
                    flags: h[4],
                    stream,
                });
            }
        }
    }
}

impl<S> Sniffer<S> {
    fn new(inner: S, counters: Arc<ConnCounters>) -> Self {
        Sniffer {
            inner,
            pending: Vec::new(),
            trailer: None,
            counters,
            client: FrameReader::new(CLIENT_PREFACE_LEN),
            server: FrameReader::new(0),
            open: Default::default(),
            last_client_stream: 0,
            settings_acked: false,
            goaway_sent: false,
        }
    }

    fn client_frame(&mut self, f: FrameHeader) {
        match f.kind {
            FRAME_SETTINGS if f.flags & FLAG_ACK != 0 => self.settings_acked = true,
            FRAME_HEADERS if f.stream > self.last_client_stream => {
                self.last_client_stream = f.stream;
                let c = &self.counters;
                c.opened.fetch_add(1, Ordering::Relaxed);
                if self.settings_acked
                    && !self.goaway_sent
                    && self.open.len() >= c.max_concurrent_streams as usize
                {
                    c.violations.fetch_add(1, Ordering::Relaxed);
                }
                let done = f.flags & FLAG_END_STREAM != 0;
                self.open.insert(f.stream, (done, false));
                c.max_seen
                    .fetch_max(self.open.len() as u64, Ordering::Relaxed);
            }
            FRAME_HEADERS | FRAME_DATA if f.flags & FLAG_END_STREAM != 0 => {
                self.half_close(f.stream, true);
            }
            FRAME_RST_STREAM => {
                self.open.remove(&f.stream);
            }
            _ => {}
        }
    }

    fn server_frame(&mut self, f: FrameHeader) {
        match f.kind {
            FRAME_GOAWAY => self.goaway_sent = true,
            FRAME_HEADERS | FRAME_DATA if f.flags & FLAG_END_STREAM != 0 => {
                self.half_close(f.stream, false);
            }
            FRAME_RST_STREAM => {
                self.open.remove(&f.stream);
            }
            _ => {}
        }
    }

    fn half_close(&mut self, stream: u32, client: bool) {
        if let Some(state) = self.open.get_mut(&stream) {
            if client {
                state.0 = true;
            } else {
                state.1 = true;
            }
            if state.0 && state.1 {
                self.open.remove(&stream);
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffer<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let mut frames = Vec::new();
            this.client
                .feed(&buf.filled()[before..], |f| frames.push(f));
            for f in frames {
                this.client_frame(f);
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> Sniffer<S> {
    /// Write out `pending`; Ready once it is empty.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Copy outgoing bytes into `pending`, parsing frames and extending GOAWAY frames.
    fn transform(&mut self, mut bytes: &[u8]) {
        let mut frames = Vec::new();
        let reader = &mut self.server;
        while !bytes.is_empty() {
            if reader.skip > 0 {
                let n = reader.skip.min(bytes.len());
                self.pending.extend_from_slice(&bytes[..n]);
                reader.skip -= n;
                bytes = &bytes[n..];
                if reader.skip == 0
                    && let Some(trailer) = self.trailer.take()
                {
                    self.pending.extend_from_slice(&trailer);
                }
                continue;
            }
            let n = (FRAME_HEADER_LEN - reader.filled).min(bytes.len());
            reader.header[reader.filled..reader.filled + n].copy_from_slice(&bytes[..n]);
            reader.filled += n;
            bytes = &bytes[n..];
            if reader.filled < FRAME_HEADER_LEN {
                continue;
            }
            reader.filled = 0;
            let mut h = reader.header;
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let kind = h[3];
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7FFF_FFFF;
            let mut trailer = None;
            if kind == FRAME_GOAWAY && len == GOAWAY_PAYLOAD_LEN {
                let reason = *self
                    .counters
                    .goaway_reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(reason) = reason {
                    let data = serde_json::json!({ "reason": reason.as_str() }).to_string();
                    let new_len = len + data.len();
                    h[0] = (new_len >> 16) as u8;
                    h[1] = (new_len >> 8) as u8;
                    h[2] = new_len as u8;
                    trailer = Some(data.into_bytes());
                }
            }
            self.pending.extend_from_slice(&h);
            reader.skip = len;
            if len == 0 {
                if let Some(t) = trailer {
                    self.pending.extend_from_slice(&t);
                }
            } else {
                self.trailer = trailer;
            }
            frames.push(FrameHeader {
                kind,
                flags: h[4],
                stream,
            });
        }
        for f in frames {
            self.server_frame(f);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffer<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        // Take new bytes only once the previous ones are out: at most one write is buffered.
        std::task::ready!(this.poll_pending(cx))?;
        this.transform(buf);
        // Start writing now; whatever is left goes out on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
