//! Provider-token verification (ES256 JWT by `kid`) and the per-connection token rules.
//!
//! Rules, as APNs applies them:
//! - no `authorization` header and no client certificate → 403 `MissingProviderToken`;
//! - not `bearer <JWT>`, not ES256, unknown `kid`, `iss` not the key's team, bad signature,
//!   `iat` missing or in the future → 403 `InvalidProviderToken`;
//! - `iat` older than one hour by the emulator's clock → 403 `ExpiredProviderToken`;
//! - a key configured for the other environment → 403 `BadEnvironmentKeyIdInToken`;
//! - one team per connection: once a connection has used a team's token, a token of
//!   another team → 403 `UnrelatedKeyIdInToken`;
//! - a connection presenting a different token less than 20 minutes after it first used
//!   its current one → 429 `TooManyProviderTokenUpdates` (the current token stays).

use std::collections::BTreeMap;
use std::time::Duration;

use herald_actors::apns::Reason;
use herald_actors::limits::{PROVIDER_TOKEN_AGE_MAX, PROVIDER_TOKEN_SWITCH_AFTER};
use herald_actors::seams::Timestamp;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::config::{Environment, KeyEnvironment};

/// Tolerated clock skew for an `iat` in the future.
const IAT_FUTURE_SKEW: Duration = Duration::from_secs(60);

/// A registered signing key.
#[derive(Clone)]
pub(crate) struct KnownKey {
    pub(crate) team_id: String,
    pub(crate) environment: KeyEnvironment,
    pub(crate) decoding: DecodingKey,
}

impl std::fmt::Debug for KnownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownKey")
            .field("team_id", &self.team_id)
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

/// Keys by key id.
pub(crate) type KeyStore = BTreeMap<String, KnownKey>;

#[derive(Deserialize)]
struct Claims {
    iss: String,
    iat: u64,
}

/// The token state of one connection.
#[derive(Debug, Default)]
pub(crate) struct TokenState {
    team_id: Option<String>,
    current: Option<CurrentToken>,
}

#[derive(Debug)]
struct CurrentToken {
    jwt: String,
    iat: Timestamp,
    first_used: Timestamp,
}

impl TokenState {
    /// Check the `authorization` header of one request at `now`; on success, the team id.
    pub(crate) fn authorize(
        &mut self,
        header: Option<&str>,
        keys: &KeyStore,
        env: Environment,
        now: Timestamp,
    ) -> Result<String, Reason> {
        let header = header.ok_or(Reason::MissingProviderToken)?;
        let jwt = strip_bearer(header).ok_or(Reason::InvalidProviderToken)?;
        if let (Some(cur), Some(team)) = (&self.current, &self.team_id)
            && cur.jwt == jwt
        {
            if now.since(cur.iat) > PROVIDER_TOKEN_AGE_MAX {
                return Err(Reason::ExpiredProviderToken);
            }
            return Ok(team.clone());
        }
        let (team, iat) = verify(jwt, keys, env, now)?;
        if let Some(conn_team) = &self.team_id
            && *conn_team != team
        {
            return Err(Reason::UnrelatedKeyIdInToken);
        }
        if let Some(cur) = &self.current
            && now.since(cur.first_used) < PROVIDER_TOKEN_SWITCH_AFTER
        {
            return Err(Reason::TooManyProviderTokenUpdates);
        }
        self.team_id = Some(team.clone());
        self.current = Some(CurrentToken {
            jwt: jwt.to_owned(),
            iat,
            first_used: now,
        });
        Ok(team)
    }
}

fn strip_bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Verify one JWT: the team id and `iat` on success.
fn verify(
    jwt: &str,
    keys: &KeyStore,
    env: Environment,
    now: Timestamp,
) -> Result<(String, Timestamp), Reason> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| Reason::InvalidProviderToken)?;
    if header.alg != Algorithm::ES256 {
        return Err(Reason::InvalidProviderToken);
    }
    let kid = header.kid.ok_or(Reason::InvalidProviderToken)?;
    let key = keys.get(&kid).ok_or(Reason::InvalidProviderToken)?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let data = jsonwebtoken::decode::<Claims>(jwt, &key.decoding, &validation)
        .map_err(|_| Reason::InvalidProviderToken)?;
    if data.claims.iss != key.team_id {
        return Err(Reason::InvalidProviderToken);
    }
    if !key.environment.allows(env) {
        return Err(Reason::BadEnvironmentKeyIdInToken);
    }
    let iat = Timestamp::from_secs(data.claims.iat);
    if iat > now.saturating_add(IAT_FUTURE_SKEW) {
        return Err(Reason::InvalidProviderToken);
    }
    if now.since(iat) > PROVIDER_TOKEN_AGE_MAX {
        return Err(Reason::ExpiredProviderToken);
    }
    Ok((key.team_id.clone(), iat))
}
