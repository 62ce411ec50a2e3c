//! The device registry and feedback log of a cluster node: [`ReplicatedDevices`] serves the
//! [`DeviceRegistry`] and [`Feedback`] traits from the Raft-replicated state
//! ([`DeviceDirectory`]), so a device registered through any node is listed and broadcast to
//! by every node, and an invalidation learned anywhere is in every node's feedback.
//!
//! Tenants are checked against the node's own list (the [`LocalBackend`]'s). Registrations
//! answer once applied on this node; reads are local, at this node's applied index.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use herald_actors::apns::{DeviceToken, Topic};
use herald_actors::seams::{BoxFuture, SharedClock};
use herald_cluster::devices::DeviceDirectory;
use herald_cluster::state::devices::{DEVICES_MAX, DeviceApplied, DeviceChange, DeviceOp};

use super::backend::{
    Device, DeviceFilter, DevicePage, DeviceRegistry, Feedback, FeedbackEntry, FeedbackPage,
    RegistryError,
};
use super::local::LocalBackend;

/// How long a registration may take to be applied through Raft.
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);

/// [`DeviceRegistry`] and [`Feedback`] over the replicated state. Cheap to clone.
#[derive(Clone)]
pub struct ReplicatedDevices {
    directory: DeviceDirectory,
    tenants: LocalBackend,
    clock: SharedClock,
}

impl fmt::Debug for ReplicatedDevices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicatedDevices").finish_non_exhaustive()
    }
}

impl ReplicatedDevices {
    /// Devices and feedback from `directory`, for the tenants `tenants` knows; registration
    /// times from `clock`.
    pub fn new(directory: DeviceDirectory, tenants: LocalBackend, clock: SharedClock) -> Self {
        ReplicatedDevices {
            directory,
            tenants,
            clock,
        }
    }

    fn check_tenant(&self, tenant: &str) -> Result<(), RegistryError> {
        if self.tenants.known(tenant) {
            Ok(())
        } else {
            Err(RegistryError::UnknownTenant(tenant.to_owned()))
        }
    }

    async fn change(&self, change: DeviceChange) -> Result<DeviceApplied, RegistryError> {
        let applied = self
            .directory
            .change(vec![change], REGISTRATION_TIMEOUT)
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        applied
            .first()
            .copied()
            .ok_or_else(|| RegistryError::Unavailable("no answer for the change".to_owned()))
    }
}

impl DeviceRegistry for ReplicatedDevices {
    fn register<'a>(
        &'a self,
        tenant: &'a str,
        device: Device,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move {
            self.check_tenant(tenant)?;
            let change = DeviceChange {
                tenant: tenant.to_owned(),
                token: device.token.as_str().to_owned(),
                op: DeviceOp::Register {
                    topic: device.topic.as_str().to_owned(),
                    // A BTreeSet: sorted and distinct, as the command requires.
                    tags: device.tags.into_iter().collect(),
                    at_ms: self.clock.now().as_millis(),
                },
            };
            match self.change(change).await? {
                DeviceApplied::Added => Ok(true),
                DeviceApplied::Updated => Ok(false),
                DeviceApplied::Full => Err(RegistryError::Full(DEVICES_MAX)),
                other => Err(RegistryError::Unavailable(format!("unexpected {other:?}"))),
            }
        })
    }

    fn unregister<'a>(
        &'a self,
        tenant: &'a str,
        token: &'a DeviceToken,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move {
            self.check_tenant(tenant)?;
            let change = DeviceChange {
                tenant: tenant.to_owned(),
                token: token.as_str().to_owned(),
                op: DeviceOp::Unregister,
            };
            Ok(self.change(change).await? == DeviceApplied::Removed)
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
            self.check_tenant(tenant)?;
            let (records, more) = self
                .directory
                .page(
                    tenant,
                    filter.topic.as_ref().map(Topic::as_str),
                    &filter.tags,
                    after,
                    limit,
                )
                .await
                .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
            let mut devices = Vec::with_capacity(records.len());
            for (token, record) in records {
                // Both were valid when registered; a record that is not is skipped, loudly.
                match (DeviceToken::new(&token), Topic::new(&record.topic)) {
                    (Ok(token), Ok(topic)) => devices.push(Device {
                        token,
                        topic,
                        tags: record.tags.into_iter().collect::<BTreeSet<_>>(),
                    }),
                    _ => tracing::warn!(tenant, token, "unreadable registered device skipped"),
                }
            }
            let next = if more {
                devices.last().map(|d| d.token.as_str().to_owned())
            } else {
                None
            };
            Ok(DevicePage { devices, next })
        })
    }
}

impl Feedback for ReplicatedDevices {
    fn since<'a>(
        &'a self,
        tenant: &'a str,
        cursor: u64,
        limit: usize,
    ) -> BoxFuture<'a, FeedbackPage> {
        Box::pin(async move {
            let empty = FeedbackPage {
                items: Vec::new(),
                next_cursor: cursor,
                truncated: false,
            };
            if !self.tenants.known(tenant) {
                return empty;
            }
            let slice = match self.directory.feedback_since(tenant, cursor, limit).await {
                Ok(slice) => slice,
                Err(e) => {
                    // Nothing read: the caller asks again from the same cursor.
                    tracing::warn!(tenant, error = %e, "feedback not read");
                    return empty;
                }
            };
            let items = slice
                .entries
                .into_iter()
                .filter_map(|record| {
                    Some(FeedbackEntry {
                        seq: record.seq,
                        token: DeviceToken::new(&record.token).ok()?,
                        at_ms: record.at_ms,
                    })
                })
                .collect();
            FeedbackPage {
                items,
                next_cursor: slice.next_cursor,
                truncated: slice.truncated,
            }
        })
    }
}
