//! Property tests for the APNs protocol core: parsers never panic, validated values
//! round-trip, limits are enforced on serialized sizes, and requests read back exactly.

use herald_actors::apns::{
    ApnsId, CollapseId, CollapseIdError, DeviceToken, DeviceTokenError, Expiration, Notification,
    Payload, PayloadError, Priority, PushType, Topic,
};
use herald_actors::limits::{
    COLLAPSE_ID_BYTES_MAX, DEVICE_TOKEN_HEX_MAX, DEVICE_TOKEN_HEX_MIN, TOPIC_BYTES_MAX,
};
use herald_actors::seams::{DetRng, Timestamp};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::json;

/// Hex strings of every even length in range, in mixed case.
fn valid_token_hex() -> impl Strategy<Value = String> {
    (DEVICE_TOKEN_HEX_MIN / 2..=DEVICE_TOKEN_HEX_MAX / 2).prop_flat_map(|bytes| {
        proptest::string::string_regex(&format!("[0-9a-fA-F]{{{}}}", bytes * 2)).unwrap()
    })
}

fn push_type() -> impl Strategy<Value = PushType> {
    proptest::sample::select(PushType::ALL.to_vec())
}

fn base_topic() -> impl Strategy<Value = Topic> {
    "[a-z][a-z0-9-]{0,20}(\\.[A-Za-z0-9_-]{1,20}){1,4}".prop_filter_map("a topic", |s| {
        // A random label may itself be a push-type suffix (`….voip`); keep bare bundle ids.
        Topic::new(&s).ok().filter(|t| t.suffix().is_none())
    })
}

/// A valid notification with every optional header drawn at random.
fn notification() -> impl Strategy<Value = Notification> {
    (
        valid_token_hex(),
        base_topic(),
        push_type(),
        any::<u8>(),
        prop::option::of(0u64..4_000_000_000),
        prop::option::of("[^\\p{Cc}]{1,16}"),
        prop::option::of(any::<u64>()),
        "\\PC{0,200}",
    )
        .prop_map(
            |(hex, base, push_type, prio_pick, expiry, collapse, id_seed, text)| {
                let token = DeviceToken::new(&hex).unwrap();
                let topic = base.for_push_type(push_type).unwrap();
                let mut builder = Notification::builder(token, topic, push_type);
                let allowed = push_type.allowed_priorities();
                if prio_pick % 4 != 0 {
                    builder.priority(allowed[usize::from(prio_pick) % allowed.len()]);
                }
                if let Some(secs) = expiry {
                    builder.expiration(if secs == 0 {
                        Expiration::Immediately
                    } else {
                        Expiration::At(Timestamp::from_secs(secs))
                    });
                }
                if let Some(collapse) = collapse.and_then(|c| CollapseId::new(&c).ok()) {
                    builder.collapse_id(collapse);
                }
                if let Some(seed) = id_seed {
                    builder.apns_id(ApnsId::random(&mut DetRng::from_seed(seed)));
                }
                let mut payload = Payload::new();
                payload.alert(text);
                builder.payload(&payload).build().unwrap()
            },
        )
}

