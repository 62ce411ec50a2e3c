//! Provider tokens: the ES256 JWTs that authenticate token-auth connections.
//!
//! Three layers, each usable alone:
//!
//! * [`SigningKey`] holds a team's `.p8` key and signs one [`ProviderToken`] for a given
//!   issue time: header `{"alg":"ES256","kid":<key id>}`, claims `{"iss":<team id>,"iat":<seconds>}`.
//! * [`TokenMinter`] caches the newest token of one key and mints a new one every `M`
//!   minutes (20 ≤ M ≤ 40, default 30). It is shared (cheap `Clone`) by every connection of
//!   the key, and accepts tokens minted elsewhere (the cluster leader replicates one per key).
//!   A [`replicated`](TokenMinter::replicated) minter takes its tokens from elsewhere and
//!   signs one itself only as a fallback, so every node of a cluster presents one token per key.
//! * [`TokenConnectionAuth`] applies APNs' per-connection rule: a connection keeps a token
//!   at least 20 minutes and drops it before it is 60 minutes old.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use herald_actors::apns::{ConnectionAuth, SigningKey, TokenConnectionAuth, TokenMinter};
//! use herald_actors::seams::{Clock, ManualClock, Timestamp};
//!
//! # let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
//! // `p8` is the text of Apple's AuthKey_<key id>.p8.
//! let key = SigningKey::from_p8_pem(p8.as_bytes(), "ABC123DEFG", "TEAM123456").unwrap();
//! let clock = ManualClock::new(Timestamp::from_secs(1_700_000_000));
//! let minter = TokenMinter::with_default_interval(key, Arc::new(clock.clone()));
//!
//! let mut auth = TokenConnectionAuth::new(minter.clone());
//! let header = auth.authorization(clock.now()).unwrap().unwrap();
//! assert!(header.to_str().unwrap().starts_with("bearer "));
//! assert_eq!(minter.minted_count(), 1);
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apns::{AuthError, ConnectionAuth, Reason};
use crate::limits::{
    PROVIDER_TOKEN_AGE_MAX, PROVIDER_TOKEN_MINT_INTERVAL_DEFAULT, PROVIDER_TOKEN_MINT_INTERVAL_MAX,
    PROVIDER_TOKEN_MINT_INTERVAL_MIN, PROVIDER_TOKEN_SWITCH_AFTER,
};
use crate::seams::{SharedClock, Timestamp};

/// Length of Apple key ids and team ids.
const APPLE_ID_LEN: usize = 10;

/// A team's APNs signing key (`.p8`), with its key id and team id.
///
/// `Debug` prints the ids only, never key material.
#[derive(Clone)]
pub struct SigningKey {
    key: EncodingKey,
    key_id: Arc<str>,
    team_id: Arc<str>,
    /// SHA-256 of the key's PKCS#8 DER bytes (of the PEM text if it has no PEM private-key
    /// block): tells two keys with one key id apart without keeping the key bytes.
    fingerprint: [u8; 32],
}

impl SigningKey {
    /// A signing key from the contents of a `.p8` file (a PKCS#8 PEM P-256 key), its key id
    /// and its team id (each exactly 10 ASCII letters or digits).
    ///
    /// The key is test-signed once, so an unusable key (not PEM, not P-256) fails here and
    /// not on the first push.
    ///
    /// # Errors
    /// [`AuthError::InvalidId`] for a malformed id, [`AuthError::Key`] for an unusable key.
    pub fn from_p8_pem(p8_pem: &[u8], key_id: &str, team_id: &str) -> Result<Self, AuthError> {
        validate_apple_id("key id", key_id)?;
        validate_apple_id("team id", team_id)?;
        // The error text from jsonwebtoken names the problem, never the key bytes.
        let key = EncodingKey::from_ec_pem(p8_pem).map_err(|e| AuthError::Key(e.to_string()))?;
        let fingerprint = match PrivateKeyDer::from_pem_slice(p8_pem) {
            Ok(der) => Sha256::digest(der.secret_der()),
            Err(_) => Sha256::digest(p8_pem),
        };
        let signing_key = SigningKey {
            key,
            key_id: Arc::from(key_id),
            team_id: Arc::from(team_id),
            fingerprint: fingerprint.into(),
        };
        signing_key.sign(Timestamp::EPOCH)?;
        Ok(signing_key)
    }

