//! Every example under `examples/` runs and does what its comment says, through the real
//! binary. The proxy example is pointed at an upstream server this test starts on loopback.
mod support;

use std::convert::Infallible;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;

fn example(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

fn all_examples() -> Vec<PathBuf> {
    ["hello", "json-api", "streaming", "hmac-token", "ab-test", "wasm"].iter().map(|n| example(n)).collect()
}

fn start(paths: &[PathBuf]) -> Tern {
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    Tern::dev(&refs)
}

#[tokio::test]
async fn hello_says_hello() {
    let tern = start(&all_examples());
    let a = get(&tern, "hello.localhost", "/").await;
    assert_eq!((a.status, a.text.as_str(), a.header("x-hello")), (200, "hello", Some("world")));
}

#[tokio::test]
async fn json_api_routes_with_url_pattern() {
    let tern = start(&all_examples());
    let client = http1();
    // Reached through its route pattern as well as its name.
    assert_eq!(get(&tern, "api.example.com", "/items/1").await.json()["name"], "first item");
    let created = send(
        &client,
        tern.request("POST", "json-api.localhost", "/items")
            .header("content-type", "application/json")
            .body(body(r#"{"name":"second"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json()["id"].as_str().unwrap().to_string();
    assert_eq!(created.header("location"), Some(format!("/items/{id}").as_str()));
    assert_eq!(get(&tern, "json-api.localhost", "/items").await.json().as_array().unwrap().len(), 2);
    let bad = send(&client, tern.request("POST", "json-api.localhost", "/items").body(body("{")).unwrap()).await;
    assert_eq!(bad.status, 400);
    let invalid = send(&client, tern.request("POST", "json-api.localhost", "/items").body(body("{}")).unwrap()).await;
    assert_eq!(invalid.status, 422);
    let deleted =
        send(&client, tern.request("DELETE", "json-api.localhost", &format!("/items/{id}")).body(empty()).unwrap())
            .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(get(&tern, "json-api.localhost", &format!("/items/{id}")).await.status, 404);
    assert_eq!(get(&tern, "json-api.localhost", "/nope").await.json()["error"], "no route for GET /nope");
}

#[tokio::test]
async fn streaming_sends_each_event_as_it_happens() {
    let tern = start(&all_examples());
    let response = http1()
        .request(tern.request("GET", "streaming.localhost", "/?count=3&interval=50").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut events = Vec::new();
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap() {
        if let Ok(data) = frame.unwrap().into_data() {
            events.push(String::from_utf8(data.to_vec()).unwrap());
        }
    }
    // Each event arrived as its own chunk: nothing was buffered until the end.
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2], "id: 3\ndata: tick 3 of 3\n\n");
}

#[tokio::test]
async fn hmac_token_signs_and_verifies() {
    let tern = start(&all_examples());
    let client = http1();
    let token =
        get(&tern, "hmac-token.localhost", "/sign?sub=alice").await.json()["token"].as_str().unwrap().to_string();
    let ok = send(
        &client,
        tern.request("GET", "hmac-token.localhost", "/me")
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!((ok.status, ok.json()["hello"].as_str()), (200, Some("alice")));
    let tampered = format!("{}x", token);
    let bad = send(
        &client,
        tern.request("GET", "hmac-token.localhost", "/me")
            .header("authorization", format!("Bearer {tampered}"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status, 401);
    assert_eq!(get(&tern, "hmac-token.localhost", "/me").await.json()["error"], "missing bearer token");
    let junk = send(
        &client,
        tern.request("GET", "hmac-token.localhost", "/me").header("authorization", "Bearer a.b").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(junk.status, 401);
}

#[tokio::test]
async fn ab_test_assigns_remembers_and_can_be_forced() {
    let tern = start(&all_examples());
    let client = http1();
    let ask = |headers: &[(&str, &str)]| {
        let mut req = tern.request("GET", "ab-test.localhost", "/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(&client, req.body(empty()).unwrap())
    };
    let first = ask(&[("x-client-id", "user-17")]).await;
    let variant = first.header("x-variant").unwrap().to_string();
    assert!(first.header("set-cookie").unwrap().starts_with(&format!("ab={variant};")));
    // Same client id, same variant (sticky without a cookie too).
    assert_eq!(ask(&[("x-client-id", "user-17")]).await.header("x-variant"), Some(variant.as_str()));
    let remembered = ask(&[("cookie", "theme=dark; ab=B")]).await;
    assert_eq!((remembered.header("x-variant"), remembered.header("set-cookie")), (Some("B"), None));
    assert_eq!(ask(&[("cookie", "ab=B"), ("x-ab-variant", "A")]).await.header("x-variant"), Some("A"));
    assert!(ask(&[("x-ab-variant", "B")]).await.text.contains("one millisecond"));
    // Both variants occur across clients.
    let mut seen = std::collections::HashSet::new();
    for i in 0..40 {
        seen.insert(ask(&[("x-client-id", &format!("client-{i}"))]).await.header("x-variant").unwrap().to_string());
    }
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn wasm_module_is_imported_and_called() {
    let tern = start(&all_examples());
    let a = get(&tern, "wasm.localhost", "/?a=2&b=40").await;
    assert_eq!(a.json(), serde_json::json!({ "a": 2, "b": 40, "sum": 42 }));
    assert_eq!(get(&tern, "wasm.localhost", "/?a=x").await.status, 400);
}

/// An upstream that echoes what it received.
async fn upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    let echo = serde_json::json!({
                        "method": parts.method.as_str(),
                        "path": parts.uri.path_and_query().unwrap().as_str(),
                        "forwarded_host": parts.headers.get("x-forwarded-host").and_then(|v| v.to_str().ok()),
                        "body": String::from_utf8_lossy(&body),
                    });
                    let response = http::Response::builder()
                        .header("x-upstream", "yes")
                        .body(Full::new(Bytes::from(echo.to_string())))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn proxy_forwards_to_its_upstream_with_fetch() {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    for file in ["index.js", "tern.toml"] {
        let text = std::fs::read_to_string(example("proxy").join(file)).unwrap();
        let text = text.replace("https://example.com", &format!("http://{upstream}"));
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    // The upstream is on loopback, which functions reach only with --allow-loopback.
    let tern = Tern::dev_with(&[dir.path()], &["--allow-loopback"]);
    let a = send(&http1(), tern.request("POST", "proxy.localhost", "/a/b?c=d").body(body("payload")).unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!((a.header("x-upstream"), a.header("x-proxied-by")), (Some("yes"), Some("tern")));
    let echo = a.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/a/b?c=d");
    assert_eq!(echo["body"], "payload");
    assert_eq!(echo["forwarded_host"], "proxy.localhost");
}

#[tokio::test]
async fn proxy_reports_an_unreachable_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for file in ["index.js", "tern.toml"] {
        let text = std::fs::read_to_string(example("proxy").join(file)).unwrap();
        std::fs::write(dir.path().join(file), text.replace("https://example.com", &format!("http://{closed}")))
            .unwrap();
    }
    let tern = Tern::dev_with(&[dir.path()], &["--allow-loopback"]);
    let a = get(&tern, "proxy.localhost", "/").await;
    assert_eq!(a.status, 502);
    assert!(a.text.contains("unreachable"), "{}", a.text);
}
