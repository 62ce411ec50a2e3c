//! A validated push: everything APNs needs for one request, checked field by field and
//! across fields before it ever reaches a connection.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::apns::headers::{
    APNS_COLLAPSE_ID, APNS_EXPIRATION, APNS_ID, APNS_PRIORITY, APNS_PUSH_TYPE, APNS_TOPIC,
};
use crate::apns::{
    ApnsId, CollapseId, DeviceToken, DeviceTokenError, Expiration, Payload, PayloadError,
    PreparedRequest, Priority, PushType, Reason, Topic,
};

/// The path prefix of a device request: `/3/device/<hex token>`.
pub const DEVICE_PATH_PREFIX: &str = "/3/device/";

/// One notification for one device, valid by construction.
///
/// Built with [`Notification::builder`], which checks the rules APNs enforces across
/// fields: the topic's suffix matches the push type, the priority is one the push type
/// allows, and the payload is non-empty and within the push type's size limit.
/// [`Notification::prepare`] turns it into the request a connection sends.
///
/// It serializes (for the WAL) as a record of strings and numbers with the payload as a
/// JSON string, and deserializing runs every check again.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "NotificationRecord")]
pub struct Notification {
    device_token: DeviceToken,
    topic: Topic,
    push_type: PushType,
    priority: Option<Priority>,
    expiration: Option<Expiration>,
    collapse_id: Option<CollapseId>,
    apns_id: Option<ApnsId>,
    payload: Bytes,
}

/// Builds a [`Notification`]; see [`Notification::builder`].
#[derive(Debug, Clone)]
pub struct NotificationBuilder {
    device_token: DeviceToken,
    topic: Topic,
    push_type: PushType,
    priority: Option<Priority>,
    expiration: Option<Expiration>,
    collapse_id: Option<CollapseId>,
    apns_id: Option<ApnsId>,
    /// The payload, serialized and checked when it was set.
    payload: Option<Result<Bytes, PayloadError>>,
}

/// Why a notification cannot be built (or a request read back as one).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NotificationError {
    /// Neither [`NotificationBuilder::payload`] nor [`NotificationBuilder::raw_payload`]
    /// was called.
    #[error("notification has no payload")]
    MissingPayload,
    /// The payload is empty, too large for the push type, or not a JSON object.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The topic's push-type suffix does not match the push type (a `voip` push needs a
    /// topic ending in `.voip`; an `alert` push must not carry any push-type suffix).
    #[error("topic {topic:?} does not fit push type {push_type}: {expected}")]
    TopicMismatch {
        /// The topic given.
        topic: String,
        /// The push type given.
        push_type: PushType,
        /// What the topic should look like.
        expected: String,
    },
    /// The push type does not allow this priority (e.g. background with 10).
    #[error("push type {push_type} does not allow apns-priority {priority}")]
    PriorityNotAllowed {
        /// The priority given.
        priority: Priority,
        /// The push type given.
        push_type: PushType,
    },
    /// Reading a request back: the path is not `/3/device/<token>`.
    #[error("bad request path {0:?}: expected {DEVICE_PATH_PREFIX}<device token>")]
    BadPath(String),
    /// Reading a request back: the token in the path is not a device token.
    #[error("bad device token in path: {0}")]
    BadDeviceToken(DeviceTokenError),
    /// Reading a request back: a required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// Reading a request back: a header appears more than once.
    #[error("header {0} appears more than once")]
    DuplicateHeader(&'static str),
    /// Reading a request back: a header's value does not parse.
    #[error("invalid header {name}: {detail}")]
    InvalidHeader {
        /// The header's name.
        name: &'static str,
        /// What is wrong with its value.
        detail: String,
    },
}

