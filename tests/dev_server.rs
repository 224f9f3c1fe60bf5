//! `tern dev`: where it listens, reloading on change, compile errors with file and line
//! while the server keeps running, single-file functions and clear startup errors.
mod support;

use std::process::Command;

use support::*;

#[tokio::test]
async fn serves_one_project_whatever_the_host_and_says_where() {
    let tern = Tern::dev(&[&repo_root().join("examples/hello")]);
    assert!(tern.output().contains(&"serving hello (version ".to_string()));
    for host in ["localhost", "anything.example", "127.0.0.1"] {
        let a = get(&tern, host, "/").await;
        assert_eq!((a.status, a.text.as_str(), a.header("x-hello")), (200, "hello", Some("world")));
    }
}

#[tokio::test]
async fn reloads_on_change_and_survives_a_syntax_error() {
    let p = Project::new("live", &[("index.js", r#"export default { fetch: () => new Response("v1") };"#)]);
    let tern = Tern::dev(&[p.path()]);
    assert_eq!(get(&tern, "x", "/").await.text, "v1");

    p.write("index.js", b"export default { fetch: () => new Response(\"v2\") };");
    assert!(tern.wait_for_output("reloaded live").await, "{}", tern.output());
    assert_eq!(get(&tern, "x", "/").await.text, "v2");

    p.write("index.js", b"export default {\n  fetch: () => new Response(\"v3\"\n};\n");
    // Reported on reload, before any request, with file and line.
    let mut reported = false;
    for _ in 0..200 {
        let out = tern.output();
        if out.contains("load_failed") && out.contains("index.js:3") {
            reported = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reported, "{}", tern.output());
    let a = get(&tern, "x", "/").await;
    assert_eq!((a.status, a.header("tern-error")), (500, Some("load_failed")));

    p.write("index.js", b"export default { fetch: () => new Response(\"v4\") };");
    let mut fixed = false;
    for _ in 0..200 {
        if get(&tern, "x", "/").await.text == "v4" {
            fixed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(fixed, "{}", tern.output());
}

#[tokio::test]
async fn a_single_file_is_a_function() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("My_Worker.mjs");
    std::fs::write(&file, r#"export default { fetch: (r) => new Response(new URL(r.url).pathname) };"#).unwrap();
    let tern = Tern::dev(&[&file]);
    assert!(tern.output().contains("serving my-worker"), "{}", tern.output());
    assert_eq!(get(&tern, "my-worker.localhost", "/p").await.text, "/p");
}

#[test]
fn a_broken_manifest_stops_startup_with_the_reason() {
    let p = Project::with_manifest("name = \"Bad Name\"\nmain = \"index.js\"\n", &[("index.js", "")]);
    let out = Command::new(env!("CARGO_BIN_EXE_tern")).args(["dev", "--port", "0"]).arg(p.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tern.toml") && stderr.contains("Bad Name"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");

    let missing = Command::new(env!("CARGO_BIN_EXE_tern")).args(["dev", "/nonexistent/fn"]).output().unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/fn"));
}

/// The path's error printed its cause in its message and again as its source: every
/// startup error said the same thing twice in one line.
#[test]
fn bug_a_startup_error_said_its_reason_twice() {
    let p =
        Project::with_manifest("name = \"fine\"\nmain = \"index.js\"\n[limits]\nmemory_mib = 2\n", &[("index.js", "")]);
    let out = Command::new(env!("CARGO_BIN_EXE_tern")).args(["dev", "--port", "0"]).arg(p.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("memory_mib = 2 is out of range").count(), 1, "{stderr}");
    assert!(stderr.contains("it must be between 8 and 1024"), "{stderr}");

    let missing = Command::new(env!("CARGO_BIN_EXE_tern")).args(["dev", "/nonexistent/fn"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.matches("/nonexistent/fn").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}

/// The engine leaks memory with every isolate it creates and destroys, and fails after a
/// few dozen of them in one process (with the Web API extensions loaded). `tern dev` used to
/// reload in place: after about 50 saves isolates stopped booting and the process
/// segfaulted. Each version now runs in a fresh server process.
#[tokio::test]
async fn bug_dev_server_survives_many_reloads() {
    let p = Project::new("churn", &[("index.js", r#"export default { fetch: () => new Response("v0") };"#)]);
    let tern = Tern::dev(&[p.path()]);
    for i in 1..=90 {
        p.write("index.js", format!("export default {{ fetch: () => new Response(\"v{i}\") }};").as_bytes());
        let deadline = std::time::Instant::now() + PATIENCE;
        while tern.output().matches("reloaded churn").count() < i {
            assert!(std::time::Instant::now() < deadline, "reload {i} not reported:\n{}", tern.output());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut answered = false;
        for _ in 0..400 {
            if get(&tern, "x", "/").await.text == format!("v{i}") {
                answered = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(answered, "reload {i} never answered:\n{}", tern.output());
    }
    assert_eq!(tern.output().matches("reloaded churn").count(), 90);
}

#[tokio::test]
async fn a_crashed_server_process_is_replaced() {
    let tern = Tern::dev(&[&repo_root().join("examples/hello")]);
    assert_eq!(get(&tern, "x", "/").await.text, "hello");
    let children = tern.child_pids();
    assert_eq!(children.len(), 1, "one server process");
    std::process::Command::new("kill").args(["-KILL", &children[0].to_string()]).status().unwrap();
    assert!(tern.wait_for_output("the server process stopped").await, "{}", tern.output());
    let mut back = false;
    for _ in 0..500 {
        if tern.child_pids().iter().any(|p| !children.contains(p)) {
            let a = get(&tern, "x", "/").await;
            if a.status == 200 {
                back = a.text == "hello";
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(back, "{}", tern.output());
}

#[tokio::test]
async fn requests_in_flight_during_a_reload_finish_on_the_old_version() {
    let slow = r#"export default { async fetch(request) {
        if (new URL(request.url).pathname === "/slow") {
            console.log("slow request started");
            await new Promise((r) => setTimeout(r, 1500));
        }
        return new Response("v1");
    } };"#;
    let p = Project::new("atomic", &[("index.js", slow)]);
    let tern = Tern::dev(&[p.path()]);
    assert_eq!(get(&tern, "x", "/").await.text, "v1");
    let in_flight = {
        let req = tern.request("GET", "x", "/slow").body(empty()).unwrap();
        tokio::spawn(async move { send(&http1(), req).await })
    };
    // Reload only once the slow request is inside the old version's isolate.
    assert!(tern.wait_for_output("slow request started").await, "{}", tern.output());
    p.write("index.js", br#"export default { fetch: () => new Response("v2") };"#);
    assert!(tern.wait_for_output("reloaded atomic").await, "{}", tern.output());
    assert_eq!(get(&tern, "x", "/").await.text, "v2", "new requests reach the new version");
    let old = in_flight.await.unwrap();
    assert_eq!((old.status, old.text.as_str()), (200, "v1"), "the request in flight finished on the old version");
}

/// A server process whose boot never finished (a module stuck at top level) used to outlive
/// a killed `tern dev` forever: it had not yet reached its watch on the parent.
#[tokio::test]
async fn bug_a_booting_server_process_does_not_outlive_tern_dev() {
    let p = Project::new("spins", &[("index.js", "for (;;) {}\nexport default {};\n")]);
    let mut dev = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["dev", "--port", "0"])
        .arg(p.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = dev.id();
    let children = || -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect()
    };
    let mut server = None;
    for _ in 0..500 {
        if let Some(&child) = children().first() {
            server = Some(child);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let server = server.expect("tern dev started a server process");
    // Let it get stuck in the function's top-level loop, then kill tern dev outright.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    dev.kill().unwrap();
    dev.wait().unwrap();
    let gone = || {
        !std::path::Path::new(&format!("/proc/{server}")).exists()
            || std::fs::read_to_string(format!("/proc/{server}/stat")).is_ok_and(|s| s.contains(") Z "))
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    while !gone() {
        assert!(std::time::Instant::now() < deadline, "server process {server} outlived tern dev");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
