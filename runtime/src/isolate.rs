//! One isolate, on its own OS thread: booted ahead of need ([`WarmIsolate::boot`]), then
//! bound to one version of one function ([`WarmIsolate::run`]), which evaluates its modules
//! and serves requests from its inbox under the function's limits.
//!
//! Every stretch of JS runs metered ([`crate::meter`]): module evaluation against
//! `startup_cpu`, the event loop against `cpu_per_request`. A breach terminates the isolate;
//! its in-flight requests fail with the limit's `tern-error`, one structured kill record is
//! written (target `tern::kill`), and the inbox goes back to the pool so that a fresh
//! isolate serves what is queued. An isolate whose JS goes on after termination (stuck) is
//! not waited for: the watchdog answers its requests and writes the record
//! (`kill::Stranding`).
//! A version whose modules fail to load (or breach the
//! startup limit) answers every request with that failure, without booting again, since
//! versions are immutable.

use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use deno_core::error::CoreErrorKind;
use deno_core::{JsRuntime, PollEventLoopOptions, RuntimeOptions, v8};
use tern_js_api::cache::ResponseCache;
use tern_js_api::egress::Egress;
use tern_js_api::exchange::{
    Exchange, Failure, FailureKind, FunctionIdentity, HeapExhausted, InFlight, Inbox, OnTaken, Reply, RequestId,
    SubrequestLimit, is_out_of_memory,
};
use tern_js_api::{FunctionEnv, ModuleBytes, ServeEntry};
use tern_proto::{Bundle, Limits, ModulePath};
use tokio::sync::mpsc;

use crate::kill::{KillRecord, Stranding, failure_for};
use crate::loader::{BundleModuleLoader, WARM_UP_MODULE, display_specifier};
use crate::memory::{HeapSampling, MemoryMeter};
use crate::meter::{Allowance, BACKGROUND_PERIOD, Breach, Tripwire};
use crate::stats::RuntimeStats;
use crate::watchdog;

struct BundleFiles(Arc<Bundle>);

impl ModuleBytes for BundleFiles {
    fn bytes(&self, path: &str) -> Option<Arc<[u8]>> {
        let path = ModulePath::new(path).ok()?;
        self.0.modules.get(&path).map(|m| m.bytes.clone())
    }
}

/// How an isolate's service ended.
pub enum Ending {
    /// The inbox closed (a newer version took over) and the work in hand is done.
    Finished,
    /// The isolate was killed or died; what is still queued needs a fresh isolate.
    Died(mpsc::UnboundedReceiver<Exchange>),
}

/// What an isolate is fixed to at boot, so a function can only take an isolate of its own
/// shape from the warm pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Bytes for the heap and ArrayBuffers (`limits.memory_mib`).
    pub memory_limit: u64,
    /// Whether code generation from strings stays possible (`allow_eval`).
    pub allow_eval: bool,
}

impl Shape {
    pub fn of(bundle: &Bundle) -> Self {
        Self { memory_limit: bundle.manifest.limits.memory_bytes, allow_eval: bundle.manifest.allow_eval }
    }
}

/// The global scope booted at build time (`build.rs`), which every isolate is restored from;
/// `None` where the build could not run the engine (the V8 build): isolates then evaluate
/// the global scope from source, the same code, about six times slower on quickjs.
fn startup_snapshot() -> Option<&'static [u8]> {
    static SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/isolate.snap"));
    (!SNAPSHOT.is_empty()).then_some(SNAPSHOT)
}

/// Loads and evaluates an empty module. The first module an isolate loads pays for setting
/// up the engine's module tables (about 0.35 ms in an isolate restored from the snapshot,
/// 0.05 ms in one booted from source), which would otherwise fall on the function's first
/// request. No function can import it ([`WARM_UP_MODULE`]).
async fn warm_up_modules(js: &mut JsRuntime) -> Result<(), deno_core::error::CoreError> {
    let specifier = deno_core::ModuleSpecifier::parse(WARM_UP_MODULE).expect("a valid URL");
    let id = js.load_side_es_module_from_code(&specifier, "export {};").await?;
    let evaluation = js.mod_evaluate(id);
    js.with_event_loop_promise(Box::pin(evaluation), PollEventLoopOptions::default()).await
}

