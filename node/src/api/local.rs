//! The node's backend: [`LocalBackend`] implements every backend trait over one [`Herald`]
//! engine, with an in-memory device registry, a feedback log fed from
//! [`Herald::invalidations`], and a bounded ledger of which tenant sent which push. In a
//! cluster ([`LocalBackend::routed`]) pushes go through the cluster [`Router`] (to their
//! shard's owner in this region) and statuses come from it; the registry, feedback log and
//! tenant list stay per node (see `docs/api.md`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use herald_actors::apns::{DeviceToken, Notification, SigningKey, TokenMinter};
use herald_actors::keyed::KeyMap;
use herald_actors::seams::{BoxFuture, SharedClock, Timestamp};
use herald_actors::{
    Credentials, Herald, Invalidation, PushError, PushId, TenantConfig, TenantError,
};
use herald_cluster::routing::Router;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::backend::{
    AdminError, Device, DeviceFilter, DevicePage, DeviceRegistry, Feedback, FeedbackEntry,
    FeedbackPage, PushBackend, PushStatus, RegistryError, TenantAdmin, TenantInfo, TenantSpec,
};
use super::limits;

/// Every backend trait over one local engine. Cloning shares it.
///
/// Tenants the engine was built with are unknown to the API until [`adopt_tenant`]
/// names them (tenants made through `POST /v1/tenants` are known at once).
///
/// [`adopt_tenant`]: LocalBackend::adopt_tenant
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

struct Inner {
    herald: Herald,
    /// The cluster router pushes go through, if any (else straight to `herald`).
    router: Option<Arc<Router>>,
    clock: SharedClock,
    state: Mutex<State>,
    feeder: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    tenants: BTreeMap<String, TenantInfo>,
    /// tenant → token → (device, registered at).
    devices: BTreeMap<String, BTreeMap<String, (Device, Timestamp)>>,
    feedback: BTreeMap<String, TenantFeedback>,
    ledger: Ledger,
}

#[derive(Default)]
struct TenantFeedback {
    next_seq: u64,
    entries: VecDeque<FeedbackEntry>,
}

/// Which tenant sent which recent push, for status lookups. A per-push hash map
/// (`herald_actors::keyed`): written for every accepted push, only looked up, never iterated.
/// The tenant's name is shared by the pushes of a batch.
#[derive(Default)]
struct Ledger {
    by_id: KeyMap<PushId, Arc<str>>,
    order: VecDeque<PushId>,
}

impl fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("LocalBackend")
            .field("herald", &self.inner.herald)
            .field("tenants", &state.tenants.len())
            .field("pushes_tracked", &state.ledger.order.len())
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(feeder) = self
            .feeder
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            feeder.abort();
        }
    }
}

impl LocalBackend {
    /// A backend over `herald`; tenant credentials made through the API mint provider
    /// tokens by `clock`. Spawns the task that feeds the feedback log (call inside a Tokio
    /// runtime).
    pub fn new(herald: Herald, clock: SharedClock) -> Self {
        LocalBackend::start(herald, None, clock)
    }

    /// A backend whose pushes go through `router` (over `router`'s engine): each to its
    /// shard's owner in this node's region, statuses from the owners' relayed outcomes.
    pub fn routed(router: Arc<Router>, clock: SharedClock) -> Self {
        LocalBackend::start(router.engine().clone(), Some(router), clock)
    }

