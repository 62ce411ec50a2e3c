//! Request validation: from the APNs rules alone, independently of Herald's client.
//!
//! Checks run in this order (the first failure answers): method (405), path (404, then
//! `MissingDeviceToken`/`BadDeviceToken`), authentication (403, in `jwt.rs`), duplicate
//! headers, `apns-id`, `apns-expiration`, `apns-priority`, `apns-push-type`, `apns-topic`
//! (missing, malformed, suffix for the push type, allowed for the team), `apns-collapse-id`,
//! then the payload (empty, too large).

use herald_actors::apns::Reason;
use herald_actors::limits::{
    COLLAPSE_ID_BYTES_MAX, DEVICE_TOKEN_HEX_MAX, DEVICE_TOKEN_HEX_MIN, PAYLOAD_BYTES_MAX,
    PAYLOAD_VOIP_BYTES_MAX, TOPIC_BYTES_MAX,
};
use http::{HeaderMap, Method};

/// Push types APNs knows, with the topic suffix each requires (if any).
const PUSH_TYPES: [(&str, Option<&str>); 11] = [
    ("alert", None),
    ("background", None),
    ("location", Some(".location-query")),
    ("voip", Some(".voip")),
    ("complication", Some(".complication")),
    ("fileprovider", Some(".pushkit.fileprovider")),
    ("mdm", None),
    ("liveactivity", Some(".push-type.liveactivity")),
    ("pushtotalk", Some(".voip-ptt")),
    ("widgets", None),
    ("controls", None),
];

/// Every topic suffix, longest first (so `.voip-ptt` is stripped before `.voip`).
const TOPIC_SUFFIXES: [&str; 6] = [
    ".push-type.liveactivity",
    ".pushkit.fileprovider",
    ".location-query",
    ".complication",
    ".voip-ptt",
    ".voip",
];

/// The headers APNs reads; repeating any of them is `DuplicateHeaders`.
const APNS_HEADERS: [&str; 7] = [
    "authorization",
    "apns-id",
    "apns-expiration",
    "apns-priority",
    "apns-topic",
    "apns-push-type",
    "apns-collapse-id",
];

/// The path check: the device token, or the reason.
pub(crate) fn check_method_and_path(method: &Method, path: &str) -> Result<String, Reason> {
    if method != Method::POST {
        return Err(Reason::MethodNotAllowed);
    }
    let token = match path.strip_prefix("/3/device") {
        Some("") | Some("/") => return Err(Reason::MissingDeviceToken),
        Some(rest) => match rest.strip_prefix('/') {
            Some(token) => token,
            None => return Err(Reason::BadPath),
        },
        None => return Err(Reason::BadPath),
    };
    if token.contains('/') {
        return Err(Reason::BadPath);
    }
    let plausible = token.len() % 2 == 0
        && (DEVICE_TOKEN_HEX_MIN..=DEVICE_TOKEN_HEX_MAX).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_hexdigit());
    if !plausible {
        return Err(Reason::BadDeviceToken);
    }
    Ok(token.to_ascii_lowercase())
}

/// The APNs headers of a request that passed validation.
#[derive(Debug, Clone)]
pub(crate) struct Headers {
    pub(crate) expiration: Option<u64>,
    pub(crate) priority: u8,
    pub(crate) push_type: Option<String>,
    pub(crate) topic: Option<String>,
    pub(crate) collapse_id: Option<String>,
}

