//! # herald-actors
//!
//! Herald's embeddable APNs push engine. This crate speaks APNs exactly (validated
//! requests, payloads, provider tokens, HTTP/2 connections and every answer APNs gives),
//! runs a supervised actor engine on top, and runs on the determinism [`seams`] so the
//! simulator can drive it.
//!
//! ## A tour
//!
//! **1. The protocol.** A [`Reason`](apns::Reason) is every answer APNs gives, with its
//! status and what Herald does about it ([`Disposition`](apns::Disposition)):
//!
//! ```
//! use herald_actors::apns::{Disposition, Reason};
//!
//! let reason: Reason = "Unregistered".parse().unwrap();
//! assert_eq!(reason.status(), 410);
//! assert_eq!(reason.disposition(), Disposition::Unregistered);
//! assert_eq!(Reason::ServiceUnavailable.disposition(), Disposition::RetryLater);
//! ```
//!
//! **2. The engine.** [`Herald::builder`] starts the actor tree: an engine supervisor, one
//! device-shard actor per shard (WAL-backed queue, priority lanes, expiry, coalescing,
//! dedupe, retries, token validity) and one tenant actor per APNs team (credentials,
//! connection pool, rate limit, circuit breaker) with its connection actors.
//! [`Herald::send`] returns a [`PushId`] once the push is in the write-ahead log; every
//! accepted push then ends with exactly one [`Outcome`], readable with [`Herald::outcome`]
//! or streamed by [`Herald::outcomes`]. A push already past its `apns-expiration` is never
//! sent:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use herald_actors::apns::{Expiration, Notification, PushType, SigningKey, TokenMinter};
//! use herald_actors::seams::{ManualClock, Timestamp};
//! use herald_actors::{Credentials, Endpoint, Herald, Outcome, TenantConfig};
//!
//! let clock = ManualClock::new(Timestamp::from_secs(1_700_000_000));
//! # let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
//! let key = SigningKey::from_p8_pem(p8.as_bytes(), "KEY1234567", "TEAM123456")?;
//! let minter = TokenMinter::with_default_interval(key, Arc::new(clock.clone()));
//! let herald = Herald::builder()
//!     .endpoint(Endpoint::plaintext("127.0.0.1", 9)) // nothing listens: nothing gets sent
//!     .clock(Arc::new(clock.clone()))
//!     .rng_seed(42)
//!     .tenant(TenantConfig::new("acme", Credentials::Token(minter)))
//!     .build()
//!     .await?;
//!
//! let stale = Notification::builder("ab".repeat(32).parse()?, "com.example.app".parse()?, PushType::Alert)
//!     .raw_payload(r#"{"aps":{"alert":"too late"}}"#)
//!     .expiration(Expiration::At(Timestamp::from_secs(1_600_000_000)))
//!     .build()?;
//! let id = herald.send("acme", stale).await?;
//! let mut outcome = herald.outcome(id);
//! while outcome.is_none() {
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//!     outcome = herald.outcome(id);
//! }
//! assert_eq!(outcome, Some(Outcome::Expired));
//!
//! let report = herald.shutdown(Duration::from_secs(1)).await;
//! assert!(report.drained);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! **3. Admission.** Actor mailboxes are unbounded, so work is bounded before it is queued:
//! each tenant and each shard counts what it holds, and `send` answers
//! [`PushError::Overloaded`] past [`TenantConfig::queue_max`] or
//! [`Tuning::shard_queue_max`]. Every bound is named in [`limits`].
//!
//! **4. Helpers.** [`backoff`] (exponential, full jitter, bounded by attempts and by
//! `apns-expiration`), [`breaker`] (closed, open, half-open), [`rate_limit`] (token bucket)
//! and [`outcome`] are plain values with their own examples.
//!
//! See `examples/embed.rs` for a complete program against the APNs emulator, and
//! `docs/architecture.md` for the actor tree and the restart policy of each actor.
//!
//! ## Feature flags
//!
//! - `test-util` (off by default): fault-injection hooks for tests and simulations,
//!   `Herald::crash_connection` and `Herald::crash_shard`. Never needed in production.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod apns;
pub mod backoff;
pub mod breaker;
pub mod buggify;
mod connection;
mod engine;
pub mod keyed;
pub mod limits;
pub mod outcome;
pub mod rate_limit;
pub mod seams;
mod shard;
#[cfg(feature = "sim-bugs")]
pub mod sim_bugs;
mod supervisor;
mod tenant;
pub mod token_state;
pub mod wal;

pub use engine::{
    BuildError, Endpoint, Herald, HeraldBuilder, PushError, ShutdownReport, TenantError, Tuning,
};
pub use outcome::{Failure, Invalidation, Outcome, OutcomeRecord, PushId, StoredOutcome};
pub use tenant::{Credentials, TenantConfig, TenantStatus};
