//! The inbound side of node links: accept, authenticate, read, deliver.
//!
//! [`spawn_listener`] accepts TCP connections (production), [`spawn_acceptor`] accepts from any
//! [`Acceptor`] (the simulator's network); [`serve_connection`] serves one already-accepted
//! [`BoxStream`]. Each link:
//!
//! 1. TLS handshake ([`LinkSecurity::MutualTls`]): the client's certificate must chain to the
//!    cluster CA; its node id is read from the certificate.
//! 2. The first frame must be a Hello of this protocol version and cluster, naming the node
//!    in the certificate. The listener answers with its own Hello.
//! 3. Frames are read one by one; every envelope's `from` must be the authenticated node.
//!    PINGs are answered with PONGs; every other message is delivered as an [`Inbound`] to
//!    the bounded channel in [`InboundConfig::deliver`].
//!
//! Delivery awaits room in that channel: a slow handler back-pressures the link's TCP
//! stream (and, if it stalls long enough, the peer's PING times out and it reconnects). The
//! handler is the place to shed load.
//!
//! Any failure closes only that link: it is logged (tracing) and counted in
//! `herald_transport_links_closed_total{direction="inbound", reason}`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_actors::seams::{BoxFuture, BoxStream};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument as _;

use super::frame::{
    ClusterId, Envelope, FrameError, FrameReader, NodeId, PeerMessage, encode_frame, write_frame,
};
use super::tls::{LinkSecurity, node_id_from_certificate};
use super::{HANDSHAKE_TIMEOUT, INBOUND_IDLE_TIMEOUT, INBOUND_LINKS_MAX, PROTOCOL_VERSION};
use super::{WRITE_TIMEOUT, tls::TlsError};

/// A message received from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The authenticated sender.
    pub from: NodeId,
    /// What it sent.
    pub msg: PeerMessage,
}

/// How the inbound side of this node behaves.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// This node.
    pub local: NodeId,
    /// This node's cluster; Hellos from other clusters are refused.
    pub cluster: ClusterId,
    /// TLS or (tests/simulator only) plaintext.
    pub security: LinkSecurity,
    /// Where received messages go (bounded; see the module docs).
    pub deliver: mpsc::Sender<Inbound>,
    /// TLS handshake + Hello must finish within this. Default: [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// A link silent for this long is closed. Default: [`INBOUND_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
}

impl InboundConfig {
    /// A configuration with the default timeouts.
    pub fn new(
        local: NodeId,
        cluster: ClusterId,
        security: LinkSecurity,
        deliver: mpsc::Sender<Inbound>,
    ) -> Self {
        InboundConfig {
            local,
            cluster,
            security,
            deliver,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: INBOUND_IDLE_TIMEOUT,
        }
    }
}

/// Why a link was closed: the `reason` label of `herald_transport_links_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed the stream cleanly between frames.
    PeerClosed,
    /// Connecting failed (outbound).
    ConnectFailed,
    /// The TLS handshake failed (e.g. an untrusted or missing certificate, plaintext).
    TlsHandshake,
    /// The peer's certificate names no node.
    BadCertificate,
    /// Connect, TLS or Hello did not finish in time.
    HandshakeTimeout,
    /// The first frame was not a valid Hello.
    BadHello,
    /// The Hello named another cluster.
    WrongCluster,
    /// The Hello (or a later envelope) named a node other than the authenticated one.
    NodeMismatch,
    /// A frame of another protocol version.
    UnsupportedVersion,
    /// A frame that does not decode.
    CorruptFrame,
    /// A length prefix over the frame size limit.
    OversizedFrame,
    /// The stream ended inside a frame.
    Truncated,
    /// A message that makes no sense on this link (e.g. a second Hello).
    ProtocolViolation,
    /// Nothing arrived for the idle timeout (inbound).
    IdleTimeout,
    /// A PING went unanswered (outbound).
    PingTimeout,
    /// Writing a frame timed out.
    WriteTimeout,
    /// The stream failed.
    Io,
    /// The inbound handler's channel is closed.
    HandlerGone,
    /// The listener has too many links already.
    TooManyLinks,
    /// The link's owner shut it down.
    Shutdown,
}

