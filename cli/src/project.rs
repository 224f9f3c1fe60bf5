//! Reads a function project from disk into a [`Bundle`]: a folder with `tern.toml`, or a
//! single `.js`/`.mjs` file. Every error names the file it is about.
//!
//! A folder's bundle holds every module-kind file under it (see `tern_proto::bundle`),
//! except hidden files and `node_modules`, `target` and `.git` folders; other files are
//! ignored. From `node_modules` it takes the packages named in `package.json`
//! `dependencies` (not `devDependencies`), and theirs, transitively, as npm installed
//! them; the runtime resolves bare imports against them. Bundles are capped in size so a
//! stray folder cannot exhaust memory.

use std::path::{Path, PathBuf};

use tern_proto::{Bundle, BundleError, Manifest, ManifestError, ModuleKind};

/// Largest bundle `tern dev` will read.
pub const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;
const SKIPPED_DIRS: [&str; 3] = ["node_modules", "target", ".git"];

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    // The cause is part of the message, not also a `source`: printed as a chain (`{:#}`),
    // it said the same thing twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {error}")]
    Manifest { path: PathBuf, error: ManifestError },
    #[error("{path}: {error}")]
    Bundle { path: PathBuf, error: BundleError },
    #[error("{path}: a function is a folder with tern.toml, or a .js/.mjs file")]
    NotAProject { path: PathBuf },
    #[error("{path}: the project is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge { path: PathBuf },
}

pub fn load(path: &Path) -> Result<Bundle, ProjectError> {
    let io = |error| ProjectError::Io { path: path.to_path_buf(), error };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() { load_folder(path) } else { load_file(path) }
}

fn load_file(path: &Path) -> Result<Bundle, ProjectError> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if ModuleKind::from_path(file_name) != Some(ModuleKind::EsModule) {
        return Err(ProjectError::NotAProject { path: path.to_path_buf() });
    }
    let stem = file_name.rsplit_once('.').map_or(file_name, |(s, _)| s);
    let name: String = stem
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .to_string();
    let name = if name.is_empty() { "function".to_string() } else { name };
    let manifest = Manifest::for_single_file(&name, file_name)
        .map_err(|error| ProjectError::Manifest { path: path.to_path_buf(), error })?;
    let bytes = std::fs::read(path).map_err(|error| ProjectError::Io { path: path.to_path_buf(), error })?;
    Bundle::new(manifest, [(file_name.to_string(), bytes)])
        .map_err(|error| ProjectError::Bundle { path: path.to_path_buf(), error })
}

fn load_folder(root: &Path) -> Result<Bundle, ProjectError> {
    let manifest_path = root.join("tern.toml");
    let text = std::fs::read_to_string(&manifest_path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ProjectError::NotAProject { path: root.to_path_buf() },
        _ => ProjectError::Io { path: manifest_path.clone(), error: source },
    })?;
    let manifest =
        Manifest::parse(&text).map_err(|error| ProjectError::Manifest { path: manifest_path.clone(), error })?;
    let mut files = Vec::new();
    let mut total = 0u64;
    collect(root, root, &mut files, &mut total)?;
    collect_packages(root, &mut files, &mut total)?;
    Bundle::new(manifest, files).map_err(|error| ProjectError::Bundle { path: root.to_path_buf(), error })
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, Vec<u8>)>, total: &mut u64) -> Result<(), ProjectError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ProjectError::Io { path, error }
    };
    let mut entries = std::fs::read_dir(dir).map_err(io(dir))?.collect::<Result<Vec<_>, _>>().map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_str()) {
                collect(root, &path, files, total)?;
            }
        } else if kind.is_file() && ModuleKind::from_path(&name).is_some() {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            *total += bytes.len() as u64;
            if *total > MAX_BUNDLE_BYTES {
                return Err(ProjectError::TooLarge { path: root.to_path_buf() });
            }
            let relative = path.strip_prefix(root).expect("walked from root");
            let relative = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            files.push((relative, bytes));
        }
    }
    Ok(())
}

/// `dependencies` of the `package.json` in `dir`, if any.
fn dependencies(dir: &Path) -> Result<Vec<String>, ProjectError> {
    let path = dir.join("package.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ProjectError::Io {
        path: path.clone(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    Ok(json.get("dependencies").and_then(|d| d.as_object()).map(|d| d.keys().cloned().collect()).unwrap_or_default())
}

/// Adds the installed npm packages the project depends on, transitively. A package is
/// looked up like Node does: `node_modules` next to the dependent, then in each folder up
/// to the project root. A dependency that is not installed is skipped here; importing it
/// fails with the loader's "not installed" message.
fn collect_packages(root: &Path, files: &mut Vec<(String, Vec<u8>)>, total: &mut u64) -> Result<(), ProjectError> {
    let mut seen = std::collections::HashSet::new();
    let mut queue: Vec<(String, PathBuf)> = dependencies(root)?.into_iter().map(|d| (d, root.to_path_buf())).collect();
    while let Some((name, from)) = queue.pop() {
        let found = from
            .ancestors()
            .take_while(|d| d.starts_with(root))
            .map(|d| d.join("node_modules").join(&name))
            .find(|p| p.is_dir());
        let Some(package) = found else { continue };
        if !seen.insert(package.clone()) {
            continue;
        }
        // Takes the package's JS and JSON, its package.json included (the loader reads it).
        collect(root, &package, files, total)?;
        queue.extend(dependencies(&package)?.into_iter().map(|d| (d, package.clone())));
    }
    Ok(())
}
