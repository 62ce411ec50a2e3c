//! The values of the `apns-*` request headers other than push type and topic:
//! `apns-collapse-id`, `apns-id`, `apns-priority` and `apns-expiration`.

use std::fmt;
use std::str::FromStr;

use http::HeaderName;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::COLLAPSE_ID_BYTES_MAX;
use crate::seams::{DetRng, Timestamp};

/// `apns-push-type`.
pub const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
/// `apns-topic`.
pub const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
/// `apns-priority`.
pub const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
/// `apns-expiration`.
pub const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
/// `apns-collapse-id`.
pub const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");
/// `apns-id` (request and response).
pub const APNS_ID: HeaderName = HeaderName::from_static("apns-id");

/// A validated `apns-collapse-id`: 1..=[`COLLAPSE_ID_BYTES_MAX`] bytes, no control
/// characters. Notifications with the same collapse id replace each other on the device.
///
/// ```
/// use herald_actors::apns::CollapseId;
///
/// assert!(CollapseId::new("score-update").is_ok());
/// assert!(CollapseId::new(&"x".repeat(65)).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CollapseId(String);

/// Why a string is not a collapse id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CollapseIdError {
    /// The collapse id is empty.
    #[error("collapse id is empty")]
    Empty,
    /// Longer than [`COLLAPSE_ID_BYTES_MAX`] bytes.
    #[error("collapse id is {len} bytes; at most {max} allowed")]
    TooLong {
        /// Length given, in bytes.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
    /// A control character (not allowed in an HTTP header value).
    #[error("collapse id has a control character at index {index}")]
    ControlChar {
        /// Byte index of the control character.
        index: usize,
    },
}

impl CollapseId {
    /// Validate a collapse id. Same as [`str::parse`].
    pub fn new(id: &str) -> Result<Self, CollapseIdError> {
        if id.is_empty() {
            return Err(CollapseIdError::Empty);
        }
        if id.len() > COLLAPSE_ID_BYTES_MAX {
            return Err(CollapseIdError::TooLong {
                len: id.len(),
                max: COLLAPSE_ID_BYTES_MAX,
            });
        }
        if let Some((index, _)) = id.char_indices().find(|(_, c)| c.is_control()) {
            return Err(CollapseIdError::ControlChar { index });
        }
        Ok(CollapseId(id.to_owned()))
    }

    /// The collapse id as sent in `apns-collapse-id`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated `apns-id`: a UUID, written in the canonical lowercase hyphenated
/// 8-4-4-4-12 form. Parsing accepts either case but only the hyphenated form, which is
/// the only one APNs accepts.
///
/// ```
/// use herald_actors::apns::ApnsId;
/// use herald_actors::seams::DetRng;
///
/// let id: ApnsId = "123E4567-E89B-12D3-A456-426614174000".parse().unwrap();
/// assert_eq!(id.to_string(), "123e4567-e89b-12d3-a456-426614174000");
/// let random = ApnsId::random(&mut DetRng::from_seed(1));
/// assert_eq!(random.to_string().len(), 36);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApnsId(uuid::Uuid);

/// Why a string is not an `apns-id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApnsIdError {
    /// Not a hyphenated 8-4-4-4-12 UUID of hex digits.
    #[error("apns-id {0:?} is not a hyphenated UUID (8-4-4-4-12 hex digits)")]
    NotUuid(String),
}

impl ApnsId {
    /// Parse a hyphenated UUID in any case. Same as [`str::parse`].
    pub fn new(id: &str) -> Result<Self, ApnsIdError> {
        let bytes = id.as_bytes();
        let shape_ok = bytes.len() == 36
            && bytes.iter().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        if !shape_ok {
            return Err(ApnsIdError::NotUuid(id.to_owned()));
        }
        uuid::Uuid::try_parse(id)
            .map(ApnsId)
            .map_err(|_| ApnsIdError::NotUuid(id.to_owned()))
    }

    /// A random (version 4) id drawn from `rng`.
    pub fn random(rng: &mut DetRng) -> Self {
        ApnsId(rng.uuid())
    }

    /// The UUID.
    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }

    /// The canonical lowercase hyphenated form (a stack buffer, no allocation).
    pub fn as_str(&self) -> ApnsIdStr {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        self.0.hyphenated().encode_lower(&mut buf);
        ApnsIdStr(buf)
    }
}

