//! The one seam every outbound `fetch` passes through.
//!
//! deno_fetch performs the HTTP(S) request; before it connects it asks the
//! [`PermissionsContainer`] in the isolate's state (`check_net_url` for the URL, then
//! `check_net_resolved` for each address the host name resolves to), and it resolves names
//! with the resolver in its [`Options`]. Tern builds both here, from an [`EgressPolicy`], so
//! the policy of the limits issue (private ranges, metadata addresses, hop counts) lands in
//! this module and nowhere else.

use std::sync::Arc;

use deno_fetch::Options;
use deno_permissions::{PermissionsContainer, RuntimePermissionDescriptorParser};

/// What outbound requests a function may make.
#[derive(Debug, Clone, Default)]
pub enum EgressPolicy {
    /// Any destination. The default until the egress policy lands; `tern dev` uses it.
    #[default]
    AllowAll,
}

/// The `User-Agent` a function's outbound requests carry unless it sets one.
pub const USER_AGENT: &str = concat!("Tern/", env!("CARGO_PKG_VERSION"));

pub fn fetch_options(_policy: &EgressPolicy) -> Options {
    Options { user_agent: USER_AGENT.to_string(), ..Default::default() }
}

pub fn permissions(policy: &EgressPolicy) -> PermissionsContainer {
    let parser = Arc::new(RuntimePermissionDescriptorParser::new(sys_traits::impls::RealSys));
    match policy {
        EgressPolicy::AllowAll => PermissionsContainer::allow_all(parser),
    }
}
