//! Makes the startup snapshot every function isolate boots from.
//!
//! Booting an isolate means evaluating the global scope (`tern_js_api::extensions`): on the
//! quickjs engine that is mostly parsing about 0.7 MB of the Web API crates' JavaScript,
//! about 50 ms on a 2-core machine. [`make`] boots that global scope once and returns the
//! engine's snapshot of it; `tern-runtime`'s build script calls it and the runtime restores
//! every isolate from the result (about 8.5 ms), as Deno and workerd do with V8 snapshots.
//! Their sources are compacted on the way in ([`compact`]), which takes about 0.5 MiB off
//! every isolate. It runs at build time only: nothing here is linked into the `tern` binary.

mod compact;

use std::rc::Rc;

use deno_core::{JsRuntimeForSnapshot, ModuleCodeString, ModuleName, RuntimeOptions};
use tern_js_api::egress::Egress;

/// Boots Tern's global scope and snapshots it. The restoring runtime must pass the same
/// extensions, in the same order (`tern_js_api::extensions`), which deno_core checks.
pub fn make() -> Result<Box<[u8]>, String> {
    let runtime = JsRuntimeForSnapshot::try_new(RuntimeOptions {
        extensions: tern_js_api::extensions(&Egress::default()),
        extension_transpiler: Some(Rc::new(|_name: ModuleName, code: ModuleCodeString| {
            Ok((compact::compact(&code).map_or(code, ModuleCodeString::from), None))
        })),
        ..Default::default()
    })
    .map_err(|e| format!("booting the global scope to snapshot it failed: {e}"))?;
    Ok(runtime.snapshot())
}
