//! Per-function limits from `tern.toml` `[limits]`, through the real binary: what is charged,
//! what a kill answers and records, and what a function may opt into; and what tenants share
//! on a node (the engine's code cache).

mod support;

use std::process::Command;

use support::{Project, Tern, get};

fn with_limits(name: &str, limits: &str, code: &str) -> Project {
    Project::with_manifest(
        &format!("name = \"{name}\"\nmain = \"index.js\"\n[limits]\n{limits}\n"),
        &[("index.js", code)],
    )
}

/// `clients` concurrent clients, each sending `each` GETs to `host` one after another: the
/// answers that were not 200, as (status, tern-error, body).
async fn failures_under_load(tern: &Tern, host: &str, clients: usize, each: usize) -> Vec<(u16, String, String)> {
    let client = support::http1();
    let clients = (0..clients).map(|_| async {
        let mut failed = Vec::new();
        for _ in 0..each {
            let a = support::send(&client, tern.request("GET", host, "/").body(support::empty()).unwrap()).await;
            if a.status != 200 {
                failed.push((a.status, a.header("tern-error").unwrap_or_default().to_string(), a.text));
            }
        }
        failed
    });
    futures::future::join_all(clients).await.into_iter().flatten().collect()
}

#[tokio::test]
async fn waiting_for_a_slow_promise_is_not_charged_as_cpu_time() {
    // 10 ms of CPU allowed, 300 ms of waiting: CPU is measured as CPU, not wall time.
    let p = with_limits(
        "patient",
        "cpu_ms = 10",
        "export default { async fetch() { await new Promise((r) => setTimeout(r, 300)); return new Response('waited'); } };",
    );
    let tern = Tern::dev(&[p.path()]);
    let a = get(&tern, "patient.localhost", "/").await;
    assert_eq!((a.status, a.text.as_str()), (200, "waited"));
}

#[tokio::test]
async fn bug_concurrent_requests_were_charged_for_each_others_cpu_and_killed() {
    // Each request uses a few ms of CPU, far below the 50 ms limit. With several in flight,
    // one poll of the event loop ran many of them start to finish; its CPU went to whoever
    // was left in flight, or to the background account once none was, and the isolate was
    // killed for cpu_limit_exceeded every few dozen requests.
    let p = with_limits(
        "busy",
        "cpu_ms = 50",
        "export default { fetch() { let x = 0; for (let i = 0; i < 100000; i++) x = (x * 31 + i) | 0; \
         return new Response(String(x)); } };",
    );
    let tern = Tern::dev(&[p.path()]);
    let failed = failures_under_load(&tern, "busy.localhost", 8, 40).await;
    assert!(failed.is_empty(), "{} of 320 requests failed: {:?}", failed.len(), failed.first());
    assert!(!tern.log_events().iter().any(|e| e["target"] == "tern::kill"), "no request was killed");
}

#[tokio::test]
async fn bug_a_proxy_making_one_fetch_per_request_hit_the_subrequest_limit_under_load() {
    // Each request makes one outbound fetch (refused by the egress policy, which still
    // counts) and stays in flight a little longer. Every fetch used to be charged to every
    // request in flight: with 64 connections a proxy's requests failed "Too many subrequests".
    let p = with_limits(
        "proxyish",
        "subrequests = 50",
        r#"export default { async fetch() {
            try { await fetch("http://10.0.0.1/"); } catch (e) {
              if (String(e).includes("Too many subrequests")) return new Response(String(e), { status: 429 });
            }
            await new Promise((r) => setTimeout(r, 20));
            return new Response("ok");
          } };"#,
    );
    let tern = Tern::dev(&[p.path()]);
    let failed = failures_under_load(&tern, "proxyish.localhost", 64, 3).await;
    assert!(failed.is_empty(), "{} of 192 requests failed: {:?}", failed.len(), failed.first());
}

