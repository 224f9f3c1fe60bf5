//! The Workers Cache API (`caches.default`, `caches.open`) through the real binary: the
//! fetch-through-cache pattern of Workers code against a counting origin, what the headers
//! keep out, what cannot be put, and functions that never see each other's entries.
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;

/// An HTTP origin on loopback answering `origin <n>` (n counts its requests), cacheable for
/// a minute; `/private` answers with `Cache-Control: no-store`.
async fn counting_origin() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    let policy = if req.uri().path() == "/private" { "no-store" } else { "max-age=60" };
                    async move {
                        let response = http::Response::builder()
                            .header("cache-control", policy)
                            .body(Full::new(Bytes::from(format!("origin {n}"))))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), hits)
}

#[tokio::test]
async fn workers_fetch_through_cache_code_hits_the_cache_after_the_first_request() {
    // The Cache API example from Workers' documentation, unchanged but for the origin.
    let (origin, hits) = counting_origin().await;
    let p = Project::with_manifest(
        &format!("name = \"through\"\nmain = \"index.js\"\n[vars]\nORIGIN = \"{origin}\"\n"),
        &[(
            "index.js",
            r#"export default {
                async fetch(request, env, ctx) {
                    const path = new URL(request.url).pathname;
                    const cacheKey = new Request(env.ORIGIN + path, request);
                    const cache = caches.default;
                    let response = await cache.match(cacheKey);
                    if (!response) {
                        response = await fetch(cacheKey);
                        response = new Response(response.body, response);
                        response.headers.append("x-served", "origin");
                        ctx.waitUntil(cache.put(cacheKey, response.clone()));
                    }
                    return response;
                },
            };"#,
        )],
    );
    let tern = Tern::dev_with(&[p.path()], &["--allow-loopback"]);
    let first = get(&tern, "through.localhost", "/page").await;
    assert_eq!((first.status, first.text.as_str(), first.header("x-served")), (200, "origin 1", Some("origin")));
    assert_eq!(first.header("cf-cache-status"), None);

    let mut second = get(&tern, "through.localhost", "/page").await;
    for _ in 0..20 {
        // The put runs in waitUntil, after the first answer went out.
        if second.header("cf-cache-status") == Some("HIT") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        second = get(&tern, "through.localhost", "/page").await;
    }
    assert_eq!((second.status, second.text.as_str()), (200, "origin 1"));
    assert_eq!(second.header("cf-cache-status"), Some("HIT"));
    assert_eq!(second.header("x-served"), Some("origin"), "stored headers come back");
    assert_eq!(second.header("cache-control"), Some("max-age=60"));
    let before = hits.load(Ordering::SeqCst);

    // A no-store answer is fetched every time.
    assert_eq!(get(&tern, "through.localhost", "/private").await.header("cf-cache-status"), None);
    assert_eq!(get(&tern, "through.localhost", "/private").await.header("cf-cache-status"), None);
    assert_eq!(hits.load(Ordering::SeqCst), before + 2);
    assert_eq!(get(&tern, "through.localhost", "/page").await.text, "origin 1");
}

const CACHE_OPS: &str = r#"export default { async fetch(request) {
    const url = new URL(request.url);
    const op = url.pathname.slice(1);
    const cache = url.searchParams.has("named") ? await caches.open("mine") : caches.default;
    const key = "https://shared.test/thing";
    try {
        if (op === "put") {
            const headers = { "cache-control": url.searchParams.get("cc") ?? "max-age=60", "x-who": url.hostname };
            if (url.searchParams.has("cookie")) headers["set-cookie"] = "a=1";
            await cache.put(key, new Response(`from ${url.hostname}`, { status: Number(url.searchParams.get("status") ?? 200), headers }));
            return new Response("put");
        }
        if (op === "post") {
            await cache.put(new Request(key, { method: "POST", body: "x" }), new Response("x"));
            return new Response("put");
        }
        if (op === "delete") return new Response(String(await cache.delete(key)));
        const hit = await cache.match(key);
        return hit ? new Response(`${hit.status} ${await hit.text()}`) : new Response("miss");
    } catch (e) {
        return new Response(`${e.name}: ${e.message}`, { status: 500 });
    }
} };"#;

