//! [`DeviceDirectory`]: the replicated device registry and feedback log
//! ([`state::devices`](crate::state::devices)), the tenants' webhooks and the tenants created
//! through the HTTP API, as a handle an HTTP API can hold.
//!
//! Changes are proposed through Raft (forwarded to the leader from a follower) and answered
//! once applied on this node; reads are local, at this node's applied index (as stale as the
//! entries it has not applied yet: usually one `ready()` round, see `docs/cluster.md`).

use std::collections::BTreeSet;
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::oneshot;

use crate::node::{ClusterMsg, ProposeError, StateRead, propose};
use crate::state::devices::{DeviceApplied, DeviceChange, DeviceRecord, FeedbackSlice};
use crate::state::{ApiTenantRecord, ApplyResult, Command, Rejection, WebhookRecord};

/// How long a read waits for the cluster actor.
pub const DEVICE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The replicated device registry and feedback log, through one node. Cheap to clone; once
/// the node stopped every call fails.
#[derive(Debug, Clone)]
pub struct DeviceDirectory {
    actor: ActorRef<ClusterMsg>,
}

/// Why [`DeviceDirectory::create_api_tenant`] did not create the tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiTenantError {
    /// A tenant of this id exists (created with other credentials).
    #[error("tenant {0:?} exists")]
    Exists(String),
    /// The replicated state holds the most API-made tenants it may.
    #[error("{0} tenants were created through the API, the most allowed")]
    Full(usize),
    /// The command was not applied.
    #[error(transparent)]
    Propose(#[from] ProposeError),
}

/// Why a read did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster node stopped or busy")]
pub struct ReadError;

impl DeviceDirectory {
    pub(crate) fn new(actor: ActorRef<ClusterMsg>) -> Self {
        DeviceDirectory { actor }
    }