/// A booted isolate that has run no function code yet.
pub struct WarmIsolate {
    js: JsRuntime,
    loader: Rc<BundleModuleLoader>,
    tripwire: Arc<Tripwire>,
    memory: Arc<MemoryMeter>,
    /// The node's egress; a function's `[egress] allow` widens its policy at bind.
    egress: Egress,
}

impl WarmIsolate {
    /// Boots an isolate (deno_core plus the Web API extensions) of `shape` on the calling
    /// thread.
    pub async fn boot(egress: &Egress, shape: Shape) -> Result<Self, String> {
        let memory = MemoryMeter::new(usize::try_from(shape.memory_limit).unwrap_or(usize::MAX));
        let loader = Rc::new(BundleModuleLoader::default());
        let snapshot = startup_snapshot();
        let mut js = JsRuntime::try_new(RuntimeOptions {
            extensions: tern_js_api::extensions(egress),
            module_loader: Some(loader.clone()),
            create_params: Some(memory.create_params()),
            startup_snapshot: snapshot,
            // The snapshot holds the ops' bindings (and the same extensions made it).
            skip_op_registration: snapshot.is_some(),
            ..Default::default()
        })
        .map_err(|e| format!("could not create an isolate: {e}"))?;
        js.execute_script("ext:tern/finish_boot.js", tern_js_api::FINISH_BOOT)
            .map_err(|e| format!("could not finish booting an isolate: {e}"))?;
        warm_up_modules(&mut js).await.map_err(|e| format!("could not load a module in a new isolate: {e}"))?;
        let tripwire = Arc::new(Tripwire::new(js.v8_isolate().thread_safe_handle()));
        memory.set_tripwire(tripwire.clone());
        let on_heap_limit = tripwire.clone();
        js.add_near_heap_limit_callback(move |current, _initial| {
            on_heap_limit.trip(Breach::Memory);
            current
        });
        if !shape.allow_eval {
            // Not the engine's own switch: on quickjs it only swaps the global `eval` and
            // `Function` (so `.constructor` still compiles, and `instanceof Function` throws).
            js.execute_script("ext:tern/refuse_codegen.js", tern_js_api::REFUSE_CODE_GENERATION)
                .map_err(|e| format!("could not lock code generation: {e}"))?;
        }
        {
            let state = js.op_state();
            let mut state = state.borrow_mut();
            state.put(tern_js_api::WasmMemoryCap(shape.memory_limit));
            state.put(tern_js_api::exchange::AllocationRefused(memory.refused_flag()));
            let meter = memory.clone();
            state.put(tern_js_api::OnHeapExhausted(Box::new(move || meter.exhausted())));
        }
        watchdog::watch(&tripwire);
        Ok(Self { js, loader, tripwire, memory, egress: egress.clone() })
    }

    pub fn tripwire(&self) -> &Arc<Tripwire> {
        &self.tripwire
    }

