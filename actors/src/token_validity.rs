//! What the shards know about device tokens: which ones APNs invalidated, and when.
//!
//! A shard checks [`TokenValidity::invalidated_at`] before every send (an invalidated token
//! gets outcome `Unregistered` without a send) and records Apple's 410 timestamps with
//! [`TokenValidity::record_invalidation`]. Invalidations are last-writer-wins by timestamp:
//! a later timestamp replaces an earlier one, an earlier one is ignored. The cluster plugs its
//! replicated token state in through this trait.
//!
//! ```
//! use herald_actors::apns::DeviceToken;
//! use herald_actors::seams::Timestamp;
//! use herald_actors::token_validity::{MemoryTokenValidity, TokenValidity};
//!
//! let tokens = MemoryTokenValidity::default();
//! let token: DeviceToken = "ab".repeat(32).parse().unwrap();
//! assert_eq!(tokens.invalidated_at(&token), None);
//! tokens.record_invalidation(&token, Timestamp::from_secs(20));
//! tokens.record_invalidation(&token, Timestamp::from_secs(10)); // older: ignored
//! assert_eq!(tokens.invalidated_at(&token), Some(Timestamp::from_secs(20)));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::apns::DeviceToken;
use crate::seams::Timestamp;

/// A shared token-validity view.
pub type SharedTokenValidity = Arc<dyn TokenValidity>;

/// The device-token state the shards consult. See the [module docs](self).
pub trait TokenValidity: Send + Sync + fmt::Debug + 'static {
    /// When `token` was invalidated, if it is invalid now.
    fn invalidated_at(&self, token: &DeviceToken) -> Option<Timestamp>;
    /// APNs said `token` stopped being valid at `at`.
    fn record_invalidation(&self, token: &DeviceToken, at: Timestamp);
}

/// Token validity in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryTokenValidity {
    invalid: Mutex<BTreeMap<DeviceToken, Timestamp>>,
}

impl TokenValidity for MemoryTokenValidity {
    fn invalidated_at(&self, token: &DeviceToken) -> Option<Timestamp> {
        self.invalid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .copied()
    }

    fn record_invalidation(&self, token: &DeviceToken, at: Timestamp) {
        let mut invalid = self.invalid.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = invalid.entry(token.clone()).or_insert(at);
        if *entry < at {
            *entry = at;
        }
    }
}
