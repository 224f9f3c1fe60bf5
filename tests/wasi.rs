//! WebAssembly functions through the real binary: a `.wasm` main is a WASI preview 1
//! program run per request in the CGI convention. The programs are built here from source:
//! WAT files in `tests/wasi/` (assembled with the `wat` crate) and the C example
//! (`examples/wasm-c`, compiled with Debian's clang for wasm32-wasi).

mod support;

use std::path::Path;
use std::process::Command;

use http_body_util::BodyExt;
use support::*;

/// A function whose main is the WAT program `tests/wasi/{file}.wat`, assembled.
fn wat_function(name: &str, file: &str, limits: &str) -> Project {
    let source = repo_root().join("tests/wasi").join(format!("{file}.wat"));
    let wasm = wat::parse_file(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    let p = Project::with_manifest(&format!("name = \"{name}\"\nmain = \"app.wasm\"\n[limits]\n{limits}\n"), &[]);
    p.write("app.wasm", &wasm);
    p
}

/// The C example, compiled from `examples/wasm-c/page.c` into a fresh project.
fn c_example() -> Project {
    let example = repo_root().join("examples/wasm-c");
    let manifest = std::fs::read_to_string(example.join("tern.toml")).unwrap();
    let p = Project::with_manifest(&manifest, &[]);
    let out = p.path().join("page.wasm");
    let built = Command::new("clang")
        .args(["--target=wasm32-wasi", "-O2", "-Wall", "-Werror", "-Wl,--strip-all", "-o"])
        .arg(&out)
        .arg(example.join("page.c"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run clang ({e}): scripts/install-deps.sh installs clang, lld and wasi-libc")
        });
    assert!(
        built.status.success(),
        "clang could not build the C example for wasm32-wasi (scripts/install-deps.sh installs clang, lld, \
         wasi-libc and libclang-rt-14-dev-wasm32):\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    p
}

fn dev(projects: &[&Project]) -> Tern {
    let paths: Vec<&Path> = projects.iter().map(|p| p.path()).collect();
    Tern::dev(&paths)
}

#[tokio::test]
async fn the_c_example_renders_a_page_from_query_parameters() {
    let c = c_example();
    let tern = dev(&[&c]);
    let a = get(&tern, "wasm-c.localhost", "/?name=%3Cb%3EAda+L&n=3").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(a.text.contains("<h1>Hello, &lt;b&gt;Ada L!</h1>"), "query decoded and escaped: {}", a.text);
    assert!(a.text.contains("<tr><td>3</td><td>9</td></tr>"), "{}", a.text);
    assert_eq!(a.text.matches("<tr>").count(), 3, "{}", a.text);
    assert!(a.text.contains("<title>Tern &lt;WebAssembly&gt; demo</title>"), "[vars] arrive: {}", a.text);

    let bad = get(&tern, "wasm-c.localhost", "/?n=5000").await;
    assert_eq!((bad.status, bad.text.as_str()), (400, "n must be between 0 and 1000\n"), "Status: sets the status");
    let missing = get(&tern, "wasm-c.localhost", "/nowhere").await;
    assert_eq!(missing.status, 404);
    let moved = get(&tern, "wasm-c.localhost", "/old").await;
    assert_eq!((moved.status, moved.header("location")), (302, Some("/")), "a Location header alone redirects");
}

#[tokio::test]
async fn the_request_body_is_standard_input_and_cgi_variables_describe_the_request() {
    let c = c_example();
    let tern = dev(&[&c]);
    let client = http1();
    let posted = "one two\nthree\n".repeat(10_000);
    let counted =
        send(&client, tern.request("POST", "wasm-c.localhost", "/count").body(body(posted.clone())).unwrap()).await;
    assert_eq!(counted.status, 200, "{}", counted.text);
    assert_eq!(counted.json(), serde_json::json!({"bytes": posted.len(), "lines": 20_000, "words": 30_000}));

    let env = send(
        &client,
        tern.request("PUT", "wasm-c.localhost", "/env?x=1&y=%20")
            .header("x-thing", "a")
            .header("content-type", "text/plain")
            .header("cf-connecting-ip", "6.6.6.6")
            .body(body("abc"))
            .unwrap(),
    )
    .await;
    assert_eq!(env.status, 200, "{}", env.text);
    let vars: Vec<&str> = env.text.lines().collect();
    for expected in [
        "REQUEST_METHOD=PUT",
        "PATH_INFO=/env",
        "QUERY_STRING=x=1&y=%20",
        "CONTENT_LENGTH=3",
        "CONTENT_TYPE=text/plain",
        "HTTP_X_THING=a",
        "GATEWAY_INTERFACE=CGI/1.1",
        "SERVER_NAME=wasm-c.localhost",
        "REMOTE_ADDR=127.0.0.1",
        "SITE_TITLE=Tern <WebAssembly> demo",
    ] {
        assert!(vars.contains(&expected), "{expected} missing from:\n{}", env.text);
    }
    assert!(!env.text.contains("6.6.6.6"), "the client cannot claim another address:\n{}", env.text);
}

#[tokio::test]
async fn output_streams_to_the_client_as_the_program_writes() {
    let p = wat_function("streamer", "stream-then-spin", "cpu_ms = 50");
    let tern = dev(&[&p]);
    let response =
        http1().request(tern.request("GET", "streamer.localhost", "/").body(empty()).unwrap()).await.unwrap();
    // The head and the first chunk arrive although the program never exits...
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.expect("a first chunk").expect("a first chunk").into_data().unwrap();
    assert_eq!(&first[..], b"first chunk\n");
    // ...and the CPU limit then ends it, which aborts the stream.
    let rest = tokio::time::timeout(PATIENCE, body.collect()).await.expect("the stream ends");
    assert!(rest.is_err(), "the response is cut, not completed: {rest:?}");
    assert!(tern.wait_for_output("function killed").await);
}

#[tokio::test]
async fn traps_and_non_zero_exits_are_500_wasm_trap_with_the_reason() {
    let trap = wat_function("trap", "trap", "");
    let exit = wat_function("exit", "exit-3", "");
    let tern = dev(&[&trap, &exit]);

    let a = get(&tern, "trap.localhost", "/").await;
    assert_eq!((a.status, a.header("tern-error")), (500, Some("wasm_trap")), "{}", a.text);
    assert!(a.text.contains("app.wasm trapped") && a.text.contains("unreachable"), "{}", a.text);

    let b = get(&tern, "exit.localhost", "/").await;
    assert_eq!((b.status, b.header("tern-error")), (500, Some("wasm_trap")), "{}", b.text);
    assert!(b.text.contains("exited with status 3"), "{}", b.text);
    assert!(b.text.contains("the database is on fire"), "tern dev shows standard error: {}", b.text);
    // Standard error is the function's log.
    let logged = tern.log_events().into_iter().any(|e| {
        e["target"] == "tern::console" && e["function"] == "exit" && e["message"] == "the database is on fire"
    });
    assert!(logged, "standard error in the log:\n{}", tern.output());
}

#[tokio::test]
async fn unknown_wasi_calls_answer_enosys_and_are_logged_once() {
    let p = wat_function("unknown", "unknown-call", "");
    let tern = dev(&[&p]);
    for _ in 0..3 {
        let a = get(&tern, "unknown.localhost", "/").await;
        assert_eq!((a.status, a.text.as_str()), (200, "ENOSYS"));
    }
    let warnings = tern.output().matches("called WASI path_open").count();
    assert_eq!(warnings, 1, "one warning per isolate:\n{}", tern.output());
}

#[tokio::test]
async fn an_endless_loop_and_a_memory_bomb_are_stopped_like_their_javascript_twins() {
    let spin = wat_function("spin", "loop", "cpu_ms = 50");
    let bomb = wat_function("bomb", "memory-bomb", "memory_mib = 32\ncpu_ms = 5000");
    let fresh = wat_function("fresh", "fresh-memory", "");
    let tern = dev(&[&spin, &bomb, &fresh]);

    let a = get(&tern, "spin.localhost", "/").await;
    assert_eq!((a.status, a.header("tern-error")), (503, Some("cpu_limit_exceeded")), "{}", a.text);
    let b = get(&tern, "bomb.localhost", "/").await;
    assert_eq!((b.status, b.header("tern-error")), (503, Some("memory_limit_exceeded")), "{}", b.text);
    assert!(b.text.contains("32 MiB"), "names the limit: {}", b.text);
    // Both are recorded as kills, and the functions (and their neighbours) keep serving.
    assert!(tern.wait_for_output("memory_limit_exceeded").await);
    let kills: Vec<_> = tern.log_events().into_iter().filter(|e| e["target"] == "tern::kill").collect();
    assert!(kills.iter().any(|k| k["function"] == "spin" && k["limit"] == "cpu_limit_exceeded"), "{kills:?}");
    assert!(kills.iter().any(|k| k["function"] == "bomb" && k["limit"] == "memory_limit_exceeded"), "{kills:?}");
    assert_eq!(get(&tern, "fresh.localhost", "/").await.text, "2");
    assert_eq!(get(&tern, "bomb.localhost", "/").await.status, 503, "the bomb goes off again, the same way");
}

#[tokio::test]
async fn every_request_gets_fresh_memory_and_concurrent_requests_do_not_cross() {
    let fresh = wat_function("fresh", "fresh-memory", "");
    let c = c_example();
    let tern = dev(&[&fresh, &c]);
    for _ in 0..20 {
        assert_eq!(get(&tern, "fresh.localhost", "/").await.text, "2", "counters in memory and a global start at 0");
    }
    // A request that crashes midway leaves nothing behind for the next one.
    let crashed = get(&tern, "wasm-c.localhost", "/stash?value=secret-of-the-last-caller").await;
    assert_eq!((crashed.status, crashed.header("tern-error")), (500, Some("wasm_trap")), "{}", crashed.text);
    assert_eq!(get(&tern, "wasm-c.localhost", "/peek").await.text, "stash: []\n");
    let client = http1();
    let answers = futures::future::join_all((0..32).map(|i| {
        let request = tern.request("GET", "wasm-c.localhost", &format!("/?name=caller{i}&n={i}")).body(empty());
        send(&client, request.unwrap())
    }))
    .await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.status, 200);
        assert!(a.text.contains(&format!("Hello, caller{i}!")), "request {i} got: {}", a.text);
        assert_eq!(a.text.matches("<tr>").count(), i, "request {i} got: {}", a.text);
    }
}

