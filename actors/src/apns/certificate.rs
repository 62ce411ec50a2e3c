//! Certificate authentication: a client certificate chain and its private key.
//!
//! Apple issues APNs client certificates ("Apple Push Services: \<bundle id\>") as a `.p12`
//! (PKCS#12) export from Keychain Access, or as PEM after conversion with `openssl`.
//! [`ClientIdentity`] loads either, checks that the key matches the certificate, and reads
//! the team id and topic from the certificate subject when they are there: Apple puts the
//! team id in `OU`, the bundle id in `UID` and in the `CN` after the colon.
//!
//! ```
//! use herald_actors::apns::ClientIdentity;
//! # let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
//! # let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
//! # params.distinguished_name.push(rcgen::DnType::CommonName, "Apple Push Services: com.example.app");
//! # params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "TEAM123456");
//! # let cert_pem = params.self_signed(&key).unwrap().pem();
//! # let key_pem = key.serialize_pem();
//! let identity = ClientIdentity::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
//! assert_eq!(identity.team_id(), Some("TEAM123456"));
//! assert_eq!(identity.topic(), Some("com.example.app"));
//! let auth = identity.certificate_auth().unwrap(); // a ConnectionAuth for the connection
//! ```

use std::fmt;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::apns::AuthError;
use crate::apns::CertificateAuth;
use crate::apns::provider_token::validate_apple_id;
use crate::seams::Timestamp;

/// The X.509 attribute type `UID` (RFC 4519 `userId`), where Apple puts the bundle id.
const OID_USER_ID: &str = "0.9.2342.19200300.100.1.1";

/// A client certificate chain (leaf first) and its private key, for certificate auth.
///
/// `Debug` shows the subject-derived fields, never the key.
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    team_id: Option<String>,
    topic: Option<String>,
    not_after: Timestamp,
}

impl ClientIdentity {
    /// An identity from PEM: `cert_chain_pem` holds one or more `CERTIFICATE` blocks (leaf
    /// first), `key_pem` one private key (PKCS#8, PKCS#1 or SEC1). Both may be the same
    /// file's contents.
    ///
    /// # Errors
    /// [`AuthError::Certificate`] if either is missing or unreadable, or the key does not
    /// match the leaf certificate.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, AuthError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AuthError::Certificate(format!("certificate PEM: {e}")))?;
        // The pki-types error names the PEM problem, never key bytes.
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| AuthError::Certificate(format!("private key PEM: {e}")))?;
        ClientIdentity::from_der(chain, key)
    }

    /// An identity from a PKCS#12 (`.p12`) archive and its password: the first private
    /// key in it, with its certificate chain.
    ///
    /// # Errors
    /// [`AuthError::Certificate`] if the archive cannot be opened (wrong password included),
    /// holds no key with a certificate, or the key does not match the certificate.
    pub fn from_pkcs12(p12_der: &[u8], password: &str) -> Result<Self, AuthError> {
        let store = p12_keystore::KeyStore::from_pkcs12(p12_der, password)
            .map_err(|e| AuthError::Certificate(format!("PKCS#12: {e}")))?;
        let Some((_alias, key_chain)) = store.private_key_chain() else {
            return Err(AuthError::Certificate(
                "PKCS#12: no private key with a certificate".to_owned(),
            ));
        };
        let chain = key_chain
            .chain()
            .iter()
            .map(|cert| CertificateDer::from(cert.as_der().to_vec()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_chain.key().to_vec()));
        ClientIdentity::from_der(chain, key)
    }

    /// An identity from DER: a certificate chain (leaf first) and its private key.
    ///
    /// # Errors
    /// [`AuthError::Certificate`] if the chain is empty, the leaf cannot be parsed, or the
    /// key is unusable or does not match the leaf.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, AuthError> {
        let Some(leaf) = chain.first() else {
            return Err(AuthError::Certificate("no certificate".to_owned()));
        };
        let subject = parse_subject(leaf)?;
        // Load the key the way rustls will, and check it matches the leaf's public key, so
        // a mismatched pair fails at load time and not in the handshake.
        let provider: CryptoProvider = rustls::crypto::aws_lc_rs::default_provider();
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
            .map_err(|e| AuthError::Certificate(format!("private key: {e}")))?;
        Ok(ClientIdentity {
            chain,
            key,
            team_id: subject.team_id,
            topic: subject.topic,
            not_after: subject.not_after,
        })
    }

    /// Set the team id when the certificate subject does not carry it (or to override it).
    ///
    /// # Errors
    /// [`AuthError::InvalidId`] unless it is 10 ASCII letters or digits.
    pub fn with_team_id(mut self, team_id: &str) -> Result<Self, AuthError> {
        validate_apple_id("team id", team_id)?;
        self.team_id = Some(team_id.to_owned());
        Ok(self)
    }

    /// The team id from the certificate subject's `OU` (or [`with_team_id`](Self::with_team_id)).
    pub fn team_id(&self) -> Option<&str> {
        self.team_id.as_deref()
    }

    /// The topic (bundle id) from the subject's `UID`, or from the `CN` after its colon.
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// When the leaf certificate expires.
    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }

    /// The certificate chain, leaf first.
    pub fn certificate_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The per-connection auth for this identity.
    ///
    /// # Errors
    /// [`AuthError::Certificate`] if the team id is unknown: set it with
    /// [`with_team_id`](Self::with_team_id).
    pub fn certificate_auth(&self) -> Result<CertificateAuth, AuthError> {
        match &self.team_id {
            Some(team_id) => Ok(CertificateAuth::new(team_id.clone())),
            None => Err(AuthError::Certificate(
                "no team id in the certificate subject; give it explicitly".to_owned(),
            )),
        }
    }

    /// A copy of the private key, for building a TLS configuration.
    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            team_id: self.team_id.clone(),
            topic: self.topic.clone(),
            not_after: self.not_after,
        }
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// What Herald reads from a leaf certificate.
struct Subject {
    team_id: Option<String>,
    topic: Option<String>,
    not_after: Timestamp,
}

