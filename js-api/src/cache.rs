//! The Workers Cache API's store: what `caches.default` and `caches.open(name)`
//! (`js/25_cache.js`) put and match. Responses are kept in the memory of the process running
//! the isolates, in one budget for every function (moka: least recently used out first,
//! each entry gone when its freshness ends). A function reaches only its own entries: the
//! key's function part comes from the isolate's identity, never from JS.
//!
//! What is stored and for how long follows Workers ([`freshness`]): `Cache-Control`
//! (`s-maxage` before `max-age`; `no-store`, `no-cache` and `private` keep a response out),
//! then `Expires`, then Cloudflare's default edge TTLs by status. A response with
//! `Set-Cookie` is kept out unless `Cache-Control: private=Set-Cookie`. A partial response
//! (206) or one with `Vary: *` is an error.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deno_core::convert::Uint8Array;
use deno_core::{OpState, op2};
use deno_error::JsErrorBox;

/// Default size of the store, for all functions of a process together.
pub const DEFAULT_BUDGET_BYTES: u64 = 256 << 20;

/// The store of one process (in-process isolates, or one isolate host).
pub struct ResponseCache {
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    /// The largest entry kept: an eighth of the budget.
    max_entry: usize,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    function: Arc<str>,
    cache: Box<str>,
    url: Box<str>,
}

struct Entry {
    status: u16,
    /// `name:value` lines, as the respond ops take them.
    headers: Box<str>,
    body: Box<[u8]>,
    ttl: Duration,
}

