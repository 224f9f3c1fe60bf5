//! Writes the startup snapshot isolates boot from to `$OUT_DIR/isolate.snap` (see
//! `tern-snapshot`), which `src/isolate.rs` embeds.
//!
//! Without the `quickjs` feature (the V8 build, whose engine library is downloaded rather
//! than built, so it cannot run here) the file is empty and isolates evaluate the global
//! scope from source.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("isolate.snap");
    std::fs::write(&out, snapshot()).expect("write the isolate snapshot into OUT_DIR");
}

#[cfg(feature = "quickjs")]
fn snapshot() -> Box<[u8]> {
    tern_snapshot::make().unwrap_or_else(|e| panic!("the isolates' startup snapshot: {e}"))
}

#[cfg(not(feature = "quickjs"))]
fn snapshot() -> Box<[u8]> {
    Box::default()
}
