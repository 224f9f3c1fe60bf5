//! The control plane's data directory and the secrets in it: the Ed25519 key that signs
//! bundles (`signing-key.pk8`), the admin token (`admin-token`) and the token nodes enroll
//! with (`join-token`), each created at first start, readable by the owner only, and kept
//! across restarts. The certificate authority's files are [`crate::ca`]'s.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use tern_proto::SigningKey;

#[derive(Debug, thiserror::Error)]
#[error("data directory {path}: {what}")]
pub struct DataDirError {
    path: PathBuf,
    what: String,
}

impl DataDirError {
    pub fn new(path: &Path, what: impl std::fmt::Display) -> Self {
        Self { path: path.to_owned(), what: what.to_string() }
    }
}

pub struct Secrets {
    pub signing: SigningKey,
    /// SHA-256 of the admin token: the token itself is not kept in memory.
    admin_token_hash: Vec<u8>,
    pub admin_token_path: PathBuf,
    join_token_hash: Vec<u8>,
    pub join_token_path: PathBuf,
}

impl Secrets {
    /// Loads the secrets under `dir`, creating the directory and whatever is missing.
    pub fn open(dir: &Path) -> Result<Self, DataDirError> {
        let fail = |path: &Path, what: String| DataDirError { path: path.to_owned(), what };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(dir, format!("cannot create it: {e}")))?;
        let key_path = dir.join("signing-key.pk8");
        let pkcs8 = read_or_create(&key_path, || {
            tern_proto::SigningKey::generate().map(|(pkcs8, _)| pkcs8).map_err(|e| e.to_string())
        })
        .map_err(|e| fail(&key_path, e))?;
        let signing = SigningKey::from_pkcs8(&pkcs8).map_err(|e| fail(&key_path, e.to_string()))?;
        let admin_token_path = dir.join("admin-token");
        let admin_token_hash = token_hash(&admin_token_path).map_err(|e| fail(&admin_token_path, e))?;
        let join_token_path = dir.join("join-token");
        let join_token_hash = token_hash(&join_token_path).map_err(|e| fail(&join_token_path, e))?;
        Ok(Self { signing, admin_token_hash, admin_token_path, join_token_hash, join_token_path })
    }

    /// Whether `token` is the admin token.
    pub fn is_admin(&self, token: &str) -> bool {
        digest(&SHA256, token.as_bytes()).as_ref() == self.admin_token_hash.as_slice()
    }

    /// Whether `token` is the token nodes enroll with.
    pub fn is_join(&self, token: &str) -> bool {
        digest(&SHA256, token.as_bytes()).as_ref() == self.join_token_hash.as_slice()
    }
}

/// SHA-256 of the token in `path` (a fresh random token when there is none yet): tokens
/// themselves are not kept in memory.
fn token_hash(path: &Path) -> Result<Vec<u8>, String> {
    let token = read_or_create(path, || {
        let mut bytes = [0u8; 24];
        SystemRandom::new().fill(&mut bytes).map_err(|_| "no system randomness".to_string())?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes())
    })?;
    let token = String::from_utf8_lossy(&token).trim().to_string();
    Ok(digest(&SHA256, token.as_bytes()).as_ref().to_vec())
}

pub(crate) fn read_or_create(path: &Path, create: impl FnOnce() -> Result<Vec<u8>, String>) -> Result<Vec<u8>, String> {
    match std::fs::read(path) {
        Ok(bytes) => return Ok(bytes),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("cannot read it: {e}")),
        Err(_) => {}
    }
    let bytes = create()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create it: {e}"))?;
    file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(|e| format!("cannot write it: {e}"))?;
    Ok(bytes)
}
