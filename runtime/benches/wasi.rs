//! WebAssembly (WASI) functions against the same logic in JavaScript, through `Isolates`
//! (no HTTP): time per request (the program run from its initial state, the response
//! collected) and requests per second on one isolate, plus the engine's bare instantiate +
//! call (which Tern keeps off the request path: one instance per isolate, reset).
//!
//!     cargo bench -p tern-runtime --bench wasi [-- REQUESTS]
//!
//! Functions: a small WAT program that answers "hello" and its JavaScript twin; the C
//! example (`examples/wasm-c/page.c`, built here with clang for wasm32-wasi) rendering a
//! 10-row page and a JavaScript function rendering the same page. Anchor from
//! PERFORMANCE.md: wasmtime instantiate + call with its pooling allocator, about 4 µs.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tern_js_api::exchange::{Exchange, Reply, RequestId};
use tern_proto::{Bundle, Manifest};
use tern_runtime::{IsolateConfig, Isolates};

const HELLO_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Content-Type: text/plain\n\nhello")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 31))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

const HELLO_JS: &str =
    "export default { fetch() { return new Response('hello', { headers: { 'content-type': 'text/plain' } }); } };";

const PAGE_JS: &str = r#"
const escape = (s) => s.replace(/[<>&"']/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&#39;" })[c]);
export default { fetch(request, env) {
  const url = new URL(request.url);
  const name = url.searchParams.get("name") ?? "world";
  const n = Number(url.searchParams.get("n") ?? 5);
  let html = `<!doctype html>\n<title>${escape(env.SITE_TITLE)}</title>\n<h1>Hello, ${escape(name)}!</h1>\n<table>\n`;
  for (let i = 1; i <= n; i++) html += `<tr><td>${i}</td><td>${i * i}</td></tr>\n`;
  return new Response(html + "</table>\n", { headers: { "content-type": "text/html; charset=utf-8" } });
} };"#;

/// Instantiates an empty module and calls its export `times` times; answers µs per round.
const INSTANTIATE_JS: &str = r#"
import empty from "./empty.wasm";
export default { fetch(request) {
  const times = Number(new URL(request.url).searchParams.get("times"));
  const start = performance.now();
  for (let i = 0; i < times; i++) new WebAssembly.Instance(empty, {}).exports._start();
  return new Response(String((performance.now() - start) * 1000 / times));
} };"#;

fn bundle(name: &str, main: &str, files: Vec<(String, Vec<u8>)>, vars: &str) -> Arc<Bundle> {
    let manifest: Manifest = toml_manifest(name, main, vars);
    Arc::new(Bundle::new(manifest, files).expect("bundle"))
}

fn toml_manifest(name: &str, main: &str, vars: &str) -> Manifest {
    // The instantiation loop runs far past the default CPU limit on purpose.
    let text = format!("name = \"{name}\"\nmain = \"{main}\"\n[limits]\ncpu_ms = 30000\n[vars]\n{vars}\n");
    Manifest::parse(&text).expect("manifest")
}

fn c_page() -> Option<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.join("examples/wasm-c");
    let out = std::env::temp_dir().join(format!("tern-bench-page-{}.wasm", std::process::id()));
    let built = std::process::Command::new("clang")
        .args(["--target=wasm32-wasi", "-O2", "-Wl,--strip-all", "-o"])
        .arg(&out)
        .arg(root.join("page.c"))
        .status()
        .ok()?;
    let bytes = built.success().then(|| std::fs::read(&out).ok()).flatten();
    let _ = std::fs::remove_file(&out);
    bytes
}

async fn request(isolates: &Isolates, bundle: &Arc<Bundle>, url: &str) -> (Duration, String) {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let body = http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync();
    let exchange = Exchange { id: RequestId(0), hops: 0, request: http::Request::new(body), url: url.into(), reply };
    let start = Instant::now();
    isolates.dispatch(bundle.clone(), exchange);
    match answer.await {
        Ok(Reply::Response(response)) => {
            let bytes = response.into_body().collect().await.expect("body").to_bytes();
            (start.elapsed(), String::from_utf8_lossy(&bytes).into_owned())
        }
        Ok(Reply::Failed(f)) => panic!("{} failed: {}", bundle.name(), f.detail),
        Err(_) => panic!("{}: no answer", bundle.name()),
    }
}

