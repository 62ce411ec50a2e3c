//! The emulator's configuration: listener, TLS, teams and keys, devices and faults.
//!
//! Every type here is `serde`, so a whole emulator can be described in one TOML file
//! (see `docs/emulator.md`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::EmulatorError;
use super::devices::{DeviceRateLimit, UnknownTokenPolicy};
use super::faults::FaultProfile;

/// Default `SETTINGS_MAX_CONCURRENT_STREAMS` advertised to clients (APNs is seen at 1000–1500).
pub const MAX_CONCURRENT_STREAMS_DEFAULT: u32 = 1000;
/// Default number of accepted notifications kept in the record (older ones are dropped; the
/// total count keeps counting).
pub const RECORD_CAPACITY_DEFAULT: usize = 100_000;
/// Default RNG seed: fixed, so two runs of the same config answer alike.
pub const SEED_DEFAULT: u64 = 0x5EED_A9A5;

/// Which APNs environment the emulator pretends to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Environment {
    /// `api.push.apple.com`.
    #[default]
    Production,
    /// `api.sandbox.push.apple.com` (development).
    Sandbox,
}

/// The environments a signing key is valid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum KeyEnvironment {
    /// Both production and sandbox (Apple's default for new keys).
    #[default]
    Both,
    /// Production only.
    Production,
    /// Sandbox only.
    Sandbox,
}

impl KeyEnvironment {
    /// True when a key for `self` may be used against a server in `env`.
    pub fn allows(self, env: Environment) -> bool {
        match self {
            KeyEnvironment::Both => true,
            KeyEnvironment::Production => env == Environment::Production,
            KeyEnvironment::Sandbox => env == Environment::Sandbox,
        }
    }
}

/// The whole emulator configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Address of the APNs listener. Default `127.0.0.1:0` (any free port).
    pub bind: SocketAddr,
    /// Address of the admin HTTP endpoint, or `None` for no admin endpoint.
    /// Default `127.0.0.1:0`.
    pub admin_bind: Option<SocketAddr>,
    /// TLS or plaintext. Default: TLS with a generated self-signed certificate.
    pub tls: TlsConfig,
    /// Which environment this emulator is. Default production.
    pub environment: Environment,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` advertised to new connections. Default 1000.
    pub max_concurrent_streams: u32,
    /// Seed of the emulator's random choices (apns-ids, fault draws). Default fixed.
    pub seed: u64,
    /// Teams allowed to push, with their keys and bundle ids.
    pub teams: Vec<TeamConfig>,
    /// Device tokens with a preset state.
    pub devices: Vec<super::devices::DeviceEntry>,
    /// What to answer for a token not in the registry. Default accept.
    pub unknown_tokens: UnknownTokenPolicy,
    /// Per-device rate limit (`TooManyRequests`), or `None` for none. Default none.
    pub device_rate_limit: Option<DeviceRateLimit>,
    /// The fault profile in force at start. Default: no faults.
    pub faults: FaultProfile,
    /// How many accepted notifications the record keeps. Default 100,000.
    pub record_capacity: usize,
    /// Broadcast channels one app may have (`TooManyChannels` beyond). Default 10,000,
    /// Apple's limit per app and environment.
    pub channels_per_app_max: usize,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_bind: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            tls: TlsConfig::default(),
            environment: Environment::default(),
            max_concurrent_streams: MAX_CONCURRENT_STREAMS_DEFAULT,
            seed: SEED_DEFAULT,
            teams: Vec::new(),
            devices: Vec::new(),
            unknown_tokens: UnknownTokenPolicy::default(),
            device_rate_limit: None,
            faults: FaultProfile::default(),
            record_capacity: RECORD_CAPACITY_DEFAULT,
            channels_per_app_max: super::broadcast::CHANNELS_PER_APP_MAX_DEFAULT,
        }
    }
}

impl EmulatorConfig {
    /// Parse a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, EmulatorError> {
        toml::from_str(text).map_err(|e| EmulatorError::Config(e.to_string()))
    }

    /// Read and parse a TOML configuration file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, EmulatorError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EmulatorError::Config(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// A demo configuration: the defaults plus one team (`DEMOTEAM01`, bundle
    /// `com.example.herald`) with a freshly generated key, returned for the provider.
    pub fn demo() -> Result<(Self, GeneratedKey), EmulatorError> {
        let (team, key) =
            TeamConfig::generate("DEMOTEAM01", "DEMOKEY001", &["com.example.herald"])?;
        let config = EmulatorConfig {
            teams: vec![team],
            ..EmulatorConfig::default()
        };
        Ok((config, key))
    }

    /// A configuration listening in plaintext HTTP/2 (h2c, prior knowledge).
    pub fn plaintext() -> Self {
        EmulatorConfig {
            tls: TlsConfig {
                mode: TlsMode::Plaintext,
                ..TlsConfig::default()
            },
            ..EmulatorConfig::default()
        }
    }
}

/// How the APNs listener secures connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Where the server certificate comes from, or plaintext.
    pub mode: TlsMode,
    /// Names for the generated certificate (`self-signed` mode). Default `localhost`, `127.0.0.1`.
    pub subject_alt_names: Vec<String>,
    /// Write the generated certificate (the CA clients must trust) here as PEM.
    pub ca_pem_out: Option<PathBuf>,
    /// Server certificate chain PEM file (`files` mode).
    pub cert_pem_path: Option<PathBuf>,
    /// Server private key PEM file (`files` mode).
    pub key_pem_path: Option<PathBuf>,
    /// Client-certificate authentication: PEM of the CA that signs client certificates
    /// (inline). With a CA set, a client may authenticate by certificate instead of tokens.
    pub client_ca_pem: Option<String>,
    /// Like `client_ca_pem`, read from a file.
    pub client_ca_pem_path: Option<PathBuf>,
    /// Refuse the TLS handshake when the client presents no certificate. Default false
    /// (like APNs: token-auth clients present none).
    pub require_client_cert: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            mode: TlsMode::SelfSigned,
            subject_alt_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            ca_pem_out: None,
            cert_pem_path: None,
            key_pem_path: None,
            client_ca_pem: None,
            client_ca_pem_path: None,
            require_client_cert: false,
        }
    }
}

/// Where the listener's certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum TlsMode {
    /// Generate a self-signed certificate for `subject_alt_names` at start.
    #[default]
    SelfSigned,
    /// Use `cert_pem_path` and `key_pem_path`.
    Files,
    /// No TLS: HTTP/2 with prior knowledge (for simulated links and quick tests).
    Plaintext,
}

/// One team (an Apple developer account): its keys and the bundle ids it may push to.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TeamConfig {
    /// The 10-character team id (the JWT `iss`, the certificate's OU).
    pub team_id: String,
    /// Bundle ids (topics without push-type suffixes) this team may push to.
    pub bundle_ids: Vec<String>,
    /// Signing keys of this team.
    pub keys: Vec<KeyConfig>,
}

/// One provider-token signing key, identified by its key id (`kid`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct KeyConfig {
    /// The 10-character key id.
    pub key_id: String,
    /// Which environments the key is valid for. Default both.
    pub environment: KeyEnvironment,
    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`).
    pub public_key_pem: Option<String>,
    /// The public key PEM, read from a file.
    pub public_key_pem_path: Option<PathBuf>,
    /// The private `.p8` key (PKCS#8 PEM); the public key is derived from it.
    pub p8_pem: Option<String>,
    /// The private `.p8` key, read from a file.
    pub p8_pem_path: Option<PathBuf>,
}

