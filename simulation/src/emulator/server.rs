//! The listener and the HTTP/2 connections: accept, TLS, h2 server, streams answered
//! inline or by a task each.
//!
//! Each connection runs one loop that accepts streams (drawing each stream's fault plan
//! in accept order, so answers are deterministic for a seed) and sends GOAWAY when a fault,
//! a settings change or shutdown asks for it. A stream whose body has fully arrived and
//! whose plan has no delay is answered in the loop; the answers to all streams ready at
//! once are handed to h2 together, so it writes them in one flush. Any other stream gets
//! a task that reads the body, decides the answer and sends it after the planned delay.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
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
    let counters = shared.register_connection(limit, identity.is_none());
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
    // h2 times locally reset streams with the wall clock (`std::time::Instant`): keeping none
    // makes a simulated run independent of how fast it runs (see docs/simulation.md).
    builder.max_concurrent_reset_streams(0);
    let mut conn =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, builder.handshake::<_, Bytes>(io)).await {
            Ok(Ok(conn)) => conn,
            _ => return,
        };
    let ctx = Arc::new(ConnCtx {
        id: counters.id,
        identity,
        tokens: Default::default(),
        counters: counters.clone(),
    });
    let goaway_at = shared
        .fault_profile()
        .goaway_every_ms
        .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms.max(1))));
    let goaway_timer = tokio::time::sleep_until(goaway_at.unwrap_or_else(Instant::now));
    tokio::pin!(goaway_timer);
    let mut timer_armed = goaway_at.is_some();
    let mut streams: u64 = 0;
    let mut closing = false;
    let mut last_activity = Instant::now();
    let mut tasks = JoinSet::new();
    // Answers decided in this loop, sent together once no further stream is ready so that
    // h2 writes them out in one flush rather than one write per response.
    let mut ready: Vec<(h2::server::SendResponse<Bytes>, Answer)> = Vec::new();
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
    'connection: loop {
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
                let mut next = next;
                // Take every stream that is ready now, then send the answers decided inline.
                loop {
                    let (request, mut respond) = match next {
                        Some(Ok(x)) => x,
                        Some(Err(e)) => {
                            tracing::debug!(connection = counters.id, error = %e, "emulator connection error");
                            break 'connection;
                        }
                        None => break 'connection,
                    };
                    'stream: {
                        counters.accepted.fetch_add(1, Ordering::Relaxed);
                        let plan = shared.plan_stream();
                        if plan.drop_connection {
                            shared.count(Counted::Dropped);
                            return; // dropping `conn` closes the transport without GOAWAY
                        }
                        if plan.refuse {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            shared.count(Counted::Refused);
                            break 'stream;
                        }
                        let idle = plan
                            .idle_timeout_ms
                            .is_some_and(|ms| last_activity.elapsed() > Duration::from_millis(ms));
                        last_activity = Instant::now();
                        if idle {
                            let apns_id = super::upper_uuid(plan.generated_id);
                            let answer = shared.reject(Reason::IdleTimeout, None, apns_id);
                            ready.push((respond, answer));
                            go_away(&mut conn, &mut closing, Some(Reason::IdleTimeout));
                            break 'stream;
                        }
                        streams += 1;
                        let (parts, mut body) = request.into_parts();
                        let mut read = BodyRead::default();
                        if plan.delay.is_zero() {
                            match read.now(&mut body) {
                                BodyNow::Complete => {
                                    let answer = shared.answer(&ctx, &read.view(&parts), &plan);
                                    ready.push((respond, answer));
                                }
                                BodyNow::Failed => {}
                                BodyNow::Pending => {
                                    tasks.spawn(handle_stream(shared.clone(), ctx.clone(), parts, body, read, respond, plan));
                                }
                            }
                        } else {
                            tasks.spawn(handle_stream(shared.clone(), ctx.clone(), parts, body, read, respond, plan));
                        }
                        if plan.goaway_after_streams.is_some_and(|n| streams >= n) {
                            go_away(&mut conn, &mut closing, Some(Reason::Shutdown));
                        }
                    }
                    match poll_now(conn.accept()) {
                        Some(n) => next = n,
                        None => break,
                    }
                }
                for (respond, answer) in ready.drain(..) {
                    respond_now(respond, answer, counters);
                }
            }
        }
    }
    // The connection is closed: in-flight stream tasks cannot answer any more.
    tasks.abort_all();
}

