//! CPU accounting of one isolate: what its requests have used and how much longer the JS
//! now running may go on before it breaches a limit.
//!
//! An isolate owns its OS thread, so the thread's CPU clock is the isolate's CPU time (a
//! request awaiting a slow upstream uses none). The isolate thread reads the clock around
//! every stretch of JS it runs (a poll of the event loop, module evaluation) and charges the
//! difference, in equal parts, to the requests in flight at some moment of the stretch (one
//! poll may take and answer a whole queue of requests); JS that runs while no request is in
//! flight (timers after the response) is charged to a background account that renews every
//! second. Before each stretch it publishes, in a [`Tripwire`], the CPU clock reading at
//! which the stretch breaches, pushed back by a request's allowance each time the JS takes
//! a request; the [`crate::watchdog`] compares that with the clock from its own thread and
//! terminates JS that runs past it, even JS that never yields.
//!
//! [`Allowance`] is the pure part: no clock, no engine.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// Which limit a terminated isolate breached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Breach {
    Cpu = 1,
    Startup = 2,
    Memory = 3,
}

impl Breach {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Cpu),
            2 => Some(Self::Startup),
            3 => Some(Self::Memory),
            _ => None,
        }
    }
}

/// A thread's CPU-time clock, readable from any thread.
#[derive(Debug, Clone, Copy)]
pub struct CpuClock(libc::clockid_t);

impl CpuClock {
    /// The clock of the calling thread.
    pub fn of_current_thread() -> Self {
        let mut id: libc::clockid_t = 0;
        // SAFETY: pthread_self() is always a valid thread; `id` is a valid out pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
        assert_eq!(rc, 0, "pthread_getcpuclockid failed for the current thread");
        Self(id)
    }

