//! `herald node` configuration: a TOML file, then `HERALD_…` environment variables, then
//! command-line flags (flags win over the environment, the environment over the file).
//!
//! The file refuses unknown keys, and every problem is reported with the file and the field
//! it concerns (`herald.toml: tenants[0].team_id: …`). Relative paths in the file are read
//! relative to the file's directory. The configuration holds *paths* to secrets (`.p8`,
//! `.p12`, passwords, the API-key secret, webhook secrets), never the secrets themselves;
//! what is read from those files is wrapped in [`Secret`], whose `Debug` prints nothing of it.
//!
//! ```
//! use herald_node::config::{NodeConfig, Overrides};
//!
//! let dir = std::env::temp_dir().join(format!("herald-config-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! std::fs::write(dir.join("api-key.secret"), [b'k'; 32]).unwrap();
//! let text = r#"
//!     [node]
//!     id = 1
//!     data_dir = "data"
//!     api_key_secret_file = "api-key.secret"
//! "#;
//! let mut overrides = Overrides::default();
//! overrides.region = Some("eu-west".into());
//! let config = NodeConfig::from_toml(text, &dir.join("herald.toml"), &overrides).unwrap();
//! assert_eq!(config.node.region, "eu-west");
//! assert_eq!(config.node.data_dir, dir.join("data"));
//! assert_eq!(config.limits.shards, herald_actors::limits::SHARDS_DEFAULT);
//!
//! // Unknown keys are refused, naming the file and the key.
//! let err = NodeConfig::from_toml("[node]\nid = 1\nspeed = 3\n", &dir.join("herald.toml"), &overrides)
//!     .unwrap_err();
//! assert!(err.to_string().contains("herald.toml") && err.to_string().contains("speed"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_actors::apns::Topic;
use herald_actors::limits;
use serde::{Deserialize, Serialize};

/// Default `api_listen`.
pub const API_LISTEN_DEFAULT: &str = "127.0.0.1:8080";
/// Default `cluster_listen`.
pub const CLUSTER_LISTEN_DEFAULT: &str = "127.0.0.1:7000";
/// Default shutdown deadline: how long a stopping node waits for accepted pushes to finish.
pub const SHUTDOWN_DEADLINE_SECS_DEFAULT: u64 = 30;
/// Longest shutdown deadline accepted.
pub const SHUTDOWN_DEADLINE_SECS_MAX: u64 = 3_600;
/// Default period of the credential-file poll.
pub const RELOAD_POLL_SECS_DEFAULT: u64 = 5;
/// Longest credential-file poll period accepted.
pub const RELOAD_POLL_SECS_MAX: u64 = 3_600;
/// Fewest bytes an API-key secret may have (an HMAC-SHA256 key shorter than its output is weak).
pub const API_KEY_SECRET_BYTES_MIN: usize = 32;
/// Most bytes any secret or credential file may have; larger files are refused unread.
pub const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Most tenants one configuration may declare.
pub const TENANTS_MAX: usize = 1_024;
/// Most topics one tenant may declare.
pub const TOPICS_PER_TENANT_MAX: usize = 256;
/// Most peers a cluster configuration may list.
pub const PEERS_MAX: usize = 64;
/// The shortest `cluster.failover_after_secs` accepted (other than 0: off).
pub const FAILOVER_AFTER_MIN_SECS: u64 = 5;

const _: () = assert!(SHUTDOWN_DEADLINE_SECS_DEFAULT <= SHUTDOWN_DEADLINE_SECS_MAX);
const _: () =
    assert!(RELOAD_POLL_SECS_DEFAULT >= 1 && RELOAD_POLL_SECS_DEFAULT <= RELOAD_POLL_SECS_MAX);

/// The whole node configuration, after layering and validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node: identity, listeners, data directory, shutdown.
    pub node: NodeSection,
    /// The cluster: peers (founders, or the members to join) and link TLS.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// Engine bounds.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Where APNs is.
    #[serde(default)]
    pub apns: ApnsSection,
    /// The tenants (APNs teams) this node pushes for.
    #[serde(default)]
    pub tenants: Vec<TenantSection>,
}

