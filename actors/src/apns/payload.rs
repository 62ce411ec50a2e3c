//! The JSON payload: the `aps` dictionary Apple defines plus the app's own keys.
//!
//! [`Payload`] covers every documented `aps` key with Apple's exact (kebab-case) names
//! and keeps unknown `aps` keys it reads from raw JSON, so nothing Apple adds later is
//! lost. Sizes are checked on the serialized bytes, the way APNs measures them.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::seams::Timestamp;

/// A notification payload: `{"aps": {...}, <custom keys>...}`.
///
/// ```
/// use herald_actors::apns::{AlertDictionary, Payload, Sound};
///
/// let mut payload = Payload::new();
/// payload
///     .alert(AlertDictionary::new().title("Goal!").body("2-1 in the 90th minute"))
///     .badge(3)
///     .sound(Sound::named("default"))
///     .thread_id("match-42");
/// payload.custom("match", serde_json::json!(42)).unwrap();
/// let bytes = payload.to_bytes(4096).unwrap();
/// let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
/// assert_eq!(json["aps"]["alert"]["title"], "Goal!");
/// assert_eq!(json["aps"]["thread-id"], "match-42");
/// assert_eq!(json["match"], 42);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    aps: Aps,
    custom: BTreeMap<String, Value>,
}

/// The `aps` dictionary. Every field is optional and omitted from the JSON when absent.
///
/// Fields are public for reading and direct edits; [`Payload::to_bytes`] checks the
/// ranges (`relevance-score`) whichever way a value was set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct Aps {
    /// `alert`: the text shown to the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<Alert>,
    /// `badge`: the number on the app icon (0 removes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub badge: Option<u32>,
    /// `sound`: a sound file name, or a critical-alert sound dictionary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sound: Option<Sound>,
    /// `content-available`: 1 wakes the app in the background.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_available: Option<u8>,
    /// `mutable-content`: 1 lets a Notification Service Extension modify the notification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutable_content: Option<u8>,
    /// `category`: the notification category (actionable notifications).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// `thread-id`: groups notifications.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// `target-content-id`: the window or content to bring forward.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_content_id: Option<String>,
    /// `interruption-level`: how strongly the notification interrupts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interruption_level: Option<InterruptionLevel>,
    /// `relevance-score`: 0.0–1.0, used to pick the featured notification in a summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relevance_score: Option<f64>,
    /// `filter-criteria`: the Focus filter this notification matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_criteria: Option<String>,
    /// `stale-date` (Live Activities): epoch seconds after which the content is stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_date: Option<u64>,
    /// `content-state` (Live Activities): the new dynamic content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_state: Option<Value>,
    /// `timestamp` (Live Activities): epoch seconds when the update was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// `event` (Live Activities): start, update or end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<LiveActivityEvent>,
    /// `dismissal-date` (Live Activities): epoch seconds when an ended activity goes away.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dismissal_date: Option<u64>,
    /// `attributes-type` (Live Activities, start): the activity's attributes type name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes_type: Option<String>,
    /// `attributes` (Live Activities, start): the activity's static attributes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Value>,
    /// Any other `aps` key (read from raw JSON, or set with [`Payload::aps_field`]).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// The `alert` value: a plain string, or a dictionary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Alert {
    /// `"alert": "text"`: the body alone.
    Text(String),
    /// `"alert": {...}`: title, body, localisation keys and so on.
    Dictionary(Box<AlertDictionary>),
}

/// The `alert` dictionary. Build it with [`AlertDictionary::new`] and the setters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct AlertDictionary {
    /// `title`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `subtitle`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    /// `body`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `launch-image`: the launch image to show when the app opens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_image: Option<String>,
    /// `title-loc-key`: a localised title's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title_loc_key: Option<String>,
    /// `title-loc-args`: arguments for the localised title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title_loc_args: Option<Vec<String>>,
    /// `subtitle-loc-key`: a localised subtitle's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtitle_loc_key: Option<String>,
    /// `subtitle-loc-args`: arguments for the localised subtitle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtitle_loc_args: Option<Vec<String>>,
    /// `loc-key`: a localised body's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loc_key: Option<String>,
    /// `loc-args`: arguments for the localised body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loc_args: Option<Vec<String>>,
    /// Any other alert key read from raw JSON.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// The `sound` value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Sound {
    /// `"sound": "name"`: a sound file in the app bundle, or `"default"`.
    Named(String),
    /// `"sound": {"critical": 1, "name": ..., "volume": ...}`: a critical alert sound.
    Critical(CriticalSound),
}

