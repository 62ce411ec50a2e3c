//! Cluster PKI and mutual TLS for node links.
//!
//! Every node holds a certificate signed by the cluster CA whose subject alternative name
//! is the DNS name `node-<id>.herald` ([`node_dns_name`]). Both ends authenticate:
//! * the server requires a client certificate chaining to the cluster CA
//!   (`WebPkiClientVerifier`), and reads the client's node id from it;
//! * the client trusts only the cluster CA and verifies the server's certificate against
//!   the DNS name of the node it meant to reach, so a certificate is bound to one node id.
//!
//! [`ClusterCa`] makes a development/test PKI with rcgen and writes/reads it as PEM files.
//! Production keys may come from any CA: [`MutualTls::from_pem`] only needs the CA
//! certificate, the node's chain and its key.
//!
//! Every configuration names its crypto provider (aws-lc-rs), so none depends on a
//! process-wide default.
//!
//! ```
//! use herald_cluster::transport::{ClusterCa, MutualTls, NodeId};
//!
//! let ca = ClusterCa::generate("test cluster").unwrap();
//! let node = ca.issue(NodeId(1)).unwrap();
//! let tls = MutualTls::from_pem(ca.certificate_pem().as_bytes(), node.certificate_pem.as_bytes(),
//!     node.key_pem.as_bytes()).unwrap();
//! assert_eq!(tls.node(), NodeId(1));
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{ALPN_PEER, NodeId};

/// How a link is secured. Production always uses [`MutualTls`](LinkSecurity::MutualTls).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LinkSecurity {
    /// Mutual TLS against the cluster CA; node ids come from the certificates.
    MutualTls(Arc<MutualTls>),
    /// No TLS, no authentication: the peer's Hello is believed. Tests and the simulator only.
    Plaintext,
}

/// The suffix of every node's DNS name.
const NODE_DNS_SUFFIX: &str = ".herald";
/// The prefix of every node's DNS name.
const NODE_DNS_PREFIX: &str = "node-";

/// The DNS name in node `node`'s certificate: `node-<id>.herald`.
pub fn node_dns_name(node: NodeId) -> String {
    format!("{NODE_DNS_PREFIX}{}{NODE_DNS_SUFFIX}", node.0)
}

/// A node's id from its (already verified) certificate: the one `node-<id>.herald` SAN.
///
/// # Errors
/// [`TlsError::Certificate`] if the certificate does not parse or does not name exactly
/// one node.
pub fn node_id_from_certificate(certificate: &CertificateDer<'_>) -> Result<NodeId, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|e| TlsError::Certificate(format!("unparsable certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Certificate(format!("bad subject alternative name: {e}")))?
        .ok_or_else(|| TlsError::Certificate("no subject alternative name".to_owned()))?;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => parse_node_dns_name(dns),
            _ => None,
        });
    match (ids.next(), ids.next()) {
        (Some(id), None) => Ok(id),
        (None, _) => Err(TlsError::Certificate(
            "certificate names no node (SAN node-<id>.herald)".to_owned(),
        )),
        (Some(_), Some(_)) => Err(TlsError::Certificate(
            "certificate names more than one node".to_owned(),
        )),
    }
}

