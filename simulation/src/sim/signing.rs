//! Deterministic provider-token signing for the simulator.
//!
//! Production signs ES256 with aws-lc, which draws a fresh random nonce per signature, and
//! the emulator's team key is normally generated from OS randomness. Either makes the bytes
//! of the `authorization` header differ run to run; HPACK's Huffman coding then gives the
//! header block a different length, h2 fills its write buffer differently, turmoil sees a
//! different number of segments and draws its per-segment latencies differently — and two
//! runs of one seed drift apart after a minute or so of simulated time.
//!
//! So under the simulator the team key is derived from the seed ([`team_key`]) and
//! `jsonwebtoken` is switched (process-wide, [`install`]) to a provider whose ES256 signer
//! is RFC 6979 deterministic (`p256`); verification and every other algorithm stay on
//! aws-lc. Production code is unchanged: it calls `jsonwebtoken` exactly as before.

use std::sync::LazyLock;

use herald_actors::seams::DetRng;
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, aws_lc};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};

use crate::emulator::{GeneratedKey, KeyConfig, TeamConfig};

/// The team's signing key and the emulator's view of it, both from `rng`.
pub fn team_key(
    rng: &mut DetRng,
    team_id: &str,
    key_id: &str,
    bundle_ids: &[&str],
) -> Result<(TeamConfig, GeneratedKey), String> {
    let secret = loop {
        let mut bytes = [0u8; 32];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_be_bytes());
        }
        // Zero or ≥ the group order is rejected (probability ~2^-32): draw again.
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            break secret;
        }
    };
    let p8_pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("team key: {e}"))?
        .to_string();
    let public_key_pem = secret
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| format!("team key: {e}"))?;
    let team = TeamConfig {
        team_id: team_id.to_owned(),
        bundle_ids: bundle_ids.iter().map(|b| (*b).to_owned()).collect(),
        keys: vec![KeyConfig {
            key_id: key_id.to_owned(),
            public_key_pem: Some(public_key_pem),
            ..KeyConfig::default()
        }],
    };
    let key = GeneratedKey {
        key_id: key_id.to_owned(),
        team_id: team_id.to_owned(),
        p8_pem,
    };
    Ok((team, key))
}

/// Makes `jsonwebtoken` sign ES256 deterministically in this process. Returns whether the
/// deterministic provider is in force: `false` when another provider was already chosen
/// (something used `jsonwebtoken` first) — runs then are valid but their traces may differ
/// between processes. `herald-sim` calls this before anything else.
pub fn install() -> bool {
    let ours: &'static CryptoProvider = &PROVIDER;
    match ours.install_default() {
        Ok(()) => true,
        Err(current) => std::ptr::eq(current, ours),
    }
}

static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    key_utils: aws_lc::DEFAULT_PROVIDER.key_utils.clone(),
});

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    match algorithm {
        Algorithm::ES256 => {
            let key = p256::ecdsa::SigningKey::from_pkcs8_der(key.as_bytes())
                .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
            Ok(Box::new(DeterministicEs256(key)))
        }
        other => (aws_lc::DEFAULT_PROVIDER.signer_factory)(other, key),
    }
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    (aws_lc::DEFAULT_PROVIDER.verifier_factory)(algorithm, key)
}

/// ES256 with RFC 6979 nonces: the same key and message give the same signature.
struct DeterministicEs256(p256::ecdsa::SigningKey);

impl signature::Signer<Vec<u8>> for DeterministicEs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let signature: p256::ecdsa::Signature = self.0.sign(msg);
        Ok(signature.to_bytes().to_vec())
    }
}

impl JwtSigner for DeterministicEs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_actors::apns::SigningKey;

    #[test]
    fn one_seed_gives_one_key_and_one_signature() {
        assert!(install(), "nothing in this test binary signs before");
        let a = team_key(
            &mut DetRng::from_seed(7),
            "TEAM123456",
            "KEY1234567",
            &["b"],
        )
        .unwrap();
        let b = team_key(
            &mut DetRng::from_seed(7),
            "TEAM123456",
            "KEY1234567",
            &["b"],
        )
        .unwrap();
        let c = team_key(
            &mut DetRng::from_seed(8),
            "TEAM123456",
            "KEY1234567",
            &["b"],
        )
        .unwrap();
        assert_eq!(a.1.p8_pem, b.1.p8_pem);
        assert_ne!(a.1.p8_pem, c.1.p8_pem);

        let sign = |pem: &str| {
            let key = SigningKey::from_p8_pem(pem.as_bytes(), "KEY1234567", "TEAM123456").unwrap();
            key.sign(herald_actors::seams::Timestamp::from_secs(1_700_000_000))
                .unwrap()
                .jwt()
                .to_owned()
        };
        let first = sign(&a.1.p8_pem);
        assert_eq!(first, sign(&b.1.p8_pem), "RFC 6979: same key, same claims");
        assert_ne!(first, sign(&c.1.p8_pem));

        // The emulator's verifier (aws-lc) accepts what the deterministic signer produced.
        let public = a.0.keys[0].public_key_pem.clone().unwrap();
        let decoding = DecodingKey::from_ec_pem(public.as_bytes()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<serde_json::Value>(&first, &decoding, &validation).unwrap();
    }
}
