//! Tenants created through the HTTP API of a cluster node: [`ReplicatedTenants`] serves
//! [`TenantAdmin`] by proposing them to the Raft-replicated state
//! ([`Command::CreateApiTenant`](herald_cluster::state::Command::CreateApiTenant), with the
//! `.p8`), and [`ReplicatedTenants::sync`] starts (or stops) them in this node's engine. Every
//! node runs `sync` on a period, so a tenant created through any node is served by every
//! node — which it must be, since its pushes go to their shards' owners.
//!
//! Tenants from the configuration files stay per node as before (every node reads the same
//! files): they are listed with the others, and removing one through the API removes it from
//! the node asked only.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use herald_actors::apns::SigningKey;
use herald_actors::seams::{BoxFuture, SharedClock};
use herald_actors::{Credentials, TenantConfig, TenantError};
use herald_cluster::devices::{ApiTenantError, DeviceDirectory};
use herald_cluster::state::ApiTenantRecord;

use super::backend::{AdminError, TenantAdmin, TenantInfo, TenantSpec};
use super::limits;
use super::local::{LocalBackend, check_tenant_id};
use crate::credentials::{KeyRelease, MinterSource};

/// How long a tenant creation or removal may take to be applied through Raft.
pub const TENANT_PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a node looks for tenants created or removed through another node.
pub const TENANT_FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// [`TenantAdmin`] over the replicated state, for one node. Cheap to clone.
#[derive(Clone)]
pub struct ReplicatedTenants {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    directory: DeviceDirectory,
    local: LocalBackend,
    minters: MinterSource,
    release: KeyRelease,
    clock: SharedClock,
    queue_max_default: usize,
    /// What this node's engine runs of the replicated tenants: the record each was started
    /// with. Also held while a tenant is being started or stopped, so `sync` runs one at a
    /// time.
    started: tokio::sync::Mutex<Started>,
}

#[derive(Default)]
struct Started {
    running: BTreeMap<String, ApiTenantRecord>,
    /// Records that did not start here (each is retried only once it changes).
    failed: BTreeMap<String, (ApiTenantRecord, String)>,
}

impl fmt::Debug for ReplicatedTenants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicatedTenants").finish_non_exhaustive()
    }
}

impl ReplicatedTenants {
    /// Tenants proposed through `directory` and run by `local`'s engine, signing with minters
    /// from `minters` (the cluster's provider tokens; each registration given back with
    /// `release` when its tenant stops); `queue_max_default` for a tenant created without one.
    /// `running` are the replicated tenants the engine was built with (their keys registered).
    pub fn new(
        directory: DeviceDirectory,
        local: LocalBackend,
        minters: MinterSource,
        release: KeyRelease,
        clock: SharedClock,
        queue_max_default: usize,
        running: BTreeMap<String, ApiTenantRecord>,
    ) -> Self {
        for (id, record) in &running {
            local.adopt_tenant(info(id, record));
        }
        ReplicatedTenants {
            inner: std::sync::Arc::new(Inner {
                directory,
                local,
                minters,
                release,
                clock,
                queue_max_default,
                started: tokio::sync::Mutex::new(Started {
                    running,
                    failed: BTreeMap::new(),
                }),
            }),
        }
    }

    /// Bring this node's engine in step with the replicated tenants: start those created
    /// (or re-created with other credentials) since, stop those removed. Returns why each
    /// tenant that could not start here did not.
    ///
    /// # Errors
    /// The cluster node did not answer the read (nothing changed).
    pub async fn sync(&self) -> Result<BTreeMap<String, String>, AdminError> {
        let current = self
            .inner
            .directory
            .api_tenants()
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string()))?;
        let mut started = self.inner.started.lock().await;
        let gone: Vec<String> = started
            .running
            .keys()
            .filter(|id| !current.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            match self.inner.local.delete(&id).await {
                Ok(()) | Err(AdminError::Unknown(_)) => {
                    tracing::info!(tenant = %id, "replicated tenant removed");
                    if let Some(record) = started.running.remove(&id) {
                        (self.inner.release)(&record.key_id);
                    }
                }
                Err(e) => tracing::warn!(tenant = %id, error = %e, "replicated tenant not removed"),
            }
        }
        started.failed.retain(|id, _| current.contains_key(id));
        for (id, record) in &current {
            let failed_before = started
                .failed
                .get(id)
                .is_some_and(|(tried, _)| tried == record);
            if started.running.get(id) == Some(record) || failed_before {
                continue;
            }
            let update = started.running.contains_key(id);
            match self.start(id, record, update).await {
                Ok(()) => {
                    tracing::info!(tenant = %id, update, "replicated tenant started");
                    started.failed.remove(id);
                    if let Some(old) = started.running.insert(id.clone(), record.clone()) {
                        (self.inner.release)(&old.key_id);
                    }
                }
                Err(why) => {
                    metrics::counter!("herald_api_tenant_start_failures_total").increment(1);
                    tracing::error!(tenant = %id, error = %why, "replicated tenant not started here");
                    started.failed.insert(id.clone(), (record.clone(), why));
                }
            }
        }
        Ok(started
            .failed
            .iter()
            .map(|(id, (_, why))| (id.clone(), why.clone()))
            .collect())
    }

    /// Keep this node in step with the replicated tenants every [`TENANT_FOLLOW_EVERY`]
    /// until `stop` turns true.
    pub async fn follow(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TENANT_FOLLOW_EVERY);
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sync().await {
                tracing::debug!(error = %e, "replicated tenants not read");
            }
        }
    }

    async fn start(&self, id: &str, record: &ApiTenantRecord, update: bool) -> Result<(), String> {
        let config = api_tenant_config(
            id,
            record,
            self.inner.queue_max_default,
            &self.inner.clock,
            &self.inner.minters,
        )?;
        let herald = self.inner.local.herald();
        let started = if update {
            herald.update_tenant(config).await
        } else {
            herald.add_tenant(config).await
        };
        let Err(error) = started else {
            self.inner.local.adopt_tenant(info(id, record));
            return Ok(());
        };
        // Not started: give back the registration `api_tenant_config` made.
        (self.inner.release)(&record.key_id);
        Err(match error {
            TenantError::Exists(_) => {
                "a tenant of this id from this node's configuration is running; it is kept"
                    .to_owned()
            }
            other => other.to_string(),
        })
    }
}