proptest! {
    #[test]
    fn valid_tokens_round_trip(hex in valid_token_hex()) {
        let token = DeviceToken::new(&hex).unwrap();
        prop_assert_eq!(token.as_str(), hex.to_ascii_lowercase());
        prop_assert_eq!(token.to_string().parse::<DeviceToken>().unwrap(), token.clone());
        prop_assert_eq!(DeviceToken::from_bytes(&token.to_bytes()).unwrap(), token.clone());
        let json = serde_json::to_string(&token).unwrap();
        prop_assert_eq!(serde_json::from_str::<DeviceToken>(&json).unwrap(), token);
    }

    #[test]
    fn tokens_with_a_non_hex_char_are_rejected(
        hex in valid_token_hex(),
        at in any::<prop::sample::Index>(),
        bad in any::<char>().prop_filter("non-hex", |c| !c.is_ascii_hexdigit()),
    ) {
        let mut s = hex;
        let index = at.index(s.len() + 1);
        s.insert(index, bad);
        prop_assert_eq!(DeviceToken::new(&s), Err(DeviceTokenError::NonHex { index, ch: bad }));
    }

    #[test]
    fn odd_tokens_are_rejected(len in (0usize..DEVICE_TOKEN_HEX_MAX * 2).prop_map(|n| n | 1)) {
        prop_assert_eq!(
            DeviceToken::new(&"a".repeat(len)),
            Err(DeviceTokenError::OddLength { len })
        );
    }

    #[test]
    fn out_of_range_tokens_are_rejected(extra in 1usize..500) {
        let long = 2 * (DEVICE_TOKEN_HEX_MAX / 2 + extra);
        let is_too_long = matches!(
            DeviceToken::new(&"b".repeat(long)),
            Err(DeviceTokenError::TooLong { .. })
        );
        prop_assert!(is_too_long);
        let short = (DEVICE_TOKEN_HEX_MIN / 2).saturating_sub(extra) * 2;
        let is_too_short = matches!(
            DeviceToken::new(&"b".repeat(short)),
            Err(DeviceTokenError::TooShort { .. })
        );
        prop_assert!(is_too_short);
    }

    #[test]
    fn parsers_never_panic(s in any::<String>()) {
        let _ = DeviceToken::new(&s);
        let _ = Topic::new(&s).map(|t| (t.suffix(), t.base_topic().len()));
        let _ = CollapseId::new(&s);
        let _ = ApnsId::new(&s);
        let _ = s.parse::<Priority>();
        let _ = s.parse::<Expiration>();
        let _ = s.parse::<PushType>();
        let _ = Payload::from_slice(s.as_bytes());
        let _ = serde_json::from_str::<Notification>(&s);
    }

    #[test]
    fn payload_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Payload::from_slice(&bytes).map(|p| p.to_bytes(4096));
        let token = DeviceToken::new(&"ab".repeat(32)).unwrap();
        let topic = Topic::new("com.example.app").unwrap();
        let _ = Notification::builder(token, topic, PushType::Alert).raw_payload(bytes).build();
    }

    #[test]
    fn request_parser_never_panics(
        path in "\\PC{0,80}",
        values in prop::collection::vec(
            ("apns-(push-type|topic|priority|expiration|collapse-id|id)", "[ -~]{0,80}"),
            0..8,
        ),
        body in "\\PC{0,64}",
    ) {
        let mut headers = HeaderMap::new();
        for (name, value) in values {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
            }
        }
        let _ = Notification::from_parts(&path, &headers, body.into());
    }

    #[test]
    fn topics_that_parse_keep_their_rules(s in "[a-z.\\-_ ]{0,40}") {
        if let Ok(topic) = Topic::new(&s) {
            prop_assert!(topic.as_str().len() <= TOPIC_BYTES_MAX);
            prop_assert!(!topic.as_str().contains(' '));
            let rebuilt = topic.suffix().map_or(topic.base_topic().len(), |x| {
                topic.base_topic().len() + x.len()
            });
            prop_assert_eq!(rebuilt, topic.as_str().len());
        }
    }

    /// The limit applies to the serialized size, escapes and multi-byte characters included.
    #[test]
    fn payload_limit_is_on_serialized_size(
        text in "\\PC{0,300}|[\"\\\\\n\u{1}]{0,100}",
        limit in 0usize..1200,
    ) {
        let mut payload = Payload::new();
        payload.alert(text.clone()).badge(1);
        let size = serde_json::to_vec(&payload.to_json()).unwrap().len();
        match payload.to_bytes(limit) {
            Ok(bytes) => {
                prop_assert!(size <= limit);
                prop_assert_eq!(bytes.len(), size);
                let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                prop_assert_eq!(&back["aps"]["alert"], &json!(text));
            }
            Err(e) => {
                prop_assert!(size > limit);
                prop_assert_eq!(e, PayloadError::TooLarge { size, limit });
            }
        }
    }

    /// Notifications enforce the push type's own limit, exactly at the boundary.
    #[test]
    fn notification_payload_limit_follows_push_type(p in push_type(), slack in -3isize..=3) {
        let limit = p.payload_bytes_max();
        // `{"k":"…"}` is 8 bytes of framing around the string.
        let len = limit.checked_add_signed(slack - 8).unwrap();
        let mut payload = Payload::new();
        payload.custom("k", json!("x".repeat(len))).unwrap();
        let size = len + 8;
        let base = Topic::new("com.example.app").unwrap();
        let token = DeviceToken::new(&"cd".repeat(32)).unwrap();
        let built = Notification::builder(token, base.for_push_type(p).unwrap(), p)
            .payload(&payload)
            .build();
        prop_assert_eq!(built.is_ok(), size <= limit, "{:?}", built);
        if let Ok(n) = built {
            prop_assert_eq!(n.payload().len(), size);
        }
    }

    #[test]
    fn prepared_requests_read_back_identically(n in notification()) {
        let request = n.prepare();
        prop_assert!(!request.headers.contains_key("authorization"));
        prop_assert_eq!(
            request.headers.get("apns-push-type").unwrap(),
            n.push_type().as_str()
        );
        if let Some(p) = n.priority() {
            prop_assert_eq!(request.headers.get("apns-priority").unwrap(), p.as_str());
        }
        let back =
            Notification::from_parts(&request.path, &request.headers, request.body.clone())
                .unwrap();
        prop_assert_eq!(&back, &n);
        let json = serde_json::to_string(&n).unwrap();
        prop_assert_eq!(serde_json::from_str::<Notification>(&json).unwrap(), n);
    }

    #[test]
    fn collapse_id_boundary(s in "[^\\p{Cc}]{1,80}") {
        // Cut at the last char boundary at or below 64 bytes, and extend to 65 or more.
        let mut at = COLLAPSE_ID_BYTES_MAX.min(s.len());
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        if at > 0 {
            prop_assert!(CollapseId::new(&s[..at]).is_ok());
        }
        let long = format!("{}{}", s, "z".repeat(COLLAPSE_ID_BYTES_MAX + 1));
        let is_too_long = matches!(
            CollapseId::new(&long),
            Err(CollapseIdError::TooLong { max: COLLAPSE_ID_BYTES_MAX, .. })
        );
        prop_assert!(is_too_long);
        let exact = "é".repeat(COLLAPSE_ID_BYTES_MAX / 2);
        prop_assert!(CollapseId::new(&exact).is_ok());
        prop_assert!(CollapseId::new(&(exact.clone() + "a")).is_err());
    }
}
