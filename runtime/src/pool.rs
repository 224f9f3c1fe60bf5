//! Isolate threads. `JsRuntime` is `!Send`, so each thread owns its isolates and a
//! current-thread tokio runtime; [`IsolateThreads::dispatch`] sends a request to the thread
//! that holds (or will hold) the function's isolate. A function lives on one thread, chosen
//! by a hash of its name, and one isolate serves all its concurrent requests: its async code
//! interleaves on that thread's event loop.
//!
//! A new version of a function replaces its isolate atomically: requests already inside the
//! old isolate finish there, new ones go to the new isolate.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::thread;

use tern_js_api::egress::Egress;
use tern_js_api::exchange::{Exchange, Failure, FailureKind, Inbox, Reply};
use tern_proto::{Bundle, BundleId};
use tokio::sync::{mpsc, oneshot};

use crate::isolate::run_function;

#[allow(clippy::large_enum_variant, reason = "Dispatch is the hot path: boxing it would allocate per request")]
enum Command {
    Dispatch { bundle: Arc<Bundle>, exchange: Exchange },
    Prepare { bundle: Arc<Bundle>, booted: oneshot::Sender<()> },
    Spawn(ThreadTask),
}

/// Work to run on an isolate thread: builds a (possibly `!Send`) future there.
pub type ThreadTask = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Handle to the isolate threads; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct IsolateThreads {
    threads: Arc<[mpsc::UnboundedSender<Command>]>,
}

#[derive(Debug, thiserror::Error)]
#[error("could not start isolate thread {index}: {source}")]
pub struct StartError {
    index: usize,
    source: std::io::Error,
}

impl IsolateThreads {
    /// Starts `count` isolate threads (at least one); their isolates fetch through `egress`.
    pub fn start(count: usize, egress: Egress) -> Result<Self, StartError> {
        let threads = (0..count.max(1))
            .map(|index| {
                let (tx, rx) = mpsc::unbounded_channel();
                let egress = egress.clone();
                thread::Builder::new()
                    .name(format!("tern-isolates-{index}"))
                    .spawn(move || isolate_thread(rx, egress))
                    .map_err(|source| StartError { index, source })?;
                Ok(tx)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { threads: threads.into() })
    }

    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Runs `task(thread_index)` as a task on every isolate thread. The edge node serves its
    /// connections this way, so a request for a function held by the accepting thread is
    /// handed over without crossing threads.
    pub fn spawn_on_each<F>(&self, task: F)
    where
        F: Fn(usize) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync + 'static,
    {
        let task = Arc::new(task);
        for (index, thread) in self.threads.iter().enumerate() {
            let task = task.clone();
            let _ = thread.send(Command::Spawn(Box::new(move || task(index))));
        }
    }

    /// Boots the isolate of `bundle` ahead of its first request, and resolves once it is
    /// ready to serve or its modules failed to load (which it then reports to every request).
    pub async fn prepare_and_wait(&self, bundle: Arc<Bundle>) {
        let thread = &self.threads[thread_for(bundle.name(), self.threads.len())];
        let (booted, done) = oneshot::channel();
        if thread.send(Command::Prepare { bundle, booted }).is_ok() {
            let _ = done.await;
        }
    }

    /// Hands `exchange` to the isolate of `bundle`, booting it if needed.
    pub fn dispatch(&self, bundle: Arc<Bundle>, exchange: Exchange) {
        let thread = &self.threads[thread_for(bundle.name(), self.threads.len())];
        if let Err(mpsc::error::SendError(Command::Dispatch { exchange, .. })) =
            thread.send(Command::Dispatch { bundle, exchange })
        {
            let failure = Failure { kind: FailureKind::IsolateFailed, detail: "isolate thread is gone".into() };
            let _ = exchange.reply.send(Reply::Failed(failure));
        }
    }
}

fn thread_for(function: &str, threads: usize) -> usize {
    let mut h = DefaultHasher::new();
    function.hash(&mut h);
    (h.finish() % threads as u64) as usize
}

/// The live isolate of one function on this thread.
struct Slot {
    version: BundleId,
    inbox: mpsc::UnboundedSender<Exchange>,
}

fn isolate_thread(mut commands: mpsc::UnboundedReceiver<Command>, egress: Egress) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("isolate thread runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut slots: HashMap<String, Slot> = HashMap::new();
        while let Some(command) = commands.recv().await {
            match command {
                Command::Prepare { bundle, booted } => {
                    inbox_for(&mut slots, bundle, &egress, Some(booted));
                }
                Command::Spawn(task) => {
                    tokio::task::spawn_local(task());
                }
                Command::Dispatch { bundle, exchange } => {
                    let inbox = inbox_for(&mut slots, bundle, &egress, None);
                    if let Err(mpsc::error::SendError(exchange)) = inbox.send(exchange) {
                        let failure = Failure { kind: FailureKind::IsolateFailed, detail: "isolate stopped".into() };
                        let _ = exchange.reply.send(Reply::Failed(failure));
                    }
                }
            }
        }
    });
}

/// The inbox of the isolate running `bundle`, starting one if this version has none. The
/// previous version's inbox is dropped: its isolate finishes what it holds, then stops.
fn inbox_for(
    slots: &mut HashMap<String, Slot>,
    bundle: Arc<Bundle>,
    egress: &Egress,
    booted: Option<oneshot::Sender<()>>,
) -> mpsc::UnboundedSender<Exchange> {
    if let Some(slot) = slots.get(bundle.name()).filter(|s| s.version == bundle.id() && !s.inbox.is_closed()) {
        // Already running (or booting): whoever waits is told at once.
        if let Some(booted) = booted {
            let _ = booted.send(());
        }
        return slot.inbox.clone();
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tracing::info!(function = bundle.name(), version = %bundle.id().short(), "starting isolate");
    slots.insert(bundle.name().to_string(), Slot { version: bundle.id(), inbox: tx.clone() });
    tokio::task::spawn_local(run_function(bundle, Inbox::new(rx), egress.clone(), booted));
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_always_maps_to_the_same_thread() {
        for name in ["a", "hello", "api-v2"] {
            let t = thread_for(name, 4);
            assert!(t < 4);
            assert_eq!(t, thread_for(name, 4));
        }
    }
}
