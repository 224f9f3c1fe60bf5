//! The watchdog: one thread per process that terminates JS running past its CPU deadline.
//!
//! Isolate threads register the [`Tripwire`] of each isolate they run; every
//! [`CHECK_INTERVAL`] the watchdog reads the CPU clock of each isolate that is running JS and
//! trips the ones past their deadline. A terminated isolate finds out on its own thread
//! (its JS unwinds) and reports the breach there. A tripwire whose isolate is gone is
//! dropped from the list.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::meter::Tripwire;

/// How often running isolates are checked: the most a CPU limit can be overrun by, on top of
/// the engine's reaction to termination.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(2);

static WATCHED: OnceLock<Mutex<Vec<Weak<Tripwire>>>> = OnceLock::new();

/// Watches `tripwire` until it is dropped.
pub fn watch(tripwire: &Arc<Tripwire>) {
    let list = WATCHED.get_or_init(|| {
        std::thread::Builder::new().name("tern-watchdog".into()).spawn(run).expect("cannot start the watchdog thread");
        Mutex::new(Vec::new())
    });
    list.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(tripwire));
}

fn run() {
    crate::priority::prompt_thread();
    loop {
        std::thread::sleep(CHECK_INTERVAL);
        let Some(list) = WATCHED.get() else { continue };
        let live: Vec<Arc<Tripwire>> = {
            let mut list = list.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for tripwire in live {
            tripwire.check();
        }
    }
}
