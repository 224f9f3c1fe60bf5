//! Counters the runtime keeps for the node's metrics: isolates alive and warm, boots,
//! evictions, CPU time used by functions, and kills by limit. They are prometheus-client
//! metrics (atomics inside); the edge node registers them and serves the text format.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tern_js_api::exchange::FailureKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

#[derive(Default, Debug)]
pub struct RuntimeStats {
    /// Isolates bound to a function and serving.
    pub live_isolates: Gauge,
    /// Booted isolates waiting in the warm pool.
    pub warm_isolates: Gauge,
    /// Isolates booted since start (warm or on demand).
    pub boots: Counter,
    /// Isolates booted on a request's path because the warm pool was empty.
    pub cold_boots: Counter,
    /// Isolates retired for being idle or over the memory budget.
    pub evictions: Counter,
    /// Isolates whose JS went on after termination; their threads are quarantined.
    pub stuck_isolates: Counter,
    /// CPU time used by functions (module evaluation and requests).
    pub function_cpu_seconds: Counter<f64, AtomicU64>,
    /// Requests or isolates ended by a limit, by `tern-error` code.
    pub kills: Family<LimitLabel, Counter>,
}

impl RuntimeStats {
    pub fn add_cpu(&self, cpu: Duration) {
        self.function_cpu_seconds.inc_by(cpu.as_secs_f64());
    }

    /// Counts a kill for the limit `kind` stands for (other kinds are not the runtime's kills;
    /// wall time is counted by the node).
    pub fn count_kill(&self, kind: FailureKind) {
        if matches!(
            kind,
            FailureKind::CpuLimitExceeded | FailureKind::MemoryLimitExceeded | FailureKind::StartupLimitExceeded
        ) {
            self.kills.get_or_create(&LimitLabel { limit: kind.code() }).inc();
        }
    }

    /// Adds these metrics to `registry` (names as they will read: `tern_isolates_live`, ...).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("isolates_live", "Isolates bound to a function", self.live_isolates.clone());
        registry.register("isolates_warm", "Booted isolates waiting in the warm pool", self.warm_isolates.clone());
        registry.register("isolate_boots", "Isolates booted", self.boots.clone());
        registry.register(
            "isolate_cold_boots",
            "Isolates booted on a request's path (warm pool empty)",
            self.cold_boots.clone(),
        );
        registry.register("isolate_evictions", "Isolates evicted (idle or memory budget)", self.evictions.clone());
        registry.register(
            "isolates_stuck",
            "Isolates whose JS went on after termination (thread quarantined)",
            self.stuck_isolates.clone(),
        );
        registry.register("function_cpu_seconds", "CPU time used by functions", self.function_cpu_seconds.clone());
        registry.register("kills", "Requests or isolates ended by a limit", self.kills.clone());
    }
}
