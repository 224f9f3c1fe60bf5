//! Owns the scheduling of isolate threads: work that no request waits for (booting a warm
//! isolate) and JS that could not be stopped run under Linux's `SCHED_IDLE` policy, so that
//! on a busy machine the threads serving requests win the CPU (such a thread runs when no
//! other wants the core, and is preempted as soon as one does).
//!
//! The policy is per thread. Entering `SCHED_IDLE` is always allowed; leaving it (a warm
//! isolate's thread goes back to its policy once a function is bound to it) needs
//! `CAP_SYS_NICE` or a high enough `RLIMIT_NICE`. Where the process cannot do that, warm
//! boots keep the thread's policy: a thread that will serve requests is never left behind.
//!
//! Retired isolates are torn down at normal priority on purpose: on a saturated machine a
//! background teardown would hardly run, and evicted isolates would pile up in memory
//! faster than they are freed. A starved warm boot costs nothing of the kind: the pool
//! holds one boot in flight, and requests boot on demand (at normal priority) meanwhile.
//!
//! Measured (`benches/cold_start.rs`, two cores): request-path cold start p99 from 13-15 ms
//! to 6-7 ms while the pool refills; nice 19 in its place gave 7-9 ms. See
//! `benches/RESULTS.md`.

use std::sync::OnceLock;

/// The calling thread's scheduling policy.
fn this_thread() -> libc::c_int {
    // SAFETY: pid 0 is the calling thread.
    unsafe { libc::sched_getscheduler(0) }
}

/// Puts the calling thread under `policy` (one without a static priority).
fn set_this_thread(policy: libc::c_int) -> bool {
    set_thread(0, policy)
}

fn set_thread(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain syscall on a thread of this process (0: the calling one).
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

/// Whether this process may put a thread back under its policy after `SCHED_IDLE`, found
/// out once on a scratch thread.
fn can_restore() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::spawn(|| {
            let was = this_thread();
            set_this_thread(libc::SCHED_IDLE) && set_this_thread(was)
        })
        .join()
        .unwrap_or(false)
    })
}

/// A warm boot on this thread: in the background while it lasts, if the thread can be
/// restored after.
pub struct WarmBoot {
    restore: Option<libc::c_int>,
}

impl WarmBoot {
    pub fn begin() -> Self {
        let was = this_thread();
        // Only the time-sharing policies; a real-time thread is the operator's choice.
        let ordinary = was == libc::SCHED_OTHER || was == libc::SCHED_BATCH;
        let lowered = ordinary && can_restore() && set_this_thread(libc::SCHED_IDLE);
        Self { restore: lowered.then_some(was) }
    }

    /// The thread is about to serve a function: back to its policy before the boot.
    pub fn end(self) {
        if let Some(was) = self.restore
            && !set_this_thread(was)
        {
            tracing::warn!("an isolate thread could not leave the background after its warm boot");
        }
    }
}

/// Thread `tid` of this process runs JS that cannot be stopped (see
/// [`Tripwire`](crate::meter::Tripwire)): it keeps only the CPU nobody else wants.
pub fn quarantine(tid: libc::pid_t) {
    set_thread(tid, libc::SCHED_IDLE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_boot_ends_under_the_threads_policy() {
        let was = this_thread();
        std::thread::spawn(move || {
            assert_eq!(this_thread(), was, "threads start under their creator's policy");
            let boot = WarmBoot::begin();
            assert_eq!(this_thread(), if can_restore() { libc::SCHED_IDLE } else { was });
            boot.end();
            assert_eq!(this_thread(), was, "a thread that serves must never stay in the background");
        })
        .join()
        .expect("thread");
        assert_eq!(this_thread(), was, "only the calling thread is moved");
    }

    #[test]
    fn a_quarantined_thread_keeps_only_idle_cpu() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).expect("send");
            done_rx.recv().expect("told to end");
            this_thread()
        });
        quarantine(tid_rx.recv().expect("tid"));
        done_tx.send(()).expect("send");
        assert_eq!(thread.join().expect("thread"), libc::SCHED_IDLE);
    }
}