    /// Runs `bundle` in this isolate: evaluates its modules, then serves `inbox` until it
    /// closes or the isolate dies. `booted` is told once the function is ready to serve or
    /// has failed to load.
    pub async fn run(
        self,
        bundle: Arc<Bundle>,
        inbox: mpsc::UnboundedReceiver<Exchange>,
        booted: Option<tokio::sync::oneshot::Sender<()>>,
        cold_start: crate::priority::ColdStart,
        stats: &RuntimeStats,
        responses: &Arc<ResponseCache>,
    ) -> Ending {
        let identity = FunctionIdentity { name: bundle.name().to_string(), version: bundle.id().short() };
        let limits = bundle.manifest.limits;
        let inbox = Inbox::new(inbox);
        let Self { mut js, loader, tripwire, memory, egress: Egress { policy, roots } } = self;
        js.op_state().borrow_mut().put(responses.for_function(bundle.name()));
        if !bundle.manifest.egress_allow.is_empty() {
            let widened = Egress { policy: policy.also_allowing(&bundle.manifest.egress_allow), roots: roots.clone() };
            let state = js.op_state();
            let mut state = state.borrow_mut();
            tern_js_api::egress::put_policy(&mut state, &widened.policy);
            state.put(tern_js_api::egress::fetch_options(&widened));
        }
        let in_flight = InFlight::default();
        let stranding = Stranding {
            identity: identity.clone(),
            limits,
            inbox: inbox.downgrade(),
            replies: in_flight.replies(),
            tripwire: Arc::downgrade(&tripwire),
            memory: Arc::downgrade(&memory),
            kills: stats.kill_counter(),
        };
        tripwire.on_stuck(Box::new(move |breach| stranding.answer(breach)));
        js.op_state().borrow_mut().put(in_flight);
        let mut function = Function { identity, limits, tripwire, memory, stats, startup_used: Duration::ZERO };
        let started = Instant::now();
        let loaded = function.load(&mut js, &loader, &bundle, &inbox).await;
        drop(cold_start);
        if let Some(booted) = booted {
            let _ = booted.send(());
        }
        if let Err(failure) = loaded {
            let f = &function.identity;
            if is_kill(failure.kind) {
                function.record_kill(&mut js, failure.kind, "startup", function.startup_used, &[]);
            } else {
                tracing::error!(target: "tern::function", function = %f.name, version = %f.version,
                    tern_error = failure.kind.code(), "{}", failure.detail);
            }
            drop(js);
            answer_all(&inbox, &failure).await;
            return Ending::Finished;
        }
        tracing::debug!(function = %function.identity.name, version = %function.identity.version,
            elapsed = ?started.elapsed(), "function ready");
        stats.live_isolates.inc();
        let ending = function.serve(&mut js).await;
        stats.live_isolates.dec();
        let lane = crate::priority::teardown();
        drop(js);
        drop(lane);
        match ending {
            None => Ending::Finished,
            // Found stuck: what was queued has been answered and the queue closed.
            Some(()) if function.tripwire.was_stuck() => Ending::Finished,
            Some(()) => match inbox.into_receiver() {
                Some(rx) => Ending::Died(rx),
                None => Ending::Finished,
            },
        }
    }
}

fn is_kill(kind: FailureKind) -> bool {
    matches!(kind, FailureKind::CpuLimitExceeded | FailureKind::MemoryLimitExceeded | FailureKind::StartupLimitExceeded)
}

/// The function bound to an isolate, with its meters.
struct Function<'s> {
    identity: FunctionIdentity,
    limits: Limits,
    tripwire: Arc<Tripwire>,
    memory: Arc<MemoryMeter>,
    stats: &'s RuntimeStats,
    startup_used: Duration,
}