/// `[node]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's id: non-zero, unique in the cluster, equal to the id in its cluster
    /// certificate (`node-<id>.herald`). Env `HERALD_NODE_ID`, flag `--node-id`.
    pub id: u64,
    /// This node's region. Default `default`. Env `HERALD_REGION`.
    #[serde(default = "default_region")]
    pub region: String,
    /// The HTTP listener (API and ops endpoints). Default [`API_LISTEN_DEFAULT`].
    /// Env `HERALD_API_LISTEN`.
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
    /// The node-transport listener (Raft, forwarded pushes). Default
    /// [`CLUSTER_LISTEN_DEFAULT`]. Env `HERALD_CLUSTER_LISTEN`.
    #[serde(default = "default_cluster_listen")]
    pub cluster_listen: SocketAddr,
    /// Where the write-ahead log (`wal.redb`) and the Raft store (`raft.redb`) live; created
    /// if missing. Env `HERALD_DATA_DIR`.
    pub data_dir: PathBuf,
    /// The file holding the secret that signs tenant API keys (at least
    /// [`API_KEY_SECRET_BYTES_MIN`] bytes). Env `HERALD_API_KEY_SECRET_FILE`.
    pub api_key_secret_file: PathBuf,
    /// Seconds a stopping node waits for accepted pushes to get their outcome (1 ..=
    /// [`SHUTDOWN_DEADLINE_SECS_MAX`]). Default [`SHUTDOWN_DEADLINE_SECS_DEFAULT`].
    /// Env `HERALD_SHUTDOWN_DEADLINE_SECS`.
    #[serde(default = "default_shutdown_deadline_secs")]
    pub shutdown_deadline_secs: u64,
    /// Seconds between two polls of the credential files' modification times (1 ..=
    /// [`RELOAD_POLL_SECS_MAX`]). Default [`RELOAD_POLL_SECS_DEFAULT`].
    #[serde(default = "default_reload_poll_secs")]
    pub reload_poll_secs: u64,
}

/// `[cluster]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The cluster's id: links from nodes of another cluster are refused. Default 1.
    #[serde(default = "default_cluster_id")]
    pub id: u64,
    /// Every voter of the initial configuration (this node included): node id → `host:port`.
    /// Empty: a single-node cluster on `cluster_listen`.
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    /// The region of each founding peer, by node id (`{ 1 = "eu", 3 = "us" }`); a peer not
    /// listed is in this node's region. Must be the same on every node.
    #[serde(default)]
    pub regions: BTreeMap<String, String>,
    /// Join a running cluster instead of founding one: `cluster.peers` then lists the
    /// current members and this node; an operator adds this node with
    /// `POST /v1/cluster/members` on any member. Its Raft state starts empty and comes from
    /// the leader's snapshot. Default false.
    #[serde(default)]
    pub join: bool,
    /// Seconds of silence after which the leader moves an active member's shards to the
    /// other members of its region (they come back once it is heard from again); 0 turns
    /// failover off. Keep it well above the election timeout. Default 30.
    #[serde(default = "default_failover_after_secs")]
    pub failover_after_secs: u64,
    /// Mutual TLS of the node links. Required unless this is a single node listening on
    /// loopback only.
    #[serde(default)]
    pub tls: Option<ClusterTls>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            id: default_cluster_id(),
            peers: BTreeMap::new(),
            regions: BTreeMap::new(),
            join: false,
            failover_after_secs: default_failover_after_secs(),
            tls: None,
        }
    }
}

