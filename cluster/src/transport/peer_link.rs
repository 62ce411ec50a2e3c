//! The outbound side of a node link: one [`PeerLink`] actor per peer.
//!
//! ```text
//!            try_send ──▶ bounded queue (frames, bytes) ──▶ connection task ──▶ peer's listener
//!  PeerLink actor: Connect ─▶ task spawned ─▶ Up ─▶ … ─▶ Down(queue, reason) ─▶ backoff ─▶ Connect
//! ```
//!
//! * Senders hold a [`PeerLinkSender`]. Messages are encoded at admission (an oversized one
//!   is refused there) and queued in a bounded queue: when it is full (in frames or bytes)
//!   the caller gets [`SendError::Overloaded`] and the drop is counted. Raft tolerates drops.
//!   The actor's own (unbounded) mailbox carries only its few control messages.
//! * The actor owns the connection lifecycle. A connection task dials through the
//!   [`Connector`](herald_actors::seams::Connector) seam, runs TLS if configured, exchanges
//!   Hellos, then writes queued frames and PINGs the peer every `ping_interval`; a PING
//!   unanswered for `ping_timeout` means the link is dead. When the task ends it hands the
//!   queue back to the actor, which reconnects after an exponential backoff with full jitter
//!   drawn from the link's [`DetRng`].
//! * Frames already taken from the queue when a link dies are lost (at most one per link).
//!
//! Spawn it without a name (names are process-global, see DESIGN.md §12), usually linked to
//! the node supervisor:
//!
//! ```no_run
//! # async fn f(config: herald_cluster::transport::PeerLinkConfig) {
//! use herald_cluster::transport::{PeerLink, PeerLinkArguments, PeerMessage};
//! let (arguments, sender) = PeerLinkArguments::new(config);
//! let (_actor, _join) = ractor::Actor::spawn(None, PeerLink, arguments).await.unwrap();
//! sender.try_send(PeerMessage::Raft(vec![1, 2, 3])).unwrap();
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use herald_actors::seams::{BoxStream, DetRng, SharedConnector};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::frame::{
    ClusterId, Envelope, FrameError, FrameReader, NodeId, PeerMessage, encode_frame,
};
use super::listener::{
    CloseReason, LinkClosed, check_hello, hello_envelope, record_close, send, write_with_timeout,
};
use super::tls::{LinkSecurity, MutualTls};
use super::{
    FRAME_HEADER_BYTES, HANDSHAKE_TIMEOUT, OUTBOUND_QUEUE_BYTES_MAX, OUTBOUND_QUEUE_FRAMES_MAX,
    PING_INTERVAL, PING_TIMEOUT, RECONNECT_BACKOFF_BASE, RECONNECT_BACKOFF_MAX,
};

/// The timeouts of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTimings {
    /// Connect + TLS + Hello. Default: [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// Between PINGs. Default: [`PING_INTERVAL`].
    pub ping_interval: Duration,
    /// A PING unanswered this long kills the link. Default: [`PING_TIMEOUT`].
    pub ping_timeout: Duration,
    /// The first reconnect delay's cap. Default: [`RECONNECT_BACKOFF_BASE`].
    pub backoff_base: Duration,
    /// The reconnect delay's cap. Default: [`RECONNECT_BACKOFF_MAX`].
    pub backoff_max: Duration,
}

impl Default for LinkTimings {
    fn default() -> Self {
        LinkTimings {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            ping_interval: PING_INTERVAL,
            ping_timeout: PING_TIMEOUT,
            backoff_base: RECONNECT_BACKOFF_BASE,
            backoff_max: RECONNECT_BACKOFF_MAX,
        }
    }
}

/// Everything a [`PeerLink`] needs.
#[derive(Debug, Clone)]
pub struct PeerLinkConfig {
    /// This node.
    pub local: NodeId,
    /// The peer this link reaches.
    pub peer: NodeId,
    /// The cluster both belong to.
    pub cluster: ClusterId,
    /// The peer's host (name or address), passed to the connector.
    pub host: String,
    /// The peer's port.
    pub port: u16,
    /// TLS or (tests/simulator only) plaintext.
    pub security: LinkSecurity,
    /// Opens the byte streams (TCP in production, the simulated network in simulation).
    pub connector: SharedConnector,
    /// Backoff jitter and PING nonces.
    pub rng: DetRng,
    /// Timeouts and backoff.
    pub timings: LinkTimings,
    /// The outbound queue's capacity in frames, `1..=`[`OUTBOUND_QUEUE_FRAMES_MAX`].
    pub queue_frames_max: usize,
}

