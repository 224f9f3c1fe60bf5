//! Join tokens that expire: an admin creates one (`POST /v1/tokens`, `tern token create
//! --ttl 1h`) for each batch of nodes to enrol, instead of handing out the data directory's
//! `join-token`, which never expires. The store keeps only a token's SHA-256, its role and
//! its expiry; checking one is pure ([`check`]), on a clock the caller passes in.

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The longest a created token may live.
pub const MAX_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// A created token as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// What it may do: `join` (enrol nodes, read the topology).
    pub role: String,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// What a presented token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    Valid,
    Expired { at_ms: u64 },
    Unknown,
}

/// Whether `record` (the one whose hash matched, if any) lets its bearer in at `now_ms`.
pub fn check(record: Option<&TokenRecord>, now_ms: u64) -> TokenCheck {
    match record {
        None => TokenCheck::Unknown,
        Some(r) if now_ms < r.expires_ms => TokenCheck::Valid,
        Some(r) => TokenCheck::Expired { at_ms: r.expires_ms },
    }
}

/// SHA-256 of `token`, hex: how the store names it.
pub fn hash(token: &str) -> String {
    digest(&SHA256, token.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh token: 24 random bytes, hex.
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; 24];
    SystemRandom::new().fill(&mut bytes).map_err(|_| "no system randomness".to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expires_ms: u64) -> TokenRecord {
        TokenRecord { hash: hash("t"), role: "join".into(), created_ms: 0, expires_ms }
    }

    #[test]
    fn a_token_is_valid_until_it_expires() {
        assert_eq!(check(Some(&record(1_000)), 999), TokenCheck::Valid);
        assert_eq!(check(Some(&record(1_000)), 1_000), TokenCheck::Expired { at_ms: 1_000 });
        assert_eq!(check(None, 0), TokenCheck::Unknown);
    }

    #[test]
    fn tokens_are_random_and_named_by_their_hash() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 48);
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
    }
}
