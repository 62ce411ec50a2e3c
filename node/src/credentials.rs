//! Tenant credentials from files, and their hot reload.
//!
//! [`load_tenant`] turns a `[[tenants]]` section into the engine's [`TenantConfig`]: it reads
//! the `.p8` (and key id) or the `.p12` (and its password, from a file or an environment
//! variable), and test-signs / parses them, so a bad file fails here and not on the first
//! push. Errors name the tenant, the field and the path, never the contents.
//!
//! [`CredentialReloader`] keeps the engine's tenants in step with the files:
//! - it polls the modification time and size of the configuration file and of every
//!   credential file on a `tokio::time` interval (no OS-thread file watcher), and reloads on
//!   `SIGHUP` as well;
//! - a reload re-reads the configuration file (with the same flag and environment
//!   overrides), loads every tenant's credentials, and calls [`Herald::update_tenant`] for
//!   each tenant whose credentials or limits changed (a hot swap: queued and in-flight
//!   pushes are kept, connections drain and reopen with the new credentials), or
//!   [`Herald::add_tenant`] for a new one;
//! - a file that does not load (bad PEM, wrong password, missing key id, invalid
//!   configuration) keeps the tenant's current credentials and logs an error naming the
//!   file. A tenant missing from the new file keeps running (removing a tenant drops its
//!   queued pushes, so it is an explicit admin action) and a warning says so.
//!
//! Write credential files atomically (write a temporary file, then rename it over the old
//! one; Kubernetes secret volumes do this) so a poll never sees half a file. A half-written
//! file would only be refused and retried at the next change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use herald_actors::apns::{ClientIdentity, SigningKey, TokenMinter};
use herald_actors::rate_limit::RateLimit;
use herald_actors::seams::SharedClock;
use herald_actors::{Credentials, Herald, TenantConfig, TenantError};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{
    LimitsSection, NodeConfig, Overrides, TenantSection, read_secret_file, read_secret_line,
};

/// Why a tenant's credentials could not be loaded. Names the tenant, the field and the file;
/// never the secret's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant}: {field}: {message}")]
pub struct CredentialError {
    /// The tenant.
    pub tenant: String,
    /// The configuration field, e.g. `p8`.
    pub field: String,
    /// What went wrong (with the path).
    pub message: String,
}

/// A tenant's engine configuration, loaded from its files.
#[derive(Debug, Clone)]
pub struct LoadedTenant {
    /// What the engine takes.
    pub config: TenantConfig,
    /// The signing key's id (token auth), for operators and tests.
    pub key_id: Option<String>,
    fingerprint: [u8; 32],
}

/// Where a token-auth tenant's [`TokenMinter`] comes from: [`local_minters`] (each node signs
/// its own provider tokens), or a cluster's `ProviderTokens` (one token per key, cluster-wide).
pub type MinterSource =
    Arc<dyn Fn(SigningKey, SharedClock) -> Result<TokenMinter, String> + Send + Sync>;

/// Gives back one [`MinterSource`] registration of a key id, once the tenant that asked for
/// it is gone (a cluster's `ProviderTokens::release`: the key is no longer minted for when no
/// tenant uses it).
pub type KeyRelease = Arc<dyn Fn(&str) + Send + Sync>;

/// Minters that sign locally (`TokenMinter::with_default_interval`).
pub fn local_minters() -> MinterSource {
    Arc::new(|key, clock| Ok(TokenMinter::with_default_interval(key, clock)))
}

/// Load one tenant's credentials and limits with local minters. `limits` gives the default
/// `queue_max`.
///
/// # Errors
/// [`CredentialError`] if a file is missing or unusable.
pub fn load_tenant(
    section: &TenantSection,
    limits: &LimitsSection,
    clock: SharedClock,
) -> Result<LoadedTenant, CredentialError> {
    load_tenant_with(section, limits, clock, &local_minters())
}

