//! Every bound of the HTTP API, named in one place (see `docs/api.md`, "Limits").

use std::time::Duration;

/// Largest request body accepted, in bytes (a body limit layer answers 413 past it). A full
/// batch of VoIP pushes fits: 5120 bytes of payload each, plus headers and tokens.
pub const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most pushes in one `POST /v1/push/batch` (the engine's own batch limit).
pub const PUSH_BATCH_MAX: usize = herald_actors::limits::SEND_BATCH_MAX;

/// Most notifications × tokens in one gorush-compatible `POST /api/push`.
pub const GORUSH_PUSHES_MAX: usize = PUSH_BATCH_MAX;

/// Longest `Idempotency-Key`, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// Registered devices per tenant at most; registering past it answers 409 `limit_reached`.
pub const DEVICES_PER_TENANT_MAX: usize = 1_000_000;

/// Tags per registered device at most.
pub const DEVICE_TAGS_MAX: usize = 32;

/// Longest tag, in bytes.
pub const TAG_BYTES_MAX: usize = 64;

/// Largest page of `GET /v1/devices` and `GET /v1/feedback` (and the default).
pub const PAGE_LIMIT_MAX: usize = 1_000;

/// Invalidations kept per tenant for `GET /v1/feedback`; the oldest are forgotten first.
pub const FEEDBACK_KEPT_PER_TENANT_MAX: usize = 100_000;

/// Devices one `POST /v1/broadcast` call fans out to at most (one page); the answer's
/// `next_cursor` resumes the broadcast.
pub const BROADCAST_PAGE_MAX: usize = 10_000;

/// Engine batches of one broadcast page in flight at once.
pub const BROADCAST_CONCURRENCY_MAX: usize = 4;

/// Pushes remembered (id → tenant) so `GET /v1/pushes/{id}` answers only its own tenant;
/// the oldest are forgotten first (then 404).
pub const PUSHES_TRACKED_MAX: usize = herald_actors::limits::OUTCOMES_KEPT_MAX;

/// Tenants at most.
pub const TENANTS_MAX: usize = 10_000;

/// Longest tenant id, in bytes.
pub const TENANT_ID_BYTES_MAX: usize = 64;

/// Revoked key ids kept (each until its key would have expired anyway).
pub const REVOKED_KEYS_MAX: usize = 100_000;

/// Lifetime of an API key when `POST /v1/keys` names none.
pub const KEY_TTL_DEFAULT: Duration = Duration::from_secs(90 * 24 * 3600);

/// Longest lifetime of an API key.
pub const KEY_TTL_MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// Shortest node secret for HS256 API keys, in bytes.
pub const KEY_SECRET_BYTES_MIN: usize = 32;

/// `Retry-After` is never less than this (whole seconds on the wire).
pub const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);

const _: () = assert!(PUSH_BATCH_MAX <= BROADCAST_PAGE_MAX);
const _: () = assert!(PAGE_LIMIT_MAX <= BROADCAST_PAGE_MAX);
const _: () = assert!(KEY_TTL_DEFAULT.as_secs() <= KEY_TTL_MAX.as_secs());

/// Outcome events queued per tenant for its webhook; past it the oldest are dropped
/// (counted in `herald_api_webhook_dropped_total`).
pub const WEBHOOK_QUEUE_MAX: usize = 10_000;

/// Events per webhook request at most.
pub const WEBHOOK_BATCH_MAX: usize = 100;

/// How long one webhook request may take (connect, send, status line).
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Webhook retry backoff: first delay ceiling, and the largest.
pub const WEBHOOK_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// See [`WEBHOOK_BACKOFF_BASE`].
pub const WEBHOOK_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Webhook secret length bounds, in bytes.
pub const WEBHOOK_SECRET_BYTES_MIN: usize = 16;
/// See [`WEBHOOK_SECRET_BYTES_MIN`].
pub const WEBHOOK_SECRET_BYTES_MAX: usize = 256;

/// Longest webhook URL, in bytes.
pub const WEBHOOK_URL_BYTES_MAX: usize = 2048;

/// Bytes of a webhook answer read to find its status line.
pub const WEBHOOK_ANSWER_BYTES_MAX: usize = 1024;

const _: () = assert!(WEBHOOK_BATCH_MAX <= WEBHOOK_QUEUE_MAX);