/// Poll a future once, without a waker to be woken by: its output if it is ready now.
fn poll_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// A request body read so far (up to [`BODY_READ_MAX`] bytes kept, every byte counted).
#[derive(Debug, Default)]
struct BodyRead {
    data: Vec<u8>,
    len: usize,
    /// Past [`BODY_READ_MAX`]: the rest is not read.
    full: bool,
}

enum BodyNow {
    Complete,
    Pending,
    Failed,
}

impl BodyRead {
    /// Take one chunk; false once no more is wanted.
    fn take(&mut self, body: &mut h2::RecvStream, chunk: Bytes) -> bool {
        let _ = body.flow_control().release_capacity(chunk.len());
        self.len += chunk.len();
        if self.len > BODY_READ_MAX {
            self.full = true;
            return false;
        }
        self.data.extend_from_slice(&chunk);
        true
    }

    /// Read whatever has already arrived.
    fn now(&mut self, body: &mut h2::RecvStream) -> BodyNow {
        while !self.full {
            match poll_now(body.data()) {
                None => return BodyNow::Pending,
                Some(None) => break,
                Some(Some(Err(_))) => return BodyNow::Failed,
                Some(Some(Ok(chunk))) => {
                    self.take(body, chunk);
                }
            }
        }
        BodyNow::Complete
    }

    /// Read to the end (or to the limit).
    async fn all(&mut self, body: &mut h2::RecvStream) -> bool {
        while !self.full {
            match body.data().await {
                None => break,
                Some(Err(_)) => return false,
                Some(Ok(chunk)) => {
                    self.take(body, chunk);
                }
            }
        }
        true
    }

    fn view<'a>(&'a self, parts: &'a http::request::Parts) -> RequestView<'a> {
        RequestView {
            method: &parts.method,
            path: parts.uri.path(),
            headers: &parts.headers,
            body: &self.data,
            body_len: self.len,
        }
    }
}

async fn handle_stream(
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    parts: http::request::Parts,
    mut body: h2::RecvStream,
    mut read: BodyRead,
    respond: h2::server::SendResponse<Bytes>,
    plan: StreamPlan,
) {
    if !read.all(&mut body).await {
        return;
    }
    let answer = shared.answer(&ctx, &read.view(&parts), &plan);
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    respond_now(respond, answer, &ctx.counters);
}

