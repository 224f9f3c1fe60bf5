//! Owns the engine's compiled-code cache: where it lives and what keys tenants can reach.
//!
//! The quickjs engine caches the bytecode of every module it compiles on disk, keyed by a
//! fast, unkeyed 64-bit hash of module name and source, and it overwrites an entry on every
//! compile. Left alone, a tenant who could make its module hash to the key of an extension
//! module (whose name and source are public) or of another tenant's module would have its
//! bytecode run in their place. So:
//! - every process that runs isolates [`install`]s a Tern-owned cache directory (mode 0700,
//!   never the engine's machine-wide default) holding a secret key (`salt.key`, 0600);
//! - the loader ends every function module's source with a line comment carrying a salt,
//!   an HMAC-SHA256 of the bundle id and module path under that key ([`salted`]). Keys of
//!   tenant modules are then unpredictable to everyone, tenants included, and differ
//!   between functions with the same source, while one version's isolates still share
//!   their entries (the cache keeps working: a version compiles once per node);
//! - entries are pruned when the directory outgrows [`BUDGET_BYTES`] at start-up.
//!
//! The comment goes on the file's last (empty) line, so line numbers are unchanged.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tern_proto::{BundleId, ModulePath};

/// The engine reads its cache directory from this variable, once per process.
const ENGINE_DIR_VAR: &str = "V82JSC_BC_CACHE_DIR";
/// Overrides [`default_dir`].
pub const DIR_VAR: &str = "TERN_CODE_CACHE_DIR";
/// Past this size at start-up, the cached bytecode is dropped and recompiled on demand.
pub const BUDGET_BYTES: u64 = 512 << 20;
const KEY_FILE: &str = "salt.key";

static KEY: OnceLock<hmac::Key> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
#[error("code cache {dir}: {what}: {error} (set {DIR_VAR} to a writable directory)")]
pub struct CodeCacheError {
    dir: PathBuf,
    what: &'static str,
    error: std::io::Error,
}

/// `$TERN_CODE_CACHE_DIR`, else `$XDG_CACHE_HOME/tern/bytecode-<version>` (or under
/// `~/.cache`, else the temp dir). The version is in the name because bytecode is only
/// valid for the engine that wrote it.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DIR_VAR) {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tern").join(concat!("bytecode-", env!("CARGO_PKG_VERSION")))
}

/// Points the engine's cache at `dir` and loads (or creates) its key. Call it first thing
/// in a process that will run isolates, before any other thread exists: it sets an
/// environment variable the engine reads when it first compiles.
pub fn install(dir: &Path) -> Result<(), CodeCacheError> {
    let err = |what| move |error| CodeCacheError { dir: dir.to_owned(), what, error };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err("cannot create it"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err("cannot restrict it"))?;
    let key = load_or_create_key(dir).map_err(err("cannot read or create its key"))?;
    prune(dir);
    // SAFETY: called before the process starts other threads (see above); the engine reads
    // the variable later, on the isolate threads.
    unsafe { std::env::set_var(ENGINE_DIR_VAR, dir) };
    let _ = KEY.set(hmac::Key::new(hmac::HMAC_SHA256, &key));
    Ok(())
}

fn load_or_create_key(dir: &Path) -> std::io::Result<Vec<u8>> {
    let path = dir.join(KEY_FILE);
    if let Ok(key) = std::fs::read(&path)
        && key.len() == 32
    {
        return Ok(key);
    }
    let mut key = vec![0u8; 32];
    SystemRandom::new().fill(&mut key).map_err(|_| std::io::Error::other("no system randomness"))?;
    // Several processes start at once: write privately, then link; the first link wins.
    let tmp = dir.join(format!("{KEY_FILE}.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(&key)?;
    file.sync_all()?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let key = std::fs::read(&path)?;
            if key.len() == 32 { Ok(key) } else { Err(std::io::Error::other("salt.key is not 32 bytes")) }
        }
        Err(e) => Err(e),
    }
}

/// Drops every cached entry when the directory is over budget (entries are only written,
/// never refreshed, so age tells nothing about use; recompiling is cheap).
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let files: Vec<_> =
        entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "qbc" || x == "tmp")).collect();
    let total: u64 = files.iter().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    if total > BUDGET_BYTES {
        tracing::info!(dir = %dir.display(), total_mib = total >> 20, "code cache over budget: cleared");
        for file in files {
            let _ = std::fs::remove_file(file.path());
        }
    }
}

/// The key: the installed one, or (tests, benches) a random one for this process.
fn key() -> &'static hmac::Key {
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).expect("system randomness");
        hmac::Key::new(hmac::HMAC_SHA256, &key)
    })
}

/// `source` with the cache salt of (`bundle`, `path`) appended as a last-line comment.
pub fn salted(mut source: String, bundle: BundleId, path: &ModulePath) -> String {
    let tag = hmac::sign(key(), format!("{bundle}\0{}", path.as_str()).as_bytes());
    // On the last line, not a new one, so an "unexpected end of input" names the file's own
    // last line.
    if !source.ends_with('\n') {
        source.push('\n');
    }
    source.push_str("// tern:");
    for byte in &tag.as_ref()[..16] {
        source.push_str(&format!("{byte:02x}"));
    }
    source
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::{Bundle, Manifest};

    fn id(name: &str) -> BundleId {
        let manifest = Manifest::for_single_file(name, "index.js").unwrap();
        Bundle::new(manifest, [("index.js".to_string(), b"export default {}".to_vec())]).unwrap().id()
    }

    #[test]
    fn salts_differ_between_functions_and_paths_and_repeat_within_a_version() {
        let a = ModulePath::new("index.js").unwrap();
        let b = ModulePath::new("lib.js").unwrap();
        let src = "export default 1;".to_string();
        let one = salted(src.clone(), id("one"), &a);
        assert!(one.starts_with("export default 1;\n// tern:"), "{one}");
        assert_eq!(one, salted(src.clone(), id("one"), &a));
        assert_ne!(one, salted(src.clone(), id("two"), &a));
        assert_ne!(one, salted(src, id("one"), &b));
    }

    #[test]
    fn the_key_is_created_once_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("tern-code-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create_key(&dir).map(|_| ()).unwrap_err();
        assert_eq!(first.kind(), std::io::ErrorKind::NotFound, "no directory yet");
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let k1 = load_or_create_key(&dir).unwrap();
        let k2 = load_or_create_key(&dir).unwrap();
        assert_eq!(k1, k2);
        let mode = std::fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
