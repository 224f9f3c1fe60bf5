//! What a node has applied, kept on its disk so that it serves its last known good state
//! after a restart even with the control plane down: `state.json` (the [`AppliedState`],
//! replaced atomically) and `bundles/<id>` (wire bytes). Everything read back is verified
//! again (hash and signature) before it is served; a bundle that fails is dropped and the
//! node asks for everything again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_proto::distribution::{AppliedState, Assignment};
use tern_proto::{Bundle, BundleId, BundleSignature, VerifyingKey};

pub struct LocalState {
    dir: PathBuf,
}

/// Why an assignment's bundle cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("function {function}: {what}")]
    Refused { function: String, what: String },
}

/// Checks `wire` against `assignment`: the id is the bytes' hash, and the control plane
/// signed that id.
pub fn verify(assignment: &Assignment, wire: &[u8], key: &VerifyingKey) -> Result<Bundle, VerifyError> {
    let refused = |what: String| VerifyError::Refused { function: assignment.function.clone(), what };
    let id: BundleId =
        assignment.bundle.parse().map_err(|()| refused(format!("bad bundle id {:?}", assignment.bundle)))?;
    let signature: BundleSignature = assignment.signature.parse().map_err(|e| refused(format!("{e}")))?;
    key.verify(id, &signature).map_err(|e| refused(e.to_string()))?;
    let bundle = Bundle::from_wire(wire, id).map_err(|e| refused(format!("bundle {}: {e}", id.short())))?;
    if bundle.name() != assignment.function {
        return Err(refused(format!("bundle {} is function {:?}", id.short(), bundle.name())));
    }
    Ok(bundle)
}

impl LocalState {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("bundles"))?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// The state last applied and its bundles, verified under `key`. When a bundle is
    /// missing or fails, that function is left out and the state's revision is 0, so that
    /// the control plane sends everything again.
    pub fn load(&self, key: &VerifyingKey) -> (AppliedState, HashMap<String, Arc<Bundle>>) {
        let path = self.dir.join("state.json");
        let mut state: AppliedState = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!("{}: unreadable ({e}); starting empty", path.display());
                AppliedState::default()
            }),
            Err(_) => AppliedState::default(),
        };
        let mut bundles = HashMap::new();
        let mut lost = Vec::new();
        for part in state.functions.values().flat_map(Assignment::parts) {
            match self.bundle(&part, key) {
                Ok(bundle) => {
                    bundles.insert(part.bundle.clone(), Arc::new(bundle));
                }
                Err(e) => {
                    tracing::error!("kept state: {e}; asking the control plane again");
                    lost.push(part.function.clone());
                }
            }
        }
        if !lost.is_empty() {
            state.functions.retain(|name, _| !lost.contains(name));
            state.revision = 0;
        }
        (state, bundles)
    }

    /// The bundle kept for `assignment`, verified.
    pub fn bundle(&self, assignment: &Assignment, key: &VerifyingKey) -> Result<Bundle, VerifyError> {
        let id: BundleId = assignment.bundle.parse().map_err(|()| VerifyError::Refused {
            function: assignment.function.clone(),
            what: format!("bad bundle id {:?}", assignment.bundle),
        })?;
        let path = self.bundle_path(&id.to_string());
        let wire = std::fs::read(&path).map_err(|e| VerifyError::Refused {
            function: assignment.function.clone(),
            what: format!("{}: {e}", path.display()),
        })?;
        verify(assignment, &wire, key)
    }

    /// The wire bytes kept for bundle `id`, unverified (whoever receives them verifies);
    /// `None` for an id that is not 64 hex digits or not kept.
    pub fn wire(&self, id: &str) -> Option<Vec<u8>> {
        let id: BundleId = id.parse().ok()?;
        std::fs::read(self.bundle_path(&id.to_string())).ok()
    }

    pub fn put_bundle(&self, id: &str, wire: &[u8]) -> std::io::Result<()> {
        write_atomically(&self.bundle_path(id), wire)
    }

    pub fn save(&self, state: &AppliedState) -> std::io::Result<()> {
        write_atomically(&self.dir.join("state.json"), &serde_json::to_vec_pretty(state).expect("state serializes"))
    }

    /// Removes kept bundles no function of `state` uses.
    pub fn prune(&self, state: &AppliedState) {
        let Ok(entries) = std::fs::read_dir(self.dir.join("bundles")) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !state.functions.values().flat_map(Assignment::parts).any(|a| a.bundle == name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn bundle_path(&self, id: &str) -> PathBuf {
        // Ids are parsed as hex before they get here, so this never leaves `bundles/`.
        self.dir.join("bundles").join(id)
    }
}

/// Written whole or not at all, readable by the owner only (the state holds secrets).
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::{Manifest, SigningKey};

    fn bundle(name: &str, code: &str) -> Bundle {
        let manifest = Manifest::for_single_file(name, "index.js").unwrap();
        Bundle::new(manifest, [("index.js".to_string(), code.as_bytes().to_vec())]).unwrap()
    }

    fn assignment(bundle: &Bundle, key: &SigningKey) -> Assignment {
        Assignment {
            function: bundle.name().to_string(),
            version: 1,
            bundle: bundle.id().to_string(),
            signature: key.sign(bundle.id()).to_string(),
            revision: 1,
            rollout: None,
            secrets: Default::default(),
        }
    }

    #[test]
    fn only_the_signed_bytes_of_the_assigned_function_pass() {
        let (_, key) = SigningKey::generate().unwrap();
        let (_, stranger) = SigningKey::generate().unwrap();
        let good = bundle("f", "export default {}");
        let wire = good.to_wire();
        let public = key.verifying_key();
        assert!(verify(&assignment(&good, &key), &wire, &public).is_ok());

        let e = verify(&assignment(&good, &stranger), &wire, &public).unwrap_err().to_string();
        assert!(e.contains("signature is not valid"), "{e}");

        let mut flipped = wire.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        let e = verify(&assignment(&good, &key), &flipped, &public).unwrap_err().to_string();
        assert!(e.contains("does not match its id"), "{e}");

        // Signed, intact, but another function's bundle under this function's name.
        let other = bundle("g", "export default {}");
        let mut misnamed = assignment(&other, &key);
        misnamed.function = "f".into();
        let e = verify(&misnamed, &other.to_wire(), &public).unwrap_err().to_string();
        assert!(e.contains("is function \"g\""), "{e}");

        let mut traversal = assignment(&good, &key);
        traversal.bundle = "../../etc/passwd".into();
        assert!(verify(&traversal, &wire, &public).is_err());
    }
}
