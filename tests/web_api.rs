//! Every Web API group, exercised from inside a function served by the real binary.
mod support;

use support::*;

#[tokio::test]
async fn every_web_api_group_works_inside_a_function() {
    let tern = Tern::dev(&[&repo_root().join("tests/functions/web-api")]);
    let answer = get(&tern, "web-api.localhost", "/").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let results = answer.json();
    let failures: Vec<String> = results
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.as_str() != Some("ok"))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    assert!(failures.is_empty(), "failing groups:\n{}", failures.join("\n"));
    assert_eq!(results.as_object().unwrap().len(), 11, "every group ran: {results}");
}

#[tokio::test]
async fn console_goes_to_the_structured_log_tagged_with_the_function() {
    let tern = Tern::dev(&[&repo_root().join("tests/functions/web-api")]);
    assert_eq!(get(&tern, "web-api.localhost", "/?only=platform").await.json()["platform"], "ok");
    assert!(tern.wait_for_output("console error works").await);
    let events = tern.log_events();
    let log = events.iter().find(|e| e["message"].as_str().is_some_and(|m| m.contains("console works"))).unwrap();
    assert_eq!(log["target"], "tern::console");
    assert_eq!(log["function"], "web-api");
    assert_eq!(log["level"], "INFO");
    assert!(log["message"].as_str().unwrap().contains("{ n: 1 }"), "{log}");
    let err = events.iter().find(|e| e["message"].as_str().is_some_and(|m| m.contains("console error works"))).unwrap();
    assert_eq!(err["level"], "ERROR");
}

/// Runs a WPT data file inside the `wpt` function; returns (total cases, failing case names).
async fn run_wpt(tern: &Tern, suite: &str, data: &str) -> (u64, Vec<String>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/wpt").join(data);
    let json = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (WPT data lives in ../shared/data/wpt)", path.display()));
    let req = tern.request("POST", "wpt.localhost", &format!("/{suite}")).body(body(json)).unwrap();
    let a = send(&http1(), req).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let j = a.json();
    let failures = j["failures"].as_array().unwrap().iter().map(|f| format!("{} -> {}", f["name"], f["why"])).collect();
    (j["total"].as_u64().unwrap(), failures)
}

/// Compares a suite's failing cases with `tests/wpt_expectations/<suite>.txt`, one case name
/// a line, as Deno keeps its WPT expectations. A new failure fails the test, and so does a
/// listed case that now passes (the list must shrink with the engine). `TERN_WPT_UPDATE=1`
/// rewrites the file from the current run.
fn check_expectations(suite: &str, total: u64, failures: &[String]) {
    let file = repo_root().join("tests/wpt_expectations").join(format!("{suite}.txt"));
    let names: Vec<String> = failures.iter().map(|f| f.split(" -> ").next().unwrap().to_string()).collect();
    if std::env::var_os("TERN_WPT_UPDATE").is_some() {
        let mut text =
            format!("# WPT {suite}: cases expected to fail ({} of {total}). One JSON case name a line.\n", names.len());
        names.iter().for_each(|n| text.push_str(&format!("{n}\n")));
        std::fs::write(&file, text).unwrap();
    }
    let expected: Vec<String> = std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect();
    let new: Vec<_> =
        failures.iter().filter(|f| !expected.iter().any(|e| f.split(" -> ").next() == Some(e.as_str()))).collect();
    let fixed: Vec<_> = expected.iter().filter(|e| !names.contains(e)).collect();
    assert!(
        new.is_empty(),
        "{suite}: {} unexpected failures of {total}:\n{}",
        new.len(),
        new.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    assert!(
        fixed.is_empty(),
        "{suite}: now passing, remove from {}:\n{}",
        file.display(),
        fixed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test]
async fn wpt_url_conformance() {
    let tern = Tern::dev(&[&repo_root().join("tests/functions/wpt")]);
    for (suite, file, min_cases) in [
        ("url", "url/resources/urltestdata.json", 800),
        ("setters", "url/resources/setters_tests.json", 200),
        ("urlencoded", "url/resources/urlencoded-parser-data.json", 10),
        ("base64", "fetch/data-urls/resources/base64.json", 50),
    ] {
        let (total, failures) = run_wpt(&tern, suite, file).await;
        assert!(total >= min_cases, "{suite}: only {total} cases ran");
        check_expectations(suite, total, &failures);
    }
}

/// Every isolate is restored from one startup snapshot (runtime/build.rs); random state
/// baked into it would make every function's `Math.random()` (and deno_fetch's multipart
/// boundaries, drawn from the same generator) repeat the same sequence.
#[tokio::test]
async fn isolates_restored_from_the_startup_snapshot_draw_different_random_numbers() {
    let code = r#"export default { async fetch() {
        const boundary = new Response(new FormData()).headers.get("content-type");
        return Response.json({ random: [Math.random(), Math.random()], boundary, uuid: crypto.randomUUID() });
    } };"#;
    let (a, b) = (Project::new("dice-a", &[("index.js", code)]), Project::new("dice-b", &[("index.js", code)]));
    let tern = Tern::dev(&[a.path(), b.path()]);
    let (x, y) = (get(&tern, "dice-a.localhost", "/").await, get(&tern, "dice-b.localhost", "/").await);
    assert_eq!((x.status, y.status), (200, 200), "{} {}", x.text, y.text);
    let (x, y) = (x.json(), y.json());
    for what in ["random", "boundary", "uuid"] {
        assert_ne!(x[what], y[what], "two isolates drew the same {what}: {x} {y}");
    }
}
