//! The node-to-node transport: framed, versioned, authenticated links between cluster nodes.
//!
//! ```text
//!  node A                                               node B
//!  PeerLink(B) ──connect (Connector seam)──TLS──Hello──▶ listener ──(from, PeerMessage)──▶ handler
//!       ▲  bounded outbound queue                         │ answers Hello, Pong
//!  PeerLinkSender::try_send                               ▼
//! ```
//!
//! * [`frame`]: the wire format. A frame is a `u32` big-endian length followed by an
//!   rmp-serde [`Envelope`] `{ version, from, msg }`; both reading and writing refuse frames
//!   larger than [`FRAME_BYTES_MAX`]. Garbage never panics: it is a typed [`FrameError`].
//! * [`tls`]: the cluster PKI (a cluster CA, one certificate per node with the node id in its
//!   SAN `node-<id>.herald`) and the mutual-TLS rustls configurations. [`LinkSecurity`]
//!   makes plaintext an explicit choice (tests and the simulator only).
//! * [`peer_link`]: the [`PeerLink`] actor, one per peer. It owns the *outbound* direction:
//!   connect, handshake, drain a bounded queue, keepalive PINGs, reconnect with exponential
//!   backoff and full jitter.
//! * [`listener`]: the *inbound* direction: accept (a `TcpListener`, or any accepted
//!   [`BoxStream`](herald_actors::seams::BoxStream) from the simulator), TLS handshake, check
//!   the Hello against the certificate, then deliver each `(from, PeerMessage)` to a bounded
//!   channel.
//!
//! Each direction between two nodes is its own connection: A→B traffic rides A's PeerLink to
//! B's listener, B→A traffic rides B's PeerLink to A's listener. The accepting side only ever
//! writes its Hello and Pongs.
//!
//! A corrupt, oversized or unauthenticated link is closed with a logged error and counted in
//! `herald_transport_links_closed_total{reason}` (see [`CloseReason`]); the node keeps running.
//!
//! Raft messages (`PeerMessage::Raft`) stay opaque bytes here. Because protobuf 2.28 has an
//! advisory for hostile input (RUSTSEC-2024-0437), the Raft layer must parse only messages
//! that arrived over an authenticated link: in production always [`LinkSecurity::MutualTls`].

use std::time::Duration;

pub mod frame;
pub mod listener;
pub mod peer_link;
pub mod tls;

pub use frame::{
    AckResult, ClusterId, Envelope, ForwardedEntry, FrameError, FrameReader, NodeId, PeerMessage,
    ProposalAnswer, PushId, decode_frame, encode_frame, write_frame,
};
pub use listener::{
    Acceptor, CloseReason, Inbound, InboundConfig, LinkClosed, Listener, serve_connection,
    spawn_acceptor, spawn_listener,
};
pub use peer_link::{
    LinkStatus, LinkTimings, PeerLink, PeerLinkArguments, PeerLinkConfig, PeerLinkMsg,
    PeerLinkSender, SendError,
};
pub use tls::{
    ClusterCa, LinkSecurity, MutualTls, NodeCertificate, TlsError, node_dns_name,
    node_id_from_certificate,
};

// ---------------------------------------------------------------------------------------------
// Limits: every bound of the transport, named in one place.
// ---------------------------------------------------------------------------------------------

/// The wire protocol version carried in every [`Envelope`] and in the Hello.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame body (the rmp-serde envelope), in bytes. Enforced on read and on write.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Bytes of the length prefix before each frame body.
pub const FRAME_HEADER_BYTES: usize = 4;
/// Most frames a peer link's outbound queue holds (the default, and the most a config may ask).
pub const OUTBOUND_QUEUE_FRAMES_MAX: usize = 1024;
/// Most encoded bytes a peer link's outbound queue holds at once.
pub const OUTBOUND_QUEUE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most inbound links a listener serves at once; further connections are closed at accept.
pub const INBOUND_LINKS_MAX: usize = 64;
/// Connect, TLS handshake and Hello exchange must finish within this (both directions).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Writing one frame must finish within this, or the link is dead.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default interval between keepalive PINGs on an outbound link.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Default: a PING unanswered for this long means the link is dead.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// An inbound link that delivers nothing (not even a PING) for this long is closed.
pub const INBOUND_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default first reconnect backoff (the cap of the first jittered delay).
pub const RECONNECT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Default cap of the reconnect backoff.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The ALPN protocol id both ends of a TLS link must agree on.
pub const ALPN_PEER: &[u8] = b"herald-peer/1";

const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FRAME_BYTES_MAX <= OUTBOUND_QUEUE_BYTES_MAX);
const _: () = assert!(OUTBOUND_QUEUE_FRAMES_MAX > 0 && INBOUND_LINKS_MAX > 0);
const _: () = assert!(PING_INTERVAL.as_millis() < INBOUND_IDLE_TIMEOUT.as_millis());
const _: () = assert!(RECONNECT_BACKOFF_BASE.as_millis() <= RECONNECT_BACKOFF_MAX.as_millis());
