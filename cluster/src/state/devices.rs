//! The replicated device registry and feedback log: which devices each tenant registered
//! (with topic and tags, for broadcasts) and which tokens APNs invalidated (the feedback API),
//! the same on every node at equal applied index.
//!
//! - [`Command::Devices`](super::Command::Devices) registers and unregisters devices. A
//!   registration also records the token as registered in the token state (so a device that
//!   registers again after an invalidation is sent to again, last writer wins by time).
//! - An invalidation applied by [`Command::TokenEvents`](super::Command::TokenEvents) that
//!   takes effect appends to the tenant's feedback log and removes the device if it was
//!   registered at or before the invalidation (a later registration stands).
//!
//! Bounds (the whole state travels in snapshots): at most [`DEVICES_MAX`] devices in all (a
//! new registration past it is refused, [`DeviceApplied::Full`]) and at most
//! [`FEEDBACK_ENTRIES_MAX`] feedback entries in all (the oldest are forgotten; a reader whose
//! cursor is older sees `truncated`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Most devices the replicated registry holds, all tenants together.
pub const DEVICES_MAX: usize = 250_000;
/// Most changes in one [`Command::Devices`](super::Command::Devices).
pub const DEVICE_CHANGES_PER_COMMAND_MAX: usize = 1024;
/// Most tags per device.
pub const DEVICE_TAGS_MAX: usize = 32;
/// Longest tag, in bytes.
pub const DEVICE_TAG_BYTES_MAX: usize = 64;
/// Most feedback entries kept, all tenants together (the oldest are forgotten first).
pub const FEEDBACK_ENTRIES_MAX: usize = 100_000;

/// One change of a [`Command::Devices`](super::Command::Devices).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceChange {
    /// The tenant.
    pub tenant: String,
    /// The device token (hex, lowercase).
    pub token: String,
    /// What to do.
    pub op: DeviceOp,
}

/// Register or unregister a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceOp {
    /// Register (or update) the device.
    Register {
        /// The app's topic (bundle id).
        topic: String,
        /// Tags to address it by in broadcasts (sorted, distinct).
        tags: Vec<String>,
        /// When (the proposer's clock, ms since the epoch).
        at_ms: u64,
    },
    /// Remove the device from the registry (its token state is left as it is).
    Unregister,
}

/// What one [`DeviceChange`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceApplied {
    /// A new device.
    Added,
    /// An existing device, updated.
    Updated,
    /// The device was removed.
    Removed,
    /// No such device to remove.
    NotFound,
    /// Refused: [`DEVICES_MAX`] devices are registered.
    Full,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The app's topic.
    pub topic: String,
    /// Its tags (sorted, distinct).
    pub tags: Vec<String>,
    /// When it was registered (ms since the epoch).
    pub at_ms: u64,
}

/// One invalidated token in a tenant's feedback log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    /// Its position in the tenant's log (cursors count these).
    pub seq: u64,
    /// The token (hex).
    pub token: String,
    /// When APNs says it stopped being valid (ms since the epoch).
    pub at_ms: u64,
}

/// A page of a tenant's feedback log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackSlice {
    /// The entries with `seq >=` the cursor, oldest first.
    pub entries: Vec<FeedbackRecord>,
    /// The cursor to read on from.
    pub next_cursor: u64,
    /// Entries at or after the cursor were forgotten (bounded log).
    pub truncated: bool,
}

/// Devices and feedback, per tenant. Deterministic: ordered maps only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceState {
    devices: BTreeMap<String, BTreeMap<String, DeviceRecord>>,
    device_count: usize,
    /// Feedback in arrival order (global sequence → tenant, entry) …
    feedback: BTreeMap<u64, (String, FeedbackRecord)>,
    next_global: u64,
    /// … and per tenant: its next sequence number and its kept entries (seq → global).
    tenants: BTreeMap<String, TenantFeedback>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
struct TenantFeedback {
    next_seq: u64,
    kept: BTreeMap<u64, u64>,
}

