//! The versioned wire forms of routing: a forwarded push and a push's outcome, rmp-serde
//! encoded inside [`PeerMessage::ForwardPush`](crate::transport::PeerMessage::ForwardPush) and
//! [`PeerMessage::Outcome`](crate::transport::PeerMessage::Outcome). Both sides check the same
//! rules: [`encode_push`] refuses what [`decode_push`] would refuse.
//!
//! ```
//! use herald_actors::apns::{DeviceToken, Notification, PushType};
//! use herald_actors::PushId;
//! use herald_cluster::routing::wire::{ForwardedPush, decode_push, encode_push};
//!
//! let id = PushId::from_u128(7);
//! let mut builder = Notification::builder(
//!     DeviceToken::new(&"ab".repeat(32)).unwrap(), "com.example.app".parse().unwrap(), PushType::Alert);
//! builder.raw_payload(r#"{"aps":{"alert":"hi"}}"#).apns_id(id.apns_id());
//! let push = ForwardedPush::new("acme", 3, "eu", 2, id, builder.build().unwrap());
//! let bytes = encode_push(&push).unwrap();
//! assert_eq!(decode_push(&bytes).unwrap(), push);
//! assert!(decode_push(b"garbage").is_err());
//! ```

use herald_actors::apns::Notification;
use herald_actors::outcome::{Outcome, PushId, StoredOutcome};
use serde::{Deserialize, Serialize};

use crate::state::{IDENTIFIER_BYTES_MAX, SHARDS_MAX};

/// The encoding version of [`ForwardedPush`] and of the outcome form this build writes and reads.
pub const ROUTING_WIRE_VERSION: u16 = 1;

/// A push on its way to its shard's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedPush {
    /// [`ROUTING_WIRE_VERSION`].
    pub version: u16,
    /// The tenant it was accepted for.
    pub tenant: String,
    /// Its shard (the engine's `shard_of` of its device token).
    pub shard: u32,
    /// The region whose shard map routed it.
    pub region: String,
    /// That map's epoch when the origin routed it.
    pub epoch: u64,
    /// The push id (also the notification's `apns-id`), big-endian.
    pub push_id: [u8; 16],
    /// The notification (re-validated on decode).
    pub notification: Notification,
}

impl ForwardedPush {
    /// A push of the current version.
    pub fn new(
        tenant: impl Into<String>,
        shard: u32,
        region: impl Into<String>,
        epoch: u64,
        push_id: PushId,
        notification: Notification,
    ) -> Self {
        ForwardedPush {
            version: ROUTING_WIRE_VERSION,
            tenant: tenant.into(),
            shard,
            region: region.into(),
            epoch,
            push_id: push_id.as_u128().to_be_bytes(),
            notification,
        }
    }

    /// The push id.
    pub fn id(&self) -> PushId {
        PushId::from_u128(u128::from_be_bytes(self.push_id))
    }

    /// Check the rules of the wire form.
    ///
    /// # Errors
    /// [`WireError`] naming the first broken rule.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.version != ROUTING_WIRE_VERSION {
            return Err(WireError::Version(self.version));
        }
        check_identifier("tenant", &self.tenant)?;
        check_identifier("region", &self.region)?;
        if self.shard as usize >= SHARDS_MAX {
            return Err(WireError::Invalid(format!(
                "shard {} outside 0..{SHARDS_MAX}",
                self.shard
            )));
        }
        match self.notification.apns_id() {
            Some(apns_id) if PushId::from(apns_id) == self.id() => Ok(()),
            _ => Err(WireError::Invalid(
                "the notification's apns-id differs from the push id".to_owned(),
            )),
        }
    }
}

/// Why a routing wire form could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Not of [`ROUTING_WIRE_VERSION`].
    #[error("unsupported routing wire version {0}")]
    Version(u16),
    /// The bytes are not the expected rmp-serde structure (or a field fails its checks).
    #[error("malformed: {0}")]
    Malformed(String),
    /// A field breaks a rule.
    #[error("invalid: {0}")]
    Invalid(String),
    /// This build cannot put the value on the wire (an outcome kind it does not know).
    #[error("not encodable: {0}")]
    Unsupported(String),
}

