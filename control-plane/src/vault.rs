//! Secrets at rest: every secret value is sealed with ChaCha20-Poly1305 (ring AEAD) under
//! the data directory's `secrets-key` (32 random bytes, owner-only, created at first start)
//! before it reaches the store, with a fresh random nonce, and bound to its function and
//! name (the associated data), so a sealed value cannot be moved to another entry. Values
//! are opened only to be sent to nodes over the mutually authenticated channel.

use std::path::Path;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::keys::{DataDirError, read_or_create};

pub struct Vault {
    key: LessSafeKey,
    random: SystemRandom,
}

#[derive(Debug, thiserror::Error)]
#[error("a sealed secret ({0}) cannot be opened: it was altered, or sealed under another secrets-key")]
pub struct Unsealable(pub String);

impl Vault {
    pub fn open(dir: &Path) -> Result<Self, DataDirError> {
        let path = dir.join("secrets-key");
        let random = SystemRandom::new();
        let bytes = read_or_create(&path, || {
            let mut key = vec![0u8; 32];
            random.fill(&mut key).map_err(|_| "no system randomness".to_string())?;
            Ok(key)
        })
        .map_err(|e| DataDirError::new(&path, e))?;
        let key =
            UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| DataDirError::new(&path, "not a 32-byte key"))?;
        Ok(Self { key: LessSafeKey::new(key), random })
    }

    /// `value` sealed for `entry` (function and name): nonce, then ciphertext and tag.
    pub fn seal(&self, entry: &str, value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).expect("system randomness");
        let mut sealed = value.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(entry.as_bytes()), &mut sealed)
            .expect("sealing cannot fail for small values");
        [nonce.as_slice(), &sealed].concat()
    }

    pub fn unseal(&self, entry: &str, sealed: &[u8]) -> Result<Vec<u8>, Unsealable> {
        if sealed.len() < NONCE_LEN {
            return Err(Unsealable(entry.into()));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealable(entry.into()))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(entry.as_bytes()), &mut body)
            .map_err(|_| Unsealable(entry.into()))?;
        Ok(plain.to_vec())
    }
}

/// Refuses a secret name that is not an environment-variable-like identifier, or a value
/// over 5 KiB.
pub fn check_secret(name: &str, value: &[u8]) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || name.len() > 64 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("secret name {name:?}: use letters, digits and _, not starting with a digit, at most 64"));
    }
    if value.len() > 5 * 1024 {
        return Err(format!("secret {name}: the value is {} bytes; at most 5 KiB", value.len()));
    }
    std::str::from_utf8(value).map_err(|_| format!("secret {name}: the value must be UTF-8 text"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_entry_and_key() {
        let dir = std::env::temp_dir().join(format!("tern-vault-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let vault = Vault::open(&dir).unwrap();
        let sealed = vault.seal("api/TOKEN", b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "not in the clear");
        assert_ne!(sealed, vault.seal("api/TOKEN", b"hunter2"), "a fresh nonce each time");
        assert_eq!(vault.unseal("api/TOKEN", &sealed).unwrap(), b"hunter2");
        assert!(vault.unseal("web/TOKEN", &sealed).is_err(), "bound to its entry");
        let mut altered = sealed.clone();
        altered[20] ^= 1;
        assert!(vault.unseal("api/TOKEN", &altered).is_err());
        assert_eq!(Vault::open(&dir).unwrap().unseal("api/TOKEN", &sealed).unwrap(), b"hunter2", "key kept");
        std::fs::remove_dir_all(dir).unwrap();
        assert!(check_secret("API_KEY", b"x").is_ok());
        assert!(check_secret("1KEY", b"x").is_err() && check_secret("A-B", b"x").is_err());
        assert!(check_secret("BIG", &[b'a'; 6000]).is_err());
    }
}