    /// CPU time the thread has used. Zero if the thread is gone.
    pub fn now(self) -> Duration {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid out pointer; an invalid clock id only yields an error.
        if unsafe { libc::clock_gettime(self.0, &mut ts) } != 0 {
            return Duration::ZERO;
        }
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

/// What the watchdog needs to stop an isolate, shared with the isolate's thread.
pub struct Tripwire {
    clock: CpuClock,
    /// CPU clock reading (ns) past which the JS now running breaches; 0 while no JS runs.
    deadline_ns: AtomicU64,
    /// The limit being enforced by `deadline_ns`.
    armed_for: AtomicU8,
    /// Set once the isolate is being terminated, with the reason.
    tripped: AtomicU8,
    handle: deno_core::v8::IsolateHandle,
    /// The isolate thread's kernel id, to lower its priority if it gets stuck.
    tid: libc::pid_t,
    tripped_at: std::sync::Mutex<Option<std::time::Instant>>,
    stuck: std::sync::atomic::AtomicBool,
    /// Called, in order, on the watchdog's thread when the isolate is found stuck.
    on_stuck: std::sync::Mutex<Vec<OnStuck>>,
    /// CPU clock reading (ns) when the JS now running started.
    armed_at_ns: AtomicU64,
    /// Set by whoever writes the kill record of this isolate's breach (see
    /// [`Self::claim_kill_record`]).
    kill_recorded: std::sync::atomic::AtomicBool,
}

/// What to do when an isolate is found stuck, given the breach it was stopped for.
pub type OnStuck = Box<dyn Fn(Breach) + Send + Sync>;

/// How long terminated JS may go on before its isolate is declared stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(1);

impl Tripwire {
    /// The tripwire of an isolate running on the calling thread.
    pub fn new(handle: deno_core::v8::IsolateHandle) -> Self {
        Self {
            clock: CpuClock::of_current_thread(),
            deadline_ns: AtomicU64::new(0),
            armed_for: AtomicU8::new(0),
            tripped: AtomicU8::new(0),
            handle,
            // SAFETY: gettid has no preconditions.
            tid: unsafe { libc::gettid() },
            tripped_at: std::sync::Mutex::new(None),
            stuck: std::sync::atomic::AtomicBool::new(false),
            on_stuck: std::sync::Mutex::new(Vec::new()),
            armed_at_ns: AtomicU64::new(0),
            kill_recorded: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn clock(&self) -> CpuClock {
        self.clock
    }

    /// JS starts running: it may use `allowance` of CPU time from now on.
    pub fn arm(&self, now: Duration, allowance: Duration, limit: Breach) {
        let deadline = (now + allowance).as_nanos().min(u64::MAX as u128) as u64;
        self.armed_for.store(limit as u8, Ordering::Relaxed);
        self.armed_at_ns.store(now.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.deadline_ns.store(deadline.max(1), Ordering::Release);
    }

    /// The JS now running may use `more` CPU time than it was armed with (a request it took
    /// brought its own allowance). Nothing if no JS runs.
    pub fn extend(&self, more: Duration) {
        let more = more.as_nanos().min(u64::MAX as u128) as u64;
        let _ = self.deadline_ns.fetch_update(Ordering::AcqRel, Ordering::Acquire, |deadline| {
            (deadline != 0).then(|| deadline.saturating_add(more))
        });
    }

    /// JS stopped running.
    pub fn disarm(&self) {
        self.deadline_ns.store(0, Ordering::Release);
    }

    /// Called by the watchdog: terminates the isolate if the running JS is past its deadline.
    /// A tripped isolate still running JS is told again: on quickjs a termination can be
    /// consumed by one microtask while the next one carries on.
    pub fn check(&self) -> bool {
        let deadline = self.deadline_ns.load(Ordering::Acquire);
        if deadline == 0 {
            return false;
        }
        if self.tripped.load(Ordering::Relaxed) != 0 {
            self.handle.terminate_execution();
            self.quarantine_if_stuck();
            return false;
        }
        if self.clock.now().as_nanos() < u128::from(deadline) {
            return false;
        }
        let limit = Breach::from_u8(self.armed_for.load(Ordering::Relaxed)).unwrap_or(Breach::Cpu);
        self.trip(limit);
        true
    }

    /// Terminates the isolate's JS for `breach` (the first reason wins).
    pub fn trip(&self, breach: Breach) {
        if self.tripped.compare_exchange(0, breach as u8, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            *self.tripped_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
            self.handle.terminate_execution();
        }
    }

    /// What to do once the isolate is found stuck, with the breach it was terminated for:
    /// the pool moves its function elsewhere, the isolate answers what it owes. Runs on the
    /// watchdog's thread, in the order registered.
    pub fn on_stuck(&self, f: OnStuck) {
        self.on_stuck.lock().unwrap_or_else(|p| p.into_inner()).push(f);
    }

    /// JS still running [`STUCK_AFTER`] after termination cannot be stopped in this process
    /// (on quickjs, a chain of microtasks each re-queuing the next swallows termination; a
    /// loop that catches failing allocations runs a full collection per allocation and
    /// reaches the engine's interrupt check only after seconds).
    /// Its thread is lowered to the least CPU priority and the pool stops running its version;
    /// the thread is lost until the process is replaced, unless the JS ends after all.
    fn quarantine_if_stuck(&self) {
        let since = *self.tripped_at.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_none_or(|t| t.elapsed() < STUCK_AFTER) || self.stuck.swap(true, Ordering::AcqRel) {
            return;
        }
        crate::priority::quarantine(self.tid);
        let breach = self.tripped().unwrap_or(Breach::Cpu);
        for f in self.on_stuck.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            f(breach);
        }
    }

    /// CPU time the JS now running (or last run) has used since it started.
    pub fn stretch_cpu(&self) -> Duration {
        self.clock.now().saturating_sub(Duration::from_nanos(self.armed_at_ns.load(Ordering::Relaxed)))
    }

    /// True for the first caller only: the isolate's thread once its JS has unwound, or the
    /// watchdog's when it finds the isolate stuck, whichever comes first, writes the one
    /// kill record of the breach.
    pub fn claim_kill_record(&self) -> bool {
        !self.kill_recorded.swap(true, Ordering::AcqRel)
    }

    /// Whether the isolate was found stuck (see [`Self::on_stuck`]).
    pub fn was_stuck(&self) -> bool {
        self.stuck.load(Ordering::Acquire)
    }

    pub fn tripped(&self) -> Option<Breach> {
        Breach::from_u8(self.tripped.load(Ordering::Acquire))
    }
}

/// How background CPU (no request in flight) is budgeted: `limit` per this period.
pub const BACKGROUND_PERIOD: Duration = Duration::from_secs(1);

/// The CPU budget arithmetic, for one isolate serving requests.
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    pub limit: Duration,
}

impl Allowance {
    /// How much CPU the next stretch of JS may use: with `in_flight` requests sharing it
    /// equally, until the most charged one reaches the limit; with none, what is left of the
    /// background account.
    pub fn next_stretch(self, in_flight: usize, max_charged: Duration, background: Duration) -> Duration {
        if in_flight == 0 {
            return self.limit.saturating_sub(background);
        }
        let n = u32::try_from(in_flight).unwrap_or(u32::MAX);
        self.limit.saturating_sub(max_charged).saturating_mul(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn one_request_gets_what_is_left_of_its_limit() {
        let a = Allowance { limit: 50 * MS };
        assert_eq!(a.next_stretch(1, 20 * MS, Duration::ZERO), 30 * MS);
        assert_eq!(a.next_stretch(1, 60 * MS, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn concurrent_requests_share_the_stretch_so_it_may_last_longer() {
        let a = Allowance { limit: 50 * MS };
        // Four requests, the most charged at 10 ms: each may take 40 ms more, in quarters.
        assert_eq!(a.next_stretch(4, 10 * MS, Duration::ZERO), 160 * MS);
    }

    #[test]
    fn background_work_has_its_own_account() {
        let a = Allowance { limit: 50 * MS };
        assert_eq!(a.next_stretch(0, Duration::ZERO, 45 * MS), 5 * MS);
    }

    #[test]
    fn the_thread_clock_counts_cpu_not_sleep() {
        let clock = CpuClock::of_current_thread();
        let before = clock.now();
        std::thread::sleep(20 * MS);
        let slept = clock.now() - before;
        let before = clock.now();
        let start = std::time::Instant::now();
        while start.elapsed() < 20 * MS {
            std::hint::black_box(0u64.wrapping_add(1));
        }
        let spun = clock.now() - before;
        assert!(spun > slept, "spinning used {spun:?} of CPU, sleeping {slept:?}");
    }
}
