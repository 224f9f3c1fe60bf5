//! The JavaScript surface of a Tern function.
//!
//! Assembles the global scope from Deno's published Web API crates (deno_webidl, deno_web,
//! deno_crypto, deno_net, deno_fetch) toward the WinterTC minimum common API, and adds what
//! is Tern's own: the Workers handler protocol and the request/response [`exchange`],
//! `console` routed to the node's log ([`console`]), and the outbound-fetch seam
//! ([`egress`]). It owns no threads and no sockets: the runtime boots isolates with
//! [`extensions`] and feeds them exchanges.

pub mod console;
pub mod egress;
pub mod exchange;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use deno_core::convert::Uint8Array;
use deno_core::{Extension, OpState, op2, v8};
use deno_error::JsErrorBox;

/// URL prefix under which a function's modules live (`file:///src/index.js`).
pub const MODULE_ROOT: &str = "file:///";

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

deno_core::extension!(
    tern_api,
    deps = [deno_webidl, deno_web, deno_crypto, deno_net, deno_fetch],
    ops = [
        op_tern_register_serve,
        op_tern_env,
        op_tern_module_bytes,
        console::op_tern_log,
        exchange::op_tern_next_request,
        exchange::op_tern_body_read,
        exchange::op_tern_respond,
        exchange::op_tern_respond_text,
        exchange::op_tern_respond_stream,
        exchange::op_tern_body_write,
        exchange::op_tern_body_close,
        exchange::op_tern_fail,
    ],
    esm_entry_point = "ext:tern_api/00_global_scope.js",
    esm = [dir "js", "00_global_scope.js", "10_handler.js"],
    options = { policy: egress::EgressPolicy },
    state = |state, options| {
        state.put(egress::permissions(&options.policy));
    },
);

/// Every extension a function isolate boots with, in dependency order.
pub fn extensions(policy: &egress::EgressPolicy) -> Vec<Extension> {
    vec![
        deno_webidl::deno_webidl::init(),
        deno_web::deno_web::init(
            deno_web::BlobStore::default_arc(),
            None,
            false,
            deno_web::InMemoryBroadcastChannel::default(),
        ),
        deno_crypto::deno_crypto::init(None),
        deno_net::deno_net::init(None, None),
        deno_fetch::deno_fetch::init(egress::fetch_options(policy)),
        tern_api::init(policy.clone()),
    ]
}
