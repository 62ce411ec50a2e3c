//! The record: every accepted notification (bounded) and counters of every answer.

use std::collections::{BTreeMap, VecDeque};

use herald_actors::seams::Timestamp;
use serde::{Deserialize, Serialize};

/// One notification the emulator accepted (answered 200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedNotification {
    /// The `apns-id` answered (the request's, or one the emulator generated).
    pub apns_id: String,
    /// The device token from the path (lowercase hex).
    pub device_token: String,
    /// The `apns-topic` (or the certificate's topic when absent).
    pub topic: String,
    /// The `apns-push-type`, if sent.
    pub push_type: Option<String>,
    /// The priority (10 when not sent).
    pub priority: u8,
    /// The `apns-collapse-id`, if sent.
    pub collapse_id: Option<String>,
    /// The `apns-expiration`, if sent (seconds since the epoch).
    pub expiration: Option<u64>,
    /// SHA-256 of the payload, lowercase hex.
    pub payload_sha256: String,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// When it was accepted (emulator clock, ms since the epoch).
    pub time_ms: u64,
    /// The connection it arrived on.
    pub connection_id: u64,
    /// The broadcast channel (`apns-channel-id`) for a broadcast push
    /// (`POST /4/broadcasts/apps/<bundle>`); `None` for a device push. A broadcast has an
    /// empty `device_token`.
    #[serde(default)]
    pub channel_id: Option<String>,
}

impl AcceptedNotification {
    /// When it was accepted.
    pub fn time(&self) -> Timestamp {
        Timestamp::from_millis(self.time_ms)
    }
}

/// Streams seen on one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStats {
    /// The connection id (sequential from 1).
    pub id: u64,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` advertised on it.
    pub max_concurrent_streams: u32,
    /// The most streams open at once.
    pub max_concurrent_seen: u64,
    /// Streams the client opened (HEADERS frames seen on the wire).
    pub streams_opened: u64,
    /// Streams handed to the emulator (the rest were refused by the HTTP/2 layer).
    pub streams_accepted: u64,
    /// Streams opened beyond the advertised limit (refused with `REFUSED_STREAM`).
    pub stream_limit_violations: u64,
    /// Token auth only: streams opened while another stream was open, before the first
    /// answer to a request with an accepted provider token was sent (APNs allows one stream
    /// until then). Counted only; such streams are answered normally.
    #[serde(default)]
    pub one_stream_violations: u64,
    /// The connection is still open.
    pub open: bool,
}

/// Everything counted so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Notifications accepted (200) in total, including ones dropped from the record.
    pub accepted_total: u64,
    /// Answers by status code.
    pub answers_by_status: BTreeMap<u16, u64>,
    /// Error answers by reason.
    pub answers_by_reason: BTreeMap<String, u64>,
    /// Streams reset with `REFUSED_STREAM` by fault injection.
    pub refused_streams: u64,
    /// Connections dropped abruptly by fault injection.
    pub dropped_connections: u64,
    /// GOAWAY frames sent (fault injection, idle timeout, settings change, shutdown).
    pub goaways: u64,
    /// Broadcast pushes accepted (also counted in `accepted_total`).
    #[serde(default)]
    pub broadcasts_total: u64,
    /// Connections accepted in total.
    pub connections_total: u64,
    /// Per-connection stream statistics, by connection id.
    pub connections: Vec<ConnectionStats>,
}

/// The bounded record of accepted notifications plus answer counters.
#[derive(Debug)]
pub(crate) struct Record {
    capacity: usize,
    accepted: VecDeque<AcceptedNotification>,
    pub(crate) stats: Stats,
}

impl Record {
    pub(crate) fn new(capacity: usize) -> Self {
        Record {
            capacity: capacity.max(1),
            accepted: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub(crate) fn accept(&mut self, n: AcceptedNotification) {
        if self.accepted.len() >= self.capacity {
            self.accepted.pop_front();
        }
        self.accepted.push_back(n);
        self.stats.accepted_total += 1;
        *self.stats.answers_by_status.entry(200).or_default() += 1;
    }

    /// A successful answer that records no notification (channel management).
    pub(crate) fn answer_ok(&mut self, status: u16) {
        *self.stats.answers_by_status.entry(status).or_default() += 1;
    }

    pub(crate) fn answer(&mut self, status: u16, reason: &str) {
        *self.stats.answers_by_status.entry(status).or_default() += 1;
        *self
            .stats
            .answers_by_reason
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    pub(crate) fn accepted(&self) -> Vec<AcceptedNotification> {
        self.accepted.iter().cloned().collect()
    }

    pub(crate) fn clear(&mut self) {
        let connections = std::mem::take(&mut self.stats.connections);
        self.accepted.clear();
        self.stats = Stats {
            connections: connections.into_iter().filter(|c| c.open).collect(),
            ..Stats::default()
        };
    }
}