impl KeyConfig {
    /// The public key PEM, from whichever source is set.
    pub(crate) fn resolve_public_pem(&self) -> Result<String, EmulatorError> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p)
                .map_err(|e| EmulatorError::Config(format!("{}: {e}", p.display())))
        };
        if let Some(pem) = &self.public_key_pem {
            return Ok(pem.clone());
        }
        if let Some(path) = &self.public_key_pem_path {
            return read(path);
        }
        let p8 = match (&self.p8_pem, &self.p8_pem_path) {
            (Some(pem), _) => pem.clone(),
            (None, Some(path)) => read(path)?,
            (None, None) => {
                return Err(EmulatorError::Config(format!(
                    "key {}: no public_key_pem, public_key_pem_path, p8_pem or p8_pem_path",
                    self.key_id
                )));
            }
        };
        let pair = rcgen::KeyPair::from_pem(&p8)
            .map_err(|e| EmulatorError::Config(format!("key {}: bad .p8: {e}", self.key_id)))?;
        Ok(pair.public_key_pem())
    }
}

/// A freshly generated team signing key: what a provider needs to sign tokens.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The key id (`kid`).
    pub key_id: String,
    /// The team id (`iss`).
    pub team_id: String,
    /// The private key as a `.p8` (PKCS#8 PEM), like Apple's `AuthKey_<kid>.p8`.
    pub p8_pem: String,
}

impl TeamConfig {
    /// A team with one generated key: the config to give the emulator and the key to give
    /// the provider. `key_id` and `team_id` should be 10 alphanumeric characters.
    pub fn generate(
        team_id: &str,
        key_id: &str,
        bundle_ids: &[&str],
    ) -> Result<(TeamConfig, GeneratedKey), EmulatorError> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| EmulatorError::Tls(e.to_string()))?;
        let team = TeamConfig {
            team_id: team_id.to_owned(),
            bundle_ids: bundle_ids.iter().map(|b| (*b).to_owned()).collect(),
            keys: vec![KeyConfig {
                key_id: key_id.to_owned(),
                public_key_pem: Some(pair.public_key_pem()),
                ..KeyConfig::default()
            }],
        };
        let key = GeneratedKey {
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            p8_pem: pair.serialize_pem(),
        };
        Ok((team, key))
    }
}
