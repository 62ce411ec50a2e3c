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

// ---------------------------------------------------------------- actor engine

/// Most virtual shards (DeviceShard actors) one engine runs.
pub const SHARDS_MAX: u32 = 1024;
/// Default number of shards of an embedded engine.
pub const SHARDS_DEFAULT: u32 = 4;
/// Pushes one shard holds (queued, delayed or in flight) before `send` answers `Overloaded`.
pub const SHARD_QUEUE_MAX: usize = 10_000;
/// `retry_after` of [`PushError::InProgress`](crate::PushError::InProgress): about one WAL
/// group commit, after which the earlier append has its answer.
pub const IN_PROGRESS_RETRY_AFTER: Duration = Duration::from_millis(50);

/// Priority 5 and 1 pushes may fill at most this share of a shard (percent), so priority 10
/// pushes always find room.
pub const SHARD_LOW_LANES_PERCENT: usize = 80;
/// Pushes one shard has handed to tenants and not yet heard back about.
pub const SHARD_INFLIGHT_MAX: usize = 512;
/// Pushes one tenant has accepted and not yet finished (all shards) before `Overloaded`.
pub const TENANT_QUEUE_MAX: usize = 50_000;
/// Pushes in one `send_batch` call.
pub const SEND_BATCH_MAX: usize = 1000;
/// Requests one connection actor holds while it is (re)connecting.
pub const CONNECTION_PENDING_MAX: usize = 1000;
/// Connections per tenant: the default lower bound of the pool.
pub const POOL_CONNECTIONS_MIN_DEFAULT: usize = 1;
/// Connections per tenant: the default upper bound of the pool.
pub const POOL_CONNECTIONS_MAX_DEFAULT: usize = 4;
/// Connections per tenant: the hard upper bound of any pool.
pub const POOL_CONNECTIONS_MAX: usize = 64;
/// A connection is "loaded" (the pool grows) at this many requests in flight.
pub const POOL_GROW_AT_INFLIGHT: usize = 100;
/// A rate-limited tenant holds at most this much sending time of jobs waiting for tokens
/// (`per_second ×` this); more go back to their shards.
pub const TENANT_RATE_WAIT_MAX: Duration = Duration::from_secs(10);
/// Pool housekeeping (shrink, gauges) runs this often.
pub const POOL_TICK: Duration = Duration::from_secs(1);
/// An idle pool shrinks by one connection after this many idle ticks.
pub const POOL_IDLE_TICKS_BEFORE_SHRINK: u32 = 30;

/// Most sends of one push that reached APNs (the first included).
pub const PUSH_ATTEMPTS_MAX: u32 = 8;
/// Most resends of one push that never reached APNs (connection churn, refused streams).
pub const PUSH_UNSENT_RESENDS_MAX: u32 = 64;
/// Retry backoff: the first ceiling (full jitter below it), doubled per attempt.
pub const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Retry backoff: the largest ceiling.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Retry backoff for `TooManyRequests` (a device pushed too often): the first ceiling.
pub const DEVICE_THROTTLE_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Reconnect backoff: the first ceiling.
pub const RECONNECT_BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Reconnect backoff: the largest ceiling.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A push handed to a tenant whose answer has not come back after this is presumed lost
/// (its connection actor died) and is resent.
pub const DISPATCH_ANSWER_MAX: Duration = Duration::from_secs(60);

