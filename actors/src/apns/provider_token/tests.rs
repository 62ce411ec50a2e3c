use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{DecodingKey, Validation};
use proptest::prelude::*;

use super::*;
use crate::seams::{Clock, DetRng, ManualClock};

const KEY_ID: &str = "ABC123DEFG";
const TEAM_ID: &str = "DEF123GHIJ";
const START: Timestamp = Timestamp::from_secs(1_700_000_000);

fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

fn key_pair() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn signing_key() -> (SigningKey, rcgen::KeyPair) {
    let kp = key_pair();
    let key = SigningKey::from_p8_pem(kp.serialize_pem().as_bytes(), KEY_ID, TEAM_ID).unwrap();
    (key, kp)
}

fn minter(interval: Duration) -> (TokenMinter, ManualClock) {
    let clock = ManualClock::new(START);
    let (key, _) = signing_key();
    let minter = TokenMinter::new(key, Arc::new(clock.clone()), interval).unwrap();
    (minter, clock)
}

fn verify(jwt: &str, kp: &rcgen::KeyPair) -> Claims {
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let key = DecodingKey::from_ec_pem(kp.public_key_pem().as_bytes()).unwrap();
    jsonwebtoken::decode::<Claims>(jwt, &key, &validation)
        .unwrap()
        .claims
}

#[test]
fn same_key_compares_ids_and_key_bytes() {
    let kp = key_pair();
    let pem = kp.serialize_pem();
    let key = SigningKey::from_p8_pem(pem.as_bytes(), KEY_ID, TEAM_ID).unwrap();
    // The same key read again, with other line endings: the same key.
    let crlf = pem.replace('\n', "\r\n");
    let again = SigningKey::from_p8_pem(crlf.as_bytes(), KEY_ID, TEAM_ID).unwrap();
    assert!(key.same_key(&again));
    // Another key under the same ids, or the same key under another key id: not the same.
    let (other, _) = signing_key();
    assert!(!key.same_key(&other));
    let renamed = SigningKey::from_p8_pem(pem.as_bytes(), "ZZZ123DEFG", TEAM_ID).unwrap();
    assert!(!key.same_key(&renamed));
}

#[test]
fn sign_verify_round_trip() {
    let (key, kp) = signing_key();
    let token = key.sign(Timestamp::from_millis(1_700_000_000_999)).unwrap();
    let claims = verify(token.jwt(), &kp);
    assert_eq!((claims.iss.as_str(), claims.iat), (TEAM_ID, 1_700_000_000));
    assert_eq!(token.issued_at(), START);
    assert_eq!((token.key_id(), token.team_id()), (KEY_ID, TEAM_ID));

    let header = jsonwebtoken::decode_header(token.jwt()).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some(KEY_ID));
    assert_eq!(header.typ, None);
    // The header is exactly {alg, kid}; the claims exactly {iss, iat}.
    let decode_part = |i: usize| {
        let part = token.jwt().split('.').nth(i).unwrap();
        let json = base64_url_decode(part);
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json).unwrap()
    };
    let mut header_keys: Vec<_> = decode_part(0).keys().cloned().collect();
    header_keys.sort();
    assert_eq!(header_keys, ["alg", "kid"]);
    let mut claim_keys: Vec<_> = decode_part(1).keys().cloned().collect();
    claim_keys.sort();
    assert_eq!(claim_keys, ["iat", "iss"]);
}

#[test]
fn signature_from_another_key_does_not_verify() {
    let (key, _) = signing_key();
    let token = key.sign(START).unwrap();
    let other = key_pair();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let decoding = DecodingKey::from_ec_pem(other.public_key_pem().as_bytes()).unwrap();
    assert!(jsonwebtoken::decode::<Claims>(token.jwt(), &decoding, &validation).is_err());
}