impl CloseReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::ConnectFailed => "connect_failed",
            CloseReason::TlsHandshake => "tls_handshake",
            CloseReason::BadCertificate => "bad_certificate",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::BadHello => "bad_hello",
            CloseReason::WrongCluster => "wrong_cluster",
            CloseReason::NodeMismatch => "node_mismatch",
            CloseReason::UnsupportedVersion => "unsupported_version",
            CloseReason::CorruptFrame => "corrupt_frame",
            CloseReason::OversizedFrame => "oversized_frame",
            CloseReason::Truncated => "truncated",
            CloseReason::ProtocolViolation => "protocol_violation",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::Io => "io",
            CloseReason::HandlerGone => "handler_gone",
            CloseReason::TooManyLinks => "too_many_links",
            CloseReason::Shutdown => "shutdown",
        }
    }

    /// Whether the close is an ordinary event (logged at debug) rather than a failure.
    pub fn is_orderly(self) -> bool {
        matches!(self, CloseReason::PeerClosed | CloseReason::Shutdown)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&FrameError> for CloseReason {
    fn from(e: &FrameError) -> Self {
        match e {
            FrameError::Oversized { .. } => CloseReason::OversizedFrame,
            FrameError::Empty | FrameError::Malformed(_) => CloseReason::CorruptFrame,
            FrameError::Truncated { .. } => CloseReason::Truncated,
            FrameError::UnsupportedVersion { .. } => CloseReason::UnsupportedVersion,
            FrameError::WriteTimeout => CloseReason::WriteTimeout,
            FrameError::Encode(_) | FrameError::Io { .. } => CloseReason::Io,
        }
    }
}

/// How and why a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClosed {
    /// The peer, if it got far enough to be known.
    pub peer: Option<NodeId>,
    /// Why.
    pub reason: CloseReason,
    /// Details for the log.
    pub detail: String,
}

impl LinkClosed {
    pub(crate) fn new(
        peer: Option<NodeId>,
        reason: CloseReason,
        detail: impl Into<String>,
    ) -> Self {
        LinkClosed {
            peer,
            reason,
            detail: detail.into(),
        }
    }

    fn frame(peer: Option<NodeId>, e: &FrameError) -> Self {
        LinkClosed::new(peer, CloseReason::from(e), e.to_string())
    }
}

/// Log a closed link and count it in `herald_transport_links_closed_total`.
pub(crate) fn record_close(direction: &'static str, closed: &LinkClosed) {
    let peer = closed.peer.map(|p| p.0);
    if closed.reason.is_orderly() {
        tracing::debug!(direction, peer, reason = %closed.reason, detail = %closed.detail, "link closed");
    } else {
        tracing::warn!(direction, peer, reason = %closed.reason, detail = %closed.detail, "link closed");
    }
    metrics::counter!(
        "herald_transport_links_closed_total",
        "direction" => direction,
        "reason" => closed.reason.as_str()
    )
    .increment(1);
}

/// A running TCP listener. Dropping it (or [`shutdown`](Self::shutdown)) stops accepting and
/// closes every link it accepted.
#[derive(Debug)]
pub struct Listener {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Listener {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting and close every inbound link.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A source of accepted inbound streams: a [`TcpListener`] in production, the simulator's
/// network in simulation. [`spawn_acceptor`] serves whatever it yields.
pub trait Acceptor: Send + 'static {
    /// Wait for the next inbound stream and its remote address.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>>;

    /// The address inbound streams arrive at.
    ///
    /// # Errors
    /// If the address cannot be read.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl Acceptor for TcpListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (stream, remote) = TcpListener::accept(self).await?;
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, %remote, "set_nodelay failed");
            }
            Ok((Box::new(stream) as BoxStream, remote))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

/// Serve inbound links accepted on `tcp`, at most [`INBOUND_LINKS_MAX`] at once.
///
/// # Errors
/// If `tcp`'s local address cannot be read.
pub fn spawn_listener(tcp: TcpListener, config: Arc<InboundConfig>) -> io::Result<Listener> {
    spawn_acceptor(tcp, config)
}

