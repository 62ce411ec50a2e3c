//! API keys: JWTs (HS256, signed with the node secret) carrying a tenant, scopes, a key id
//! (`jti`) and an expiry; sent as `Authorization: Bearer <key>`.
//!
//! Expiry is checked against the injected [`Clock`](herald_actors::seams::Clock), never the
//! wall clock, and revoked key ids live in a [`RevocationSet`] (in memory here; the cluster
//! replicates it). Keys and the secret never appear in logs or `Debug` output.
//!
//! ```
//! use std::sync::Arc;
//! use herald_actors::seams::{ManualClock, Timestamp};
//! use herald_node::api::{ApiKeys, KeyRequest, Scope};
//!
//! let clock = ManualClock::new(Timestamp::from_secs(1_700_000_000));
//! let keys = ApiKeys::hs256(&[7u8; 32], Arc::new(clock.clone())).unwrap();
//! let issued = keys.issue(&KeyRequest::tenant("acme", &[Scope::Push]), "key-1").unwrap();
//! let claims = keys.verify(&issued.key).unwrap();
//! assert_eq!(claims.tenant.as_deref(), Some("acme"));
//! assert!(claims.has(Scope::Push) && !claims.has(Scope::Admin));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use herald_actors::seams::{BoxFuture, SharedClock, Timestamp};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::ApiError;
use super::limits;

/// The issuer (`iss`) of every API key.
pub const KEY_ISSUER: &str = "herald";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// Send pushes, broadcasts; register and remove devices.
    Push,
    /// Read push status, devices and feedback.
    Read,
    /// Manage tenants and keys (operator keys only: an admin key names no tenant).
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 3] = [Scope::Push, Scope::Read, Scope::Admin];

    /// The scope's name in keys and requests.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Push => "push",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// The scope named `name`.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// The claims of an API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Always [`KEY_ISSUER`].
    pub iss: String,
    /// The key id (what `DELETE /v1/keys/{id}` revokes).
    pub jti: String,
    /// The tenant the key acts for; `None` for operator (admin) keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Space-separated scopes (`push read`, `admin`).
    pub scope: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
}

impl Claims {
    /// True when the key carries `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scope.split(' ').any(|s| s == scope.as_str())
    }
}

/// What a new key is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRequest {
    /// The tenant (none for an operator key).
    pub tenant: Option<String>,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// Its lifetime (at most [`KEY_TTL_MAX`](limits::KEY_TTL_MAX)).
    pub ttl: Duration,
}

impl KeyRequest {
    /// A key for `tenant` with `scopes`, living [`KEY_TTL_DEFAULT`](limits::KEY_TTL_DEFAULT).
    pub fn tenant(tenant: &str, scopes: &[Scope]) -> Self {
        KeyRequest {
            tenant: Some(tenant.to_owned()),
            scopes: scopes.to_vec(),
            ttl: limits::KEY_TTL_DEFAULT,
        }
    }

    /// An operator key with the admin scope.
    pub fn admin() -> Self {
        KeyRequest {
            tenant: None,
            scopes: vec![Scope::Admin],
            ttl: limits::KEY_TTL_DEFAULT,
        }
    }
}

/// A key just issued: the only time the key text is shown.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct IssuedKey {
    /// The key id (`jti`).
    pub id: String,
    /// The key (a JWT) to send as `Authorization: Bearer <key>`.
    pub key: String,
    /// The tenant, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .field("tenant", &self.tenant)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a key cannot be made or is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The node secret is shorter than [`KEY_SECRET_BYTES_MIN`](limits::KEY_SECRET_BYTES_MIN).
    #[error("the API key secret has {0} bytes; at least {min} are required", min = limits::KEY_SECRET_BYTES_MIN)]
    SecretTooShort(usize),
    /// The request is invalid (no scopes, admin scope with a tenant, ttl out of range).
    #[error("invalid key request: {0}")]
    InvalidRequest(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// The key is malformed, has a bad signature or a wrong issuer.
    #[error("invalid API key")]
    Invalid,
    /// The key expired.
    #[error("API key expired")]
    Expired,
    /// The key was revoked.
    #[error("API key revoked")]
    Revoked,
}

