//! What a router and a node say to each other inside requests: the host of a node's own
//! health answer, and the headers through which a trusted router tells a node who the
//! client is and where (which the node hands on as `request.cf`). One definition for the
//! router, the node and the runtime.

/// Host of the probes routers send to nodes (`GET /health`). `.invalid` is reserved (RFC
/// 2606), so no function's route can claim it.
pub const PROBE_HOST: &str = "node.tern.invalid";

/// JSON object for `request.cf`: from a trusted router to a node (country, latitude,
/// longitude), then from the node to the runtime (plus `colo`).
pub const CF_HEADER: &str = "tern-cf";

/// The client's address, as a trusted router determined it.
pub const CONNECTING_IP_HEADER: &str = "tern-connecting-ip";
