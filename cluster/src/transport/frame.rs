//! The wire format: length-prefixed rmp-serde envelopes.
//!
//! ```text
//! +----------------+--------------------------------------------------+
//! | len: u32 (BE)  | body: rmp-serde Envelope { version, from, msg }   |
//! +----------------+--------------------------------------------------+
//!                    1 ..= FRAME_BYTES_MAX bytes
//! ```
//!
//! [`encode_frame`] and [`decode_frame`] are sans-IO; [`FrameReader`] and [`write_frame`]
//! put them on an `AsyncRead`/`AsyncWrite`. Every failure is a [`FrameError`], never a panic.
//!
//! ```
//! use bytes::BytesMut;
//! use herald_cluster::transport::{Envelope, NodeId, PeerMessage, decode_frame, encode_frame};
//!
//! let envelope = Envelope::new(NodeId(7), PeerMessage::Ping { nonce: 42 });
//! let mut wire = BytesMut::from(&encode_frame(&envelope).unwrap()[..]);
//! assert_eq!(decode_frame(&mut wire).unwrap(), Some(envelope));
//! assert!(wire.is_empty());
//! ```

use std::fmt;
use std::io;

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES, PROTOCOL_VERSION};

/// A cluster node's id (the Raft id). Never zero in a real cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A cluster's id: links between nodes of different clusters are refused at the Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A push id (the `apns-id` UUID's 16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PushId(pub [u8; 16]);

/// One frame's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The protocol version; always [`PROTOCOL_VERSION`] on frames this code writes or accepts.
    pub version: u16,
    /// The sending node. The receiver checks it against the link's authenticated peer.
    pub from: NodeId,
    /// The message.
    pub msg: PeerMessage,
}

impl Envelope {
    /// An envelope of the current [`PROTOCOL_VERSION`].
    pub fn new(from: NodeId, msg: PeerMessage) -> Self {
        Envelope {
            version: PROTOCOL_VERSION,
            from,
            msg,
        }
    }
}

/// What nodes say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PeerMessage {
    /// The first frame on every link, in both directions: who is speaking, in which cluster.
    Hello {
        /// The speaker. On a TLS link it must match the node id in the speaker's certificate.
        node: NodeId,
        /// The speaker's cluster.
        cluster: ClusterId,
        /// The speaker's protocol version.
        version: u16,
    },
    /// A raft-rs message, protobuf-encoded. Opaque here; parse it only from an
    /// authenticated link (see the module docs of [`transport`](super)).
    Raft(#[serde(with = "binary")] Vec<u8>),
    /// A push forwarded to its shard's owner.
    ForwardPush {
        /// The push id.
        push_id: PushId,
        /// The encoded push (opaque to the transport).
        #[serde(with = "binary")]
        push: Vec<u8>,
    },
    /// The owner's answer to a [`ForwardPush`](PeerMessage::ForwardPush).
    Ack {
        /// The push id.
        push_id: PushId,
        /// Whether the owner took it.
        result: AckResult,
    },
    /// A push's final outcome, sent back to the node that accepted it.
    Outcome {
        /// The push id.
        push_id: PushId,
        /// The encoded outcome (opaque to the transport).
        #[serde(with = "binary")]
        outcome: Vec<u8>,
    },
    /// The origin of a forwarded push asks its owner for the push's outcome (the owner's
    /// relay missed it, e.g. the owner restarted before finishing it). The owner answers with
    /// an [`Outcome`](PeerMessage::Outcome) if it knows one; else nothing (asked again later).
    OutcomeQuery {
        /// The push id.
        push_id: PushId,
    },
    /// A follower's proposal, forwarded to the leader it knows.
    ProposeForward {
        /// The follower's id for this forward (echoed in the answer).
        request_id: u64,
        /// The command, encoded as a replicated-state envelope (`state::encode`).
        #[serde(with = "binary")]
        command: Vec<u8>,
    },
    /// The leader's answer to a [`ProposeForward`](PeerMessage::ProposeForward).
    ProposeAnswer {
        /// The forward's `request_id`.
        request_id: u64,
        /// What became of it.
        result: ProposalAnswer,
    },
    /// Keepalive request.
    Ping {
        /// Echoed in the [`Pong`](PeerMessage::Pong).
        nonce: u64,
    },
    /// Keepalive answer.
    Pong {
        /// The [`Ping`](PeerMessage::Ping)'s nonce.
        nonce: u64,
    },
    /// Pushes forwarded to their shards' owner together (one message, one engine batch at
    /// the owner): answered by one [`AckBatch`](PeerMessage::AckBatch).
    ForwardBatch {
        /// The pushes: id and encoded push (opaque to the transport), as in
        /// [`ForwardPush`](PeerMessage::ForwardPush).
        pushes: Vec<ForwardedEntry>,
    },
    /// The owner's answers to a [`ForwardBatch`](PeerMessage::ForwardBatch), one per push.
    AckBatch {
        /// Push id and whether the owner took it.
        results: Vec<(PushId, AckResult)>,
    },
    /// Part of a Raft message too large for one frame (a snapshot); see
    /// [`raft::chunks`](crate::raft::chunks). Opaque here, like [`Raft`](PeerMessage::Raft).
    RaftPart {
        /// The sender's number for the whole message.
        message: u64,
        /// This part's index, from 0.
        index: u32,
        /// How many parts the message has.
        total: u32,
        /// The part's bytes.
        #[serde(with = "binary")]
        bytes: Vec<u8>,
    },
}