struct Figures {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

async fn measure(isolates: &Isolates, bundle: &Arc<Bundle>, url: &str, n: usize) -> Figures {
    for _ in 0..200 {
        request(isolates, bundle, url).await;
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(request(isolates, bundle, url).await.0);
    }
    let total = started.elapsed();
    samples.sort();
    Figures { p50: samples[n / 2], p99: samples[n * 99 / 100], per_second: n as f64 / total.as_secs_f64() }
}

fn line(what: &str, f: &Figures) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("{what:<28} p50 {:>8.1} µs  p99 {:>8.1} µs  {:>8.0} req/s", us(f.p50), us(f.p99), f.per_second);
}

fn main() {
    let n: usize = std::env::args().skip(1).filter(|a| a != "--bench").find_map(|a| a.parse().ok()).unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let isolates = Isolates::start(IsolateConfig { warm_pool: 0, ..IsolateConfig::default() }).expect("isolates");
    let hello_wasm = wat::parse_str(HELLO_WAT).expect("WAT");
    let empty_wasm = wat::parse_str(r#"(module (memory 1) (func (export "_start")))"#).expect("WAT");
    let wasm_hello = bundle("wasm-hello", "app.wasm", vec![("app.wasm".into(), hello_wasm)], "");
    let js_hello = bundle("js-hello", "index.js", vec![("index.js".into(), HELLO_JS.into())], "");
    let title = "SITE_TITLE = \"Tern <WebAssembly> demo\"";
    let js_page = bundle("js-page", "index.js", vec![("index.js".into(), PAGE_JS.into())], title);
    let floor = bundle(
        "instantiate",
        "index.js",
        vec![("index.js".into(), INSTANTIATE_JS.into()), ("empty.wasm".into(), empty_wasm)],
        "",
    );
    println!("WASI functions vs JavaScript, {n} sequential requests each, one isolate, quickjs engine (WAMR)");
    rt.block_on(async {
        let page_url = "http://bench/?name=bench&n=10";
        let wh = measure(&isolates, &wasm_hello, "http://bench/", n).await;
        let jh = measure(&isolates, &js_hello, "http://bench/", n).await;
        line("wasm hello (WAT, 1 page)", &wh);
        line("js hello", &jh);
        let jp = measure(&isolates, &js_page, page_url, n).await;
        match c_page() {
            Some(page) => {
                let c = bundle("c-page", "page.wasm", vec![("page.wasm".into(), page.clone())], title);
                let cp = measure(&isolates, &c, page_url, n).await;
                let (_, c_text) = request(&isolates, &c, page_url).await;
                let (_, js_text) = request(&isolates, &js_page, page_url).await;
                assert_eq!(c_text, js_text, "the C and JS pages must be the same page");
                line(&format!("wasm C page ({} KiB module)", page.len() / 1024), &cp);
                line("js page", &jp);
                println!(
                    "  C page costs {:.1}x the JS page per request ({:.0} µs more at p50)",
                    cp.p50.as_secs_f64() / jp.p50.as_secs_f64(),
                    (cp.p50.as_secs_f64() - jp.p50.as_secs_f64()) * 1e6
                );
            }
            None => println!("wasm C page: skipped, clang for wasm32-wasi is missing (scripts/install-deps.sh)"),
        }
        println!(
            "  WASI hello costs {:.1}x JS hello per request ({:.0} µs more at p50: memory reset, WASI calls, CGI, streamed body)",
            wh.p50.as_secs_f64() / jh.p50.as_secs_f64(),
            (wh.p50.as_secs_f64() - jh.p50.as_secs_f64()) * 1e6
        );
        let (_, floor_us) = request(&isolates, &floor, "http://bench/?times=200").await;
        let floor_us: f64 = floor_us.parse().expect("a number");
        println!(
            "engine instantiate + call, empty module: {floor_us:.1} µs  (anchor: wasmtime pooling ~4 µs; {:.1}x); \
             not on the request path: each isolate keeps one instance and resets it",
            floor_us / 4.0
        );
    });
}
