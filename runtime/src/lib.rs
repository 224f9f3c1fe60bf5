//! Tern's isolate runtime: runs function bundles in deno_core isolates, under limits.
//!
//! Owns where isolates live and the warm pool ([`pool`]) with its threads' priorities
//! ([`priority`]), the life of one function's isolate ([`isolate`]) and what its kills leave
//! behind (`kill`), CPU and memory accounting ([`meter`], [`memory`]) with the thread that
//! enforces CPU deadlines ([`watchdog`]), the runtime's counters ([`stats`]), module loading
//! from a bundle ([`loader`]) with the engine's compiled-code cache ([`code_cache`]) and npm
//! package resolution ([`packages`]). It knows
//! nothing of HTTP servers or routing: the edge node hands it
//! [`Exchange`](tern_js_api::exchange::Exchange)s.

pub mod code_cache;
pub mod isolate;
mod kill;
pub mod loader;
pub mod memory;
pub mod meter;
pub mod packages;
pub mod pool;
pub mod priority;
pub mod stats;
pub mod watchdog;

pub use pool::{IsolateConfig, Isolates, StartError};
pub use stats::RuntimeStats;