/// Serve inbound links from any [`Acceptor`] (the simulator's network, or a
/// [`TcpListener`]), at most [`INBOUND_LINKS_MAX`] at once.
///
/// # Errors
/// If the acceptor's local address cannot be read.
pub fn spawn_acceptor(acceptor: impl Acceptor, config: Arc<InboundConfig>) -> io::Result<Listener> {
    let local_addr = acceptor.local_addr()?;
    let span = tracing::info_span!("peer_listener", node = config.local.0, %local_addr);
    let task = tokio::spawn(accept_loop(acceptor, config).instrument(span));
    Ok(Listener { local_addr, task })
}

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

async fn accept_loop(mut acceptor: impl Acceptor, config: Arc<InboundConfig>) {
    // Dropped (aborting every link) when this task is aborted.
    let mut links = JoinSet::new();
    loop {
        while links.try_join_next().is_some() {}
        let (stream, remote) = match acceptor.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        if links.len() >= INBOUND_LINKS_MAX {
            record_close(
                "inbound",
                &LinkClosed::new(None, CloseReason::TooManyLinks, remote.to_string()),
            );
            continue;
        }
        let span = tracing::info_span!("peer_inbound", %remote);
        links.spawn(serve_connection(stream, config.clone()).instrument(span));
    }
}

/// Serve one accepted stream until it closes; log and count the close, and return why.
///
/// Never panics on peer input; the caller's task may simply spawn and forget it.
pub async fn serve_connection(stream: BoxStream, config: Arc<InboundConfig>) -> LinkClosed {
    let closed = serve(stream, &config).await;
    record_close("inbound", &closed);
    closed
}

async fn serve(stream: BoxStream, config: &InboundConfig) -> LinkClosed {
    let handshake = tokio::time::timeout(config.handshake_timeout, handshake(stream, config));
    let (peer, mut reader, mut writer) = match handshake.await {
        Ok(Ok(link)) => link,
        Ok(Err(closed)) => return closed,
        Err(_) => {
            return LinkClosed::new(None, CloseReason::HandshakeTimeout, "TLS or Hello too slow");
        }
    };
    tracing::debug!(peer = peer.0, "inbound link up");
    // BUGGIFY (simulation only): a message held back to be delivered after the next one.
    let mut held: Option<PeerMessage> = None;
    loop {
        let envelope = match tokio::time::timeout(config.idle_timeout, reader.read_envelope()).await
        {
            Err(_) => return LinkClosed::new(Some(peer), CloseReason::IdleTimeout, "silent link"),
            Ok(Ok(Some(envelope))) => envelope,
            Ok(Ok(None)) => return LinkClosed::new(Some(peer), CloseReason::PeerClosed, ""),
            Ok(Err(e)) => return LinkClosed::frame(Some(peer), &e),
        };
        if envelope.from != peer {
            return LinkClosed::new(
                Some(peer),
                CloseReason::NodeMismatch,
                format!("envelope from {} on a link of {peer}", envelope.from),
            );
        }
        match envelope.msg {
            PeerMessage::Ping { nonce } => {
                let pong = Envelope::new(config.local, PeerMessage::Pong { nonce });
                if let Err(e) = send(&mut writer, &pong).await {
                    return LinkClosed::frame(Some(peer), &e);
                }
            }
            PeerMessage::Pong { .. } => {}
            PeerMessage::Hello { .. } => {
                return LinkClosed::new(Some(peer), CloseReason::ProtocolViolation, "second Hello");
            }
            msg => {
                // BUGGIFY (off outside the simulator): TCP never duplicates or reorders, but
                // the layers above must not depend on that (a re-sent request, a message
                // that overtook another on a fresh link look the same).
                let mut batch = Vec::with_capacity(3);
                if herald_actors::buggify::fire("peer_message_reordered", 0.01) && held.is_none() {
                    held = Some(msg);
                    continue;
                }
                if herald_actors::buggify::fire("peer_message_duplicated", 0.01) {
                    batch.push(msg.clone());
                }
                batch.push(msg);
                batch.extend(held.take());
                for msg in batch {
                    if config
                        .deliver
                        .send(Inbound { from: peer, msg })
                        .await
                        .is_err()
                    {
                        return LinkClosed::new(Some(peer), CloseReason::HandlerGone, "");
                    }
                }
            }
        }
    }
}

type Reader = FrameReader<ReadHalf<BoxStream>>;
type Writer = WriteHalf<BoxStream>;