/// `[cluster.tls]`: PEM files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// The cluster CA certificate(s).
    pub ca: PathBuf,
    /// This node's certificate chain (leaf first; SAN `node-<id>.herald`).
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json`. Default `text`. Env `HERALD_LOG_FORMAT`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive, e.g. `info,herald_actors=debug`. Default `info`.
    /// Env `HERALD_LOG_FILTER` (or the global `--log` / `HERALD_LOG`).
    #[serde(default = "default_log_filter")]
    pub filter: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            filter: default_log_filter(),
        }
    }
}

/// `[limits]`: the engine's bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Device shards (1 ..= `SHARDS_MAX`). Env `HERALD_SHARDS`.
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// Pushes one shard holds before `send` answers `Overloaded`.
    #[serde(default = "default_shard_queue_max")]
    pub shard_queue_max: usize,
    /// Pushes one shard has in flight to APNs (≤ `shard_queue_max`).
    #[serde(default = "default_shard_inflight_max")]
    pub shard_inflight_max: usize,
    /// Default per-tenant bound on pushes accepted and not finished (a tenant's `queue_max`
    /// overrides it).
    #[serde(default = "default_tenant_queue_max")]
    pub tenant_queue_max: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            shards: default_shards(),
            shard_queue_max: default_shard_queue_max(),
            shard_inflight_max: default_shard_inflight_max(),
            tenant_queue_max: default_tenant_queue_max(),
        }
    }
}

/// Which APNs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ApnsEnvironment {
    /// `api.push.apple.com:443`.
    #[default]
    Production,
    /// `api.sandbox.push.apple.com:443`.
    Sandbox,
    /// `host:port` from the section (an emulator, a proxy).
    Custom,
}

/// `[apns]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSection {
    /// `production`, `sandbox` or `custom`. Default `production`. Env `HERALD_APNS_ENDPOINT`.
    #[serde(default)]
    pub endpoint: ApnsEnvironment,
    /// Host (and TLS server name) for `custom`.
    #[serde(default)]
    pub host: Option<String>,
    /// Port for `custom` (default 443).
    #[serde(default)]
    pub port: Option<u16>,
    /// For `custom`: a PEM CA to trust instead of the Mozilla roots (the emulator's CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// For `custom`: plaintext HTTP/2 (the emulator's h2c mode). Default false. Tests only.
    #[serde(default)]
    pub plaintext: bool,
}

/// `[[tenants]]`: one APNs team.
///
/// Token auth: `p8` and one of `key_id` / `key_id_file`, with `team_id`. Certificate auth:
/// `p12` and one of `p12_password_env` / `p12_password_file` (`team_id` optional: checked
/// against the certificate when given).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    /// The tenant's name (how the API addresses it).
    pub id: String,
    /// The Apple team id (10 letters and digits).
    #[serde(default)]
    pub team_id: Option<String>,
    /// The signing key's id (10 letters and digits).
    #[serde(default)]
    pub key_id: Option<String>,
    /// A file holding the key id (so a key and its id can change together, e.g. in one
    /// Kubernetes secret).
    #[serde(default)]
    pub key_id_file: Option<PathBuf>,
    /// The `.p8` signing key (PKCS#8 PEM, P-256).
    #[serde(default)]
    pub p8: Option<PathBuf>,
    /// A `.p12` client certificate and key.
    #[serde(default)]
    pub p12: Option<PathBuf>,
    /// The environment variable holding the `.p12` password.
    #[serde(default)]
    pub p12_password_env: Option<String>,
    /// A file holding the `.p12` password (trailing newline ignored).
    #[serde(default)]
    pub p12_password_file: Option<PathBuf>,
    /// The bundle ids (APNs topics) this tenant may push to; at least one.
    pub topics: Vec<String>,
    /// Connections kept open at least.
    #[serde(default = "default_connections_min")]
    pub connections_min: usize,
    /// Connections opened at most.
    #[serde(default = "default_connections_max")]
    pub connections_max: usize,
    /// Sustained sending rate (pushes per second); with `rate_burst`. Default: no limit.
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    /// Pushes allowed at once; with `rate_per_second`.
    #[serde(default)]
    pub rate_burst: Option<u32>,
    /// Pushes accepted and not finished before `Overloaded`. Default `limits.tenant_queue_max`.
    #[serde(default)]
    pub queue_max: Option<usize>,
    /// Where outcomes are posted (`http://` or `https://`).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// The file holding the webhook's HMAC secret (required with `webhook_url`).
    #[serde(default)]
    pub webhook_secret_file: Option<PathBuf>,
}