impl NotificationError {
    /// The reason APNs gives for a request with this fault, when APNs documents one: what
    /// an emulator answers, and what Herald saves itself from by validating first.
    ///
    /// `None` for faults APNs has no specific reason for: a payload that is not a JSON
    /// object, and a topic whose suffix does not fit the push type (APNs' answer depends
    /// on the certificate or key, so an emulator must decide).
    pub fn reason(&self) -> Option<Reason> {
        match self {
            NotificationError::MissingPayload | NotificationError::Payload(PayloadError::Empty) => {
                Some(Reason::PayloadEmpty)
            }
            NotificationError::Payload(PayloadError::TooLarge { .. }) => {
                Some(Reason::PayloadTooLarge)
            }
            NotificationError::Payload(_) | NotificationError::TopicMismatch { .. } => None,
            NotificationError::PriorityNotAllowed { .. } => Some(Reason::BadPriority),
            NotificationError::BadPath(_) => Some(Reason::BadPath),
            NotificationError::BadDeviceToken(DeviceTokenError::TooShort { len: 0, .. }) => {
                Some(Reason::MissingDeviceToken)
            }
            NotificationError::BadDeviceToken(_) => Some(Reason::BadDeviceToken),
            NotificationError::DuplicateHeader(_) => Some(Reason::DuplicateHeaders),
            NotificationError::MissingHeader(name) => Some(match *name {
                "apns-topic" => Reason::MissingTopic,
                _ => Reason::InvalidPushType,
            }),
            NotificationError::InvalidHeader { name, .. } => Some(match *name {
                "apns-topic" => Reason::BadTopic,
                "apns-priority" => Reason::BadPriority,
                "apns-expiration" => Reason::BadExpirationDate,
                "apns-collapse-id" => Reason::BadCollapseId,
                "apns-id" => Reason::BadMessageId,
                _ => Reason::InvalidPushType,
            }),
        }
    }
}

impl Notification {
    /// Start building a notification of `push_type` for `device_token` on `topic`.
    ///
    /// ```
    /// use herald_actors::apns::{DeviceToken, Notification, Payload, Priority, PushType, Topic};
    ///
    /// let token: DeviceToken = "ab".repeat(32).parse()?;
    /// let topic: Topic = "com.example.app".parse()?;
    /// let mut payload = Payload::new();
    /// payload.alert("Hello");
    ///
    /// let notification = Notification::builder(token, topic, PushType::Alert)
    ///     .priority(Priority::Normal)
    ///     .payload(&payload)
    ///     .build()?;
    ///
    /// let request = notification.prepare();
    /// assert_eq!(request.path, format!("/3/device/{}", "ab".repeat(32)));
    /// assert_eq!(request.headers["apns-push-type"], "alert");
    /// assert_eq!(request.headers["apns-priority"], "5");
    /// assert_eq!(&request.body[..], br#"{"aps":{"alert":"Hello"}}"#);
    ///
    /// // A VoIP push must go to the `.voip` topic.
    /// let wrong = Notification::builder("ab".repeat(32).parse()?, "com.example.app".parse()?, PushType::Voip)
    ///     .payload(&payload)
    ///     .build();
    /// assert!(wrong.is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder(
        device_token: DeviceToken,
        topic: Topic,
        push_type: PushType,
    ) -> NotificationBuilder {
        NotificationBuilder {
            device_token,
            topic,
            push_type,
            priority: None,
            expiration: None,
            collapse_id: None,
            apns_id: None,
            payload: None,
        }
    }

    /// Read a request back into a notification (the emulator's side of
    /// [`Notification::prepare`]): the path, the `apns-*` headers and the body.
    ///
    /// `apns-push-type` and `apns-topic` are required (Herald always sends both); other
    /// headers, such as `authorization`, are ignored.
    pub fn from_parts(
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Self, NotificationError> {
        let hex = path
            .strip_prefix(DEVICE_PATH_PREFIX)
            .ok_or_else(|| NotificationError::BadPath(path.to_owned()))?;
        let device_token = DeviceToken::new(hex).map_err(NotificationError::BadDeviceToken)?;
        let push_type = header(headers, "apns-push-type")?
            .ok_or(NotificationError::MissingHeader("apns-push-type"))?;
        let topic =
            header(headers, "apns-topic")?.ok_or(NotificationError::MissingHeader("apns-topic"))?;
        let mut builder = Notification::builder(device_token, topic, push_type);
        builder.priority = header(headers, "apns-priority")?;
        builder.expiration = header(headers, "apns-expiration")?;
        builder.collapse_id = header(headers, "apns-collapse-id")?;
        builder.apns_id = header(headers, "apns-id")?;
        builder.raw_payload(body);
        builder.build()
    }

    /// The request for this notification: `/3/device/<hex>`, the `apns-*` headers that are
    /// set (`apns-push-type` and `apns-topic` always; never `authorization`) and the body.
    pub fn prepare(&self) -> PreparedRequest {
        let mut headers = HeaderMap::with_capacity(6);
        headers.insert(
            APNS_PUSH_TYPE,
            HeaderValue::from_static(self.push_type.as_str()),
        );
        headers.insert(APNS_TOPIC, header_value(self.topic.as_str()));
        if let Some(priority) = self.priority {
            headers.insert(APNS_PRIORITY, HeaderValue::from_static(priority.as_str()));
        }
        if let Some(expiration) = self.expiration {
            headers.insert(APNS_EXPIRATION, HeaderValue::from(expiration.as_secs()));
        }
        if let Some(collapse_id) = &self.collapse_id {
            headers.insert(APNS_COLLAPSE_ID, header_value(collapse_id.as_str()));
        }
        if let Some(apns_id) = &self.apns_id {
            headers.insert(APNS_ID, header_value(&apns_id.as_str()));
        }
        PreparedRequest {
            path: self.path(),
            headers,
            body: self.payload.clone(),
        }
    }

    /// The request path, `/3/device/<hex token>`.
    pub fn path(&self) -> String {
        format!("{DEVICE_PATH_PREFIX}{}", self.device_token)
    }

    /// The device token.
    pub fn device_token(&self) -> &DeviceToken {
        &self.device_token
    }

    /// The topic (`apns-topic`).
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The push type (`apns-push-type`).
    pub fn push_type(&self) -> PushType {
        self.push_type
    }

    /// The priority sent in `apns-priority`, if any.
    pub fn priority(&self) -> Option<Priority> {
        self.priority
    }

    /// The priority APNs applies: the one set, or APNs' default of 10.
    pub fn effective_priority(&self) -> Priority {
        self.priority.unwrap_or(Priority::Immediate)
    }

    /// The expiration sent in `apns-expiration`, if any.
    pub fn expiration(&self) -> Option<Expiration> {
        self.expiration
    }

    /// The collapse id sent in `apns-collapse-id`, if any.
    pub fn collapse_id(&self) -> Option<&CollapseId> {
        self.collapse_id.as_ref()
    }

    /// The id sent in `apns-id`, if any (APNs assigns one otherwise).
    pub fn apns_id(&self) -> Option<ApnsId> {
        self.apns_id
    }

    /// This notification with its `apns-id` set to `id` (the engine uses it as the push id).
    pub fn with_apns_id(mut self, id: ApnsId) -> Self {
        self.apns_id = Some(id);
        self
    }

    /// The serialized JSON payload (the request body).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
}

