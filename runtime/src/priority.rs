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
//! Teardowns take turns instead ([`teardown`]): they never hold every core at once (an
//! idle-TTL sweep retires several isolates at one tick, each teardown some milliseconds of
//! CPU), so a request woken meanwhile finds a core; and they wait (briefly) for the cold
//! starts in progress, one of which is usually what evicted them.
//!
//! Measured (`benches/cold_start.rs`, two cores): request-path cold start p99 from 13-15 ms
//! to 6-7 ms while the pool refills; nice 19 in its place gave 7-9 ms. Then, with warm boots
//! spawned in the background, lifted by their binder and teardowns taking turns: 300
//! functions 6.3 to 3.9-5.4 ms, 1,000 functions 6.2-8.7 to 5.2-5.9 ms. See
//! `benches/RESULTS.md`.

use std::sync::{Condvar, Mutex, OnceLock};

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
/// restored after. Restoring is done by whoever binds a function to the isolate, before the
/// binding wakes it: a thread woken under `SCHED_IDLE` waits for every other runnable thread
/// on its core first (measured: 1-3 ms of scheduling delay on the request path).
#[derive(Debug)]
pub struct WarmBoot {
    /// The booting thread and the policy it goes back to.
    restore: Option<(libc::pid_t, libc::c_int)>,
}

impl WarmBoot {
    /// Spawns a thread for a warm boot, in the background from its first instruction: the
    /// calling thread lowers itself while it spawns (a thread starts under its creator's
    /// policy), since lowering a running thread does not preempt it, and a request woken on
    /// its core waited out the new thread's whole first slice (measured: 2-4 ms).
    pub fn spawn<F>(builder: std::thread::Builder, f: F) -> std::io::Result<std::thread::JoinHandle<()>>
    where
        F: FnOnce(Option<WarmBoot>) + Send + 'static,
    {
        let was = this_thread();
        // Only the time-sharing policies; a real-time thread is the operator's choice.
        let ordinary = was == libc::SCHED_OTHER || was == libc::SCHED_BATCH;
        let lowered = ordinary && can_restore() && set_this_thread(libc::SCHED_IDLE);
        let spawned = builder.spawn(move || {
            // SAFETY: gettid has no preconditions.
            f(lowered.then(|| WarmBoot { restore: Some((unsafe { libc::gettid() }, was)) }))
        });
        if lowered && !set_this_thread(was) {
            tracing::warn!("a thread could not leave the background after spawning a warm boot");
        }
        spawned
    }

    /// The thread is about to serve a function: back to its policy before the boot. Called
    /// from any thread of this process, while the booted thread is known to be alive.
    pub fn end(self) {
        if let Some((tid, was)) = self.restore
            && !set_thread(tid, was)
        {
            tracing::warn!("an isolate thread could not leave the background after its warm boot");
        }
    }
}

/// How many isolates are torn down at once: every core but one, so that one core is left
/// to the request path whatever the evictions.
fn teardown_lanes() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

static TEARDOWN_LANES: Lanes = Lanes { busy: Mutex::new(0), freed: Condvar::new() };

/// Tearing down an isolate: gives way to cold starts in progress (for at most
/// [`TEARDOWN_YIELD`]), then waits for a free lane, held until the guard drops.
pub fn teardown() -> Lane {
    COLD_STARTS.wait_none(TEARDOWN_YIELD);
    TEARDOWN_LANES.take(teardown_lanes())
}

/// How long a teardown waits for cold starts in progress to finish. A function new to a
/// full node evicts another's isolate as it binds its own: without this, the evicted
/// isolate's teardown (milliseconds of freeing memory) ran alongside the very cold start
/// that caused it, and doubled its median (`benches/cold_start.rs`, 0.41 to 0.85 ms).
const TEARDOWN_YIELD: std::time::Duration = std::time::Duration::from_millis(50);

static COLD_STARTS: Gate = Gate { open: Mutex::new(0), closed: Condvar::new() };

/// A function's isolate being bound and its modules evaluated, for a request or ahead of
/// one; teardowns wait while one is held (see [`teardown`]).
pub fn cold_start() -> ColdStart {
    *COLD_STARTS.open.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    ColdStart(())
}

/// A cold start in progress; dropping it marks it done.
pub struct ColdStart(());

impl Drop for ColdStart {
    fn drop(&mut self) {
        let mut open = COLD_STARTS.open.lock().unwrap_or_else(|p| p.into_inner());
        *open -= 1;
        if *open == 0 {
            COLD_STARTS.closed.notify_all();
        }
    }
}

/// A count of things in progress that others may wait to see reach zero.
struct Gate {
    open: Mutex<usize>,
    closed: Condvar,
}

impl Gate {
    /// Waits until nothing is in progress, or `patience` has passed.
    fn wait_none(&self, patience: std::time::Duration) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.closed.wait_timeout_while(open, patience, |open| *open > 0);
    }
}

