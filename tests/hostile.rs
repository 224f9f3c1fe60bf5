//! The hostile-code corpus (`tests/hostile/*.js`) against one running node, while a canary
//! function is requested continuously: with its isolates in the server process, and in
//! isolate host processes (as `tern node` runs them by default).
//!
//! Each corpus file starts with its expected outcome:
//!   `// expect: 503 cpu_limit_exceeded`  status and `tern-error`
//!   `// expect: 200 answered`            status and exact body
//!   `// expect: 503 a|b`                 either code (where the engine leaves a choice)
//!   `// expect: cut`                     the head arrives, the body is cut off
//! and optionally `// limit: KEY = VALUE` lines (its `[limits]`) and `// kill: LIMIT` (a kill
//! record expected although the request itself succeeded, for work after the response).
//! Every hostile request must get its expected outcome, every limit breach must leave a
//! kill record naming the function, the limit and the request, the canary must answer
//! every request correctly (nothing a hostile function does to its own globals reaches it),
//! and the node must be alive at the end.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use http_body_util::BodyExt;
use support::{Project, Tern, empty, http1, repo_root};

const CANARY: &str = r#"
const original = { stringify: JSON.stringify, random: Math.random };
export default {
  fetch() {
    const leaks = [];
    if ("__pwned" in globalThis) leaks.push("globalThis");
    if (({}).__pwned !== undefined) leaks.push("Object.prototype");
    if ([].__pwned !== undefined) leaks.push("Array.prototype");
    if ("".__pwned !== undefined) leaks.push("String.prototype");
    if (Response.prototype.__pwned !== undefined) leaks.push("Response.prototype");
    if (Object.getOwnPropertyDescriptor(Object.prototype, "then")) leaks.push("Object.prototype.then");
    if (JSON.stringify !== original.stringify || JSON.stringify({ a: 1 }) !== '{"a":1}') leaks.push("JSON");
    if (Math.random !== original.random || Math.random() >= 1) leaks.push("Math");
    return new Response(leaks.length ? "leaked: " + leaks.join(",") : "canary ok");
  },
};
"#;

struct Case {
    name: String,
    expect: String,
    kill: Option<String>,
    project: Project,
}

fn corpus() -> Vec<Case> {
    let dir = repo_root().join("tests/hostile");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "js"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            let code = std::fs::read_to_string(&path).unwrap();
            let header = |key: &str| -> Vec<String> {
                code.lines()
                    .map_while(|l| l.strip_prefix("// "))
                    .filter_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
                    .collect()
            };
            let expect = header("expect:").pop().unwrap_or_else(|| panic!("{name}: no `// expect:` line"));
            let limits = header("limit:").join("\n");
            let kill = header("kill:").pop();
            let manifest = format!("name = \"{name}\"\nmain = \"index.js\"\n[limits]\n{limits}\n");
            Case { project: Project::with_manifest(&manifest, &[("index.js", &code)]), name, expect, kill }
        })
        .collect()
}