impl PeerMessage {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMessage::Hello { .. } => "hello",
            PeerMessage::Raft(_) => "raft",
            PeerMessage::ForwardPush { .. } => "forward_push",
            PeerMessage::Ack { .. } => "ack",
            PeerMessage::Outcome { .. } => "outcome",
            PeerMessage::OutcomeQuery { .. } => "outcome_query",
            PeerMessage::ProposeForward { .. } => "propose_forward",
            PeerMessage::ProposeAnswer { .. } => "propose_answer",
            PeerMessage::Ping { .. } => "ping",
            PeerMessage::Pong { .. } => "pong",
            PeerMessage::RaftPart { .. } => "raft_part",
            PeerMessage::ForwardBatch { .. } => "forward_batch",
            PeerMessage::AckBatch { .. } => "ack_batch",
        }
    }
}

/// One push of a [`PeerMessage::ForwardBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedEntry {
    /// The push id.
    pub push_id: PushId,
    /// The encoded push (opaque to the transport).
    #[serde(with = "binary")]
    pub push: Vec<u8>,
}

/// The owner's answer to a forwarded push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AckResult {
    /// Written to the owner's WAL: the push is accepted.
    Accepted,
    /// The owner is shedding load; the accepting node answers `Overloaded`.
    Overloaded,
    /// The receiver does not own the push's shard (a stale shard map); re-route.
    NotOwner,
    /// Refused for another reason.
    Refused {
        /// Why.
        reason: String,
    },
    /// Fenced: the push's (shard, region, epoch) is not the receiver's current ownership.
    /// `epoch` is the region's epoch in the receiver's applied shard map (0: none).
    StaleEpoch {
        /// The receiver's current epoch for the push's region.
        epoch: u64,
    },
    /// The receiver's engine has no such tenant.
    UnknownTenant,
    /// The push is being appended by an earlier send of it (the origin's re-send overtook
    /// its first send): its fate is that append's. Re-send after a pause; the owner's dedupe
    /// then answers `Accepted` (the append succeeded) or appends it afresh (it failed).
    InProgress,
}

/// The leader's answer to a forwarded proposal. Success carries nothing: the follower answers
/// its caller when it applies the entry itself (with the result it computed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ProposalAnswer {
    /// Applied on the leader.
    Applied,
    /// The receiver is not the leader; `leader` is the one it knows.
    NotLeader {
        /// The leader the receiver knows of.
        leader: Option<u64>,
    },
    /// The term changed before the entry was applied on the leader: outcome unknown.
    LeadershipLost,
    /// The command is invalid (the error text).
    Invalid(String),
    /// The leader has too many pending proposals.
    Overloaded,
    /// Raft refused it, or the leader stopped (the error text).
    Refused(String),
}

