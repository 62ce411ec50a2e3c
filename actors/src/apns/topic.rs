//! The `apns-topic` header: a bundle id, possibly with a push-type suffix.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::apns::PushType;
use crate::limits::TOPIC_BYTES_MAX;

/// A validated `apns-topic`: a reverse-DNS name (`com.example.app`), optionally carrying
/// a push-type suffix (`com.example.app.voip`).
///
/// Rules: 1..=[`TOPIC_BYTES_MAX`] bytes; only ASCII letters, digits, `.`, `-` and `_`
/// (no whitespace or control characters); at least two dot-separated labels, none empty.
///
/// ```
/// use herald_actors::apns::{PushType, Topic};
///
/// let topic: Topic = "com.example.app.voip".parse().unwrap();
/// assert_eq!(topic.suffix(), Some(".voip"));
/// assert_eq!(topic.suffix_push_type(), Some(PushType::Voip));
/// assert_eq!(topic.base_topic(), "com.example.app");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topic(String);

/// Why a string is not a topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic is empty.
    #[error("topic is empty")]
    Empty,
    /// Longer than [`TOPIC_BYTES_MAX`].
    #[error("topic is {len} bytes; at most {max} allowed")]
    TooLong {
        /// Length given, in bytes.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
    /// A character other than an ASCII letter, digit, `.`, `-` or `_`.
    #[error("topic has an invalid character {ch:?} at index {index}")]
    InvalidChar {
        /// Byte index of the offending character.
        index: usize,
        /// The offending character.
        ch: char,
    },
    /// Not a reverse-DNS name: a single label, or an empty label (leading, trailing or
    /// doubled dot).
    #[error("topic {0:?} is not a reverse-DNS name like com.example.app")]
    NotReverseDns(String),
}

impl Topic {
    /// Parse and validate a topic. Same as [`str::parse`].
    pub fn new(topic: &str) -> Result<Self, TopicError> {
        if topic.is_empty() {
            return Err(TopicError::Empty);
        }
        if topic.len() > TOPIC_BYTES_MAX {
            return Err(TopicError::TooLong {
                len: topic.len(),
                max: TOPIC_BYTES_MAX,
            });
        }
        if let Some((index, ch)) = topic
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(TopicError::InvalidChar { index, ch });
        }
        if !topic.contains('.') || topic.split('.').any(str::is_empty) {
            return Err(TopicError::NotReverseDns(topic.to_owned()));
        }
        Ok(Topic(topic.to_owned()))
    }

    /// The topic for `push_type` built on this topic's bundle id: `base_topic()` plus the
    /// push type's suffix.
    pub fn for_push_type(&self, push_type: PushType) -> Result<Topic, TopicError> {
        match push_type.topic_suffix() {
            Some(suffix) => Topic::new(&format!("{}{suffix}", self.base_topic())),
            None => Topic::new(self.base_topic()),
        }
    }

    /// The topic as sent in `apns-topic`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The push-type suffix this topic ends with (`.voip`, `.push-type.liveactivity`, …),
    /// if any.
    pub fn suffix(&self) -> Option<&'static str> {
        self.suffix_push_type().and_then(PushType::topic_suffix)
    }

    /// The push type whose suffix this topic ends with, if any.
    pub fn suffix_push_type(&self) -> Option<PushType> {
        PushType::ALL.into_iter().find(|p| {
            p.topic_suffix()
                .is_some_and(|s| self.0.len() > s.len() && self.0.ends_with(s))
        })
    }

    /// The topic without its push-type suffix: the app's bundle id.
    pub fn base_topic(&self) -> &str {
        match self.suffix() {
            Some(suffix) => &self.0[..self.0.len() - suffix.len()],
            None => &self.0,
        }
    }
}

impl FromStr for Topic {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::new(s)
    }
}

impl TryFrom<&str> for Topic {
    type Error = TopicError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Topic::new(s)
    }
}

impl TryFrom<String> for Topic {
    type Error = TopicError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Topic::new(&s)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Topic::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_bundle_ids_and_suffixes() {
        for ok in [
            "com.example.app",
            "com.example.my-app_2",
            "com.apple.mgmt.External.6f1c3b0e-0b3a-4c39-9e0e-4bd0f5b5c1a2",
        ] {
            let topic = Topic::new(ok).unwrap();
            assert_eq!(topic.suffix(), None, "{ok}");
            assert_eq!(topic.base_topic(), ok);
        }
        let base = Topic::new("com.example.app").unwrap();
        for p in PushType::ALL {
            let topic = base.for_push_type(p).unwrap();
            assert_eq!(topic.suffix(), p.topic_suffix());
            assert_eq!(topic.base_topic(), "com.example.app");
            assert_eq!(topic.for_push_type(PushType::Alert).unwrap(), base);
        }
        let ptt = Topic::new("com.example.app.voip-ptt").unwrap();
        assert_eq!(ptt.suffix_push_type(), Some(PushType::PushToTalk));
    }

    #[test]
    fn rejects_with_the_rule_that_failed() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(
            Topic::new("com.example app"),
            Err(TopicError::InvalidChar { index: 11, ch: ' ' })
        );
        assert_eq!(
            Topic::new("com.example\n"),
            Err(TopicError::InvalidChar {
                index: 11,
                ch: '\n'
            })
        );
        for bad in [
            "example",
            ".com.example",
            "com.example.",
            "com..example",
            ".",
        ] {
            assert!(
                matches!(Topic::new(bad), Err(TopicError::NotReverseDns(_))),
                "{bad}"
            );
        }
        let long = format!("com.{}", "a".repeat(TOPIC_BYTES_MAX));
        assert!(matches!(Topic::new(&long), Err(TopicError::TooLong { .. })));
        let at_limit = format!("com.{}", "a".repeat(TOPIC_BYTES_MAX - 4));
        assert!(Topic::new(&at_limit).is_ok());
    }

    #[test]
    fn serde_validates() {
        let topic = Topic::new("com.example.app").unwrap();
        let json = serde_json::to_string(&topic).unwrap();
        assert_eq!(serde_json::from_str::<Topic>(&json).unwrap(), topic);
        assert!(serde_json::from_str::<Topic>("\"no spaces allowed\"").is_err());
    }
}