/// Issues and verifies API keys with the node secret.
pub struct ApiKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    clock: SharedClock,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("algorithm", &"HS256")
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ApiKeys {
    /// Keys signed with HS256 under `secret` (at least
    /// [`KEY_SECRET_BYTES_MIN`](limits::KEY_SECRET_BYTES_MIN) bytes), expiring by `clock`.
    pub fn hs256(secret: &[u8], clock: SharedClock) -> Result<Self, KeyError> {
        if secret.len() < limits::KEY_SECRET_BYTES_MIN {
            return Err(KeyError::SecretTooShort(secret.len()));
        }
        Ok(ApiKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            clock,
        })
    }

    /// Issue a key with id `id` (the caller draws it, e.g. a UUID).
    pub fn issue(&self, request: &KeyRequest, id: &str) -> Result<IssuedKey, KeyError> {
        if request.scopes.is_empty() {
            return Err(KeyError::InvalidRequest(
                "a key needs at least one scope".into(),
            ));
        }
        let admin = request.scopes.contains(&Scope::Admin);
        if admin && request.tenant.is_some() {
            return Err(KeyError::InvalidRequest(
                "the admin scope is for operator keys, which name no tenant".into(),
            ));
        }
        if !admin && request.tenant.is_none() {
            return Err(KeyError::InvalidRequest(
                "a key without the admin scope must name a tenant".into(),
            ));
        }
        if request.ttl.is_zero() || request.ttl > limits::KEY_TTL_MAX {
            return Err(KeyError::InvalidRequest(format!(
                "ttl must be 1..={} seconds",
                limits::KEY_TTL_MAX.as_secs()
            )));
        }
        let mut scopes: Vec<Scope> = request.scopes.clone();
        scopes.sort();
        scopes.dedup();
        let names: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
        let now = self.clock.now();
        let claims = Claims {
            iss: KEY_ISSUER.to_owned(),
            jti: id.to_owned(),
            tenant: request.tenant.clone(),
            scope: names.join(" "),
            iat: now.as_secs(),
            exp: now.saturating_add(request.ttl).as_secs(),
        };
        let key = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| KeyError::Signing(e.to_string()))?;
        Ok(IssuedKey {
            id: claims.jti,
            key,
            tenant: claims.tenant,
            scopes: names,
            expires_at: claims.exp,
        })
    }

    /// Check a key's signature, issuer and expiry (not revocation); its claims.
    pub fn verify(&self, key: &str) -> Result<Claims, KeyError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked below against the injected clock, not the wall clock.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(key, &self.decoding, &validation)
            .map_err(|_| KeyError::Invalid)?;
        let claims = data.claims;
        if claims.iss != KEY_ISSUER || claims.jti.is_empty() {
            return Err(KeyError::Invalid);
        }
        if self.clock.now().as_secs() >= claims.exp {
            return Err(KeyError::Expired);
        }
        Ok(claims)
    }

    /// The clock keys expire by.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

/// Why a key id could not be revoked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// [`REVOKED_KEYS_MAX`](limits::REVOKED_KEYS_MAX) unexpired revocations are held.
    #[error("{0} revoked keys are held; no more until some expire")]
    Full(usize),
    /// The cluster did not take the revocation (no leader, timeout, refused).
    #[error("the revocation was not replicated: {0}")]
    Unavailable(String),
}

/// The set of revoked key ids: [`MemoryRevocations`] (one process), or
/// [`ClusterRevocations`] (replicated through Raft: a key revoked on one node is refused by
/// every node once applied there).
pub trait RevocationSet: Send + Sync + fmt::Debug + 'static {
    /// Revoke key `id` until `until` (when the key would have expired anyway).
    fn revoke<'a>(
        &'a self,
        id: &'a str,
        until: Timestamp,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<(), RevocationError>>;
    /// True when key `id` is revoked at `now`.
    fn is_revoked(&self, id: &str, now: Timestamp) -> bool;
}

/// Revoked key ids in memory, bounded by [`REVOKED_KEYS_MAX`](limits::REVOKED_KEYS_MAX);
/// entries are dropped once their key would have expired.
#[derive(Debug, Default)]
pub struct MemoryRevocations {
    revoked: Mutex<BTreeMap<String, Timestamp>>,
}

impl MemoryRevocations {
    /// An empty set.
    pub fn new() -> Self {
        MemoryRevocations::default()
    }
}

