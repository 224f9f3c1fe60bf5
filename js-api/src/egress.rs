//! The one seam every outbound `fetch` passes through.
//!
//! deno_fetch performs the HTTP(S) request; before it connects it asks the
//! [`PermissionsContainer`] in the isolate's state (`check_net_url` for the URL, then
//! `check_net_resolved` for each address the host name resolves to), resolves names with
//! the resolver in its [`Options`], and verifies TLS against the root store given there.
//! Tern builds all of these here from an [`Egress`]: the [`EgressPolicy`] (which ranges are
//! refused), its deny list for deno_permissions (IPv4 ranges, exact IPv6 addresses, names),
//! and, for the IPv6 ranges that deny list cannot express, the guarded resolver (names) and
//! the check of every request deno_fetch builds, redirect hops included
//! ([`check_each_request`], reading the policy from the request's [`POLICY_HEADER`]), and
//! the hop-count constants. The JS side (`00_global_scope.js`) stamps `tern-hops` and
//! `tern-egress`, and words refusals.

use std::sync::Arc;

use deno_error::JsErrorBox;
use deno_fetch::Options;
use deno_permissions::{Permissions, PermissionsContainer, PermissionsOptions, RuntimePermissionDescriptorParser};
use deno_tls::RootCertStoreProvider;
use deno_tls::rustls::RootCertStore;
use ipnet::IpNet;

/// What outbound requests a function may make.
#[derive(Debug, Clone, Default)]
pub enum EgressPolicy {
    /// Public destinations only: every address in [`PRIVATE_RANGES`] is refused, whether
    /// it is written in the URL (in any spelling the URL parser accepts: decimal, hex,
    /// IPv4-mapped IPv6), reached through a redirect, or what a host name resolves to, except
    /// the `allowed` ranges.
    #[default]
    PublicOnly,
    /// Public destinations plus these ranges (a function's `[egress] allow`, `tern dev
    /// --allow-loopback`).
    PublicAnd(Vec<IpNet>),
    /// Any destination (for tools, never for functions of a node).
    AllowAll,
}

/// Loopback, private, link-local (cloud metadata at 169.254.169.254 and fd00:ec2::254),
/// CGNAT, and the other ranges a function on a shared node has no business reaching.
pub const PRIVATE_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// The IPv6 addresses among [`PRIVATE_RANGES`] written out one by one for deno_permissions,
/// whose deny list takes IPv6 addresses but not IPv6 ranges; the ranges are enforced by
/// [`GuardedResolver`] (names) and [`check_each_request`] (literals) instead.
const PRIVATE_V6_ADDRESSES: &[&str] = &["[::]", "[::1]", "[fd00:ec2::254]"];

/// Host names refused whatever they resolve to.
pub const PRIVATE_NAMES: &[&str] = &["metadata.google.internal", "metadata"];

impl EgressPolicy {
    /// The ranges to deny: [`PRIVATE_RANGES`] minus what the policy allows.
    pub fn denied(&self) -> Vec<IpNet> {
        let allowed: &[IpNet] = match self {
            Self::AllowAll => return Vec::new(),
            Self::PublicOnly => &[],
            Self::PublicAnd(allowed) => allowed,
        };
        let mut denied: Vec<IpNet> = PRIVATE_RANGES.iter().map(|r| r.parse().expect("valid range")).collect();
        for allow in allowed {
            denied = denied.into_iter().flat_map(|d| subtract(d, *allow)).collect();
        }
        denied
    }

    /// This policy with `more` ranges allowed as well.
    pub fn also_allowing(&self, more: &[IpNet]) -> Self {
        match self {
            Self::AllowAll => Self::AllowAll,
            _ if more.is_empty() => self.clone(),
            Self::PublicOnly => Self::PublicAnd(more.to_vec()),
            Self::PublicAnd(allowed) => Self::PublicAnd(allowed.iter().chain(more).copied().collect()),
        }
    }
}

