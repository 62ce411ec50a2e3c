//! Certificate auth end to end: client identities from PEM and PKCS#12, and mutual TLS
//! handshakes over 127.0.0.1 against a server that requires and verifies client certificates.

use std::sync::Arc;
use std::time::Duration;

use herald_actors::apns::{ApnsTlsConfig, AuthError, ClientIdentity, ConnectionAuth};
use herald_actors::seams::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TEAM_ID: &str = "TEAM123456";
const TOPIC: &str = "com.example.app";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A CA that can sign certificates.
struct Ca {
    pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An Apple-style push client certificate: CN "Apple Push Services: <topic>", UID
    /// <topic>, OU <team id>.
    fn client(&self, team_id: Option<&str>) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let dn = &mut params.distinguished_name;
        dn.push(DnType::CommonName, format!("Apple Push Services: {TOPIC}"));
        dn.push(
            DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 1]),
            TOPIC,
        );
        if let Some(team_id) = team_id {
            dn.push(DnType::OrganizationalUnitName, team_id);
        }
        dn.push(DnType::OrganizationName, "Example Inc.");
        dn.push(DnType::CountryName, "US");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf::new(cert, key)
    }

    fn server(&self) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf::new(cert, key)
    }
}

struct Leaf {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    key_der: Vec<u8>,
}

impl Leaf {
    fn new(cert: rcgen::Certificate, key: KeyPair) -> Leaf {
        Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    fn identity(&self) -> ClientIdentity {
        ClientIdentity::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes()).unwrap()
    }

    fn pkcs12(&self, ca: &Ca, password: &str, legacy: bool) -> Vec<u8> {
        let chain = [
            p12_keystore::Certificate::from_der(&self.cert_der).unwrap(),
            p12_keystore::Certificate::from_der(&ca.der).unwrap(),
        ];
        let mut store = p12_keystore::KeyStore::new();
        store.add_entry(
            "apns",
            p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
                &self.key_der,
                b"key-1",
                chain,
            )),
        );
        let mut writer = store.writer(password);
        if legacy {
            // What Keychain Access exports: 3DES and HMAC-SHA1.
            writer = writer
                .encryption_algorithm(
                    p12_keystore::EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
                )
                .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha1);
        }
        writer.write().unwrap()
    }
}

#[test]
fn pem_identity_reads_team_and_topic() {
    let ca = Ca::new("Test Push CA");
    let client = ca.client(Some(TEAM_ID));
    // Chain and key in one file works too.
    let bundle = format!("{}{}", client.cert_pem, ca.pem);
    let identity = ClientIdentity::from_pem(bundle.as_bytes(), client.key_pem.as_bytes()).unwrap();
    assert_eq!(identity.team_id(), Some(TEAM_ID));
    assert_eq!(identity.topic(), Some(TOPIC));
    assert_eq!(identity.certificate_chain().len(), 2);
    assert!(identity.not_after() > Timestamp::from_secs(1_800_000_000));
    let mut auth = identity.certificate_auth().unwrap();
    assert_eq!(auth.team_id(), TEAM_ID);
    assert_eq!(auth.authorization(Timestamp::EPOCH), Ok(None));

    let debug = format!("{identity:?}");
    assert!(debug.contains(TEAM_ID), "{debug}");
    let key_body: String = client
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!debug.contains(&key_body[..16]), "{debug}");
}

#[test]
fn team_id_can_be_given_when_the_subject_lacks_it() {
    let ca = Ca::new("Test Push CA");
    let identity = ca.client(None).identity();
    assert_eq!(identity.team_id(), None);
    assert!(matches!(
        identity.certificate_auth(),
        Err(AuthError::Certificate(_))
    ));
    assert!(matches!(
        identity.clone().with_team_id("short"),
        Err(AuthError::InvalidId { .. })
    ));
    let identity = identity.with_team_id(TEAM_ID).unwrap();
    assert_eq!(identity.certificate_auth().unwrap().team_id(), TEAM_ID);
}