/// Encode a forwarded push after checking it.
///
/// # Errors
/// [`WireError`] if it breaks a rule or cannot be serialized.
pub fn encode_push(push: &ForwardedPush) -> Result<Vec<u8>, WireError> {
    push.validate()?;
    rmp_serde::to_vec(push).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Decode and check a forwarded push (the notification is re-validated field by field).
///
/// # Errors
/// [`WireError`] for undecodable bytes, trailing bytes, another version or a broken rule.
pub fn decode_push(bytes: &[u8]) -> Result<ForwardedPush, WireError> {
    let push: ForwardedPush = decode_exact(bytes)?;
    push.validate()?;
    Ok(push)
}

/// The wire form of an [`Outcome`]: the engine's own serializable form, versioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OutcomeEnvelope {
    version: u16,
    outcome: StoredOutcome,
}

/// Encode a push's outcome.
///
/// # Errors
/// [`WireError::Malformed`] if it cannot be serialized.
pub fn encode_outcome(outcome: &Outcome) -> Result<Vec<u8>, WireError> {
    rmp_serde::to_vec(&OutcomeEnvelope {
        version: ROUTING_WIRE_VERSION,
        outcome: StoredOutcome::from(outcome),
    })
    .map_err(|e| WireError::Malformed(e.to_string()))
}

/// Decode a push's outcome.
///
/// # Errors
/// [`WireError`] for undecodable bytes, another version or an unknown APNs reason.
pub fn decode_outcome(bytes: &[u8]) -> Result<Outcome, WireError> {
    let envelope: OutcomeEnvelope = decode_exact(bytes)?;
    if envelope.version != ROUTING_WIRE_VERSION {
        return Err(WireError::Version(envelope.version));
    }
    envelope.outcome.to_outcome().map_err(WireError::Invalid)
}

fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let mut reader = bytes;
    let value = rmp_serde::decode::from_read(&mut reader)
        .map_err(|e: rmp_serde::decode::Error| WireError::Malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            reader.len()
        )));
    }
    Ok(value)
}

fn check_identifier(what: &str, value: &str) -> Result<(), WireError> {
    if value.is_empty() || value.len() > IDENTIFIER_BYTES_MAX {
        return Err(WireError::Invalid(format!(
            "{what} of {} bytes outside 1..={IDENTIFIER_BYTES_MAX}",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_actors::apns::{DeviceToken, PushType, Reason};
    use herald_actors::outcome::Failure;
    use herald_actors::seams::Timestamp;

    fn notification(id: PushId) -> Notification {
        let mut builder = Notification::builder(
            DeviceToken::new(&"0f".repeat(32)).unwrap(),
            "com.example.app".parse().unwrap(),
            PushType::Alert,
        );
        builder
            .raw_payload(r#"{"aps":{"alert":"x"}}"#)
            .apns_id(id.apns_id());
        builder.build().unwrap()
    }

    #[test]
    fn push_round_trips_and_rules_hold_on_both_sides() {
        let id = PushId::from_u128(0xfeed);
        let push = ForwardedPush::new("t", 1, "eu", 9, id, notification(id));
        assert_eq!(decode_push(&encode_push(&push).unwrap()).unwrap(), push);

        let mut other = push.clone();
        other.push_id = PushId::from_u128(1).as_u128().to_be_bytes();
        assert!(matches!(encode_push(&other), Err(WireError::Invalid(_))));
        assert!(matches!(
            decode_push(&rmp_serde::to_vec(&other).unwrap()),
            Err(WireError::Invalid(_))
        ));
        let mut old = push.clone();
        old.version = 0;
        assert_eq!(
            decode_push(&rmp_serde::to_vec(&old).unwrap()),
            Err(WireError::Version(0))
        );
        let mut empty = push.clone();
        empty.tenant.clear();
        assert!(encode_push(&empty).is_err());
        let mut trailing = encode_push(&push).unwrap();
        trailing.push(0);
        assert!(matches!(
            decode_push(&trailing),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn outcomes_round_trip() {
        let outcomes = [
            Outcome::Delivered {
                apns_id: Some("x".into()),
            },
            Outcome::Unregistered {
                at: Timestamp::from_millis(1234),
            },
            Outcome::Failed {
                reason: Failure::Rejected(Reason::BadDeviceToken),
            },
            Outcome::Failed {
                reason: Failure::AttemptsExhausted("503".into()),
            },
            Outcome::Failed {
                reason: Failure::TenantRemoved,
            },
            Outcome::Expired,
            Outcome::Coalesced {
                by: PushId::from_u128(5),
            },
            Outcome::Failed {
                reason: Failure::NotAccepted("disk full".into()),
            },
        ];
        for outcome in outcomes {
            assert_eq!(
                decode_outcome(&encode_outcome(&outcome).unwrap()).unwrap(),
                outcome
            );
        }
        assert!(decode_outcome(&[0xc1]).is_err());
    }
}