/// A counting semaphore for threads that may block.
struct Lanes {
    busy: Mutex<usize>,
    freed: Condvar,
}

impl Lanes {
    fn take(&'static self, lanes: usize) -> Lane {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while *busy >= lanes {
            busy = self.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy += 1;
        Lane(self)
    }
}

/// A lane held; dropping it frees the lane for the next waiter.
pub struct Lane(&'static Lanes);

impl Drop for Lane {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.0.freed.notify_one();
    }
}

/// Called first thing in a process that serves requests, before it starts a thread: every
/// thread of the process (they inherit the policy) runs under `SCHED_BATCH`, so that a
/// thread woken with work (the HTTP side with a new request, an isolate with its exchange)
/// does not preempt another of ours in the middle of its own: each runs its batch out and
/// hands over when it waits. Measured (`tern dev examples/hello`, server on one core, wrk
/// with 50 connections): 28.2-30.1k to 36.1-36.2k req/s, p50 1.8 to 1.3 ms. Threads that
/// must cut in ([`prompt_thread`]: the watchdog) and background work (`SCHED_IDLE`, which
/// batch threads still preempt) are set apart. Where the policy cannot be set, nothing
/// changes.
pub fn serving_process() {
    if this_thread() == libc::SCHED_OTHER && !set_this_thread(libc::SCHED_BATCH) {
        tracing::debug!("could not put the serving process under SCHED_BATCH");
    }
}

/// The calling thread must run as soon as it wakes (the watchdog, which stops runaway JS):
/// back to `SCHED_OTHER` if it inherited `SCHED_BATCH`.
pub fn prompt_thread() {
    if this_thread() == libc::SCHED_BATCH {
        set_this_thread(libc::SCHED_OTHER);
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

    /// The binder lifts the booted thread out of the background before waking it.
    #[test]
    fn bug_a_warm_isolate_was_woken_for_its_first_request_still_in_the_background() {
        let was = this_thread();
        let (boot_tx, boot_rx) = std::sync::mpsc::channel();
        let (woken_tx, woken_rx) = std::sync::mpsc::channel::<()>();
        let (policy_tx, policy_rx) = std::sync::mpsc::channel();
        let thread = WarmBoot::spawn(std::thread::Builder::new(), move |boot| {
            boot_tx.send(boot).expect("send");
            woken_rx.recv().expect("woken");
            policy_tx.send(this_thread()).expect("send");
        })
        .expect("spawn");
        if let Some(boot) = boot_rx.recv().expect("booted") {
            boot.end();
        }
        woken_tx.send(()).expect("send");
        thread.join().expect("thread");
        assert_eq!(policy_rx.recv().expect("policy"), was, "the thread wakes under its own policy");
    }

    #[test]
    fn a_warm_boot_thread_starts_in_the_background_and_its_spawner_stays_out() {
        let was = this_thread();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = WarmBoot::spawn(std::thread::Builder::new(), move |boot| {
            tx.send((this_thread(), boot.is_some())).expect("send");
        })
        .expect("spawn");
        thread.join().expect("thread");
        let (policy, lowered) = rx.recv().expect("policy");
        assert_eq!(policy, if lowered { libc::SCHED_IDLE } else { was });
        assert_eq!(lowered, can_restore());
        assert_eq!(this_thread(), was, "the spawning thread goes back to its policy");
    }

    #[test]
    fn a_serving_process_runs_in_batches_and_its_watchdog_cuts_in() {
        std::thread::spawn(|| {
            let was = this_thread();
            serving_process();
            let serving = this_thread();
            let inherited = std::thread::spawn(this_thread).join().expect("thread");
            let prompt = std::thread::spawn(|| {
                prompt_thread();
                this_thread()
            })
            .join()
            .expect("thread");
            if was == libc::SCHED_OTHER {
                assert_eq!((serving, inherited), (libc::SCHED_BATCH, libc::SCHED_BATCH), "threads inherit it");
                assert_eq!(prompt, libc::SCHED_OTHER, "the watchdog wakes as an ordinary thread");
            }
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn teardowns_take_turns_within_their_lanes() {
        static LANES: Lanes = Lanes { busy: Mutex::new(0), freed: Condvar::new() };
        let first = LANES.take(1);
        let (taken_tx, taken_rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _second = LANES.take(1);
            taken_tx.send(()).expect("send");
        });
        assert!(
            taken_rx.recv_timeout(std::time::Duration::from_millis(50)).is_err(),
            "a second teardown waits while the only lane is held"
        );
        drop(first);
        taken_rx.recv().expect("the waiter takes the freed lane");
        waiter.join().expect("waiter");
        assert_eq!(*LANES.busy.lock().unwrap(), 0);
        assert!(teardown_lanes() >= 1);
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
