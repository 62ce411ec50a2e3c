//! The `apns-push-type` header and the rules each push type brings with it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::apns::Priority;
use crate::limits::{PAYLOAD_BYTES_MAX, PAYLOAD_VOIP_BYTES_MAX};

/// The kind of notification (`apns-push-type`). It fixes the topic suffix, the payload
/// limit and the priorities APNs accepts.
///
/// ```
/// use herald_actors::apns::{Priority, PushType};
///
/// let push_type: PushType = "voip".parse().unwrap();
/// assert_eq!(push_type.topic_suffix(), Some(".voip"));
/// assert_eq!(push_type.payload_bytes_max(), 5120);
/// assert_eq!(PushType::Background.allowed_priorities(), &[Priority::Normal]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PushType {
    /// A user-visible alert, badge or sound. Topic: the bundle id.
    Alert,
    /// Content delivered in the background without user interaction. Topic: the bundle id.
    Background,
    /// A location query for a Location Push Service Extension. Topic: `<bundle>.location-query`.
    Location,
    /// A PushKit VoIP call invitation. Topic: `<bundle>.voip`.
    Voip,
    /// A watchOS complication update. Topic: `<bundle>.complication`.
    Complication,
    /// A File Provider change signal. Topic: `<bundle>.pushkit.fileprovider`.
    FileProvider,
    /// A wake-up for a managed device to contact its MDM server. Topic: the MDM push topic.
    Mdm,
    /// A Live Activity update. Topic: `<bundle>.push-type.liveactivity`.
    LiveActivity,
    /// A Push to Talk update. Topic: `<bundle>.voip-ptt`.
    PushToTalk,
    /// A WidgetKit reload. Topic: `<bundle>.push-type.widgets`.
    Widgets,
    /// A Control Center controls reload. Topic: `<bundle>.push-type.controls`.
    Controls,
}

/// The string is not a push type APNs knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushTypeError {
    /// Not one of the documented `apns-push-type` values (they are lowercase).
    #[error("unknown apns-push-type {0:?}")]
    Unknown(String),
}

impl PushType {
    /// Every push type, in declaration order.
    pub const ALL: [PushType; 11] = [
        PushType::Alert,
        PushType::Background,
        PushType::Location,
        PushType::Voip,
        PushType::Complication,
        PushType::FileProvider,
        PushType::Mdm,
        PushType::LiveActivity,
        PushType::PushToTalk,
        PushType::Widgets,
        PushType::Controls,
    ];

