//! Tern's isolate runtime: runs function bundles in deno_core isolates.
//!
//! Owns the isolate threads ([`pool`]), the life of one function's isolate ([`isolate`]),
//! module loading from a bundle ([`loader`]) and npm package resolution ([`packages`]). It knows nothing of HTTP servers or routing:
//! the edge node hands it [`Exchange`](tern_js_api::exchange::Exchange)s.

pub mod isolate;
pub mod loader;
pub mod packages;
pub mod pool;

pub use pool::{IsolateThreads, StartError};
