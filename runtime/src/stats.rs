//! Counters the runtime keeps for the node's metrics: isolates alive and warm, boots,
//! evictions, isolates ended, CPU time used by functions, and kills by limit. They are
//! prometheus-client metrics (atomics inside); the edge node registers them and serves the
//! text format. An isolate host process reports them to its node as a [`StatsSnapshot`],
//! and the node adds up its hosts' into a [`RuntimeStats`] of its own ([`RuntimeStats::catch_up`]).

use std::collections::BTreeMap;
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

/// The limits whose kills the runtime counts (wall time is counted by the node).
const RUNTIME_LIMITS: [FailureKind; 3] =
    [FailureKind::CpuLimitExceeded, FailureKind::MemoryLimitExceeded, FailureKind::StartupLimitExceeded];

/// See [`RuntimeStats::kill_counter`].
#[derive(Clone)]
pub struct KillCounter(Family<LimitLabel, Counter>);

impl KillCounter {
    /// Counts a kill for the limit `kind` stands for, as [`RuntimeStats::count_kill`].
    pub fn count(&self, kind: FailureKind) {
        if RUNTIME_LIMITS.contains(&kind) {
            self.0.get_or_create(&LimitLabel { limit: kind.code() }).inc();
        }
    }
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
    /// Isolates that ended (evicted, killed, replaced by a new version, or never bound):
    /// each leaves the engine's leak behind in this process.
    pub ended_isolates: Counter,
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
        self.kill_counter().count(kind);
    }

    /// The kill counts alone, for a thread that holds no `RuntimeStats` (the watchdog's).
    pub fn kill_counter(&self) -> KillCounter {
        KillCounter(self.kills.clone())
    }

    /// Every figure as it is now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let kills = RUNTIME_LIMITS
            .iter()
            .filter_map(|kind| {
                Some((kind.code().to_string(), self.kills.get(&LimitLabel { limit: kind.code() })?.get()))
            })
            .collect();
        StatsSnapshot {
            live_isolates: self.live_isolates.get(),
            warm_isolates: self.warm_isolates.get(),
            boots: self.boots.get(),
            cold_boots: self.cold_boots.get(),
            evictions: self.evictions.get(),
            ended_isolates: self.ended_isolates.get(),
            stuck_isolates: self.stuck_isolates.get(),
            function_cpu_seconds: self.function_cpu_seconds.get(),
            kills,
        }
    }

    /// Brings these figures up to `total` (the sum over a node's isolate hosts): gauges are
    /// set, counters only ever go up, so a total that fell (a host died before it reported its
    /// last figures) leaves a counter where it is until the total passes it again.
    pub fn catch_up(&self, total: &StatsSnapshot) {
        fn raise(counter: &Counter, to: u64) {
            counter.inc_by(to.saturating_sub(counter.get()));
        }
        self.live_isolates.set(total.live_isolates);
        self.warm_isolates.set(total.warm_isolates);
        raise(&self.boots, total.boots);
        raise(&self.cold_boots, total.cold_boots);
        raise(&self.evictions, total.evictions);
        raise(&self.ended_isolates, total.ended_isolates);
        raise(&self.stuck_isolates, total.stuck_isolates);
        let cpu = total.function_cpu_seconds - self.function_cpu_seconds.get();
        if cpu > 0.0 {
            self.function_cpu_seconds.inc_by(cpu);
        }
        for kind in RUNTIME_LIMITS {
            if let Some(&n) = total.kills.get(kind.code()) {
                raise(&self.kills.get_or_create(&LimitLabel { limit: kind.code() }), n);
            }
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
            "isolates_ended",
            "Isolates ended (evicted, killed, replaced by a new version)",
            self.ended_isolates.clone(),
        );
        registry.register(
            "isolates_stuck",
            "Isolates whose JS went on after termination (thread quarantined)",
            self.stuck_isolates.clone(),
        );
        registry.register("function_cpu_seconds", "CPU time used by functions", self.function_cpu_seconds.clone());
        registry.register("kills", "Requests or isolates ended by a limit", self.kills.clone());
    }
}