/// A critical-alert sound dictionary. The volume is validated to 0.0–1.0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CriticalSoundRepr", into = "CriticalSoundRepr")]
pub struct CriticalSound {
    critical: bool,
    name: String,
    volume: Option<f64>,
}

/// `interruption-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum InterruptionLevel {
    /// `passive`: added to the list silently.
    Passive,
    /// `active`: the default; shown, sound, no breakthrough of Focus.
    Active,
    /// `time-sensitive`: may break through Focus.
    TimeSensitive,
    /// `critical`: breaks through mute and Focus (needs Apple's entitlement).
    Critical,
}

/// `event` of a Live Activity push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LiveActivityEvent {
    /// `start`: start a Live Activity (push-to-start).
    Start,
    /// `update`: update its content.
    Update,
    /// `end`: end it.
    End,
}

/// Why a payload cannot be built or sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The payload has no content (`{}`), or the body is zero bytes.
    #[error("payload is empty")]
    Empty,
    /// The serialized payload is larger than the push type allows.
    #[error("payload is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// The serialized size, in bytes.
        size: usize,
        /// The limit it exceeds, in bytes.
        limit: usize,
    },
    /// Raw JSON that is not an object (or not JSON at all).
    #[error("payload is not a JSON object: {0}")]
    NotAnObject(String),
    /// An `aps` value of the wrong shape in raw JSON (e.g. a string badge).
    #[error("invalid aps dictionary: {0}")]
    InvalidAps(String),
    /// A custom key that Apple reserves (`aps`).
    #[error("custom key {0:?} is reserved")]
    ReservedKey(String),
    /// A `relevance-score` outside 0.0–1.0 (or not a number).
    #[error("relevance-score {0} is outside 0.0..=1.0")]
    RelevanceScoreOutOfRange(f64),
    /// A critical sound volume outside 0.0–1.0 (or not a number).
    #[error("sound volume {0} is outside 0.0..=1.0")]
    VolumeOutOfRange(f64),
    /// The payload could not be serialized (a custom value JSON cannot hold).
    #[error("payload cannot be serialized: {0}")]
    Serialization(String),
}

impl Payload {
    /// An empty payload. Set at least one field before sending: an empty payload is refused.
    pub fn new() -> Self {
        Payload::default()
    }

    /// A payload from raw JSON, which must be an object. Its `aps` value, if present, must
    /// be an object whose documented keys have the documented types; unknown keys are kept.
    ///
    /// Ranges are checked later, by [`Payload::to_bytes`].
    pub fn from_json(value: Value) -> Result<Self, PayloadError> {
        let Value::Object(mut object) = value else {
            return Err(PayloadError::NotAnObject(format!(
                "expected an object, found {}",
                json_kind(&value)
            )));
        };
        let aps = match object.remove("aps") {
            None => Aps::default(),
            Some(aps @ Value::Object(_)) => {
                serde_json::from_value(aps).map_err(|e| PayloadError::InvalidAps(e.to_string()))?
            }
            Some(other) => {
                return Err(PayloadError::InvalidAps(format!(
                    "aps must be an object, found {}",
                    json_kind(&other)
                )));
            }
        };
        Ok(Payload {
            aps,
            custom: object.into_iter().collect(),
        })
    }

    /// A payload from raw JSON bytes; see [`Payload::from_json`].
    pub fn from_slice(json: &[u8]) -> Result<Self, PayloadError> {
        let value: Value =
            serde_json::from_slice(json).map_err(|e| PayloadError::NotAnObject(e.to_string()))?;
        Payload::from_json(value)
    }

    /// The `aps` dictionary.
    pub fn aps(&self) -> &Aps {
        &self.aps
    }

    /// The `aps` dictionary, for direct edits.
    pub fn aps_mut(&mut self) -> &mut Aps {
        &mut self.aps
    }

    /// The custom top-level keys, in serialization order.
    pub fn custom_keys(&self) -> &BTreeMap<String, Value> {
        &self.custom
    }

