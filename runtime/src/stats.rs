//! Counters the runtime keeps for the node's metrics: isolates alive and warm, boots, CPU
//! time used by functions, and kills by limit. Plain atomics; the edge node renders them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tern_js_api::exchange::FailureKind;

#[derive(Default, Debug)]
pub struct RuntimeStats {
    /// Isolates bound to a function and serving.
    pub live_isolates: AtomicU64,
    /// Booted isolates waiting in the warm pool.
    pub warm_isolates: AtomicU64,
    /// Isolates booted since start (warm or on demand).
    pub boots: AtomicU64,
    /// Isolates booted on a request's path because the warm pool was empty.
    pub cold_boots: AtomicU64,
    /// CPU time used by functions (module evaluation and requests), in nanoseconds.
    pub function_cpu_ns: AtomicU64,
    /// Isolates whose JS went on after termination; their threads are quarantined.
    pub stuck_isolates: AtomicU64,
    pub kills_cpu: AtomicU64,
    pub kills_memory: AtomicU64,
    pub kills_startup: AtomicU64,
    pub kills_wall_time: AtomicU64,
}

impl RuntimeStats {
    pub fn add_cpu(&self, cpu: Duration) {
        self.function_cpu_ns.fetch_add(u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Counts a kill for the limit `kind` stands for (other kinds are not kills).
    pub fn count_kill(&self, kind: FailureKind) {
        let counter = match kind {
            FailureKind::CpuLimitExceeded => &self.kills_cpu,
            FailureKind::MemoryLimitExceeded => &self.kills_memory,
            FailureKind::StartupLimitExceeded => &self.kills_startup,
            FailureKind::WallTimeExceeded => &self.kills_wall_time,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
