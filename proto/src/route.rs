//! Route patterns in the Workers style: `host[/path]`, where the host may start with `*.`
//! (or be `*`) and the path may end with `*`. `api.example.com/v1/*` matches
//! `api.example.com/v1/users`; `*.example.com/*` matches every subdomain and path.
//!
//! Matching is pure string work on an already lower-cased host without port
//! ([`normalize_host`]). A [`RouteIndex`] finds what answers a request, the same way on
//! nodes and routers: the most specific matching pattern, then `NAME.localhost`.

use std::collections::HashMap;
use std::fmt;

/// Functions by their routes and names; build it whole, then [`Self::resolve`].
#[derive(Debug, Clone)]
pub struct RouteIndex<T> {
    by_name: HashMap<String, T>,
    routes: Vec<(RoutePattern, T)>,
}

impl<T> Default for RouteIndex<T> {
    fn default() -> Self {
        Self { by_name: HashMap::new(), routes: Vec::new() }
    }
}

impl<T: Clone> RouteIndex<T> {
    /// An index over `(name, routes, value)` entries.
    pub fn new<'a>(entries: impl IntoIterator<Item = (String, &'a [RoutePattern], T)>) -> Self {
        let mut index = Self::default();
        for (name, routes, value) in entries {
            for route in routes {
                index.routes.push((route.clone(), value.clone()));
            }
            index.by_name.insert(name, value);
        }
        index.routes.sort_by_key(|(route, _)| std::cmp::Reverse(route.specificity()));
        index
    }

    /// What answers `host` (normalized) and `path`: the most specific route, then
    /// `NAME.localhost`.
    pub fn resolve(&self, host: &str, path: &str) -> Option<&T> {
        if let Some((_, value)) = self.routes.iter().find(|(r, _)| r.matches(host, path)) {
            return Some(value);
        }
        host.strip_suffix(".localhost").and_then(|name| self.by_name.get(name))
    }

    pub fn named(&self, name: &str) -> Option<&T> {
        self.by_name.get(name)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.by_name.values()
    }
}

/// The host of a request target or `Host` header: lower case, port and trailing dot removed.
pub fn normalize_host(raw: &str) -> String {
    let without_port = if raw.starts_with('[') {
        raw.split(']').next().map(|h| format!("{h}]")).unwrap_or_default()
    } else {
        raw.rsplit_once(':')
            .map_or(raw, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { raw })
            .to_string()
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// A parsed, validated route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    source: String,
    host: HostPattern,
    path: PathPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`: any subdomain of `example.com`, and `example.com` itself is not matched.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathPattern {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutePatternError {
    #[error("route {0:?} is empty; write it as host[/path], for example \"api.example.com/v1/*\"")]
    Empty(String),
    #[error("route {0:?} has a scheme; write it without http:// or https://")]
    HasScheme(String),
    #[error("route {0:?}: `*` may only start the host (`*.example.com`) or end the path (`/v1/*`)")]
    MisplacedWildcard(String),
    #[error("route {0:?}: host {1:?} is not a valid host name")]
    BadHost(String, String),
}

impl RoutePattern {
    pub fn parse(source: &str) -> Result<Self, RoutePatternError> {
        let s = source.trim();
        if s.is_empty() {
            return Err(RoutePatternError::Empty(source.to_string()));
        }
        if s.contains("://") {
            return Err(RoutePatternError::HasScheme(source.to_string()));
        }
        let (host, path) = match s.find('/') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, "/*"),
        };
        let host = host.to_ascii_lowercase();
        let host_pattern = if host == "*" {
            HostPattern::Any
        } else if let Some(rest) = host.strip_prefix("*.") {
            check_host(source, rest)?;
            HostPattern::Suffix(format!(".{rest}"))
        } else {
            check_host(source, &host)?;
            HostPattern::Exact(host)
        };
        let path_pattern = match path.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => PathPattern::Prefix(prefix.to_string()),
            None if !path.contains('*') => PathPattern::Exact(path.to_string()),
            _ => return Err(RoutePatternError::MisplacedWildcard(source.to_string())),
        };
        Ok(Self { source: s.to_string(), host: host_pattern, path: path_pattern })
    }

    /// Whether a request for `host` (lower case, no port) and `path` (no query) matches.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        };
        host_ok
            && match &self.path {
                PathPattern::Exact(p) => p == path,
                PathPattern::Prefix(p) => path.starts_with(p.as_str()),
            }
    }

    /// How specific the pattern is: longer literal parts win when several routes match.
    pub fn specificity(&self) -> (usize, usize) {
        let host = match &self.host {
            HostPattern::Any => 0,
            HostPattern::Suffix(s) => s.len(),
            HostPattern::Exact(h) => h.len() + 1_000,
        };
        let path = match &self.path {
            PathPattern::Exact(p) => p.len() + 1_000,
            PathPattern::Prefix(p) => p.len(),
        };
        (host, path)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

fn check_host(source: &str, host: &str) -> Result<(), RoutePatternError> {
    let valid = !host.is_empty()
        && host
            .split(':')
            .next()
            .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
    if host.contains('*') {
        return Err(RoutePatternError::MisplacedWildcard(source.to_string()));
    }
    if valid { Ok(()) } else { Err(RoutePatternError::BadHost(source.to_string(), host.to_string())) }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_route_matches_paths_below_it() {
        let r = RoutePattern::parse("api.example.com/v1/*").unwrap();
        assert!(r.matches("api.example.com", "/v1/users"));
        assert!(r.matches("api.example.com", "/v1/"));
        assert!(!r.matches("api.example.com", "/v2/users"));
        assert!(!r.matches("www.example.com", "/v1/users"));
    }

    #[test]
    fn host_only_route_matches_every_path() {
        let r = RoutePattern::parse("Example.COM").unwrap();
        assert!(r.matches("example.com", "/"));
        assert!(r.matches("example.com", "/a/b"));
    }

    #[test]
    fn wildcard_subdomain_does_not_match_apex() {
        let r = RoutePattern::parse("*.example.com/*").unwrap();
        assert!(r.matches("a.example.com", "/x"));
        assert!(!r.matches("example.com", "/x"));
        assert!(!r.matches("badexample.com", "/x"));
    }

    #[test]
    fn exact_path_route() {
        let r = RoutePattern::parse("example.com/health").unwrap();
        assert!(r.matches("example.com", "/health"));
        assert!(!r.matches("example.com", "/health/x"));
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        assert!(matches!(RoutePattern::parse("https://a.com/*"), Err(RoutePatternError::HasScheme(_))));
        assert!(matches!(RoutePattern::parse("a.com/*/x"), Err(RoutePatternError::MisplacedWildcard(_))));
        assert!(matches!(RoutePattern::parse("a*.com/"), Err(RoutePatternError::MisplacedWildcard(_))));
        assert!(matches!(RoutePattern::parse("a b.com/"), Err(RoutePatternError::BadHost(..))));
        assert!(matches!(RoutePattern::parse("  "), Err(RoutePatternError::Empty(_))));
    }

    #[test]
    fn more_specific_routes_rank_higher() {
        let broad = RoutePattern::parse("*.example.com/*").unwrap();
        let narrow = RoutePattern::parse("api.example.com/v1/*").unwrap();
        assert!(narrow.specificity() > broad.specificity());
    }
}
