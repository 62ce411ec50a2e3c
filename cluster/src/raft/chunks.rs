//! Raft messages larger than one transport frame (snapshots, mostly), sent in parts.
//!
//! raft-rs puts a whole snapshot in one `MsgSnapshot`. The transport's frames are at most
//! [`FRAME_BYTES_MAX`](crate::transport::FRAME_BYTES_MAX) and its outbound queue at most
//! [`OUTBOUND_QUEUE_BYTES_MAX`], so an encoded Raft
//! message longer than the chunk size travels as [`PeerMessage::RaftPart`]s:
//!
//! - the sender ([`send_parts`], a task per message) queues the parts one by one, waiting for
//!   room in the link's queue so the parts never crowd out other traffic, and gives up after
//!   [`PARTS_SEND_TIMEOUT`];
//! - the receiver ([`Reassembly`]) keeps one message in assembly per peer, tolerates
//!   duplicated and reordered parts, drops a message whose parts exceed
//!   [`RAFT_MESSAGE_BYTES_MAX`], and hands back the whole
//!   message once every part arrived. A new message from the same peer replaces an unfinished
//!   one: a lost part costs that message, which raft-rs sends again (a snapshot is re-sent
//!   after the follower rejects the log that follows it).
//!
//! ```
//! use herald_cluster::raft::chunks::{Reassembly, split};
//! use herald_cluster::transport::PeerMessage;
//!
//! let message: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
//! let parts = split(7, &message, 4096);
//! assert_eq!(parts.len(), 3);
//! let mut reassembly = Reassembly::default();
//! let mut whole = None;
//! for part in parts.into_iter().rev() {
//!     let PeerMessage::RaftPart { message: id, index, total, bytes } = part else { unreachable!() };
//!     whole = reassembly.accept(2, id, index, total, bytes).unwrap();
//! }
//! assert_eq!(whole, Some(message));
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use crate::transport::{OUTBOUND_QUEUE_BYTES_MAX, PeerLinkSender, PeerMessage, SendError};

use super::RAFT_MESSAGE_BYTES_MAX;

/// Encoded Raft messages longer than this are sent in parts of this size.
pub const RAFT_PART_BYTES_DEFAULT: usize = 1024 * 1024;
/// How long a message's parts may take to be queued before the send is given up.
pub const PARTS_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a parts sender looks for room in a full queue.
const ROOM_POLL: Duration = Duration::from_millis(5);
/// The parts of one message fill at most this share of the link's queue.
const QUEUE_SHARE_BYTES: usize = OUTBOUND_QUEUE_BYTES_MAX / 2;

/// `bytes` (one encoded Raft message) cut into parts of at most `part_bytes`, numbered for
/// message `message` (the sender's own counter).
pub fn split(message: u64, bytes: &[u8], part_bytes: usize) -> Vec<PeerMessage> {
    let part_bytes = part_bytes.max(1);
    if bytes.is_empty() {
        return vec![PeerMessage::RaftPart {
            message,
            index: 0,
            total: 1,
            bytes: Vec::new(),
        }];
    }
    let total = u32::try_from(bytes.len().div_ceil(part_bytes)).unwrap_or(u32::MAX);
    bytes
        .chunks(part_bytes)
        .enumerate()
        .map(|(index, chunk)| PeerMessage::RaftPart {
            message,
            index: index as u32,
            total,
            bytes: chunk.to_vec(),
        })
        .collect()
}