#[test]
fn ids_must_be_ten_alphanumerics() {
    let p8 = key_pair().serialize_pem();
    for bad in ["", "ABC123DEF", "ABC123DEFGH", "ABC-23DEFG", "ABC123DEFé"] {
        let err = SigningKey::from_p8_pem(p8.as_bytes(), bad, TEAM_ID).unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::InvalidId {
                    field: "key id",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = SigningKey::from_p8_pem(p8.as_bytes(), KEY_ID, bad).unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::InvalidId {
                    field: "team id",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn unusable_keys_fail_at_load() {
    let err = SigningKey::from_p8_pem(b"not a key", KEY_ID, TEAM_ID).unwrap_err();
    assert!(matches!(err, AuthError::Key(_)), "{err:?}");
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let err =
        SigningKey::from_p8_pem(p384.serialize_pem().as_bytes(), KEY_ID, TEAM_ID).unwrap_err();
    assert!(matches!(err, AuthError::Key(_)), "{err:?}");
}

#[test]
fn debug_never_prints_secrets() {
    let kp = key_pair();
    let pem = kp.serialize_pem();
    let key = SigningKey::from_p8_pem(pem.as_bytes(), KEY_ID, TEAM_ID).unwrap();
    let token = key.sign(START).unwrap();
    let minter = TokenMinter::with_default_interval(key.clone(), Arc::new(ManualClock::new(START)));
    minter.install(token.clone()).unwrap();
    let mut auth = TokenConnectionAuth::new(minter.clone());
    auth.authorization(START).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let signature = token.jwt().rsplit('.').next().unwrap();
    for printed in [
        format!("{key:?}"),
        format!("{token:?}"),
        format!("{minter:?}"),
        format!("{auth:?}"),
        format!("{:?}", token.bearer_header()),
    ] {
        assert!(
            printed.contains(KEY_ID) || printed.contains("Sensitive"),
            "{printed}"
        );
        assert!(!printed.contains(&body[..20]), "{printed}");
        assert!(!printed.contains(signature), "{printed}");
        assert!(!printed.contains(token.jwt()), "{printed}");
    }
    assert!(token.bearer_header().is_sensitive());
}

#[test]
fn bearer_header_and_age() {
    let (key, _) = signing_key();
    let token = key.sign(START).unwrap();
    assert_eq!(
        token.bearer_header().to_str().unwrap(),
        format!("bearer {}", token.jwt())
    );
    assert_eq!(token.age(START.saturating_add(minutes(7))), minutes(7));
    assert_eq!(token.age(START.saturating_sub(minutes(7))), Duration::ZERO);
}

#[test]
fn from_jwt_recovers_the_fields() {
    let (key, _) = signing_key();
    let token = key.sign(START).unwrap();
    let copy = ProviderToken::from_jwt(token.jwt()).unwrap();
    assert_eq!(copy, token);
    assert_eq!(
        (copy.key_id(), copy.team_id(), copy.issued_at()),
        (KEY_ID, TEAM_ID, START)
    );
    assert!(matches!(
        ProviderToken::from_jwt("a.b.c"),
        Err(AuthError::InvalidToken(_))
    ));
}

#[test]
fn interval_outside_20_to_40_minutes_is_rejected() {
    let clock: SharedClock = Arc::new(ManualClock::new(START));
    let (key, _) = signing_key();
    for bad in [
        minutes(19),
        Duration::from_secs(40 * 60 + 1),
        minutes(60),
        Duration::ZERO,
    ] {
        let err = TokenMinter::new(key.clone(), clock.clone(), bad).unwrap_err();
        assert!(matches!(err, AuthError::InvalidInterval { .. }), "{err:?}");
    }
    for good in [minutes(20), minutes(30), minutes(40)] {
        assert_eq!(
            TokenMinter::new(key.clone(), clock.clone(), good)
                .unwrap()
                .interval(),
            good
        );
    }
    let err = TokenMinter::new(key.clone(), clock.clone(), Duration::from_secs(40 * 60 + 1));
    assert_eq!(err.unwrap_err(), AuthError::InvalidInterval { minutes: 41 });
    let default = TokenMinter::with_default_interval(key, clock);
    assert_eq!(default.interval(), PROVIDER_TOKEN_MINT_INTERVAL_DEFAULT);
}

#[test]
fn minter_caches_for_the_interval() {
    let (minter, clock) = minter(minutes(30));
    assert_eq!(minter.cached(), None);
    let first = minter.newest().unwrap();
    assert_eq!(minter.minted_count(), 1);
    clock.advance(minutes(29) + Duration::from_secs(59));
    assert_eq!(minter.newest().unwrap(), first);
    assert_eq!(minter.minted_count(), 1);
    clock.advance(Duration::from_secs(1));
    let second = minter.newest().unwrap();
    assert_ne!(second, first);
    assert_eq!(second.issued_at(), START.saturating_add(minutes(30)));
    assert_eq!(minter.minted_count(), 2);
    // Clones share the cache.
    assert_eq!(minter.clone().newest().unwrap(), second);
    assert_eq!(minter.minted_count(), 2);
}

#[test]
fn force_refresh_and_refresh_rejected() {
    let (minter, clock) = minter(minutes(30));
    let first = minter.newest().unwrap();
    clock.advance(minutes(1));
    let forced = minter.force_refresh().unwrap();
    assert_eq!(forced.issued_at(), START.saturating_add(minutes(1)));
    assert_eq!(minter.minted_count(), 2);
    // A stale expiry report does not mint again.
    assert_eq!(minter.refresh_rejected(&first).unwrap(), forced);
    assert_eq!(minter.minted_count(), 2);
    clock.advance(minutes(1));
    let refreshed = minter.refresh_rejected(&forced).unwrap();
    assert!(refreshed.issued_at() > forced.issued_at());
    assert_eq!(minter.minted_count(), 3);
}

#[test]
fn install_takes_only_newer_tokens_of_the_same_key() {
    let clock = ManualClock::new(START);
    let (key, _) = signing_key();
    let minter = TokenMinter::with_default_interval(key.clone(), Arc::new(clock.clone()));
    let leader_token = key.sign(START.saturating_sub(minutes(5))).unwrap();
    assert!(minter.install(leader_token.clone()).unwrap());
    assert_eq!(minter.newest().unwrap(), leader_token);
    assert_eq!(minter.minted_count(), 0);
    let older = key.sign(START.saturating_sub(minutes(10))).unwrap();
    assert!(!minter.install(older).unwrap());
    assert_eq!(minter.cached(), Some(leader_token));

    let other =
        SigningKey::from_p8_pem(key_pair().serialize_pem().as_bytes(), "ZZZ123DEFG", TEAM_ID)
            .unwrap();
    assert_eq!(
        minter.install(other.sign(START).unwrap()),
        Err(AuthError::TokenKeyMismatch)
    );
}

#[test]
fn replicated_minter_serves_installed_tokens_until_forty_minutes() {
    let clock = ManualClock::new(START);
    let (key, _) = signing_key();
    let minter = TokenMinter::replicated(key.clone(), Arc::new(clock.clone()));
    assert_eq!(minter.source(), TokenSource::Replicated);
    let leader_token = key.sign(START).unwrap();
    assert!(minter.install(leader_token.clone()).unwrap());
    // Installing the same token again changes nothing.
    assert!(!minter.install(leader_token.clone()).unwrap());
    // A local minter with M = 30 would mint at 30 min; the replicated one waits for the
    // leader until the token is 40 min old.
    clock.advance(minutes(39));
    assert_eq!(minter.newest().unwrap(), leader_token);
    assert_eq!(minter.minted_count(), 0);
    assert_eq!(minter.installed_count(), 1);

    // No leader for 40 min: a fallback token is signed here, once.
    clock.advance(minutes(1));
    let fallback = minter.newest().unwrap();
    assert_eq!(fallback.issued_at(), clock.now());
    assert_eq!(minter.newest().unwrap(), fallback);
    assert_eq!(minter.minted_count(), 1);

    // The cluster's token replaces the fallback even though it was issued a little earlier.
    let replicated = key
        .sign(clock.now().saturating_sub(Duration::from_secs(5)))
        .unwrap();
    assert!(minter.install(replicated.clone()).unwrap());
    assert_eq!(minter.newest().unwrap(), replicated);
    // But an old replicated token does not replace a fresh one.
    assert!(!minter.install(leader_token).unwrap());
    assert_eq!(minter.minted_count(), 1);
}

#[test]
fn replicated_minter_signs_a_fallback_before_the_first_token_then_adopts_the_clusters() {
    let clock = ManualClock::new(START);
    let (key, _) = signing_key();
    let minter = TokenMinter::replicated(key.clone(), Arc::new(clock.clone()));
    let fallback = minter.newest().unwrap();
    assert_eq!(minter.minted_count(), 1);
    // A stale replicated token (40 min old) does not replace the fresh fallback…
    let stale = key.sign(START.saturating_sub(minutes(40))).unwrap();
    assert!(!minter.install(stale).unwrap());
    assert_eq!(minter.newest().unwrap(), fallback);
    // …a recent one does, although it is older than the fallback.
    let recent = key.sign(START.saturating_sub(minutes(1))).unwrap();
    assert!(minter.install(recent.clone()).unwrap());
    assert_eq!(minter.newest().unwrap(), recent);
    // A local minter keeps the newer of the two.
    let local = TokenMinter::with_default_interval(key.clone(), Arc::new(clock.clone()));
    let own = local.newest().unwrap();
    assert!(!local.install(recent).unwrap());
    assert_eq!(local.newest().unwrap(), own);
}

#[test]
fn connection_starts_on_newest_and_waits_twenty_minutes_to_switch() {
    let (minter, clock) = minter(minutes(20));
    // The cluster's token is 10 minutes old when the connection opens.
    let key = minter.inner.key.clone();
    minter
        .install(key.sign(START.saturating_sub(minutes(10))).unwrap())
        .unwrap();
    let mut auth = TokenConnectionAuth::new(minter.clone());
    assert!(!auth.is_confirmed());
    assert_eq!(auth.team_id(), TEAM_ID);
    let first_header = auth.authorization(clock.now()).unwrap().unwrap();
    let first = auth.current_token().unwrap().clone();
    assert_eq!(first, minter.cached().unwrap());
    assert_eq!(first_header, first.bearer_header());
    auth.confirm();
    assert!(auth.is_confirmed());

    // At +10 min a newer token exists; at +19 min the connection still may not switch.
    clock.advance(minutes(10));
    let newer = minter.newest().unwrap();
    assert_ne!(newer, first);
    clock.advance(minutes(9));
    assert_eq!(
        auth.authorization(clock.now()).unwrap().unwrap(),
        first_header
    );
    assert_eq!(auth.switch_count(), 0);

    // At +20 min it switches to the newest.
    clock.advance(minutes(1));
    let header = auth.authorization(clock.now()).unwrap().unwrap();
    assert_eq!(auth.current_token(), Some(&newer));
    assert_eq!(header, newer.bearer_header());
    assert_eq!(auth.switch_count(), 1);
    assert!(auth.is_confirmed());
}

#[test]
fn too_many_updates_holds_the_token_another_twenty_minutes() {
    let (minter, clock) = minter(minutes(20));
    let mut auth = TokenConnectionAuth::new(minter.clone());
    auth.authorization(clock.now()).unwrap();
    let first = auth.current_token().unwrap().clone();
    clock.advance(minutes(15));
    auth.rejected(Reason::TooManyProviderTokenUpdates, clock.now());
    assert_eq!(
        auth.last_rejection(),
        Some((Reason::TooManyProviderTokenUpdates, clock.now()))
    );
    // Without the rejection it would switch at +20; now it holds until +35.
    clock.advance(minutes(19));
    auth.authorization(clock.now()).unwrap();
    assert_eq!(auth.current_token(), Some(&first));
    clock.advance(minutes(1));
    auth.authorization(clock.now()).unwrap();
    assert_ne!(auth.current_token(), Some(&first));
    assert_eq!(auth.switch_count(), 1);
}

#[test]
fn hold_past_sixty_minutes_exhausts_the_connection() {
    let (minter, clock) = minter(minutes(40));
    let mut auth = TokenConnectionAuth::new(minter.clone());
    auth.authorization(clock.now()).unwrap();
    // Keep being told to hold: the token reaches 60 minutes.
    for _ in 0..3 {
        clock.advance(minutes(19));
        auth.rejected(Reason::TooManyProviderTokenUpdates, clock.now());
        if auth.authorization(clock.now()).is_err() {
            break;
        }
    }
    clock.advance(minutes(5));
    assert_eq!(
        auth.authorization(clock.now()),
        Err(AuthError::TokenExhausted)
    );
    assert!(auth.is_exhausted());
    assert_eq!(auth.current_token(), None);
    // A new connection starts on the (fresh) newest token.
    let mut fresh = TokenConnectionAuth::new(minter.clone());
    fresh.authorization(clock.now()).unwrap();
    assert!(fresh.current_token().unwrap().age(clock.now()) < minutes(40));
}

#[test]
fn expired_token_refreshes_the_minter_and_exhausts_the_connection() {
    let (minter, clock) = minter(minutes(30));
    let mut a = TokenConnectionAuth::new(minter.clone());
    let mut b = TokenConnectionAuth::new(minter.clone());
    a.authorization(clock.now()).unwrap();
    b.authorization(clock.now()).unwrap();
    let rejected = a.current_token().unwrap().clone();
    clock.advance(minutes(2));
    a.rejected(Reason::ExpiredProviderToken, clock.now());
    b.rejected(Reason::ExpiredProviderToken, clock.now());
    // Both connections reported it; the minter minted once.
    assert_eq!(minter.minted_count(), 2);
    assert!(minter.cached().unwrap().issued_at() > rejected.issued_at());
    assert_eq!(a.authorization(clock.now()), Err(AuthError::TokenExhausted));
    assert_eq!(b.authorization(clock.now()), Err(AuthError::TokenExhausted));
    assert_eq!(
        a.last_rejection(),
        Some((Reason::ExpiredProviderToken, clock.now()))
    );
    let mut replacement = TokenConnectionAuth::new(minter.clone());
    replacement.authorization(clock.now()).unwrap();
    assert_eq!(replacement.current_token(), minter.cached().as_ref());
}

#[test]
fn credential_errors_are_recorded_without_changing_tokens() {
    let (minter, clock) = minter(minutes(30));
    let mut auth = TokenConnectionAuth::new(minter.clone());
    let header = auth.authorization(clock.now()).unwrap();
    auth.rejected(Reason::InvalidProviderToken, clock.now());
    assert_eq!(
        auth.last_rejection(),
        Some((Reason::InvalidProviderToken, clock.now()))
    );
    assert!(!auth.is_confirmed());
    assert_eq!(auth.authorization(clock.now()).unwrap(), header);
    assert_eq!(minter.minted_count(), 1);
}

#[test]
fn certificate_auth_sends_no_header() {
    let mut auth = crate::apns::CertificateAuth::new(TEAM_ID);
    assert_eq!(auth.authorization(START), Ok(None));
    assert!(auth.is_confirmed());
}

/// Runs one simulated span of `hours` with connections that open at random times, send at
/// random spacing and are sometimes closed; checks the per-connection rule on every request.
fn simulate(interval: Duration, gap_max_secs: u64, seed: u64, hours: u64) {
    let (minter, clock) = minter(interval);
    let mut rng = DetRng::from_seed(seed);
    let end = START.saturating_add(Duration::from_secs(hours * 3600));
    let mut connections: Vec<(TokenConnectionAuth, Option<(ProviderToken, Timestamp)>)> = (0..3)
        .map(|_| (TokenConnectionAuth::new(minter.clone()), None))
        .collect();
    while clock.now() < end {
        clock.advance(Duration::from_secs(rng.below(gap_max_secs + 1)));
        let now = clock.now();
        let index = usize::try_from(rng.below(connections.len() as u64)).unwrap();
        if rng.chance(0.01) {
            connections[index] = (TokenConnectionAuth::new(minter.clone()), None);
        }
        let (auth, last) = &mut connections[index];
        let header = auth
            .authorization(now)
            .unwrap_or_else(|e| panic!("no token at {now}: {e}"))
            .unwrap();
        let token = auth.current_token().unwrap().clone();
        assert_eq!(header, token.bearer_header());
        assert!(
            token.age(now) < PROVIDER_TOKEN_AGE_MAX,
            "token {}s old at {now}",
            token.age(now).as_secs()
        );
        match last {
            None => {
                // A connection starts on the newest token.
                assert_eq!(Some(&token), minter.cached().as_ref());
                *last = Some((token, now));
            }
            Some((previous, since)) if *previous != token => {
                assert!(
                    now.since(*since) >= PROVIDER_TOKEN_SWITCH_AFTER,
                    "switched after {}s",
                    now.since(*since).as_secs()
                );
                assert!(token.issued_at() > previous.issued_at());
                *last = Some((token, now));
            }
            Some(_) => {}
        }
    }
}

#[test]
fn six_hours_at_m_40_never_present_a_token_older_than_an_hour() {
    for seed in 0..4 {
        simulate(minutes(40), 600, seed, 6);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn per_connection_rule_holds(
        interval_minutes in 20u64..=40,
        gap_max_secs in prop_oneof![Just(5u64), 1u64..=300, 300u64..=3600],
        seed in any::<u64>(),
    ) {
        simulate(minutes(interval_minutes), gap_max_secs, seed, 6);
    }
}

fn base64_url_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes() {
        let value = ALPHABET.iter().position(|&c| c == byte).unwrap() as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}
