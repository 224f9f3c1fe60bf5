//! Where isolates live: one OS thread per isolate, a warm pool of booted isolates, and the
//! table of which isolate serves which function.
//!
//! `JsRuntime` is `!Send`, and the engine keeps per-thread state that only grows with every
//! isolate created on a thread (it refuses to create one after about 42 on a thread), so
//! every isolate gets a thread of its own and the thread ends with it. A function's
//! requests go through an unbounded queue (its inbox) to the one isolate serving its
//! current version; concurrent requests interleave inside that isolate.
//!
//! Boot (deno_core plus the Web API extensions, tens of milliseconds) happens off the
//! request path: a spawner thread keeps [`IsolateConfig::warm_pool`] booted, never-used
//! isolates waiting, one boot at a time. A function new to the node takes one and pays only
//! for evaluating its modules; with the pool empty (or for a function whose isolate
//! [`Shape`] differs from the pool's: another memory limit, or `allow_eval`) an isolate is
//! booted on demand. A new version replaces the
//! slot atomically: requests already inside the old isolate finish there.
//!
//! An isolate whose JS went on after termination is stuck: its thread cannot be stopped
//! and is quarantined (see [`crate::meter::Tripwire`]). While it runs, its version is not
//! run again in this process: its requests are answered at once with the limit it was
//! stopped at, so hostile code strands at most one thread (and one heap) per version, not
//! one per request. What the stuck isolate owed is answered without it (see
//! `kill::Stranding`).
//!
//! Isolates are evicted (moka) after [`IsolateConfig::idle_ttl`] without a request, and,
//! least recently used first, as soon as their estimated footprint passes
//! [`IsolateConfig::memory_budget`]. An evicted function's isolate finishes what it holds
//! and stops; its next request takes a new one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_js_api::cache::ResponseCache;
use tern_js_api::egress::Egress;
use tern_js_api::exchange::{Exchange, Failure, FailureKind, Reply};
use tern_proto::{Bundle, BundleId, Limits};
use tokio::sync::{mpsc, oneshot};

use crate::isolate::{Ending, Shape, WarmIsolate};
use crate::meter::Breach;
use crate::priority;
use crate::stats::RuntimeStats;

/// Pause before a killed or crashed function gets its next isolate, so a function that
/// kills its isolate on every request cannot keep the node booting.
const REBOOT_BACKOFF: Duration = Duration::from_millis(50);
/// Pause before retrying when the warm pool cannot boot an isolate at all.
const BOOT_FAILURE_BACKOFF: Duration = Duration::from_secs(1);
/// How often idle isolates are looked for.
const EVICTION_TICK: Duration = Duration::from_millis(500);
/// Memory an idle isolate with the Web API extensions holds, as measured by
/// `benches/cold_start.rs`; the weight of one isolate against the memory budget.
pub const ISOLATE_FOOTPRINT_BYTES: u64 = 12 * 1024 * 1024;

#[derive(Clone)]
pub struct IsolateConfig {
    pub egress: Egress,
    /// Booted, never-used isolates kept waiting.
    pub warm_pool: usize,
    /// Memory limit the pool's isolates are booted with (the default of `[limits]`).
    pub pool_memory_limit: u64,
    /// An isolate without requests for this long is evicted.
    pub idle_ttl: Duration,
    /// Isolates are evicted, least recently used first, beyond this estimated memory.
    pub memory_budget: u64,
    /// The Cache API's store, shared by the functions of this process.
    pub response_cache: Arc<ResponseCache>,
}

impl IsolateConfig {
    /// The shape of the warm pool's isolates: the default memory limit, no `eval`.
    pub fn pool_shape(&self) -> Shape {
        Shape { memory_limit: self.pool_memory_limit, allow_eval: false }
    }
}

impl Default for IsolateConfig {
    fn default() -> Self {
        Self {
            egress: Egress::default(),
            warm_pool: 2,
            pool_memory_limit: Limits::default().memory_bytes,
            idle_ttl: Duration::from_secs(300),
            memory_budget: 4 << 30,
            response_cache: ResponseCache::new(tern_js_api::cache::DEFAULT_BUDGET_BYTES),
        }
    }
}