/// Values from the environment or flags that override the file (flags win: clap reads the
/// flag first, then the variable).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// This node's id.
    #[arg(long, env = "HERALD_NODE_ID")]
    pub node_id: Option<u64>,
    /// This node's region.
    #[arg(long, env = "HERALD_REGION")]
    pub region: Option<String>,
    /// HTTP listener address.
    #[arg(long, env = "HERALD_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Node-transport listener address.
    #[arg(long, env = "HERALD_CLUSTER_LISTEN")]
    pub cluster_listen: Option<SocketAddr>,
    /// Data directory (WAL and Raft store).
    #[arg(long, env = "HERALD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The API-key secret file.
    #[arg(long, env = "HERALD_API_KEY_SECRET_FILE")]
    pub api_key_secret_file: Option<PathBuf>,
    /// Seconds to drain accepted pushes on shutdown.
    #[arg(long, env = "HERALD_SHUTDOWN_DEADLINE_SECS")]
    pub shutdown_deadline_secs: Option<u64>,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "HERALD_LOG_FILTER")]
    pub log_filter: Option<String>,
    /// Device shards.
    #[arg(long, env = "HERALD_SHARDS")]
    pub shards: Option<u32>,
    /// APNs endpoint.
    #[arg(long, env = "HERALD_APNS_ENDPOINT", value_enum)]
    pub apns_endpoint: Option<ApnsEnvironment>,
    /// Cluster CA certificate file (`[cluster.tls] ca`).
    #[arg(long, env = "HERALD_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// This node's cluster certificate file (`[cluster.tls] cert`).
    #[arg(long, env = "HERALD_CLUSTER_TLS_CERT")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// This node's cluster key file (`[cluster.tls] key`).
    #[arg(long, env = "HERALD_CLUSTER_TLS_KEY")]
    pub cluster_tls_key: Option<PathBuf>,
}

/// One problem in a configuration: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field's path, e.g. `tenants[0].p8` (or `tenants[acme].p8`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a configuration was refused. The message names the file and every bad field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {message}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, missing field).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message (it names the key and the line).
        message: String,
    },
    /// Values parsed but are invalid.
    #[error(
        "{file}: invalid configuration:{}",
        problems.iter().map(|p| format!("\n  {p}")).collect::<String>()
    )]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found (empty for read and parse errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// Bytes read from a secret file. `Debug` prints the length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wrap secret bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The secret bytes. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// Read a secret or credential file (at most [`SECRET_FILE_BYTES_MAX`] bytes).
///
/// # Errors
/// A message naming the path (never the contents) if the file is missing, unreadable,
/// empty or too large.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let metadata =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if metadata.len() > SECRET_FILE_BYTES_MAX {
        return Err(format!(
            "{} is {} bytes, more than the {SECRET_FILE_BYTES_MAX} allowed",
            path.display(),
            metadata.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret(bytes))
}

/// [`read_secret_file`] with one trailing newline (`\n` or `\r\n`) removed: for passwords,
/// key ids and HMAC secrets written with `echo`.
///
/// # Errors
/// As [`read_secret_file`], and if nothing is left.
pub fn read_secret_line(path: &Path) -> Result<Secret, String> {
    let mut bytes = read_secret_file(path)?.0;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret(bytes))
}

