//! Owns the scheduling priority of isolate threads: work that no request waits for (booting
//! a warm isolate, tearing down a retired one) and JS that could not be stopped run at the
//! lowest priority, so that on a busy machine the threads serving requests win the CPU.
//!
//! Linux keeps a nice value per thread. Raising it is always allowed; lowering it again (a
//! warm isolate's thread goes back to where it was once a function is bound to it) needs
//! `CAP_SYS_NICE` or a high enough `RLIMIT_NICE`. Where the process cannot do that, warm
//! boots stay at the thread's priority: a thread that will serve requests is never left
//! behind.
//! Teardowns are lowered everywhere, since their threads end with them.
//!
//! Measured (`benches/cold_start.rs`, two cores): request-path cold start p99 from 13-15 ms
//! to about 7 ms while the pool refills; see `benches/RESULTS.md`.

use std::sync::OnceLock;

/// The lowest priority (nice value): such a thread runs when no other wants the core.
const BACKGROUND: libc::c_int = 19;

fn this_thread() -> libc::c_int {
    // SAFETY: a plain syscall on the calling thread's own id.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

fn set_this_thread(nice: libc::c_int) -> bool {
    // SAFETY: a plain syscall on the calling thread's own id.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) == 0 }
}

/// Whether this process may put a thread back where it was after lowering it, found out
/// once on a scratch thread.
fn can_restore() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::spawn(|| {
            let was = this_thread();
            set_this_thread(BACKGROUND) && set_this_thread(was)
        })
        .join()
        .unwrap_or(false)
    })
}

/// A warm boot on this thread: lowered while it lasts, if the thread can be restored after.
pub struct WarmBoot {
    restore: Option<libc::c_int>,
}

impl WarmBoot {
    pub fn begin() -> Self {
        let was = this_thread();
        let lowered = was < BACKGROUND && can_restore() && set_this_thread(BACKGROUND);
        Self { restore: lowered.then_some(was) }
    }

    /// The thread is about to serve a function: back to its priority before the boot.
    pub fn end(self) {
        if let Some(was) = self.restore
            && !set_this_thread(was)
        {
            tracing::warn!("an isolate thread could not return to its priority after its warm boot");
        }
    }
}

/// This thread only has teardown left: it yields the CPU to every other thread.
pub fn tearing_down() {
    set_this_thread(BACKGROUND);
}

/// Thread `tid` of this process runs JS that cannot be stopped (see
/// [`Tripwire`](crate::meter::Tripwire)): it keeps only the CPU nobody else wants.
pub fn quarantine(tid: libc::pid_t) {
    // SAFETY: a plain syscall on a thread id of this process; failure leaves the priority.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_boot_ends_at_the_threads_priority_and_a_teardown_stays_low() {
        let was = this_thread();
        std::thread::spawn(move || {
            assert_eq!(this_thread(), was, "threads start where their creator is");
            let boot = WarmBoot::begin();
            assert_eq!(this_thread(), if can_restore() { BACKGROUND } else { was });
            boot.end();
            assert_eq!(this_thread(), was, "a thread that serves must never stay lowered");
            tearing_down();
            assert_eq!(this_thread(), BACKGROUND);
        })
        .join()
        .expect("thread");
        assert_eq!(this_thread(), was, "only the calling thread is lowered");
    }
}
