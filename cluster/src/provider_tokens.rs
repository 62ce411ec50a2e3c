//! One provider token per signing key, cluster-wide (DESIGN.md §5, §11).
//!
//! APNs wants a connection to keep its provider token at least 20 minutes and to drop it
//! before it is 60 minutes old; it accepts one token from many servers. So the cluster
//! presents **one** token per key: the Raft leader signs it and replicates it with
//! [`Command::SetProviderToken`]; every node installs the newest applied token into the
//! key's [`TokenMinter`] (in [`TokenSource::Replicated`](herald_actors::apns::TokenSource) mode), which the tenants of that key
//! use for their connections. The per-connection rule (start on the newest token, keep it
//! ≥ 20 min, never present one ≥ 60 min old) stays in `TokenConnectionAuth`.
//!
//! ```text
//!  every node:  applied SetProviderToken ──▶ view (watch) ──▶ minter.install(token) ──▶ tenants
//!  the leader:  check every `check_every`: newest replicated token of a key ≥ M old (or none)
//!               ──▶ sign(now) ──▶ propose SetProviderToken ──▶ applied everywhere
//! ```
//!
//! * **When**: the leader mints for a key when the newest *replicated* token is at least
//!   `M` old ([`ProviderTokenConfig::interval`], default 30 min, 20–40 min) or there is none.
//!   The decision depends only on the replicated state and the [`Clock`](herald_actors::seams::Clock), so a new leader
//!   takes over the schedule exactly: a failover does not cause an extra rotation.
//! * **Only a ready leader** mints: one that has applied an entry of its own term (raft-rs
//!   commits an empty entry when a leader is elected). It has then applied every entry
//!   committed before its term, so it cannot mistake an old token for the newest.
//! * **One proposal at a time** per node: the check waits for each proposal's apply (or
//!   [`PROVIDER_TOKEN_PROPOSE_TIMEOUT`]), so a slow commit does not lead to duplicates.
//!   A stale proposal (a newer token already applied) is refused by the state machine.
//! * **Fallback**: a node cut off from the leader keeps the installed token; its minter
//!   signs a token itself only when it has none younger than 40 min (see [`TokenMinter`]).
//!
//! Time comes only from the [`SharedClock`] given to [`ProviderTokens::start`]; the check
//! period is a `tokio::time` interval.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use herald_actors::apns::SigningKey;
//! use herald_actors::seams::{ManualClock, Timestamp};
//! use herald_cluster::node::{ClusterConfig, ClusterNode, StorageLocation};
//! use herald_cluster::provider_tokens::{ProviderTokenConfig, ProviderTokens};
//! use herald_cluster::transport::{ClusterId, LinkSecurity};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let peers = BTreeMap::from([(1, listener.local_addr()?)]);
//! let mut config = ClusterConfig::new(
//!     1, ClusterId(1), peers, "eu", StorageLocation::InMemory, LinkSecurity::Plaintext,
//! );
//! config.tick = Duration::from_millis(5);
//! let node = ClusterNode::start(config, listener).await?;
//!
//! let clock = ManualClock::new(Timestamp::from_secs(1_700_000_000));
//! let mut tokens_config = ProviderTokenConfig::default();
//! tokens_config.check_every = Duration::from_millis(10);
//! let tokens = ProviderTokens::start(&node, Arc::new(clock.clone()), tokens_config);
//! # let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_pem();
//! let key = SigningKey::from_p8_pem(p8.as_bytes(), "ABC123DEFG", "TEAM123456")?;
//! // Give this minter to the tenants of the key (`Credentials::Token(minter)`).
//! let minter = tokens.register(key)?;
//! while minter.cached().is_none() {
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//! }
//! // The leader (this node) minted it and replicated it; the minter signed nothing itself.
//! assert_eq!(minter.minted_count(), 0);
//! tokens.stop();
//! node.stop().await;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use herald_actors::apns::{SigningKey, TokenMinter};
use herald_actors::limits::{
    PROVIDER_TOKEN_MINT_INTERVAL_DEFAULT, PROVIDER_TOKEN_MINT_INTERVAL_MAX,
    PROVIDER_TOKEN_MINT_INTERVAL_MIN,
};
use herald_actors::seams::{SharedClock, Timestamp};
use ractor::ActorRef;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::node::{AppliedState, ClusterMsg, ClusterNode, ProposeError, ProviderTokenView};
use crate::state::{ApplyResult, Command, ProviderTokenRecord, Rejection};

/// Default period of the leader's check for due tokens (and of the followers' install).
pub const PROVIDER_TOKEN_CHECK_EVERY_DEFAULT: Duration = Duration::from_secs(1);
/// How long the leader waits for one `SetProviderToken` to be applied.
pub const PROVIDER_TOKEN_PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most signing keys one node's [`ProviderTokens`] serves.
pub const PROVIDER_TOKEN_KEYS_MAX: usize = 4096;

