//! The TLS client configuration for APNs connections.
//!
//! APNs speaks HTTP/2 over TLS 1.2 or later, negotiated with ALPN `h2`. Server certificates
//! are checked against the Mozilla roots ([`webpki_roots`]) by default; the APNs emulator
//! and tests add their own CA. Certificate-auth tenants add their [`ClientIdentity`].
//!
//! The configuration names its crypto provider (aws-lc-rs) explicitly, so it never depends
//! on a process-wide default provider being installed.
//!
//! ```
//! use herald_actors::apns::ApnsTlsConfig;
//!
//! let config = ApnsTlsConfig::new().build().unwrap();
//! assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
//! ```

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::apns::ClientIdentity;

/// ALPN protocol id for HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// Builds the rustls `ClientConfig` for APNs.
#[derive(Debug, Clone)]
pub struct ApnsTlsConfig {
    webpki_roots: bool,
    extra_roots_pem: Vec<Vec<u8>>,
    identity: Option<ClientIdentity>,
}

impl Default for ApnsTlsConfig {
    fn default() -> Self {
        ApnsTlsConfig::new()
    }
}

impl ApnsTlsConfig {
    /// A builder trusting the Mozilla roots, without a client certificate.
    pub fn new() -> Self {
        ApnsTlsConfig {
            webpki_roots: true,
            extra_roots_pem: Vec::new(),
            identity: None,
        }
    }

    /// Whether to trust the Mozilla root certificates (which include the roots APNs uses).
    ///
    /// Default value: `true`. Turn it off to trust only the CAs given with
    /// [`add_root_certificates_pem`](Self::add_root_certificates_pem) (e.g. the emulator's).
    pub fn webpki_roots(&mut self, enabled: bool) -> &mut Self {
        self.webpki_roots = enabled;
        self
    }

    /// Also trust the CA certificates in `pem` (one or more `CERTIFICATE` blocks). Parsed in
    /// [`build`](Self::build).
    ///
    /// Default value: none.
    pub fn add_root_certificates_pem(&mut self, pem: &[u8]) -> &mut Self {
        self.extra_roots_pem.push(pem.to_vec());
        self
    }

    /// Authenticate with this client certificate (certificate auth).
    ///
    /// Default value: no client certificate (token auth).
    pub fn client_identity(&mut self, identity: ClientIdentity) -> &mut Self {
        self.identity = Some(identity);
        self
    }

    /// The configuration: TLS 1.3 and 1.2, ALPN `h2`, the chosen roots and identity.
    ///
    /// # Errors
    /// [`TlsConfigError`] if a root PEM is unreadable, no root is trusted at all, or the
    /// client identity is refused.
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        if self.webpki_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for pem in &self.extra_roots_pem {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsConfigError::RootCertificates(e.to_string()))?;
            if certs.is_empty() {
                return Err(TlsConfigError::RootCertificates(
                    "no CERTIFICATE block in PEM".to_owned(),
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| TlsConfigError::RootCertificates(e.to_string()))?;
            }
        }
        if roots.is_empty() {
            return Err(TlsConfigError::NoRootCertificates);
        }

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsConfigError::Protocol(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some(identity) => builder
                .with_client_auth_cert(
                    identity.certificate_chain().to_vec(),
                    identity.private_key(),
                )
                .map_err(|e| TlsConfigError::ClientIdentity(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// An extra root CA PEM could not be read or a certificate in it was refused.
    #[error("root certificates: {0}")]
    RootCertificates(String),
    /// No root certificate is trusted: enable the webpki roots or add a CA.
    #[error("no root certificates to trust")]
    NoRootCertificates,
    /// The client certificate or key was refused by the TLS library.
    #[error("client identity: {0}")]
    ClientIdentity(String),
    /// The crypto provider does not support the protocol versions asked for.
    #[error("TLS protocol setup: {0}")]
    Protocol(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_h2_and_webpki_roots() {
        let config = ApnsTlsConfig::new().build().unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(!config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn no_roots_is_an_error() {
        let err = ApnsTlsConfig::new()
            .webpki_roots(false)
            .build()
            .unwrap_err();
        assert_eq!(err, TlsConfigError::NoRootCertificates);
    }

    #[test]
    fn bad_root_pem_is_an_error() {
        let err = ApnsTlsConfig::new()
            .add_root_certificates_pem(b"not a pem")
            .build()
            .unwrap_err();
        assert!(
            matches!(err, TlsConfigError::RootCertificates(_)),
            "{err:?}"
        );
    }
}