impl NotificationBuilder {
    /// Set `apns-priority`. Default: none, which APNs reads as 10, except for push types
    /// whose [`PushType::default_priority`] is not 10 (background), which get that default
    /// written out so APNs never assumes 10 for them.
    pub fn priority(&mut self, priority: Priority) -> &mut Self {
        self.priority = Some(priority);
        self
    }

    /// Set `apns-expiration`. Default: none (APNs stores the notification for up to 30
    /// days).
    pub fn expiration(&mut self, expiration: Expiration) -> &mut Self {
        self.expiration = Some(expiration);
        self
    }

    /// Set `apns-collapse-id`. Default: none.
    pub fn collapse_id(&mut self, collapse_id: CollapseId) -> &mut Self {
        self.collapse_id = Some(collapse_id);
        self
    }

    /// Set `apns-id`. Default: none (APNs assigns one and returns it).
    pub fn apns_id(&mut self, apns_id: ApnsId) -> &mut Self {
        self.apns_id = Some(apns_id);
        self
    }

    /// Use `payload`, serialized now under the push type's limit; a payload that fails
    /// makes [`build`](NotificationBuilder::build) fail. Replaces any payload set before.
    /// Default: none (`build` fails).
    pub fn payload(&mut self, payload: &Payload) -> &mut Self {
        self.payload = Some(payload.to_bytes(self.push_type.payload_bytes_max()));
        self
    }

