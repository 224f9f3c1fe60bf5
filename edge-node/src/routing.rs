//! Which function answers a request: a pure lookup over the node's current functions.
//!
//! In order: the first `routes` pattern that matches (most specific first), then
//! `NAME.localhost` naming a function, then the fallback function (`tern dev` serves its
//! project whatever the Host). A function found is a [`Serving`]: its stable bundle and,
//! during a rollout, a candidate that [`Serving::pick`] chooses per request; routes are the
//! stable version's. A [`RouteTable`] is immutable; the node swaps whole tables.

use std::sync::Arc;

use tern_proto::Bundle;
use tern_proto::rollout::Serving;
use tern_proto::route::RouteIndex;
pub use tern_proto::route::normalize_host;

#[derive(Default)]
pub struct RouteTable {
    index: RouteIndex<Arc<Serving>>,
    fallback: Option<Arc<Serving>>,
}

impl RouteTable {
    /// A table over `functions` (no rollouts); `fallback` names the function that answers
    /// any host.
    pub fn new(functions: impl IntoIterator<Item = Arc<Bundle>>, fallback: Option<&str>) -> Self {
        Self::serving(functions.into_iter().map(Serving::from), fallback)
    }

    /// A table over functions that may be in a rollout.
    pub fn serving(functions: impl IntoIterator<Item = Serving>, fallback: Option<&str>) -> Self {
        let functions: Vec<Arc<Serving>> = functions.into_iter().map(Arc::new).collect();
        let index = RouteIndex::new(
            functions.iter().map(|s| (s.stable.name().to_string(), s.stable.manifest.routes.as_slice(), s.clone())),
        );
        let fallback = fallback.and_then(|name| index.named(name).cloned());
        Self { index, fallback }
    }

    /// The function for `host` (lower case, without port) and `path`.
    pub fn resolve(&self, host: &str, path: &str) -> Option<&Arc<Serving>> {
        self.index.resolve(host, path).or(self.fallback.as_ref())
    }

    /// Every bundle the table serves: stable versions and rollout candidates.
    pub fn functions(&self) -> impl Iterator<Item = &Arc<Bundle>> {
        self.index.values().flat_map(|s| std::iter::once(&s.stable).chain(s.candidate.as_ref().map(|(b, _)| b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::Manifest;

    fn bundle(name: &str, routes: &str) -> Arc<Bundle> {
        let toml = format!("name = \"{name}\"\nmain = \"a.js\"\nroutes = [{routes}]");
        Arc::new(Bundle::new(Manifest::parse(&toml).unwrap(), [("a.js".into(), vec![])]).unwrap())
    }

    #[test]
    fn routes_then_names_then_fallback() {
        let table = RouteTable::new(
            [bundle("api", "\"api.example.com/v1/*\""), bundle("www", "\"*.example.com/*\""), bundle("dev", "")],
            Some("dev"),
        );
        assert_eq!(table.resolve("api.example.com", "/v1/x").unwrap().stable.name(), "api");
        assert_eq!(table.resolve("api.example.com", "/v2/x").unwrap().stable.name(), "www");
        assert_eq!(table.resolve("api.localhost", "/").unwrap().stable.name(), "api");
        assert_eq!(table.resolve("other.test", "/").unwrap().stable.name(), "dev");
    }

    #[test]
    fn no_fallback_means_no_route() {
        let table = RouteTable::new([bundle("api", "")], None);
        assert!(table.resolve("nope.localhost", "/").is_none());
        assert!(table.resolve("example.com", "/").is_none());
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Hello.LOCALHOST:8787"), "hello.localhost");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1"), "127.0.0.1");
    }
}