    fn start(herald: Herald, router: Option<Arc<Router>>, clock: SharedClock) -> Self {
        let inner = Arc::new(Inner {
            herald: herald.clone(),
            router,
            clock,
            state: Mutex::new(State::default()),
            feeder: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let mut invalidations = herald.invalidations();
        let feeder = tokio::spawn(async move {
            loop {
                let event = invalidations.recv().await;
                let Some(inner) = weak.upgrade() else { return };
                let backend = LocalBackend { inner };
                match event {
                    Ok(invalidation) => backend.record_invalidation(&invalidation),
                    Err(RecvError::Lagged(lost)) => backend.record_loss(lost),
                    Err(RecvError::Closed) => return,
                }
            }
        });
        *inner.feeder.lock().unwrap_or_else(PoisonError::into_inner) = Some(feeder);
        LocalBackend { inner }
    }

    /// Make a tenant the engine already has (from its configuration) known to the API.
    pub fn adopt_tenant(&self, info: TenantInfo) {
        self.state().tenants.insert(info.id.clone(), info);
    }

    /// The engine.
    pub fn herald(&self) -> &Herald {
        &self.inner.herald
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn record_invalidation(&self, inv: &Invalidation) {
        let mut state = self.state();
        if !state.tenants.contains_key(&inv.tenant) {
            return;
        }
        let log = state.feedback.entry(inv.tenant.clone()).or_default();
        log.entries.push_back(FeedbackEntry {
            seq: log.next_seq,
            token: inv.device_token.clone(),
            at_ms: inv.at.as_millis(),
        });
        log.next_seq += 1;
        if log.entries.len() > limits::FEEDBACK_KEPT_PER_TENANT_MAX {
            log.entries.pop_front();
            metrics::counter!("herald_api_feedback_forgotten_total").increment(1);
        }
        // A token invalidated after it was registered leaves the registry (a later
        // registration, e.g. after a reinstall, stands).
        if let Some(devices) = state.devices.get_mut(&inv.tenant) {
            let token = inv.device_token.as_str();
            if devices.get(token).is_some_and(|(_, at)| *at <= inv.at) {
                devices.remove(token);
            }
        }
    }

    /// Invalidations were missed (the stream lagged): every tenant's log gets a hole so a
    /// reader sees `truncated`.
    fn record_loss(&self, lost: u64) {
        metrics::counter!("herald_api_feedback_lost_total").increment(lost);
        tracing::warn!(lost, "feedback log missed invalidations");
        let mut state = self.state();
        let tenants: Vec<String> = state.tenants.keys().cloned().collect();
        for tenant in tenants {
            state.feedback.entry(tenant).or_default().next_seq += 1;
        }
    }

    fn track(&self, tenant: &str, ids: impl Iterator<Item = PushId>) {
        let tenant: Arc<str> = Arc::from(tenant);
        let mut state = self.state();
        let ledger = &mut state.ledger;
        for id in ids {
            if ledger.by_id.insert(id, tenant.clone()).is_none() {
                ledger.order.push_back(id);
            }
            while ledger.order.len() > limits::PUSHES_TRACKED_MAX {
                if let Some(old) = ledger.order.pop_front() {
                    ledger.by_id.remove(&old);
                }
            }
        }
    }

    /// Whether `tenant` is known to the API (configured and adopted, or created through it).
    pub fn known(&self, tenant: &str) -> bool {
        self.state().tenants.contains_key(tenant)
    }

    /// How many tenants the API knows.
    pub(crate) fn tenant_count(&self) -> usize {
        self.state().tenants.len()
    }
}

impl PushBackend for LocalBackend {
    fn send_batch<'a>(
        &'a self,
        tenant: &'a str,
        pushes: Vec<Notification>,
    ) -> BoxFuture<'a, Result<Vec<Result<PushId, PushError>>, PushError>> {
        Box::pin(async move {
            if !self.known(tenant) {
                return Err(PushError::UnknownTenant(tenant.to_owned()));
            }
            let results = match &self.inner.router {
                Some(router) => router.send_batch(tenant, pushes).await?,
                None => self.inner.herald.send_batch(tenant, pushes).await?,
            };
            self.track(
                tenant,
                results.iter().filter_map(|r| r.as_ref().ok().copied()),
            );
            Ok(results)
        })
    }

    fn status<'a>(&'a self, tenant: &'a str, id: PushId) -> BoxFuture<'a, Option<PushStatus>> {
        Box::pin(async move {
            let owner = self.state().ledger.by_id.get(&id).cloned();
            if owner.as_deref() != Some(tenant) {
                return None;
            }
            let outcome = match &self.inner.router {
                Some(router) => router.outcome(id),
                None => self.inner.herald.outcome(id),
            };
            Some(match outcome {
                Some(outcome) => PushStatus::Finished(outcome),
                None => PushStatus::Pending,
            })
        })
    }
}

impl DeviceRegistry for LocalBackend {
    fn register<'a>(
        &'a self,
        tenant: &'a str,
        device: Device,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move {
            let now = self.inner.clock.now();
            let mut state = self.state();
            if !state.tenants.contains_key(tenant) {
                return Err(RegistryError::UnknownTenant(tenant.to_owned()));
            }
            let devices = state.devices.entry(tenant.to_owned()).or_default();
            let token = device.token.as_str().to_owned();
            if !devices.contains_key(&token) && devices.len() >= limits::DEVICES_PER_TENANT_MAX {
                return Err(RegistryError::Full(devices.len()));
            }
            Ok(devices.insert(token, (device, now)).is_none())
        })
    }

    fn unregister<'a>(
        &'a self,
        tenant: &'a str,
        token: &'a DeviceToken,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move {
            let mut state = self.state();
            if !state.tenants.contains_key(tenant) {
                return Err(RegistryError::UnknownTenant(tenant.to_owned()));
            }
            Ok(state
                .devices
                .get_mut(tenant)
                .and_then(|d| d.remove(token.as_str()))
                .is_some())
        })
    }

    fn page<'a>(
        &'a self,
        tenant: &'a str,
        filter: &'a DeviceFilter,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<DevicePage, RegistryError>> {
        Box::pin(async move {
            let state = self.state();
            if !state.tenants.contains_key(tenant) {
                return Err(RegistryError::UnknownTenant(tenant.to_owned()));
            }
            let Some(devices) = state.devices.get(tenant) else {
                return Ok(DevicePage {
                    devices: Vec::new(),
                    next: None,
                });
            };
            let range = match after {
                Some(after) => devices.range::<str, _>((
                    std::ops::Bound::Excluded(after),
                    std::ops::Bound::Unbounded,
                )),
                None => devices.range::<str, _>(..),
            };
            let mut page = Vec::new();
            let mut more = false;
            for (_, (device, _)) in range.filter(|(_, (d, _))| filter.matches(d)) {
                if page.len() == limit {
                    more = true;
                    break;
                }
                page.push(device.clone());
            }
            let next = if more {
                page.last().map(|d| d.token.as_str().to_owned())
            } else {
                None
            };
            Ok(DevicePage {
                devices: page,
                next,
            })
        })
    }
}