/// Why a frame could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix (on read) or the encoded body (on write) exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// The frame body's length.
        len: usize,
        /// [`FRAME_BYTES_MAX`].
        max: usize,
    },
    /// A zero length prefix.
    #[error("empty frame")]
    Empty,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({received} of {expected} bytes)")]
    Truncated {
        /// Bytes the frame needed (header + body).
        expected: usize,
        /// Bytes received before the end.
        received: usize,
    },
    /// The body is not a valid envelope.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The envelope's version is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion {
        /// The version received.
        version: u16,
    },
    /// The envelope could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(String),
    /// The underlying stream failed.
    #[error("i/o error ({kind:?}): {message}")]
    Io {
        /// The I/O error's kind.
        kind: io::ErrorKind,
        /// Its message.
        message: String,
    },
    /// Writing a frame took longer than [`WRITE_TIMEOUT`](super::WRITE_TIMEOUT).
    #[error("write timed out")]
    WriteTimeout,
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// Encode `envelope` as one frame (length prefix + body).
///
/// # Errors
/// [`FrameError::Oversized`] if the body exceeds [`FRAME_BYTES_MAX`];
/// [`FrameError::UnsupportedVersion`] if the envelope is not of [`PROTOCOL_VERSION`];
/// [`FrameError::Encode`] if serialization fails.
pub fn encode_frame(envelope: &Envelope) -> Result<Vec<u8>, FrameError> {
    if envelope.version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion {
            version: envelope.version,
        });
    }
    let mut out = vec![0u8; FRAME_HEADER_BYTES];
    rmp_serde::encode::write(&mut out, envelope).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - FRAME_HEADER_BYTES;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::Oversized {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    // `len <= FRAME_BYTES_MAX <= u32::MAX` (checked at compile time in `transport`).
    let prefix = (len as u32).to_be_bytes();
    out[..FRAME_HEADER_BYTES].copy_from_slice(&prefix);
    Ok(out)
}

/// Take one frame from the front of `buf`, if a whole one is there.
///
/// Returns `Ok(None)` (consuming nothing) when more bytes are needed. An oversized length
/// prefix is refused as soon as the 4 header bytes are in, before any body arrives.
///
/// # Errors
/// [`FrameError::Empty`], [`FrameError::Oversized`], [`FrameError::Malformed`] or
/// [`FrameError::UnsupportedVersion`]. After an error the stream is unusable: close it.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Envelope>, FrameError> {
    let Some(len) = peek_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < FRAME_HEADER_BYTES + len {
        return Ok(None);
    }
    buf.advance(FRAME_HEADER_BYTES);
    let body = buf.split_to(len);
    decode_body(&body).map(Some)
}

/// Write `frame` (from [`encode_frame`]) and flush.
///
/// # Errors
/// [`FrameError::Oversized`] if `frame` is not a valid-length frame; [`FrameError::Io`].
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> Result<(), FrameError> {
    let len = frame.len().saturating_sub(FRAME_HEADER_BYTES);
    if frame.len() <= FRAME_HEADER_BYTES || len > FRAME_BYTES_MAX {
        return Err(FrameError::Oversized {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    writer.write_all(frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads envelopes from a stream. Cancel-safe: a `read_envelope` future dropped mid-frame
/// loses nothing, the bytes already read stay buffered.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

/// Bytes asked of the stream per read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `inner`.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
        }
    }

    /// The next envelope; `Ok(None)` when the stream ends cleanly between frames.
    ///
    /// # Errors
    /// Any [`FrameError`]; [`FrameError::Truncated`] if the stream ends inside a frame.
    pub async fn read_envelope(&mut self) -> Result<Option<Envelope>, FrameError> {
        loop {
            if let Some(envelope) = decode_frame(&mut self.buf)? {
                return Ok(Some(envelope));
            }
            // Read no further than the current frame needs (bounded by FRAME_BYTES_MAX,
            // which `decode_frame` has already checked).
            let wanted = match peek_len(&self.buf)? {
                Some(len) => FRAME_HEADER_BYTES + len - self.buf.len(),
                None => FRAME_HEADER_BYTES - self.buf.len(),
            };
            self.buf.reserve(wanted.clamp(1, READ_CHUNK_BYTES));
            // `read_buf` is cancel-safe: it either reads into `buf` or did nothing.
            let read = self.inner.read_buf(&mut self.buf).await?;
            if read == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let expected =
                    peek_len(&self.buf)?.map_or(FRAME_HEADER_BYTES, |len| FRAME_HEADER_BYTES + len);
                return Err(FrameError::Truncated {
                    expected,
                    received: self.buf.len(),
                });
            }
        }
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The underlying stream, dropping any buffered bytes.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// The body length announced by the header at the front of `buf`, checked.
fn peek_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::Oversized {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    Ok(Some(len))
}

fn decode_body(body: &[u8]) -> Result<Envelope, FrameError> {
    // Check the version before the message: a newer peer's messages may not parse here.
    let (version, _, _): (u16, serde::de::IgnoredAny, serde::de::IgnoredAny) =
        rmp_serde::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion { version });
    }
    let mut cursor = io::Cursor::new(body);
    let envelope: Envelope =
        rmp_serde::from_read(&mut cursor).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if cursor.position() != body.len() as u64 {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after the envelope",
            body.len() as u64 - cursor.position()
        )));
    }
    Ok(envelope)
}