    /// Apply `changes` cluster-wide; answers once applied on this node, one result per
    /// change.
    ///
    /// # Errors
    /// [`ProposeError`] if the batch was not applied (invalid, no leader, timeout, …).
    pub async fn change(
        &self,
        changes: Vec<DeviceChange>,
        timeout: Duration,
    ) -> Result<Vec<DeviceApplied>, ProposeError> {
        match propose(&self.actor, Command::Devices(changes), timeout).await? {
            ApplyResult::Devices(applied) => Ok(applied),
            other => Err(ProposeError::Refused(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Up to `limit` of `tenant`'s devices matching `topic` and carrying every one of `tags`,
    /// in token order after `after`, and whether more follow.
    ///
    /// # Errors
    /// [`ReadError`] if the node did not answer within [`DEVICE_READ_TIMEOUT`].
    pub async fn page(
        &self,
        tenant: &str,
        topic: Option<&str>,
        tags: &BTreeSet<String>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, DeviceRecord)>, bool), ReadError> {
        let (tenant, topic, tags, after) = (
            tenant.to_owned(),
            topic.map(str::to_owned),
            tags.clone(),
            after.map(str::to_owned),
        );
        self.read(move |machine| {
            machine
                .devices()
                .page(&tenant, topic.as_deref(), &tags, after.as_deref(), limit)
        })
        .await
    }

    /// Up to `limit` of `tenant`'s invalidated tokens from `cursor` on.
    ///
    /// # Errors
    /// [`ReadError`] if the node did not answer within [`DEVICE_READ_TIMEOUT`].
    pub async fn feedback_since(
        &self,
        tenant: &str,
        cursor: u64,
        limit: usize,
    ) -> Result<FeedbackSlice, ReadError> {
        let tenant = tenant.to_owned();
        self.read(move |machine| machine.devices().feedback_since(&tenant, cursor, limit))
            .await
    }

    /// Set (`Some`) or remove (`None`) `tenant`'s webhook cluster-wide; answers once applied
    /// on this node.
    ///
    /// # Errors
    /// [`ProposeError`] if it was not applied (invalid, no leader, full, timeout, …).
    pub async fn set_webhook(
        &self,
        tenant: &str,
        webhook: Option<WebhookRecord>,
        timeout: Duration,
    ) -> Result<(), ProposeError> {
        let command = Command::SetWebhook {
            tenant: tenant.to_owned(),
            webhook,
        };
        match propose(&self.actor, command, timeout).await? {
            ApplyResult::Applied | ApplyResult::Unchanged => Ok(()),
            ApplyResult::Rejected(why) => Err(ProposeError::Refused(why.to_string())),
            other => Err(ProposeError::Refused(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Every tenant's webhook, as applied on this node.
    ///
    /// # Errors
    /// [`ReadError`] if the node did not answer within [`DEVICE_READ_TIMEOUT`].
    pub async fn webhooks(
        &self,
    ) -> Result<std::collections::BTreeMap<String, WebhookRecord>, ReadError> {
        self.read(|machine| machine.webhooks().clone()).await
    }

    /// Create tenant `tenant` with `record` on every node; answers once applied on this node.
    ///
    /// # Errors
    /// [`ApiTenantError::Exists`] if a tenant of that id was created already (also with the
    /// same record: a creation answers which call created it),
    /// [`ApiTenantError::Full`] past [`API_TENANTS_MAX`](crate::state::API_TENANTS_MAX),
    /// [`ApiTenantError::Propose`] if it was not applied (invalid, no leader, timeout, …).
    pub async fn create_api_tenant(
        &self,
        tenant: &str,
        record: ApiTenantRecord,
        timeout: Duration,
    ) -> Result<(), ApiTenantError> {
        let command = Command::CreateApiTenant {
            tenant: tenant.to_owned(),
            record,
        };
        let tenant = tenant.to_owned();
        match propose(&self.actor, command, timeout).await? {
            ApplyResult::Applied => Ok(()),
            ApplyResult::Unchanged => Err(ApiTenantError::Exists(tenant)),
            ApplyResult::Rejected(Rejection::TenantExists(id)) => Err(ApiTenantError::Exists(id)),
            ApplyResult::Rejected(Rejection::ApiTenantsFull(n)) => Err(ApiTenantError::Full(n)),
            other => Err(ProposeError::Refused(format!("unexpected answer {other:?}")).into()),
        }
    }

    /// Remove tenant `tenant`, created with [`create_api_tenant`](Self::create_api_tenant),
    /// from every node (and its replicated webhook); answers once applied on this node.
    /// Removing an unknown tenant changes nothing.
    ///
    /// # Errors
    /// [`ProposeError`] if it was not applied (no leader, timeout, …).
    pub async fn remove_api_tenant(
        &self,
        tenant: &str,
        timeout: Duration,
    ) -> Result<(), ProposeError> {
        let command = Command::RemoveApiTenant {
            tenant: tenant.to_owned(),
        };
        match propose(&self.actor, command, timeout).await? {
            ApplyResult::Applied | ApplyResult::Unchanged => Ok(()),
            other => Err(ProposeError::Refused(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// The tenants created through the HTTP API, with their credentials, as applied on this
    /// node.
    ///
    /// # Errors
    /// [`ReadError`] if the node did not answer within [`DEVICE_READ_TIMEOUT`].
    pub async fn api_tenants(
        &self,
    ) -> Result<std::collections::BTreeMap<String, ApiTenantRecord>, ReadError> {
        self.read(|machine| machine.api_tenants().clone()).await
    }

    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&crate::state::StateMachine) -> T + Send + 'static,
    ) -> Result<T, ReadError> {
        let (tx, rx) = oneshot::channel();
        self.actor
            .cast(ClusterMsg::Read(StateRead::new(move |machine| {
                let _ = tx.send(read(machine));
            })))
            .map_err(|_| ReadError)?;
        match tokio::time::timeout(DEVICE_READ_TIMEOUT, rx).await {
            Ok(Ok(value)) => Ok(value),
            _ => Err(ReadError),
        }
    }
}
