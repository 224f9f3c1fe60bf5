//! The JavaScript surface of a Tern function.
//!
//! Assembles the global scope from Deno's published Web API crates (deno_webidl, deno_web,
//! deno_crypto, deno_net, deno_fetch) toward the WinterTC minimum common API, and adds what
//! is Tern's own: the Workers handler protocol and the request/response [`exchange`],
//! WebAssembly functions run as WASI programs in the CGI convention (`js/20_wasi.js`),
//! `console` routed to the node's log ([`console`]), and the outbound-fetch seam
//! ([`egress`]). It owns no threads and no sockets: the runtime boots isolates with
//! [`extensions`] and feeds them exchanges.

pub mod cache;
pub mod console;
pub mod egress;
pub mod exchange;
pub mod wasi;
pub mod wasm_limits;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use deno_core::convert::Uint8Array;
use deno_core::{Extension, ExtensionFileSourceCode, OpState, op2, v8};
use deno_error::JsErrorBox;

/// URL prefix under which a function's modules live (`file:///src/index.js`).
pub const MODULE_ROOT: &str = "file:///";

/// Runtime modules a function may import by name, each served by this extension (its
/// `synthetic_esm`).
pub const RUNTIME_MODULES: &[&str] = &["cloudflare:workers"];

/// Script run in a function's isolate before its modules unless the function allows
/// `eval`: replaces every way to compile code from a string with a thrower.
pub const REFUSE_CODE_GENERATION: &str = include_str!("../js/refuse_codegen.js");

/// Script the runtime runs once in every isolate right after boot, whether the isolate was
/// restored from a startup snapshot or evaluated its global scope from source: it does what
/// belongs to this isolate rather than to the snapshot (registers the handler protocol's
/// entry, starts `performance`'s clock, hides `Deno` and the bootstrap internals; see the
/// end of `js/00_global_scope.js`).
pub const FINISH_BOOT: &str = "globalThis[Symbol.for('tern.finishBoot')]();";

/// Read access to the bytes of the function's own modules (`.wasm`, `.bin` imports).
pub trait ModuleBytes {
    fn bytes(&self, path: &str) -> Option<Arc<[u8]>>;
}

/// The handler protocol's entry point, registered by the bootstrap; the runtime calls it
/// with the main module's namespace.
pub struct ServeEntry(pub v8::Global<v8::Function>);

/// The function's `env` object (its `[vars]`), as JSON text.
pub struct FunctionEnv(String);

impl FunctionEnv {
    pub fn from_vars(vars: &BTreeMap<String, serde_json::Value>) -> Self {
        Self(serde_json::to_string(vars).expect("JSON values serialize"))
    }
}

#[op2]
fn op_tern_register_serve(state: &mut OpState, #[scoped] serve: v8::Global<v8::Function>) {
    state.put(ServeEntry(serve));
}

#[op2]
#[string]
fn op_tern_env(state: &mut OpState) -> String {
    state.borrow::<FunctionEnv>().0.clone()
}

#[op2]
fn op_tern_module_bytes(state: &mut OpState, #[string] path: &str) -> Result<Uint8Array, JsErrorBox> {
    let files = state.borrow::<Rc<dyn ModuleBytes>>();
    let bytes = files.bytes(path).ok_or_else(|| JsErrorBox::type_error(format!("module not found: {path}")))?;
    Ok(Uint8Array::from(bytes.to_vec()))
}

/// The isolate's egress policy for an outbound request's `tern-egress` header, which
/// deno_fetch's request hook checks the request and every redirect hop against.
#[op2]
#[string]
fn op_tern_egress_policy(state: &mut OpState) -> String {
    state.borrow::<egress::PolicyHeader>().0.clone()
}

/// The memory limit WebAssembly memories are clamped to, in the isolate's state.
pub struct WasmMemoryCap(pub u64);

/// A WebAssembly module's bytes with its memories clamped to the function's memory limit.
#[op2]
#[buffer]
fn op_tern_wasm_clamp(state: &mut OpState, #[anybuffer] module: &[u8]) -> Result<Vec<u8>, JsErrorBox> {
    let cap = state.try_borrow::<WasmMemoryCap>().map_or(128 << 20, |c| c.0);
    wasm_limits::clamp_memories(module, cap).map_err(|e| JsErrorBox::new("CompileError", e))
}

/// `[name, maximum pages]` for each memory a module exports (maximum `null` if it has
/// none); `module` has been through [`op_tern_wasm_clamp`].
#[op2]
#[serde]
fn op_tern_wasm_exported_memories(#[anybuffer] module: &[u8]) -> Result<Vec<(String, Option<u64>)>, JsErrorBox> {
    wasm_limits::exported_memory_maxima(module).map_err(|e| JsErrorBox::new("CompileError", e))
}

/// The bytes of a WASI function's main module, prepared for one instance serving every
/// request ([`wasi::prepare_for_reuse`]); errors name the file.
#[op2]
#[buffer]
fn op_tern_wasi_module(state: &mut OpState, #[string] path: &str) -> Result<Vec<u8>, JsErrorBox> {
    let files = state.borrow::<Rc<dyn ModuleBytes>>();
    let bytes = files.bytes(path).ok_or_else(|| JsErrorBox::type_error(format!("module not found: {path}")))?;
    wasi::prepare_for_reuse(&bytes).map_err(|e| JsErrorBox::new("CompileError", format!("{path}: {e}")))
}