impl PeerLinkConfig {
    /// A configuration with default timings and the largest queue.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        local: NodeId,
        peer: NodeId,
        cluster: ClusterId,
        host: impl Into<String>,
        port: u16,
        security: LinkSecurity,
        connector: SharedConnector,
        rng: DetRng,
    ) -> Self {
        PeerLinkConfig {
            local,
            peer,
            cluster,
            host: host.into(),
            port,
            security,
            connector,
            rng,
            timings: LinkTimings::default(),
            queue_frames_max: OUTBOUND_QUEUE_FRAMES_MAX,
        }
    }
}

/// The [`PeerLink`] actor's start arguments; made with [`PeerLinkArguments::new`].
#[derive(Debug)]
pub struct PeerLinkArguments {
    config: PeerLinkConfig,
    queue: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
}

impl PeerLinkArguments {
    /// Arguments for a link, and the sender that feeds its queue.
    ///
    /// # Panics
    /// If `config.queue_frames_max` is 0 or above [`OUTBOUND_QUEUE_FRAMES_MAX`].
    #[track_caller]
    pub fn new(config: PeerLinkConfig) -> (Self, PeerLinkSender) {
        assert!(
            (1..=OUTBOUND_QUEUE_FRAMES_MAX).contains(&config.queue_frames_max),
            "queue_frames_max must be in 1..={OUTBOUND_QUEUE_FRAMES_MAX}"
        );
        let (tx, rx) = mpsc::channel(config.queue_frames_max);
        let shared = Arc::new(Shared::default());
        let sender = PeerLinkSender {
            local: config.local,
            peer: config.peer,
            queue: tx,
            shared: shared.clone(),
        };
        (
            PeerLinkArguments {
                config,
                queue: rx,
                shared,
            },
            sender,
        )
    }
}

/// Counters shared by the senders and the link.
#[derive(Debug, Default)]
struct Shared {
    queued_bytes: AtomicUsize,
    dropped: AtomicU64,
}

/// Queues messages on a [`PeerLink`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PeerLinkSender {
    local: NodeId,
    peer: NodeId,
    queue: mpsc::Sender<Vec<u8>>,
    shared: Arc<Shared>,
}

impl PeerLinkSender {
    /// The peer this sender's link reaches.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Queue `msg` for the peer without waiting.
    ///
    /// # Errors
    /// [`SendError::Overloaded`] if the queue is full (the message is dropped and counted);
    /// [`SendError::Frame`] if it cannot be encoded (e.g. too large);
    /// [`SendError::ControlMessage`] for Hello/Ping/Pong, which only the link sends;
    /// [`SendError::Stopped`] if the link actor is gone.
    pub fn try_send(&self, msg: PeerMessage) -> Result<(), SendError> {
        if matches!(
            msg,
            PeerMessage::Hello { .. } | PeerMessage::Ping { .. } | PeerMessage::Pong { .. }
        ) {
            return Err(SendError::ControlMessage);
        }
        let frame = encode_frame(&Envelope::new(self.local, msg)).map_err(SendError::Frame)?;
        let len = frame.len();
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::SeqCst);
        if before + len > OUTBOUND_QUEUE_BYTES_MAX {
            self.shared.queued_bytes.fetch_sub(len, Ordering::SeqCst);
            return Err(self.overloaded());
        }
        match self.queue.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::SeqCst);
                Err(self.overloaded())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::SeqCst);
                Err(SendError::Stopped)
            }
        }
    }

    /// Bytes of frames queued for the peer and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::SeqCst)
    }

    /// Messages refused as overload so far.
    pub fn dropped_total(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    fn overloaded(&self) -> SendError {
        let dropped_total = self.shared.dropped.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::counter!("herald_transport_overloaded_total").increment(1);
        SendError::Overloaded { dropped_total }
    }
}

