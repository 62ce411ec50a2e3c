//! `Idempotency-Key` → push id: SHA-256 over a domain-separated tenant and key, as a UUID
//! (version 8, RFC 9562 variant). Deterministic, so a retried request gets the same id,
//! which the engine deduplicates; tenants never collide because the tenant is hashed in,
//! length-prefixed.
//!
//! (herald-actors is getting `PushId::from_idempotency_key`; until it lands, the mapping
//! lives here.)
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
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::limits;

const DOMAIN: &[u8] = b"herald/idempotency-key/v1\0";

/// The push id for `key` sent by `tenant`.
pub fn push_id_for_key(tenant: &str, key: &str) -> PushId {
    let mut hash = Sha256::new();
    hash.update(DOMAIN);
    hash.update((tenant.len() as u64).to_be_bytes());
    hash.update(tenant.as_bytes());
    hash.update((key.len() as u64).to_be_bytes());
    hash.update(key.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    let uuid = uuid::Builder::from_custom_bytes(bytes).into_uuid();
    PushId::from_u128(uuid.as_u128())
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