/// TLS (if configured), then the Hello exchange. Returns the authenticated peer.
async fn handshake(
    stream: BoxStream,
    config: &InboundConfig,
) -> Result<(NodeId, Reader, Writer), LinkClosed> {
    let (stream, certified) = match &config.security {
        LinkSecurity::Plaintext => (stream, None),
        LinkSecurity::MutualTls(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let tls_stream = acceptor
                .accept(stream)
                .await
                .map_err(|e| LinkClosed::new(None, CloseReason::TlsHandshake, e.to_string()))?;
            // A verified client certificate is always present: the verifier requires one.
            let leaf = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .ok_or_else(|| {
                    LinkClosed::new(None, CloseReason::BadCertificate, "no client certificate")
                })?;
            let node = node_id_from_certificate(leaf).map_err(|e: TlsError| {
                LinkClosed::new(None, CloseReason::BadCertificate, e.to_string())
            })?;
            (Box::new(tls_stream) as BoxStream, Some(node))
        }
    };
    let (read_half, mut writer) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read_half);
    let hello = match reader.read_envelope().await {
        Ok(Some(envelope)) => envelope,
        Ok(None) => {
            return Err(LinkClosed::new(
                certified,
                CloseReason::BadHello,
                "closed before Hello",
            ));
        }
        Err(e) => return Err(LinkClosed::frame(certified, &e)),
    };
    let peer = check_hello(&hello, certified, config.cluster, None)?;
    let ours = hello_envelope(config.local, config.cluster);
    send(&mut writer, &ours)
        .await
        .map_err(|e| LinkClosed::frame(Some(peer), &e))?;
    Ok((peer, reader, writer))
}

/// Our Hello.
pub(crate) fn hello_envelope(local: NodeId, cluster: ClusterId) -> Envelope {
    Envelope::new(
        local,
        PeerMessage::Hello {
            node: local,
            cluster,
            version: PROTOCOL_VERSION,
        },
    )
}

/// Check a peer's Hello: right message, version and cluster; the node must match the
/// certificate (`certified`) and, when dialing, the node we meant to reach (`expected`).
pub(crate) fn check_hello(
    envelope: &Envelope,
    certified: Option<NodeId>,
    cluster: ClusterId,
    expected: Option<NodeId>,
) -> Result<NodeId, LinkClosed> {
    let PeerMessage::Hello {
        node,
        cluster: their_cluster,
        version,
    } = envelope.msg
    else {
        return Err(LinkClosed::new(
            certified,
            CloseReason::BadHello,
            format!("first frame is {}, not hello", envelope.msg.kind()),
        ));
    };
    if version != PROTOCOL_VERSION {
        return Err(LinkClosed::new(
            certified,
            CloseReason::UnsupportedVersion,
            format!("Hello version {version}"),
        ));
    }
    if their_cluster != cluster {
        return Err(LinkClosed::new(
            certified,
            CloseReason::WrongCluster,
            format!("Hello from cluster {their_cluster}, this is cluster {cluster}"),
        ));
    }
    if envelope.from != node {
        return Err(LinkClosed::new(
            certified,
            CloseReason::NodeMismatch,
            format!(
                "Hello names node {node} in an envelope from {}",
                envelope.from
            ),
        ));
    }
    for (what, want) in [("certificate", certified), ("dialed peer", expected)] {
        if let Some(want) = want
            && want != node
        {
            return Err(LinkClosed::new(
                Some(want),
                CloseReason::NodeMismatch,
                format!("Hello claims node {node}, the {what} is node {want}"),
            ));
        }
    }
    Ok(node)
}

/// Encode and write one envelope within [`WRITE_TIMEOUT`].
pub(crate) async fn send(writer: &mut Writer, envelope: &Envelope) -> Result<(), FrameError> {
    let frame = encode_frame(envelope)?;
    write_with_timeout(writer, &frame).await
}

/// Write one encoded frame within [`WRITE_TIMEOUT`].
pub(crate) async fn write_with_timeout(
    writer: &mut Writer,
    frame: &[u8],
) -> Result<(), FrameError> {
    tokio::time::timeout(WRITE_TIMEOUT, write_frame(writer, frame))
        .await
        .map_err(|_| FrameError::WriteTimeout)?
}