impl DeviceState {
    /// Apply one change.
    pub fn apply(&mut self, change: &DeviceChange) -> DeviceApplied {
        match &change.op {
            DeviceOp::Register { topic, tags, at_ms } => {
                let record = DeviceRecord {
                    topic: topic.clone(),
                    tags: tags.clone(),
                    at_ms: *at_ms,
                };
                let exists = self
                    .devices
                    .get(&change.tenant)
                    .is_some_and(|d| d.contains_key(&change.token));
                if !exists && self.device_count >= DEVICES_MAX {
                    return DeviceApplied::Full;
                }
                let devices = self.devices.entry(change.tenant.clone()).or_default();
                match devices.insert(change.token.clone(), record) {
                    Some(_) => DeviceApplied::Updated,
                    None => {
                        self.device_count += 1;
                        DeviceApplied::Added
                    }
                }
            }
            DeviceOp::Unregister => {
                if self.remove(&change.tenant, &change.token, u64::MAX) {
                    DeviceApplied::Removed
                } else {
                    DeviceApplied::NotFound
                }
            }
        }
    }

    /// An invalidation of `token` of `tenant` at `at_ms` took effect: log it, and remove the
    /// device if it was registered at or before then.
    pub fn invalidated(&mut self, tenant: &str, token: &str, at_ms: u64) {
        self.remove(tenant, token, at_ms);
        let log = self.tenants.entry(tenant.to_owned()).or_default();
        let record = FeedbackRecord {
            seq: log.next_seq,
            token: token.to_owned(),
            at_ms,
        };
        log.kept.insert(log.next_seq, self.next_global);
        log.next_seq += 1;
        self.feedback
            .insert(self.next_global, (tenant.to_owned(), record));
        self.next_global += 1;
        while self.feedback.len() > FEEDBACK_ENTRIES_MAX {
            let Some((_, (tenant, old))) = self.feedback.pop_first() else {
                break;
            };
            if let Some(log) = self.tenants.get_mut(&tenant) {
                log.kept.remove(&old.seq);
            }
        }
    }

    /// Forget every device and feedback entry of `tenant` (it was removed): a tenant created
    /// again under its id starts empty.
    pub fn remove_tenant(&mut self, tenant: &str) {
        if let Some(devices) = self.devices.remove(tenant) {
            self.device_count -= devices.len();
        }
        if let Some(log) = self.tenants.remove(tenant) {
            for global in log.kept.values() {
                self.feedback.remove(global);
            }
        }
    }

    fn remove(&mut self, tenant: &str, token: &str, registered_by_ms: u64) -> bool {
        let Some(devices) = self.devices.get_mut(tenant) else {
            return false;
        };
        if devices
            .get(token)
            .is_none_or(|d| d.at_ms > registered_by_ms)
        {
            return false;
        }
        devices.remove(token);
        self.device_count -= 1;
        if devices.is_empty() {
            self.devices.remove(tenant);
        }
        true
    }

    /// Up to `limit` of `tenant`'s devices matching `topic` (if given) and carrying every one
    /// of `tags`, in token order after `after`; and whether more follow.
    pub fn page(
        &self,
        tenant: &str,
        topic: Option<&str>,
        tags: &BTreeSet<String>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(String, DeviceRecord)>, bool) {
        let Some(devices) = self.devices.get(tenant) else {
            return (Vec::new(), false);
        };
        let range = match after {
            Some(after) => devices
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => devices.range::<str, _>(..),
        };
        let mut page = Vec::new();
        for (token, device) in range {
            let matches = topic.is_none_or(|t| t == device.topic)
                && tags.iter().all(|t| device.tags.contains(t));
            if !matches {
                continue;
            }
            if page.len() == limit {
                return (page, true);
            }
            page.push((token.clone(), device.clone()));
        }
        (page, false)
    }

    /// Up to `limit` of `tenant`'s feedback entries with `seq >= cursor`.
    pub fn feedback_since(&self, tenant: &str, cursor: u64, limit: usize) -> FeedbackSlice {
        let Some(log) = self.tenants.get(tenant) else {
            return FeedbackSlice {
                entries: Vec::new(),
                next_cursor: cursor,
                truncated: false,
            };
        };
        let oldest = log.kept.keys().next().copied().unwrap_or(log.next_seq);
        let entries: Vec<FeedbackRecord> = log
            .kept
            .range(cursor..)
            .take(limit)
            .filter_map(|(_, global)| self.feedback.get(global).map(|(_, r)| r.clone()))
            .collect();
        let next_cursor = entries
            .last()
            .map_or(cursor.max(oldest.min(log.next_seq)), |r| r.seq + 1);
        FeedbackSlice {
            entries,
            next_cursor,
            truncated: cursor < oldest,
        }
    }

    /// Devices registered, all tenants.
    pub fn device_count(&self) -> usize {
        self.device_count
    }

