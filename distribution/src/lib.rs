//! The distribution channel between the control plane and its nodes: one QUIC connection
//! (quinn) per node, mutual TLS (rustls with ring) under the control plane's own
//! certificate authority, and the messages of [`tern_proto::distribution`] in frames.
//!
//! Owns the framing over QUIC streams ([`framing`]), the node's identity (enrolment, its key
//! and certificate on disk, its TLS configuration: [`identity`]), what the node has applied
//! and the verified bundles it keeps on disk ([`local`]), and the node's side of the
//! connection ([`agent`]: subscribe, fetch, verify, hand over, acknowledge, reconnect), and
//! the relay that stands between the control plane and many nodes ([`relay`]), and what the
//! control plane and relays share as servers ([`serve`]). The
//! control plane's side is `tern-control-plane`'s `distribute`. Never links the JS engine:
//! what a node does with a verified state is the caller's.

pub mod agent;
pub mod framing;
pub mod identity;
pub mod local;
pub mod relay;
pub mod serve;
