//! A bundle: one immutable version of a function, its modules plus its manifest.
//!
//! Module kinds follow the Workers module rules: `.js`/`.mjs` are ES modules, `.json` is a
//! JSON module, `.wasm` a compiled WebAssembly module, `.txt`/`.html`/`.sql`/`.css`/`.svg`/`.md`
//! text, `.bin` bytes. A bundle is addressed by the SHA-256 of a canonical encoding of its
//! manifest and modules, so the same project always yields the same [`BundleId`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::manifest::Manifest;

/// A path inside a bundle: relative, `/`-separated, no `.` or `..` segments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModulePath(String);

impl ModulePath {
    pub fn new(path: &str) -> Result<Self, BundleError> {
        let path = path.trim_start_matches("./");
        let ok = !path.is_empty()
            && !path.starts_with('/')
            && !path.contains('\\')
            && !path.contains('\0')
            && path.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        if ok { Ok(Self(path.to_string())) } else { Err(BundleError::BadPath(path.to_string())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModulePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    EsModule,
    Json,
    Wasm,
    Text,
    Data,
}

impl ModuleKind {
    /// The kind a file gets from its extension, or `None` for files that are not modules.
    pub fn from_path(path: &str) -> Option<Self> {
        let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
        Some(match ext.as_str() {
            "js" | "mjs" => Self::EsModule,
            "json" => Self::Json,
            "wasm" => Self::Wasm,
            "txt" | "html" | "htm" | "sql" | "css" | "svg" | "md" => Self::Text,
            "bin" => Self::Data,
            _ => return None,
        })
    }

    fn tag(self) -> u8 {
        match self {
            Self::EsModule => 1,
            Self::Json => 2,
            Self::Wasm => 3,
            Self::Text => 4,
            Self::Data => 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub kind: ModuleKind,
    pub bytes: Arc<[u8]>,
}

/// SHA-256 of a bundle's canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BundleId([u8; 32]);

impl std::str::FromStr for BundleId {
    type Err = ();

    /// The 64 hex digits [`fmt::Display`] writes.
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.len() != 64 {
            return Err(());
        }
        let mut id = [0u8; 32];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or(())?, 16).map_err(|_| ())?;
        }
        Ok(Self(id))
    }
}

impl BundleId {
    /// The 32 bytes of the SHA-256.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex digits: enough to tell versions apart in logs.
    pub fn short(&self) -> String {
        // Only the six bytes shown: this runs for every request the node dispatches.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.0[..6].iter().flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]).map(char::from).collect()
    }
}

impl fmt::Display for BundleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for BundleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BundleId({})", self.short())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("module path {0:?} must be relative, '/'-separated, without '.' or '..' segments")]
    BadPath(String),
    #[error("main module {0:?} is not in the bundle")]
    MissingMain(String),
    #[error("main module {0:?} must be a .js or .mjs file, or a .wasm WASI program")]
    MainNotRunnable(String),
    #[error("module {0:?}: file type not supported (use .js, .mjs, .json, .wasm, .txt, .html, .bin ...)")]
    UnknownKind(String),
}

/// One immutable version of a function.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    pub modules: BTreeMap<ModulePath, Module>,
    id: BundleId,
}

/// Why bytes are not a bundle in wire form.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not a tern bundle (wrong header)")]
    NotABundle,
    #[error("the bundle is truncated")]
    Truncated,
    #[error("the bundle's manifest does not parse: {0}")]
    Manifest(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("the bundle's content does not match its id: expected {expected}, got {actual}")]
    WrongId { expected: BundleId, actual: BundleId },
}

const WIRE_MAGIC: &[u8] = b"tern-bundle-wire-v1";