    /// The snapshot form.
    pub(crate) fn image(&self) -> DevicesImage {
        DevicesImage {
            devices: self
                .devices
                .iter()
                .map(|(tenant, devices)| (tenant.clone(), devices.clone()))
                .collect(),
            feedback: self.feedback.clone(),
            next_global: self.next_global,
            tenants: self.tenants.clone(),
        }
    }

    /// Back from the snapshot form.
    pub(crate) fn from_image(image: DevicesImage) -> Self {
        let device_count = image.devices.values().map(BTreeMap::len).sum();
        DeviceState {
            devices: image.devices,
            device_count,
            feedback: image.feedback,
            next_global: image.next_global,
            tenants: image.tenants,
        }
    }
}

/// [`DeviceState`] in a snapshot (absent in images from before it existed: empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DevicesImage {
    devices: BTreeMap<String, BTreeMap<String, DeviceRecord>>,
    feedback: BTreeMap<u64, (String, FeedbackRecord)>,
    next_global: u64,
    tenants: BTreeMap<String, TenantFeedback>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(tenant: &str, token: &str, tags: &[&str], at_ms: u64) -> DeviceChange {
        DeviceChange {
            tenant: tenant.into(),
            token: token.into(),
            op: DeviceOp::Register {
                topic: "com.example.app".into(),
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                at_ms,
            },
        }
    }

    #[test]
    fn register_page_unregister_and_tenants_apart() {
        let mut s = DeviceState::default();
        assert_eq!(
            s.apply(&register("a", "01", &["x"], 1)),
            DeviceApplied::Added
        );
        assert_eq!(s.apply(&register("a", "02", &[], 1)), DeviceApplied::Added);
        assert_eq!(
            s.apply(&register("a", "01", &["x", "y"], 2)),
            DeviceApplied::Updated
        );
        assert_eq!(s.apply(&register("b", "01", &[], 1)), DeviceApplied::Added);
        assert_eq!(s.device_count(), 3);
        let tags = BTreeSet::from(["x".to_owned()]);
        let (page, more) = s.page("a", None, &tags, None, 10);
        assert_eq!(page.len(), 1);
        assert!(!more);
        let (page, more) = s.page("a", Some("com.example.app"), &BTreeSet::new(), None, 1);
        assert_eq!((page[0].0.as_str(), more), ("01", true));
        let (page, more) = s.page("a", None, &BTreeSet::new(), Some("01"), 1);
        assert_eq!((page[0].0.as_str(), more), ("02", false));
        let unregister = DeviceChange {
            tenant: "a".into(),
            token: "01".into(),
            op: DeviceOp::Unregister,
        };
        assert_eq!(s.apply(&unregister), DeviceApplied::Removed);
        assert_eq!(s.apply(&unregister), DeviceApplied::NotFound);
        assert_eq!(s.page("b", None, &BTreeSet::new(), None, 10).0.len(), 1);
        assert_eq!(s.device_count(), 2);
    }

    #[test]
    fn an_invalidation_logs_feedback_and_removes_older_registrations_only() {
        let mut s = DeviceState::default();
        s.apply(&register("a", "01", &[], 100));
        s.apply(&register("a", "02", &[], 300));
        s.invalidated("a", "01", 200);
        s.invalidated("a", "02", 200);
        let left: Vec<String> = s
            .page("a", None, &BTreeSet::new(), None, 10)
            .0
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(left, vec!["02"], "registered after the invalidation: stays");
        let slice = s.feedback_since("a", 0, 10);
        assert_eq!(slice.entries.len(), 2);
        assert_eq!(slice.next_cursor, 2);
        assert!(!slice.truncated);
        assert!(s.feedback_since("a", 2, 10).entries.is_empty());
        assert!(s.feedback_since("b", 0, 10).entries.is_empty());
    }

    #[test]
    fn feedback_is_bounded_and_a_stale_cursor_sees_truncated() {
        let mut s = DeviceState::default();
        for n in 0..FEEDBACK_ENTRIES_MAX + 5 {
            s.invalidated("a", &format!("{n:04x}"), n as u64);
        }
        let slice = s.feedback_since("a", 0, 3);
        assert!(slice.truncated);
        assert_eq!(slice.entries[0].seq, 5);
        assert_eq!(slice.next_cursor, 8);
        let image = s.image();
        assert_eq!(DeviceState::from_image(image), s);
    }

    #[test]
    fn the_registry_is_bounded() {
        let mut s = DeviceState {
            device_count: DEVICES_MAX,
            ..DeviceState::default()
        };
        assert_eq!(s.apply(&register("a", "01", &[], 1)), DeviceApplied::Full);
    }
}