impl Feedback for LocalBackend {
    fn since<'a>(
        &'a self,
        tenant: &'a str,
        cursor: u64,
        limit: usize,
    ) -> BoxFuture<'a, FeedbackPage> {
        Box::pin(async move {
            let state = self.state();
            let Some(log) = state.feedback.get(tenant) else {
                return FeedbackPage {
                    items: Vec::new(),
                    next_cursor: cursor,
                    truncated: false,
                };
            };
            let items: Vec<FeedbackEntry> = log
                .entries
                .iter()
                .filter(|e| e.seq >= cursor)
                .take(limit)
                .cloned()
                .collect();
            let next_cursor = match items.last() {
                Some(last) => last.seq + 1,
                None => log.next_seq.max(cursor),
            };
            // Contiguous from the cursor unless entries were forgotten or missed.
            let mut expected = cursor;
            let mut truncated = false;
            for item in &items {
                truncated |= item.seq != expected;
                expected = item.seq + 1;
            }
            truncated |= items.is_empty() && log.next_seq > cursor;
            FeedbackPage {
                items,
                next_cursor,
                truncated,
            }
        })
    }
}

impl TenantAdmin for LocalBackend {
    fn create(&self, spec: TenantSpec) -> BoxFuture<'_, Result<TenantInfo, AdminError>> {
        Box::pin(async move {
            check_tenant_id(&spec.id)?;
            {
                let state = self.state();
                if state.tenants.contains_key(&spec.id) {
                    return Err(AdminError::Exists(spec.id));
                }
                if state.tenants.len() >= limits::TENANTS_MAX {
                    return Err(AdminError::Full(state.tenants.len()));
                }
            }
            let key = SigningKey::from_p8_pem(spec.p8_pem.as_bytes(), &spec.key_id, &spec.team_id)
                .map_err(|e| AdminError::Invalid {
                    field: "p8_pem",
                    message: e.to_string(),
                })?;
            let minter = TokenMinter::with_default_interval(key, self.inner.clock.clone());
            let mut config = TenantConfig::new(spec.id.clone(), Credentials::Token(minter));
            if let Some(max) = spec.queue_max {
                config.queue_max(max);
            }
            self.inner
                .herald
                .add_tenant(config)
                .await
                .map_err(|e| match e {
                    TenantError::Exists(id) => AdminError::Exists(id),
                    TenantError::Invalid(m) => AdminError::Invalid {
                        field: "tenant",
                        message: m,
                    },
                    other => AdminError::Unavailable(other.to_string()),
                })?;
            let info = TenantInfo {
                id: spec.id.clone(),
                team_id: Some(spec.team_id),
                key_id: Some(spec.key_id),
            };
            self.adopt_tenant(info.clone());
            Ok(info)
        })
    }

    fn list(&self) -> BoxFuture<'_, Vec<TenantInfo>> {
        Box::pin(async move { self.state().tenants.values().cloned().collect() })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<TenantInfo>> {
        Box::pin(async move { self.state().tenants.get(id).cloned() })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            if !self.known(id) {
                return Err(AdminError::Unknown(id.to_owned()));
            }
            match self.inner.herald.remove_tenant(id).await {
                Ok(()) | Err(TenantError::Unknown(_)) => {}
                Err(e) => return Err(AdminError::Unavailable(e.to_string())),
            }
            let mut state = self.state();
            state.tenants.remove(id);
            state.devices.remove(id);
            state.feedback.remove(id);
            Ok(())
        })
    }
}

/// A tenant id: 1..=[`TENANT_ID_BYTES_MAX`](limits::TENANT_ID_BYTES_MAX) of
/// `A-Z a-z 0-9 . _ -`.
pub(crate) fn check_tenant_id(id: &str) -> Result<(), AdminError> {
    if id.is_empty()
        || id.len() > limits::TENANT_ID_BYTES_MAX
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(AdminError::Invalid {
            field: "id",
            message: format!(
                "a tenant id is 1 to {} of A-Z a-z 0-9 . _ -",
                limits::TENANT_ID_BYTES_MAX
            ),
        });
    }
    Ok(())
}