/// Handle to the node's isolates; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Isolates {
    shared: Arc<Shared>,
}

struct Shared {
    config: IsolateConfig,
    slots: Mutex<HashMap<String, Slot>>,
    /// Which functions have an isolate, by recency; evicting an entry retires the isolate.
    resident: moka::sync::Cache<String, BundleId>,
    warm: Mutex<VecDeque<(oneshot::Sender<Binding>, Option<priority::WarmBoot>)>>,
    refill: Mutex<std::sync::mpsc::Sender<()>>,
    stats: RuntimeStats,
    /// Versions that had a stuck isolate: not run again.
    stuck: Mutex<HashMap<BundleId, Breach>>,
}

/// The isolate serving the current version of one function.
struct Slot {
    version: BundleId,
    inbox: mpsc::UnboundedSender<Exchange>,
}

/// What a booted isolate is asked to run.
struct Binding {
    bundle: Arc<Bundle>,
    inbox: mpsc::UnboundedReceiver<Exchange>,
    booted: Option<oneshot::Sender<()>>,
    /// Held from before the binding can evict another isolate until its modules are
    /// evaluated, so that the evicted isolate's teardown waits for it.
    cold_start: priority::ColdStart,
}

impl Binding {
    fn new(bundle: Arc<Bundle>, inbox: mpsc::UnboundedReceiver<Exchange>, booted: Option<oneshot::Sender<()>>) -> Self {
        Self { bundle, inbox, booted, cold_start: priority::cold_start() }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not start the isolate spawner thread: {0}")]
pub struct StartError(std::io::Error);

impl Isolates {
    /// Starts the warm pool's spawner; isolates come and go with their functions.
    pub fn start(config: IsolateConfig) -> Result<Self, StartError> {
        let (refill, wanted) = std::sync::mpsc::channel();
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
            let weak = weak.clone();
            let resident = moka::sync::Cache::builder()
                // Least recently used out, not moka's default TinyLFU: its admission would turn
                // away an isolate already booted for a function new to the node, so such a
                // function would pay a boot per request until it became frequent.
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_idle(config.idle_ttl)
                .weigher(|_: &String, _: &BundleId| (ISOLATE_FOOTPRINT_BYTES >> 10) as u32)
                .max_capacity(config.memory_budget >> 10)
                .eviction_listener(move |name: Arc<String>, version: BundleId, cause| {
                    if cause == moka::notification::RemovalCause::Replaced {
                        return;
                    }
                    if let Some(shared) = weak.upgrade() {
                        shared.retire(&name, version, cause);
                    }
                })
                .build();
            Shared {
                config,
                slots: Mutex::new(HashMap::new()),
                resident,
                warm: Mutex::new(VecDeque::new()),
                refill: Mutex::new(refill),
                stats: RuntimeStats::default(),
                stuck: Mutex::new(HashMap::new()),
            }
        });
        let weak = Arc::downgrade(&shared);
        // The spawner fills the pool on its first tick, so that the process's first
        // isolates (booted on demand) do not compete with it for the CPU.
        std::thread::Builder::new()
            .name("tern-spawner".into())
            .spawn(move || spawner(weak, wanted))
            .map_err(StartError)?;
        Ok(Self { shared })
    }

    pub fn stats(&self) -> &RuntimeStats {
        &self.shared.stats
    }

    /// The versions that have an isolate serving them now.
    pub fn serving(&self) -> Vec<BundleId> {
        lock(&self.shared.slots).values().filter(|slot| !slot.inbox.is_closed()).map(|slot| slot.version).collect()
    }