impl NodeConfig {
    /// Read `path`, apply `overrides`, resolve relative paths against the file's directory,
    /// and validate.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and every bad field.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: path.to_owned(),
            message: e.to_string(),
        })?;
        NodeConfig::from_toml(&text, path, overrides)
    }

    /// Parse `text` as if read from `path` (used for messages and relative paths), apply
    /// `overrides` and validate.
    ///
    /// # Errors
    /// [`ConfigError`] naming `path` and every bad field.
    pub fn from_toml(
        text: &str,
        path: &Path,
        overrides: &Overrides,
    ) -> Result<NodeConfig, ConfigError> {
        let mut config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        // File paths are relative to the file; paths from flags and the environment are
        // taken as given (relative to the working directory).
        let base = path.parent().unwrap_or(Path::new(""));
        config.resolve_paths(base);
        config.apply(overrides);
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                file: path.to_owned(),
                problems,
            })
        }
    }

    /// The shutdown deadline as a `Duration`.
    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_secs(self.node.shutdown_deadline_secs)
    }

    /// The credential poll period as a `Duration`.
    pub fn reload_poll(&self) -> Duration {
        Duration::from_secs(self.node.reload_poll_secs)
    }

    /// The configuration as TOML (paths only, no secret contents).
    pub fn to_toml(&self) -> String {
        // Serializing plain data with string-keyed maps cannot fail; fall back to Debug if a
        // future field makes it fail, rather than panicking.
        toml::to_string(self).unwrap_or_else(|e| format!("# not serializable: {e}\n{self:#?}"))
    }

    /// The initial voters: id → `host:port` (this node alone on `cluster_listen` when no
    /// peers are listed). Valid only after validation.
    pub fn peer_addresses(&self) -> BTreeMap<u64, String> {
        if self.cluster.peers.is_empty() {
            return BTreeMap::from([(self.node.id, self.node.cluster_listen.to_string())]);
        }
        self.cluster
            .peers
            .iter()
            .filter_map(|(id, addr)| Some((id.parse().ok()?, addr.clone())))
            .collect()
    }

    /// Read the API-key secret (`node.api_key_secret_file`, one trailing newline removed).
    ///
    /// # Errors
    /// A message naming the file (never its contents).
    pub fn api_key_secret(&self) -> Result<Secret, String> {
        read_secret_line(&self.node.api_key_secret_file)
    }

    /// The tenant with id `id`.
    pub fn tenant(&self, id: &str) -> Option<&TenantSection> {
        self.tenants.iter().find(|t| t.id == id)
    }

    fn apply(&mut self, o: &Overrides) {
        let n = &mut self.node;
        set(&mut n.id, o.node_id);
        set(&mut n.region, o.region.clone());
        set(&mut n.api_listen, o.api_listen);
        set(&mut n.cluster_listen, o.cluster_listen);
        set(&mut n.data_dir, o.data_dir.clone());
        set(&mut n.api_key_secret_file, o.api_key_secret_file.clone());
        set(&mut n.shutdown_deadline_secs, o.shutdown_deadline_secs);
        set(&mut self.log.format, o.log_format);
        set(&mut self.log.filter, o.log_filter.clone());
        set(&mut self.limits.shards, o.shards);
        set(&mut self.apns.endpoint, o.apns_endpoint);
        if o.cluster_tls_ca.is_some() || o.cluster_tls_cert.is_some() || o.cluster_tls_key.is_some()
        {
            // A missing part stays empty and is reported as unreadable by validation.
            let tls = self.cluster.tls.get_or_insert_with(|| ClusterTls {
                ca: PathBuf::new(),
                cert: PathBuf::new(),
                key: PathBuf::new(),
            });
            set(&mut tls.ca, o.cluster_tls_ca.clone());
            set(&mut tls.cert, o.cluster_tls_cert.clone());
            set(&mut tls.key, o.cluster_tls_key.clone());
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let r = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let ro = |p: &mut Option<PathBuf>| {
            if let Some(p) = p
                && p.is_relative()
            {
                *p = base.join(&*p);
            }
        };
        r(&mut self.node.data_dir);
        r(&mut self.node.api_key_secret_file);
        if let Some(tls) = &mut self.cluster.tls {
            r(&mut tls.ca);
            r(&mut tls.cert);
            r(&mut tls.key);
        }
        ro(&mut self.apns.ca_file);
        for t in &mut self.tenants {
            ro(&mut t.key_id_file);
            ro(&mut t.p8);
            ro(&mut t.p12);
            ro(&mut t.p12_password_file);
            ro(&mut t.webhook_secret_file);
        }
    }

    /// Every problem, in file order.
    fn validate(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        let n = &self.node;
        if n.id == 0 {
            p.add("node.id", "must be non-zero");
        }
        if n.region.is_empty() || !n.region.chars().all(is_name_char) {
            p.add(
                "node.region",
                "must be non-empty letters, digits, '-', '_' or '.'",
            );
        }
        if n.api_listen == n.cluster_listen && n.api_listen.port() != 0 {
            p.add("node.cluster_listen", "must differ from node.api_listen");
        }
        if n.data_dir.as_os_str().is_empty() {
            p.add("node.data_dir", "must not be empty");
        } else if n.data_dir.exists() && !n.data_dir.is_dir() {
            p.add(
                "node.data_dir",
                format!("{} exists and is not a directory", n.data_dir.display()),
            );
        }
        if !(1..=SHUTDOWN_DEADLINE_SECS_MAX).contains(&n.shutdown_deadline_secs) {
            p.add(
                "node.shutdown_deadline_secs",
                format!("must be in 1..={SHUTDOWN_DEADLINE_SECS_MAX}"),
            );
        }
        if !(1..=RELOAD_POLL_SECS_MAX).contains(&n.reload_poll_secs) {
            p.add(
                "node.reload_poll_secs",
                format!("must be in 1..={RELOAD_POLL_SECS_MAX}"),
            );
        }
        self.validate_cluster(&mut p);
        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            p.add(
                "log.filter",
                format!("{:?} is not a tracing filter directive", self.log.filter),
            );
        }
        let l = &self.limits;
        if !(1..=limits::SHARDS_MAX).contains(&l.shards) {
            p.add(
                "limits.shards",
                format!("must be in 1..={}", limits::SHARDS_MAX),
            );
        }
        if l.shard_queue_max == 0 {
            p.add("limits.shard_queue_max", "must be positive");
        }
        if l.shard_inflight_max == 0 || l.shard_inflight_max > l.shard_queue_max {
            p.add(
                "limits.shard_inflight_max",
                "must be in 1..=limits.shard_queue_max",
            );
        }
        if l.tenant_queue_max == 0 {
            p.add("limits.tenant_queue_max", "must be positive");
        }
        self.validate_apns(&mut p);
        if self.tenants.len() > TENANTS_MAX {
            p.add("tenants", format!("more than {TENANTS_MAX} tenants"));
        }
        let mut seen = BTreeMap::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if let Some(first) = seen.insert(t.id.clone(), i) {
                p.add(
                    format!("tenants[{i}].id"),
                    format!("{:?} repeats tenants[{first}].id", t.id),
                );
            }
            validate_tenant(&format!("tenants[{i}]"), t, &mut p);
        }
        match read_secret_line(&n.api_key_secret_file) {
            Ok(secret) if secret.expose().len() < API_KEY_SECRET_BYTES_MIN => p.add(
                "node.api_key_secret_file",
                format!("the secret must have at least {API_KEY_SECRET_BYTES_MIN} bytes"),
            ),
            Ok(_) => {}
            Err(e) => p.add("node.api_key_secret_file", e),
        }
        p.0
    }

    fn validate_cluster(&self, p: &mut Problems) {
        let c = &self.cluster;
        if c.id == 0 {
            p.add("cluster.id", "must be non-zero");
        }
        if c.join && c.peers.len() < 2 {
            p.add(
                "cluster.join",
                "a joining node needs cluster.peers: the current members and this node",
            );
        }
        if c.failover_after_secs > 0 && c.failover_after_secs < FAILOVER_AFTER_MIN_SECS {
            p.add(
                "cluster.failover_after_secs",
                format!(
                    "at least {FAILOVER_AFTER_MIN_SECS} (a slow but live node must not lose its \
                     shards at every hiccup), or 0 to turn failover off"
                ),
            );
        }
        if c.peers.len() > PEERS_MAX {
            p.add("cluster.peers", format!("more than {PEERS_MAX} peers"));
        }
        let mut ids = Vec::new();
        for (id, addr) in &c.peers {
            match id.parse::<u64>() {
                Ok(0) | Err(_) => p.add(
                    format!("cluster.peers.{id}"),
                    "peer keys must be non-zero node ids",
                ),
                Ok(id) => ids.push(id),
            }
            if !is_host_port(addr) {
                p.add(
                    format!("cluster.peers.{id}"),
                    format!("{addr:?} is not host:port"),
                );
            }
        }
        for (id, region) in &c.regions {
            if !c.peers.contains_key(id) {
                p.add(
                    format!("cluster.regions.{id}"),
                    "names no node of cluster.peers",
                );
            }
            if region.is_empty() || region.len() > 64 {
                p.add(format!("cluster.regions.{id}"), "a region is 1 to 64 bytes");
            }
        }
        if let Some(mine) = c.regions.get(&self.node.id.to_string())
            && *mine != self.node.region
        {
            p.add(
                format!("cluster.regions.{}", self.node.id),
                format!("says {mine:?}, but node.region is {:?}", self.node.region),
            );
        }
        if !c.peers.is_empty() && !ids.contains(&self.node.id) {
            p.add(
                "cluster.peers",
                format!("must list this node (node.id = {})", self.node.id),
            );
        }
        let alone = !c.join && c.peers.len() <= 1;
        match &c.tls {
            Some(tls) => {
                check_readable(p, "cluster.tls.ca", &tls.ca);
                check_readable(p, "cluster.tls.cert", &tls.cert);
                check_readable(p, "cluster.tls.key", &tls.key);
            }
            None if !alone => p.add(
                "cluster.tls",
                "required when the cluster has other nodes (mutual TLS between nodes)",
            ),
            None if !self.node.cluster_listen.ip().is_loopback() => p.add(
                "cluster.tls",
                "required unless node.cluster_listen is a loopback address (an unauthenticated \
                 Raft port must not be reachable)",
            ),
            None => {}
        }
    }

    fn validate_apns(&self, p: &mut Problems) {
        let a = &self.apns;
        match a.endpoint {
            ApnsEnvironment::Custom => {
                match &a.host {
                    Some(h) if !h.is_empty() => {}
                    _ => p.add("apns.host", "required when apns.endpoint = \"custom\""),
                }
                if a.port == Some(0) {
                    p.add("apns.port", "must be non-zero");
                }
                if let Some(ca) = &a.ca_file {
                    check_readable(p, "apns.ca_file", ca);
                    if a.plaintext {
                        p.add("apns.ca_file", "makes no sense with apns.plaintext = true");
                    }
                }
            }
            env => {
                let name = if env == ApnsEnvironment::Production {
                    "production"
                } else {
                    "sandbox"
                };
                for (field, set) in [
                    ("apns.host", a.host.is_some()),
                    ("apns.port", a.port.is_some()),
                    ("apns.ca_file", a.ca_file.is_some()),
                    ("apns.plaintext", a.plaintext),
                ] {
                    if set {
                        p.add(
                            field,
                            format!("only for apns.endpoint = \"custom\" (it is {name:?})"),
                        );
                    }
                }
            }
        }
    }
}

