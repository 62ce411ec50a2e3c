//! Every bound in the engine, named in one place.
//!
//! Queues, windows, sizes and timeouts live here so their relations can be checked at
//! compile time and read at a glance.

use std::time::Duration;

/// Largest serialized payload for every push type but VoIP (bytes).
pub const PAYLOAD_BYTES_MAX: usize = 4096;
/// Largest serialized payload for VoIP pushes (bytes).
pub const PAYLOAD_VOIP_BYTES_MAX: usize = 5120;
/// Largest `apns-collapse-id` (bytes).
pub const COLLAPSE_ID_BYTES_MAX: usize = 64;
/// Largest device token accepted, in hex characters. APNs tokens are 64 today; Apple warns
/// they may grow, so Herald accepts any even length up to this bound.
pub const DEVICE_TOKEN_HEX_MAX: usize = 200;
/// Smallest device token accepted, in hex characters.
pub const DEVICE_TOKEN_HEX_MIN: usize = 16;
/// Longest `apns-topic` (bytes).
pub const TOPIC_BYTES_MAX: usize = 255;
/// APNs keeps a notification at most this long (30 days).
pub const APNS_STORE_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Provider tokens: the shortest allowed minting interval.
pub const PROVIDER_TOKEN_MINT_INTERVAL_MIN: Duration = Duration::from_secs(20 * 60);
/// Provider tokens: the default minting interval.
pub const PROVIDER_TOKEN_MINT_INTERVAL_DEFAULT: Duration = Duration::from_secs(30 * 60);
/// Provider tokens: the longest allowed minting interval (M + 20 min must stay ≤ 60 min).
pub const PROVIDER_TOKEN_MINT_INTERVAL_MAX: Duration = Duration::from_secs(40 * 60);
/// A connection keeps a provider token at least this long before switching.
pub const PROVIDER_TOKEN_SWITCH_AFTER: Duration = Duration::from_secs(20 * 60);
/// APNs refuses provider tokens whose `iat` is older than this.
pub const PROVIDER_TOKEN_AGE_MAX: Duration = Duration::from_secs(60 * 60);

/// HTTP/2: streams to assume before the server's SETTINGS arrive (and until a token is accepted).
pub const H2_INITIAL_STREAMS: usize = 1;
/// HTTP/2: the most streams one connection opens, whatever the server allows.
pub const H2_STREAMS_MAX: usize = 1000;
/// Longest a request waits for a free stream slot before failing with a retryable error.
pub const STREAM_WAIT_MAX: Duration = Duration::from_secs(5);
/// Connect (TCP + TLS + HTTP/2 handshake) timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Request timeout: from sending the headers to the full response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between keepalive PINGs on an idle connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(60);
/// A PING not answered within this is a dead peer.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest APNs response body read (error bodies are tiny JSON objects).
pub const RESPONSE_BODY_BYTES_MAX: usize = 8 * 1024;

/// HTTP/2: attempts per request on one connection when the server answers
/// `RST_STREAM(REFUSED_STREAM)` (the request was not processed, so resending is safe).
pub const REFUSED_STREAM_ATTEMPTS_MAX: u32 = 3;
/// HTTP/2: GOAWAY debug data kept for the close report (bytes).
pub const GOAWAY_DEBUG_BYTES_MAX: usize = 1024;
/// HTTP/2: after the last in-flight stream of a draining connection finishes, how long the
/// connection may take to close before it is dropped (h2 futures can otherwise hang).
pub const H2_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

const _: () = assert!(PAYLOAD_BYTES_MAX < PAYLOAD_VOIP_BYTES_MAX);
const _: () = assert!(DEVICE_TOKEN_HEX_MIN < DEVICE_TOKEN_HEX_MAX);
const _: () = assert!(
    PROVIDER_TOKEN_MINT_INTERVAL_MIN.as_secs() <= PROVIDER_TOKEN_MINT_INTERVAL_DEFAULT.as_secs()
        && PROVIDER_TOKEN_MINT_INTERVAL_DEFAULT.as_secs()
            <= PROVIDER_TOKEN_MINT_INTERVAL_MAX.as_secs()
);
// A connection starts on a token at most M old and keeps it 20 min: M + 20 ≤ 60.
const _: () = assert!(
    PROVIDER_TOKEN_MINT_INTERVAL_MAX.as_secs() + PROVIDER_TOKEN_SWITCH_AFTER.as_secs()
        <= PROVIDER_TOKEN_AGE_MAX.as_secs()
);
const _: () = assert!(H2_INITIAL_STREAMS >= 1 && H2_INITIAL_STREAMS <= H2_STREAMS_MAX);
const _: () = assert!(REFUSED_STREAM_ATTEMPTS_MAX >= 1);
const _: () = assert!(PING_TIMEOUT.as_millis() < PING_INTERVAL.as_millis());