/// Why [`PeerLinkSender::try_send`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The outbound queue is full; the message was dropped.
    #[error("peer link overloaded ({dropped_total} messages dropped so far)")]
    Overloaded {
        /// Messages this link has dropped so far, this one included.
        dropped_total: u64,
    },
    /// The message cannot be framed.
    #[error(transparent)]
    Frame(FrameError),
    /// Hello, Ping and Pong are the link's own.
    #[error("control messages are sent by the link itself")]
    ControlMessage,
    /// The link actor has stopped.
    #[error("peer link stopped")]
    Stopped,
}

/// A link's state as reported by [`PeerLinkMsg::Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// The peer.
    pub peer: NodeId,
    /// Whether a connection is up (handshake done).
    pub connected: bool,
    /// Connections established so far.
    pub connects_total: u64,
    /// Connections (or attempts) that ended so far.
    pub closes_total: u64,
    /// Why the last connection (or attempt) ended.
    pub last_close: Option<CloseReason>,
    /// Messages refused as overload so far.
    pub dropped_total: u64,
}

/// The per-peer link actor. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerLink;

/// Messages of the [`PeerLink`] actor.
#[derive(Debug)]
#[non_exhaustive]
pub enum PeerLinkMsg {
    /// Report the link's [`LinkStatus`].
    Status(RpcReplyPort<LinkStatus>),
    /// An event from the link's own connection task or timers; only this module makes them.
    Event(LinkEvent),
}

/// A connection-lifecycle event, internal to [`PeerLink`].
#[derive(Debug)]
pub struct LinkEvent(Event);

#[derive(Debug)]
enum Event {
    /// Time to dial.
    Connect,
    /// Connection `generation` finished its handshake.
    Up { generation: u64 },
    /// Connection `generation` ended; here is the queue back.
    Down {
        generation: u64,
        queue: mpsc::Receiver<Vec<u8>>,
        closed: LinkClosed,
    },
}

/// The [`PeerLink`] actor's state.
pub struct PeerLinkState {
    config: PeerLinkConfig,
    queue: Option<mpsc::Receiver<Vec<u8>>>,
    shared: Arc<Shared>,
    generation: u64,
    task: Option<AbortHandle>,
    attempt: u32,
    status: LinkStatus,
}