#[tokio::test]
async fn a_cpu_kill_answers_503_records_why_and_the_next_request_gets_a_fresh_isolate() {
    let p = with_limits(
        "spinner",
        "cpu_ms = 20",
        "export default { fetch(req) { if (new URL(req.url).searchParams.has('spin')) for (;;) {} return new Response('fine'); } };",
    );
    let tern = Tern::dev(&[p.path()]);
    let killed = get(&tern, "spinner.localhost", "/?spin").await;
    assert_eq!(killed.status, 503);
    assert_eq!(killed.header("tern-error"), Some("cpu_limit_exceeded"));
    assert!(killed.text.contains("20 ms"), "the answer names the limit: {}", killed.text);
    let id = killed.header("tern-request-id").expect("request id").to_string();

    let next = get(&tern, "spinner.localhost", "/").await;
    assert_eq!((next.status, next.text.as_str()), (200, "fine"));

    assert!(tern.wait_for_output("function killed").await);
    let events = tern.log_events();
    let record = events.iter().find(|e| e["target"] == "tern::kill").expect("a kill record");
    assert_eq!(record["function"], "spinner");
    assert_eq!(record["limit"], "cpu_limit_exceeded");
    assert_eq!(record["phase"], "request");
    assert_eq!(record["version"].as_str().map(str::len), Some(12));
    assert!(record["cpu_ms"].as_f64().unwrap() >= 20.0, "CPU used is at least the limit: {record}");
    assert!(record["heap_bytes"].as_u64().unwrap() > 0);
    assert_eq!(record["requests"].as_str(), Some(id.as_str()), "the record names the request");
}

#[tokio::test]
async fn bug_a_webassembly_memory_grown_from_js_to_the_heap_limit_was_an_uncaught_type_error() {
    // The engine keeps a JS-made memory's buffer in the JS heap and reported the failed
    // allocation as `TypeError: not an object`: a caught 200 or an uncaught_exception, never
    // the memory limit. Going past the memory's own maximum was a TypeError too (the spec
    // says RangeError).
    let p = with_limits(
        "grower",
        "cpu_ms = 20000",
        r#"export default { fetch(req) {
            const big = new URL(req.url).searchParams.has("big");
            const memory = new WebAssembly.Memory({ initial: 1, maximum: big ? 65536 : 100 });
            try { for (;;) memory.grow(64); }
            catch (e) { return new Response(`caught ${e.name}: ${e.message}`); }
        } };"#,
    );
    let tern = Tern::dev(&[p.path()]);
    let small = get(&tern, "grower.localhost", "/").await;
    assert_eq!(small.status, 200, "{}", small.text);
    assert!(small.text.starts_with("caught RangeError:") && small.text.contains("maximum"), "{}", small.text);

    let big = get(&tern, "grower.localhost", "/?big").await;
    assert_eq!((big.status, big.header("tern-error")), (503, Some("memory_limit_exceeded")), "{}", big.text);
    assert!(tern.wait_for_output("function killed").await);
    let events = tern.log_events();
    let record = events.iter().find(|e| e["target"] == "tern::kill").expect("a kill record");
    assert_eq!((&record["function"], &record["limit"]), (&"grower".into(), &"memory_limit_exceeded".into()));

    let again = get(&tern, "grower.localhost", "/").await;
    assert_eq!(again.status, 200, "a fresh isolate serves the next request: {}", again.text);
}

#[tokio::test]
async fn bug_a_memory_exported_by_a_webassembly_module_grew_from_js_past_its_maximum_and_the_limit() {
    // The engine raises an exported memory's maximum to fit any grow from JS: a module's
    // own maximum of 2 pages meant nothing, and a memory the limit clamped (8 MiB here)
    // grew to gigabytes. Modules compiled by every route keep to both now.
    let p = with_limits(
        "exported",
        "memory_mib = 8",
        r#"const two = new Uint8Array([0,0x61,0x73,0x6d,1,0,0,0, 5,4,1,1,1,2, 7,7,1,3,0x6d,0x65,0x6d,2,0]);
        const unbounded = new Uint8Array([0,0x61,0x73,0x6d,1,0,0,0, 5,3,1,0,1, 7,7,1,3,0x6d,0x65,0x6d,2,0]);
        const grow = (memory, pages) => { try { return `${memory.grow(pages)}`; } catch (e) { return e.name; } };
        export default { async fetch() {
            const out = [];
            const { module, instance } = await WebAssembly.instantiate(two);
            out.push(grow(instance.exports.mem, 1), grow(instance.exports.mem, 1));
            out.push(grow(new WebAssembly.Instance(module).exports.mem, 2));
            out.push(grow((await WebAssembly.instantiate(module)).exports.mem, 1));
            out.push(grow(new WebAssembly.Instance(new WebAssembly.Module(unbounded)).exports.mem, 128));
            out.push(grow(new WebAssembly.Instance(await WebAssembly.compile(unbounded)).exports.mem, 127));
            const streamed = await WebAssembly.instantiateStreaming(new Response(unbounded));
            out.push(grow(streamed.instance.exports.mem, 4000));
            return new Response(out.join(" "));
        } };"#,
    );
    let tern = Tern::dev(&[p.path()]);
    let r = get(&tern, "exported.localhost", "/").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text, "1 RangeError RangeError 1 RangeError 1 RangeError", "8 MiB is 128 pages");
}