    /// Use an already serialized payload, sent as is. It must be a non-empty JSON object
    /// within the push type's limit, or [`build`](NotificationBuilder::build) fails.
    /// Replaces any payload set before.
    pub fn raw_payload(&mut self, json: impl Into<Bytes>) -> &mut Self {
        self.payload = Some(check_raw_payload(
            json.into(),
            self.push_type.payload_bytes_max(),
        ));
        self
    }

    /// Check every field together and build the notification.
    pub fn build(&self) -> Result<Notification, NotificationError> {
        let push_type = self.push_type;
        check_topic(&self.topic, push_type)?;
        let priority = match self.priority {
            Some(priority) if !push_type.allows_priority(priority) => {
                return Err(NotificationError::PriorityNotAllowed {
                    priority,
                    push_type,
                });
            }
            Some(priority) => Some(priority),
            None if push_type.default_priority() != Priority::Immediate => {
                Some(push_type.default_priority())
            }
            None => None,
        };
        let payload = match &self.payload {
            None => return Err(NotificationError::MissingPayload),
            Some(payload) => payload.clone()?,
        };
        Ok(Notification {
            device_token: self.device_token.clone(),
            topic: self.topic.clone(),
            push_type,
            priority,
            expiration: self.expiration,
            collapse_id: self.collapse_id.clone(),
            apns_id: self.apns_id,
            payload,
        })
    }
}

fn check_topic(topic: &Topic, push_type: PushType) -> Result<(), NotificationError> {
    let found = topic.suffix_push_type();
    let expected = push_type.topic_suffix();
    let fits = match expected {
        Some(_) => found == Some(push_type),
        None => found.is_none(),
    };
    if fits {
        return Ok(());
    }
    Err(NotificationError::TopicMismatch {
        topic: topic.to_string(),
        push_type,
        expected: match expected {
            Some(suffix) => format!("the topic must end with {suffix:?}"),
            None => format!(
                "the topic must be the bare bundle id, without the {:?} suffix",
                topic.suffix().unwrap_or_default()
            ),
        },
    })
}

fn check_raw_payload(bytes: Bytes, limit: usize) -> Result<Bytes, PayloadError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::Empty);
    }
    if bytes.len() > limit {
        return Err(PayloadError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let ObjectMembers(members) =
        serde_json::from_slice(&bytes).map_err(|e| PayloadError::NotAnObject(e.to_string()))?;
    if members == 0 {
        return Err(PayloadError::Empty);
    }
    Ok(bytes)
}

/// How many members a JSON object has, read without building it: every push's payload is
/// checked this way. The members are checked as strictly as when serde_json builds a value
/// (UTF-8, escapes, surrogates, numbers), only nothing is allocated. Anything but an object is
/// an error.
struct ObjectMembers(usize);

impl<'de> Deserialize<'de> for ObjectMembers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = ObjectMembers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ObjectMembers, A::Error> {
                let mut members = 0;
                while map.next_entry::<AnyValue, AnyValue>()?.is_some() {
                    members += 1;
                }
                Ok(ObjectMembers(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// Any JSON value, read and checked but not kept (see [`ObjectMembers`]).
struct AnyValue;

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyValue)
    }
}

impl<'de> serde::de::Visitor<'de> for AnyValue {
    type Value = AnyValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }
    fn visit_i64<E>(self, _: i64) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }
    fn visit_u64<E>(self, _: u64) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }
    fn visit_f64<E>(self, _: f64) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }
    fn visit_str<E>(self, _: &str) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }
    fn visit_unit<E>(self) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<AnyValue, A::Error> {
        while seq.next_element::<AnyValue>()?.is_some() {}
        Ok(AnyValue)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<AnyValue, A::Error> {
        while map.next_entry::<AnyValue, AnyValue>()?.is_some() {}
        Ok(AnyValue)
    }
}

/// Every value passed here was validated by its newtype: ASCII, or UTF-8 without control
/// characters, all of which `HeaderValue` accepts.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("validated header values contain no control characters")
}

/// The one value of header `name`, parsed; `None` when absent.
fn header<T>(headers: &HeaderMap, name: &'static str) -> Result<Option<T>, NotificationError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(NotificationError::DuplicateHeader(name));
    }
    let text =
        std::str::from_utf8(value.as_bytes()).map_err(|e| NotificationError::InvalidHeader {
            name,
            detail: e.to_string(),
        })?;
    text.parse()
        .map(Some)
        .map_err(|e: T::Err| NotificationError::InvalidHeader {
            name,
            detail: e.to_string(),
        })
}

