//! A function's failure never takes the node down: each failure gets its status and
//! `tern-error` code, the detail goes to the log, and other functions keep answering.
mod support;

use support::*;

fn broken_functions() -> Vec<Project> {
    let f = |name: &str, code: &str| Project::new(name, &[("index.js", code)]);
    vec![
        f("throws", r#"export default { fetch() { throw new Error("kaboom in handler"); } };"#),
        f("rejects", r#"export default { async fetch() { await null; throw new TypeError("async kaboom"); } };"#),
        f("not-a-response", r#"export default { fetch() { return "just a string"; } };"#),
        f("returns-nothing", r#"export default { fetch() {} };"#),
        f("syntax", "export default {\n  fetch() {\n    return new Response(\"x\";\n  },\n};\n"),
        f("no-handler", r#"export const notAHandler = 1;"#),
        f("bad-import", r#"import { x } from "./missing.js"; export default { fetch: () => new Response(x) };"#),
        f("throws-at-top", "const a = 1;\nthrow new Error(\"top-level kaboom\");\nexport default {};\n"),
        f(
            "timer-throws",
            r#"export default { fetch() { setTimeout(() => { throw new Error("timer kaboom"); }, 0);
                 Promise.reject(new Error("unhandled kaboom")); return new Response("still fine"); } };"#,
        ),
        f(
            "stream-fails",
            r#"export default { fetch() {
                 const body = new ReadableStream({ pull(c) { c.enqueue(new TextEncoder().encode("partial")); c.error(new Error("stream kaboom")); } });
                 return new Response(body); } };"#,
        ),
        f(
            "control-char-header",
            r#"export default { fetch: () => new Response("x", { headers: { "x-bad": "a\u0001b" } }) };"#,
        ),
        f("healthy", r#"export default { fetch: () => new Response("ok") };"#),
    ]
}

#[tokio::test]
async fn each_failure_has_its_status_code_and_detail() {
    let projects = broken_functions();
    let paths: Vec<_> = projects.iter().map(|p| p.path()).collect();
    let mut tern = Tern::dev(&paths);
    let cases = [
        ("throws", 500, "uncaught_exception", "kaboom in handler"),
        ("rejects", 500, "uncaught_exception", "async kaboom"),
        ("not-a-response", 500, "invalid_response", "string"),
        ("returns-nothing", 500, "invalid_response", "undefined"),
        ("syntax", 500, "load_failed", "index.js:3"),
        ("no-handler", 500, "load_failed", "export default"),
        ("bad-import", 500, "load_failed", "missing.js"),
        ("throws-at-top", 500, "load_failed", "index.js:2"),
    ];
    for (name, status, code, detail) in cases {
        let a = get(&tern, &format!("{name}.localhost"), "/").await;
        assert_eq!(a.status, status, "{name}: {}", a.text);
        assert_eq!(a.header("tern-error"), Some(code), "{name}");
        // tern dev shows the detail in the body; the log always has it.
        assert!(a.text.contains(detail), "{name}: body lacks {detail:?}: {}", a.text);
        assert!(tern.wait_for_output(detail).await, "{name}: log lacks {detail:?}");
    }
    // The same broken function answers the same way again (the isolate survives).
    assert_eq!(get(&tern, "throws.localhost", "/").await.header("tern-error"), Some("uncaught_exception"));
    assert_eq!(get(&tern, "healthy.localhost", "/").await.text, "ok");
    assert!(tern.is_running());
}

#[tokio::test]
async fn the_log_record_names_function_version_and_code() {
    let projects = broken_functions();
    let paths: Vec<_> = projects.iter().map(|p| p.path()).collect();
    let tern = Tern::dev(&paths);
    get(&tern, "throws.localhost", "/").await;
    assert!(tern.wait_for_output("kaboom in handler").await);
    let events = tern.log_events();
    let e = events.iter().find(|e| e["message"].as_str().is_some_and(|m| m.contains("kaboom in handler"))).unwrap();
    assert_eq!(e["function"], "throws");
    assert_eq!(e["tern_error"], "uncaught_exception");
    assert_eq!(e["version"].as_str().unwrap().len(), 12);
    assert!(e["message"].as_str().unwrap().contains("index.js:1"), "stack names the file: {e}");
}

#[tokio::test]
async fn errors_outside_the_handler_are_logged_and_the_isolate_keeps_serving() {
    let projects = broken_functions();
    let paths: Vec<_> = projects.iter().map(|p| p.path()).collect();
    let mut tern = Tern::dev(&paths);
    for _ in 0..3 {
        let a = get(&tern, "timer-throws.localhost", "/").await;
        assert_eq!((a.status, a.text.as_str()), (200, "still fine"));
    }
    assert!(tern.wait_for_output("timer kaboom").await);
    assert!(tern.wait_for_output("unhandled kaboom").await);
    // No isolate was replaced: one boot for this function.
    let boots = tern
        .log_events()
        .iter()
        .filter(|e| e["message"] == "starting isolate" && e["function"] == "timer-throws")
        .count();
    assert_eq!(boots, 1);
    assert!(tern.is_running());
}

#[tokio::test]
async fn a_response_stream_that_fails_midway_cuts_the_response() {
    let projects = broken_functions();
    let paths: Vec<_> = projects.iter().map(|p| p.path()).collect();
    let tern = Tern::dev(&paths);
    // Depending on whether the head was flushed before the stream failed, the client sees the
    // message cut before or after the head; never a clean, complete response.
    use http_body_util::BodyExt;
    match http1().request(tern.request("GET", "stream-fails.localhost", "/").body(empty()).unwrap()).await {
        Err(e) => assert!(format!("{e:?}").contains("IncompleteMessage"), "{e:?}"),
        Ok(response) => {
            assert_eq!(response.status(), 200);
            assert!(response.into_body().collect().await.is_err(), "the body must end abnormally");
        }
    }
    assert!(tern.wait_for_output("stream kaboom").await);
    assert_eq!(get(&tern, "healthy.localhost", "/").await.text, "ok");
}

/// A header value the Fetch spec allows but HTTP cannot carry (a control character) used to
/// drop the exchange after its reply slot was taken: the client saw 502 `isolate_failed`.
#[tokio::test]
async fn bug_header_value_with_control_character_is_an_invalid_response_not_a_dropped_request() {
    let projects = broken_functions();
    let paths: Vec<_> = projects.iter().map(|p| p.path()).collect();
    let tern = Tern::dev(&paths);
    let a = get(&tern, "control-char-header.localhost", "/").await;
    assert_eq!((a.status, a.header("tern-error")), (500, Some("invalid_response")), "{}", a.text);
    assert!(a.text.contains("x-bad"), "the message names the header: {}", a.text);
    assert_eq!(get(&tern, "healthy.localhost", "/").await.text, "ok");
}

#[tokio::test]
async fn hostile_return_values_do_not_stop_the_serve_loop() {
    let thenable_throws = Project::new(
        "getter",
        &[(
            "index.js",
            r#"export default { fetch(request) {
                if (new URL(request.url).pathname === "/ok") return new Response("still serving");
                return { get then() { throw new Error("then getter kaboom"); } };
            } };"#,
        )],
    );
    let rejects_later = Project::new(
        "thenable",
        &[(
            "index.js",
            r#"export default { fetch() { return { then(_ok, fail) { fail(new Error("custom thenable kaboom")); } }; } };"#,
        )],
    );
    let tern = Tern::dev(&[thenable_throws.path(), rejects_later.path()]);
    let a = get(&tern, "getter.localhost", "/").await;
    assert_eq!((a.status, a.header("tern-error")), (500, Some("uncaught_exception")), "{}", a.text);
    assert!(a.text.contains("then getter kaboom"), "{}", a.text);
    assert_eq!(get(&tern, "getter.localhost", "/ok").await.text, "still serving");
    let b = get(&tern, "thenable.localhost", "/").await;
    assert_eq!((b.status, b.header("tern-error")), (500, Some("uncaught_exception")));
    assert!(b.text.contains("custom thenable kaboom"), "{}", b.text);
}

/// A top-level await that can never settle used to hang the isolate's boot forever, and
/// with it `tern dev`'s startup. A top-level await on a timer still works.
#[tokio::test]
async fn bug_top_level_await_that_never_settles_is_a_load_error() {
    let stuck = Project::new(
        "stuck",
        &[("index.js", "await new Promise(() => {});\nexport default { fetch: () => new Response(\"x\") };\n")],
    );
    let waits = Project::new(
        "waits",
        &[(
            "index.js",
            "const ready = await new Promise((r) => setTimeout(() => r(\"ready\"), 20));\nexport default { fetch: () => new Response(ready) };\n",
        )],
    );
    let tern = Tern::dev(&[stuck.path(), waits.path()]);
    let a = get(&tern, "stuck.localhost", "/").await;
    assert_eq!((a.status, a.header("tern-error")), (500, Some("load_failed")), "{}", a.text);
    assert!(a.text.contains("index.js:1") && a.text.to_lowercase().contains("top-level await"), "{}", a.text);
    assert_eq!(get(&tern, "waits.localhost", "/").await.text, "ready");
}