    /// The key id (`kid`), as shown in Apple's developer account.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The team id (`iss`).
    pub fn team_id(&self) -> &str {
        &self.team_id
    }

    /// True when `other` is the same key: same key id, team id and key bytes. Two `.p8`
    /// files claiming one key id but holding different keys are not the same key (one of
    /// them is wrong, and must not borrow the other's provider tokens).
    pub fn same_key(&self, other: &SigningKey) -> bool {
        self.key_id == other.key_id
            && self.team_id == other.team_id
            && self.fingerprint == other.fingerprint
    }

    /// Sign a provider token issued at `iat` (rounded down to whole seconds, as the JWT
    /// carries it).
    ///
    /// # Errors
    /// [`AuthError::Key`] if signing fails.
    pub fn sign(&self, iat: Timestamp) -> Result<ProviderToken, AuthError> {
        let mut header = Header::new(Algorithm::ES256);
        // Apple documents the header as exactly {alg, kid}.
        header.typ = None;
        header.kid = Some(self.key_id.to_string());
        let claims = Claims {
            iss: self.team_id.to_string(),
            iat: iat.as_secs(),
        };
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| AuthError::Key(e.to_string()))?;
        ProviderToken::new(
            Arc::from(jwt),
            self.key_id.clone(),
            self.team_id.clone(),
            Timestamp::from_secs(iat.as_secs()),
        )
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// One signed provider token: a bearer credential for every connection of its key.
///
/// `Debug` shows the key id, team id and issue time but never the JWT itself. Two tokens
/// are equal when their JWTs are.
#[derive(Clone)]
pub struct ProviderToken {
    jwt: Arc<str>,
    header: HeaderValue,
    key_id: Arc<str>,
    team_id: Arc<str>,
    issued_at: Timestamp,
}

impl ProviderToken {
    /// Rebuild a token from its JWT text, e.g. one the cluster leader minted and replicated.
    ///
    /// Reads `kid`, `iss` and `iat` from the JWT. The signature is **not** verified (only
    /// APNs can do that with the public key); take JWTs only from authenticated peers.
    ///
    /// # Errors
    /// [`AuthError::InvalidToken`] if the text is not an ES256 JWT with those fields,
    /// [`AuthError::InvalidId`] if its ids are malformed.
    pub fn from_jwt(jwt: &str) -> Result<Self, AuthError> {
        let data = jsonwebtoken::dangerous::insecure_decode::<Claims>(jwt)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        if data.header.alg != Algorithm::ES256 {
            return Err(AuthError::InvalidToken(format!(
                "algorithm {:?}, expected ES256",
                data.header.alg
            )));
        }
        let Some(key_id) = data.header.kid else {
            return Err(AuthError::InvalidToken("no kid in header".to_owned()));
        };
        ProviderToken::new(
            Arc::from(jwt),
            Arc::from(key_id),
            Arc::from(data.claims.iss),
            Timestamp::from_secs(data.claims.iat),
        )
    }

    fn new(
        jwt: Arc<str>,
        key_id: Arc<str>,
        team_id: Arc<str>,
        issued_at: Timestamp,
    ) -> Result<Self, AuthError> {
        validate_apple_id("key id", &key_id)?;
        validate_apple_id("team id", &team_id)?;
        let mut header = HeaderValue::try_from(format!("bearer {jwt}"))
            .map_err(|_| AuthError::InvalidToken("not a valid header value".to_owned()))?;
        header.set_sensitive(true);
        Ok(ProviderToken {
            jwt,
            header,
            key_id,
            team_id,
            issued_at,
        })
    }

    /// The JWT text. A bearer credential: replicate it only over authenticated channels
    /// and never log it.
    pub fn jwt(&self) -> &str {
        &self.jwt
    }

    /// The key id (`kid`) that signed it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The team id (`iss`).
    pub fn team_id(&self) -> &str {
        &self.team_id
    }

    /// The issue time (`iat`, whole seconds).
    pub fn issued_at(&self) -> Timestamp {
        self.issued_at
    }

    /// How old the token is at `now` (zero if `now` is before its issue time).
    pub fn age(&self, now: Timestamp) -> Duration {
        now.since(self.issued_at)
    }

