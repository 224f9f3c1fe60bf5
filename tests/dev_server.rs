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
