//! The Workers handler protocol through real HTTP: both handler forms, env, waitUntil,
//! module imports, routing by Host and routes, bodies streaming both ways, HTTP/2, and many
//! concurrent requests into one isolate.
mod support;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use support::*;
use tokio::sync::mpsc;

#[tokio::test]
async fn module_form_gets_request_env_and_ctx() {
    let p = Project::with_manifest(
        "name = \"mod\"\nmain = \"index.js\"\n[vars]\nGREETING = \"hi\"\nLIMIT = 3\n",
        &[(
            "index.js",
            r#"export default {
                async fetch(request, env, ctx) {
                    return Response.json({
                        method: request.method, url: request.url, ua: request.headers.get("user-agent"),
                        env, waitUntil: typeof ctx.waitUntil,
                    });
                },
            };"#,
        )],
    );
    let tern = Tern::dev(&[p.path()]);
    let req =
        tern.request("GET", "mod.localhost", "/a/b?c=d").header("user-agent", "test-agent").body(empty()).unwrap();
    let a = send(&http1(), req).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let j = a.json();
    assert_eq!(j["method"], "GET");
    assert_eq!(j["url"], "http://mod.localhost/a/b?c=d");
    assert_eq!(j["ua"], "test-agent");
    assert_eq!(j["env"], serde_json::json!({ "GREETING": "hi", "LIMIT": 3 }));
    assert_eq!(j["waitUntil"], "function");
}

#[tokio::test]
async fn request_headers_reach_the_function_as_byte_strings_combined_and_in_order() {
    // They cross into the isolate as one string of lines, split only when read.
    let p = Project::new(
        "reqheads",
        &[(
            "index.js",
            r#"export default { fetch(request) {
                const latin = request.headers.get("x-latin");
                return Response.json({
                    all: [...request.headers].filter(([name]) => name.startsWith("x-")),
                    latinCodes: [...latin].map((c) => c.charCodeAt(0)),
                });
            } };"#,
        )],
    );
    let tern = Tern::dev(&[p.path()]);
    let request = tern
        .request("GET", "reqheads.localhost", "/")
        .header("x-multi", "one")
        .header("x-colon", "a:b: c")
        .header("x-multi", "two")
        .header("x-latin", http::HeaderValue::from_bytes(b"caf\xe9").unwrap())
        .header("x-empty", "")
        .body(empty())
        .unwrap();
    let a = send(&http1(), request).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let j = a.json();
    assert_eq!(
        j["all"],
        serde_json::json!([["x-colon", "a:b: c"], ["x-empty", ""], ["x-latin", "caf\u{e9}"], ["x-multi", "one, two"]])
    );
    assert_eq!(j["latinCodes"], serde_json::json!([99, 97, 102, 0xe9]));
}

#[tokio::test]
async fn response_headers_cross_as_byte_strings_in_order_and_repeated() {
    // Headers values are ByteStrings: U+00E9 goes out as the single byte 0xE9, as in Workers.
    let p = Project::new(
        "heads",
        &[(
            "index.js",
            r#"export default { fetch() {
                const h = new Headers({ "x-latin": "caf\u00e9", "x-colon": "a:b: c" });
                h.append("set-cookie", "a=1");
                h.append("set-cookie", "b=2");
                return new Response("ok", { headers: h });
            } };"#,
        )],
    );
    let tern = Tern::dev(&[p.path()]);
    let a = get(&tern, "heads.localhost", "/").await;
    assert_eq!((a.status, a.text.as_str()), (200, "ok"));
    assert_eq!(a.headers.get("x-latin").map(|v| v.as_bytes()), Some(&b"caf\xe9"[..]));
    assert_eq!(a.header("x-colon"), Some("a:b: c"));
    let cookies: Vec<_> = a.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
}

#[tokio::test]
async fn service_worker_form_answers_through_respond_with() {
    let p = Project::new(
        "sw",
        &[(
            "index.js",
            r#"addEventListener("fetch", (event) => {
                event.respondWith(new Response("from sw " + new URL(event.request.url).pathname, { status: 202 }));
            });"#,
        )],
    );
    let tern = Tern::dev(&[p.path()]);
    let a = get(&tern, "sw.localhost", "/x").await;
    assert_eq!((a.status, a.text.as_str()), (202, "from sw /x"));
}