    /// The `authorization` header value, `bearer <jwt>`, marked sensitive.
    pub fn bearer_header(&self) -> HeaderValue {
        self.header.clone()
    }
}

impl PartialEq for ProviderToken {
    fn eq(&self, other: &Self) -> bool {
        self.jwt == other.jwt
    }
}

impl Eq for ProviderToken {}

impl fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderToken")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("issued_at", &self.issued_at)
            .field("jwt", &"<redacted>")
            .finish()
    }
}

/// The newest provider token of one key, minted again every `M` minutes. Thread-safe;
/// clones share one cache.
///
/// Two sources of tokens ([`TokenSource`]):
/// * [`Local`](TokenSource::Local) ([`new`](Self::new),
///   [`with_default_interval`](Self::with_default_interval)): `newest()` mints when there is
///   no token yet or the cached one is at least `M` old, so a token handed out is always
///   younger than `M` (by the minter's clock). The default for embedded use.
/// * [`Replicated`](TokenSource::Replicated) ([`replicated`](Self::replicated)): tokens
///   arrive through [`install`](Self::install) (the cluster leader mints one per key every
///   `M` and replicates it). `newest()` returns the installed token while it is younger than
///   [`PROVIDER_TOKEN_MINT_INTERVAL_MAX`] (40 min), so a connection that starts on it can keep
///   it 20 min and still drop it before 60. Only when there is no such token (before the
///   first replicated token arrived, or no leader for 40 min) does it sign one itself, as a
///   fallback; a replicated token replaces a fallback token as soon as it is installed.
#[derive(Clone)]
pub struct TokenMinter {
    inner: Arc<MinterInner>,
}

struct MinterInner {
    key: SigningKey,
    clock: SharedClock,
    interval: Duration,
    source: TokenSource,
    state: Mutex<MinterState>,
}

#[derive(Default)]
struct MinterState {
    cached: Option<ProviderToken>,
    /// True when `cached` was signed here (always, for a local minter).
    cached_is_local: bool,
    minted: u64,
    installed: u64,
}

/// Where a [`TokenMinter`]'s tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenSource {
    /// Signed here every `M` (embedded use).
    Local,
    /// Installed from elsewhere (the cluster); signed here only as a fallback.
    Replicated,
}

impl TokenMinter {
    /// A minter for `key` that mints every `interval`, reading time from `clock`.
    ///
    /// # Errors
    /// [`AuthError::InvalidInterval`] unless `interval` is within
    /// [`PROVIDER_TOKEN_MINT_INTERVAL_MIN`]`..=`[`PROVIDER_TOKEN_MINT_INTERVAL_MAX`] (20–40 min):
    /// a connection starts on a token at most `M` old and keeps it 20 min, and APNs refuses
    /// tokens older than 60 min.
    pub fn new(key: SigningKey, clock: SharedClock, interval: Duration) -> Result<Self, AuthError> {
        if !(PROVIDER_TOKEN_MINT_INTERVAL_MIN..=PROVIDER_TOKEN_MINT_INTERVAL_MAX)
            .contains(&interval)
        {
            // Round away from the allowed range, so 40 min 1 s is not reported as "40 min".
            let seconds = interval.as_secs();
            let minutes = if interval > PROVIDER_TOKEN_MINT_INTERVAL_MAX {
                seconds.div_ceil(60)
            } else {
                seconds / 60
            };
            return Err(AuthError::InvalidInterval { minutes });
        }
        Ok(TokenMinter::build(key, clock, interval, TokenSource::Local))
    }

    /// A minter with the default interval, [`PROVIDER_TOKEN_MINT_INTERVAL_DEFAULT`] (30 min).
    pub fn with_default_interval(key: SigningKey, clock: SharedClock) -> Self {
        TokenMinter::build(
            key,
            clock,
            PROVIDER_TOKEN_MINT_INTERVAL_DEFAULT,
            TokenSource::Local,
        )
    }

    /// A minter whose tokens are [installed](Self::install) from elsewhere (the cluster
    /// leader replicates one per key); it signs one itself only when it holds none younger
    /// than [`PROVIDER_TOKEN_MINT_INTERVAL_MAX`]. `key` is still needed for that fallback.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use herald_actors::apns::{SigningKey, TokenMinter};
    /// use herald_actors::seams::{ManualClock, Timestamp};
    ///
    /// # let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
    /// let key = SigningKey::from_p8_pem(p8.as_bytes(), "ABC123DEFG", "TEAM123456").unwrap();
    /// let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_700_000_000)));
    /// let minter = TokenMinter::replicated(key.clone(), clock);
    /// // The leader's token, replicated to this node:
    /// let token = key.sign(Timestamp::from_secs(1_700_000_000 - 60)).unwrap();
    /// assert!(minter.install(token.clone()).unwrap());
    /// assert_eq!(minter.newest().unwrap(), token);
    /// assert_eq!(minter.minted_count(), 0);
    /// ```
    pub fn replicated(key: SigningKey, clock: SharedClock) -> Self {
        TokenMinter::build(
            key,
            clock,
            PROVIDER_TOKEN_MINT_INTERVAL_DEFAULT,
            TokenSource::Replicated,
        )
    }