/// The stored form of a [`Notification`]: plain fields, payload as a JSON string. No field
/// is skipped, so positional formats (MessagePack arrays) read it back too.
#[derive(Serialize, Deserialize)]
struct NotificationRecord {
    device_token: DeviceToken,
    topic: Topic,
    push_type: PushType,
    priority: Option<Priority>,
    expiration: Option<Expiration>,
    collapse_id: Option<CollapseId>,
    apns_id: Option<ApnsId>,
    payload: String,
}

/// [`NotificationRecord`] borrowed from a [`Notification`]: written field for field the same
/// (every push is written to the WAL this way, without copying it first).
#[derive(Serialize)]
#[serde(rename = "NotificationRecord")]
struct NotificationRecordRef<'a> {
    device_token: &'a DeviceToken,
    topic: &'a Topic,
    push_type: PushType,
    priority: Option<Priority>,
    expiration: Option<Expiration>,
    collapse_id: Option<&'a CollapseId>,
    apns_id: Option<ApnsId>,
    payload: std::borrow::Cow<'a, str>,
}

impl Serialize for Notification {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        NotificationRecordRef {
            device_token: &self.device_token,
            topic: &self.topic,
            push_type: self.push_type,
            priority: self.priority,
            expiration: self.expiration,
            collapse_id: self.collapse_id.as_ref(),
            apns_id: self.apns_id,
            // The payload was checked to be JSON, hence UTF-8: borrowed, nothing replaced.
            payload: match std::str::from_utf8(&self.payload) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(&self.payload),
            },
        }
        .serialize(serializer)
    }
}

impl TryFrom<NotificationRecord> for Notification {
    type Error = NotificationError;