/// The text of an [`ApnsId`], returned by [`ApnsId::as_str`]; dereferences to `str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApnsIdStr([u8; uuid::fmt::Hyphenated::LENGTH]);

impl std::ops::Deref for ApnsIdStr {
    type Target = str;

    fn deref(&self) -> &str {
        // The buffer holds the ASCII output of `Hyphenated::encode_lower`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl AsRef<str> for ApnsIdStr {
    fn as_ref(&self) -> &str {
        self
    }
}

impl From<uuid::Uuid> for ApnsId {
    fn from(uuid: uuid::Uuid) -> Self {
        ApnsId(uuid)
    }
}

/// The `apns-priority` of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Priority {
    /// 10: send immediately.
    Immediate,
    /// 5: send at a time that takes the device's power into account.
    Normal,
    /// 1: prioritise the device's power over everything; never wake it.
    Low,
}

/// Why a value is not an `apns-priority`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PriorityError {
    /// Not 10, 5 or 1.
    #[error("apns-priority {0:?} is not 10, 5 or 1")]
    Invalid(String),
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 3] = [Priority::Immediate, Priority::Normal, Priority::Low];

    /// The header's numeric value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Priority::Immediate => 10,
            Priority::Normal => 5,
            Priority::Low => 1,
        }
    }

    /// The header value as text.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Immediate => "10",
            Priority::Normal => "5",
            Priority::Low => "1",
        }
    }
}

impl TryFrom<u8> for Priority {
    type Error = PriorityError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            10 => Ok(Priority::Immediate),
            5 => Ok(Priority::Normal),
            1 => Ok(Priority::Low),
            other => Err(PriorityError::Invalid(other.to_string())),
        }
    }
}

impl FromStr for Priority {
    type Err = PriorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| PriorityError::Invalid(s.to_owned()))
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Priority {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.as_u8())
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u8::deserialize(deserializer)?;
        Priority::try_from(value).map_err(serde::de::Error::custom)
    }
}

/// The `apns-expiration` of a notification.
///
/// The header carries whole seconds since the epoch; `0` means "deliver once or drop".
/// An [`Expiration::At`] is sent rounded down to the second, and one that rounds down
/// to `0` would read as [`Expiration::Immediately`], so it is sent as `1` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expiration {
    /// `0`: APNs tries to deliver once and does not store the notification.
    Immediately,
    /// APNs stores the notification and retries until this time.
    At(Timestamp),
}

/// Why a header value is not an `apns-expiration`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExpirationError {
    /// Not a non-negative integer number of seconds (ASCII digits only).
    #[error("apns-expiration {0:?} is not a whole number of seconds since the epoch")]
    NotSeconds(String),
}

impl Expiration {
    /// Parse a header value: `0` or epoch seconds. Same as [`str::parse`].
    pub fn from_header(value: &str) -> Result<Self, ExpirationError> {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ExpirationError::NotSeconds(value.to_owned()));
        }
        match value.parse::<u64>() {
            Ok(0) => Ok(Expiration::Immediately),
            Ok(secs) if secs <= u64::MAX / 1000 => Ok(Expiration::At(Timestamp::from_secs(secs))),
            _ => Err(ExpirationError::NotSeconds(value.to_owned())),
        }
    }

    /// The header's numeric value: epoch seconds, `0` for [`Expiration::Immediately`].
    pub fn as_secs(self) -> u64 {
        match self {
            Expiration::Immediately => 0,
            Expiration::At(t) => t.as_secs().max(1),
        }
    }

    /// True when a notification with this expiration must no longer be sent at `now`.
    ///
    /// [`Expiration::Immediately`] never expires here: Herald still makes its one attempt
    /// however long the push waited in its queue. `At(t)` expires once `now` is past `t`.
    pub fn is_expired(self, now: Timestamp) -> bool {
        match self {
            Expiration::Immediately => false,
            Expiration::At(t) => now > t,
        }
    }
}

impl FromStr for Expiration {
    type Err = ExpirationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expiration::from_header(s)
    }
}

impl fmt::Display for Expiration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_secs())
    }
}

impl Serialize for Expiration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.as_secs())
    }
}