impl Function<'_> {
    /// Runs `fut` (JS work on `js`) metered against the startup budget, poll by poll.
    async fn startup<T>(&mut self, fut: impl Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| self.startup_sync(|| fut.as_mut().poll(cx))).await
    }

    /// Runs `f` (synchronous JS work, such as evaluating modules) metered against the
    /// startup budget.
    fn startup_sync<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let clock = self.tripwire.clock();
        let start = clock.now();
        self.tripwire.arm(start, self.limits.startup_cpu.saturating_sub(self.startup_used), Breach::Startup);
        let r = f();
        self.tripwire.disarm();
        self.startup_used += clock.now().saturating_sub(start);
        r
    }

    /// The failure a startup error stands for: the breach if the isolate was tripped.
    fn startup_failure(&self, js: &mut JsRuntime, detail: String) -> Failure {
        match self.breach(js) {
            Some(breach) => failure_for(breach, &self.limits),
            None => load_failed(detail),
        }
    }

    /// Why the isolate was tripped, if it was; a heap past the limit counts as a memory
    /// breach whatever tripped first (a heap bomb that catches its out-of-memory errors
    /// ends up on the CPU limit).
    fn breach(&self, js: &mut JsRuntime) -> Option<Breach> {
        let tripped = self.tripwire.tripped()?;
        if self.sample_heap(js) >= self.memory.limit() {
            return Some(Breach::Memory);
        }
        Some(tripped)
    }

    fn sample_heap(&self, js: &mut JsRuntime) -> usize {
        let heap = js.v8_isolate().get_heap_statistics().total_heap_size();
        self.memory.record_heap(heap);
        heap + self.memory.array_buffer_bytes()
    }

    async fn load(
        &mut self,
        js: &mut JsRuntime,
        loader: &BundleModuleLoader,
        bundle: &Arc<Bundle>,
        inbox: &Inbox,
    ) -> Result<(), Failure> {
        loader.bind(bundle.clone());
        {
            let state = js.op_state();
            let mut state = state.borrow_mut();
            state.put(self.identity.clone());
            state.put(inbox.clone());
            state.put(SubrequestLimit(bundle.manifest.limits.subrequests));
            state.put(FunctionEnv::from_vars(&bundle.manifest.vars));
            state.put::<Rc<dyn ModuleBytes>>(Rc::new(BundleFiles(bundle.clone())));
        }
        let main = BundleModuleLoader::main_specifier(bundle);
        let module_id = match self.startup(js.load_main_es_module(&main)).await {
            Ok(id) => id,
            Err(e) => return Err(self.startup_failure(js, e.to_string())),
        };
        let evaluated = {
            let evaluation = self.startup_sync(|| js.mod_evaluate(module_id));
            // Fails, rather than waiting forever, when a top-level await can no longer settle.
            self.startup(js.with_event_loop_promise(Box::pin(evaluation), PollEventLoopOptions::default())).await
        };
        if let Err(e) = evaluated {
            let detail = if matches!(e.as_kind(), CoreErrorKind::PendingPromiseResolution) {
                format!(
                    "{}: a top-level await never settles (nothing is left that could settle it)",
                    display_specifier(main.as_str())
                )
            } else {
                e.to_string()
            };
            return Err(self.startup_failure(js, detail));
        }
        let namespace = js.get_module_namespace(module_id).map_err(|e| load_failed(e.to_string()))?;
        let serve = js
            .op_state()
            .borrow_mut()
            .try_take::<ServeEntry>()
            .ok_or_else(|| load_failed("the tern bootstrap did not register its serve entry".into()))?;
        // A WebAssembly main module is a WASI program: the handler glue is told its path.
        let (namespace, wasi_main): (v8::Global<v8::Value>, v8::Global<v8::Value>) = {
            deno_core::scope!(scope, js);
            let local = v8::Local::new(scope, &namespace);
            let wasi_main: v8::Local<v8::Value> = if bundle.main_is_wasm() {
                v8::String::new(scope, bundle.main_path().as_str()).expect("short string").into()
            } else {
                v8::undefined(scope).into()
            };
            (v8::Global::new(scope, local.cast::<v8::Value>()), v8::Global::new(scope, wasi_main))
        };
        // The call runs the serve entry at once: metered like the rest of the startup.
        let call = self.startup_sync(|| js.call_with_args(&serve.0, &[namespace, wasi_main]));
        let started = self.startup(js.with_event_loop_promise(Box::pin(call), PollEventLoopOptions::default())).await;
        self.stats.add_cpu(self.startup_used);
        started.map_err(|e| self.startup_failure(js, format!("{} ({})", e, display_specifier(main.as_str()))))?;
        Ok(())
    }

    /// Serves until the inbox closes (`None`) or the isolate is killed or dies (`Some`).
    async fn serve(&mut self, js: &mut JsRuntime) -> Option<()> {
        let clock = self.tripwire.clock();
        let allowance = Allowance { limit: self.limits.cpu_per_request };
        let mut background = Duration::ZERO;
        let mut background_since = Instant::now();
        let mut sampling = HeapSampling::default();
        let taken = self.tripwire.clone();
        let limit = self.limits.cpu_per_request;
        js.op_state().borrow_mut().put(OnTaken(Box::new(move || taken.extend(limit))));
        let result = std::future::poll_fn(|cx| {
            let (in_flight, max_charged) = {
                let state = js.op_state();
                let state = state.borrow();
                let f = state.borrow::<InFlight>();
                (f.len(), f.max_charged())
            };
            if background_since.elapsed() >= BACKGROUND_PERIOD {
                background = Duration::ZERO;
                background_since = Instant::now();
            }
            let start = clock.now();
            self.tripwire.arm(start, allowance.next_stretch(in_flight, max_charged, background), Breach::Cpu);
            let polled = js.poll_event_loop(cx, PollEventLoopOptions::default());
            self.tripwire.disarm();
            let used = clock.now().saturating_sub(start);
            self.stats.add_cpu(used);
            {
                let state = js.op_state();
                let mut state = state.borrow_mut();
                let f = state.borrow_mut::<InFlight>();
                if !f.charge(used) {
                    background += used;
                }
                f.forget_abandoned();
                if state.has::<HeapExhausted>() {
                    self.tripwire.trip(Breach::Memory);
                }
            }
            if sampling.after_stretch(used) {
                let start = clock.now();
                let heap = self.sample_heap(js);
                sampling.sampled(clock.now().saturating_sub(start));
                if heap > self.memory.limit() {
                    self.tripwire.trip(Breach::Memory);
                }
            }
            if self.tripwire.tripped().is_some() {
                return Poll::Ready(Err(match polled {
                    Poll::Ready(Err(e)) => Some(e),
                    _ => None,
                }));
            }
            match polled {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(Some(e))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let error = match result {
            Ok(()) => {
                tracing::debug!(function = %self.identity.name, version = %self.identity.version,
                    "isolate finished its work and stops");
                return None;
            }
            Err(error) => error,
        };
        let out_of_memory = error.as_ref().is_some_and(|e| is_out_of_memory(&e.to_string()));
        let failure = match self.breach(js) {
            _ if out_of_memory => failure_for(Breach::Memory, &self.limits),
            Some(breach) => failure_for(breach, &self.limits),
            None => Failure {
                kind: FailureKind::IsolateFailed,
                detail: readable(&error.map(|e| e.to_string()).unwrap_or_else(|| "the isolate stopped".into())),
            },
        };
        let (requests, cpu) = {
            let state = js.op_state();
            let state = state.borrow();
            let f = state.borrow::<InFlight>();
            (f.requests(), f.max_charged())
        };
        if is_kill(failure.kind) {
            self.record_kill(js, failure.kind, "request", cpu, &requests);
        } else {
            tracing::error!(target: "tern::function", function = %self.identity.name, version = %self.identity.version,
                tern_error = failure.kind.code(), "isolate stopped: {}", failure.detail);
        }
        js.op_state().borrow_mut().borrow_mut::<InFlight>().fail_all(&failure);
        Some(())
    }

    /// The structured record of a kill (see [`KillRecord`]), unless the watchdog wrote it
    /// already when it found the isolate stuck.
    fn record_kill(&self, js: &mut JsRuntime, kind: FailureKind, phase: &str, cpu: Duration, requests: &[RequestId]) {
        if !self.tripwire.claim_kill_record() {
            return;
        }
        let heap = js.v8_isolate().get_heap_statistics().total_heap_size();
        KillRecord {
            identity: &self.identity,
            kind,
            phase,
            cpu,
            heap: Some(heap),
            array_buffers: self.memory.array_buffer_bytes(),
            requests,
            stuck: false,
        }
        .write();
        self.stats.count_kill(kind);
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
