//! One isolate running one version of one function: boot, module load and evaluation, and
//! the serve loop that feeds it requests from its [`Inbox`].
//!
//! [`run_function`] owns the lifecycle. A version whose modules fail to load answers every
//! request with `load_failed` (the compile error with file and line) without booting again,
//! since versions are immutable. An isolate whose event loop dies is replaced by a fresh one
//! on the same inbox; the requests it held fail with `isolate_failed`.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deno_core::error::CoreErrorKind;
use deno_core::{JsRuntime, PollEventLoopOptions, RuntimeOptions, v8};
use tern_js_api::egress::Egress;
use tern_js_api::exchange::{Failure, FailureKind, FunctionIdentity, InFlight, Inbox, Reply};
use tern_js_api::{FunctionEnv, ModuleBytes, ServeEntry};
use tern_proto::{Bundle, ModulePath};

use crate::loader::{BundleModuleLoader, display_specifier};

/// Pause before booting a replacement after an isolate died, so a function that kills its
/// isolate on every request cannot spin a thread.
const REBOOT_BACKOFF: Duration = Duration::from_millis(50);

struct BundleFiles(Arc<Bundle>);

impl ModuleBytes for BundleFiles {
    fn bytes(&self, path: &str) -> Option<Arc<[u8]>> {
        let path = ModulePath::new(path).ok()?;
        self.0.modules.get(&path).map(|m| m.bytes.clone())
    }
}

/// Serves `bundle` from `inbox` until the inbox closes and the isolate has finished its work.
/// `booted` is told once the first isolate is ready or its modules failed to load.
pub async fn run_function(
    bundle: Arc<Bundle>,
    inbox: Inbox,
    egress: Egress,
    mut booted: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let identity = FunctionIdentity { name: bundle.name().to_string(), version: bundle.id().short() };
    loop {
        let started = Instant::now();
        let result = boot(&bundle, &inbox, &identity, &egress).await;
        if let Some(booted) = booted.take() {
            let _ = booted.send(());
        }
        let mut js = match result {
            Ok(js) => js,
            Err(failure) => {
                tracing::error!(target: "tern::function", function = %identity.name, version = %identity.version,
                    tern_error = failure.kind.code(), "{}", failure.detail);
                answer_all(&inbox, &failure).await;
                return;
            }
        };
        tracing::debug!(function = %identity.name, version = %identity.version, elapsed = ?started.elapsed(), "isolate ready");
        match js.run_event_loop(PollEventLoopOptions::default()).await {
            Ok(()) => {
                tracing::debug!(function = %identity.name, version = %identity.version, "isolate finished its work and stops");
                return;
            }
            Err(e) => {
                let failure = Failure { kind: FailureKind::IsolateFailed, detail: readable(&e.to_string()) };
                tracing::error!(target: "tern::function", function = %identity.name, version = %identity.version,
                    tern_error = failure.kind.code(), "isolate stopped: {}", failure.detail);
                js.op_state().borrow_mut().borrow_mut::<InFlight>().fail_all(&failure);
                drop(js);
                tokio::time::sleep(REBOOT_BACKOFF).await;
            }
        }
    }
}

/// Answers every queued and future request with `failure` until the inbox closes.
async fn answer_all(inbox: &Inbox, failure: &Failure) {
    while let Some(exchange) = inbox.next().await {
        let _ = exchange.reply.send(Reply::Failed(failure.clone()));
    }
}

fn load_failed(detail: String) -> Failure {
    Failure { kind: FailureKind::LoadFailed, detail: readable(&detail) }
}

/// Module URLs in messages become the project-relative paths the user wrote.
fn readable(message: &str) -> String {
    message.replace(tern_js_api::MODULE_ROOT, "")
}

/// Boots an isolate for `bundle`, evaluates its modules and starts its serve loop.
async fn boot(
    bundle: &Arc<Bundle>,
    inbox: &Inbox,
    identity: &FunctionIdentity,
    egress: &Egress,
) -> Result<JsRuntime, Failure> {
    let mut js = JsRuntime::try_new(RuntimeOptions {
        extensions: tern_js_api::extensions(egress),
        module_loader: Some(Rc::new(BundleModuleLoader::new(bundle.clone()))),
        ..Default::default()
    })
    .map_err(|e| Failure { kind: FailureKind::IsolateFailed, detail: format!("could not create an isolate: {e}") })?;
    let engine_ready = Instant::now();
    {
        let state = js.op_state();
        let mut state = state.borrow_mut();
        state.put(identity.clone());
        state.put(inbox.clone());
        state.put(InFlight::default());
        state.put(FunctionEnv::from_vars(&bundle.manifest.vars));
        state.put::<Rc<dyn ModuleBytes>>(Rc::new(BundleFiles(bundle.clone())));
    }
    let main = BundleModuleLoader::main_specifier(bundle);
    let module_id = js.load_main_es_module(&main).await.map_err(|e| load_failed(e.to_string()))?;
    let evaluation = js.mod_evaluate(module_id);
    // Fails, rather than waiting forever, when a top-level await can no longer settle.
    js.with_event_loop_promise(Box::pin(evaluation), PollEventLoopOptions::default()).await.map_err(|e| {
        if matches!(e.as_kind(), CoreErrorKind::PendingPromiseResolution) {
            load_failed(format!(
                "{}: a top-level await never settles (nothing is left that could settle it)",
                display_specifier(main.as_str())
            ))
        } else {
            load_failed(e.to_string())
        }
    })?;
    let namespace = js.get_module_namespace(module_id).map_err(|e| load_failed(e.to_string()))?;
    let serve = js
        .op_state()
        .borrow_mut()
        .try_take::<ServeEntry>()
        .ok_or_else(|| load_failed("the tern bootstrap did not register its serve entry".into()))?;
    let namespace: v8::Global<v8::Value> = {
        deno_core::scope!(scope, &mut js);
        let local = v8::Local::new(scope, &namespace);
        v8::Global::new(scope, local.cast::<v8::Value>())
    };
    tracing::debug!(function = %identity.name, modules = ?engine_ready.elapsed(), "function modules evaluated");
    let call = js.call_with_args(&serve.0, &[namespace]);
    js.with_event_loop_promise(Box::pin(call), PollEventLoopOptions::default())
        .await
        .map_err(|e| load_failed(format!("{} ({})", e, display_specifier(main.as_str()))))?;
    Ok(js)
}