#[tokio::test]
async fn broken_programs_get_clear_errors() {
    let no_head = wat_function("nohead", "no-head", "");
    let foreign = wat_function("foreign", "foreign-import", "");
    let bad_status = wat_function("badstatus", "bad-status", "");
    let tern = dev(&[&no_head, &foreign, &bad_status]);
    let a = get(&tern, "nohead.localhost", "/").await;
    assert_eq!((a.status, a.header("tern-error")), (500, Some("invalid_response")), "{}", a.text);
    assert!(a.text.contains("blank line that ends the CGI headers"), "{}", a.text);
    let b = get(&tern, "foreign.localhost", "/").await;
    assert_eq!((b.status, b.header("tern-error")), (500, Some("load_failed")), "{}", b.text);
    assert!(b.text.contains("\"env\".\"host_magic\"") && b.text.contains("wasi_snapshot_preview1"), "{}", b.text);
    let c = get(&tern, "badstatus.localhost", "/").await;
    assert_eq!((c.status, c.header("tern-error")), (500, Some("invalid_response")), "{}", c.text);
    assert!(c.text.contains("Status: 99 Bottles") && c.text.contains("between 200 and 599"), "{}", c.text);
}

#[tokio::test]
async fn large_output_streams_through_isolate_host_processes() {
    let c = c_example();
    let tern = Tern::dev_with(&[c.path()], &["--isolate-hosts", "1"]);
    for _ in 0..3 {
        let a = get(&tern, "wasm-c.localhost", "/?n=1000").await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.text.matches("<tr>").count(), 1000);
        assert!(a.text.ends_with("<tr><td>1000</td><td>1000000</td></tr>\n</table>\n"));
    }
}