#[tokio::test]
async fn wait_until_work_runs_after_the_response_is_sent() {
    let p = Project::new(
        "later",
        &[(
            "index.js",
            r#"let done = 0;
            export default {
                fetch(request, env, ctx) {
                    if (new URL(request.url).pathname === "/count") return new Response(String(done));
                    ctx.waitUntil(new Promise((r) => setTimeout(r, 50)).then(() => { done++; console.log("waitUntil finished"); }));
                    return new Response("sent");
                },
            };"#,
        )],
    );
    let tern = Tern::dev(&[p.path()]);
    let a = get(&tern, "later.localhost", "/").await;
    assert_eq!(a.text, "sent");
    assert!(tern.wait_for_output("waitUntil finished").await, "{}", tern.output());
    assert_eq!(get(&tern, "later.localhost", "/count").await.text, "1");
}

#[tokio::test]
async fn cloudflare_workers_env_and_wait_until_are_importable_anywhere() {
    // `import { env } from "cloudflare:workers"` works at a module's top level, in any module,
    // and is the very object the handler receives.
    let p = Project::with_manifest(
        "name = \"cfenv\"\nmain = \"index.js\"\n[vars]\nGREETING = \"hi\"\n",
        &[
            ("config.js", r#"import { env } from "cloudflare:workers"; export const atTop = env.GREETING;"#),
            (
                "index.js",
                r#"import { env, waitUntil } from "cloudflare:workers";
                import { atTop } from "./config.js";
                let background = 0;
                export default {
                    async fetch(request, handlerEnv) {
                        if (new URL(request.url).pathname === "/later") return new Response(String(background));
                        waitUntil(new Promise((r) => setTimeout(r, 20)).then(() => { background++; console.log("imported waitUntil ran"); }));
                        const dynamic = await import("cloudflare:workers");
                        return Response.json({ atTop, same: env === handlerEnv, dynamic: dynamic.env === env, env });
                    },
                };"#,
            ),
        ],
    );
    let tern = Tern::dev(&[p.path()]);
    let a = get(&tern, "cfenv.localhost", "/").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.json(),
        serde_json::json!({ "atTop": "hi", "same": true, "dynamic": true, "env": { "GREETING": "hi" } })
    );
    assert!(tern.wait_for_output("imported waitUntil ran").await, "{}", tern.output());
    assert_eq!(get(&tern, "cfenv.localhost", "/later").await.text, "1");
}

#[tokio::test]
async fn a_worker_entrypoint_class_is_served_one_instance_per_request() {
    // Beside it the module declares a Durable Object class: it loads, though Tern runs none.
    let p = Project::with_manifest(
        "name = \"entry\"\nmain = \"index.js\"\n[vars]\nGREETING = \"hi\"\n",
        &[(
            "index.js",
            r#"import { WorkerEntrypoint, DurableObject } from "cloudflare:workers";
            export class Counter extends DurableObject {}
            export default class Api extends WorkerEntrypoint {
                calls = 0;
                async fetch(request) {
                    this.calls++;
                    return Response.json({
                        path: new URL(request.url).pathname, calls: this.calls,
                        greeting: this.env.GREETING, waitUntil: typeof this.ctx.waitUntil,
                    });
                }
            }"#,
        )],
    );
    let tern = Tern::dev(&[p.path()]);
    for path in ["/a", "/b"] {
        let a = get(&tern, "entry.localhost", path).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(
            a.json(),
            serde_json::json!({ "path": path, "calls": 1, "greeting": "hi", "waitUntil": "function" })
        );
    }
}