/// [`load_tenant`], the provider-token minter of a token-auth tenant from `minters`.
///
/// # Errors
/// [`CredentialError`] if a file is missing or unusable, or `minters` refuses the key.
pub fn load_tenant_with(
    section: &TenantSection,
    limits: &LimitsSection,
    clock: SharedClock,
    minters: &MinterSource,
) -> Result<LoadedTenant, CredentialError> {
    let err = |field: &str, message: String| CredentialError {
        tenant: section.id.clone(),
        field: field.to_owned(),
        message,
    };
    let mut hash = Sha256::new();
    let mut feed = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    let (credentials, key_id) = match (&section.p8, &section.p12) {
        (Some(p8), None) => {
            let team = section
                .team_id
                .as_deref()
                .ok_or_else(|| err("team_id", "required with p8".to_owned()))?;
            let key_id = match (&section.key_id, &section.key_id_file) {
                (Some(kid), _) => kid.clone(),
                (None, Some(file)) => {
                    let line = read_secret_line(file).map_err(|e| err("key_id_file", e))?;
                    String::from_utf8(line.expose().to_vec())
                        .map(|s| s.trim().to_owned())
                        .map_err(|_| {
                            err("key_id_file", format!("{} is not UTF-8", file.display()))
                        })?
                }
                (None, None) => return Err(err("key_id", "required with p8".to_owned())),
            };
            let pem = read_secret_file(p8).map_err(|e| err("p8", e))?;
            let key = SigningKey::from_p8_pem(pem.expose(), &key_id, team)
                .map_err(|e| err("p8", format!("{}: {e}", p8.display())))?;
            feed(b"p8");
            feed(key_id.as_bytes());
            feed(team.as_bytes());
            feed(pem.expose());
            let minter = minters(key, clock).map_err(|e| err("p8", e))?;
            (Credentials::Token(minter), Some(key_id))
        }
        (None, Some(p12)) => {
            let password = match (&section.p12_password_env, &section.p12_password_file) {
                (Some(var), _) => std::env::var(var).map_err(|_| {
                    err(
                        "p12_password_env",
                        format!("environment variable {var} is not set (or not UTF-8)"),
                    )
                })?,
                (None, Some(file)) => {
                    let line = read_secret_line(file).map_err(|e| err("p12_password_file", e))?;
                    String::from_utf8(line.expose().to_vec()).map_err(|_| {
                        err(
                            "p12_password_file",
                            format!("{} is not UTF-8", file.display()),
                        )
                    })?
                }
                (None, None) => {
                    return Err(err(
                        "p12_password_env",
                        "required with p12 (or p12_password_file)".to_owned(),
                    ));
                }
            };
            let der = read_secret_file(p12).map_err(|e| err("p12", e))?;
            let mut identity = ClientIdentity::from_pkcs12(der.expose(), &password)
                .map_err(|e| err("p12", format!("{}: {e}", p12.display())))?;
            if let Some(team) = &section.team_id {
                match identity.team_id() {
                    Some(in_cert) if in_cert != team => {
                        return Err(err(
                            "team_id",
                            format!(
                                "{team} differs from the certificate's team {in_cert} ({})",
                                p12.display()
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        identity = identity
                            .with_team_id(team)
                            .map_err(|e| err("team_id", e.to_string()))?;
                    }
                }
            }
            feed(b"p12");
            feed(der.expose());
            feed(password.as_bytes());
            feed(section.team_id.as_deref().unwrap_or("").as_bytes());
            (Credentials::Certificate(identity), None)
        }
        _ => {
            return Err(err(
                "p8",
                "give p8 (token auth) or p12 (certificate auth)".to_owned(),
            ));
        }
    };
    let mut config = TenantConfig::new(section.id.clone(), credentials);
    config.connections(section.connections_min, section.connections_max);
    config.queue_max(section.queue_max.unwrap_or(limits.tenant_queue_max));
    if let (Some(per_second), Some(burst)) = (section.rate_per_second, section.rate_burst) {
        config.rate_limit(RateLimit { per_second, burst });
    }
    feed(&(section.connections_min as u64).to_le_bytes());
    feed(&(section.connections_max as u64).to_le_bytes());
    feed(&(config.queue_max as u64).to_le_bytes());
    feed(&section.rate_per_second.unwrap_or(0.0).to_le_bytes());
    feed(&section.rate_burst.unwrap_or(0).to_le_bytes());
    Ok(LoadedTenant {
        config,
        key_id,
        fingerprint: hash.finalize().into(),
    })
}

/// Load every tenant of `config`.
///
/// # Errors
/// The first tenant that does not load.
pub fn load_tenants(
    config: &NodeConfig,
    clock: &SharedClock,
) -> Result<Vec<LoadedTenant>, CredentialError> {
    load_tenants_with(config, clock, &local_minters())
}

/// [`load_tenants`] with the minters of `minters`.
///
/// # Errors
/// The first tenant that does not load.
pub fn load_tenants_with(
    config: &NodeConfig,
    clock: &SharedClock,
    minters: &MinterSource,
) -> Result<Vec<LoadedTenant>, CredentialError> {
    config
        .tenants
        .iter()
        .map(|t| load_tenant_with(t, &config.limits, clock.clone(), minters))
        .collect()
}

/// What one reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Tenants whose credentials or limits were swapped.
    pub updated: Vec<String>,
    /// Tenants added.
    pub added: Vec<String>,
    /// Problems (each kept the old state): the message names the file and field.
    pub errors: Vec<String>,
}

/// A tenant's credential state as the reloader knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCredentialStatus {
    /// The key id in use (token auth).
    pub key_id: Option<String>,
    /// The last reload error for this tenant, if the last attempt failed.
    pub last_error: Option<String>,
}

/// Keeps the engine's tenant credentials in step with the files. See the
/// [module docs](self).
pub struct CredentialReloader {
    config_path: PathBuf,
    overrides: Overrides,
    engine: Herald,
    clock: SharedClock,
    minters: MinterSource,
    state: Mutex<ReloaderState>,
}

impl std::fmt::Debug for CredentialReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialReloader")
            .field("config_path", &self.config_path)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct ReloaderState {
    applied: BTreeMap<String, [u8; 32]>,
    status: BTreeMap<String, TenantCredentialStatus>,
    watched: Vec<(PathBuf, Option<(SystemTime, u64)>)>,
    tenants: Vec<TenantSection>,
}

impl CredentialReloader {
    /// A reloader for `engine`, whose tenants were started from `loaded` (loaded from
    /// `config`, read from `config_path` with `overrides`).
    pub fn new(
        config_path: PathBuf,
        overrides: Overrides,
        config: &NodeConfig,
        loaded: &[LoadedTenant],
        engine: Herald,
        clock: SharedClock,
    ) -> Self {
        let mut state = ReloaderState {
            tenants: config.tenants.clone(),
            ..ReloaderState::default()
        };
        for t in loaded {
            state.applied.insert(t.config.id.clone(), t.fingerprint);
            state.status.insert(
                t.config.id.clone(),
                TenantCredentialStatus {
                    key_id: t.key_id.clone(),
                    last_error: None,
                },
            );
        }
        state.watched = signature(&config_path, &config.tenants);
        CredentialReloader {
            config_path,
            overrides,
            engine,
            clock,
            minters: local_minters(),
            state: Mutex::new(state),
        }
    }

    /// Reloaded token-auth tenants get their minters from `minters` (the node's
    /// cluster-wide provider tokens).
    #[must_use]
    pub fn with_minters(mut self, minters: MinterSource) -> Self {
        self.minters = minters;
        self
    }

    /// The tenant sections of the configuration last loaded (topics, webhooks …).
    pub fn tenant_sections(&self) -> Vec<TenantSection> {
        self.lock().tenants.clone()
    }

    /// The credential state of tenant `id`.
    pub fn status(&self, id: &str) -> Option<TenantCredentialStatus> {
        self.lock().status.get(id).cloned()
    }

    /// Reload if the configuration file or a credential file changed since the last look
    /// (modification time or size); `None` if nothing changed.
    pub async fn poll(&self) -> Option<ReloadReport> {
        let changed = {
            let state = self.lock();
            let tenants = state.tenants.clone();
            signature(&self.config_path, &tenants) != state.watched
        };
        if changed {
            Some(self.reload().await)
        } else {
            None
        }
    }

    /// Re-read the configuration and every credential file now, and apply what changed.
    pub async fn reload(&self) -> ReloadReport {
        let mut report = ReloadReport::default();
        let config = match NodeConfig::load(&self.config_path, &self.overrides) {
            Ok(config) => config,
            Err(e) => {
                let message = format!("configuration not reloaded, keeping the current one: {e}");
                tracing::error!(error = %e, "configuration not reloaded, keeping the current one");
                // Remember what was seen so a bad file is reported once, not every poll.
                let mut state = self.lock();
                let tenants = state.tenants.clone();
                state.watched = signature(&self.config_path, &tenants);
                report.errors.push(message);
                return report;
            }
        };
        // Watch the new file set from now on (a failed tenant is retried at its next change).
        let watched = signature(&self.config_path, &config.tenants);
        for section in &config.tenants {
            let loaded = match load_tenant_with(
                section,
                &config.limits,
                self.clock.clone(),
                &self.minters,
            ) {
                Ok(loaded) => loaded,
                Err(e) => {
                    tracing::error!(
                        tenant = %section.id, error = %e,
                        "tenant credentials not reloaded, keeping the current ones"
                    );
                    self.set_error(&section.id, e.to_string());
                    report.errors.push(e.to_string());
                    continue;
                }
            };
            let known = self.lock().applied.get(&section.id).copied();
            let result = match known {
                Some(fingerprint) if fingerprint == loaded.fingerprint => {
                    self.clear_error(&section.id);
                    continue;
                }
                Some(_) => self.engine.update_tenant(loaded.config.clone()).await,
                None => self.engine.add_tenant(loaded.config.clone()).await,
            };
            match result {
                Ok(()) => {
                    tracing::info!(
                        tenant = %section.id, key_id = ?loaded.key_id,
                        "tenant credentials {}", if known.is_some() { "swapped" } else { "added" }
                    );
                    let mut state = self.lock();
                    state.applied.insert(section.id.clone(), loaded.fingerprint);
                    state.status.insert(
                        section.id.clone(),
                        TenantCredentialStatus {
                            key_id: loaded.key_id.clone(),
                            last_error: None,
                        },
                    );
                    if known.is_some() {
                        report.updated.push(section.id.clone());
                    } else {
                        report.added.push(section.id.clone());
                    }
                }
                Err(e) => {
                    let message = format!("tenant {}: engine refused the update: {e}", section.id);
                    tracing::error!(tenant = %section.id, error = %e, "tenant update refused");
                    self.set_error(&section.id, message.clone());
                    report.errors.push(message);
                    if matches!(e, TenantError::Unavailable(_)) {
                        // Not applied: look again at the next poll even if nothing changes.
                        let mut state = self.lock();
                        state.watched.clear();
                        return report;
                    }
                }
            }
        }
        let mut state = self.lock();
        for id in state.applied.keys() {
            if config.tenant(id).is_none() {
                tracing::warn!(
                    tenant = %id,
                    "tenant is no longer in the configuration but keeps running; remove it \
                     through the admin API (its queued pushes would fail)"
                );
            }
        }
        state.watched = watched;
        state.tenants = config.tenants.clone();
        report
    }

    /// Run the reloader until `stop` turns true: poll every `period`, reload on `SIGHUP`.
    pub fn spawn(
        self: Arc<Self>,
        period: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut hangup = Hangup::new();
            loop {
                tokio::select! {
                    biased;
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            break;
                        }
                    }
                    _ = hangup.recv() => {
                        tracing::info!("SIGHUP: reloading the configuration and credentials");
                        self.reload().await;
                    }
                    _ = tick.tick() => {
                        self.poll().await;
                    }
                }
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloaderState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_error(&self, id: &str, message: String) {
        let mut state = self.lock();
        let entry = state
            .status
            .entry(id.to_owned())
            .or_insert(TenantCredentialStatus {
                key_id: None,
                last_error: None,
            });
        entry.last_error = Some(message);
    }

    fn clear_error(&self, id: &str) {
        if let Some(s) = self.lock().status.get_mut(id) {
            s.last_error = None;
        }
    }
}

/// The files whose change triggers a reload, with their modification time and size.
fn signature(
    config: &Path,
    tenants: &[TenantSection],
) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
    let mut paths = vec![config.to_owned()];
    for t in tenants {
        paths.extend(
            [&t.p8, &t.p12, &t.key_id_file, &t.p12_password_file]
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    paths
        .into_iter()
        .map(|p| {
            let seen = std::fs::metadata(&p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (p, seen)
        })
        .collect()
}

/// `SIGHUP` on Unix; never fires elsewhere.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Self {
        #[cfg(unix)]
        let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP"))
            .ok();
        Hangup {
            #[cfg(unix)]
            signal,
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            self.signal = None;
        }
        std::future::pending::<()>().await;
    }
}