/// The engine never frees a WebAssembly instance, so a fresh instance per request grew the
/// node by the program's whole memory on every request (about 5 GiB in a minute of load).
/// One instance per isolate, reset after each request, keeps the node flat. (The engine's
/// `WebAssembly.Global` setter leaked too; globals are reset by a function in the module.)
#[tokio::test]
async fn bug_wasi_requests_do_not_grow_the_node_memory() {
    let c = c_example();
    let fresh = wat_function("fresh", "fresh-memory", "");
    let tern = dev(&[&c, &fresh]);
    let server = *tern.child_pids().first().expect("the server process");
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{server}/status")).unwrap();
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB");
        kib.trim().parse::<u64>().unwrap() * 1024
    };
    let client = http1();
    let round = |n: usize| {
        let (client, tern) = (&client, &tern);
        async move {
            for i in 0..n {
                let (host, path) = if i % 2 == 0 { ("wasm-c.localhost", "/?n=50") } else { ("fresh.localhost", "/") };
                let a = send(client, tern.request("GET", host, path).body(empty()).unwrap()).await;
                assert_eq!(a.status, 200, "{}", a.text);
            }
        }
    };
    round(200).await;
    let before = rss();
    round(2000).await;
    let grown = rss().saturating_sub(before);
    // A leaking node grows by hundreds of MiB here; a bounded one by next to nothing.
    assert!(grown < 32 << 20, "the server grew by {} MiB over 2,000 requests", grown >> 20);
}