    fn build(key: SigningKey, clock: SharedClock, interval: Duration, source: TokenSource) -> Self {
        TokenMinter {
            inner: Arc::new(MinterInner {
                key,
                clock,
                interval,
                source,
                state: Mutex::new(MinterState::default()),
            }),
        }
    }

    /// The newest token. A local minter mints one first if there is none or the cached one
    /// is at least the interval old; a replicated minter returns the installed token while
    /// it is younger than [`PROVIDER_TOKEN_MINT_INTERVAL_MAX`] and signs a fallback token
    /// otherwise.
    ///
    /// # Errors
    /// [`AuthError::Key`] if signing fails.
    pub fn newest(&self) -> Result<ProviderToken, AuthError> {
        let now = self.inner.clock.now();
        let mut state = self.lock();
        let fresh_for = match self.inner.source {
            TokenSource::Local => self.inner.interval,
            TokenSource::Replicated => PROVIDER_TOKEN_MINT_INTERVAL_MAX,
        };
        match &state.cached {
            Some(token) if token.age(now) < fresh_for => Ok(token.clone()),
            _ => {
                if self.inner.source == TokenSource::Replicated {
                    metrics::counter!("herald_provider_token_fallback_mints_total", "key_id" => self.inner.key.key_id().to_owned())
                        .increment(1);
                    tracing::warn!(
                        key_id = self.inner.key.key_id(),
                        "no replicated provider token younger than 40 min; signing one locally"
                    );
                }
                self.mint_locked(&mut state, now)
            }
        }
    }

    /// The cached token, if any, without minting.
    pub fn cached(&self) -> Option<ProviderToken> {
        self.lock().cached.clone()
    }

    /// Mint a new token now, whatever the cached one's age.
    ///
    /// # Errors
    /// [`AuthError::Key`] if signing fails.
    pub fn force_refresh(&self) -> Result<ProviderToken, AuthError> {
        let now = self.inner.clock.now();
        let mut state = self.lock();
        self.mint_locked(&mut state, now)
    }

    /// Mint a new token because APNs refused `rejected` as expired — unless the cache
    /// already holds a newer token (another connection got there first), which is returned
    /// instead. Many connections can report the same expiry; this mints once.
    ///
    /// # Errors
    /// [`AuthError::Key`] if signing fails.
    pub fn refresh_rejected(&self, rejected: &ProviderToken) -> Result<ProviderToken, AuthError> {
        let now = self.inner.clock.now();
        let mut state = self.lock();
        match &state.cached {
            Some(token) if token.issued_at > rejected.issued_at => Ok(token.clone()),
            _ => self.mint_locked(&mut state, now),
        }
    }

    /// Take a token minted elsewhere (the cluster replicates one per key). It replaces the
    /// cached token if it was issued later, or, on a [replicated](Self::replicated) minter,
    /// if the cached token is a locally signed fallback and this one differs and is younger
    /// than [`PROVIDER_TOKEN_MINT_INTERVAL_MAX`] (the cluster's token wins, so every node
    /// presents the same one); returns whether it did.
    ///
    /// # Errors
    /// [`AuthError::TokenKeyMismatch`] if the token's key id or team id is not this key's.
    pub fn install(&self, token: ProviderToken) -> Result<bool, AuthError> {
        if token.key_id() != self.inner.key.key_id() || token.team_id() != self.inner.key.team_id()
        {
            return Err(AuthError::TokenKeyMismatch);
        }
        let now = self.inner.clock.now();
        let mut state = self.lock();
        let replace = match &state.cached {
            Some(cached) => {
                token.issued_at > cached.issued_at
                    || (self.inner.source == TokenSource::Replicated
                        && state.cached_is_local
                        && token != *cached
                        && token.age(now) < PROVIDER_TOKEN_MINT_INTERVAL_MAX)
            }
            None => true,
        };
        if replace {
            state.cached = Some(token);
            state.cached_is_local = false;
            state.installed += 1;
        }
        Ok(replace)
    }

