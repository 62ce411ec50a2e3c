//! Authentication: provider-token rules (403s, 429 TooManyProviderTokenUpdates) and
//! client-certificate auth.

mod emulator_support;

use std::time::Duration;

use emulator_support::*;
use herald_sim::emulator::{Environment, KeyConfig, KeyEnvironment, TeamConfig};

fn auth_headers(bearer: &str) -> Vec<(&'static str, String)> {
    alert_headers(bearer)
}

#[tokio::test]
async fn missing_invalid_and_expired_tokens() {
    let s = setup(|_| {}).await;
    let client = Client::connect(&s.emulator).await;

    let no_auth = client.push(&[("apns-topic", BUNDLE)]).await;
    assert_eq!(
        (no_auth.status, no_auth.reason.as_deref()),
        (403, Some("MissingProviderToken"))
    );

    let (_, stranger) = TeamConfig::generate(TEAM, KEY_ID, &[BUNDLE]).unwrap();
    let invalid = [
        "bearer not.a.jwt".to_owned(),
        "basic abc".to_owned(),
        // Right kid and team, wrong key: the signature does not verify.
        format!("bearer {}", jwt(&stranger.p8_pem, KEY_ID, TEAM, START_SECS)),
        // Unknown kid.
        format!(
            "bearer {}",
            jwt(&s.key.p8_pem, "NOSUCHKEY1", TEAM, START_SECS)
        ),
        // iss is not the key's team.
        format!(
            "bearer {}",
            jwt(&s.key.p8_pem, KEY_ID, "OTHERTEAM1", START_SECS)
        ),
    ];
    for bearer in &invalid {
        let a = client.push(&refs(&auth_headers(bearer))).await;
        assert_eq!(
            (a.status, a.reason.as_deref()),
            (403, Some("InvalidProviderToken")),
            "{bearer}"
        );
    }

    let old = format!(
        "bearer {}",
        jwt(&s.key.p8_pem, KEY_ID, TEAM, START_SECS - 3601)
    );
    let a = client.push(&refs(&auth_headers(&old))).await;
    assert_eq!(
        (a.status, a.reason.as_deref()),
        (403, Some("ExpiredProviderToken"))
    );
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn token_ages_out_on_a_connection() {
    let s = setup(|_| {}).await;
    let client = Client::connect(&s.emulator).await;
    let bearer = bearer(&s);
    assert_eq!(client.push(&refs(&auth_headers(&bearer))).await.status, 200);
    s.clock.advance(Duration::from_secs(61 * 60));
    let a = client.push(&refs(&auth_headers(&bearer))).await;
    assert_eq!(
        (a.status, a.reason.as_deref()),
        (403, Some("ExpiredProviderToken"))
    );
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn one_team_per_connection_and_environment_keys() {
    let s = setup(|_| {}).await;
    let other = s
        .emulator
        .generate_team_key("TEAM999999", &["com.other.app"])
        .unwrap();
    let other_bearer = format!(
        "bearer {}",
        jwt(&other.p8_pem, &other.key_id, "TEAM999999", START_SECS)
    );

    let client = Client::connect(&s.emulator).await;
    assert_eq!(
        client.push(&refs(&auth_headers(&bearer(&s)))).await.status,
        200
    );
    let a = client
        .push(&[
            ("authorization", other_bearer.as_str()),
            ("apns-topic", "com.other.app"),
        ])
        .await;
    assert_eq!(
        (a.status, a.reason.as_deref()),
        (403, Some("UnrelatedKeyIdInToken"))
    );

    // The other team is fine on its own connection.
    let fresh = Client::connect(&s.emulator).await;
    let a = fresh
        .push(&[
            ("authorization", other_bearer.as_str()),
            ("apns-topic", "com.other.app"),
        ])
        .await;
    assert_eq!(a.status, 200, "{a:?}");

    // A sandbox-only key against a production emulator.
    let (team, sandbox) = TeamConfig::generate(TEAM, "SANDBOXKEY", &[BUNDLE]).unwrap();
    let key = KeyConfig {
        environment: KeyEnvironment::Sandbox,
        ..team.keys[0].clone()
    };
    s.emulator.add_team_key(TEAM, &[BUNDLE], &key).unwrap();
    let sandbox_bearer = format!(
        "bearer {}",
        jwt(&sandbox.p8_pem, "SANDBOXKEY", TEAM, START_SECS)
    );
    let c3 = Client::connect(&s.emulator).await;
    let a = c3.push(&refs(&auth_headers(&sandbox_bearer))).await;
    assert_eq!(
        (a.status, a.reason.as_deref()),
        (403, Some("BadEnvironmentKeyIdInToken"))
    );
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn switching_tokens_too_soon_is_429() {
    let s = setup(|_| {}).await;
    let client = Client::connect(&s.emulator).await;
    let first = bearer(&s);
    assert_eq!(client.push(&refs(&auth_headers(&first))).await.status, 200);

    s.clock.advance(Duration::from_secs(5 * 60));
    let second = format!(
        "bearer {}",
        jwt(&s.key.p8_pem, KEY_ID, TEAM, START_SECS + 300)
    );
    let a = client.push(&refs(&auth_headers(&second))).await;
    assert_eq!(
        (a.status, a.reason.as_deref()),
        (429, Some("TooManyProviderTokenUpdates"))
    );
    // The first token is still good on this connection; a new connection may use the second.
    assert_eq!(client.push(&refs(&auth_headers(&first))).await.status, 200);
    let other_conn = Client::connect(&s.emulator).await;
    assert_eq!(
        other_conn.push(&refs(&auth_headers(&second))).await.status,
        200
    );

    // After 20 minutes of use, switching is allowed.
    s.clock.advance(Duration::from_secs(15 * 60));
    assert_eq!(client.push(&refs(&auth_headers(&second))).await.status, 200);
    s.emulator.shutdown().await;
}

fn client_identity(ca: &rcgen::Issuer<'_, rcgen::KeyPair>, team: &str, bundle: &str) -> Identity {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("Apple Push Services: {bundle}"),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, team);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, ca).unwrap();
    (
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

#[tokio::test]
async fn client_certificate_auth() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test Push CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_pem = ca_cert.pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let s = setup(|c| c.tls.client_ca_pem = Some(ca_pem.clone())).await;
    let identity = client_identity(&issuer, TEAM, BUNDLE);
    let client = Client::connect_with(&s.emulator, Some(identity))
        .await
        .unwrap();
    // No authorization, no topic: the certificate supplies both.
    let a = client.push(&[("apns-push-type", "alert")]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(s.emulator.accepted()[0].topic, BUNDLE);
    let a = client.push(&[("apns-topic", "com.other.app")]).await;
    assert_eq!(
        (a.status, a.reason.as_deref()),
        (400, Some("TopicDisallowed"))
    );

    // Without a certificate (and no token) the push is refused.
    let anonymous = Client::connect_with(&s.emulator, None).await.unwrap();
    let a = anonymous.push(&[("apns-topic", BUNDLE)]).await;
    assert_eq!(
        (a.status, a.reason.as_deref()),
        (403, Some("MissingProviderToken"))
    );
    s.emulator.shutdown().await;

    // With `require_client_cert`, the handshake itself fails without one.
    let s = setup(|c| {
        c.tls.client_ca_pem = Some(ca_pem.clone());
        c.tls.require_client_cert = true;
    })
    .await;
    let refused = match Client::connect_with(&s.emulator, None).await {
        Err(_) => true,
        // TLS 1.3: the client learns of the refusal on first use.
        Ok(c) => c
            .request("POST", &format!("/3/device/{TOKEN}"), &[], PAYLOAD)
            .await
            .is_err(),
    };
    assert!(refused);
    s.emulator.shutdown().await;
}

fn identity_with_cn(ca: &rcgen::Issuer<'_, rcgen::KeyPair>, team: &str, cn: &str) -> Identity {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, team);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, ca).unwrap();
    (
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// A client certificate carries its environment in its common name: `Apple Development …
/// Push Services:` is sandbox only, `Apple Production … Push Services:` production only,
/// `Apple Push Services:` both. The wrong one answers 403 BadCertificateEnvironment.
#[tokio::test]
async fn certificate_for_the_other_environment_is_refused() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test Push CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_pem = ca_cert.pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let development = format!("Apple Development IOS Push Services: {BUNDLE}");
    let production = format!("Apple Production IOS Push Services: {BUNDLE}");
    let universal = format!("Apple Push Services: {BUNDLE}");

    for (environment, cases) in [
        (
            Environment::Production,
            [(&development, 403), (&production, 200), (&universal, 200)],
        ),
        (
            Environment::Sandbox,
            [(&development, 200), (&production, 403), (&universal, 200)],
        ),
    ] {
        let s = setup(|c| {
            c.tls.client_ca_pem = Some(ca_pem.clone());
            c.environment = environment;
        })
        .await;
        for (cn, status) in cases {
            let client =
                Client::connect_with(&s.emulator, Some(identity_with_cn(&issuer, TEAM, cn)))
                    .await
                    .unwrap();
            let a = client.push(&[("apns-push-type", "alert")]).await;
            assert_eq!(a.status, status, "{environment:?} {cn}: {a:?}");
            if status == 403 {
                assert_eq!(a.reason.as_deref(), Some("BadCertificateEnvironment"));
            }
        }
        assert_eq!(
            s.emulator
                .answers_by_reason()
                .get("BadCertificateEnvironment"),
            Some(&1)
        );
        s.emulator.shutdown().await;
    }
}