#[tokio::test]
async fn functions_never_see_each_others_entries_and_named_caches_are_apart() {
    let alpha = Project::new("alpha", &[("index.js", CACHE_OPS)]);
    let beta = Project::new("beta", &[("index.js", CACHE_OPS)]);
    let tern = Tern::dev(&[alpha.path(), beta.path()]);
    assert_eq!(get(&tern, "alpha.localhost", "/put").await.text, "put");
    assert_eq!(get(&tern, "alpha.localhost", "/match").await.text, "200 from alpha.localhost");
    // The same URL in another function's cache: nothing, and its delete finds nothing.
    assert_eq!(get(&tern, "beta.localhost", "/match").await.text, "miss");
    assert_eq!(get(&tern, "beta.localhost", "/delete").await.text, "false");
    assert_eq!(get(&tern, "alpha.localhost", "/match?named").await.text, "miss");
    assert_eq!(get(&tern, "alpha.localhost", "/put?named&status=404").await.text, "put");
    assert_eq!(get(&tern, "alpha.localhost", "/match?named").await.text, "404 from alpha.localhost");
    assert_eq!(get(&tern, "alpha.localhost", "/delete").await.text, "true");
    assert_eq!(get(&tern, "alpha.localhost", "/match").await.text, "miss");
    assert_eq!(get(&tern, "alpha.localhost", "/match?named").await.text, "404 from alpha.localhost");
}

#[tokio::test]
async fn what_the_headers_keep_out_is_not_stored_and_bad_puts_say_why() {
    let p = Project::new("rules", &[("index.js", CACHE_OPS)]);
    let tern = Tern::dev(&[p.path()]);
    for kept_out in ["/put?cc=no-store", "/put?cc=private", "/put?cookie", "/put?cc=max-age%3D0", "/put?cc=&status=500"]
    {
        assert_eq!(get(&tern, "rules.localhost", kept_out).await.text, "put", "{kept_out}");
        assert_eq!(get(&tern, "rules.localhost", "/match").await.text, "miss", "{kept_out} was stored");
    }
    let partial = get(&tern, "rules.localhost", "/put?status=206").await;
    assert_eq!(partial.status, 500);
    assert!(partial.text.starts_with("TypeError: Cache.put:") && partial.text.contains("206"), "{}", partial.text);
    let post = get(&tern, "rules.localhost", "/post").await;
    assert_eq!(post.text, "TypeError: Cache.put: only GET requests can be cached, not POST");
}

#[tokio::test]
async fn match_answers_conditions_and_byte_ranges_from_a_stored_200() {
    let p = Project::new(
        "ranges",
        &[(
            "index.js",
            r#"export default { async fetch(request) {
                const key = "https://ranges.test/digits";
                if (new URL(request.url).pathname === "/put") {
                    await caches.default.put(key, new Response("0123456789", { headers: {
                        "cache-control": "max-age=60", etag: '"v1"', "last-modified": "Wed, 21 Oct 2015 07:28:00 GMT",
                    } }));
                    return new Response("put");
                }
                const hit = await caches.default.match(new Request(key, { headers: request.headers }));
                return new Response(`${hit.status} ${hit.headers.get("content-range")} ${await hit.text()}`);
            } };"#,
        )],
    );
    let tern = Tern::dev(&[p.path()]);
    assert_eq!(get(&tern, "ranges.localhost", "/put").await.text, "put");
    let client = http1();
    for (header, value, answer) in [
        ("if-none-match", "\"v1\"", "304 null "),
        ("if-none-match", "W/\"v1\", \"v0\"", "304 null "),
        ("if-none-match", "\"v2\"", "200 null 0123456789"),
        ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT", "304 null "),
        ("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT", "200 null 0123456789"),
        ("range", "bytes=2-4", "206 bytes 2-4/10 234"),
        ("range", "bytes=-3", "206 bytes 7-9/10 789"),
        ("range", "bytes=7-", "206 bytes 7-9/10 789"),
        ("range", "bytes=5-100", "206 bytes 5-9/10 56789"),
        ("range", "bytes=20-", "416 bytes */10 "),
        ("range", "bytes=1-2,4-5", "200 null 0123456789"),
    ] {
        let request = tern.request("GET", "ranges.localhost", "/").header(header, value).body(empty()).unwrap();
        let a = send(&client, request).await;
        assert_eq!(a.text, answer, "{header}: {value}");
    }
}