    /// Where this minter's tokens come from.
    pub fn source(&self) -> TokenSource {
        self.inner.source
    }

    /// How many tokens [`install`](Self::install) has taken.
    pub fn installed_count(&self) -> u64 {
        self.lock().installed
    }

    /// How many tokens this minter has signed (installed tokens not counted).
    pub fn minted_count(&self) -> u64 {
        self.lock().minted
    }

    /// The minting interval `M`.
    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// The signing key's id.
    pub fn key_id(&self) -> &str {
        self.inner.key.key_id()
    }

    /// The signing key's team id.
    pub fn team_id(&self) -> &str {
        self.inner.key.team_id()
    }

    /// The current time by the minter's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MinterState> {
        // Every critical section leaves the state consistent (single assignments after a
        // successful sign), so a panic elsewhere while holding the lock cannot corrupt it.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn mint_locked(
        &self,
        state: &mut MinterState,
        now: Timestamp,
    ) -> Result<ProviderToken, AuthError> {
        let token = self.inner.key.sign(now)?;
        state.cached = Some(token.clone());
        state.cached_is_local = true;
        state.minted += 1;
        metrics::counter!("herald_provider_tokens_minted_total", "key_id" => self.inner.key.key_id().to_owned())
            .increment(1);
        tracing::debug!(
            key_id = self.inner.key.key_id(),
            team_id = self.inner.key.team_id(),
            issued_at = %token.issued_at,
            "minted provider token"
        );
        Ok(token)
    }
}

impl fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("TokenMinter");
        debug
            .field("key", &self.inner.key)
            .field("interval", &self.inner.interval)
            .field("source", &self.inner.source);
        // `try_lock`: formatting must never block or deadlock (e.g. inside a log line
        // written while the lock is held).
        match self.inner.state.try_lock() {
            Ok(state) => debug
                .field("cached", &state.cached)
                .field("minted", &state.minted),
            Err(_) => debug.field("state", &"<locked>"),
        };
        debug.finish()
    }
}

/// The provider-token rule for one connection.
///
/// APNs answers `TooManyProviderTokenUpdates` when a connection changes tokens within
/// 20 minutes, and `ExpiredProviderToken` when a token is 60 minutes old. So:
///
/// ```text
///              first authorization(now)
///   Unstarted ─────────────────────────────▶ Using { token = minter.newest(), since = now,
///                                              │                    hold_until = now + 20 min }
///                                              │
///        authorization(now), now ≥ hold_until  │  and minter.newest() is newer:
///        ┌─────────────────────────────────────┤  token = newest, since = now,
///        └────────────────────────────────────▶│  hold_until = now + 20 min
///                                              │
///        rejected(TooManyProviderTokenUpdates) │  keep token, hold_until = now + 20 min
///        ┌─────────────────────────────────────┤
///        └────────────────────────────────────▶│
///                                              │
///     token.age(now) ≥ 60 min (cannot switch)  │  rejected(ExpiredProviderToken):
///     ─────────────────────────────────────────┤  minter refreshes (once per expired token)
///                                              ▼
///                                          Exhausted ── authorization() = Err(TokenExhausted)
/// ```
///
/// * A connection **starts** on the minter's newest token (younger than `M`).
/// * It **switches** to a newer token only after presenting its current one for at least
///   [`PROVIDER_TOKEN_SWITCH_AFTER`] (20 min). With `M ≤ 40` the newest token is then
///   younger than 40 min and the current one younger than `M + 20 ≤ 60` min, so a connection
///   never presents a token older than [`PROVIDER_TOKEN_AGE_MAX`].
/// * If it still holds a token that old (only after a `TooManyProviderTokenUpdates` hold,
///   or a minter clock far behind), it is **exhausted**: `authorization()` returns
///   [`AuthError::TokenExhausted`] and the owner replaces the connection.
/// * `ExpiredProviderToken` also exhausts the connection: APNs wants a new token, and a
///   token switch right away would break the 20-minute rule, so the new token goes on a
///   new connection (Apple's and the fact sheet's "new token, new connection, retry").
/// * Credential errors (`InvalidProviderToken`, `Forbidden`, …) leave the state as is and
///   are recorded in [`last_rejection`](Self::last_rejection); the tenant's circuit breaker
///   acts on them.
/// * [`is_confirmed`](ConnectionAuth::is_confirmed) turns true on the first accepted
///   answer and stays true across token switches (same key, same team).
#[derive(Debug)]
pub struct TokenConnectionAuth {
    minter: TokenMinter,
    state: TokenState,
    confirmed: bool,
    last_rejection: Option<(Reason, Timestamp)>,
    switches: u64,
}