fn parse_subject(leaf: &CertificateDer<'_>) -> Result<Subject, AuthError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| AuthError::Certificate(format!("leaf certificate: {e}")))?;
    let subject = cert.subject();
    let team_id = subject
        .iter_organizational_unit()
        .filter_map(|attr| attr.as_str().ok())
        .find(|ou| validate_apple_id("team id", ou).is_ok())
        .map(str::to_owned);
    let uid = subject
        .iter_attributes()
        .filter(|attr| attr.attr_type().to_id_string() == OID_USER_ID)
        .filter_map(|attr| attr.as_str().ok())
        .find(|uid| !uid.is_empty())
        .map(str::to_owned);
    let topic = uid.or_else(|| {
        subject
            .iter_common_name()
            .filter_map(|attr| attr.as_str().ok())
            .find_map(topic_from_common_name)
    });
    let not_after_secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok(Subject {
        team_id,
        topic,
        not_after: Timestamp::from_secs(not_after_secs),
    })
}

/// `"Apple Push Services: com.example.app"` (and the older "Apple Production IOS Push
/// Services: …") → `"com.example.app"`.
fn topic_from_common_name(common_name: &str) -> Option<String> {
    let (prefix, topic) = common_name.split_once(':')?;
    let topic = topic.trim();
    (prefix.contains("Push Services") && !topic.is_empty()).then(|| topic.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_from_apple_common_names() {
        assert_eq!(
            topic_from_common_name("Apple Push Services: com.example.app").as_deref(),
            Some("com.example.app")
        );
        assert_eq!(
            topic_from_common_name("Apple Production IOS Push Services: com.example.app")
                .as_deref(),
            Some("com.example.app")
        );
        assert_eq!(topic_from_common_name("localhost"), None);
        assert_eq!(topic_from_common_name("Something: else"), None);
    }
}
