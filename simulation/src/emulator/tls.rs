//! TLS for the listener: server certificate (generated or from files), optional client
//! certificates, and the identity a client certificate carries.

use std::io::BufReader;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use super::EmulatorError;
use super::config::{KeyEnvironment, TlsConfig, TlsMode};

/// Who a client certificate says the client is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertIdentity {
    /// The team id (the subject's organizational unit, OU).
    pub team_id: Option<String>,
    /// The topic (the subject's UID, or the bundle id in a common name
    /// `Apple Push Services: <bundle>` or `Apple Development|Production … Push Services:
    /// <bundle>`).
    pub topic: Option<String>,
    /// The environments the certificate is for, from its common name: `Apple Development
    /// … Push Services: <bundle>` (e.g. `Apple Development IOS Push Services:`) is sandbox
    /// only, `Apple Production … Push Services: <bundle>` production only, and `Apple Push
    /// Services: <bundle>` (Apple's universal certificate) or any other name both.
    pub environment: KeyEnvironment,
}

/// The listener's TLS setup.
pub(crate) struct Tls {
    pub(crate) acceptor: Option<TlsAcceptor>,
    pub(crate) ca_pem: Option<String>,
}

pub(crate) fn build(cfg: &TlsConfig) -> Result<Tls, EmulatorError> {
    let tls_err = |e: &dyn std::fmt::Display| EmulatorError::Tls(e.to_string());
    let (chain, key, ca_pem) = match cfg.mode {
        TlsMode::Plaintext => {
            return Ok(Tls {
                acceptor: None,
                ca_pem: None,
            });
        }
        TlsMode::SelfSigned => {
            let ck = rcgen::generate_simple_self_signed(cfg.subject_alt_names.clone())
                .map_err(|e| tls_err(&e))?;
            let key =
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
            (vec![ck.cert.der().clone()], key, ck.cert.pem())
        }
        TlsMode::Files => {
            let (Some(cert_path), Some(key_path)) = (&cfg.cert_pem_path, &cfg.key_pem_path) else {
                return Err(EmulatorError::Config(
                    "tls mode \"files\" needs cert_pem_path and key_pem_path".into(),
                ));
            };
            let cert_pem = read(cert_path)?;
            let key_pem = read(key_path)?;
            let chain = parse_certs(&cert_pem)?;
            let key = rustls_pemfile::private_key(&mut BufReader::new(key_pem.as_bytes()))
                .map_err(|e| tls_err(&e))?
                .ok_or_else(|| {
                    EmulatorError::Tls(format!("{}: no private key", key_path.display()))
                })?;
            (chain, key, cert_pem)
        }
    };
    if let Some(path) = &cfg.ca_pem_out {
        std::fs::write(path, &ca_pem)
            .map_err(|e| EmulatorError::Config(format!("{}: {e}", path.display())))?;
    }
    let client_ca = match (&cfg.client_ca_pem, &cfg.client_ca_pem_path) {
        (Some(pem), _) => Some(pem.clone()),
        (None, Some(path)) => Some(read(path)?),
        (None, None) => None,
    };
    let builder = rustls::ServerConfig::builder();
    let mut server = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in parse_certs(&pem)? {
                roots.add(cert).map_err(|e| tls_err(&e))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = if cfg.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| tls_err(&e))?)
        }
    }
    .with_single_cert(chain, key)
    .map_err(|e| tls_err(&e))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Tls {
        acceptor: Some(TlsAcceptor::from(Arc::new(server))),
        ca_pem: Some(ca_pem),
    })
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("tls", &self.acceptor.is_some())
            .finish_non_exhaustive()
    }
}

fn read(path: &std::path::Path) -> Result<String, EmulatorError> {
    std::fs::read_to_string(path)
        .map_err(|e| EmulatorError::Config(format!("{}: {e}", path.display())))
}

fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, EmulatorError> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EmulatorError::Tls(e.to_string()))?;
    if certs.is_empty() {
        return Err(EmulatorError::Tls("no certificate in PEM".into()));
    }
    Ok(certs)
}

const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_ORG_UNIT: &[u8] = &[0x55, 0x04, 0x0B];
const OID_USER_ID: &[u8] = &[0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x01];
/// The common name of Apple's universal (sandbox and production) push certificate.
const APPLE_UNIVERSAL_LABEL: &str = "Apple Push Services";