fn validate_tenant(at: &str, t: &TenantSection, p: &mut Problems) {
    let f = |name: &str| format!("{at}.{name}");
    if t.id.is_empty() || !t.id.chars().all(is_name_char) || t.id.len() > 64 {
        p.add(f("id"), "must be 1-64 letters, digits, '-', '_' or '.'");
    }
    if let Some(team) = &t.team_id
        && !is_apple_id(team)
    {
        p.add(
            f("team_id"),
            format!("{team:?} is not 10 letters and digits"),
        );
    }
    match (&t.p8, &t.p12) {
        (Some(p8), None) => {
            check_readable(p, &f("p8"), p8);
            if t.team_id.is_none() {
                p.add(f("team_id"), "required with p8 (token auth)");
            }
            match (&t.key_id, &t.key_id_file) {
                (Some(kid), None) => {
                    if !is_apple_id(kid) {
                        p.add(f("key_id"), format!("{kid:?} is not 10 letters and digits"));
                    }
                }
                (None, Some(file)) => check_readable(p, &f("key_id_file"), file),
                (None, None) => p.add(f("key_id"), "required with p8: key_id or key_id_file"),
                (Some(_), Some(_)) => p.add(f("key_id"), "give key_id or key_id_file, not both"),
            }
            for (name, set) in [
                ("p12_password_env", t.p12_password_env.is_some()),
                ("p12_password_file", t.p12_password_file.is_some()),
            ] {
                if set {
                    p.add(f(name), "only with p12 (certificate auth)");
                }
            }
        }
        (None, Some(p12)) => {
            check_readable(p, &f("p12"), p12);
            match (&t.p12_password_env, &t.p12_password_file) {
                (Some(var), None) => {
                    if std::env::var_os(var).is_none() {
                        p.add(
                            f("p12_password_env"),
                            format!("environment variable {var} is not set"),
                        );
                    }
                }
                (None, Some(file)) => check_readable(p, &f("p12_password_file"), file),
                (None, None) => p.add(
                    f("p12_password_env"),
                    "required with p12: p12_password_env or p12_password_file",
                ),
                (Some(_), Some(_)) => p.add(
                    f("p12_password_env"),
                    "give p12_password_env or p12_password_file, not both",
                ),
            }
            for (name, set) in [
                ("key_id", t.key_id.is_some()),
                ("key_id_file", t.key_id_file.is_some()),
            ] {
                if set {
                    p.add(f(name), "only with p8 (token auth)");
                }
            }
        }
        (None, None) => p.add(f("p8"), "give p8 (token auth) or p12 (certificate auth)"),
        (Some(_), Some(_)) => p.add(f("p12"), "give p8 or p12, not both"),
    }
    if t.topics.is_empty() {
        p.add(f("topics"), "list at least one bundle id");
    }
    if t.topics.len() > TOPICS_PER_TENANT_MAX {
        p.add(
            f("topics"),
            format!("more than {TOPICS_PER_TENANT_MAX} topics"),
        );
    }
    for (i, topic) in t.topics.iter().enumerate() {
        if let Err(e) = topic.parse::<Topic>() {
            p.add(format!("{at}.topics[{i}]"), e.to_string());
        }
    }
    if t.connections_min == 0
        || t.connections_min > t.connections_max
        || t.connections_max > limits::POOL_CONNECTIONS_MAX
    {
        p.add(
            f("connections_max"),
            format!(
                "need 1 <= connections_min <= connections_max <= {}",
                limits::POOL_CONNECTIONS_MAX
            ),
        );
    }
    match (t.rate_per_second, t.rate_burst) {
        (Some(r), Some(b)) => {
            if !(r.is_finite() && r > 0.0) {
                p.add(f("rate_per_second"), "must be a positive number");
            }
            if b == 0 {
                p.add(f("rate_burst"), "must be positive");
            }
        }
        (None, None) => {}
        _ => p.add(
            f("rate_per_second"),
            "give rate_per_second and rate_burst together",
        ),
    }
    if t.queue_max == Some(0) {
        p.add(f("queue_max"), "must be positive");
    }
    match (&t.webhook_url, &t.webhook_secret_file) {
        (Some(url), secret) => {
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || url.len() <= "https://".len()
            {
                p.add(f("webhook_url"), format!("{url:?} is not an http(s) URL"));
            }
            match secret {
                Some(file) => check_readable(p, &f("webhook_secret_file"), file),
                None => p.add(f("webhook_secret_file"), "required with webhook_url"),
            }
        }
        (None, Some(_)) => p.add(f("webhook_url"), "webhook_secret_file needs webhook_url"),
        (None, None) => {}
    }
}