fn parse_node_dns_name(dns: &str) -> Option<NodeId> {
    let digits = dns
        .strip_prefix(NODE_DNS_PREFIX)?
        .strip_suffix(NODE_DNS_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(NodeId)
}

/// A node's mutual-TLS material, built into rustls configurations once.
pub struct MutualTls {
    node: NodeId,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for MutualTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutualTls")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl MutualTls {
    /// Build from PEM: the cluster CA certificate(s), this node's certificate chain (leaf
    /// first) and its private key. The node id is read from the leaf certificate.
    ///
    /// # Errors
    /// [`TlsError`] if a PEM is unreadable, the leaf names no node, or rustls refuses the
    /// material.
    pub fn from_pem(ca_pem: &[u8], chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem(format!("node certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsError::Pem(format!("node key: {e}")))?;
        MutualTls::new(ca, chain, key)
    }

    /// Read `ca.pem`, `node-<id>.pem` and `node-<id>.key.pem` from `dir` (as written by
    /// [`ClusterCa::write_pem`] and [`NodeCertificate::write_pem`]).
    ///
    /// # Errors
    /// [`TlsError::File`] if a file cannot be read; otherwise as [`from_pem`](Self::from_pem).
    pub fn read_pem_dir(dir: &Path, node: NodeId) -> Result<Self, TlsError> {
        let read = |path: PathBuf| {
            std::fs::read(&path).map_err(|e| TlsError::File(format!("{}: {e}", path.display())))
        };
        let tls = MutualTls::from_pem(
            &read(dir.join(CA_CERT_FILE))?,
            &read(dir.join(node_cert_file(node)))?,
            &read(dir.join(node_key_file(node)))?,
        )?;
        if tls.node != node {
            return Err(TlsError::Certificate(format!(
                "certificate file for node {node} names node {}",
                tls.node
            )));
        }
        Ok(tls)
    }

    /// Build from DER: trusted CA certificates, this node's chain (leaf first) and key.
    ///
    /// # Errors
    /// [`TlsError`] if the chain is empty, the leaf names no node, or rustls refuses the
    /// material.
    pub fn new(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Pem("no node certificate".to_owned()))?;
        let node = node_id_from_certificate(leaf)?;
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots
                .add(cert)
                .map_err(|e| TlsError::Certificate(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(TlsError::Pem("no CA certificate".to_owned()));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        server.alpn_protocols = vec![ALPN_PEER.to_vec()];

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        client.alpn_protocols = vec![ALPN_PEER.to_vec()];

        Ok(MutualTls {
            node,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The node id in this node's certificate.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The server configuration (requires and verifies client certificates).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The client configuration (presents this node's certificate, trusts only the CA).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }

    /// The TLS server name to verify when connecting to `peer`.
    ///
    /// # Errors
    /// Never for real node ids; [`TlsError::Certificate`] if the name is refused.
    pub fn server_name(peer: NodeId) -> Result<ServerName<'static>, TlsError> {
        ServerName::try_from(node_dns_name(peer))
            .map_err(|e| TlsError::Certificate(format!("server name: {e}")))
    }
}

/// File name of the CA certificate in a PKI directory.
const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA key in a PKI directory.
const CA_KEY_FILE: &str = "ca.key.pem";

fn node_cert_file(node: NodeId) -> String {
    format!("node-{}.pem", node.0)
}

fn node_key_file(node: NodeId) -> String {
    format!("node-{}.key.pem", node.0)
}

/// A cluster certificate authority for development and tests.
pub struct ClusterCa {
    certificate_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A fresh self-signed CA (ECDSA P-256) with common name `name`.
    ///
    /// # Errors
    /// [`TlsError::Generate`] if rcgen fails.
    pub fn generate(name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(generate_error)?;
        Ok(ClusterCa {
            certificate_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and key PEM.
    ///
    /// # Errors
    /// [`TlsError::Pem`] if either does not parse.
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::Pem(format!("CA key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(certificate_pem, key)
            .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
        Ok(ClusterCa {
            certificate_pem: certificate_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// A certificate for node `node` (SAN `node-<id>.herald`, CN `herald node <id>`), valid
    /// for both server and client authentication.
    ///
    /// # Errors
    /// [`TlsError::Generate`] if rcgen fails.
    pub fn issue(&self, node: NodeId) -> Result<NodeCertificate, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let mut params =
            CertificateParams::new(vec![node_dns_name(node)]).map_err(generate_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("herald node {}", node.0));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error)?;
        Ok(NodeCertificate {
            node,
            certificate_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Build `node`'s [`MutualTls`] directly (tests and the simulator).
    ///
    /// # Errors
    /// As [`issue`](Self::issue) and [`MutualTls::from_pem`].
    pub fn mutual_tls(&self, node: NodeId) -> Result<Arc<MutualTls>, TlsError> {
        let cert = self.issue(node)?;
        Ok(Arc::new(MutualTls::from_pem(
            self.certificate_pem.as_bytes(),
            cert.certificate_pem.as_bytes(),
            cert.key_pem.as_bytes(),
        )?))
    }

    /// Write `ca.pem` and `ca.key.pem` into `dir`.
    ///
    /// # Errors
    /// [`TlsError::File`] if a file cannot be written.
    pub fn write_pem(&self, dir: &Path) -> Result<(), TlsError> {
        write_file(&dir.join(CA_CERT_FILE), &self.certificate_pem)?;
        write_file(&dir.join(CA_KEY_FILE), &self.key_pem)
    }

    /// Read a CA written by [`write_pem`](Self::write_pem).
    ///
    /// # Errors
    /// [`TlsError::File`] or [`TlsError::Pem`].
    pub fn read_pem(dir: &Path) -> Result<Self, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map_err(|e| TlsError::File(format!("{}: {e}", path.display())))
        };
        ClusterCa::from_pem(&read(CA_CERT_FILE)?, &read(CA_KEY_FILE)?)
    }
}

/// A node certificate and its key, PEM.
#[derive(Clone)]
pub struct NodeCertificate {
    /// The node the certificate names.
    pub node: NodeId,
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
}

impl fmt::Debug for NodeCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCertificate")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl NodeCertificate {
    /// Write `node-<id>.pem` and `node-<id>.key.pem` into `dir` (the key readable by the
    /// owner only, on Unix).
    ///
    /// # Errors
    /// [`TlsError::File`] if a file cannot be written.
    pub fn write_pem(&self, dir: &Path) -> Result<(), TlsError> {
        write_file(&dir.join(node_cert_file(self.node)), &self.certificate_pem)?;
        let key_path = dir.join(node_key_file(self.node));
        write_file(&key_path, &self.key_pem)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| TlsError::File(format!("{}: {e}", key_path.display())))?;
        }
        Ok(())
    }
}

fn write_file(path: &Path, contents: &str) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(|e| TlsError::File(format!("{}: {e}", path.display())))
}

fn generate_error(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// Why TLS material could not be made, read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Generating a key or certificate failed.
    #[error("generating certificate: {0}")]
    Generate(String),
    /// A PEM block is missing or unreadable.
    #[error("PEM: {0}")]
    Pem(String),
    /// A file could not be read or written.
    #[error("file: {0}")]
    File(String),
    /// A certificate is unusable (e.g. names no node).
    #[error("certificate: {0}")]
    Certificate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_round_trip() {
        assert_eq!(node_dns_name(NodeId(42)), "node-42.herald");
        assert_eq!(parse_node_dns_name("node-42.herald"), Some(NodeId(42)));
        for bad in [
            "node-.herald",
            "node-4x.herald",
            "node-1.other",
            "x-1.herald",
            "node-+1.herald",
        ] {
            assert_eq!(parse_node_dns_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn pem_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("test").unwrap();
        ca.write_pem(dir.path()).unwrap();
        let ca = ClusterCa::read_pem(dir.path()).unwrap();
        ca.issue(NodeId(3)).unwrap().write_pem(dir.path()).unwrap();
        let tls = MutualTls::read_pem_dir(dir.path(), NodeId(3)).unwrap();
        assert_eq!(tls.node(), NodeId(3));
        assert!(
            tls.server_config()
                .alpn_protocols
                .contains(&ALPN_PEER.to_vec())
        );
        assert!(matches!(
            MutualTls::read_pem_dir(dir.path(), NodeId(4)),
            Err(TlsError::File(_))
        ));
    }

    #[test]
    fn garbage_pem_is_an_error() {
        assert!(MutualTls::from_pem(b"nope", b"nope", b"nope").is_err());
        assert!(ClusterCa::from_pem("nope", "nope").is_err());
    }
}