/// The bundle id and environments an Apple-style common name `<label>: <bundle>` names.
fn apple_common_name(cn: &str) -> Option<(&str, KeyEnvironment)> {
    let (label, bundle) = cn.split_once(": ")?;
    let environment = if label == APPLE_UNIVERSAL_LABEL {
        KeyEnvironment::Both
    } else if !label.ends_with("Push Services") {
        return None;
    } else if label.starts_with("Apple Development ") {
        KeyEnvironment::Sandbox
    } else if label.starts_with("Apple Production ") {
        KeyEnvironment::Production
    } else {
        return None;
    };
    (!bundle.is_empty()).then_some((bundle, environment))
}

/// Read team id and topic from a certificate's subject. `None` if the DER is malformed.
pub(crate) fn identity_of(cert_der: &[u8]) -> Option<CertIdentity> {
    let (_, cert, _) = tlv(cert_der)?;
    let (_, mut tbs, _) = tlv(cert)?;
    // version [0] (optional), serial, signature algorithm, issuer, validity, subject
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xA0 {
        tbs = rest;
        tbs = tlv(tbs)?.2; // serial
    } else {
        tbs = rest; // that was the serial
    }
    for _ in 0..3 {
        tbs = tlv(tbs)?.2;
    }
    let (_, mut subject, _) = tlv(tbs)?;
    let mut id = CertIdentity::default();
    let mut common_name = None;
    while !subject.is_empty() {
        let (_, mut set, rest) = tlv(subject)?;
        subject = rest;
        while !set.is_empty() {
            let (_, attr, rest) = tlv(set)?;
            set = rest;
            let (_, oid, value) = tlv(attr)?;
            let (_, value, _) = tlv(value)?;
            let value = String::from_utf8_lossy(value).into_owned();
            if oid == OID_ORG_UNIT {
                id.team_id = Some(value);
            } else if oid == OID_USER_ID {
                id.topic = Some(value);
            } else if oid == OID_COMMON_NAME {
                common_name = Some(value);
            }
        }
    }
    if let Some((bundle, environment)) = common_name.as_deref().and_then(apple_common_name) {
        id.environment = environment;
        if id.topic.is_none() {
            id.topic = Some(bundle.to_owned());
        }
    }
    Some(id)
}

/// One DER TLV: tag, contents, the bytes after it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for (kind, value) in dn {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identity_from_uid_or_common_name() {
        let uid = rcgen::DnType::CustomDnType(vec![0, 9, 2342, 19_200_300, 100, 1, 1]);
        let der = cert_with(&[
            (uid, "com.example.uid"),
            (rcgen::DnType::OrganizationalUnitName, "TEAM123456"),
            (
                rcgen::DnType::CommonName,
                "Apple Push Services: com.example.cn",
            ),
        ]);
        let id = identity_of(&der).unwrap();
        assert_eq!(id.team_id.as_deref(), Some("TEAM123456"));
        assert_eq!(
            id.topic.as_deref(),
            Some("com.example.uid"),
            "UID wins over CN"
        );

        let der = cert_with(&[(
            rcgen::DnType::CommonName,
            "Apple Push Services: com.example.cn",
        )]);
        let id = identity_of(&der).unwrap();
        assert_eq!(
            (id.team_id, id.topic.as_deref()),
            (None, Some("com.example.cn"))
        );

        assert_eq!(id.environment, KeyEnvironment::Both);

        for (cn, env) in [
            (
                "Apple Development IOS Push Services: com.example.cn",
                KeyEnvironment::Sandbox,
            ),
            (
                "Apple Production IOS Push Services: com.example.cn",
                KeyEnvironment::Production,
            ),
            (
                "Apple Development Mac Push Services: com.example.cn",
                KeyEnvironment::Sandbox,
            ),
        ] {
            let id = identity_of(&cert_with(&[(rcgen::DnType::CommonName, cn)])).unwrap();
            assert_eq!(
                (id.topic.as_deref(), id.environment),
                (Some("com.example.cn"), env)
            );
        }

        let der = cert_with(&[(rcgen::DnType::CommonName, "something else")]);
        assert_eq!(identity_of(&der).unwrap(), CertIdentity::default());
        assert_eq!(identity_of(&der[..der.len() / 2]), None);
        assert_eq!(identity_of(&[]), None);
    }
}