impl fmt::Debug for PeerLinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerLinkState")
            .field("status", &self.status)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Actor for PeerLink {
    type Msg = PeerLinkMsg;
    type State = PeerLinkState;
    type Arguments = PeerLinkArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        arguments: PeerLinkArguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let status = LinkStatus {
            peer: arguments.config.peer,
            connected: false,
            connects_total: 0,
            closes_total: 0,
            last_close: None,
            dropped_total: 0,
        };
        myself.cast(PeerLinkMsg::Event(LinkEvent(Event::Connect)))?;
        Ok(PeerLinkState {
            config: arguments.config,
            queue: Some(arguments.queue),
            shared: arguments.shared,
            generation: 0,
            task: None,
            attempt: 0,
            status,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PeerLinkMsg::Status(reply) => {
                let mut status = state.status.clone();
                status.dropped_total = state.shared.dropped.load(Ordering::SeqCst);
                // The caller may have given up waiting; nothing to do then.
                let _ = reply.send(status);
            }
            PeerLinkMsg::Event(LinkEvent(Event::Connect)) => state.connect(&myself),
            PeerLinkMsg::Event(LinkEvent(Event::Up { generation })) => {
                if generation == state.generation {
                    state.status.connected = true;
                    state.status.connects_total += 1;
                    state.attempt = 0;
                    tracing::info!(peer = state.config.peer.0, "peer link up");
                }
            }
            PeerLinkMsg::Event(LinkEvent(Event::Down {
                generation,
                queue,
                closed,
            })) => {
                debug_assert_eq!(generation, state.generation, "one connection at a time");
                state.queue = Some(queue);
                state.task = None;
                state.status.connected = false;
                state.status.closes_total += 1;
                state.status.last_close = Some(closed.reason);
                record_close("outbound", &closed);
                if closed.reason == CloseReason::Shutdown {
                    // Every sender is gone: nothing will ever be sent on this link.
                    myself.stop(Some("all senders dropped".to_owned()));
                    return Ok(());
                }
                let delay = state.backoff();
                tracing::debug!(peer = state.config.peer.0, ?delay, "peer link reconnecting");
                myself.send_after(delay, || PeerLinkMsg::Event(LinkEvent(Event::Connect)));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(task) = state.task.take() {
            task.abort();
        }
        Ok(())
    }
}

impl PeerLinkState {
    fn connect(&mut self, myself: &ActorRef<PeerLinkMsg>) {
        if self.task.is_some() {
            return;
        }
        let Some(queue) = self.queue.take() else {
            return;
        };
        self.generation += 1;
        let link = Connection {
            config: self.config.clone(),
            rng: self.config.rng.fork(),
            shared: self.shared.clone(),
        };
        let generation = self.generation;
        let myself = myself.clone();
        let span = tracing::info_span!(
            "peer_link",
            node = self.config.local.0,
            peer = self.config.peer.0,
            generation
        );
        let task = tokio::spawn(
            async move {
                let (queue, closed) = link.run(queue, &myself, generation).await;
                // If the actor is gone the queue is dropped with this message; nothing to do.
                let _ = myself.cast(PeerLinkMsg::Event(LinkEvent(Event::Down {
                    generation,
                    queue,
                    closed,
                })));
            }
            .instrument(span),
        );
        self.task = Some(task.abort_handle());
    }

    /// Exponential backoff with full jitter: uniform in `0..=min(max, base * 2^attempt)`.
    fn backoff(&mut self) -> Duration {
        let cap = backoff_cap(&self.config.timings, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        self.config.rng.jitter(cap)
    }
}

/// The most the `attempt`-th (from 0) reconnect waits: `min(max, base * 2^attempt)`.
fn backoff_cap(timings: &LinkTimings, attempt: u32) -> Duration {
    // 2^20 × any sane base is far past any sane max; stop doubling there.
    let factor = 1u32 << attempt.min(20);
    timings
        .backoff_base
        .saturating_mul(factor)
        .min(timings.backoff_max)
}

/// One connection attempt and, if it succeeds, its life.
struct Connection {
    config: PeerLinkConfig,
    rng: DetRng,
    shared: Arc<Shared>,
}

type Reader = FrameReader<tokio::io::ReadHalf<BoxStream>>;
type Writer = tokio::io::WriteHalf<BoxStream>;

impl Connection {
    async fn run(
        mut self,
        mut queue: mpsc::Receiver<Vec<u8>>,
        myself: &ActorRef<PeerLinkMsg>,
        generation: u64,
    ) -> (mpsc::Receiver<Vec<u8>>, LinkClosed) {
        let peer = Some(self.config.peer);
        let handshake = tokio::time::timeout(self.config.timings.handshake_timeout, self.dial());
        let (reader, writer) = match handshake.await {
            Ok(Ok(link)) => link,
            Ok(Err(closed)) => return (queue, closed),
            Err(_) => {
                let closed = LinkClosed::new(peer, CloseReason::HandshakeTimeout, "dial too slow");
                return (queue, closed);
            }
        };
        if myself
            .cast(PeerLinkMsg::Event(LinkEvent(Event::Up { generation })))
            .is_err()
        {
            return (
                queue,
                LinkClosed::new(peer, CloseReason::Shutdown, "actor gone"),
            );
        }
        let closed = self.pump(reader, writer, &mut queue).await;
        (queue, closed)
    }

    /// Connect, TLS, Hello exchange.
    async fn dial(&self) -> Result<(Reader, Writer), LinkClosed> {
        let config = &self.config;
        let peer = Some(config.peer);
        let stream = config
            .connector
            .connect(&config.host, config.port)
            .await
            .map_err(|e| LinkClosed::new(peer, CloseReason::ConnectFailed, e.to_string()))?;
        let stream = match &config.security {
            LinkSecurity::Plaintext => stream,
            LinkSecurity::MutualTls(tls) => {
                let name = MutualTls::server_name(config.peer).map_err(|e| {
                    LinkClosed::new(peer, CloseReason::BadCertificate, e.to_string())
                })?;
                let connector = tokio_rustls::TlsConnector::from(tls.client_config());
                let tls_stream = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| LinkClosed::new(peer, CloseReason::TlsHandshake, e.to_string()))?;
                Box::new(tls_stream) as BoxStream
            }
        };
        let (read_half, mut writer) = tokio::io::split(stream);
        let mut reader = FrameReader::new(read_half);
        send(&mut writer, &hello_envelope(config.local, config.cluster))
            .await
            .map_err(|e| LinkClosed::new(peer, CloseReason::from(&e), e.to_string()))?;
        let hello = match reader.read_envelope().await {
            Ok(Some(hello)) => hello,
            // A listener that refuses us (wrong CA, bad Hello) just closes.
            Ok(None) => {
                return Err(LinkClosed::new(
                    peer,
                    CloseReason::BadHello,
                    "peer closed before its Hello",
                ));
            }
            Err(e) => return Err(LinkClosed::new(peer, CloseReason::from(&e), e.to_string())),
        };
        // With TLS the server certificate was verified against the peer's node name.
        check_hello(&hello, None, config.cluster, Some(config.peer))?;
        Ok((reader, writer))
    }

    /// Write queued frames and PINGs; read PONGs; until something fails.
    async fn pump(
        &mut self,
        mut reader: Reader,
        mut writer: Writer,
        queue: &mut mpsc::Receiver<Vec<u8>>,
    ) -> LinkClosed {
        let peer = Some(self.config.peer);
        let timings = self.config.timings;
        let mut ping = tokio::time::interval_at(
            Instant::now() + timings.ping_interval,
            timings.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The outstanding PING: its nonce and deadline.
        let mut outstanding: Option<(u64, Instant)> = None;
        loop {
            let deadline = outstanding.map(|(_, deadline)| deadline);
            tokio::select! {
                biased;
                read = reader.read_envelope() => match read {
                    Ok(Some(envelope)) => match envelope.msg {
                        PeerMessage::Pong { nonce } if envelope.from == self.config.peer => {
                            if outstanding.is_some_and(|(want, _)| want == nonce) {
                                outstanding = None;
                            }
                        }
                        other => {
                            return LinkClosed::new(
                                peer,
                                CloseReason::ProtocolViolation,
                                format!("unexpected {} from {} on an outbound link", other.kind(), envelope.from),
                            );
                        }
                    },
                    Ok(None) => return LinkClosed::new(peer, CloseReason::PeerClosed, ""),
                    Err(e) => return LinkClosed::new(peer, CloseReason::from(&e), e.to_string()),
                },
                () = sleep_until_or_forever(deadline) => {
                    return LinkClosed::new(peer, CloseReason::PingTimeout, format!("no PONG within {:?}", timings.ping_timeout));
                }
                _ = ping.tick() => {
                    if outstanding.is_none() {
                        let nonce = self.rng.next_u64();
                        let envelope = Envelope::new(self.config.local, PeerMessage::Ping { nonce });
                        if let Err(e) = send(&mut writer, &envelope).await {
                            return LinkClosed::new(peer, CloseReason::from(&e), e.to_string());
                        }
                        outstanding = Some((nonce, Instant::now() + timings.ping_timeout));
                    }
                }
                frame = queue.recv() => {
                    let Some(frame) = frame else {
                        return LinkClosed::new(peer, CloseReason::Shutdown, "all senders dropped");
                    };
                    self.shared.queued_bytes.fetch_sub(frame.len(), Ordering::SeqCst);
                    debug_assert!(frame.len() > FRAME_HEADER_BYTES);
                    if let Err(e) = write_with_timeout(&mut writer, &frame).await {
                        return LinkClosed::new(peer, CloseReason::from(&e), e.to_string());
                    }
                }
            }
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let timings = LinkTimings::default();
        assert_eq!(backoff_cap(&timings, 0), RECONNECT_BACKOFF_BASE);
        assert_eq!(backoff_cap(&timings, 1), RECONNECT_BACKOFF_BASE * 2);
        assert_eq!(backoff_cap(&timings, 3), RECONNECT_BACKOFF_BASE * 8);
        assert_eq!(backoff_cap(&timings, 40), RECONNECT_BACKOFF_MAX);
        assert_eq!(backoff_cap(&timings, u32::MAX), RECONNECT_BACKOFF_MAX);
    }
}