/// Circuit breaker: server errors (5xx) in a row that open it.
pub const BREAKER_SERVER_ERRORS_MAX: u32 = 10;
/// Circuit breaker: how long it stays open before a half-open probe.
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);
/// Circuit breaker: a half-open probe without an answer after this lets another one through.
pub const BREAKER_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Outcomes kept for `Herald::outcome` (oldest forgotten first).
pub const OUTCOMES_KEPT_MAX: usize = 100_000;
/// Outcome broadcast stream capacity (slow subscribers see `Lagged`).
pub const OUTCOME_STREAM_CAPACITY: usize = 4096;
/// Invalidation broadcast stream capacity.
pub const INVALIDATION_STREAM_CAPACITY: usize = 1024;
/// Push ids a shard remembers after their outcome, to drop duplicate sends (the newest are
/// kept; rebuilt from the WAL's done markers when the shard restarts).
pub const SHARD_DEDUPE_KEPT_MAX: usize = 10_000;
/// How long a shard remembers a finished push id (a resend within it returns the same id and
/// sends nothing). Read through the engine's `Clock`.
pub const SHARD_DEDUPE_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Tries to hand the pushes of a finished WAL append to the running shard (the one that
/// started it may have crashed; its successor is being started).
pub const SHARD_HANDOVER_ATTEMPTS_MAX: u32 = 50;
/// Pause before the n-th retry of a hand-over is n times this (50 tries ≈ 25 s in all).
pub const SHARD_HANDOVER_PAUSE: Duration = Duration::from_millis(20);
/// Default longest wait of `send` for its write-ahead log append once the shard took the push
/// (`Tuning::append_wait_max`); past it `send` answers `PushError::OutcomeUnknown`.
pub const SEND_APPEND_WAIT_MAX: Duration = Duration::from_secs(60);

/// Supervision: restarts of one child allowed within [`RESTART_WINDOW`] before escalating.
pub const RESTART_INTENSITY_MAX: usize = 5;
/// Supervision: the restart-intensity window.
pub const RESTART_WINDOW: Duration = Duration::from_secs(10);
/// Bound on one call from the handle into an actor.
pub const ACTOR_CALL_TIMEOUT: Duration = Duration::from_secs(10);

const _: () = assert!(SHARDS_DEFAULT >= 1 && SHARDS_DEFAULT <= SHARDS_MAX);
const _: () = assert!(SHARD_INFLIGHT_MAX <= SHARD_QUEUE_MAX);
const _: () = assert!(SHARD_LOW_LANES_PERCENT > 0 && SHARD_LOW_LANES_PERCENT < 100);
const _: () = assert!(SHARD_QUEUE_MAX <= TENANT_QUEUE_MAX);
const _: () = assert!(SEND_BATCH_MAX <= SHARD_QUEUE_MAX);
const _: () = assert!(
    POOL_CONNECTIONS_MIN_DEFAULT >= 1
        && POOL_CONNECTIONS_MIN_DEFAULT <= POOL_CONNECTIONS_MAX_DEFAULT
        && POOL_CONNECTIONS_MAX_DEFAULT <= POOL_CONNECTIONS_MAX
);
const _: () = assert!(POOL_GROW_AT_INFLIGHT <= H2_STREAMS_MAX);
const _: () = assert!(PUSH_ATTEMPTS_MAX >= 1 && PUSH_UNSENT_RESENDS_MAX >= PUSH_ATTEMPTS_MAX);
const _: () = assert!(RETRY_BACKOFF_BASE.as_millis() <= RETRY_BACKOFF_MAX.as_millis());
const _: () = assert!(RECONNECT_BACKOFF_BASE.as_millis() <= RECONNECT_BACKOFF_MAX.as_millis());
// A request is answered or timed out by the connection before the shard presumes it lost.
const _: () = assert!(
    CONNECT_TIMEOUT.as_millis() + STREAM_WAIT_MAX.as_millis() + REQUEST_TIMEOUT.as_millis()
        < DISPATCH_ANSWER_MAX.as_millis()
);
const _: () = assert!(BREAKER_SERVER_ERRORS_MAX >= 1);
// A job waiting for a rate-limit token is sent (or answered) before the shard presumes it lost.
const _: () = assert!(
    TENANT_RATE_WAIT_MAX.as_millis() + REQUEST_TIMEOUT.as_millis() + STREAM_WAIT_MAX.as_millis()
        < DISPATCH_ANSWER_MAX.as_millis()
);
const _: () = assert!(RESTART_INTENSITY_MAX >= 1);
const _: () = assert!(SHARD_DEDUPE_KEPT_MAX >= 1 && OUTCOMES_KEPT_MAX >= SHARD_DEDUPE_KEPT_MAX);
/// The `Retry-After` an `Overloaded` answer suggests.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Write-ahead log: most records pending (appended, not yet completed) in one WAL. An append
/// past it fails with `WalError::Full` and the caller answers `Overloaded`.
pub const WAL_RECORDS_MAX: usize = 100_000;
/// Write-ahead log: most payload bytes pending in one WAL.
pub const WAL_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Write-ahead log: largest single record payload (a serialized push with its headers).
pub const WAL_RECORD_BYTES_MAX: usize = 16 * 1024;
/// Group commit: the writer stops draining callers into one transaction once it holds this
/// many records (one caller's batch is never split, so a transaction may hold a little more).
pub const WAL_GROUP_COMMIT_RECORDS_MAX: usize = 1024;
/// Group commit: requests (appends or completions) that may wait for the writer.
pub const WAL_GROUP_COMMIT_QUEUE_MAX: usize = 1024;
/// Write-ahead log: most done markers (finished record ids with their finish time, the
/// durable dedupe memory) kept in one WAL, all shards together; the oldest go first.
pub const WAL_FINISHED_MAX: usize = 100_000;
/// Write-ahead log: how long a done marker is kept after its record finished.
pub const WAL_FINISHED_RETENTION: Duration = SHARD_DEDUPE_RETENTION;

/// Token state: most (tenant, token) entries kept by one store.
pub const TOKEN_STATE_ENTRIES_MAX: usize = 1_000_000;
/// Token state: invalidations buffered per subscriber of the invalidation stream before it lags.
pub const TOKEN_INVALIDATIONS_CHANNEL_CAPACITY: usize = 4096;

// A WAL must hold at least one largest push, and a record must fit in the byte budget.
const _: () = assert!(WAL_RECORD_BYTES_MAX >= PAYLOAD_VOIP_BYTES_MAX);
const _: () = assert!(WAL_RECORD_BYTES_MAX as u64 <= WAL_BYTES_MAX);
const _: () =
    assert!(WAL_GROUP_COMMIT_RECORDS_MAX >= 1 && WAL_GROUP_COMMIT_RECORDS_MAX <= WAL_RECORDS_MAX);
const _: () = assert!(WAL_GROUP_COMMIT_QUEUE_MAX >= 1);
const _: () = assert!(TOKEN_STATE_ENTRIES_MAX >= 1 && TOKEN_INVALIDATIONS_CHANNEL_CAPACITY >= 1);
// A WAL remembers at least what one shard does; markers outlive nothing a shard remembers.
const _: () = assert!(WAL_FINISHED_MAX >= SHARD_DEDUPE_KEPT_MAX);
const _: () = assert!(WAL_FINISHED_RETENTION.as_millis() >= SHARD_DEDUPE_RETENTION.as_millis());
// `send` waits for the WAL longer than for the shard to take the push.
const _: () = assert!(SEND_APPEND_WAIT_MAX.as_millis() >= ACTOR_CALL_TIMEOUT.as_millis());
// The default engine's shards fit in the default WAL.
const _: () = assert!(SHARD_QUEUE_MAX * (SHARDS_DEFAULT as usize) <= WAL_RECORDS_MAX);