/// Serde for `Vec<u8>` as a MessagePack `bin` (not an array of integers).
mod binary {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Bounded: the whole frame is at most FRAME_BYTES_MAX bytes.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element::<u8>()? {
                out.push(byte);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_message() -> impl Strategy<Value = PeerMessage> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..512);
        let push_id = any::<[u8; 16]>().prop_map(PushId);
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u16>()).prop_map(|(n, c, v)| PeerMessage::Hello {
                node: NodeId(n),
                cluster: ClusterId(c),
                version: v
            }),
            bytes.clone().prop_map(PeerMessage::Raft),
            (any::<u64>(), any::<u32>(), any::<u32>(), bytes.clone()).prop_map(
                |(message, index, total, bytes)| PeerMessage::RaftPart {
                    message,
                    index,
                    total,
                    bytes
                }
            ),
            (push_id.clone(), bytes.clone())
                .prop_map(|(push_id, push)| PeerMessage::ForwardPush { push_id, push }),
            (push_id.clone(), bytes.clone()).prop_map(|(push_id, push)| {
                PeerMessage::ForwardBatch {
                    pushes: vec![ForwardedEntry { push_id, push }],
                }
            }),
            push_id.clone().prop_map(|push_id| PeerMessage::AckBatch {
                results: vec![(push_id, AckResult::Accepted)],
            }),
            (push_id.clone(), ".{0,40}").prop_map(|(push_id, reason)| PeerMessage::Ack {
                push_id,
                result: AckResult::Refused { reason }
            }),
            push_id.clone().prop_map(|push_id| PeerMessage::Ack {
                push_id,
                result: AckResult::Accepted
            }),
            (push_id.clone(), bytes.clone())
                .prop_map(|(push_id, outcome)| PeerMessage::Outcome { push_id, outcome }),
            push_id
                .clone()
                .prop_map(|push_id| PeerMessage::OutcomeQuery { push_id }),
            (push_id, any::<u64>()).prop_map(|(push_id, epoch)| PeerMessage::Ack {
                push_id,
                result: AckResult::StaleEpoch { epoch }
            }),
            (any::<u64>(), bytes).prop_map(|(request_id, command)| {
                PeerMessage::ProposeForward {
                    request_id,
                    command,
                }
            }),
            (any::<u64>(), proptest::option::of(any::<u64>())).prop_map(|(request_id, leader)| {
                PeerMessage::ProposeAnswer {
                    request_id,
                    result: ProposalAnswer::NotLeader { leader },
                }
            }),
            any::<u64>().prop_map(|nonce| PeerMessage::Ping { nonce }),
            any::<u64>().prop_map(|nonce| PeerMessage::Pong { nonce }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(from in any::<u64>(), msgs in proptest::collection::vec(arb_message(), 1..4)) {
            let mut wire = BytesMut::new();
            let envelopes: Vec<Envelope> =
                msgs.into_iter().map(|m| Envelope::new(NodeId(from), m)).collect();
            for e in &envelopes {
                wire.extend_from_slice(&encode_frame(e).unwrap());
            }
            for e in &envelopes {
                let decoded = decode_frame(&mut wire).unwrap();
                prop_assert_eq!(decoded.as_ref(), Some(e));
            }
            prop_assert!(wire.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut wire = BytesMut::from(&bytes[..]);
            // Whatever happens, it is a value, and the loop ends.
            while let Ok(Some(_)) = decode_frame(&mut wire) {}
        }

        #[test]
        fn arbitrary_body_never_panics(body in proptest::collection::vec(any::<u8>(), 1..1024)) {
            let mut wire = BytesMut::new();
            wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
            wire.extend_from_slice(&body);
            let _ = decode_frame(&mut wire);
        }

        #[test]
        fn every_prefix_of_a_frame_waits_for_more(msg in arb_message()) {
            let frame = encode_frame(&Envelope::new(NodeId(1), msg)).unwrap();
            for cut in 0..frame.len() {
                let mut wire = BytesMut::from(&frame[..cut]);
                prop_assert_eq!(decode_frame(&mut wire), Ok(None));
                prop_assert_eq!(wire.len(), cut);
            }
        }
    }

    #[test]
    fn raft_bytes_are_msgpack_bin() {
        let frame = encode_frame(&Envelope::new(
            NodeId(1),
            PeerMessage::Raft(vec![0xff; 1000]),
        ))
        .unwrap();
        assert!(frame.len() < 1100, "{}", frame.len());
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_the_body() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&((FRAME_BYTES_MAX as u32) + 1).to_be_bytes());
        assert_eq!(
            decode_frame(&mut wire),
            Err(FrameError::Oversized {
                len: FRAME_BYTES_MAX + 1,
                max: FRAME_BYTES_MAX
            })
        );
        let mut wire = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(decode_frame(&mut wire), Err(FrameError::Empty));
    }

    #[test]
    fn oversized_body_is_refused_on_write() {
        let big = Envelope::new(NodeId(1), PeerMessage::Raft(vec![0; FRAME_BYTES_MAX]));
        assert!(matches!(
            encode_frame(&big),
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn unknown_version_is_typed() {
        let mut e = Envelope::new(NodeId(1), PeerMessage::Ping { nonce: 1 });
        e.version = 99;
        assert_eq!(
            encode_frame(&e),
            Err(FrameError::UnsupportedVersion { version: 99 })
        );
        // A newer peer's frame: version 2 with a message this build does not know.
        let body = rmp_serde::to_vec(&(2u16, 5u64, "Gossip")).unwrap();
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
        wire.extend_from_slice(&body);
        assert_eq!(
            decode_frame(&mut wire),
            Err(FrameError::UnsupportedVersion { version: 2 })
        );
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let frame =
            encode_frame(&Envelope::new(NodeId(1), PeerMessage::Ping { nonce: 1 })).unwrap();
        let body_len = frame.len() - FRAME_HEADER_BYTES;
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&(body_len as u32 + 1).to_be_bytes());
        wire.extend_from_slice(&frame[FRAME_HEADER_BYTES..]);
        wire.extend_from_slice(&[0xc0]);
        assert!(matches!(
            decode_frame(&mut wire),
            Err(FrameError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn reader_reports_truncation_and_clean_end() {
        let frame =
            encode_frame(&Envelope::new(NodeId(3), PeerMessage::Pong { nonce: 9 })).unwrap();
        let mut two = frame.clone();
        two.extend_from_slice(&frame[..frame.len() - 1]);
        let mut reader = FrameReader::new(&two[..]);
        assert_eq!(
            reader.read_envelope().await.unwrap().map(|e| e.msg),
            Some(PeerMessage::Pong { nonce: 9 })
        );
        assert!(matches!(
            reader.read_envelope().await,
            Err(FrameError::Truncated { .. })
        ));
        let mut reader = FrameReader::new(&frame[..]);
        assert!(reader.read_envelope().await.unwrap().is_some());
        assert_eq!(reader.read_envelope().await, Ok(None));
    }
}