impl Entry {
    fn weight(&self, key: &Key) -> u32 {
        let bytes = self.headers.len() + self.body.len() + key.url.len() + key.cache.len() + 64;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

struct PerEntryTtl;

impl moka::Expiry<Key, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(&self, _: &Key, entry: &Arc<Entry>, _: std::time::Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

impl ResponseCache {
    pub fn new(budget_bytes: u64) -> Arc<Self> {
        let entries = moka::sync::Cache::builder()
            .max_capacity(budget_bytes)
            .weigher(|key: &Key, entry: &Arc<Entry>| entry.weight(key))
            .expire_after(PerEntryTtl)
            .build();
        Arc::new(Self { entries, max_entry: usize::try_from(budget_bytes / 8).unwrap_or(usize::MAX) })
    }

    /// A function's view of the store.
    pub fn for_function(self: &Arc<Self>, function: &str) -> FunctionCache {
        FunctionCache { store: self.clone(), function: Arc::from(function) }
    }
}

/// One function's entries in the process's store; in the isolate's op state.
pub struct FunctionCache {
    store: Arc<ResponseCache>,
    function: Arc<str>,
}

impl FunctionCache {
    fn key(&self, cache: &str, url: &str) -> Key {
        Key { function: self.function.clone(), cache: cache.into(), url: url.into() }
    }

    /// Stores a response if Workers would (see [`freshness`]); whether it was stored.
    fn put(&self, cache: &str, url: &str, status: u16, headers: &str, body: &[u8]) -> Result<bool, String> {
        let lines: Vec<(&str, &str)> = headers.split('\n').filter_map(|l| l.split_once(':')).collect();
        let Some(ttl) = freshness(status, &lines, SystemTime::now())? else {
            self.store.entries.invalidate(&self.key(cache, url));
            return Ok(false);
        };
        if body.len() > self.store.max_entry {
            return Err(format!(
                "a response body of {} bytes is over the cache's limit of {} bytes per entry",
                body.len(),
                self.store.max_entry
            ));
        }
        let entry = Entry { status, headers: headers.into(), body: body.into(), ttl };
        self.store.entries.insert(self.key(cache, url), Arc::new(entry));
        Ok(true)
    }

    fn get(&self, cache: &str, url: &str) -> Option<Arc<Entry>> {
        self.store.entries.get(&self.key(cache, url))
    }

    fn delete(&self, cache: &str, url: &str) -> bool {
        self.store.entries.remove(&self.key(cache, url)).is_some()
    }
}

/// How long Workers' cache keeps a response with `status` and `headers` (names in any
/// case), put at `now`: `None` when it is not kept; an error for what cannot be put.
pub fn freshness(status: u16, headers: &[(&str, &str)], now: SystemTime) -> Result<Option<Duration>, String> {
    let all =
        |name: &'static str| headers.iter().filter(move |(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| *v);
    if status == 206 {
        return Err("a partial response (206) cannot be put in the cache".into());
    }
    if all("vary").flat_map(|v| v.split(',')).any(|v| v.trim() == "*") {
        return Err("a response with `Vary: *` cannot be put in the cache".into());
    }
    let directives: Vec<(String, Option<String>)> = all("cache-control")
        .flat_map(|v| v.split(','))
        .filter_map(|d| {
            let (name, value) = match d.split_once('=') {
                Some((n, v)) => (n, Some(v.trim().trim_matches('"').to_ascii_lowercase())),
                None => (d, None),
            };
            let name = name.trim().to_ascii_lowercase();
            (!name.is_empty()).then_some((name, value))
        })
        .collect();
    let has = |name: &str| directives.iter().any(|(n, v)| n == name && v.is_none());
    let seconds = |name: &str| directives.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref()?.parse().ok());
    let cookie_allowed = directives
        .iter()
        .any(|(n, v)| n == "private" && v.as_deref().is_some_and(|v| v.split(',').any(|f| f.trim() == "set-cookie")));
    if all("set-cookie").next().is_some() && !cookie_allowed {
        return Ok(None);
    }
    if has("no-store") || has("no-cache") || has("private") {
        return Ok(None);
    }
    let ttl = if let Some(s) = seconds("s-maxage").or_else(|| seconds("max-age")) {
        Duration::from_secs(s)
    } else if let Some(expires) = all("expires").next() {
        let Ok(at) = httpdate::parse_http_date(expires.trim()) else {
            return Ok(None);
        };
        at.duration_since(now).unwrap_or_default()
    } else {
        match status {
            200 | 301 => Duration::from_secs(120 * 60),
            302 | 303 => Duration::from_secs(20 * 60),
            404 | 410 => Duration::from_secs(3 * 60),
            _ => Duration::ZERO,
        }
    };
    Ok((!ttl.is_zero()).then_some(ttl))
}

/// `cache.put`: stores the response (or drops what was there when it is not to be kept).
#[op2(fast)]
pub fn op_tern_cache_put(
    state: &mut OpState,
    #[string] cache: &str,
    #[string] url: &str,
    status: u16,
    #[string] headers: &str,
    #[buffer] body: &[u8],
) -> Result<bool, JsErrorBox> {
    let Some(functions) = state.try_borrow::<FunctionCache>() else {
        return Err(JsErrorBox::type_error("the Cache API is not available outside a function"));
    };
    functions.put(cache, url, status, headers, body).map_err(|e| JsErrorBox::type_error(format!("Cache.put: {e}")))
}

/// `cache.match`: `[status, headers, body]` of the stored response, or null.
#[op2]
pub fn op_tern_cache_match(
    state: &mut OpState,
    #[string] cache: &str,
    #[string] url: &str,
) -> Option<(u16, String, Uint8Array)> {
    let entry = state.try_borrow::<FunctionCache>()?.get(cache, url)?;
    Some((entry.status, entry.headers.to_string(), Uint8Array::from(entry.body.to_vec())))
}

/// `cache.delete`: whether there was an entry.
#[op2(fast)]
pub fn op_tern_cache_delete(state: &mut OpState, #[string] cache: &str, #[string] url: &str) -> bool {
    state.try_borrow::<FunctionCache>().is_some_and(|f| f.delete(cache, url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl(status: u16, headers: &[(&str, &str)]) -> Option<Duration> {
        freshness(status, headers, SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)).unwrap()
    }

    #[test]
    fn cache_control_decides_before_expires_and_status_defaults() {
        assert_eq!(ttl(200, &[("Cache-Control", "public, max-age=60")]), Some(Duration::from_secs(60)));
        assert_eq!(ttl(200, &[("cache-control", "max-age=60, s-maxage=5")]), Some(Duration::from_secs(5)));
        assert_eq!(ttl(200, &[("cache-control", "max-age=0")]), None);
        for kept_out in ["no-store", "no-cache", "private", "max-age=60, no-store"] {
            assert_eq!(ttl(200, &[("cache-control", kept_out)]), None, "{kept_out}");
        }
        // Expires: 2023-11-14T22:13:50Z is 30 s after the clock above.
        assert_eq!(ttl(200, &[("expires", "Tue, 14 Nov 2023 22:13:50 GMT")]), Some(Duration::from_secs(30)));
        assert_eq!(ttl(200, &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]), None);
        assert_eq!(ttl(200, &[("expires", "not a date")]), None);
        assert_eq!(ttl(200, &[]), Some(Duration::from_secs(7200)));
        assert_eq!(ttl(302, &[]), Some(Duration::from_secs(1200)));
        assert_eq!(ttl(404, &[]), Some(Duration::from_secs(180)));
        assert_eq!(ttl(500, &[]), None);
        assert_eq!(ttl(500, &[("cache-control", "max-age=10")]), Some(Duration::from_secs(10)));
    }

    #[test]
    fn set_cookie_keeps_a_response_out_unless_private_names_it() {
        assert_eq!(ttl(200, &[("set-cookie", "a=1"), ("cache-control", "max-age=60")]), None);
        let allowed = [("set-cookie", "a=1"), ("cache-control", "max-age=60, private=\"Set-Cookie\"")];
        assert_eq!(ttl(200, &allowed), Some(Duration::from_secs(60)));
    }

    #[test]
    fn partial_and_vary_star_responses_cannot_be_put() {
        let now = SystemTime::now();
        assert!(freshness(206, &[], now).unwrap_err().contains("206"));
        assert!(freshness(200, &[("vary", "accept, *")], now).unwrap_err().contains("Vary"));
        assert_eq!(freshness(200, &[("vary", "accept-encoding")], now).unwrap(), Some(Duration::from_secs(7200)));
    }

    #[test]
    fn functions_see_only_their_own_entries() {
        let store = ResponseCache::new(1 << 20);
        let (alpha, beta) = (store.for_function("alpha"), store.for_function("beta"));
        assert!(alpha.put("default", "https://x.test/", 200, "x-a:1", b"from alpha").unwrap());
        assert_eq!(&*alpha.get("default", "https://x.test/").unwrap().body, b"from alpha");
        assert!(beta.get("default", "https://x.test/").is_none());
        assert!(alpha.get("other", "https://x.test/").is_none(), "named caches are apart");
        assert!(!beta.delete("default", "https://x.test/"));
        assert!(alpha.delete("default", "https://x.test/"));
        assert!(alpha.get("default", "https://x.test/").is_none());
    }

    #[test]
    fn a_response_not_to_be_kept_replaces_what_was_there() {
        let store = ResponseCache::new(1 << 20);
        let f = store.for_function("f");
        assert!(f.put("default", "https://x.test/", 200, "", b"old").unwrap());
        assert!(!f.put("default", "https://x.test/", 200, "cache-control:no-store", b"new").unwrap());
        assert!(f.get("default", "https://x.test/").is_none());
    }

    #[test]
    fn an_entry_over_an_eighth_of_the_budget_is_refused() {
        let store = ResponseCache::new(8 * 1024);
        let e = store.for_function("f").put("default", "https://x.test/", 200, "", &[0; 2048]).unwrap_err();
        assert!(e.contains("2048 bytes") && e.contains("1024"), "{e}");
    }
}