/// `range` without `hole`, as a list of ranges.
fn subtract(range: IpNet, hole: IpNet) -> Vec<IpNet> {
    if hole.contains(&range) {
        return Vec::new();
    }
    if !range.contains(&hole) {
        return vec![range];
    }
    match range.subnets(range.prefix_len() + 1) {
        Ok(halves) => halves.flat_map(|h| subtract(h, hole)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Everything about a function's outbound requests.
#[derive(Clone, Default)]
pub struct Egress {
    pub policy: EgressPolicy,
    /// Certificate authorities trusted for HTTPS; `None` means the Mozilla roots alone.
    pub roots: Option<Arc<TrustedRoots>>,
}

/// The Mozilla roots (webpki-roots) plus extra certificate authorities, for example a
/// company CA or a local test CA.
pub struct TrustedRoots(RootCertStore);

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(String),
    #[error("{0}: {1}")]
    Unreadable(String, String),
}

impl TrustedRoots {
    /// The Mozilla roots plus every certificate in the PEM texts (named for errors).
    pub fn with_extra_pem<'a>(pems: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Self, TrustError> {
        let mut store = deno_tls::create_default_root_cert_store();
        for (name, pem) in pems {
            let mut reader = std::io::BufReader::new(pem);
            let mut added = 0;
            for cert in deno_tls::rustls_pemfile::certs(&mut reader) {
                let cert = cert.map_err(|e| TrustError::Unreadable(name.to_string(), e.to_string()))?;
                store.add(cert).map_err(|e| TrustError::Unreadable(name.to_string(), e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(TrustError::NoCertificate(name.to_string()));
            }
        }
        Ok(Self(store))
    }
}

impl RootCertStoreProvider for TrustedRoots {
    fn get_or_try_init(&self) -> Result<&RootCertStore, JsErrorBox> {
        Ok(&self.0)
    }
}

/// The `User-Agent` a function's outbound requests carry unless it sets one.
pub const USER_AGENT: &str = concat!("Tern/", env!("CARGO_PKG_VERSION"));

pub fn fetch_options(egress: &Egress) -> Options {
    let resolver = match egress.policy {
        EgressPolicy::AllowAll => deno_fetch::dns::Resolver::default(),
        _ => deno_fetch::dns::Resolver::custom(Arc::new(GuardedResolver { denied: Arc::new(egress.policy.denied()) })),
    };
    Options {
        user_agent: USER_AGENT.to_string(),
        root_cert_store_provider: egress.roots.clone().map(|r| r as Arc<dyn RootCertStoreProvider>),
        resolver,
        request_builder_hook: Some(check_each_request),
        ..Default::default()
    }
}

/// Header on a function's outbound request, from its `fetch` to deno_fetch's request
/// builder, naming the policy to check every hop against ([`EgressPolicy::header_value`]).
/// Set by `fetch` (over anything the function wrote), read and removed before sending.
pub const POLICY_HEADER: &str = "tern-egress";

impl EgressPolicy {
    /// The policy as [`POLICY_HEADER`] carries it: `*` for any destination, else the
    /// allowed ranges, comma-separated (empty for public destinations only).
    pub fn header_value(&self) -> String {
        match self {
            Self::AllowAll => "*".to_string(),
            Self::PublicOnly => String::new(),
            Self::PublicAnd(allowed) => allowed.iter().map(IpNet::to_string).collect::<Vec<_>>().join(","),
        }
    }

    /// The policy a [`POLICY_HEADER`] value names; public destinations only for anything
    /// else (a request that did not come through a function's `fetch`).
    pub fn from_header(value: Option<&str>) -> Self {
        match value {
            Some("*") => Self::AllowAll,
            Some(ranges) => {
                let allowed: Vec<IpNet> = ranges.split(',').filter_map(|r| r.trim().parse().ok()).collect();
                Self::PublicOnly.also_allowing(&allowed)
            }
            None => Self::PublicOnly,
        }
    }
}

/// deno_fetch's hook on every request it builds, redirect hops included (it follows
/// redirects in JavaScript, calling its op again): refuses a host that is a denied IP
/// literal, which the permissions' deny list misses for IPv6 ranges.
fn check_each_request(request: &mut http::Request<deno_fetch::ReqBody>) -> Result<(), JsErrorBox> {
    let header = request.headers_mut().remove(POLICY_HEADER);
    let policy = EgressPolicy::from_header(header.as_ref().and_then(|v| v.to_str().ok()));
    check_url(&policy.denied(), &request.uri().to_string()).map_err(JsErrorBox::type_error)
}

/// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address) is in `denied`.
pub fn is_denied(denied: &[IpNet], ip: std::net::IpAddr) -> bool {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    denied.iter().any(|range| range.contains(&ip))
}

fn refused(destination: &str) -> String {
    format!(
        "fetch to {destination} refused by the egress policy: loopback, private, link-local and metadata \
         addresses are not reachable from functions (allow a range in tern.toml [egress] allow)"
    )
}

/// Resolves names with the system resolver and refuses a name that resolves to a denied
/// address (a DNS name pointing inside, or rebinding to it).
#[derive(Debug)]
struct GuardedResolver {
    denied: Arc<Vec<IpNet>>,
}

impl deno_fetch::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: hyper_util::client::legacy::connect::dns::Name) -> deno_fetch::dns::Resolving {
        let denied = self.denied.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| is_denied(&denied, a.ip())) {
                let message = format!("{} ({host} resolves to {})", refused(&host), bad.ip());
                return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, message));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// An isolate's policy as [`POLICY_HEADER`] carries it, in its op state.
pub struct PolicyHeader(pub String);

/// Refuses a URL whose host is a denied IP literal (IPv6 ranges included, which the
/// permissions' deny list cannot express).
pub fn check_url(denied: &[IpNet], url: &str) -> Result<(), String> {
    let Ok(url) = deno_core::url::Url::parse(url) else { return Ok(()) };
    let ip = match url.host() {
        Some(deno_core::url::Host::Ipv4(v4)) => std::net::IpAddr::V4(v4),
        Some(deno_core::url::Host::Ipv6(v6)) => std::net::IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if is_denied(denied, ip) {
        let port = url.port_or_known_default().map(|p| format!(":{p}")).unwrap_or_default();
        let host = if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() };
        return Err(refused(&format!("{host}{port}")));
    }
    Ok(())
}

/// The permissions deno_fetch checks before it connects: every host allowed but the denied
/// ranges and names. deno_fetch checks the URL of every request (so every redirect hop)
/// and, after resolving a name, the address it connects to.
pub fn permissions(policy: &EgressPolicy) -> PermissionsContainer {
    let parser = Arc::new(RuntimePermissionDescriptorParser::new(sys_traits::impls::RealSys));
    if matches!(policy, EgressPolicy::AllowAll) {
        return PermissionsContainer::allow_all(parser);
    }
    let denied = policy.denied();
    let deny_net: Vec<String> = denied
        .iter()
        .filter(|range| matches!(range, IpNet::V4(_)))
        .map(ToString::to_string)
        .chain(
            PRIVATE_V6_ADDRESSES
                .iter()
                .filter(|a| {
                    let ip: std::net::IpAddr = a.trim_matches(['[', ']']).parse().expect("valid address");
                    is_denied(&denied, ip)
                })
                .map(|a| a.to_string()),
        )
        .chain(PRIVATE_NAMES.iter().map(|n| n.to_string()))
        .collect();
    let options = PermissionsOptions {
        allow_net: Some(Vec::new()),
        deny_net: Some(deny_net),
        prompt: false,
        ..Default::default()
    };
    match Permissions::from_options(parser.as_ref(), &options) {
        Ok(permissions) => PermissionsContainer::new(parser, permissions),
        // The ranges are ours and valid; should that ever change, refuse everything.
        Err(e) => {
            tracing::error!("egress policy could not be built ({e}); outbound requests are refused");
            PermissionsContainer::new(parser, Permissions::none_without_prompt())
        }
    }
}

/// Puts what deno_fetch and Tern's egress check read into an isolate's state: the
/// permissions for `policy` and the policy for [`POLICY_HEADER`]. Used at isolate boot, and again when a
/// function's `[egress] allow` widens the node's policy (with [`fetch_options`] as well).
pub fn put_policy(state: &mut deno_core::OpState, policy: &EgressPolicy) {
    state.put(permissions(policy));
    state.put(PolicyHeader(policy.header_value()));
}

/// The most hops a request may have made through Tern nodes before it is refused.
pub const MAX_HOPS: u32 = 16;
/// Header carrying the hop count on requests functions send (and the node reads).
pub const HOPS_HEADER: &str = "tern-hops";

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn allowing_an_address_punches_a_hole_in_its_range_and_nothing_else() {
        let denied = EgressPolicy::PublicAnd(vec![net("10.1.2.3/32")]).denied();
        assert!(!denied.iter().any(|d| d.contains(&net("10.1.2.3/32"))));
        assert!(denied.iter().any(|d| d.contains(&net("10.1.2.4/32"))));
        assert!(denied.iter().any(|d| d.contains(&net("10.200.0.0/16"))));
        assert!(denied.iter().any(|d| d.contains(&net("127.0.0.1/32"))));
        // 10.0.0.0/8 minus one address is 24 ranges; the others are untouched.
        assert_eq!(denied.len(), PRIVATE_RANGES.len() - 1 + 24);
    }

    #[test]
    fn literals_in_every_family_are_checked_against_the_ranges() {
        let denied = EgressPolicy::PublicOnly.denied();
        for url in ["http://[fd00::1]/", "http://[fe80::1]/", "http://[::ffff:10.0.0.1]/", "http://169.254.169.254/"] {
            assert!(check_url(&denied, url).is_err(), "{url}");
        }
        for url in ["http://[2606:4700::1111]/", "http://1.1.1.1/", "https://example.com/"] {
            assert!(check_url(&denied, url).is_ok(), "{url}");
        }
    }

    #[test]
    fn the_permissions_grant_public_addresses_and_deny_private_ones() {
        let mut p = permissions(&EgressPolicy::PublicOnly);
        let url = |u: &str| deno_core::url::Url::parse(u).unwrap();
        assert!(p.check_net_url(&url("http://8.8.8.8/"), "t").is_ok());
        assert!(p.check_net_url(&url("https://example.com/"), "t").is_ok());
        assert!(p.check_net_url(&url("http://10.1.2.3/"), "t").is_err());
        assert!(p.check_net_url(&url("http://[::1]:8080/"), "t").is_err());
        let mut loopback = permissions(&EgressPolicy::PublicOnly.also_allowing(&[net("127.0.0.0/8")]));
        assert!(loopback.check_net_url(&url("http://127.0.0.1:8080/"), "t").is_ok());
        assert!(loopback.check_net_url(&url("http://10.1.2.3/"), "t").is_err());
    }

    #[test]
    fn the_policy_header_round_trips_and_anything_else_means_public_only() {
        for policy in [
            EgressPolicy::AllowAll,
            EgressPolicy::PublicOnly,
            EgressPolicy::PublicAnd(vec![net("127.0.0.0/8"), net("fc00::/7")]),
        ] {
            let back = EgressPolicy::from_header(Some(&policy.header_value()));
            assert_eq!(back.denied(), policy.denied(), "{policy:?}");
        }
        let public = EgressPolicy::PublicOnly.denied();
        assert_eq!(EgressPolicy::from_header(None).denied(), public, "no header: public only");
        assert_eq!(EgressPolicy::from_header(Some("nonsense")).denied(), public, "unreadable: public only");
    }

    #[test]
    fn allowing_loopback_removes_it_whole() {
        let denied = EgressPolicy::PublicAnd(vec![net("127.0.0.0/8"), net("::1/128")]).denied();
        assert!(!denied.iter().any(|d| d.contains(&net("127.0.0.1/32")) || d.contains(&net("::1/128"))));
        assert!(denied.iter().any(|d| d.contains(&net("169.254.169.254/32"))));
    }

    #[test]
    fn extra_roots_need_a_certificate_and_say_which_file() {
        let e = TrustedRoots::with_extra_pem([("ca.pem", &b"not a certificate"[..])]).err().unwrap();
        assert_eq!(e.to_string(), "ca.pem: no PEM certificate in it");
        assert!(TrustedRoots::with_extra_pem([]).is_ok());
    }
}
