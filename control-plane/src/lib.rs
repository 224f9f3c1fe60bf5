//! Tern's control plane: stores every version of every function, signs bundles, says what
//! each function runs through an HTTP/JSON API with bearer tokens, and streams it to every
//! node.
//!
//! Owns the state ([`store`]: an embedded single-file store by default; [`etcd`]: etcd,
//! shared by replicas) and the pure
//! decisions about it ([`deploy`]: version numbering, route conflicts, rollback targets),
//! wall-clock times ([`clock`]), the data directory's secrets ([`keys`]: the signing key and the tokens; [`tokens`]: join
//! tokens that expire; [`vault`]: the
//! key that seals functions' secrets at rest), the certificate
//! authority of the distribution channel ([`ca`]), the API ([`api`]), the distribution
//! endpoint nodes subscribe to over QUIC ([`distribute`]) and what it knows of connected
//! nodes ([`fleet`]: applied revisions, propagation). It never links the JS engine.

pub mod api;
pub mod ca;
pub mod clock;
pub mod deploy;
pub mod distribute;
pub mod etcd;
pub mod fleet;
pub mod keys;
pub mod store;
pub mod tokens;
pub mod vault;
