//! What a breach leaves behind: the answer its requests get ([`failure_for`]), the one
//! structured record of the kill ([`KillRecord`], target `tern::kill`), and, for an isolate
//! whose JS goes on after termination, the answers the watchdog gives in its place
//! ([`Stranding`]) and the refusal of its version from then on ([`quarantined`]).

use std::sync::Weak;
use std::time::Duration;

use tern_js_api::exchange::{Failure, FailureKind, FunctionIdentity, Replies, RequestId, WeakInbox};
use tern_proto::Limits;

use crate::memory::MemoryMeter;
use crate::meter::{Breach, Tripwire};
use crate::stats::KillCounter;

/// The structured record of a kill: one JSON log line (target `tern::kill`); the caller
/// counts it. `phase` is `startup` (module evaluation) or `request` (serving). Written by
/// the watchdog (`stuck`), `cpu_ms` is the CPU time of the JS that would not stop and
/// `heap_bytes` the heap at the isolate's last sample (left out if it was never sampled).
pub struct KillRecord<'a> {
    pub identity: &'a FunctionIdentity,
    pub kind: FailureKind,
    pub phase: &'a str,
    pub cpu: Duration,
    /// The engine heap; `None` where it is not known (never sampled): the field is left out.
    pub heap: Option<usize>,
    pub array_buffers: usize,
    pub requests: &'a [RequestId],
    /// Written by the watchdog for an isolate whose JS went on after termination.
    pub stuck: bool,
}

impl KillRecord<'_> {
    pub fn write(&self) {
        let requests: Vec<String> = self.requests.iter().map(ToString::to_string).collect();
        tracing::warn!(
            target: "tern::kill",
            function = %self.identity.name,
            version = %self.identity.version,
            limit = self.kind.code(),
            phase = self.phase,
            cpu_ms = self.cpu.as_secs_f64() * 1000.0,
            heap_bytes = self.heap,
            array_buffer_bytes = self.array_buffers,
            requests = %requests.join(","),
            stuck = self.stuck,
            "function killed: {}",
            self.kind.code()
        );
    }
}

/// What the watchdog does for an isolate found stuck (its JS went on after termination): it
/// answers, there and then, the requests the isolate owes a response head with the breach,
/// and those still queued with the refusal of a quarantined version, and writes the kill
/// record. Waiting for the isolate's thread could take seconds, or forever; with the thread
/// lowered to the least priority, on a busy machine it did until the wall-time limit.
/// Holds the isolate's parts weakly: it lives as long as the isolate's tripwire.
pub struct Stranding {
    pub identity: FunctionIdentity,
    pub limits: Limits,
    pub inbox: WeakInbox,
    pub replies: Replies,
    pub tripwire: Weak<Tripwire>,
    pub memory: Weak<MemoryMeter>,
    pub kills: KillCounter,
}

impl Stranding {
    /// The kill record first, as on the isolate's own thread: whoever gets the answer can
    /// find it already.
    pub fn answer(&self, breach: Breach) {
        let failure = failure_for(breach, &self.limits);
        if let Some(tripwire) = self.tripwire.upgrade().filter(|t| t.claim_kill_record()) {
            let memory = self.memory.upgrade();
            KillRecord {
                identity: &self.identity,
                kind: failure.kind,
                phase: if breach == Breach::Startup { "startup" } else { "request" },
                cpu: tripwire.stretch_cpu(),
                heap: memory.as_ref().map(|m| m.last_heap()).filter(|&bytes| bytes > 0),
                array_buffers: memory.as_ref().map_or(0, |m| m.array_buffer_bytes()),
                requests: &self.replies.owed(),
                stuck: true,
            }
            .write();
            self.kills.count(failure.kind);
        }
        let owed = self.replies.fail_all(&failure).len();
        let queued = self.inbox.strand(&quarantined(&self.identity.version, breach));
        tracing::warn!(function = %self.identity.name, version = %self.identity.version, in_flight = owed, queued,
            "answered the requests of a stuck isolate without it");
    }
}

/// The `tern-error` of a breach.
fn kind_of(breach: Breach) -> FailureKind {
    match breach {
        Breach::Cpu => FailureKind::CpuLimitExceeded,
        Breach::Startup => FailureKind::StartupLimitExceeded,
        Breach::Memory => FailureKind::MemoryLimitExceeded,
    }
}

/// The answer to the requests in flight when their isolate breached `breach`.
pub fn failure_for(breach: Breach, l: &Limits) -> Failure {
    let detail = match breach {
        Breach::Cpu => {
            format!(
                "the function used more than its CPU time limit of {} ms per request",
                l.cpu_per_request.as_millis()
            )
        }
        Breach::Startup => format!(
            "evaluating the function's modules used more than its startup CPU limit of {} ms",
            l.startup_cpu.as_millis()
        ),
        Breach::Memory => {
            format!("the isolate used more than its memory limit of {} MiB", l.memory_bytes / (1024 * 1024))
        }
    };
    Failure { kind: kind_of(breach), detail }
}

/// The answer to a request for a version whose isolate got stuck after it was stopped for
/// `breach` (see [`crate::meter::Tripwire`]): that version is not run again in this process.
pub fn quarantined(version: &str, breach: Breach) -> Failure {
    let kind = kind_of(breach);
    let detail = format!(
        "its version {version} went on running after it was stopped at this limit, so its isolate was \
         quarantined and this version is not run again on this node: deploy a fixed one"
    );
    Failure { kind, detail }
}