#[tokio::test]
async fn bug_a_version_that_got_stuck_stranded_one_more_thread_per_request() {
    // A microtask chain that forks outgrows termination: the isolate is stuck and its thread
    // spins on at idle priority. The version's next request started a fresh isolate that got
    // stuck too, so every request stranded a thread and up to a heap of memory.
    let p = with_limits("forks", "wall_ms = 2000", support::FORKING_MICROTASKS);
    let other = with_limits("other", "", "export default { fetch: () => new Response('other fine') };");
    let tern = Tern::dev_with(&[p.path(), other.path()], &["--admin-port", "0"]);
    assert_eq!(get(&tern, "forks.localhost", "/?fork").await.status, 503);
    assert!(tern.wait_for_output("isolate stuck after termination").await, "{}", tern.output());
    for path in ["/?fork", "/"] {
        let refused = get(&tern, "forks.localhost", path).await;
        assert_eq!((refused.status, refused.header("tern-error")), (503, Some("cpu_limit_exceeded")), "{path}");
        assert!(refused.text.contains("not run again"), "{}", refused.text);
    }
    assert_eq!(get(&tern, "other.localhost", "/").await.text, "other fine");
    let metrics = support::scrape(&tern.admin_addr()).await.text;
    assert!(metrics.lines().any(|l| l == "tern_isolates_stuck_total 1"), "{metrics}");
}

#[tokio::test]
async fn bug_the_requests_of_a_stuck_isolate_waited_for_the_wall_time_limit() {
    // An isolate found stuck (its JS went on after termination) answered its requests only
    // once its JS ended. A loop that catches its failing allocations ends only after seconds
    // of full collections, and with its thread lowered to idle priority on a busy machine its
    // request waited out the wall-time limit and got `wall_time_exceeded` instead of its
    // memory kill. A microtask chain that forks never ends: its request, and those queued
    // behind it, waited for the wall time too. The watchdog now answers them itself.
    let p = with_limits("forks", "wall_ms = 600000", support::FORKING_MICROTASKS);
    let tern = Tern::dev(&[p.path()]);
    let (first, queued) =
        tokio::join!(get(&tern, "forks.localhost", "/?fork"), get(&tern, "forks.localhost", "/?fork"));
    for answer in [&first, &queued] {
        assert_eq!((answer.status, answer.header("tern-error")), (503, Some("cpu_limit_exceeded")), "{}", answer.text);
    }
    let ids = [&first, &queued].map(|a| a.header("tern-request-id").expect("request id").to_string());
    assert!(tern.wait_for_output("\"stuck\":true").await, "{}", tern.output());
    let record = tern
        .log_events()
        .into_iter()
        .find(|e| e["target"] == "tern::kill" && e["limit"] == "cpu_limit_exceeded")
        .unwrap_or_else(|| panic!("no kill record: {}", tern.output()));
    assert_eq!(record["stuck"], true, "{record}");
    assert_eq!(record["function"], "forks", "{record}");
    let named = record["requests"].as_str().unwrap();
    assert!(ids.iter().any(|id| named.contains(id.as_str())), "{record} names neither of {ids:?}");
    // The version is refused from then on, with the limit it was stopped at.
    let refused = get(&tern, "forks.localhost", "/").await;
    assert_eq!((refused.status, refused.header("tern-error")), (503, Some("cpu_limit_exceeded")));
    assert!(refused.text.contains("not run again"), "{}", refused.text);
}

#[tokio::test]
async fn code_generation_is_refused_by_default_without_breaking_instanceof() {
    let p = Project::new(
        "strict",
        &[(
            "index.js",
            r#"export default { fetch() {
                const checks = {
                  instanceofFunction: (() => {}) instanceof Function,
                  asyncInstanceof: (async () => {}) instanceof Function,
                  functionName: Function.name,
                };
                for (const [what, run] of [
                  ["eval", () => eval("1")],
                  ["Function", () => Function("return 1")],
                  ["constructor", () => (() => {}).constructor("return 1")],
                ]) {
                  try { run(); checks[what] = "compiled"; } catch (e) { checks[what] = e.name; }
                }
                return Response.json(checks);
              } };"#,
        )],
    );
    let tern = Tern::dev(&[p.path()]);
    let a = get(&tern, "strict.localhost", "/").await.json();
    assert_eq!(a["instanceofFunction"], true);
    assert_eq!(a["asyncInstanceof"], true);
    assert_eq!(a["functionName"], "Function");
    assert_eq!(a["eval"], "EvalError");
    assert_eq!(a["Function"], "EvalError");
    assert_eq!(a["constructor"], "EvalError");
}

