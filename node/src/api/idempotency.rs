//! `Idempotency-Key` → push id: SHA-256 over a domain-separated tenant and key, as a UUID
//! (version 8, RFC 9562 variant). Deterministic, so a retried request gets the same id,
//! which the engine deduplicates; tenants never collide because the tenant is hashed in,
//! length-prefixed.
//! The mapping is [`PushId::from_idempotency_key`], so every node (and an embedding program
//! using the engine directly) derives the same id.
//!
//! ```
//! use herald_node::api::push_id_for_key;
//!
//! let a = push_id_for_key("acme", "order-17");
//! assert_eq!(a, push_id_for_key("acme", "order-17"));
//! assert_ne!(a, push_id_for_key("globex", "order-17"));
//! assert_eq!(a.to_string().as_bytes()[14], b'8'); // version 8
//! ```

use herald_actors::PushId;

use super::error::ApiError;
use super::limits;

/// The push id for `key` sent by `tenant` ([`PushId::from_idempotency_key`]).
pub fn push_id_for_key(tenant: &str, key: &str) -> PushId {
    PushId::from_idempotency_key(tenant, key)
}

/// Check an idempotency key: 1..=[`IDEMPOTENCY_KEY_BYTES_MAX`](limits::IDEMPOTENCY_KEY_BYTES_MAX)
/// bytes of visible ASCII.
pub(crate) fn check_key(field: &str, key: &str) -> Result<(), ApiError> {
    if key.is_empty()
        || key.len() > limits::IDEMPOTENCY_KEY_BYTES_MAX
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::invalid(
            field,
            format!(
                "an idempotency key is 1 to {} visible ASCII characters",
                limits::IDEMPOTENCY_KEY_BYTES_MAX
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixes_keep_tenant_and_key_apart() {
        assert_ne!(push_id_for_key("ab", "c"), push_id_for_key("a", "bc"));
        let id = uuid::Uuid::from_u128(push_id_for_key("a", "b").as_u128());
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("k", "abc-1").is_ok());
        assert!(check_key("k", "").is_err());
        assert!(check_key("k", "a b").is_err());
        assert!(check_key("k", &"x".repeat(256)).is_err());
    }
}