/// Queue `parts` on `link` in order, waiting for room; true once all are queued.
pub async fn send_parts(link: PeerLinkSender, parts: Vec<PeerMessage>) -> bool {
    let deadline = tokio::time::Instant::now() + PARTS_SEND_TIMEOUT;
    for part in parts {
        let size = match &part {
            PeerMessage::RaftPart { bytes, .. } => bytes.len(),
            _ => 0,
        };
        loop {
            if link.queued_bytes() + size <= QUEUE_SHARE_BYTES {
                match link.try_send(part.clone()) {
                    Ok(()) => break,
                    Err(SendError::Overloaded { .. }) => {}
                    Err(e) => {
                        tracing::debug!(to = link.peer().0, error = %e, "raft part not sent");
                        return false;
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(to = link.peer().0, "raft message parts not queued in time");
                return false;
            }
            tokio::time::sleep(ROOM_POLL).await;
        }
    }
    true
}

/// Why a part was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    /// `total` is zero or `index` is not below it.
    #[error("part {index} of {total}")]
    Numbering {
        /// The part's index.
        index: u32,
        /// The message's part count.
        total: u32,
    },
    /// The message's parts add up to more than a Raft message may hold.
    #[error("raft message parts exceed {RAFT_MESSAGE_BYTES_MAX} bytes")]
    TooLarge,
}

/// Messages being reassembled, one per peer.
#[derive(Debug, Default)]
pub struct Reassembly {
    by_peer: BTreeMap<u64, Partial>,
}

#[derive(Debug)]
struct Partial {
    message: u64,
    total: u32,
    parts: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
}

impl Reassembly {
    /// Take part `index` of `total` of message `message` from `peer`. Returns the whole
    /// message once its last missing part arrived. A duplicate part is ignored; a part of
    /// another message from the same peer starts that message over.
    ///
    /// # Errors
    /// [`PartError`] for a part that cannot belong to a valid message (the peer's message in
    /// assembly is dropped).
    pub fn accept(
        &mut self,
        peer: u64,
        message: u64,
        index: u32,
        total: u32,
        bytes: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, PartError> {
        if total == 0 || index >= total {
            self.by_peer.remove(&peer);
            return Err(PartError::Numbering { index, total });
        }
        let partial = self.by_peer.entry(peer).or_insert_with(|| Partial {
            message,
            total,
            parts: BTreeMap::new(),
            bytes: 0,
        });
        if partial.message != message || partial.total != total {
            *partial = Partial {
                message,
                total,
                parts: BTreeMap::new(),
                bytes: 0,
            };
        }
        if partial.parts.contains_key(&index) {
            return Ok(None);
        }
        partial.bytes += bytes.len();
        if partial.bytes > RAFT_MESSAGE_BYTES_MAX {
            self.by_peer.remove(&peer);
            return Err(PartError::TooLarge);
        }
        partial.parts.insert(index, bytes);
        if partial.parts.len() < partial.total as usize {
            return Ok(None);
        }
        let Some(done) = self.by_peer.remove(&peer) else {
            return Ok(None);
        };
        let mut whole = Vec::with_capacity(done.bytes);
        for part in done.parts.into_values() {
            whole.extend_from_slice(&part);
        }
        Ok(Some(whole))
    }

    /// Forget what `peer` was sending (its link went away).
    pub fn forget(&mut self, peer: u64) {
        self.by_peer.remove(&peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(message: u64, bytes: &[u8], size: usize) -> Vec<(u64, u32, u32, Vec<u8>)> {
        split(message, bytes, size)
            .into_iter()
            .map(|p| match p {
                PeerMessage::RaftPart {
                    message,
                    index,
                    total,
                    bytes,
                } => (message, index, total, bytes),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn duplicates_and_reordering_are_tolerated() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut all = parts(1, &bytes, 100);
        assert_eq!(all.len(), 10);
        all.swap(0, 9);
        all.insert(3, all[2].clone());
        let mut r = Reassembly::default();
        let mut whole = None;
        for (message, index, total, part) in all {
            if let Some(done) = r.accept(5, message, index, total, part).unwrap() {
                assert!(whole.is_none(), "completed twice");
                whole = Some(done);
            }
        }
        assert_eq!(whole, Some(bytes));
    }

    #[test]
    fn a_new_message_replaces_an_unfinished_one_and_peers_do_not_mix() {
        let a = vec![1u8; 300];
        let b = vec![2u8; 300];
        let mut r = Reassembly::default();
        let first = parts(1, &a, 100);
        // Peer 5 sends two parts of message 1, then all of message 2.
        for (m, i, t, p) in first.iter().take(2).cloned() {
            assert_eq!(r.accept(5, m, i, t, p).unwrap(), None);
        }
        // Peer 6's parts of message 1 are its own.
        for (m, i, t, p) in first.iter().take(2).cloned() {
            assert_eq!(r.accept(6, m, i, t, p).unwrap(), None);
        }
        let mut got = None;
        for (m, i, t, p) in parts(2, &b, 100) {
            got = r.accept(5, m, i, t, p).unwrap().or(got);
        }
        assert_eq!(got, Some(b));
        let (m, i, t, p) = first[2].clone();
        assert_eq!(r.accept(6, m, i, t, p).unwrap(), Some(a));
    }

    #[test]
    fn bad_numbering_and_oversize_are_refused() {
        let mut r = Reassembly::default();
        assert!(r.accept(1, 1, 3, 3, vec![0]).is_err());
        assert!(r.accept(1, 1, 0, 0, vec![0]).is_err());
        let big = vec![0u8; RAFT_MESSAGE_BYTES_MAX / 2 + 1];
        assert_eq!(r.accept(1, 2, 0, 3, big.clone()).unwrap(), None);
        assert_eq!(r.accept(1, 2, 1, 3, big), Err(PartError::TooLarge));
        // The message was dropped: its last part alone does not complete anything.
        assert_eq!(r.accept(1, 2, 2, 3, vec![0]).unwrap(), None);
    }

    #[test]
    fn an_empty_message_is_one_part() {
        let all = parts(9, &[], 10);
        assert_eq!(all.len(), 1);
        let (m, i, t, p) = all[0].clone();
        assert_eq!(
            Reassembly::default().accept(1, m, i, t, p).unwrap(),
            Some(vec![])
        );
    }
}