/// The engine configuration of replicated tenant `id`: token auth with the record's key
/// (its minter from `minters`), its queue bound or `queue_max_default`.
///
/// # Errors
/// The key does not load, or `minters` refuses it (another key under the same key id).
pub fn api_tenant_config(
    id: &str,
    record: &ApiTenantRecord,
    queue_max_default: usize,
    clock: &SharedClock,
    minters: &MinterSource,
) -> Result<TenantConfig, String> {
    let key = SigningKey::from_p8_pem(record.p8_pem.as_bytes(), &record.key_id, &record.team_id)
        .map_err(|e| format!("p8_pem: {e}"))?;
    let minter = minters(key, clock.clone()).map_err(|e| format!("p8_pem: {e}"))?;
    let mut config = TenantConfig::new(id.to_owned(), Credentials::Token(minter));
    let queue_max = record
        .queue_max
        .and_then(|max| usize::try_from(max).ok())
        .unwrap_or(queue_max_default);
    config.queue_max(queue_max);
    Ok(config)
}

fn info(id: &str, record: &ApiTenantRecord) -> TenantInfo {
    TenantInfo {
        id: id.to_owned(),
        team_id: Some(record.team_id.clone()),
        key_id: Some(record.key_id.clone()),
    }
}

impl TenantAdmin for ReplicatedTenants {
    fn create(&self, spec: TenantSpec) -> BoxFuture<'_, Result<TenantInfo, AdminError>> {
        Box::pin(async move {
            check_tenant_id(&spec.id)?;
            if self.inner.local.known(&spec.id) {
                return Err(AdminError::Exists(spec.id));
            }
            let count = self.inner.local.tenant_count();
            if count >= limits::TENANTS_MAX {
                return Err(AdminError::Full(count));
            }
            let record = ApiTenantRecord {
                team_id: spec.team_id,
                key_id: spec.key_id,
                p8_pem: spec.p8_pem,
                queue_max: spec.queue_max.map(|max| max as u64),
            };
            // Check the credentials here first, so a bad key (or another key under a served key
            // id) is a 400 and never replicated. The check's registration is given back at once:
            // starting the tenant registers the key again.
            api_tenant_config(
                &spec.id,
                &record,
                self.inner.queue_max_default,
                &self.inner.clock,
                &self.inner.minters,
            )
            .map_err(|message| AdminError::Invalid {
                field: "p8_pem",
                message,
            })?;
            (self.inner.release)(&record.key_id);
            self.inner
                .directory
                .create_api_tenant(&spec.id, record, TENANT_PROPOSE_TIMEOUT)
                .await
                .map_err(|e| match e {
                    ApiTenantError::Exists(id) => AdminError::Exists(id),
                    ApiTenantError::Full(n) => AdminError::Full(n),
                    other => AdminError::Unavailable(other.to_string()),
                })?;
            // Applied here: start it now rather than at the next period.
            let failed = self.sync().await?;
            if let Some(why) = failed.get(&spec.id) {
                return Err(AdminError::Unavailable(format!(
                    "created, but not started on this node: {why}"
                )));
            }
            self.inner
                .local
                .get(&spec.id)
                .await
                .ok_or_else(|| AdminError::Unavailable("created, not started yet".to_owned()))
        })
    }

    fn list(&self) -> BoxFuture<'_, Vec<TenantInfo>> {
        self.inner.local.list()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<TenantInfo>> {
        self.inner.local.get(id)
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            let replicated = self
                .inner
                .directory
                .api_tenants()
                .await
                .map_err(|e| AdminError::Unavailable(e.to_string()))?;
            if !replicated.contains_key(id) {
                // A tenant from this node's configuration: removed here only.
                return self.inner.local.delete(id).await;
            }
            self.inner
                .directory
                .remove_api_tenant(id, TENANT_PROPOSE_TIMEOUT)
                .await
                .map_err(|e| AdminError::Unavailable(e.to_string()))?;
            self.sync().await?;
            Ok(())
        })
    }
}