/// Settings of [`ProviderTokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderTokenConfig {
    /// `M`: the leader mints a key's token when the newest replicated one is this old.
    /// Default: [`PROVIDER_TOKEN_MINT_INTERVAL_DEFAULT`] (30 min); must be 20–40 min
    /// (checked by [`ProviderTokens::start`] through [`validate`](Self::validate)).
    pub interval: Duration,
    /// How often the tokens are checked (the leader mints at most this late). Default:
    /// [`PROVIDER_TOKEN_CHECK_EVERY_DEFAULT`]. Must be non-zero.
    pub check_every: Duration,
}

impl Default for ProviderTokenConfig {
    fn default() -> Self {
        ProviderTokenConfig {
            interval: PROVIDER_TOKEN_MINT_INTERVAL_DEFAULT,
            check_every: PROVIDER_TOKEN_CHECK_EVERY_DEFAULT,
        }
    }
}

impl ProviderTokenConfig {
    /// A configuration with minting interval `interval` and the default check period.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn with_interval(interval: Duration) -> Result<Self, ProviderTokenError> {
        let config = ProviderTokenConfig {
            interval,
            ..ProviderTokenConfig::default()
        };
        config.validate()?;
        Ok(config)
    }

    /// Check the settings.
    ///
    /// # Errors
    /// [`ProviderTokenError::InvalidInterval`] unless `interval` is within 20–40 min (a
    /// connection starts on a token up to `M` old and keeps it 20 min: `M + 20 ≤ 60`; and
    /// APNs refuses updates more often than every 20 min);
    /// [`ProviderTokenError::InvalidCheckPeriod`] for a zero `check_every`.
    pub fn validate(&self) -> Result<(), ProviderTokenError> {
        if !(PROVIDER_TOKEN_MINT_INTERVAL_MIN..=PROVIDER_TOKEN_MINT_INTERVAL_MAX)
            .contains(&self.interval)
        {
            return Err(ProviderTokenError::InvalidInterval {
                seconds: self.interval.as_secs(),
            });
        }
        if self.check_every.is_zero() {
            return Err(ProviderTokenError::InvalidCheckPeriod);
        }
        Ok(())
    }
}

/// Why a provider-token operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderTokenError {
    /// The minting interval is outside 20–40 minutes.
    #[error("provider token interval of {seconds} s is outside 20 to 40 minutes")]
    InvalidInterval {
        /// The interval given, in seconds.
        seconds: u64,
    },
    /// The check period is zero.
    #[error("provider token check period must be non-zero")]
    InvalidCheckPeriod,
    /// [`PROVIDER_TOKEN_KEYS_MAX`] keys are registered already.
    #[error("too many signing keys (at most {PROVIDER_TOKEN_KEYS_MAX})")]
    TooManyKeys,
    /// A key with this key id but another team id is registered already.
    #[error("key id {key_id} is registered for another team")]
    TeamMismatch {
        /// The key id.
        key_id: String,
    },
    /// Another key (other key bytes) is registered under this key id: one of the two `.p8`
    /// files is wrong, and its tenant must not present the other key's tokens.
    #[error("key id {key_id} is registered with another key")]
    KeyMismatch {
        /// The key id.
        key_id: String,
    },
}

/// A node's part in cluster-wide provider tokens. See the [module docs](self).
///
/// Dropping it (or [`stop`](Self::stop)) ends its task; the minters keep their last token.
#[derive(Debug)]
pub struct ProviderTokens {
    shared: Arc<TokensShared>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct TokensShared {
    clock: SharedClock,
    keys: Mutex<BTreeMap<String, Registered>>,
    view: watch::Receiver<ProviderTokenView>,
    wake: Notify,
    checks: watch::Sender<CheckCounts>,
}

#[derive(Debug)]
struct Registered {
    key: SigningKey,
    minter: TokenMinter,
    /// Registrations not released yet ([`ProviderTokens::release`]).
    users: usize,
    /// The issue time of the replicated token last installed (parsing is skipped when
    /// it has not changed).
    installed_at: Option<Timestamp>,
}

/// How many checks a node's [`ProviderTokens`] has completed (for tests and monitoring).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckCounts {
    /// Checks completed.
    pub checks: u64,
    /// Of those, checks done as a ready leader (after applying an entry of its own term).
    pub leader_checks: u64,
    /// Tokens this node minted and saw applied.
    pub minted: u64,
}