impl TenantSection {
    /// Read the webhook's HMAC secret (`webhook_secret_file`), if the tenant has a webhook.
    ///
    /// # Errors
    /// A message naming the file (never its contents).
    pub fn webhook_secret(&self) -> Result<Option<Secret>, String> {
        self.webhook_secret_file
            .as_deref()
            .map(read_secret_line)
            .transpose()
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}

fn check_readable(p: &mut Problems, field: &str, path: &Path) {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => p.add(field, format!("{} is not a file", path.display())),
        Err(e) => p.add(field, format!("cannot read {}: {e}", path.display())),
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn is_apple_id(s: &str) -> bool {
    s.len() == 10 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

fn default_region() -> String {
    "default".to_owned()
}

fn default_api_listen() -> SocketAddr {
    parse_const_addr(API_LISTEN_DEFAULT)
}

fn default_cluster_listen() -> SocketAddr {
    parse_const_addr(CLUSTER_LISTEN_DEFAULT)
}

fn parse_const_addr(s: &str) -> SocketAddr {
    // The constants above are valid socket addresses (checked by a unit test).
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn default_shutdown_deadline_secs() -> u64 {
    SHUTDOWN_DEADLINE_SECS_DEFAULT
}

fn default_reload_poll_secs() -> u64 {
    RELOAD_POLL_SECS_DEFAULT
}

fn default_cluster_id() -> u64 {
    1
}

fn default_failover_after_secs() -> u64 {
    herald_cluster::membership::FAILOVER_AFTER_DEFAULT.as_secs()
}

fn default_log_filter() -> String {
    "info".to_owned()
}

fn default_shards() -> u32 {
    limits::SHARDS_DEFAULT
}

fn default_shard_queue_max() -> usize {
    limits::SHARD_QUEUE_MAX
}

fn default_shard_inflight_max() -> usize {
    limits::SHARD_INFLIGHT_MAX
}

fn default_tenant_queue_max() -> usize {
    limits::TENANT_QUEUE_MAX
}

fn default_connections_min() -> usize {
    limits::POOL_CONNECTIONS_MIN_DEFAULT
}

fn default_connections_max() -> usize {
    limits::POOL_CONNECTIONS_MAX_DEFAULT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_addresses_parse() {
        assert!(API_LISTEN_DEFAULT.parse::<SocketAddr>().is_ok());
        assert!(CLUSTER_LISTEN_DEFAULT.parse::<SocketAddr>().is_ok());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new(b"hunter2hunter2".to_vec());
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("14 bytes"));
    }

    #[test]
    fn host_port_forms() {
        assert!(is_host_port("10.0.0.1:7000"));
        assert!(is_host_port("node-2.herald.svc:7000"));
        assert!(is_host_port("[::1]:7000"));
        assert!(!is_host_port("node-2"));
        assert!(!is_host_port(":7000"));
        assert!(!is_host_port("a:0"));
    }
}
