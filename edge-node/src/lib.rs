//! Tern's edge node: serves HTTP, picks the function for each request and hands it to the
//! isolate runtime.
//!
//! Owns the listener ([`server`]) and its limits ([`limits`]), the per-exchange limits
//! ([`guard`]), metrics and the admin endpoint ([`metrics`]), the pure route lookup ([`routing`]), who is asking
//! behind a router ([`forwarded`]), the node's state
//! ([`node`]) and the mapping of every failure to a status and `tern-error` code
//! ([`errors`]). It does not run JavaScript itself (that is `tern-runtime`) and does not
//! read projects from disk (that is the CLI).

pub mod errors;
pub mod forwarded;
pub mod guard;
pub mod host_server;
pub mod hosts;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod routing;
pub mod server;

pub use errors::{ErrorDetail, NodeError};
pub use forwarded::EdgeIdentity;
pub use limits::ServerLimits;
pub use node::{Backend, EdgeNode};
pub use routing::RouteTable;