/// Runs one case; returns what went wrong, if anything, and the request id.
async fn run(tern: &Tern, case: &Case) -> (Result<(), String>, Option<String>) {
    let host = format!("{}.localhost", case.name);
    if case.expect.starts_with("413") {
        return (announce_large_upload(tern, &host, &case.expect).await, None);
    }
    let request = tern.request("GET", &host, "/").body(empty()).unwrap();
    let response = match tokio::time::timeout(support::PATIENCE, http1().request(request)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return (Err(format!("no response: {e}")), None),
        Err(_) => return (Err("no response in time".into()), None),
    };
    let status = response.status().as_u16();
    let id = response.headers().get("tern-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let code = response.headers().get("tern-error").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = tokio::time::timeout(support::PATIENCE, response.into_body().collect()).await;
    let outcome = match (case.expect.as_str(), body) {
        (_, Err(_)) => Err("the body never ended".to_string()),
        ("cut", Ok(Err(_))) => Ok(()),
        ("cut", Ok(Ok(b))) => {
            Err(format!("{status} with a complete body of {} bytes, expected a cut", b.to_bytes().len()))
        }
        (expect, Ok(body)) => {
            let text = body.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()).unwrap_or_default();
            let (want_status, rest) = expect.split_once(' ').unwrap_or((expect, ""));
            let want_status: u16 = want_status.parse().unwrap();
            let ok = status == want_status
                && if want_status == 200 {
                    code.is_empty() && (rest.is_empty() || text == rest)
                } else {
                    rest.split('|').any(|c| c == code)
                };
            if ok {
                Ok(())
            } else {
                Err(format!("got {status} {code:?}: {}", text.chars().take(300).collect::<String>()))
            }
        }
    };
    (outcome, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_corpus_gets_its_expected_errors_while_a_canary_keeps_answering() {
    corpus_against_a_canary(&[]).await;
}

/// The same with the isolates in two isolate host processes, as `tern node` runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_corpus_in_isolate_hosts_gets_its_expected_errors_while_a_canary_keeps_answering() {
    corpus_against_a_canary(&["--isolate-hosts", "2"]).await;
}

async fn corpus_against_a_canary(extra: &[&str]) {
    let cases = corpus();
    assert!(cases.len() >= 40, "the corpus has {} functions", cases.len());
    let canary = Project::new("canary", &[("index.js", CANARY)]);
    let mut paths: Vec<_> = cases.iter().map(|c| c.project.path()).collect();
    paths.push(canary.path());
    let tern = Arc::new(Tern::dev_with(&paths, extra));

    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let canary_loop = {
        let (tern, stop, served, failed) = (tern.clone(), stop.clone(), served.clone(), failed.clone());
        tokio::spawn(async move {
            let client = http1();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let request = tern.request("GET", "canary.localhost", "/").body(empty()).unwrap();
                let answer = tokio::time::timeout(support::PATIENCE, async {
                    let r = client.request(request).await.map_err(|e| e.to_string())?;
                    let status = r.status().as_u16();
                    let b = r.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
                    Ok::<_, String>((status, String::from_utf8_lossy(&b).into_owned()))
                })
                .await;
                match answer {
                    Ok(Ok((200, text))) if text == "canary ok" => served.fetch_add(1, Ordering::Relaxed),
                    other => {
                        failures.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            failures
        })
    };

    let results: Vec<_> = futures::stream::iter(cases.iter())
        .map(|case| {
            let tern = tern.clone();
            async move { (case, run(&tern, case).await) }
        })
        .buffer_unordered(4)
        .collect()
        .await;

    let mut problems = Vec::new();
    for (case, (outcome, id)) in &results {
        if let Err(e) = outcome {
            problems.push(format!("{}: expected {}, {e}", case.name, case.expect));
            continue;
        }
        let limit =
            case.expect.split_once(' ').map(|(_, code)| code).filter(|c| c.ends_with("_exceeded") && !c.contains('|'));
        if let Some(limit) = limit.or(case.kill.as_deref()) {
            let found = tern.wait_for_output(&format!("\"function\":\"{}\"", case.name)).await
                && has_kill_record(&tern, &case.name, limit, limit.ends_with("_exceeded") && case.kill.is_none(), id)
                    .await;
            if !found {
                problems.push(format!("{}: no kill record for {limit} (request {id:?})", case.name));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let canary_failures = canary_loop.await.unwrap();
    assert!(problems.is_empty(), "{} of {} cases went wrong:\n{}", problems.len(), results.len(), problems.join("\n"));
    assert!(
        canary_failures.is_empty(),
        "the canary failed {} times, answered {}: {:?}",
        failed.load(Ordering::Relaxed),
        served.load(Ordering::Relaxed),
        &canary_failures[..canary_failures.len().min(5)]
    );
    assert!(served.load(Ordering::Relaxed) > 0);
    assert_eq!(support::get(&tern, "canary.localhost", "/").await.text, "canary ok");
    let mut tern = Arc::into_inner(tern).expect("no other handle");
    assert!(tern.is_running(), "the node died");
}

/// Announces a 2 MiB upload and reads the answer before sending any of it, as a client
/// that waits for `100 Continue` would: the node refuses on the `Content-Length` alone.
async fn announce_large_upload(tern: &Tern, host: &str, expect: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(tern.addr).await.map_err(|e| e.to_string())?;
    let head = format!("POST / HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n\r\n", 2 << 20);
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(support::PATIENCE, stream.read(&mut buf))
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed without an answer".into());
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    let (status, code) = expect.split_once(' ').unwrap();
    if text.starts_with(&format!("http/1.1 {status}")) && text.contains(&format!("tern-error: {code}")) {
        Ok(())
    } else {
        Err(format!("got {}", text.lines().next().unwrap_or_default()))
    }
}

/// Waits for the kill record of `function` for `limit`, naming `request` when `named`.
async fn has_kill_record(tern: &Tern, function: &str, limit: &str, named: bool, request: &Option<String>) -> bool {
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    while tokio::time::Instant::now() < deadline {
        let found = tern.log_events().iter().any(|e| {
            e["target"] == "tern::kill"
                && e["function"] == function
                && e["limit"] == limit
                && (!named
                    || e["phase"] == "startup"
                    || request.as_ref().is_none_or(|id| {
                        e["requests"].as_str().is_some_and(|r| r.contains(id.as_str()))
                            || e["request"].as_str() == Some(id.as_str())
                    }))
        });
        if found {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}