    /// The `apns-push-type` header value.
    pub const fn as_str(self) -> &'static str {
        match self {
            PushType::Alert => "alert",
            PushType::Background => "background",
            PushType::Location => "location",
            PushType::Voip => "voip",
            PushType::Complication => "complication",
            PushType::FileProvider => "fileprovider",
            PushType::Mdm => "mdm",
            PushType::LiveActivity => "liveactivity",
            PushType::PushToTalk => "pushtotalk",
            PushType::Widgets => "widgets",
            PushType::Controls => "controls",
        }
    }

    /// The suffix APNs requires on the bundle id in `apns-topic`, or `None` when the topic
    /// is the bare bundle id (alert, background) or not derived from one (mdm).
    pub const fn topic_suffix(self) -> Option<&'static str> {
        match self {
            PushType::Alert | PushType::Background | PushType::Mdm => None,
            PushType::Location => Some(".location-query"),
            PushType::Voip => Some(".voip"),
            PushType::Complication => Some(".complication"),
            PushType::FileProvider => Some(".pushkit.fileprovider"),
            PushType::LiveActivity => Some(".push-type.liveactivity"),
            PushType::PushToTalk => Some(".voip-ptt"),
            PushType::Widgets => Some(".push-type.widgets"),
            PushType::Controls => Some(".push-type.controls"),
        }
    }

    /// The largest serialized payload APNs accepts for this push type (bytes):
    /// [`PAYLOAD_VOIP_BYTES_MAX`] for VoIP, [`PAYLOAD_BYTES_MAX`] otherwise.
    pub const fn payload_bytes_max(self) -> usize {
        match self {
            PushType::Voip => PAYLOAD_VOIP_BYTES_MAX,
            _ => PAYLOAD_BYTES_MAX,
        }
    }

    /// The `apns-priority` values Herald lets through for this push type, most urgent first.
    ///
    /// Herald is conservative: it allows only what Apple documents for the type, so a
    /// request APNs would refuse with `BadPriority` (or silently deprioritise) never leaves.
    /// - **alert**: 10, 5 or 1 (Apple: 10 for immediate action, else 5; 1 saves power).
    /// - **background**: 5 only (Apple: "always use priority 5; using 10 is an error").
    /// - **location**: 10 or 5 (Apple: 10 when an immediate answer is needed, else 5).
    /// - **voip**, **complication**, **mdm**: 10 or 5. Apple documents no rule; 1 ("never
    ///   wake the device") defeats their purpose, so Herald refuses it.
    /// - **fileprovider**: 10 or 5, for the same reason.
    /// - **liveactivity**: 10 or 5 (Apple: 5 for updates that need not alert, 10 counts
    ///   against the update budget).
    /// - **pushtotalk**: 10 only (Apple: "set apns-priority to 10").
    /// - **widgets**, **controls**: 10 or 5 (second-hand; nothing else is documented).
    pub const fn allowed_priorities(self) -> &'static [Priority] {
        match self {
            PushType::Alert => &[Priority::Immediate, Priority::Normal, Priority::Low],
            PushType::Background => &[Priority::Normal],
            PushType::PushToTalk => &[Priority::Immediate],
            PushType::Location
            | PushType::Voip
            | PushType::Complication
            | PushType::FileProvider
            | PushType::Mdm
            | PushType::LiveActivity
            | PushType::Widgets
            | PushType::Controls => &[Priority::Immediate, Priority::Normal],
        }
    }

    /// True when `priority` is in [`PushType::allowed_priorities`].
    pub fn allows_priority(self, priority: Priority) -> bool {
        self.allowed_priorities().contains(&priority)
    }

    /// The priority used when none is set: 5 for background, 10 (APNs' own default) for
    /// everything else. Always one of [`PushType::allowed_priorities`].
    pub const fn default_priority(self) -> Priority {
        match self {
            PushType::Background => Priority::Normal,
            _ => Priority::Immediate,
        }
    }
}

impl fmt::Display for PushType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PushType {
    type Err = PushTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PushType::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| PushTypeError::Unknown(s.to_owned()))
    }
}

impl TryFrom<&str> for PushType {
    type Error = PushTypeError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl Serialize for PushType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PushType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in PushType::ALL {
            assert_eq!(p.as_str().parse::<PushType>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<PushType>(&json).unwrap(), p);
        }
        assert!("Alert".parse::<PushType>().is_err());
        assert!("".parse::<PushType>().is_err());
    }

    #[test]
    fn default_priority_is_allowed() {
        for p in PushType::ALL {
            assert!(p.allows_priority(p.default_priority()), "{p}");
            assert!(!p.allowed_priorities().is_empty());
        }
        assert!(!PushType::Background.allows_priority(Priority::Immediate));
        assert!(!PushType::PushToTalk.allows_priority(Priority::Normal));
    }

    #[test]
    fn suffixes_are_distinct_and_not_suffixes_of_each_other() {
        let suffixes: Vec<_> = PushType::ALL
            .iter()
            .filter_map(|p| p.topic_suffix())
            .collect();
        for (i, a) in suffixes.iter().enumerate() {
            for (j, b) in suffixes.iter().enumerate() {
                if i != j {
                    assert!(!a.ends_with(b), "{a} ends with {b}");
                }
            }
        }
        assert_eq!(PushType::Voip.payload_bytes_max(), PAYLOAD_VOIP_BYTES_MAX);
        assert_eq!(PushType::Alert.payload_bytes_max(), PAYLOAD_BYTES_MAX);
    }
}
