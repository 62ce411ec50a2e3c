//! Device tokens: the hex string that names one app on one device.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{DEVICE_TOKEN_HEX_MAX, DEVICE_TOKEN_HEX_MIN};

/// A validated APNs device token: an even number of hex digits, between
/// [`DEVICE_TOKEN_HEX_MIN`] and [`DEVICE_TOKEN_HEX_MAX`] long, normalised to lowercase.
///
/// Apple's tokens are 64 hex digits today, but Apple warns they may grow, so Herald
/// never relies on one length. Nothing but hex digits is accepted: no whitespace, no
/// `0x` prefix, no `<…>` brackets.
///
/// Clones share the text (a push's token is cloned into its outcome, keys and streams).
///
/// ```
/// use herald_actors::apns::DeviceToken;
///
/// let token: DeviceToken = "00FFab".repeat(8).parse().unwrap();
/// assert_eq!(token.as_str(), "00ffab".repeat(8));
/// assert!("not hex".parse::<DeviceToken>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceToken(std::sync::Arc<str>);

/// Why a string is not a device token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceTokenError {
    /// A character that is not a hex digit.
    #[error("device token has a non-hex character {ch:?} at index {index}")]
    NonHex {
        /// Byte index of the offending character.
        index: usize,
        /// The offending character.
        ch: char,
    },
    /// An odd number of hex digits (a token is whole bytes).
    #[error("device token has an odd number of hex digits ({len})")]
    OddLength {
        /// Number of hex digits given.
        len: usize,
    },
    /// Fewer hex digits than [`DEVICE_TOKEN_HEX_MIN`].
    #[error("device token is {len} hex digits; at least {min} required")]
    TooShort {
        /// Number of hex digits given.
        len: usize,
        /// The smallest length accepted.
        min: usize,
    },
    /// More hex digits than [`DEVICE_TOKEN_HEX_MAX`].
    #[error("device token is {len} hex digits; at most {max} allowed")]
    TooLong {
        /// Number of hex digits given.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
}

impl DeviceToken {
    /// Parse a hex token (any case). Same as [`str::parse`].
    pub fn new(hex: &str) -> Result<Self, DeviceTokenError> {
        if let Some((index, ch)) = hex.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(DeviceTokenError::NonHex { index, ch });
        }
        let len = hex.len();
        if !len.is_multiple_of(2) {
            return Err(DeviceTokenError::OddLength { len });
        }
        if len < DEVICE_TOKEN_HEX_MIN {
            return Err(DeviceTokenError::TooShort {
                len,
                min: DEVICE_TOKEN_HEX_MIN,
            });
        }
        if len > DEVICE_TOKEN_HEX_MAX {
            return Err(DeviceTokenError::TooLong {
                len,
                max: DEVICE_TOKEN_HEX_MAX,
            });
        }
        Ok(DeviceToken(hex.to_ascii_lowercase().into()))
    }

    /// The token for the raw bytes an app receives from the system (`Data` on iOS).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DeviceTokenError> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            hex.push(char::from(DIGITS[usize::from(b >> 4)]));
            hex.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        DeviceToken::new(&hex)
    }

    /// The token as lowercase hex, as it appears in the request path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The token's raw bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes().collect()
    }

    /// The token's bytes, decoded from its hex form one by one (no allocation).
    pub fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.0
            .as_bytes()
            .chunks_exact(2)
            .map(|pair| (hex_value(pair[0]) << 4) | hex_value(pair[1]))
    }
}

/// The value of one lowercase hex digit (the token is validated, so nothing else occurs).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => 0,
    }
}

impl FromStr for DeviceToken {
    type Err = DeviceTokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceToken::new(s)
    }
}

impl TryFrom<&str> for DeviceToken {
    type Error = DeviceTokenError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        DeviceToken::new(s)
    }
}

impl TryFrom<String> for DeviceToken {
    type Error = DeviceTokenError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        DeviceToken::new(&s)
    }
}

impl fmt::Display for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DeviceToken {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for DeviceToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        DeviceToken::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_64() -> String {
        "0123456789ABCDEF".repeat(4)
    }

    #[test]
    fn accepts_and_lowercases() {
        let token = DeviceToken::new(&token_64()).unwrap();
        assert_eq!(token.as_str(), token_64().to_lowercase());
        assert_eq!(token.to_string(), token.as_str());
        assert_eq!(DeviceToken::from_bytes(&token.to_bytes()).unwrap(), token);
    }

    #[test]
    fn accepts_every_even_length_in_range() {
        for len in (DEVICE_TOKEN_HEX_MIN..=DEVICE_TOKEN_HEX_MAX).step_by(2) {
            assert!(DeviceToken::new(&"a".repeat(len)).is_ok(), "{len}");
        }
    }

    #[test]
    fn names_the_rule_that_failed() {
        assert_eq!(
            DeviceToken::new(&format!(" {}", token_64())),
            Err(DeviceTokenError::NonHex { index: 0, ch: ' ' })
        );
        assert_eq!(
            DeviceToken::new("0xab"),
            Err(DeviceTokenError::NonHex { index: 1, ch: 'x' })
        );
        assert_eq!(
            DeviceToken::new(&"a".repeat(65)),
            Err(DeviceTokenError::OddLength { len: 65 })
        );
        assert_eq!(
            DeviceToken::new(""),
            Err(DeviceTokenError::TooShort {
                len: 0,
                min: DEVICE_TOKEN_HEX_MIN
            })
        );
        let long = "a".repeat(DEVICE_TOKEN_HEX_MAX + 2);
        assert_eq!(
            DeviceToken::new(&long),
            Err(DeviceTokenError::TooLong {
                len: DEVICE_TOKEN_HEX_MAX + 2,
                max: DEVICE_TOKEN_HEX_MAX
            })
        );
        assert!(matches!(
            DeviceToken::new("ééé"),
            Err(DeviceTokenError::NonHex { index: 0, ch: 'é' })
        ));
    }

    #[test]
    fn serde_validates() {
        let token = DeviceToken::new(&token_64()).unwrap();
        let json = serde_json::to_string(&token).unwrap();
        assert_eq!(json, format!("\"{}\"", token.as_str()));
        assert_eq!(serde_json::from_str::<DeviceToken>(&json).unwrap(), token);
        assert!(serde_json::from_str::<DeviceToken>("\"xyz\"").is_err());
    }
}