    fn try_from(r: NotificationRecord) -> Result<Self, Self::Error> {
        let mut builder = Notification::builder(r.device_token, r.topic, r.push_type);
        builder.priority = r.priority;
        builder.expiration = r.expiration;
        builder.collapse_id = r.collapse_id;
        builder.apns_id = r.apns_id;
        builder.raw_payload(r.payload);
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::limits::{PAYLOAD_BYTES_MAX, PAYLOAD_VOIP_BYTES_MAX};
    use crate::seams::{DetRng, Timestamp};

    fn token() -> DeviceToken {
        DeviceToken::new(&"0f".repeat(32)).unwrap()
    }

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn alert() -> Payload {
        let mut p = Payload::new();
        p.alert("hi");
        p
    }

    fn full() -> Notification {
        Notification::builder(token(), topic("com.example.app"), PushType::Alert)
            .priority(Priority::Low)
            .expiration(Expiration::At(Timestamp::from_secs(1_700_000_000)))
            .collapse_id(CollapseId::new("score-€").unwrap())
            .apns_id(ApnsId::random(&mut DetRng::from_seed(3)))
            .payload(&alert())
            .build()
            .unwrap()
    }

    #[test]
    fn prepare_sets_path_headers_and_body() {
        let n = full();
        let request = n.prepare();
        assert_eq!(request.path, format!("/3/device/{}", "0f".repeat(32)));
        let h = &request.headers;
        assert_eq!(h.len(), 6);
        assert_eq!(h["apns-push-type"], "alert");
        assert_eq!(h["apns-topic"], "com.example.app");
        assert_eq!(h["apns-priority"], "1");
        assert_eq!(h["apns-expiration"], "1700000000");
        assert_eq!(h["apns-collapse-id"].as_bytes(), "score-€".as_bytes());
        assert_eq!(h["apns-id"], n.apns_id().unwrap().to_string().as_str());
        assert!(!h.contains_key("authorization"));
        assert_eq!(&request.body[..], br#"{"aps":{"alert":"hi"}}"#);
        assert_eq!(
            Notification::from_parts(&request.path, h, request.body.clone()).unwrap(),
            n
        );
    }

    #[test]
    fn only_set_headers_are_sent() {
        let n = Notification::builder(token(), topic("com.example.app"), PushType::Alert)
            .payload(&alert())
            .build()
            .unwrap();
        let h = n.prepare().headers;
        assert_eq!(h.len(), 2);
        assert_eq!(n.effective_priority(), Priority::Immediate);
        // Background never leaves without its priority.
        let mut silent = Payload::new();
        silent.content_available();
        let bg = Notification::builder(token(), topic("com.example.app"), PushType::Background)
            .payload(&silent)
            .build()
            .unwrap();
        assert_eq!(bg.priority(), Some(Priority::Normal));
        assert_eq!(bg.prepare().headers["apns-priority"], "5");
    }

    #[test]
    fn topic_must_fit_push_type() {
        let voip = Notification::builder(token(), topic("com.example.app"), PushType::Voip)
            .payload(&alert())
            .build();
        assert!(matches!(voip, Err(NotificationError::TopicMismatch { .. })));
        let alert_on_voip =
            Notification::builder(token(), topic("com.example.app.voip"), PushType::Alert)
                .payload(&alert())
                .build();
        assert!(matches!(
            alert_on_voip,
            Err(NotificationError::TopicMismatch { .. })
        ));
        let ptt_on_voip =
            Notification::builder(token(), topic("com.example.app.voip"), PushType::PushToTalk)
                .payload(&alert())
                .build();
        assert!(ptt_on_voip.is_err());
        let base = topic("com.example.app");
        for p in PushType::ALL {
            let built = Notification::builder(token(), base.for_push_type(p).unwrap(), p)
                .payload(&alert())
                .build();
            assert!(built.is_ok(), "{p}: {built:?}");
        }
    }

    #[test]
    fn priority_must_fit_push_type() {
        let mut silent = Payload::new();
        silent.content_available();
        let bg = Notification::builder(token(), topic("com.example.app"), PushType::Background)
            .priority(Priority::Immediate)
            .payload(&silent)
            .build();
        assert_eq!(
            bg,
            Err(NotificationError::PriorityNotAllowed {
                priority: Priority::Immediate,
                push_type: PushType::Background
            })
        );
    }

    #[test]
    fn payload_rules() {
        let b = |p: PushType, t: &str| Notification::builder(token(), topic(t), p);
        assert_eq!(
            b(PushType::Alert, "com.example.app").build(),
            Err(NotificationError::MissingPayload)
        );
        assert_eq!(
            b(PushType::Alert, "com.example.app")
                .payload(&Payload::new())
                .build(),
            Err(NotificationError::Payload(PayloadError::Empty))
        );
        for raw in ["", "  ", "{}"] {
            assert_eq!(
                b(PushType::Alert, "com.example.app")
                    .raw_payload(raw)
                    .build(),
                Err(NotificationError::Payload(PayloadError::Empty)),
                "{raw:?}"
            );
        }
        for raw in [
            &b"[1]"[..],
            b"{",
            b"\"aps\"",
            "\u{ff}".as_bytes(),
            b"{\"a\":1} x",
            b"{\"a\":1,}",
            b"{\"a\":}",
            b"{\"a\":\"\xff\"}",
            b"{\"\xff\":1}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"a\":[1,{\"b\":tru}]}",
            b"{\"a\":01}",
        ] {
            assert!(
                matches!(
                    b(PushType::Alert, "com.example.app")
                        .raw_payload(raw)
                        .build(),
                    Err(NotificationError::Payload(PayloadError::NotAnObject(_)))
                ),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        for raw in [
            r#"{"a":[1,-2.5e3,{"b":null}],"c":"\u00e9\ud83d\ude00"}"#,
            r#"{"aps":{}}"#,
        ] {
            assert!(
                b(PushType::Alert, "com.example.app")
                    .raw_payload(raw)
                    .build()
                    .is_ok(),
                "{raw}"
            );
        }
        // VoIP gets the larger limit.
        let mut big = Payload::new();
        big.custom("x", json!("y".repeat(PAYLOAD_BYTES_MAX)))
            .unwrap();
        assert!(matches!(
            b(PushType::Alert, "com.example.app").payload(&big).build(),
            Err(NotificationError::Payload(PayloadError::TooLarge {
                limit: PAYLOAD_BYTES_MAX,
                ..
            }))
        ));
        assert!(
            b(PushType::Voip, "com.example.app.voip")
                .payload(&big)
                .build()
                .is_ok()
        );
        let mut huge = Payload::new();
        huge.custom("x", json!("y".repeat(PAYLOAD_VOIP_BYTES_MAX)))
            .unwrap();
        assert!(
            b(PushType::Voip, "com.example.app.voip")
                .payload(&huge)
                .build()
                .is_err()
        );
    }

    #[test]
    fn reading_requests_back() {
        let n = full();
        let request = n.prepare();
        let mut h = request.headers.clone();
        h.append("apns-priority", HeaderValue::from_static("5"));
        assert_eq!(
            Notification::from_parts(&request.path, &h, request.body.clone()),
            Err(NotificationError::DuplicateHeader("apns-priority"))
        );
        let mut h = request.headers.clone();
        h.remove("apns-topic");
        assert_eq!(
            Notification::from_parts(&request.path, &h, request.body.clone()),
            Err(NotificationError::MissingHeader("apns-topic"))
        );
        let mut h = request.headers.clone();
        h.insert("apns-expiration", HeaderValue::from_static("soon"));
        assert!(matches!(
            Notification::from_parts(&request.path, &h, request.body.clone()),
            Err(NotificationError::InvalidHeader {
                name: "apns-expiration",
                ..
            })
        ));
        let reason = |path: &str, h: &HeaderMap| {
            Notification::from_parts(path, h, request.body.clone())
                .unwrap_err()
                .reason()
        };
        assert_eq!(
            reason("/3/device/", &request.headers),
            Some(Reason::MissingDeviceToken)
        );
        assert_eq!(
            reason("/3/device/xyz", &request.headers),
            Some(Reason::BadDeviceToken)
        );
        assert_eq!(
            reason("/2/device/00", &request.headers),
            Some(Reason::BadPath)
        );
        assert_eq!(reason("/", &request.headers), Some(Reason::BadPath));
        for (name, value, expected) in [
            ("apns-topic", "bad topic", Reason::BadTopic),
            ("apns-priority", "7", Reason::BadPriority),
            ("apns-expiration", "-1", Reason::BadExpirationDate),
            ("apns-collapse-id", "", Reason::BadCollapseId),
            ("apns-id", "nope", Reason::BadMessageId),
            ("apns-push-type", "sms", Reason::InvalidPushType),
        ] {
            let mut h = request.headers.clone();
            h.insert(name, HeaderValue::from_static(value));
            assert_eq!(reason(&request.path, &h), Some(expected), "{name}");
        }
        let mut h = request.headers.clone();
        h.remove("apns-topic");
        assert_eq!(reason(&request.path, &h), Some(Reason::MissingTopic));
    }

    #[test]
    fn serde_round_trip_revalidates() {
        let n = full();
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["payload"], r#"{"aps":{"alert":"hi"}}"#);
        assert_eq!(json["priority"], 1);
        assert_eq!(
            serde_json::from_value::<Notification>(json.clone()).unwrap(),
            n
        );
        let mut bad = json;
        bad["push_type"] = json!("background");
        assert!(serde_json::from_value::<Notification>(bad).is_err());
    }

    /// Written borrowed, byte for byte as the owned record was (WAL records stay readable
    /// both ways), in MessagePack and JSON.
    #[test]
    fn written_as_the_owned_record() {
        let n = full();
        assert!(n.collapse_id.is_some() && n.apns_id.is_some() && n.expiration.is_some());
        let owned = NotificationRecord {
            device_token: n.device_token.clone(),
            topic: n.topic.clone(),
            push_type: n.push_type,
            priority: n.priority,
            expiration: n.expiration,
            collapse_id: n.collapse_id.clone(),
            apns_id: n.apns_id,
            payload: String::from_utf8(n.payload.to_vec()).unwrap(),
        };
        assert_eq!(
            rmp_serde::to_vec(&n).unwrap(),
            rmp_serde::to_vec(&owned).unwrap()
        );
        assert_eq!(
            rmp_serde::to_vec_named(&n).unwrap(),
            rmp_serde::to_vec_named(&owned).unwrap()
        );
        assert_eq!(
            serde_json::to_vec(&n).unwrap(),
            serde_json::to_vec(&owned).unwrap()
        );
        let back: Notification = rmp_serde::from_slice(&rmp_serde::to_vec(&n).unwrap()).unwrap();
        assert_eq!(back, n);
    }
}