impl ProviderTokens {
    /// Start serving provider tokens on `node`, reading time from `clock`.
    ///
    /// # Panics
    /// If `config` is invalid (see [`ProviderTokenConfig::validate`]): build it with
    /// [`ProviderTokenConfig::with_interval`] or check it first.
    #[track_caller]
    pub fn start(node: &ClusterNode, clock: SharedClock, config: ProviderTokenConfig) -> Self {
        if let Err(e) = config.validate() {
            panic!("invalid ProviderTokenConfig: {e}");
        }
        let shared = Arc::new(TokensShared {
            clock,
            keys: Mutex::new(BTreeMap::new()),
            view: node.provider_token_view(),
            wake: Notify::new(),
            checks: watch::Sender::new(CheckCounts::default()),
        });
        let span = tracing::info_span!("provider_tokens", node = node.id());
        let task = tokio::spawn(
            run(
                shared.clone(),
                node.actor().clone(),
                node.applied(),
                node.provider_token_view(),
                config,
            )
            .instrument(span),
        );
        ProviderTokens { shared, task }
    }

    /// Serve `key`: returns its [`TokenMinter`] (replicated mode), to give to every tenant
    /// of the key. The minter gets the newest replicated token at once (if there is one)
    /// and every later one; on the leader, the key's tokens are minted from now on.
    /// Registering the same key again returns the same minter; each registration counts until
    /// given back with [`release`](Self::release).
    ///
    /// # Errors
    /// [`ProviderTokenError::TeamMismatch`] if the key id is registered with another team,
    /// [`ProviderTokenError::KeyMismatch`] if it is registered with other key bytes,
    /// [`ProviderTokenError::TooManyKeys`] past [`PROVIDER_TOKEN_KEYS_MAX`].
    pub fn register(&self, key: SigningKey) -> Result<TokenMinter, ProviderTokenError> {
        let mut keys = self.shared.lock_keys();
        if let Some(registered) = keys.get_mut(key.key_id()) {
            if registered.key.team_id() != key.team_id() {
                return Err(ProviderTokenError::TeamMismatch {
                    key_id: key.key_id().to_owned(),
                });
            }
            if !registered.key.same_key(&key) {
                return Err(ProviderTokenError::KeyMismatch {
                    key_id: key.key_id().to_owned(),
                });
            }
            registered.users += 1;
            return Ok(registered.minter.clone());
        }
        if keys.len() >= PROVIDER_TOKEN_KEYS_MAX {
            return Err(ProviderTokenError::TooManyKeys);
        }
        let minter = TokenMinter::replicated(key.clone(), self.shared.clock.clone());
        let mut registered = Registered {
            key,
            minter: minter.clone(),
            users: 1,
            installed_at: None,
        };
        if let Some(record) = self
            .shared
            .view
            .borrow()
            .tokens
            .get(registered.key.key_id())
        {
            registered.install(record);
        }
        keys.insert(registered.key.key_id().to_owned(), registered);
        drop(keys);
        // The leader mints for the new key without waiting for the next period.
        self.shared.wake.notify_one();
        Ok(minter)
    }

    /// Give back one registration of `key_id` (a tenant using it was removed, or a key was
    /// registered only to be checked). Once every registration is given back, the key is
    /// no longer served: the leader stops minting for it and a key of another team, or other
    /// bytes, may take its id. Minters handed out keep working (signing locally once their
    /// last token ages). Unknown key ids are ignored.
    pub fn release(&self, key_id: &str) {
        let mut keys = self.shared.lock_keys();
        if let Some(registered) = keys.get_mut(key_id) {
            registered.users = registered.users.saturating_sub(1);
            if registered.users == 0 {
                keys.remove(key_id);
            }
        }
    }

    /// The minter of a registered key id.
    pub fn minter(&self, key_id: &str) -> Option<TokenMinter> {
        self.shared
            .lock_keys()
            .get(key_id)
            .map(|registered| registered.minter.clone())
    }

    /// The checks done so far (updated after each).
    pub fn checks(&self) -> watch::Receiver<CheckCounts> {
        self.shared.checks.subscribe()
    }