#[tokio::test]
async fn allow_eval_lets_a_function_compile_strings() {
    let p = Project::with_manifest(
        "name = \"lenient\"\nmain = \"index.js\"\nallow_eval = true\n",
        &[(
            "index.js",
            "export default { fetch() { return new Response(String(eval('6 * 7') + new Function('return 1')())); } };",
        )],
    );
    let tern = Tern::dev(&[p.path()]);
    assert_eq!(get(&tern, "lenient.localhost", "/").await.text, "43");
}

#[test]
fn a_limit_out_of_range_is_refused_naming_the_key_and_the_range() {
    let p = with_limits("greedy", "memory_mib = 100000", "export default { fetch() { return new Response('x'); } };");
    let out = Command::new(env!("CARGO_BIN_EXE_tern")).args(["dev", "--port", "0"]).arg(p.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[limits] memory_mib = 100000 is out of range: it must be between 8 and 1024"), "{err}");
}

#[tokio::test]
async fn the_admin_endpoint_counts_requests_errors_and_kills_in_prometheus_text() {
    let p = with_limits(
        "counted",
        "cpu_ms = 20",
        "export default { fetch(req) { if (new URL(req.url).searchParams.has('spin')) for (;;) {} return new Response('fine'); } };",
    );
    let tern = Tern::dev_with(&[p.path()], &["--admin-port", "0"]);
    assert_eq!(get(&tern, "counted.localhost", "/").await.status, 200);
    assert_eq!(get(&tern, "counted.localhost", "/?spin").await.status, 503);
    let metrics = support::scrape(&tern.admin_addr()).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    for line in [
        "tern_requests_total 2",
        "tern_errors_total{tern_error=\"cpu_limit_exceeded\"} 1",
        "tern_kills_total{limit=\"cpu_limit_exceeded\"} 1",
    ] {
        assert!(metrics.text.lines().any(|l| l == line), "{line:?} missing from:\n{}", metrics.text);
    }
    // Gauges of the moment (the killed isolate's replacement may still be on its way).
    for gauge in ["tern_isolates_live ", "tern_isolates_warm ", "tern_function_cpu_seconds_total "] {
        assert!(metrics.text.lines().any(|l| l.starts_with(gauge)), "{gauge:?} missing from:\n{}", metrics.text);
    }
}

#[tokio::test]
async fn the_code_cache_is_private_to_tern_and_keyed_per_function_not_by_source() {
    let dir = std::env::temp_dir().join(format!("tern-code-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let env = [("TERN_CODE_CACHE_DIR", dir.as_path())];
    let code = "export default { fetch() { return new Response('same source'); } };";
    let alpha = Project::new("alpha", &[("index.js", code)]);
    let beta = Project::new("beta", &[("index.js", code)]);
    let entries = || {
        std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "qbc")).count()
    };

    serve_once(&[(&alpha, "alpha")], &env).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the cache directory is private");
    assert_eq!(mode(&dir.join("salt.key")), 0o600, "the cache key is private");
    let first = entries();
    assert!(first > 0, "the engine writes its cache where Tern points it");

    serve_once(&[(&alpha, "alpha")], &env).await;
    assert_eq!(entries(), first, "a restart reuses the cache: the key persists");

    serve_once(&[(&alpha, "alpha"), (&beta, "beta")], &env).await;
    assert_eq!(entries(), first + 1, "the same source in another function gets an entry of its own");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts `tern dev` on the projects, asks each once, stops it.
async fn serve_once(projects: &[(&Project, &str)], env: &[(&str, &std::path::Path)]) {
    let paths: Vec<_> = projects.iter().map(|(p, _)| p.path()).collect();
    let tern = Tern::dev_with_env(&paths, &[], env);
    for (_, name) in projects {
        let a = get(&tern, &format!("{name}.localhost"), "/").await;
        assert_eq!((a.status, a.text.as_str()), (200, "same source"));
    }
}
