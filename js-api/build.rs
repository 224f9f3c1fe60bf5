//! Embeds the JavaScript of Deno's Web API crates (and Tern's own) into the binary.
//!
//! deno_core 0.413's `extension!` records extension sources as paths to be read from disk
//! (meant for snapshot builds), so a binary without a snapshot reads its JS at run time from
//! the cargo registry and the source tree: it breaks when copied to another machine. This
//! script asks `cargo metadata` where those crates are and writes an `include_str!` for each
//! of their JS files into `$OUT_DIR/embedded_js.rs`; `lib.rs` swaps the paths for the
//! embedded text. `include_str!` also makes cargo rebuild when a JS file changes.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates whose extension JS Tern loads.
const CRATES: &[&str] = &["deno_core", "deno_webidl", "deno_web", "deno_crypto", "deno_net", "deno_fetch"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    println!("cargo:rerun-if-changed=js");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform"])
        .arg(std::env::var("TARGET").expect("TARGET is set for build scripts"))
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");

    let mut dirs = BTreeSet::new();
    dirs.insert(manifest_dir.join("js"));
    for package in metadata["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().unwrap_or_default();
        if CRATES.contains(&name) {
            let manifest = PathBuf::from(package["manifest_path"].as_str().expect("manifest_path"));
            dirs.insert(manifest.parent().expect("crate folder").to_path_buf());
        }
    }
    let mut files = Vec::new();
    for dir in &dirs {
        collect(dir, &mut files);
    }
    files.sort();
    let mut code = String::from(
        "/// (absolute path, source) of every embedded extension file.\npub static EMBEDDED_JS: &[(&str, &str)] = &[\n",
    );
    for file in &files {
        let path = file.to_str().expect("UTF-8 path");
        writeln!(code, "    ({path:?}, include_str!({path:?})),").unwrap();
    }
    code.push_str("];\n");
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("embedded_js.rs"), code).unwrap();
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | "node_modules" | "benches" | "tests" | "examples" | ".git") {
                collect(&path, files);
            }
        } else if name.ends_with(".js") || name.ends_with(".mjs") {
            files.push(path);
        }
    }
}