#[derive(Debug, Clone)]
enum TokenState {
    Unstarted,
    Using {
        token: ProviderToken,
        hold_until: Timestamp,
    },
    Exhausted,
}

impl TokenConnectionAuth {
    /// The rule for a new connection whose tokens come from `minter`.
    pub fn new(minter: TokenMinter) -> Self {
        TokenConnectionAuth {
            minter,
            state: TokenState::Unstarted,
            confirmed: false,
            last_rejection: None,
            switches: 0,
        }
    }

    /// The token this connection presents now, if it has started.
    pub fn current_token(&self) -> Option<&ProviderToken> {
        match &self.state {
            TokenState::Using { token, .. } => Some(token),
            TokenState::Unstarted | TokenState::Exhausted => None,
        }
    }

    /// True once the connection cannot authenticate any more requests and must be replaced.
    pub fn is_exhausted(&self) -> bool {
        matches!(self.state, TokenState::Exhausted)
    }

    /// The last credentials rejection APNs gave on this connection, and when.
    pub fn last_rejection(&self) -> Option<(Reason, Timestamp)> {
        self.last_rejection
    }

    /// How many times this connection has switched to a newer token.
    pub fn switch_count(&self) -> u64 {
        self.switches
    }
}

impl ConnectionAuth for TokenConnectionAuth {
    fn team_id(&self) -> &str {
        self.minter.team_id()
    }

    fn authorization(&mut self, now: Timestamp) -> Result<Option<HeaderValue>, AuthError> {
        let (token, hold_until) = match &self.state {
            TokenState::Exhausted => return Err(AuthError::TokenExhausted),
            TokenState::Unstarted => {
                let token = self.minter.newest()?;
                (token, now.saturating_add(PROVIDER_TOKEN_SWITCH_AFTER))
            }
            TokenState::Using { token, hold_until } if now >= *hold_until => {
                let newest = self.minter.newest()?;
                if newest.issued_at > token.issued_at {
                    self.switches += 1;
                    tracing::debug!(
                        key_id = newest.key_id(),
                        issued_at = %newest.issued_at,
                        "connection switches provider token"
                    );
                    (newest, now.saturating_add(PROVIDER_TOKEN_SWITCH_AFTER))
                } else {
                    (token.clone(), *hold_until)
                }
            }
            TokenState::Using { token, hold_until } => (token.clone(), *hold_until),
        };
        if token.age(now) >= PROVIDER_TOKEN_AGE_MAX {
            self.state = TokenState::Exhausted;
            return Err(AuthError::TokenExhausted);
        }
        let header = token.bearer_header();
        self.state = TokenState::Using { token, hold_until };
        Ok(Some(header))
    }

    fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    fn confirm(&mut self) {
        self.confirmed = true;
    }

    fn rejected(&mut self, reason: Reason, now: Timestamp) {
        self.last_rejection = Some((reason, now));
        match reason {
            Reason::ExpiredProviderToken => {
                if let TokenState::Using { token, .. } = &self.state
                    && let Err(error) = self.minter.refresh_rejected(token)
                {
                    tracing::warn!(%error, "provider token refresh failed");
                }
                self.state = TokenState::Exhausted;
            }
            Reason::TooManyProviderTokenUpdates => {
                if let TokenState::Using { hold_until, .. } = &mut self.state {
                    *hold_until = now.saturating_add(PROVIDER_TOKEN_SWITCH_AFTER);
                }
            }
            _ => {}
        }
    }
}

/// Check an Apple key id or team id: exactly 10 ASCII letters or digits.
pub(crate) fn validate_apple_id(field: &'static str, value: &str) -> Result<(), AuthError> {
    if value.len() == APPLE_ID_LEN && value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(AuthError::InvalidId {
            field,
            value: value.to_owned(),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    iat: u64,
}

#[cfg(test)]
mod tests;