    /// Stop the task (the minters keep their tokens and fall back to local signing).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for ProviderTokens {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokensShared {
    fn lock_keys(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Registered>> {
        // Every critical section only inserts, updates or removes one entry.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Registered {
    /// Install `record` into the minter if it changed since the last install.
    fn install(&mut self, record: &ProviderTokenRecord) {
        if self.installed_at == Some(record.issued_at) {
            return;
        }
        self.installed_at = Some(record.issued_at);
        let result = record.token().and_then(|token| self.minter.install(token));
        match result {
            Ok(true) => {
                metrics::counter!("herald_provider_tokens_installed_total").increment(1);
                tracing::debug!(
                    key_id = self.key.key_id(),
                    issued_at = %record.issued_at,
                    "installed replicated provider token"
                );
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(
                key_id = self.key.key_id(),
                %error,
                "replicated provider token not installed"
            ),
        }
    }
}

/// What the leader does for one due key.
enum Outcome {
    Continue,
    /// Not (or no longer) the leader, or the node stopped: stop this round.
    StopRound,
}

async fn run(
    shared: Arc<TokensShared>,
    actor: ActorRef<ClusterMsg>,
    applied: watch::Receiver<AppliedState>,
    mut view: watch::Receiver<ProviderTokenView>,
    config: ProviderTokenConfig,
) {
    let mut ticker = tokio::time::interval(config.check_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            // A leadership change shows here too: a new leader's first applied entry
            // changes `last_applied_term`.
            changed = view.changed() => if changed.is_err() { return },
            () = shared.wake.notified() => {}
            _ = ticker.tick() => {}
        }
        let current = view.borrow_and_update().clone();
        let state = *applied.borrow();

        // Every node: feed the minters.
        {
            let mut keys = shared.lock_keys();
            for (key_id, record) in &current.tokens {
                if let Some(registered) = keys.get_mut(key_id) {
                    registered.install(record);
                }
            }
        }

        let ready_leader = state.is_leader && current.last_applied_term == state.term;
        let mut minted = 0;
        if ready_leader {
            let now = shared.clock.now();
            let due: Vec<SigningKey> = shared
                .lock_keys()
                .values()
                .filter(|registered| {
                    current
                        .tokens
                        .get(registered.key.key_id())
                        .is_none_or(|record| now.since(record.issued_at) >= config.interval)
                })
                .map(|registered| registered.key.clone())
                .collect();
            for key in due {
                match mint(&actor, &key, now).await {
                    (Outcome::Continue, applied) => minted += u64::from(applied),
                    (Outcome::StopRound, _) => break,
                }
            }
        }
        shared.checks.send_modify(|counts| {
            counts.checks += 1;
            counts.leader_checks += u64::from(ready_leader);
            counts.minted += minted;
        });
    }
}

/// Sign `key`'s token at `now` and propose it; whether it was applied.
async fn mint(actor: &ActorRef<ClusterMsg>, key: &SigningKey, now: Timestamp) -> (Outcome, bool) {
    let token = match key.sign(now) {
        Ok(token) => token,
        Err(error) => {
            tracing::error!(key_id = key.key_id(), %error, "cannot sign provider token");
            return (Outcome::Continue, false);
        }
    };
    let command = Command::SetProviderToken {
        key_id: key.key_id().to_owned(),
        jwt: token.jwt().to_owned(),
        issued_at: token.issued_at(),
    };
    match crate::node::propose(actor, command, PROVIDER_TOKEN_PROPOSE_TIMEOUT).await {
        Ok(ApplyResult::Applied) => {
            metrics::counter!("herald_provider_tokens_rotated_total", "key_id" => key.key_id().to_owned())
                .increment(1);
            tracing::info!(
                key_id = key.key_id(),
                issued_at = %token.issued_at(),
                "minted and replicated provider token"
            );
            (Outcome::Continue, true)
        }
        Ok(ApplyResult::Rejected(Rejection::StaleProviderToken)) => {
            tracing::debug!(key_id = key.key_id(), "a newer provider token is applied");
            (Outcome::Continue, false)
        }
        Ok(other) => {
            tracing::warn!(key_id = key.key_id(), result = ?other, "provider token not applied");
            (Outcome::Continue, false)
        }
        Err(ProposeError::Overloaded) => {
            tracing::warn!(
                key_id = key.key_id(),
                "cluster overloaded; provider token retried next check"
            );
            (Outcome::StopRound, false)
        }
        Err(error) => {
            tracing::debug!(key_id = key.key_id(), %error, "provider token proposal failed");
            (Outcome::StopRound, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_must_be_twenty_to_forty_minutes() {
        let minutes = |n: u64| Duration::from_secs(n * 60);
        assert!(ProviderTokenConfig::with_interval(minutes(20)).is_ok());
        assert!(ProviderTokenConfig::with_interval(minutes(40)).is_ok());
        assert_eq!(
            ProviderTokenConfig::with_interval(minutes(41)),
            Err(ProviderTokenError::InvalidInterval { seconds: 41 * 60 })
        );
        assert!(ProviderTokenConfig::with_interval(minutes(19)).is_err());
        let zero_period = ProviderTokenConfig {
            check_every: Duration::ZERO,
            ..ProviderTokenConfig::default()
        };
        assert_eq!(
            zero_period.validate(),
            Err(ProviderTokenError::InvalidCheckPeriod)
        );
        assert!(ProviderTokenConfig::default().validate().is_ok());
    }
}