/// Check the `apns-*` headers (not the topic's team, not auth).
///
/// `topic_required` is true for token auth (certificate auth falls back to the certificate's
/// topic).
pub(crate) fn check_headers(headers: &HeaderMap, topic_required: bool) -> Result<Headers, Reason> {
    if APNS_HEADERS
        .iter()
        .any(|name| headers.get_all(*name).iter().count() > 1)
    {
        return Err(Reason::DuplicateHeaders);
    }
    let text = |name: &str, bad: Reason| -> Result<Option<String>, Reason> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(|s| Some(s.to_owned())).map_err(|_| bad),
        }
    };
    let apns_id = text("apns-id", Reason::BadMessageId)?;
    if let Some(id) = &apns_id
        && !is_canonical_uuid(id)
    {
        return Err(Reason::BadMessageId);
    }
    let expiration = match text("apns-expiration", Reason::BadExpirationDate)? {
        None => None,
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            Some(s.parse::<u64>().map_err(|_| Reason::BadExpirationDate)?)
        }
        Some(_) => return Err(Reason::BadExpirationDate),
    };
    let explicit_priority = match text("apns-priority", Reason::BadPriority)?.as_deref() {
        None => None,
        Some("10") => Some(10),
        Some("5") => Some(5),
        Some("1") => Some(1),
        Some(_) => return Err(Reason::BadPriority),
    };
    let push_type = text("apns-push-type", Reason::InvalidPushType)?;
    let suffix = match &push_type {
        None => None,
        Some(p) => match PUSH_TYPES.iter().find(|(name, _)| name == p) {
            Some((_, suffix)) => *suffix,
            None => return Err(Reason::InvalidPushType),
        },
    };
    if push_type.as_deref() == Some("background") && explicit_priority == Some(10) {
        return Err(Reason::BadPriority);
    }
    let topic = text("apns-topic", Reason::BadTopic)?;
    match &topic {
        None if topic_required => return Err(Reason::MissingTopic),
        None => {}
        Some(t) => {
            if !is_well_formed_topic(t) {
                return Err(Reason::BadTopic);
            }
            if let Some(suffix) = suffix
                && !t.ends_with(suffix)
            {
                return Err(Reason::BadTopic);
            }
        }
    }
    let collapse_id = text("apns-collapse-id", Reason::BadCollapseId)?;
    if collapse_id
        .as_ref()
        .is_some_and(|c| c.len() > COLLAPSE_ID_BYTES_MAX)
    {
        return Err(Reason::BadCollapseId);
    }
    Ok(Headers {
        expiration,
        priority: explicit_priority.unwrap_or(10),
        push_type,
        topic,
        collapse_id,
    })
}

/// The bundle id of a topic: the topic without its push-type suffix.
pub(crate) fn bundle_of(topic: &str) -> &str {
    TOPIC_SUFFIXES
        .iter()
        .find_map(|s| topic.strip_suffix(s))
        .unwrap_or(topic)
}

/// Check the payload size for the push type.
pub(crate) fn check_payload(len: usize, push_type: Option<&str>) -> Result<(), Reason> {
    if len == 0 {
        return Err(Reason::PayloadEmpty);
    }
    let max = if push_type == Some("voip") {
        PAYLOAD_VOIP_BYTES_MAX
    } else {
        PAYLOAD_BYTES_MAX
    };
    if len > max {
        return Err(Reason::PayloadTooLarge);
    }
    Ok(())
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hex digits of either case.
fn is_canonical_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A reverse-DNS bundle id, possibly with a suffix: dot-separated non-empty labels of
/// letters, digits, `-` and `_`, at most 255 bytes.
fn is_well_formed_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= TOPIC_BYTES_MAX
        && t.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let tok = "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0";
        assert_eq!(
            check_method_and_path(&Method::POST, &format!("/3/device/{tok}")),
            Ok(tok.to_owned())
        );
        assert_eq!(
            check_method_and_path(&Method::GET, "/3/device/ab"),
            Err(Reason::MethodNotAllowed)
        );
        assert_eq!(
            check_method_and_path(&Method::POST, "/3/device/"),
            Err(Reason::MissingDeviceToken)
        );
        assert_eq!(
            check_method_and_path(&Method::POST, "/2/device/ab"),
            Err(Reason::BadPath)
        );
        assert_eq!(
            check_method_and_path(&Method::POST, "/3/devicex/ab"),
            Err(Reason::BadPath)
        );
        assert_eq!(
            check_method_and_path(&Method::POST, "/3/device/zz"),
            Err(Reason::BadDeviceToken)
        );
        assert_eq!(
            check_method_and_path(&Method::POST, &format!("/3/device/{tok}0")),
            Err(Reason::BadDeviceToken)
        );
    }

    #[test]
    fn topics_and_bundles() {
        assert_eq!(bundle_of("com.a.b.voip"), "com.a.b");
        assert_eq!(bundle_of("com.a.b.voip-ptt"), "com.a.b");
        assert_eq!(bundle_of("com.a.b"), "com.a.b");
        assert!(is_well_formed_topic("com.example-app.x_y"));
        assert!(!is_well_formed_topic("com..x"));
        assert!(!is_well_formed_topic("com.x y"));
        assert!(is_canonical_uuid("EABEAE76-A4F8-4B6D-9A8B-5C1A0D4E2F10"));
        assert!(!is_canonical_uuid("EABEAE76A4F84B6D9A8B5C1A0D4E2F10"));
    }
}
