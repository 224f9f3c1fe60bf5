//! Tern's shared vocabulary: what a function *is* once it leaves the user's folder.
//!
//! Owns the `tern.toml` manifest schema ([`manifest`]), route patterns ([`route`]) and the
//! immutable, content-addressed bundle of modules ([`bundle`]). Everything here is pure:
//! no file system, no sockets, no JS engine. Reading a project folder belongs to the CLI,
//! running a bundle to the runtime.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod distribution;
pub mod forwarding;
pub mod limits;
pub mod manifest;
pub mod rollout;
pub mod route;
pub mod signature;

pub use bundle::{Bundle, BundleError, BundleId, Module, ModuleKind, ModulePath, WireError};
pub use limits::Limits;
pub use manifest::{Manifest, ManifestError};
pub use route::{RoutePattern, RoutePatternError};
pub use signature::{BundleSignature, SignatureError, SigningKey, VerifyingKey};