/// What the host does when a WebAssembly memory cannot grow within its own maximum because
/// the isolate's heap is at the memory limit: it trips the isolate for
/// `memory_limit_exceeded`, as when an ArrayBuffer allocation is refused.
pub struct OnHeapExhausted(pub Box<dyn Fn()>);

/// Called by `WebAssembly.Memory.prototype.grow` when the engine could not allocate.
#[op2(fast)]
fn op_tern_heap_exhausted(state: &mut OpState) {
    if let Some(on) = state.try_borrow::<OnHeapExhausted>() {
        (on.0)();
    }
}

/// Pages a `new WebAssembly.Memory` may have at most.
#[op2(fast)]
fn op_tern_wasm_max_pages(state: &mut OpState) -> u32 {
    let cap = state.try_borrow::<WasmMemoryCap>().map_or(128 << 20, |c| c.0);
    u32::try_from(cap / wasm_limits::PAGE_BYTES).unwrap_or(u32::MAX)
}

deno_core::extension!(
    tern_api,
    deps = [deno_webidl, deno_web, deno_crypto, deno_net, deno_fetch],
    ops = [
        op_tern_register_serve,
        op_tern_env,
        op_tern_module_bytes,
        console::op_tern_log,
        exchange::op_tern_next_request,
        exchange::op_tern_try_next_request,
        exchange::op_tern_yield,
        exchange::op_tern_body_read,
        exchange::op_tern_respond,
        exchange::op_tern_respond_text,
        exchange::op_tern_respond_stream,
        exchange::op_tern_body_write,
        exchange::op_tern_body_write_sync,
        exchange::op_tern_body_close,
        exchange::op_tern_fail,
        exchange::op_tern_outbound_hops,
        op_tern_egress_policy,
        op_tern_wasm_clamp,
        op_tern_wasm_exported_memories,
        op_tern_wasm_max_pages,
        op_tern_heap_exhausted,
        op_tern_wasi_module,
        cache::op_tern_cache_put,
        cache::op_tern_cache_match,
        cache::op_tern_cache_delete,
    ],
    esm_entry_point = "ext:tern_api/00_global_scope.js",
    esm = [dir "js", "00_global_scope.js", "10_handler.js", "20_wasi.js", "25_cache.js"],
    lazy_loaded_js = [dir "js", "30_cloudflare_workers.js"],
    synthetic_esm = ["cloudflare:workers" = "ext:tern_api/30_cloudflare_workers.js"],
    options = { policy: egress::EgressPolicy },
    state = |state, options| {
        egress::put_policy(state, &options.policy);
    },
);

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_js.rs"));
}

/// Embedded sources by the path deno_core would otherwise read at run time, each copied
/// into the heap once per process and shared by every isolate's extensions (instead of
/// 0.9 MB copied on every boot; the copies were freed after boot, so idle memory is the same).
fn embedded_source(path: &str) -> Option<Arc<str>> {
    static BY_PATH: std::sync::LazyLock<std::collections::HashMap<&'static str, Arc<str>>> =
        std::sync::LazyLock::new(|| {
            embedded::EMBEDDED_JS.iter().map(|&(path, code)| (path, Arc::from(code))).collect()
        });
    BY_PATH.get(path).cloned()
}

/// Replaces every "read this file at run time" source with the text embedded at build time.
fn embed_sources(extension: &mut Extension) {
    for files in [
        &mut extension.js_files,
        &mut extension.esm_files,
        &mut extension.lazy_loaded_esm_files,
        &mut extension.lazy_loaded_js_files,
    ] {
        for file in files.to_mut().iter_mut() {
            if let ExtensionFileSourceCode::LoadedFromFsDuringSnapshot(path) = file.code
                && let Some(source) = embedded_source(path)
            {
                file.code = ExtensionFileSourceCode::Computed(source);
            }
        }
    }
}

/// Every extension a function isolate boots with, in dependency order, with their
/// JavaScript embedded in the binary (never read from disk at run time).
pub fn extensions(egress: &egress::Egress) -> Vec<Extension> {
    let mut extensions = vec![
        deno_webidl::deno_webidl::init(),
        deno_web::deno_web::init(
            deno_web::BlobStore::default_arc(),
            None,
            false,
            deno_web::InMemoryBroadcastChannel::default(),
        ),
        deno_crypto::deno_crypto::init(None),
        deno_net::deno_net::init(None, None),
        deno_fetch::deno_fetch::init(egress::fetch_options(egress)),
        tern_api::init(egress.policy.clone()),
    ];
    extensions.iter_mut().for_each(embed_sources);
    extensions
}

/// Every JavaScript source of `extensions`: scripts and modules, loaded at boot or lazily.
pub fn sources(extensions: &[Extension]) -> impl Iterator<Item = &deno_core::ExtensionFileSource> {
    extensions.iter().flat_map(|e| {
        e.js_files
            .iter()
            .chain(e.esm_files.iter())
            .chain(e.lazy_loaded_esm_files.iter())
            .chain(e.lazy_loaded_js_files.iter())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary used to read every extension's JS from the cargo registry and the source
    /// tree at run time, so it failed ("No such file or directory") anywhere else.
    #[test]
    fn bug_no_extension_source_is_read_from_disk_at_run_time() {
        let extensions = extensions(&egress::Egress::default());
        let on_disk: Vec<&str> = sources(&extensions)
            .filter(|f| matches!(f.code, ExtensionFileSourceCode::LoadedFromFsDuringSnapshot(_)))
            .map(|f| f.specifier)
            .collect();
        assert!(on_disk.is_empty(), "read from disk at run time: {on_disk:?}");
    }
}
