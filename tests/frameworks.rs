//! Frameworks written for Cloudflare Workers, installed from npm, run unchanged.
//! `scripts/test.sh` installs them (`npm ci` in each fixture) before the tests run.
mod support;

use std::path::PathBuf;

use support::*;

fn installed(name: &str) -> PathBuf {
    let dir = repo_root().join("tests/functions").join(name);
    assert!(
        dir.join("node_modules").is_dir(),
        "{} has no node_modules: run `npm ci --prefix {}` (scripts/test.sh does)",
        dir.display(),
        dir.display()
    );
    dir
}

#[tokio::test]
async fn hono_runs_unchanged() {
    let tern = Tern::dev(&[&installed("hono")]);
    let client = http1();
    let a = get(&tern, "hono.localhost", "/").await;
    assert_eq!((a.status, a.text.as_str(), a.header("x-powered-by")), (200, "Hello Hono!", Some("hono-on-tern")));
    let user = get(&tern, "hono.localhost", "/api/users/7?q=x").await;
    assert_eq!(user.json(), serde_json::json!({ "id": "7", "q": "x" }));
    let cors = send(
        &client,
        tern.request("GET", "hono.localhost", "/api/users/1")
            .header("origin", "https://example.com")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(cors.header("access-control-allow-origin"), Some("https://example.com"));
    let echo = send(
        &client,
        tern.request("POST", "hono.localhost", "/api/echo")
            .header("content-type", "application/json")
            .body(body(r#"{"a":[1,2]}"#))
            .unwrap(),
    )
    .await;
    assert_eq!((echo.status, echo.json()), (201, serde_json::json!({ "got": { "a": [1, 2] } })));
    let teapot = get(&tern, "hono.localhost", "/teapot").await;
    assert_eq!((teapot.status, teapot.text.as_str()), (418, "I am a teapot"));
    assert_eq!(get(&tern, "hono.localhost", "/nope").await.status, 404);
}

#[tokio::test]
async fn itty_router_runs_unchanged() {
    let tern = Tern::dev(&[&installed("itty-router")]);
    let a = get(&tern, "itty-router.localhost", "/").await;
    // AutoRouter formats every returned value as JSON, strings included.
    assert_eq!(
        (a.status, a.text.as_str(), a.header("content-type")),
        (200, "\"Hello itty!\"", Some("application/json; charset=utf-8"))
    );
    assert_eq!(
        get(&tern, "itty-router.localhost", "/items/3?sort=asc").await.json(),
        serde_json::json!({ "id": "3", "sort": "asc" })
    );
    let created =
        send(&http1(), tern.request("POST", "itty-router.localhost", "/items").body(body(r#"{"name":"n"}"#)).unwrap())
            .await;
    assert_eq!((created.status, created.json()["created"].as_str()), (201, Some("n")));
    let fail = get(&tern, "itty-router.localhost", "/fail").await;
    assert_eq!((fail.status, fail.json()["error"].as_str()), (400, Some("bad request, on purpose")));
    assert_eq!(get(&tern, "itty-router.localhost", "/missing").await.status, 404);
}