    /// The payload as a JSON value.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        if !self.aps.is_empty() {
            // A documented key edited into `other` directly must not shadow its typed field.
            let shadowed = self
                .aps
                .other
                .keys()
                .any(|k| Aps::KEYS.contains(&k.as_str()));
            let aps = if shadowed {
                let mut aps = self.aps.clone();
                aps.other.retain(|k, _| !Aps::KEYS.contains(&k.as_str()));
                serde_json::to_value(&aps)
            } else {
                serde_json::to_value(&self.aps)
            };
            // `Aps` holds only strings, numbers and JSON values under string keys, which
            // always serialize; `Null` is unreachable but harmless.
            object.insert("aps".to_owned(), aps.unwrap_or(Value::Null));
        }
        for (key, value) in &self.custom {
            object.insert(key.clone(), value.clone());
        }
        Value::Object(object)
    }

    /// Check ranges, serialize, and enforce `limit` (bytes) on the serialized size.
    ///
    /// Fails with [`PayloadError::Empty`] when there is nothing to send and
    /// [`PayloadError::TooLarge`] (carrying the size and the limit) when it is too big.
    pub fn to_bytes(&self, limit: usize) -> Result<Bytes, PayloadError> {
        self.validate()?;
        if self.aps.is_empty() && self.custom.is_empty() {
            return Err(PayloadError::Empty);
        }
        let bytes = serde_json::to_vec(&self.to_json())
            .map_err(|e| PayloadError::Serialization(e.to_string()))?;
        if bytes.len() > limit {
            return Err(PayloadError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        Ok(Bytes::from(bytes))
    }

    /// Set `alert` (a string or an [`AlertDictionary`]). Default: absent.
    pub fn alert(&mut self, alert: impl Into<Alert>) -> &mut Self {
        self.aps.alert = Some(alert.into());
        self
    }

    /// Set `badge`. Default: absent (the badge is left as it is).
    pub fn badge(&mut self, badge: u32) -> &mut Self {
        self.aps.badge = Some(badge);
        self
    }

    /// Set `sound`. Default: absent (silent).
    pub fn sound(&mut self, sound: impl Into<Sound>) -> &mut Self {
        self.aps.sound = Some(sound.into());
        self
    }

    /// Set `content-available: 1` (a background update). Default: absent.
    pub fn content_available(&mut self) -> &mut Self {
        self.aps.content_available = Some(1);
        self
    }

    /// Set `mutable-content: 1` (a service extension may modify it). Default: absent.
    pub fn mutable_content(&mut self) -> &mut Self {
        self.aps.mutable_content = Some(1);
        self
    }

    /// Set `category`. Default: absent.
    pub fn category(&mut self, category: impl Into<String>) -> &mut Self {
        self.aps.category = Some(category.into());
        self
    }

    /// Set `thread-id`. Default: absent.
    pub fn thread_id(&mut self, thread_id: impl Into<String>) -> &mut Self {
        self.aps.thread_id = Some(thread_id.into());
        self
    }

    /// Set `target-content-id`. Default: absent.
    pub fn target_content_id(&mut self, id: impl Into<String>) -> &mut Self {
        self.aps.target_content_id = Some(id.into());
        self
    }

    /// Set `interruption-level`. Default: absent (the device treats it as `active`).
    pub fn interruption_level(&mut self, level: InterruptionLevel) -> &mut Self {
        self.aps.interruption_level = Some(level);
        self
    }

    /// Set `relevance-score`, which must be within 0.0–1.0. Default: absent.
    pub fn relevance_score(&mut self, score: f64) -> Result<&mut Self, PayloadError> {
        check_unit_range(score).map_err(PayloadError::RelevanceScoreOutOfRange)?;
        self.aps.relevance_score = Some(score);
        Ok(self)
    }

    /// Set `filter-criteria`. Default: absent.
    pub fn filter_criteria(&mut self, criteria: impl Into<String>) -> &mut Self {
        self.aps.filter_criteria = Some(criteria.into());
        self
    }

    /// Set `stale-date` (sent as epoch seconds). Default: absent.
    pub fn stale_date(&mut self, at: Timestamp) -> &mut Self {
        self.aps.stale_date = Some(at.as_secs());
        self
    }

    /// Set `content-state`. Default: absent.
    pub fn content_state(&mut self, state: Value) -> &mut Self {
        self.aps.content_state = Some(state);
        self
    }

    /// Set `timestamp` (sent as epoch seconds). Default: absent.
    pub fn timestamp(&mut self, at: Timestamp) -> &mut Self {
        self.aps.timestamp = Some(at.as_secs());
        self
    }

    /// Set `event`. Default: absent.
    pub fn event(&mut self, event: LiveActivityEvent) -> &mut Self {
        self.aps.event = Some(event);
        self
    }

    /// Set `dismissal-date` (sent as epoch seconds). Default: absent.
    pub fn dismissal_date(&mut self, at: Timestamp) -> &mut Self {
        self.aps.dismissal_date = Some(at.as_secs());
        self
    }

    /// Set `attributes-type`. Default: absent.
    pub fn attributes_type(&mut self, name: impl Into<String>) -> &mut Self {
        self.aps.attributes_type = Some(name.into());
        self
    }

    /// Set `attributes`. Default: absent.
    pub fn attributes(&mut self, attributes: Value) -> &mut Self {
        self.aps.attributes = Some(attributes);
        self
    }

    /// Set an `aps` key this type does not name (for keys Apple adds later, such as
    /// `input-push-token`). Fails with [`PayloadError::ReservedKey`] for a key that has a
    /// typed setter (see [`Aps::KEYS`]).
    pub fn aps_field(
        &mut self,
        key: impl Into<String>,
        value: Value,
    ) -> Result<&mut Self, PayloadError> {
        let key = key.into();
        if Aps::KEYS.contains(&key.as_str()) {
            return Err(PayloadError::ReservedKey(key));
        }
        self.aps.other.insert(key, value);
        Ok(self)
    }

    /// Set a custom top-level key. Fails with [`PayloadError::ReservedKey`] for `"aps"`.
    pub fn custom(
        &mut self,
        key: impl Into<String>,
        value: Value,
    ) -> Result<&mut Self, PayloadError> {
        let key = key.into();
        if key == "aps" {
            return Err(PayloadError::ReservedKey(key));
        }
        self.custom.insert(key, value);
        Ok(self)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        if let Some(score) = self.aps.relevance_score {
            check_unit_range(score).map_err(PayloadError::RelevanceScoreOutOfRange)?;
        }
        Ok(())
    }
}

impl Aps {
    /// The documented `aps` keys, each with a typed field.
    pub const KEYS: [&'static str; 18] = [
        "alert",
        "badge",
        "sound",
        "content-available",
        "mutable-content",
        "category",
        "thread-id",
        "target-content-id",
        "interruption-level",
        "relevance-score",
        "filter-criteria",
        "stale-date",
        "content-state",
        "timestamp",
        "event",
        "dismissal-date",
        "attributes-type",
        "attributes",
    ];

    /// True when no key is set.
    pub fn is_empty(&self) -> bool {
        *self == Aps::default()
    }
}

impl AlertDictionary {
    /// An empty alert dictionary.
    pub fn new() -> Self {
        AlertDictionary::default()
    }

    /// Set `title`.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Set `subtitle`.
    pub fn subtitle(mut self, subtitle: impl Into<String>) -> Self {
        self.subtitle = Some(subtitle.into());
        self
    }

    /// Set `body`.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Set `launch-image`.
    pub fn launch_image(mut self, image: impl Into<String>) -> Self {
        self.launch_image = Some(image.into());
        self
    }

    /// Set `title-loc-key` and `title-loc-args`.
    pub fn title_loc(mut self, key: impl Into<String>, args: Vec<String>) -> Self {
        self.title_loc_key = Some(key.into());
        self.title_loc_args = Some(args);
        self
    }

    /// Set `subtitle-loc-key` and `subtitle-loc-args`.
    pub fn subtitle_loc(mut self, key: impl Into<String>, args: Vec<String>) -> Self {
        self.subtitle_loc_key = Some(key.into());
        self.subtitle_loc_args = Some(args);
        self
    }

    /// Set `loc-key` and `loc-args`.
    pub fn loc(mut self, key: impl Into<String>, args: Vec<String>) -> Self {
        self.loc_key = Some(key.into());
        self.loc_args = Some(args);
        self
    }
}

impl From<&str> for Alert {
    fn from(text: &str) -> Self {
        Alert::Text(text.to_owned())
    }
}

impl From<String> for Alert {
    fn from(text: String) -> Self {
        Alert::Text(text)
    }
}

impl From<AlertDictionary> for Alert {
    fn from(dictionary: AlertDictionary) -> Self {
        Alert::Dictionary(Box::new(dictionary))
    }
}

impl Sound {
    /// A named sound (a file in the app bundle, or `"default"`).
    pub fn named(name: impl Into<String>) -> Self {
        Sound::Named(name.into())
    }
}

impl From<&str> for Sound {
    fn from(name: &str) -> Self {
        Sound::Named(name.to_owned())
    }
}

impl From<CriticalSound> for Sound {
    fn from(sound: CriticalSound) -> Self {
        Sound::Critical(sound)
    }
}

impl CriticalSound {
    /// A critical-alert sound `name` at `volume` (0.0–1.0; `None` leaves it to the device).
    pub fn new(name: impl Into<String>, volume: Option<f64>) -> Result<Self, PayloadError> {
        if let Some(volume) = volume {
            check_unit_range(volume).map_err(PayloadError::VolumeOutOfRange)?;
        }
        Ok(CriticalSound {
            critical: true,
            name: name.into(),
            volume,
        })
    }

    /// The sound's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The volume, 0.0–1.0, if set.
    pub fn volume(&self) -> Option<f64> {
        self.volume
    }

    /// True for `critical: 1` (always, when built with [`CriticalSound::new`]).
    pub fn is_critical(&self) -> bool {
        self.critical
    }
}

#[derive(Serialize, Deserialize)]
struct CriticalSoundRepr {
    #[serde(default)]
    critical: u8,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    volume: Option<f64>,
}

impl TryFrom<CriticalSoundRepr> for CriticalSound {
    type Error = PayloadError;

    fn try_from(repr: CriticalSoundRepr) -> Result<Self, Self::Error> {
        let mut sound = CriticalSound::new(repr.name, repr.volume)?;
        sound.critical = repr.critical != 0;
        Ok(sound)
    }
}

impl From<CriticalSound> for CriticalSoundRepr {
    fn from(sound: CriticalSound) -> Self {
        CriticalSoundRepr {
            critical: u8::from(sound.critical),
            name: sound.name,
            volume: sound.volume,
        }
    }
}

/// `Ok` when `value` is a number within 0.0–1.0, else `Err(value)`.
fn check_unit_range(value: f64) -> Result<(), f64> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(value)
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_aps_key_uses_apples_name() {
        let mut payload = Payload::new();
        payload
            .alert(
                AlertDictionary::new()
                    .title("t")
                    .subtitle("s")
                    .body("b")
                    .launch_image("l.png")
                    .title_loc("TK", vec!["a".into()])
                    .subtitle_loc("SK", vec![])
                    .loc("LK", vec!["x".into(), "y".into()]),
            )
            .badge(0)
            .sound(CriticalSound::new("siren.caf", Some(0.5)).unwrap())
            .content_available()
            .mutable_content()
            .category("c")
            .thread_id("th")
            .target_content_id("tc")
            .interruption_level(InterruptionLevel::TimeSensitive)
            .filter_criteria("work")
            .stale_date(Timestamp::from_secs(10))
            .content_state(json!({"score": 1}))
            .timestamp(Timestamp::from_millis(20_999))
            .event(LiveActivityEvent::Update)
            .dismissal_date(Timestamp::from_secs(30))
            .attributes_type("MatchAttributes")
            .attributes(json!({"team": "a"}));
        payload.relevance_score(0.25).unwrap();
        let value: Value = serde_json::from_slice(&payload.to_bytes(4096).unwrap()).unwrap();
        assert_eq!(
            value,
            json!({"aps": {
                "alert": {
                    "title": "t", "subtitle": "s", "body": "b", "launch-image": "l.png",
                    "title-loc-key": "TK", "title-loc-args": ["a"],
                    "subtitle-loc-key": "SK", "subtitle-loc-args": [],
                    "loc-key": "LK", "loc-args": ["x", "y"],
                },
                "badge": 0,
                "sound": {"critical": 1, "name": "siren.caf", "volume": 0.5},
                "content-available": 1,
                "mutable-content": 1,
                "category": "c",
                "thread-id": "th",
                "target-content-id": "tc",
                "interruption-level": "time-sensitive",
                "relevance-score": 0.25,
                "filter-criteria": "work",
                "stale-date": 10,
                "content-state": {"score": 1},
                "timestamp": 20,
                "event": "update",
                "dismissal-date": 30,
                "attributes-type": "MatchAttributes",
                "attributes": {"team": "a"},
            }})
        );
        let mut keys: Vec<_> = value["aps"].as_object().unwrap().keys().cloned().collect();
        let mut documented: Vec<_> = Aps::KEYS.iter().map(|k| k.to_string()).collect();
        keys.sort();
        documented.sort();
        assert_eq!(keys, documented);
        // And back again, losslessly.
        assert_eq!(Payload::from_json(value).unwrap(), payload);
        // Documented keys cannot be shadowed.
        assert!(payload.aps_field("badge", json!(9)).is_err());
        payload.aps_mut().other.insert("badge".into(), json!(9));
        assert_eq!(payload.to_json()["aps"]["badge"], json!(0));
        payload.aps_field("input-push-token", json!(1)).unwrap();
        assert_eq!(payload.to_json()["aps"]["input-push-token"], json!(1));
    }

    #[test]
    fn absent_fields_are_skipped() {
        let mut payload = Payload::new();
        payload.alert("hi");
        assert_eq!(
            &payload.to_bytes(4096).unwrap()[..],
            br#"{"aps":{"alert":"hi"}}"#
        );
        let mut custom_only = Payload::new();
        custom_only.custom("k", json!(1)).unwrap();
        assert_eq!(&custom_only.to_bytes(4096).unwrap()[..], br#"{"k":1}"#);
    }

    #[test]
    fn empty_and_oversized_are_refused() {
        assert_eq!(Payload::new().to_bytes(4096), Err(PayloadError::Empty));
        let mut payload = Payload::new();
        payload.alert("x".repeat(100));
        let size = payload.to_bytes(4096).unwrap().len();
        assert!(payload.to_bytes(size).is_ok());
        assert_eq!(
            payload.to_bytes(size - 1),
            Err(PayloadError::TooLarge {
                size,
                limit: size - 1
            })
        );
    }

    #[test]
    fn ranges_are_checked() {
        let mut payload = Payload::new();
        assert!(payload.relevance_score(1.5).is_err());
        assert!(payload.relevance_score(f64::NAN).is_err());
        assert!(payload.relevance_score(-0.1).is_err());
        payload.alert("x").aps_mut().relevance_score = Some(2.0);
        assert_eq!(
            payload.to_bytes(4096),
            Err(PayloadError::RelevanceScoreOutOfRange(2.0))
        );
        assert!(CriticalSound::new("s", Some(1.01)).is_err());
        assert!(CriticalSound::new("s", Some(f64::NAN)).is_err());
        assert!(CriticalSound::new("s", None).is_ok());
        let bad = json!({"aps": {"sound": {"critical": 1, "name": "s", "volume": 3.0}}});
        assert!(matches!(
            Payload::from_json(bad),
            Err(PayloadError::InvalidAps(_))
        ));
    }

    #[test]
    fn raw_json_is_checked_and_unknown_keys_kept() {
        assert!(matches!(
            Payload::from_json(json!([1, 2])),
            Err(PayloadError::NotAnObject(_))
        ));
        assert!(matches!(
            Payload::from_slice(b"{not json"),
            Err(PayloadError::NotAnObject(_))
        ));
        assert!(matches!(
            Payload::from_json(json!({"aps": "x"})),
            Err(PayloadError::InvalidAps(_))
        ));
        assert!(matches!(
            Payload::from_json(json!({"aps": {"badge": "3"}})),
            Err(PayloadError::InvalidAps(_))
        ));
        let raw = json!({
            "aps": {"alert": {"body": "b", "summary-arg": "x"}, "input-push-token": 1},
            "custom": [1, 2],
        });
        let payload = Payload::from_json(raw.clone()).unwrap();
        assert_eq!(payload.to_json(), raw);
        assert_eq!(payload.aps().other["input-push-token"], json!(1));
        assert_eq!(
            Payload::new().custom("aps", json!(1)).err(),
            Some(PayloadError::ReservedKey("aps".into()))
        );
    }
}