/// [`RuntimeStats`] at one moment, in a form that crosses processes (JSON). Counters add up
/// across processes; gauges (`live_isolates`, `warm_isolates`) are sums of the live ones.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    pub live_isolates: i64,
    pub warm_isolates: i64,
    pub boots: u64,
    pub cold_boots: u64,
    pub evictions: u64,
    pub ended_isolates: u64,
    pub stuck_isolates: u64,
    pub function_cpu_seconds: f64,
    /// Kills by `tern-error` code.
    pub kills: BTreeMap<String, u64>,
}

impl StatsSnapshot {
    /// Adds `other`'s figures to these; `with_gauges: false` adds only the counters (for a
    /// process that has ended: what it counted stays, what it held is gone).
    pub fn add(&mut self, other: &StatsSnapshot, with_gauges: bool) {
        if with_gauges {
            self.live_isolates += other.live_isolates;
            self.warm_isolates += other.warm_isolates;
        }
        self.boots += other.boots;
        self.cold_boots += other.cold_boots;
        self.evictions += other.evictions;
        self.ended_isolates += other.ended_isolates;
        self.stuck_isolates += other.stuck_isolates;
        self.function_cpu_seconds += other.function_cpu_seconds;
        for (code, n) in &other.kills {
            *self.kills.entry(code.clone()).or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(live: i64, boots: u64, cpu_kills: u64) -> StatsSnapshot {
        let s = RuntimeStats::default();
        s.live_isolates.set(live);
        s.boots.inc_by(boots);
        s.function_cpu_seconds.inc_by(0.5);
        for _ in 0..cpu_kills {
            s.count_kill(FailureKind::CpuLimitExceeded);
        }
        s.count_kill(FailureKind::WallTimeExceeded);
        s.snapshot()
    }

    #[test]
    fn a_snapshot_carries_every_figure_across_json() {
        let snapshot = host(3, 7, 2);
        assert_eq!(snapshot.live_isolates, 3);
        assert_eq!(snapshot.boots, 7);
        assert_eq!(snapshot.kills, BTreeMap::from([("cpu_limit_exceeded".to_string(), 2)]));
        let wire = serde_json::to_string(&snapshot).unwrap();
        assert_eq!(serde_json::from_str::<StatsSnapshot>(&wire).unwrap(), snapshot);
    }

    #[test]
    fn totals_over_hosts_keep_counters_of_ended_hosts_but_not_their_gauges() {
        let (a, b) = (host(3, 7, 2), host(1, 4, 1));
        let mut total = StatsSnapshot::default();
        total.add(&a, false);
        total.add(&b, true);
        assert_eq!((total.live_isolates, total.boots, total.kills["cpu_limit_exceeded"]), (1, 11, 3));
        assert_eq!(total.function_cpu_seconds, 1.0);
    }

    #[test]
    fn catching_up_never_lowers_a_counter() {
        let node = RuntimeStats::default();
        node.catch_up(&host(3, 7, 2));
        assert_eq!((node.live_isolates.get(), node.boots.get()), (3, 7));
        // A host died before reporting: the total falls, and the node's counters stay.
        node.catch_up(&host(0, 5, 1));
        assert_eq!((node.live_isolates.get(), node.boots.get()), (0, 7));
        assert_eq!(node.kills.get(&LimitLabel { limit: "cpu_limit_exceeded" }).unwrap().get(), 2);
        node.catch_up(&host(2, 9, 4));
        assert_eq!((node.live_isolates.get(), node.boots.get()), (2, 9));
        assert_eq!(node.kills.get(&LimitLabel { limit: "cpu_limit_exceeded" }).unwrap().get(), 4);
        assert_eq!(node.function_cpu_seconds.get(), 0.5);
    }
}