impl RevocationSet for MemoryRevocations {
    fn revoke<'a>(
        &'a self,
        id: &'a str,
        until: Timestamp,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<(), RevocationError>> {
        let mut revoked = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
        revoked.retain(|_, until| *until > now);
        let result = if !revoked.contains_key(id) && revoked.len() >= limits::REVOKED_KEYS_MAX {
            Err(RevocationError::Full(revoked.len()))
        } else {
            revoked.insert(id.to_owned(), until);
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }

    fn is_revoked(&self, id: &str, now: Timestamp) -> bool {
        let revoked = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
        revoked.get(id).is_some_and(|until| *until > now)
    }
}

/// Revocations replicated through the cluster's Raft log (`herald node` uses these).
#[derive(Debug, Clone)]
pub struct ClusterRevocations {
    revocations: herald_cluster::node::Revocations,
}

impl ClusterRevocations {
    /// Over `revocations` (from `ClusterNode::revocations`).
    pub fn new(revocations: herald_cluster::node::Revocations) -> Self {
        ClusterRevocations { revocations }
    }
}

/// How long a revocation may take to be committed and applied on the node asked.
pub const REVOCATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl RevocationSet for ClusterRevocations {
    fn revoke<'a>(
        &'a self,
        id: &'a str,
        until: Timestamp,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<(), RevocationError>> {
        Box::pin(async move {
            self.revocations
                .revoke(id, until.as_millis(), now.as_millis(), REVOCATION_TIMEOUT)
                .await
                .map_err(|e| match e {
                    herald_cluster::node::RevokeError::Full(n) => RevocationError::Full(n),
                    other => RevocationError::Unavailable(other.to_string()),
                })
        })
    }

    fn is_revoked(&self, id: &str, now: Timestamp) -> bool {
        self.revocations.is_revoked(id, now.as_millis())
    }
}

/// The authenticated caller of a request (an extractor: 401 when the key is missing,
/// malformed, expired or revoked).
#[derive(Debug, Clone)]
pub struct Caller {
    claims: Claims,
}

impl Caller {
    /// The key's claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// 403 `insufficient_scope` unless the key carries `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.claims.has(scope) {
            Ok(())
        } else {
            Err(ApiError::new(
                "insufficient_scope",
                format!("this key lacks the {:?} scope", scope.as_str()),
            ))
        }
    }

    /// The tenant this key acts for, after checking `scope`. A request that names another
    /// tenant (`claimed`) gets 403 `forbidden_tenant`, whether that tenant exists or not.
    pub fn tenant_for(&self, scope: Scope, claimed: Option<&str>) -> Result<&str, ApiError> {
        self.require(scope)?;
        let Some(tenant) = self.claims.tenant.as_deref() else {
            return Err(ApiError::new(
                "forbidden_tenant",
                "an operator key acts for no tenant; use a tenant key",
            ));
        };
        match claimed {
            Some(other) if other != tenant => Err(ApiError::new(
                "forbidden_tenant",
                "this key cannot act for another tenant",
            )),
            _ => Ok(tenant),
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::new(
                "missing_api_key",
                "send the API key as Authorization: Bearer <key>",
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    "missing_api_key",
                    "the Authorization header must be Bearer <key>",
                )
            })?;
        let claims = state.keys.verify(key).map_err(|e| {
            metrics::counter!("herald_api_auth_failures_total", "reason" => key_error_label(&e))
                .increment(1);
            ApiError::new("invalid_api_key", e.to_string())
        })?;
        if state.revocations.is_revoked(&claims.jti, state.keys.now()) {
            metrics::counter!("herald_api_auth_failures_total", "reason" => "revoked").increment(1);
            return Err(ApiError::new(
                "invalid_api_key",
                KeyError::Revoked.to_string(),
            ));
        }
        Ok(Caller { claims })
    }
}

fn key_error_label(e: &KeyError) -> &'static str {
    match e {
        KeyError::Expired => "expired",
        KeyError::Revoked => "revoked",
        _ => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_actors::seams::ManualClock;

    use super::*;

    fn keys(clock: &ManualClock) -> ApiKeys {
        ApiKeys::hs256(b"0123456789abcdef0123456789abcdef", Arc::new(clock.clone())).unwrap()
    }

    #[test]
    fn keys_expire_by_the_injected_clock() {
        let clock = ManualClock::new(Timestamp::from_secs(1_000));
        let keys = keys(&clock);
        let mut request = KeyRequest::tenant("acme", &[Scope::Push, Scope::Read]);
        request.ttl = Duration::from_secs(60);
        let issued = keys.issue(&request, "k1").unwrap();
        assert_eq!(issued.scopes, vec!["push", "read"]);
        assert!(keys.verify(&issued.key).is_ok());
        clock.advance(Duration::from_secs(60));
        assert_eq!(keys.verify(&issued.key), Err(KeyError::Expired));
        assert!(!format!("{issued:?}").contains(&issued.key));
    }

    #[test]
    fn forged_and_malformed_keys_are_refused() {
        let clock = ManualClock::new(Timestamp::from_secs(1_000));
        let issued = keys(&clock).issue(&KeyRequest::admin(), "k1").unwrap();
        let other = ApiKeys::hs256(&[1u8; 32], Arc::new(clock.clone())).unwrap();
        assert_eq!(other.verify(&issued.key), Err(KeyError::Invalid));
        assert_eq!(keys(&clock).verify("not.a.jwt"), Err(KeyError::Invalid));
        assert!(matches!(
            ApiKeys::hs256(b"short", Arc::new(clock.clone())),
            Err(KeyError::SecretTooShort(5))
        ));
    }

    #[test]
    fn admin_keys_name_no_tenant() {
        let clock = ManualClock::new(Timestamp::from_secs(1_000));
        let keys = keys(&clock);
        let mut r = KeyRequest::tenant("acme", &[Scope::Admin]);
        assert!(matches!(
            keys.issue(&r, "x"),
            Err(KeyError::InvalidRequest(_))
        ));
        r.tenant = None;
        r.scopes = vec![Scope::Push];
        assert!(matches!(
            keys.issue(&r, "x"),
            Err(KeyError::InvalidRequest(_))
        ));
        r.scopes = vec![];
        assert!(matches!(
            keys.issue(&r, "x"),
            Err(KeyError::InvalidRequest(_))
        ));
    }

    #[test]
    fn revocations_are_bounded_by_expiry() {
        let set = MemoryRevocations::new();
        let t = Timestamp::from_secs;
        futures_util::FutureExt::now_or_never(set.revoke("a", t(100), t(10)))
            .unwrap()
            .unwrap();
        assert!(set.is_revoked("a", t(50)));
        assert!(!set.is_revoked("a", t(100)));
        assert!(!set.is_revoked("b", t(50)));
    }
}