#[test]
fn mismatched_or_missing_pieces_are_refused() {
    let ca = Ca::new("Test Push CA");
    let a = ca.client(Some(TEAM_ID));
    let b = ca.client(Some(TEAM_ID));
    let err = ClientIdentity::from_pem(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap_err();
    assert!(matches!(err, AuthError::Certificate(_)), "{err:?}");
    let err = ClientIdentity::from_pem(b"", a.key_pem.as_bytes()).unwrap_err();
    assert!(matches!(err, AuthError::Certificate(_)), "{err:?}");
    let err = ClientIdentity::from_pem(a.cert_pem.as_bytes(), b"").unwrap_err();
    assert!(matches!(err, AuthError::Certificate(_)), "{err:?}");
}

#[test]
fn pkcs12_identity_loads_modern_and_legacy_archives() {
    let ca = Ca::new("Test Push CA");
    let client = ca.client(Some(TEAM_ID));
    for legacy in [false, true] {
        let p12 = client.pkcs12(&ca, "s3cret", legacy);
        let identity = ClientIdentity::from_pkcs12(&p12, "s3cret").unwrap();
        assert_eq!(identity.team_id(), Some(TEAM_ID));
        assert_eq!(identity.topic(), Some(TOPIC));
        assert_eq!(identity.certificate_chain()[0], client.cert_der);
        let err = ClientIdentity::from_pkcs12(&p12, "wrong").unwrap_err();
        assert!(matches!(err, AuthError::Certificate(_)), "{err:?}");
    }
}

/// What each side of one handshake saw.
struct Outcome {
    server: Result<Option<Vec<u8>>, String>,
    client_read: Result<Vec<u8>, String>,
}

/// Run one connection: a server requiring client certificates from `client_ca`, and an
/// Herald client built by `ApnsTlsConfig` with `identity`.
async fn handshake(server_ca: &Ca, client_ca: &Ca, identity: Option<ClientIdentity>) -> Outcome {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut client_roots = rustls::RootCertStore::empty();
    client_roots.add(client_ca.der.clone()).unwrap();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider.clone())
            .build()
            .unwrap();
    let server_leaf = server_ca.server();
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_leaf.cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_leaf.key_der.clone())),
        )
        .unwrap();
    server_config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(alpn)
    });

    let mut builder = ApnsTlsConfig::new();
    builder
        .webpki_roots(false)
        .add_root_certificates_pem(server_ca.pem.as_bytes());
    if let Some(identity) = identity {
        builder.client_identity(identity);
    }
    let connector = tokio_rustls::TlsConnector::from(builder.build().unwrap());
    let client = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut received = Vec::new();
        tls.read_to_end(&mut received)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(received)
    };
    let client_read = tokio::time::timeout(HANDSHAKE_TIMEOUT, client)
        .await
        .unwrap();
    let server = tokio::time::timeout(HANDSHAKE_TIMEOUT, server)
        .await
        .unwrap()
        .unwrap();
    Outcome {
        server,
        client_read,
    }
}

#[tokio::test]
async fn client_certificate_is_verified_end_to_end() {
    let server_ca = Ca::new("Test Server CA");
    let client_ca = Ca::new("Test Push CA");
    let client = client_ca.client(Some(TEAM_ID));
    let p12 = client.pkcs12(&client_ca, "pw", true);
    for identity in [
        client.identity(),
        ClientIdentity::from_pkcs12(&p12, "pw").unwrap(),
    ] {
        let outcome = handshake(&server_ca, &client_ca, Some(identity)).await;
        assert_eq!(outcome.server, Ok(Some(b"h2".to_vec())));
        assert_eq!(outcome.client_read, Ok(b"hello".to_vec()));
    }
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let server_ca = Ca::new("Test Server CA");
    let client_ca = Ca::new("Test Push CA");
    let impostor = Ca::new("Impostor CA").client(Some(TEAM_ID));
    let outcome = handshake(&server_ca, &client_ca, Some(impostor.identity())).await;
    let server_error = outcome.server.unwrap_err();
    assert!(server_error.contains("certificate"), "{server_error}");
    // TLS 1.3: the client learns of the refusal from the server's alert on its first read.
    assert!(outcome.client_read.is_err(), "{:?}", outcome.client_read);
}

#[tokio::test]
async fn missing_client_certificate_is_refused() {
    let server_ca = Ca::new("Test Server CA");
    let client_ca = Ca::new("Test Push CA");
    let outcome = handshake(&server_ca, &client_ca, None).await;
    assert!(outcome.server.is_err(), "{:?}", outcome.server);
    assert!(outcome.client_read.is_err(), "{:?}", outcome.client_read);
}

#[tokio::test]
async fn server_not_signed_by_the_trusted_ca_is_refused_by_the_client() {
    let server_ca = Ca::new("Test Server CA");
    let client_ca = Ca::new("Test Push CA");
    let client = client_ca.client(Some(TEAM_ID));
    // The client trusts only `client_ca` for servers; the server's CA is unknown to it.
    let outcome = handshake_with_client_trust(&server_ca, &client_ca, client.identity()).await;
    assert!(outcome.is_err());
}

async fn handshake_with_client_trust(
    server_ca: &Ca,
    trusted_by_client: &Ca,
    identity: ClientIdentity,
) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server_leaf = server_ca.server();
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_leaf.cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_leaf.key_der.clone())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let config = ApnsTlsConfig::new()
        .webpki_roots(false)
        .add_root_certificates_pem(trusted_by_client.pem.as_bytes())
        .client_identity(identity)
        .build()
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        connector
            .connect(name, tcp)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, server).await;
    result
}