impl Bundle {
    /// The bundle as bytes, to hand to another process: a header, then length-prefixed
    /// fields (the manifest as JSON, then each module's path and bytes).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.modules.values().map(|m| m.bytes.len() + 64).sum::<usize>() + 256);
        let mut field = |bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        field(WIRE_MAGIC);
        field(&serde_json::to_vec(&self.manifest).expect("manifest serializes"));
        for (path, module) in &self.modules {
            field(path.as_str().as_bytes());
            field(&module.bytes);
        }
        out
    }

    /// Reads [`Self::to_wire`]'s bytes back, checking the content against `expected`.
    pub fn from_wire(bytes: &[u8], expected: BundleId) -> Result<Self, WireError> {
        let mut rest = bytes;
        let mut next = || -> Result<Option<&[u8]>, WireError> {
            if rest.is_empty() {
                return Ok(None);
            }
            let (len, tail) = rest.split_first_chunk::<8>().ok_or(WireError::Truncated)?;
            let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| WireError::Truncated)?;
            if tail.len() < len {
                return Err(WireError::Truncated);
            }
            let (field, tail) = tail.split_at(len);
            rest = tail;
            Ok(Some(field))
        };
        if next()? != Some(WIRE_MAGIC) {
            return Err(WireError::NotABundle);
        }
        let manifest: Manifest = serde_json::from_slice(next()?.ok_or(WireError::Truncated)?)
            .map_err(|e| WireError::Manifest(e.to_string()))?;
        let mut files = Vec::new();
        while let Some(path) = next()? {
            let path = String::from_utf8(path.to_vec()).map_err(|_| WireError::Truncated)?;
            let bytes = next()?.ok_or(WireError::Truncated)?;
            files.push((path, bytes.to_vec()));
        }
        let bundle = Self::new(manifest, files)?;
        if bundle.id() != expected {
            return Err(WireError::WrongId { expected, actual: bundle.id() });
        }
        Ok(bundle)
    }

    /// Builds a bundle from files; every file must be a module kind and `main` must be one.
    pub fn new(manifest: Manifest, files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Result<Self, BundleError> {
        let mut modules = BTreeMap::new();
        for (path, bytes) in files {
            let kind = ModuleKind::from_path(&path).ok_or_else(|| BundleError::UnknownKind(path.clone()))?;
            modules.insert(ModulePath::new(&path)?, Module { kind, bytes: bytes.into() });
        }
        let main = ModulePath::new(&manifest.main)?;
        match modules.get(&main) {
            None => return Err(BundleError::MissingMain(manifest.main.clone())),
            Some(m) if !matches!(m.kind, ModuleKind::EsModule | ModuleKind::Wasm) => {
                return Err(BundleError::MainNotRunnable(manifest.main.clone()));
            }
            Some(_) => {}
        }
        let id = Self::compute_id(&manifest, &modules);
        Ok(Self { manifest, modules, id })
    }

    /// This bundle with `extra` added to its `[vars]` (replacing vars of the same name), as
    /// a node serves a function with its secrets. The result has an id of its own, so that
    /// isolates of the old values are not reused; the signed id is this bundle's.
    pub fn with_vars(&self, extra: &BTreeMap<String, String>) -> Bundle {
        let mut manifest = self.manifest.clone();
        for (name, value) in extra {
            manifest.vars.insert(name.clone(), serde_json::Value::String(value.clone()));
        }
        let id = Self::compute_id(&manifest, &self.modules);
        Bundle { manifest, modules: self.modules.clone(), id }
    }

    pub fn id(&self) -> BundleId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn main_path(&self) -> ModulePath {
        ModulePath::new(&self.manifest.main).expect("validated in Bundle::new")
    }

    /// Whether the function is a WebAssembly (WASI) program rather than a JavaScript module.
    pub fn main_is_wasm(&self) -> bool {
        self.modules.get(&self.main_path()).is_some_and(|m| m.kind == ModuleKind::Wasm)
    }

    fn compute_id(manifest: &Manifest, modules: &BTreeMap<ModulePath, Module>) -> BundleId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let manifest_json = serde_json::to_vec(manifest).expect("manifest serializes");
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_le_bytes());
            ctx.update(bytes);
        };
        field(b"tern-bundle-v1");
        field(&manifest_json);
        for (path, module) in modules {
            field(path.as_str().as_bytes());
            field(&[module.kind.tag()]);
            field(&module.bytes);
        }
        let digest = ctx.finish();
        let mut id = [0u8; 32];
        id.copy_from_slice(digest.as_ref());
        BundleId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(main: &str) -> Manifest {
        Manifest::for_single_file("f", main).unwrap()
    }

    #[test]
    fn the_short_id_is_the_first_twelve_hex_digits() {
        let b = Bundle::new(manifest("a.js"), [("a.js".into(), b"export default {}".to_vec())]).unwrap();
        assert_eq!(b.id().short(), b.id().to_string()[..12]);
    }

    #[test]
    fn same_content_same_id_and_any_change_changes_it() {
        let a = Bundle::new(manifest("a.js"), [("a.js".into(), b"export default {}".to_vec())]).unwrap();
        let b = Bundle::new(manifest("a.js"), [("a.js".into(), b"export default {}".to_vec())]).unwrap();
        let c = Bundle::new(manifest("a.js"), [("a.js".into(), b"export default {} ".to_vec())]).unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_eq!(a.id().to_string().len(), 64);
    }

    #[test]
    fn a_bundle_survives_the_wire_and_a_changed_byte_is_caught() {
        let mut m =
            Manifest::parse("name = \"w\"\nmain = \"a.js\"\nroutes = [\"x.com/*\"]\n[limits]\ncpu_ms = 7\n").unwrap();
        m.vars.insert("K".into(), serde_json::json!([1, 2]));
        let a = Bundle::new(m, [("a.js".into(), b"export default {}".to_vec()), ("d.json".into(), b"{}".to_vec())])
            .unwrap();
        let wire = a.to_wire();
        let b = Bundle::from_wire(&wire, a.id()).unwrap();
        assert_eq!(b.id(), a.id());
        assert_eq!(b.manifest, a.manifest);
        assert_eq!(a.id().to_string().parse::<BundleId>(), Ok(a.id()));
        let mut bad = wire.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(Bundle::from_wire(&bad, a.id()), Err(WireError::WrongId { .. })));
        assert!(matches!(Bundle::from_wire(&wire[..wire.len() - 3], a.id()), Err(WireError::Truncated)));
        assert!(matches!(Bundle::from_wire(b"nonsense", a.id()), Err(WireError::Truncated | WireError::NotABundle)));
    }

    #[test]
    fn path_traversal_is_refused() {
        for bad in ["../x.js", "/etc/x.js", "a/../../x.js", "a//b.js", "a\\b.js"] {
            assert!(matches!(ModulePath::new(bad), Err(BundleError::BadPath(_))), "{bad}");
        }
        assert_eq!(ModulePath::new("./src/a.js").unwrap().as_str(), "src/a.js");
    }

    #[test]
    fn main_must_exist_and_be_javascript() {
        let e = Bundle::new(manifest("b.js"), [("a.js".into(), vec![])]).unwrap_err();
        assert_eq!(e, BundleError::MissingMain("b.js".into()));
        let e = Bundle::new(manifest("a.json"), [("a.json".into(), b"{}".to_vec())]).unwrap_err();
        assert_eq!(e, BundleError::MainNotRunnable("a.json".into()));
    }

    #[test]
    fn unknown_file_types_are_refused() {
        let e = Bundle::new(manifest("a.js"), [("a.js".into(), vec![]), ("x.exe".into(), vec![])]).unwrap_err();
        assert_eq!(e, BundleError::UnknownKind("x.exe".into()));
    }
}