impl<'de> Deserialize<'de> for Expiration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let secs = u64::deserialize(deserializer)?;
        Expiration::from_header(&secs.to_string()).map_err(serde::de::Error::custom)
    }
}

macro_rules! string_newtype_impls {
    ($ty:ident, $err:ident) => {
        impl FromStr for $ty {
            type Err = $err;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = $err;

            fn try_from(s: &str) -> Result<Self, Self::Error> {
                $ty::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = $err;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                $ty::new(&s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.as_str())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                $ty::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype_impls!(CollapseId, CollapseIdError);
string_newtype_impls!(ApnsId, ApnsIdError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_id_bounds() {
        assert!(CollapseId::new(&"a".repeat(COLLAPSE_ID_BYTES_MAX)).is_ok());
        assert_eq!(
            CollapseId::new(&"a".repeat(COLLAPSE_ID_BYTES_MAX + 1)),
            Err(CollapseIdError::TooLong {
                len: COLLAPSE_ID_BYTES_MAX + 1,
                max: COLLAPSE_ID_BYTES_MAX
            })
        );
        assert_eq!(CollapseId::new(""), Err(CollapseIdError::Empty));
        assert_eq!(
            CollapseId::new("a\tb"),
            Err(CollapseIdError::ControlChar { index: 1 })
        );
        // 22 three-byte characters: 66 bytes, too long although only 22 characters.
        assert!(matches!(
            CollapseId::new(&"€".repeat(22)),
            Err(CollapseIdError::TooLong { len: 66, .. })
        ));
        let id = CollapseId::new("score").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<CollapseId>(&json).unwrap(), id);
    }

    #[test]
    fn apns_id_forms() {
        let upper = "123E4567-E89B-12D3-A456-426614174000";
        let id = ApnsId::new(upper).unwrap();
        assert_eq!(id.to_string(), upper.to_lowercase());
        assert_eq!(&*id.as_str(), upper.to_lowercase());
        for bad in [
            "123e4567e89b12d3a456426614174000",
            "{123e4567-e89b-12d3-a456-426614174000}",
            "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-42661417400g",
            "123e4567-e89b-12d3-a456_426614174000",
            "",
        ] {
            assert!(ApnsId::new(bad).is_err(), "{bad}");
        }
        let a = ApnsId::random(&mut DetRng::from_seed(9));
        let b = ApnsId::random(&mut DetRng::from_seed(9));
        assert_eq!(a, b);
        assert_eq!(a.as_uuid().get_version_num(), 4);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<ApnsId>(&json).unwrap(), a);
    }

    #[test]
    fn priority_values() {
        for p in Priority::ALL {
            assert_eq!(Priority::try_from(p.as_u8()), Ok(p));
            assert_eq!(p.to_string().parse::<Priority>(), Ok(p));
            assert_eq!(p.as_str(), p.as_u8().to_string());
        }
        assert!(Priority::try_from(0).is_err());
        assert!("05".parse::<Priority>().is_err());
        assert!(serde_json::from_str::<Priority>("7").is_err());
        assert_eq!(serde_json::to_string(&Priority::Normal).unwrap(), "5");
    }

    #[test]
    fn expiration_values() {
        assert_eq!("0".parse(), Ok(Expiration::Immediately));
        let at = Expiration::At(Timestamp::from_secs(1_700_000_000));
        assert_eq!("1700000000".parse(), Ok(at));
        assert_eq!(at.to_string(), "1700000000");
        assert_eq!(Expiration::Immediately.to_string(), "0");
        for bad in ["", "-1", "+5", " 5", "1.5", "abc", "99999999999999999999"] {
            assert!(bad.parse::<Expiration>().is_err(), "{bad}");
        }
        assert!(!at.is_expired(Timestamp::from_secs(1_700_000_000)));
        assert!(at.is_expired(Timestamp::from_millis(1_700_000_000_001)));
        assert!(!Expiration::Immediately.is_expired(Timestamp::from_secs(u64::MAX / 1000)));
        // Rounding never turns a real deadline into "deliver once".
        assert_eq!(Expiration::At(Timestamp::from_millis(500)).as_secs(), 1);
        let json = serde_json::to_string(&at).unwrap();
        assert_eq!(serde_json::from_str::<Expiration>(&json).unwrap(), at);
    }
}