#[tokio::test]
async fn default_exports_that_tern_cannot_serve_say_what_to_export() {
    let f = |name: &str, code: &str| Project::new(name, &[("index.js", code)]);
    let projects = [
        f(
            "durable",
            r#"import { DurableObject } from "cloudflare:workers"; export default class extends DurableObject {}"#,
        ),
        f(
            "no-fetch",
            r#"import { WorkerEntrypoint } from "cloudflare:workers"; export default class Quiet extends WorkerEntrypoint {}"#,
        ),
        f("bare-function", r#"export default function (request) { return new Response("x"); }"#),
        f(
            "sockets",
            r#"import { connect } from "cloudflare:sockets"; export default { fetch: () => new Response("x") };"#,
        ),
    ];
    let paths: Vec<_> = projects.iter().map(|p| p.path()).collect();
    let tern = Tern::dev(&paths);
    for (name, detail) in [
        ("durable", "extends DurableObject, which Tern does not run"),
        ("no-fetch", "class Quiet extends WorkerEntrypoint) has no fetch() method"),
        ("bare-function", "export a class extending WorkerEntrypoint"),
        ("sockets", "provides only \"cloudflare:workers\""),
    ] {
        let a = get(&tern, &format!("{name}.localhost"), "/").await;
        assert_eq!((a.status, a.header("tern-error")), (500, Some("load_failed")), "{name}: {}", a.text);
        assert!(a.text.contains(detail), "{name}: body lacks {detail:?}: {}", a.text);
    }
}

#[tokio::test]
async fn modules_import_js_json_text_and_wasm_from_the_project() {
    // (module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))
    let wasm: &[u8] = &[
        0, 97, 115, 109, 1, 0, 0, 0, 1, 7, 1, 96, 2, 127, 127, 1, 127, 3, 2, 1, 0, 7, 7, 1, 3, 97, 100, 100, 0, 0, 10,
        9, 1, 7, 0, 32, 0, 32, 1, 106, 11,
    ];
    let p = Project::new(
        "imports",
        &[
            (
                "index.js",
                r#"import { greet } from "./lib/greet.js";
                import config from "./config.json";
                import raw from "./config.json" with { type: "json" };
                import page from "./page.html";
                import add from "./add.wasm";
                export default {
                    async fetch() {
                        const { exports } = await WebAssembly.instantiate(add);
                        return Response.json({ greet: greet("x"), config, raw, page, sum: exports.add(2, 40) });
                    },
                };"#,
            ),
            ("lib/greet.js", r#"import { prefix } from "../prefix.js"; export const greet = (n) => prefix + n;"#),
            ("prefix.js", r#"export const prefix = "hello ";"#),
            ("config.json", r#"{ "level": 3 }"#),
            ("page.html", "<p>hi</p>\n"),
        ],
    );
    p.write("add.wasm", wasm);
    let tern = Tern::dev(&[p.path()]);
    let a = get(&tern, "imports.localhost", "/").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.json(),
        serde_json::json!({ "greet": "hello x", "config": { "level": 3 }, "raw": { "level": 3 }, "page": "<p>hi</p>\n", "sum": 42 })
    );
}

#[tokio::test]
async fn host_names_and_route_patterns_pick_the_function() {
    let a = Project::with_manifest(
        "name = \"api\"\nmain = \"index.js\"\nroutes = [\"api.example.com/v1/*\"]\n",
        &[("index.js", r#"export default { fetch: () => new Response("api") };"#)],
    );
    let b = Project::with_manifest(
        "name = \"site\"\nmain = \"index.js\"\nroutes = [\"*.example.com/*\"]\n",
        &[("index.js", r#"export default { fetch: () => new Response("site") };"#)],
    );
    let tern = Tern::dev(&[a.path(), b.path()]);
    assert_eq!(get(&tern, "api.localhost", "/").await.text, "api");
    assert_eq!(get(&tern, "site.localhost:1234", "/").await.text, "site");
    assert_eq!(get(&tern, "api.example.com", "/v1/users").await.text, "api");
    assert_eq!(get(&tern, "api.example.com", "/v2/users").await.text, "site");
    assert_eq!(get(&tern, "www.example.com", "/").await.text, "site");
    let none = get(&tern, "example.org", "/").await;
    assert_eq!((none.status, none.header("tern-error")), (404, Some("no_route")));
}

const STREAMING: &str = r#"
let release;
const released = new Promise((r) => { release = r; });
export default {
    async fetch(request) {
        const path = new URL(request.url).pathname;
        if (path === "/release") { release(); return new Response("released"); }
        if (path === "/stream-out") {
            // The first chunk must reach the client while the function is still waiting.
            const body = new ReadableStream({
                async start(c) {
                    c.enqueue(new TextEncoder().encode("first;"));
                    await released;
                    c.enqueue(new TextEncoder().encode("second"));
                    c.close();
                },
            });
            return new Response(body, { headers: { "content-type": "text/plain" } });
        }
        if (path === "/first-chunk") {
            // Answers after reading only the first chunk of a body that is still being sent.
            const reader = request.body.getReader();
            const { value } = await reader.read();
            return new Response("got " + new TextDecoder().decode(value));
        }
        if (path === "/echo") {
            // Echoes the request body chunk by chunk as it arrives.
            return new Response(request.body.pipeThrough(new TransformStream()));
        }
        if (path === "/count") {
            let n = 0;
            for await (const chunk of request.body) n += chunk.length;
            return new Response(String(n));
        }
        return new Response("?", { status: 400 });
    },
};"#;

fn streaming_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let stream =
        tokio_stream_from(rx).map(|b| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(b)));
    (tx, BodyExt::boxed(StreamBody::new(stream)))
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn response_body_streams_before_the_function_finishes() {
    let p = Project::new("streaming", &[("index.js", STREAMING)]);
    let tern = Tern::dev(&[p.path()]);
    let client = http1();
    let response =
        client.request(tern.request("GET", "streaming.localhost", "/stream-out").body(empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame()).await.expect("first chunk in time").unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first;");
    // Only now let the function produce the rest.
    assert_eq!(get(&tern, "streaming.localhost", "/release").await.text, "released");
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
}

#[tokio::test]
async fn request_body_streams_into_the_function() {
    let p = Project::new("streaming", &[("index.js", STREAMING)]);
    let tern = Tern::dev(&[p.path()]);
    let (tx, body) = streaming_body();
    tx.send(Bytes::from_static(b"alpha")).await.unwrap();
    // The rest of the body is never sent until the answer arrives: nothing may wait for it.
    let req = tern.request("POST", "streaming.localhost", "/first-chunk").body(body).unwrap();
    let response = tokio::time::timeout(PATIENCE, http2().request(req)).await.expect("answer before body end").unwrap();
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, "got alpha");
    drop(tx);
}

#[tokio::test]
async fn bodies_stream_both_ways_at_once_over_http2() {
    let p = Project::new("streaming", &[("index.js", STREAMING)]);
    let tern = Tern::dev(&[p.path()]);
    let (tx, body) = streaming_body();
    let req = tern.request("POST", "streaming.localhost", "/echo").body(body).unwrap();
    tx.send(Bytes::from_static(b"ping-1")).await.unwrap();
    let response = tokio::time::timeout(PATIENCE, http2().request(req)).await.unwrap().unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let mut echo = response.into_body();
    for round in 1..=3 {
        let frame = tokio::time::timeout(PATIENCE, echo.frame()).await.expect("echo in time").unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("ping-{round}"));
        if round < 3 {
            tx.send(Bytes::from(format!("ping-{}", round + 1))).await.unwrap();
        }
    }
    drop(tx);
    assert!(echo.collect().await.unwrap().to_bytes().is_empty());
}

#[tokio::test]
async fn large_uploads_are_read_in_chunks() {
    let p = Project::new("streaming", &[("index.js", STREAMING)]);
    let tern = Tern::dev(&[p.path()]);
    let (tx, body) = streaming_body();
    let req = tern.request("POST", "streaming.localhost", "/count").body(body).unwrap();
    let sender = tokio::spawn(async move {
        for _ in 0..64 {
            tx.send(Bytes::from(vec![7u8; 64 * 1024])).await.unwrap();
        }
    });
    let a = send(&http1(), req).await;
    sender.await.unwrap();
    assert_eq!(a.text, (64 * 64 * 1024).to_string());
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let tern = Tern::dev(&[&repo_root().join("examples/hello")]);
    let a = send(&http2(), tern.request("GET", "hello.localhost", "/").body(empty()).unwrap()).await;
    assert_eq!(a.version, http::Version::HTTP_2);
    assert_eq!((a.status, a.text.as_str(), a.header("x-hello")), (200, "hello", Some("world")));
}

#[tokio::test]
async fn two_hundred_concurrent_requests_interleave_in_one_isolate() {
    let p = Project::new(
        "concurrent",
        &[(
            "index.js",
            r#"let inFlight = 0, peak = 0;
            export default {
                async fetch(request) {
                    inFlight++; peak = Math.max(peak, inFlight);
                    await new Promise((r) => setTimeout(r, 20));
                    inFlight--;
                    return Response.json({ id: new URL(request.url).searchParams.get("id"), peak });
                },
            };"#,
        )],
    );
    let tern = Tern::dev(&[p.path()]);
    let client = http1();
    let mut tasks = Vec::new();
    for id in 0..200 {
        let client = client.clone();
        let req = tern.request("GET", "concurrent.localhost", &format!("/?id={id}")).body(empty()).unwrap();
        tasks.push(tokio::spawn(async move { send(&client, req).await }));
    }
    let mut peak = 0;
    for (id, task) in tasks.into_iter().enumerate() {
        let a = task.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text);
        let j = a.json();
        assert_eq!(j["id"], id.to_string());
        peak = peak.max(j["peak"].as_u64().unwrap());
    }
    // Requests overlapped inside the one isolate rather than queueing one by one.
    assert!(peak > 1, "peak concurrency inside the isolate was {peak}");
}

#[tokio::test]
async fn bug_a_client_cannot_forge_request_cf_or_the_routers_headers() {
    let p = Project::new(
        "cf",
        &[(
            "index.js",
            r#"export default { fetch(request) {
                return Response.json({ cf: request.cf, frozen: Object.isFrozen(request.cf),
                    header: request.headers.get("tern-cf"), ip: request.headers.get("cf-connecting-ip") });
            } };"#,
        )],
    );
    let tern = Tern::dev(&[p.path()]);
    let req = tern
        .request("GET", "cf.localhost", "/")
        .header("tern-cf", r#"{"country":"XX"}"#)
        .header("tern-connecting-ip", "203.0.113.9")
        .body(empty())
        .unwrap();
    let a = send(&http1(), req).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let j = a.json();
    assert_eq!(j["cf"], serde_json::json!({}), "tern dev trusts no router");
    assert_eq!(j["frozen"], true);
    assert_eq!(j["header"], serde_json::Value::Null);
    assert_eq!(j["ip"], "127.0.0.1");
}

#[tokio::test]
async fn bug_a_response_stream_left_open_ended_cleanly_when_its_isolate_ended() {
    // A function that sends part of a streamed body and never closes the stream: once its
    // isolate ended (here evicted after its idle TTL; also on a kill while the stream's
    // buffer was full), dropping the stream ended the body as if it were complete, and the
    // client took a truncated body for the whole one. It must be cut off instead.
    let p = Project::with_manifest(
        "name = \"open\"\nmain = \"index.js\"\n[limits]\nwall_ms = 600000\n",
        &[(
            "index.js",
            "export default { fetch() { return new Response(new ReadableStream({ start(c) { \
             c.enqueue(new TextEncoder().encode('part;')); } })); } };",
        )],
    );
    let tern = Tern::dev_with(&[p.path()], &["--isolate-idle-ttl", "1s"]);
    let response = http1().request(tern.request("GET", "open.localhost", "/").body(empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame()).await.expect("first chunk in time").unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "part;");
    let rest = tokio::time::timeout(PATIENCE, body.collect()).await.expect("the isolate is evicted in time");
    assert!(rest.is_err(), "the body ended as if complete: {:?}", rest.map(|b| b.to_bytes()));
}
