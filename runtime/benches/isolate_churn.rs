//! Isolate churn: how much memory each create-and-drop of an isolate costs, and after how
//! many creations the engine stops creating them, in one process.
//!
//!     cargo bench -p tern-runtime --bench isolate_churn [-- CYCLES]
//!
//! Four shapes, each in a fresh process (the leak is per process): a bare deno_core
//! `JsRuntime` (the engine alone), one with Tern's extensions (the Web API crates and our
//! bootstrap), the same with each isolate on a fresh OS thread, and a function version
//! served and replaced through `Isolates` (what the edge node does: an isolate per thread, a warm pool). Prints RSS growth per cycle against PERFORMANCE.md's churn budget
//! (RSS growth under 1 MiB per 1,000 cycles).
#![allow(clippy::print_stdout)]

use std::process::Command;
use std::sync::Arc;

use deno_core::{JsRuntime, RuntimeOptions};
use http_body_util::BodyExt;
use tern_js_api::egress::Egress;
use tern_js_api::exchange::{Exchange, Reply, RequestId};
use tern_proto::{Bundle, Manifest};
use tern_runtime::{IsolateConfig, Isolates};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `cycles` of `step`, stopping at the first failure; prints one result line.
fn measure(shape: &str, cycles: usize, mut step: impl FnMut(usize) -> Result<(), String>) {
    let warm = 3.min(cycles);
    for i in 0..warm {
        if let Err(e) = step(i) {
            println!("{shape:<28} failed during warm-up at cycle {i}: {e}");
            return;
        }
    }
    let start = rss_kib();
    let mut done = warm;
    let mut failure = None;
    for i in warm..cycles {
        match step(i) {
            Ok(()) => done += 1,
            Err(e) => {
                failure = Some(format!("creation {} failed: {e}", i + 1));
                break;
            }
        }
    }
    let measured = (done - warm).max(1) as f64;
    let per_cycle = (rss_kib().saturating_sub(start)) as f64 / 1024.0 / measured;
    let per_1000 = per_cycle * 1000.0;
    let verdict = if per_1000 < 1.0 { "ok" } else { "MISSED" };
    println!(
        "{shape:<28} {done:>5} cycles  {per_cycle:>7.3} MiB/cycle  ({per_1000:>8.0} MiB per 1,000; budget < 1)  {verdict}{}",
        failure.map(|f| format!("  [{f}]")).unwrap_or_default()
    );
}

fn bare(cycles: usize) {
    measure("bare JsRuntime", cycles, |_| {
        let rt = JsRuntime::try_new(RuntimeOptions::default()).map_err(|e| e.to_string())?;
        drop(rt);
        Ok(())
    });
}

fn with_extensions(cycles: usize) {
    measure("JsRuntime + Tern extensions", cycles, |_| {
        let rt = JsRuntime::try_new(RuntimeOptions {
            extensions: tern_js_api::extensions(&Egress::default()),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        drop(rt);
        Ok(())
    });
}

/// Each isolate on its own short-lived OS thread: v8x keeps a per-thread table of native
/// functions, indexed through QuickJS's 16-bit `magic`, that only dies with the thread.
fn with_extensions_fresh_thread(cycles: usize) {
    measure("  ... one fresh thread each", cycles, |_| {
        std::thread::spawn(|| {
            let rt = JsRuntime::try_new(RuntimeOptions {
                extensions: tern_js_api::extensions(&Egress::default()),
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
            drop(rt);
            Ok::<_, String>(())
        })
        .join()
        .map_err(|_| "the thread panicked".to_string())?
    });
}

fn served_versions(cycles: usize) {
    let isolates = Isolates::start(IsolateConfig::default()).expect("isolates");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    measure("function version replaced", cycles, |i| {
        let manifest = Manifest::for_single_file("churn", "index.js").map_err(|e| e.to_string())?;
        let code = format!("export default {{ fetch: () => new Response(\"v{i}\") }};");
        let bundle = Bundle::new(manifest, [("index.js".to_string(), code.into_bytes())]).map_err(|e| e.to_string())?;
        // A real request proves the new version booted (a failed boot answers load_failed).
        let (reply, answer) = tokio::sync::oneshot::channel();
        let body = http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync();
        let request = http::Request::new(body);
        let exchange = Exchange { id: RequestId(i as u64), hops: 0, request, url: "http://churn/".into(), reply };
        isolates.dispatch(Arc::new(bundle), exchange);
        match rt.block_on(answer) {
            Ok(Reply::Response(_)) => Ok(()),
            Ok(Reply::Failed(f)) => Err(f.detail),
            Err(_) => Err("no answer".into()),
        }
    });
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let first = args.next();
    if let Some(shape) = first.as_deref().and_then(|a| a.strip_prefix("--shape=")) {
        let cycles = args.next().and_then(|c| c.parse().ok()).unwrap_or(40);
        match shape {
            "bare" => bare(cycles),
            "extensions" => with_extensions(cycles),
            "extensions-threads" => with_extensions_fresh_thread(cycles),
            _ => served_versions(cycles),
        }
        return;
    }
    let cycles: usize = first.and_then(|c| c.parse().ok()).unwrap_or(40);
    println!("isolate churn, {cycles} cycles per shape, each shape in its own process (quickjs engine)");
    let me = std::env::current_exe().expect("own path");
    for shape in ["bare", "extensions", "extensions-threads", "served"] {
        let out =
            Command::new(&me).arg(format!("--shape={shape}")).arg(cycles.to_string()).output().expect("run shape");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            println!("{shape:<28} the process died: {}", out.status);
        }
    }
}
