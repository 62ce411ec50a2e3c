//! What the API needs from the rest of the node, as traits: [`PushBackend`],
//! [`DeviceRegistry`], [`Feedback`] and [`TenantAdmin`]. [`LocalBackend`](super::LocalBackend)
//! implements them over one engine; the cluster router implements them over the cluster.

use std::collections::BTreeSet;
use std::fmt;

use herald_actors::apns::{DeviceToken, Notification, Topic};
use herald_actors::seams::BoxFuture;
use herald_actors::{Outcome, PushError, PushId};
use serde::Serialize;

/// Accepts pushes and reports their status.
pub trait PushBackend: Send + Sync + fmt::Debug + 'static {
    /// Accept `pushes` for `tenant` (at most [`PUSH_BATCH_MAX`](super::limits::PUSH_BATCH_MAX)):
    /// one result per push, in order; the outer `Err` refuses the whole batch.
    fn send_batch<'a>(
        &'a self,
        tenant: &'a str,
        pushes: Vec<Notification>,
    ) -> BoxFuture<'a, Result<Vec<Result<PushId, PushError>>, PushError>>;

    /// The status of push `id` if `tenant` sent it (and it is still remembered); `None`
    /// otherwise, including when another tenant sent it.
    fn status<'a>(&'a self, tenant: &'a str, id: PushId) -> BoxFuture<'a, Option<PushStatus>>;
}

/// Where a push stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushStatus {
    /// Accepted, no outcome yet.
    Pending,
    /// Finished.
    Finished(Outcome),
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// Its token.
    pub token: DeviceToken,
    /// The app's topic (bundle id).
    pub topic: Topic,
    /// Tags to address it by in broadcasts.
    pub tags: BTreeSet<String>,
}

/// Which devices a listing or broadcast covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// Only devices of this topic.
    pub topic: Option<Topic>,
    /// Only devices carrying every one of these tags.
    pub tags: BTreeSet<String>,
}

impl DeviceFilter {
    /// True when `device` matches.
    pub fn matches(&self, device: &Device) -> bool {
        self.topic.as_ref().is_none_or(|t| *t == device.topic)
            && self.tags.iter().all(|t| device.tags.contains(t))
    }
}

/// A page of devices in token order; `next` resumes after the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePage {
    /// The devices.
    pub devices: Vec<Device>,
    /// The cursor for the next page, `None` at the end.
    pub next: Option<String>,
}

/// Why a registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No tenant by that name.
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    /// The tenant holds [`DEVICES_PER_TENANT_MAX`](super::limits::DEVICES_PER_TENANT_MAX)
    /// devices.
    #[error("the tenant has {0} devices registered, the most allowed")]
    Full(usize),
    /// The registry is unreachable (a cluster backend).
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

/// Devices registered per tenant.
pub trait DeviceRegistry: Send + Sync + fmt::Debug + 'static {
    /// Register (or update) `device` for `tenant`; `true` when it is new.
    fn register<'a>(
        &'a self,
        tenant: &'a str,
        device: Device,
    ) -> BoxFuture<'a, Result<bool, RegistryError>>;

    /// Remove `token` from `tenant`'s devices; `false` when `tenant` had no such device.
    fn unregister<'a>(
        &'a self,
        tenant: &'a str,
        token: &'a DeviceToken,
    ) -> BoxFuture<'a, Result<bool, RegistryError>>;

    /// Up to `limit` of `tenant`'s devices matching `filter`, in token order, after
    /// token `after`.
    fn page<'a>(
        &'a self,
        tenant: &'a str,
        filter: &'a DeviceFilter,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<DevicePage, RegistryError>>;
}

/// One invalidated token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedbackEntry {
    /// Its position in the tenant's feedback log (cursors count these).
    pub seq: u64,
    /// The token.
    pub token: DeviceToken,
    /// When APNs says it stopped being valid, ms since the epoch.
    pub at_ms: u64,
}

/// A page of feedback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedbackPage {
    /// The entries, oldest first.
    pub items: Vec<FeedbackEntry>,
    /// Pass as `cursor` to read on.
    pub next_cursor: u64,
    /// True when entries after the cursor were forgotten (the log is bounded) or lost.
    pub truncated: bool,
}

/// Tokens invalidated per tenant, readable from a cursor.
pub trait Feedback: Send + Sync + fmt::Debug + 'static {
    /// Up to `limit` of `tenant`'s invalidations with `seq >= cursor`.
    fn since<'a>(
        &'a self,
        tenant: &'a str,
        cursor: u64,
        limit: usize,
    ) -> BoxFuture<'a, FeedbackPage>;
}

/// A new tenant: its APNs token credentials. The `.p8` key is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantSpec {
    /// Its id (1..=64 of `A-Z a-z 0-9 . _ -`).
    pub id: String,
    /// Apple team id.
    pub team_id: String,
    /// Apple key id.
    pub key_id: String,
    /// The `.p8` signing key (PKCS#8 PEM).
    pub p8_pem: String,
    /// Most pushes queued at once (the engine's default when `None`).
    pub queue_max: Option<usize>,
}

impl fmt::Debug for TenantSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantSpec")
            .field("id", &self.id)
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .field("p8_pem", &"<redacted>")
            .field("queue_max", &self.queue_max)
            .finish()
    }
}

/// A tenant as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantInfo {
    /// Its id.
    pub id: String,
    /// Apple team id, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// Apple key id, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// Why a tenant operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No tenant by that name.
    #[error("unknown tenant {0:?}")]
    Unknown(String),
    /// A tenant by that name exists.
    #[error("tenant {0:?} exists already")]
    Exists(String),
    /// The spec is invalid (the field is named).
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// [`TENANTS_MAX`](super::limits::TENANTS_MAX) tenants exist.
    #[error("{0} tenants exist, the most allowed")]
    Full(usize),
    /// The engine or cluster did not answer.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Creates, lists and removes tenants.
pub trait TenantAdmin: Send + Sync + fmt::Debug + 'static {
    /// Create a tenant.
    fn create(&self, spec: TenantSpec) -> BoxFuture<'_, Result<TenantInfo, AdminError>>;
    /// Every tenant, by id.
    fn list(&self) -> BoxFuture<'_, Vec<TenantInfo>>;
    /// One tenant.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<TenantInfo>>;
    /// Remove a tenant (its queued pushes fail with `TenantRemoved`; its devices and
    /// feedback are dropped).
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), AdminError>>;
}
