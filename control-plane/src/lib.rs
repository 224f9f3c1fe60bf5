//! Tern's control plane: stores every version of every function, signs bundles, and says
//! what each function runs, through an HTTP/JSON API with bearer tokens.
//!
//! Owns the state ([`store`]: an embedded single-file store by default) and the pure
//! decisions about it ([`deploy`]: version numbering, route conflicts, rollback targets),
//! the data directory's secrets ([`keys`]: the signing key and the admin token), and the API
//! ([`api`]). It never links the JS engine.

pub mod api;
pub mod deploy;
pub mod keys;
pub mod store;
