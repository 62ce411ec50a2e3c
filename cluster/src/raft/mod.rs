//! The Raft core: durable storage and a sans-IO driver around raft-rs.
//!
//! - [`RaftStorage`] implements raft-rs [`Storage`](raft::Storage) on redb (fsync'd) or in
//!   memory, with snapshots and log compaction.
//! - [`RaftDriver`] wraps `RawNode<RaftStorage>` and the replicated
//!   [`StateMachine`](crate::state::StateMachine). The shell calls only [`RaftDriver::tick`],
//!   [`RaftDriver::step`], the `propose*` methods and [`RaftDriver::ready`]; `ready` handles
//!   raft-rs's `Ready` in its documented order (messages, snapshot, committed entries,
//!   persist, persisted messages, advance, light ready) and hands back a [`ReadyOutput`]:
//!   messages to send and what was applied. No I/O but the storage's, no async, no clock.
//! - [`encode_message`]/[`decode_message`] put Raft messages on the wire (protobuf); decoding
//!   garbage is an error, never a panic.
//!
//! A one-node group, driven by hand (a real shell sends `out.messages` to the peers named
//! in `message.to` and steps what they send back):
//!
//! ```
//! use herald_cluster::raft::eraftpb::ConfState;
//! use herald_cluster::raft::{DriverConfig, RaftDriver, RaftStorage, Role, raft_logger};
//! use herald_cluster::state::{ApplyResult, Command};
//!
//! let storage = RaftStorage::in_memory(); // or RaftStorage::open("raft.redb")?
//! storage.initialize(ConfState { voters: vec![1], ..ConfState::default() })?;
//! let mut config = DriverConfig::new(1);
//! config.fixed_election_timeout(config.election_tick);
//! let mut driver = RaftDriver::new(config, storage, &raft_logger(1))?;
//!
//! while driver.role() != Role::Leader {
//!     driver.tick();
//!     driver.ready()?;
//! }
//! let command = Command::AddMember { id: 1, addr: "10.0.0.1:7000".into(), region: "eu".into() };
//! driver.propose_command(b"request 1".to_vec(), &command)?;
//! let out = driver.ready()?;
//! assert!(out.messages.is_empty()); // no peers
//! let last = out.committed.last().unwrap();
//! assert_eq!(last.context, b"request 1");
//! assert_eq!(last.kind, herald_cluster::raft::CommittedKind::Command(ApplyResult::Applied));
//! assert_eq!(driver.machine().members().len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Determinism (DESIGN.md §12): raft-rs draws its election timeout from `thread_rng()`
//! within `[min_election_tick, max_election_tick)`. [`DriverConfig::fixed_election_timeout`]
//! sets `max = min + 1` so the timeout is fixed; give each node a different value.

pub mod chunks;
mod driver;
mod logger;
mod storage;

pub use driver::{
    CommittedEntry, CommittedKind, DriverConfig, DriverError, RaftDriver, ReadyOutput, Role,
};
pub use logger::raft_logger;
pub use storage::{RaftStorage, StorageError};

/// raft-rs's protobuf types (messages, entries, snapshots, configuration changes).
pub use raft::eraftpb;

use protobuf::Message as PbMessage;

/// Default ticks without a leader's heartbeat before a follower campaigns.
pub const ELECTION_TICK_DEFAULT: usize = 10;
/// Default ticks between a leader's heartbeats.
pub const HEARTBEAT_TICK_DEFAULT: usize = 2;
/// Default number of applied entries past the last compaction that triggers a snapshot.
pub const SNAPSHOT_THRESHOLD_ENTRIES_DEFAULT: u64 = 1024;
/// Default number of applied entries kept in the log behind a new snapshot, so a follower
/// lagging slightly catches up from the log instead of a snapshot.
pub const LOG_ENTRIES_KEPT_DEFAULT: u64 = 64;
/// Largest encoded Raft message accepted (a snapshot travels inside one message, sent in parts
/// over the links: [`chunks`]). Measured: the state takes ~83 bytes per device token, so a full
/// token table (`TOKEN_STATE_ENTRIES_MAX`, 1,000,000) is ~83 MB.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 128 * 1024 * 1024;

const _: () = assert!(HEARTBEAT_TICK_DEFAULT < ELECTION_TICK_DEFAULT);
const _: () = assert!(LOG_ENTRIES_KEPT_DEFAULT < SNAPSHOT_THRESHOLD_ENTRIES_DEFAULT);

/// Why a Raft message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The bytes are not a protobuf Raft message.
    #[error("malformed raft message: {0}")]
    Malformed(String),
    /// The message is larger than [`RAFT_MESSAGE_BYTES_MAX`].
    #[error("raft message of {bytes} bytes, at most {RAFT_MESSAGE_BYTES_MAX}")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
}

/// Encode a Raft message as protobuf bytes.
///
/// # Errors
/// [`MessageError::TooLarge`] past [`RAFT_MESSAGE_BYTES_MAX`], [`MessageError::Malformed`] if
/// protobuf refuses it.
pub fn encode_message(message: &eraftpb::Message) -> Result<Vec<u8>, MessageError> {
    let bytes = message
        .write_to_bytes()
        .map_err(|e| MessageError::Malformed(e.to_string()))?;
    if bytes.len() > RAFT_MESSAGE_BYTES_MAX {
        return Err(MessageError::TooLarge { bytes: bytes.len() });
    }
    Ok(bytes)
}

/// Decode a Raft message from protobuf bytes. Parse only bytes from authenticated peers:
/// protobuf 2.28 has an advisory (RUSTSEC-2024-0437) on hostile, deeply nested input.
///
/// # Errors
/// [`MessageError`] for oversized or malformed bytes; never panics.
pub fn decode_message(bytes: &[u8]) -> Result<eraftpb::Message, MessageError> {
    if bytes.len() > RAFT_MESSAGE_BYTES_MAX {
        return Err(MessageError::TooLarge { bytes: bytes.len() });
    }
    eraftpb::Message::parse_from_bytes(bytes).map_err(|e| MessageError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let mut message = eraftpb::Message::default();
        message.set_msg_type(eraftpb::MessageType::MsgHeartbeat);
        message.to = 2;
        message.from = 1;
        message.term = 7;
        let bytes = encode_message(&message).unwrap();
        assert_eq!(decode_message(&bytes).unwrap(), message);
        for garbage in [
            &b"\xff\xff\xff\xff"[..],
            b"\x0a\xff\xff\xff\xff\x0f",
            b"\x08",
        ] {
            assert!(decode_message(garbage).is_err());
        }
    }
}