fn respond_now(
    mut respond: h2::server::SendResponse<Bytes>,
    answer: Answer,
    counters: &ConnCounters,
) {
    if answer.token_accepted && !counters.token_accepted.load(Ordering::Acquire) {
        // The sniffer lifts the one-stream rule when it writes this stream's answer.
        counters
            .accepting_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(u32::from(respond.stream_id()));
    }
    const APNS_UNIQUE_ID: http::HeaderName = http::HeaderName::from_static("apns-unique-id");
    // Names parsed once; values take the answer's strings without copying them.
    let mut builder = Response::builder()
        .status(answer.status)
        .header(super::validate::APNS_ID, answer.apns_id);
    if let Some(unique) = answer.unique_id {
        builder = builder.header(APNS_UNIQUE_ID, unique);
    }
    for (name, value) in answer.headers {
        builder = builder.header(name, value);
    }
    if !answer.body.is_empty() {
        builder = builder.header(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
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
/// h2 writes, which h2's server API cannot do: outgoing bytes pass straight through up to a
/// GOAWAY frame; from there they are copied into `pending` with GOAWAY frames lengthened,
/// and `pending` is written out before anything else.
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
                if c.token_auth
                    && !self.open.is_empty()
                    && !c.token_accepted.load(Ordering::Acquire)
                {
                    c.one_stream_violations.fetch_add(1, Ordering::Relaxed);
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
        if f.kind == FRAME_HEADERS && !self.counters.token_accepted.load(Ordering::Acquire) {
            let mut accepting = self
                .counters
                .accepting_streams
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if accepting.contains(&f.stream) {
                accepting.clear();
                self.counters.token_accepted.store(true, Ordering::Release);
            }
        }
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
            let mut reader = std::mem::replace(&mut this.client, FrameReader::new(0));
            reader.feed(&buf.filled()[before..], |f| this.client_frame(f));
            this.client = reader;
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

    /// How much of `buf` may go straight to the transport, uncopied: everything up to the
    /// first GOAWAY frame header or incomplete frame header. `None` when the copying path
    /// must take the start of `buf` (bytes or a debug-data trailer queued, a frame header
    /// begun, or a GOAWAY frame next).
    fn passthrough_len(&self, buf: &[u8]) -> Option<usize> {
        if !self.pending.is_empty() || self.trailer.is_some() || self.server.filled > 0 {
            return None;
        }
        let mut pos = 0;
        let mut skip = self.server.skip;
        loop {
            if skip >= buf.len() - pos {
                return Some(buf.len());
            }
            pos += skip;
            let h = &buf[pos..];
            if h.len() < FRAME_HEADER_LEN || h[3] == FRAME_GOAWAY {
                return (pos > 0).then_some(pos);
            }
            skip = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            pos += FRAME_HEADER_LEN;
        }
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
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Some(cut) = this.passthrough_len(buf) {
            // No GOAWAY to rewrite: write without copying, then count the frames written.
            let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..cut]))?;
            let mut reader = std::mem::replace(&mut this.server, FrameReader::new(0));
            reader.feed(&buf[..n], |f| this.server_frame(f));
            let mut taken = n;
            if reader.filled > 0 {
                // Part of a (non-GOAWAY) frame header went out: queue the rest of it.
                let rest = &buf[n..n + (FRAME_HEADER_LEN - reader.filled)];
                this.pending.extend_from_slice(rest);
                reader.feed(rest, |f| this.server_frame(f));
                taken += rest.len();
            }
            this.server = reader;
            return Poll::Ready(Ok(taken));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    /// A transport that takes at most `step` bytes per write.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Whatever the transport and the writer's chunking, the bytes out are the frames with
    /// only the GOAWAY lengthened by its debug data.
    #[tokio::test]
    async fn writes_pass_through_except_goaway_debug_data() {
        let goaway_payload = [0, 0, 0, 3, 0, 0, 0, 0];
        let frames = [
            frame(FRAME_SETTINGS, 0, 0, &[]),
            frame(FRAME_HEADERS, FLAG_END_STREAM, 1, b"hdrs!"),
            frame(FRAME_DATA, 0, 3, &[7; 40]),
            frame(FRAME_GOAWAY, 0, 0, &goaway_payload),
            frame(FRAME_HEADERS, FLAG_END_STREAM, 3, b"more"),
            frame(FRAME_GOAWAY, 0, 0, &goaway_payload),
        ];
        let input: Vec<u8> = frames.concat();
        let debug = br#"{"reason":"Shutdown"}"#;
        let mut goaway = frame(FRAME_GOAWAY, 0, 0, &goaway_payload);
        goaway.extend_from_slice(debug);
        goaway[2] += debug.len() as u8;
        let expected: Vec<u8> = [
            frames[0].clone(),
            frames[1].clone(),
            frames[2].clone(),
            goaway.clone(),
            frames[4].clone(),
            goaway,
        ]
        .concat();
        for step in [1, 2, 3, 5, 9, 10, 17, 1000] {
            for chunk in [1, 4, 9, 13, 64, 1000] {
                let counters = Arc::new(ConnCounters::default());
                *counters.goaway_reason.lock().unwrap() = Some(Reason::Shutdown);
                let mut sniffer = Sniffer::new(
                    Trickle {
                        out: Vec::new(),
                        step,
                    },
                    counters,
                );
                for part in input.chunks(chunk) {
                    sniffer.write_all(part).await.unwrap();
                }
                sniffer.flush().await.unwrap();
                assert_eq!(sniffer.inner.out, expected, "step {step} chunk {chunk}");
                assert!(sniffer.goaway_sent);
            }
        }
    }
}