    /// Boots the isolate of `bundle` ahead of its first request, and resolves once it is
    /// ready to serve or its modules failed to load (which it then reports to every request).
    pub async fn prepare_and_wait(&self, bundle: Arc<Bundle>) {
        let (booted, done) = oneshot::channel();
        {
            let mut slots = lock(&self.shared.slots);
            if slots.get(bundle.name()).is_some_and(|s| s.version == bundle.id() && !s.inbox.is_closed()) {
                return;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            slots.insert(bundle.name().to_string(), Slot { version: bundle.id(), inbox: tx });
            drop(slots);
            let binding = Binding::new(bundle, rx, Some(booted));
            self.shared.make_resident(binding.bundle.name(), binding.bundle.id());
            self.shared.bind(binding);
        }
        let _ = done.await;
    }

    /// Hands `exchange` to the isolate of `bundle`, starting one if needed.
    pub fn dispatch(&self, bundle: Arc<Bundle>, exchange: Exchange) {
        if let Some(&breach) = lock(&self.shared.stuck).get(&bundle.id()) {
            let failure = crate::kill::quarantined(&bundle.id().short(), breach);
            let _ = exchange.reply.send(Reply::Failed(failure));
            return;
        }
        let mut slots = lock(&self.shared.slots);
        let exchange = match slots.get(bundle.name()) {
            Some(slot) if slot.version == bundle.id() => match slot.inbox.send(exchange) {
                Ok(()) => {
                    drop(slots);
                    // Never while holding `slots`: an eviction may run here and take it.
                    self.shared.resident.get(bundle.name());
                    return;
                }
                Err(mpsc::error::SendError(exchange)) => exchange,
            },
            _ => exchange,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(exchange);
        slots.insert(bundle.name().to_string(), Slot { version: bundle.id(), inbox: tx });
        drop(slots);
        let binding = Binding::new(bundle, rx, None);
        self.shared.make_resident(binding.bundle.name(), binding.bundle.id());
        self.shared.bind(binding);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Counts a new isolate of `name` against the memory budget, and evicts at once what no
    /// longer fits (otherwise moka would wait for its next housekeeping, and a burst of new
    /// functions could boot far past the budget first). Never while holding `slots`: the
    /// evictions take it.
    fn make_resident(&self, name: &str, version: BundleId) {
        self.resident.insert(name.to_string(), version);
        self.resident.run_pending_tasks();
    }

    /// Retires the isolate of `name` if it still runs `version`: it finishes its requests
    /// and stops.
    fn retire(&self, name: &str, version: BundleId, cause: moka::notification::RemovalCause) {
        let mut slots = lock(&self.slots);
        if slots.get(name).is_some_and(|s| s.version == version) {
            slots.remove(name);
            self.stats.evictions.inc();
            tracing::debug!(function = name, version = %version.short(), ?cause, "isolate evicted");
        }
    }

    fn ask_refill(&self) {
        let _ = lock(&self.refill).send(());
    }

    /// Gives `binding` to a warm isolate, or boots one for it.
    fn bind(self: &Arc<Self>, mut binding: Binding) {
        tracing::info!(function = binding.bundle.name(), version = %binding.bundle.id().short(), "starting isolate");
        if Shape::of(&binding.bundle) == self.config.pool_shape() {
            loop {
                let Some((warm, background)) = lock(&self.warm).pop_front() else { break };
                self.stats.warm_isolates.dec();
                // Out of the background before the binding wakes it: its thread is alive
                // while it waits on `warm`.
                background.into_iter().for_each(priority::WarmBoot::end);
                match warm.send(binding) {
                    Ok(()) => {
                        self.ask_refill();
                        return;
                    }
                    Err(back) => binding = back,
                }
            }
        }
        // No refill request here: the pool is empty because boots are in demand, and the
        // spawner's next tick refills it without competing with this one.
        self.stats.cold_boots.inc();
        let shared = self.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let _ = tx.send(binding);
        let spawned = std::thread::Builder::new()
            .name("tern-isolate".into())
            .spawn(move || isolate_thread(shared, Start::Cold(rx.recv().expect("binding was sent"))));
        if let Err(e) = spawned {
            tracing::error!("cannot start an isolate thread: {e}");
        }
    }
}

enum Start {
    /// Boot, join the warm pool, wait to be bound; `ready` hears whether the boot worked.
    /// A warm boot is work no request waits for: it runs in the `background` (see
    /// [`priority::WarmBoot`]), which whoever binds the isolate ends.
    Warm { ready: std::sync::mpsc::Sender<bool>, background: Option<priority::WarmBoot> },
    /// Boot for this binding right away.
    Cold(Binding),
}

/// Keeps the warm pool full, one boot at a time, until the node's handle is gone.
fn spawner(shared: std::sync::Weak<Shared>, wanted: std::sync::mpsc::Receiver<()>) {
    loop {
        match wanted.recv_timeout(EVICTION_TICK) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while wanted.try_recv().is_ok() {}
        match shared.upgrade() {
            Some(shared) => shared.resident.run_pending_tasks(),
            None => return,
        }
        loop {
            let Some(shared) = shared.upgrade() else { return };
            if lock(&shared.warm).len() >= shared.config.warm_pool {
                break;
            }
            let (ready, booted) = std::sync::mpsc::channel();
            let for_thread = shared.clone();
            let builder = std::thread::Builder::new().name("tern-isolate".into());
            let spawned = priority::WarmBoot::spawn(builder, move |background| {
                isolate_thread(for_thread, Start::Warm { ready, background });
            });
            drop(shared);
            if spawned.is_err() || booted.recv() != Ok(true) {
                std::thread::sleep(BOOT_FAILURE_BACKOFF);
            }
        }
    }
}

fn isolate_thread(shared: Arc<Shared>, start: Start) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start an isolate thread's runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let shape = match &start {
            Start::Warm { .. } => shared.config.pool_shape(),
            Start::Cold(binding) => Shape::of(&binding.bundle),
        };
        let booted = WarmIsolate::boot(&shared.config.egress, shape).await;
        if booted.is_ok() {
            shared.stats.boots.inc();
        }
        let (isolate, binding) = match (start, booted) {
            (Start::Warm { ready, background }, Ok(isolate)) => {
                let (tx, rx) = oneshot::channel();
                lock(&shared.warm).push_back((tx, background));
                shared.stats.warm_isolates.inc();
                let _ = ready.send(true);
                // Whoever binds it ends its background (`Shared::bind`).
                let Ok(binding) = rx.await else {
                    shared.stats.ended_isolates.inc();
                    return;
                };
                (isolate, binding)
            }
            (Start::Warm { ready, .. }, Err(e)) => {
                tracing::error!("warm pool: {e}");
                let _ = ready.send(false);
                return;
            }
            (Start::Cold(binding), Ok(isolate)) => (isolate, binding),
            (Start::Cold(mut binding), Err(e)) => {
                tracing::error!(function = binding.bundle.name(), "{e}");
                let failure = Failure { kind: FailureKind::IsolateFailed, detail: e };
                binding.inbox.close();
                while let Some(exchange) = binding.inbox.recv().await {
                    let _ = exchange.reply.send(Reply::Failed(failure.clone()));
                }
                return;
            }
        };
        let bundle = binding.bundle.clone();
        let (weak, name, version) = (Arc::downgrade(&shared), bundle.name().to_string(), bundle.id());
        isolate.tripwire().on_stuck(Box::new(move |breach| {
            tracing::error!(target: "tern::kill", function = %name, version = %version.short(),
                "isolate stuck after termination: its thread is quarantined and this version is not run again here");
            if let Some(shared) = weak.upgrade() {
                shared.stats.stuck_isolates.inc();
                lock(&shared.stuck).insert(version, breach);
                let mut slots = lock(&shared.slots);
                if slots.get(&name).is_some_and(|s| s.version == version) {
                    slots.remove(&name);
                }
            }
        }));
        let tripwire = isolate.tripwire().clone();
        let responses = &shared.config.response_cache;
        let Binding { bundle: bound, inbox, booted, cold_start } = binding;
        let ending = isolate.run(bound, inbox, booted, cold_start, &shared.stats, responses).await;
        shared.stats.ended_isolates.inc();
        if tripwire.was_stuck() {
            // It ended after all (say, one long native call outlived the wait): not hostile
            // enough to keep refusing its version.
            tracing::warn!(function = bundle.name(), version = %bundle.id().short(),
                "an isolate found stuck ended after all: its version runs again");
            lock(&shared.stuck).remove(&bundle.id());
        }
        match ending {
            Ending::Finished => {}
            Ending::Died(inbox) => {
                tokio::time::sleep(REBOOT_BACKOFF).await;
                shared.bind(Binding::new(bundle, inbox, None));
            }
        }
    });
}
