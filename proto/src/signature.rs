//! Bundle signatures: the control plane signs each version's bundle id with its Ed25519
//! key (ring); nodes and relays verify before they store or run a bundle. What is signed is
//! a domain-separation tag followed by the 32-byte id, so a signature over a bundle can
//! never be replayed as a signature over anything else. No I/O here: keys come in and go
//! out as bytes.

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::BundleId;

const CONTEXT: &[u8] = b"tern-bundle-signature-v1\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the signing key is not an Ed25519 key in PKCS#8 form")]
    BadKey,
    #[error("the signature is not valid for bundle {0} under the control plane's key")]
    Invalid(BundleId),
    #[error("a signature must be 64 bytes as 128 hex digits")]
    Malformed,
}

/// The control plane's private key.
pub struct SigningKey(Ed25519KeyPair);

/// The public half, which nodes are given at enrollment.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey(Vec<u8>);

/// An Ed25519 signature over a bundle id.
#[derive(Clone, PartialEq, Eq)]
pub struct BundleSignature([u8; 64]);

impl SigningKey {
    /// A fresh key, as PKCS#8 bytes (to store) and the key itself.
    pub fn generate() -> Result<(Vec<u8>, Self), SignatureError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| SignatureError::BadKey)?;
        let key = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((pkcs8.as_ref().to_vec(), key))
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, SignatureError> {
        Ed25519KeyPair::from_pkcs8(pkcs8).map(Self).map_err(|_| SignatureError::BadKey)
    }

    pub fn sign(&self, bundle: BundleId) -> BundleSignature {
        let signature = self.0.sign(&message(bundle));
        BundleSignature(signature.as_ref().try_into().expect("Ed25519 signatures are 64 bytes"))
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.public_key().as_ref().to_vec())
    }
}

impl VerifyingKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureError> {
        if bytes.len() == 32 { Ok(Self(bytes.to_vec())) } else { Err(SignatureError::BadKey) }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn verify(&self, bundle: BundleId, signature: &BundleSignature) -> Result<(), SignatureError> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&message(bundle), &signature.0)
            .map_err(|_| SignatureError::Invalid(bundle))
    }
}

fn message(bundle: BundleId) -> Vec<u8> {
    [CONTEXT, bundle.as_bytes()].concat()
}

impl std::fmt::Display for BundleSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for BundleSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BundleSignature({}…)", &self.to_string()[..16])
    }
}

impl std::str::FromStr for BundleSignature {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, SignatureError> {
        if s.len() != 128 || !s.is_ascii() {
            return Err(SignatureError::Malformed);
        }
        let mut bytes = [0u8; 64];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| SignatureError::Malformed)?;
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bundle, Manifest};

    fn id(code: &str) -> BundleId {
        let manifest = Manifest::for_single_file("f", "index.js").unwrap();
        Bundle::new(manifest, [("index.js".to_string(), code.as_bytes().to_vec())]).unwrap().id()
    }

    #[test]
    fn a_signature_verifies_for_its_bundle_only_and_under_its_key_only() {
        let (pkcs8, key) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(&pkcs8).unwrap();
        let (a, b) = (id("export default 1"), id("export default 2"));
        let signature = key.sign(a);
        assert_eq!(again.sign(a), signature, "Ed25519 is deterministic");
        let public = key.verifying_key();
        assert_eq!(public.verify(a, &signature), Ok(()));
        assert_eq!(public.verify(b, &signature), Err(SignatureError::Invalid(b)));
        let (_, other) = SigningKey::generate().unwrap();
        assert!(other.verifying_key().verify(a, &signature).is_err());
        let text = signature.to_string();
        assert_eq!(text.parse::<BundleSignature>().unwrap(), signature);
        assert_eq!("ab".parse::<BundleSignature>(), Err(SignatureError::Malformed));
    }
}
