//! Distribution through the real binary: a `tern control-plane` and `tern node`s on
//! loopback, each its own process, the nodes enrolled with the join token and subscribed
//! over QUIC with mutual TLS. What a node serves is checked by asking it over HTTP.
//!
//! Every scenario runs twice: with the control plane's embedded store (module `embedded`)
//! and with its state in a real etcd started for the test (module `etcd`). The relay's
//! scenarios (module `relay`) do not depend on the store and run once.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Instant;

use support::platform::{Backend, ControlPlane, Node, Relay};
use support::*;

fn ok(output: Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "tern failed:\n{out}{err}");
    out.into_owned()
}

fn project(name: &str, body: &str, routes: &str) -> Project {
    Project::with_manifest(
        &format!("name = \"{name}\"\nmain = \"index.js\"\nroutes = [{routes}]\n"),
        &[("index.js", &format!("export default {{ fetch() {{ return new Response({body:?}); }} }};"))],
    )
}

fn set_body(p: &Project, body: &str) {
    p.write("index.js", format!("export default {{ fetch() {{ return new Response({body:?}); }} }};").as_bytes());
}

/// GET `path` on the node with Host `host`.
async fn ask(node: &Node, host: &str, path: &str) -> Answer {
    let request = http::Request::get(format!("http://{}{path}", node.addr)).header("host", host);
    send(&http1(), request.body(empty()).unwrap()).await
}

/// Waits (at most [`PATIENCE`]) until `node` answers `want` for `host`.
async fn eventually_serves(node: &Node, host: &str, want: &str) {
    let started = Instant::now();
    loop {
        let answer = ask(node, host, "/").await;
        if answer.status == 200 && answer.text == want {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "node {} still answers {} {:?}, not {want:?}; it logged:\n{}",
            node.name,
            answer.status,
            answer.text,
            node.output()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A control plane and nodes a, b, c, each with its own data directory under `dir`.
fn platform(dir: &Path, backend: Backend) -> (ControlPlane, Vec<Node>) {
    let cp = ControlPlane::start_in(&dir.join("cp"), backend);
    let nodes = [("a", "eu-west"), ("b", "us-east"), ("c", "ap-south")]
        .map(|(name, region)| Node::start(&cp, name, region, &dir.join(name)))
        .into_iter()
        .collect();
    (cp, nodes)
}

/// Waits until `cp` sees every node in `nodes` connected.
async fn all_connected(cp: &ControlPlane, nodes: &[&Node]) {
    let started = Instant::now();
    loop {
        let status = ok(cp.tern(&["status"]));
        if nodes
            .iter()
            .all(|n| status.lines().any(|l| l.starts_with(&format!("{:<16} ", n.name)) && l.contains(" connected ")))
        {
            return;
        }
        assert!(started.elapsed() < PATIENCE, "not every node connected:\n{status}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn a_deploy_is_live_on_every_node_when_tern_deploy_returns_and_updates_and_rollbacks_follow(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (cp, nodes) = platform(dir.path(), backend);
    all_connected(&cp, &nodes.iter().collect::<Vec<_>>()).await;
    let shop = project("shop", "one", "\"shop.example.com/*\"");
    let path = shop.path().to_str().unwrap();

    let out = ok(cp.tern(&["deploy", path]));
    assert!(out.contains("deployed shop version 1 ") && out.contains("live on 3 nodes in "), "{out}");
    // `tern deploy` returned after every node acknowledged: no waiting here.
    for node in &nodes {
        let by_route = ask(node, "shop.example.com", "/cart").await;
        assert_eq!((by_route.status, by_route.text.as_str()), (200, "one"), "node {}", node.name);
        assert_eq!(ask(node, "shop.localhost", "/").await.text, "one");
        assert_eq!(ask(node, "other.example.com", "/").await.status, 404, "no route, no fallback on a node");
    }

    set_body(&shop, "two");
    let out = ok(cp.tern(&["deploy", path]));
    assert!(out.contains("version 2 ") && out.contains("live on 3 nodes"), "{out}");
    for node in &nodes {
        assert_eq!(ask(node, "shop.example.com", "/").await.text, "two", "node {}", node.name);
    }

    let out = ok(cp.tern(&["rollback", "shop"]));
    assert!(out.contains("now runs version 1 ") && out.contains("live on 3 nodes"), "{out}");
    for node in &nodes {
        assert_eq!(ask(node, "shop.example.com", "/").await.text, "one", "node {}", node.name);
    }

    let status = ok(cp.tern(&["status", "shop"]));
    for node in &nodes {
        let line = status.lines().find(|l| l.starts_with(&format!("{:<16} ", node.name))).expect(&status);
        assert!(line.contains(" connected ") && line.ends_with("shop@1"), "{status}");
    }
    assert!(status.contains("live on 3 connected nodes in "), "{status}");
}

async fn a_node_that_was_down_during_a_deploy_catches_up_when_it_returns(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (cp, mut nodes) = platform(dir.path(), backend);
    all_connected(&cp, &nodes.iter().collect::<Vec<_>>()).await;
    let api = project("api", "v1", "");
    ok(cp.tern(&["deploy", api.path().to_str().unwrap()]));

    nodes[2].stop();
    set_body(&api, "v2");
    let out = ok(cp.tern(&["deploy", api.path().to_str().unwrap()]));
    assert!(out.contains("live on 2 nodes") && out.contains("offline, will catch up when they reconnect: c"), "{out}");
    assert_eq!(ask(&nodes[0], "api.localhost", "/").await.text, "v2");

    nodes[2].restart();
    eventually_serves(&nodes[2], "api.localhost", "v2").await;
    all_connected(&cp, &nodes.iter().collect::<Vec<_>>()).await;
    let status = ok(cp.tern(&["status"]));
    assert!(status.contains("live on 3 connected nodes"), "{status}");
}

async fn nodes_keep_serving_with_the_control_plane_down_even_across_their_own_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (mut cp, mut nodes) = platform(dir.path(), backend);
    all_connected(&cp, &nodes.iter().collect::<Vec<_>>()).await;
    let site = project("site", "kept", "");
    ok(cp.tern(&["deploy", site.path().to_str().unwrap()]));

    cp.stop();
    for node in &nodes {
        assert_eq!(ask(node, "site.localhost", "/").await.text, "kept", "node {}", node.name);
    }
    nodes[0].restart();
    let answer = ask(&nodes[0], "site.localhost", "/").await;
    assert_eq!((answer.status, answer.text.as_str()), (200, "kept"), "served from disk:\n{}", nodes[0].output());

    // The control plane comes back: the nodes reconnect by themselves and follow again.
    cp.restart();
    all_connected(&cp, &nodes.iter().collect::<Vec<_>>()).await;
    set_body(&site, "after");
    let out = ok(cp.tern(&["deploy", site.path().to_str().unwrap()]));
    assert!(out.contains("live on 3 nodes"), "{out}");
    for node in &nodes {
        assert_eq!(ask(node, "site.localhost", "/").await.text, "after", "node {}", node.name);
    }
}

async fn a_corrupted_bundle_on_a_nodes_disk_is_never_served_and_is_fetched_again(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start_in(&dir.path().join("cp"), backend);
    let mut node = Node::start(&cp, "a", "eu-west", &dir.path().join("a"));
    all_connected(&cp, &[&node]).await;
    let f = project("f", "genuine", "");
    ok(cp.tern(&["deploy", f.path().to_str().unwrap()]));
    assert_eq!(ask(&node, "f.localhost", "/").await.text, "genuine");

    cp.stop();
    node.stop();
    let bundles = dir.path().join("a/bundles");
    let file = std::fs::read_dir(&bundles).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.windows(7).position(|w| w == b"genuine").expect("the code is in the bundle");
    bytes[at..at + 7].copy_from_slice(b"hacked!");
    std::fs::write(&file, bytes).unwrap();

    node.restart();
    let answer = ask(&node, "f.localhost", "/").await;
    assert_eq!(answer.status, 404, "the tampered function is not served: {}", answer.text);
    assert!(node.wait_for_output("does not match its id").await, "the node says why:\n{}", node.output());

    cp.restart();
    eventually_serves(&node, "f.localhost", "genuine").await;
}

async fn a_bundle_signed_by_another_control_plane_is_refused(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_in(&dir.path().join("cp"), backend);
    let mut node = Node::start(&cp, "a", "eu-west", &dir.path().join("a"));
    // A second control plane, with its own signing key, and a node of its own.
    let other = ControlPlane::start_in(&dir.path().join("other-cp"), backend);
    let mut foreign = Node::start(&other, "x", "eu-west", &dir.path().join("x"));
    all_connected(&other, &[&foreign]).await;
    let f = project("f", "foreign", "");
    ok(other.tern(&["deploy", f.path().to_str().unwrap()]));
    eventually_serves(&foreign, "f.localhost", "foreign").await;
    foreign.stop();

    // Node a is handed x's applied state and bundle, as a tampered disk would.
    node.stop();
    for entry in std::fs::read_dir(dir.path().join("x/bundles")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join("a/bundles").join(entry.file_name())).unwrap();
    }
    std::fs::copy(dir.path().join("x/state.json"), dir.path().join("a/state.json")).unwrap();
    drop(cp);
    node.restart();
    let answer = ask(&node, "f.localhost", "/").await;
    assert_eq!(answer.status, 404, "{}", answer.text);
    assert!(node.wait_for_output("signature is not valid").await, "the node says why:\n{}", node.output());
}

/// `tern node` arguments for `name`, enrolling with `token`.
fn node_args(cp: &ControlPlane, token: &str, name: &str, data: &Path) -> Vec<String> {
    let data = data.join(name);
    [
        "node",
        "--control-plane",
        &cp.url,
        "--join-token",
        token,
        "--name",
        name,
        "--region",
        "eu-west",
        "--location",
        "0,0",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

async fn created_join_tokens_enrol_nodes_until_they_expire(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_in(&dir.path().join("cp"), backend);
    let create = |ttl: &str| ok(cp.tern(&["token", "create", "--ttl", ttl])).trim().to_string();
    let (lasting, brief) = (create("1h"), create("1s"));
    assert_eq!(lasting.len(), 48, "{lasting}");
    assert_ne!(lasting, brief);
    let node = Node::spawn("fresh", node_args(&cp, &lasting, "fresh", dir.path())).expect("a valid token enrols");
    // Expiry is checked against the control plane's clock.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut late = Node::spawn("late", node_args(&cp, &brief, "late", dir.path())).expect("it starts, then is refused");
    assert!(!late.wait_exit().success());
    let output = late.output();
    assert!(output.contains("refused the enrolment (401)") && output.contains("expired"), "{output}");
    let status = ok(cp.tern(&["status"]));
    assert!(status.contains("fresh") && !status.contains("late"), "{status}");
    // Tokens are not creatable without the admin token, and their life is bounded.
    let refused = cp.tern_with_token(&["token", "create"], Some(&cp.join_token));
    assert!(!refused.status.success());
    let refused = cp.tern(&["token", "create", "--ttl", "31d"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("30 days"), "{refused:?}");
    drop(node);
}

async fn a_node_with_a_wrong_join_token_is_refused_and_says_why(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_in(&dir.path().join("cp"), backend);
    let args = node_args(&cp, "not-the-token", "intruder", dir.path());
    let mut node = Node::spawn("intruder", args).expect("it serves (nothing) until the refusal");
    assert!(!node.wait_exit().success());
    let output = node.output();
    assert!(output.contains("refused the enrolment (401)") && output.contains("token"), "{output}");
    let status = ok(cp.tern(&["status"]));
    assert!(!status.contains("intruder"), "{status}");
}

async fn a_webassembly_function_deploys_through_the_control_plane_like_any_other(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_in(&dir.path().join("cp"), backend);
    let node = Node::start(&cp, "a", "eu-west", &dir.path().join("a"));
    all_connected(&cp, &[&node]).await;
    let wasm = wat::parse_file(repo_root().join("tests/wasi/fresh-memory.wat")).unwrap();
    let p = Project::with_manifest("name = \"counter\"\nmain = \"app.wasm\"\n", &[]);
    p.write("app.wasm", &wasm);
    let out = ok(cp.tern(&["deploy", p.path().to_str().unwrap()]));
    assert!(out.contains("live on 1 node in "), "{out}");
    for _ in 0..3 {
        let answer = ask(&node, "counter.localhost", "/").await;
        assert_eq!((answer.status, answer.text.as_str()), (200, "2"), "a fresh instance per request");
    }
}

/// GET on the node with Host `host` and one extra header.
async fn ask_with(node: &Node, host: &str, header: (&str, &str)) -> String {
    let request = http::Request::get(format!("http://{}/", node.addr)).header("host", host).header(header.0, header.1);
    send(&http1(), request.body(empty()).unwrap()).await.text
}

async fn percentage_and_header_rollouts_split_requests_the_same_way_on_every_node(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (cp, nodes) = platform(dir.path(), backend);
    all_connected(&cp, &nodes.iter().collect::<Vec<_>>()).await;
    let app = project("app", "old", "");
    let path = app.path().to_str().unwrap();
    ok(cp.tern(&["deploy", path]));
    set_body(&app, "new");
    ok(cp.tern(&["deploy", path]));

    // 30% of users, keyed by the x-user header, get version 1 back as the candidate.
    let out = ok(cp.tern(&["rollout", "app", "--version", "1", "--percent", "30", "--sticky-header", "x-user"]));
    assert!(
        out.contains("version 1 for 30% of clients, version 2 for the rest") && out.contains("live on 3 nodes"),
        "{out}"
    );
    let mut candidates = 0;
    for i in 0..60 {
        let user = format!("user-{i}");
        let expected = if tern_proto::rollout::bucket("app", &user) < 30 { "old" } else { "new" };
        candidates += usize::from(expected == "old");
        for node in &nodes {
            assert_eq!(ask_with(node, "app.localhost", ("x-user", &user)).await, expected, "{user} on {}", node.name);
        }
    }
    assert!((6..=30).contains(&candidates), "about 30% of 60 users: {candidates}");

    // Header targeting alone: only requests that carry it see the candidate.
    let out = ok(cp.tern(&["rollout", "app", "--version", "1", "--percent", "0", "--header", "x-canary=yes"]));
    assert!(out.contains("0% of clients and requests with x-canary: yes"), "{out}");
    for node in &nodes {
        assert_eq!(ask_with(node, "app.localhost", ("x-canary", "yes")).await, "old");
        assert_eq!(ask_with(node, "app.localhost", ("x-canary", "no")).await, "new");
        assert_eq!(ask(node, "app.localhost", "/").await.text, "new");
    }

    // Ending it, and what is refused.
    let out = ok(cp.tern(&["rollout", "app", "--percent", "0"]));
    assert!(out.contains("runs version 2 for everyone"), "{out}");
    for node in &nodes {
        assert_eq!(ask_with(node, "app.localhost", ("x-canary", "yes")).await, "new");
    }
    let refused = cp.tern(&["rollout", "app", "--version", "2", "--percent", "10"]);
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && e.contains("runs already"), "{e}");
    let refused = cp.tern(&["rollout", "app", "--version", "1", "--percent", "101"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("percent must be 0 to 100"));
}

async fn secrets_reach_the_function_as_env_and_nowhere_else(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_in(&dir.path().join("cp"), backend);
    let node = Node::start(&cp, "a", "eu-west", &dir.path().join("a"));
    all_connected(&cp, &[&node]).await;
    let p = Project::with_manifest(
        "name = \"vault\"\nmain = \"index.js\"\n[vars]\nGREETING = \"hello\"\n",
        &[("index.js", "export default { fetch(r, env) { return new Response(`${env.GREETING} ${env.API_KEY}`); } };")],
    );
    ok(cp.tern(&["deploy", p.path().to_str().unwrap()]));
    assert_eq!(ask(&node, "vault.localhost", "/").await.text, "hello undefined");

    let put = |value: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["secret", "put", "vault", "API_KEY"])
            .env("TERN_CONTROL_PLANE", &cp.url)
            .env("TERN_TOKEN", &cp.token)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{value}\n").as_bytes()).unwrap();
        ok(child.wait_with_output().unwrap())
    };
    let out = put("s3cr3t-value-one");
    assert!(out.contains("secret API_KEY set for vault") && out.contains("live on 1 node"), "{out}");
    assert_eq!(ask(&node, "vault.localhost", "/").await.text, "hello s3cr3t-value-one");
    put("s3cr3t-value-two");
    assert_eq!(ask(&node, "vault.localhost", "/").await.text, "hello s3cr3t-value-two");

    assert_eq!(ok(cp.tern(&["secret", "list", "vault"])).trim(), "API_KEY");
    for listing in [
        ok(cp.tern(&["status"])),
        ok(cp.tern(&["versions", "vault"])),
        cp.output.lock().unwrap().clone(),
        node.output(),
    ] {
        assert!(!listing.contains("s3cr3t"), "a secret leaked:\n{listing}");
    }
    let store = match &cp.etcd {
        None => std::fs::read(dir.path().join("cp/state.redb")).unwrap(),
        Some(etcd) => etcd.get_prefix("/tern/").into_bytes(),
    };
    assert!(store.windows(13).any(|w| w == b"vault/API_KEY"), "the secret is where the check looks");
    assert!(!store.windows(6).any(|w| w == b"s3cr3t"), "the store holds secrets sealed, not in the clear");
    let refused = cp.tern(&["secret", "list", "nope"]);
    assert!(refused.status.success(), "an unknown function simply has none");
    let mut bad = std::process::Command::new(env!("CARGO_BIN_EXE_tern"));
    let bad =
        bad.args(["secret", "put", "vault", "1BAD"]).env("TERN_CONTROL_PLANE", &cp.url).env("TERN_TOKEN", &cp.token);
    let out = bad.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret name \"1BAD\""), "{out:?}");
}

/// `tern ARGS` against the control plane addresses `urls` (comma-separated) as admin.
fn tern_at(urls: &str, token: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .env("TERN_CONTROL_PLANE", urls)
        .env("TERN_TOKEN", token)
        .output()
        .expect("run tern")
}

#[tokio::test]
async fn replicas_sharing_etcd_keep_deploying_and_lose_nothing_when_one_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = support::etcd::Etcd::start(&dir.path().join("etcd"));
    let mut a = ControlPlane::start_with_store(&dir.path().join("cp-a"), "127.0.0.1:0", &etcd.url);
    let b = ControlPlane::start_with_store(&dir.path().join("cp-b"), "127.0.0.1:0", &etcd.url);
    // The second replica took the first one's keys from etcd: one platform.
    for key in ["admin-token", "join-token", "signing-key.pk8", "ca.pem", "ca-key.pem", "secrets-key"] {
        let read = |cp: &str| std::fs::read(dir.path().join(cp).join(key)).unwrap();
        assert_eq!(read("cp-a"), read("cp-b"), "{key} is shared");
    }
    let (ab, ba) = (format!("{},{}", a.url, b.url), format!("{},{}", b.url, a.url));
    // Nodes n1 and n2 prefer replica A, n3 prefers B.
    let nodes: Vec<Node> = [("n1", &ab), ("n2", &ab), ("n3", &ba)]
        .iter()
        .map(|(name, urls)| Node::start_at(urls, &a.join_token, name, "eu-west", &dir.path().join(name)))
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    // Each replica sees every node, including those connected to the other.
    all_connected(&a, &all).await;
    all_connected(&b, &all).await;

    let site = project("site", "v1", "\"site.example.com/*\"");
    let path = site.path().to_str().unwrap();
    let out = ok(a.tern(&["deploy", path]));
    assert!(out.contains("version 1 ") && out.contains("live on 3 nodes"), "acks through B count on A: {out}");
    set_body(&site, "v2");
    let out = ok(b.tern(&["deploy", path]));
    assert!(out.contains("version 2 ") && out.contains("live on 3 nodes"), "{out}");
    for node in &nodes {
        assert_eq!(ask(node, "site.example.com", "/").await.text, "v2", "node {}", node.name);
    }

    // Two deploys of the same function at the same moment, one through each replica: both
    // are recorded, under different version numbers.
    let racing: Vec<Project> =
        ["race-a", "race-b"].iter().map(|body| project("site", body, "\"site.example.com/*\"")).collect();
    let (pa, pb) = (racing[0].path().to_owned(), racing[1].path().to_owned());
    let (ua, ub, token) = (a.url.clone(), b.url.clone(), a.token.clone());
    let t = token.clone();
    let first = std::thread::spawn(move || tern_at(&ua, &t, &["deploy", "--no-wait", pa.to_str().unwrap()]));
    let second = tern_at(&ub, &token, &["deploy", "--no-wait", pb.to_str().unwrap()]);
    let (first, second) = (ok(first.join().unwrap()), ok(second));
    let mut raced: Vec<&str> =
        [&first, &second].iter().map(|o| o.split("version ").nth(1).unwrap().split(' ').next().unwrap()).collect();
    raced.sort();
    assert_eq!(raced, ["3", "4"], "{first}{second}");

    // Deploys through "A,B" while A is killed half-way: every one succeeds.
    let mut deployed = Vec::new();
    for n in 5..=9 {
        set_body(&site, &format!("v{n}"));
        let wait = if n == 6 { "--no-wait" } else { "--timeout=30s" };
        let out = ok(tern_at(&ab, &a.token, &["deploy", wait, path]));
        assert!(out.contains(&format!("deployed site version {n} ")), "{out}");
        deployed.push(n);
        if n == 6 {
            // Committed through A, which dies before its nodes could be told.
            a.stop();
        }
    }
    // The nodes A served move to B by themselves and catch up.
    all_connected(&b, &all).await;
    for node in &nodes {
        eventually_serves(node, "site.example.com", "v9").await;
    }
    set_body(&site, "v10");
    let out = ok(tern_at(&ab, &a.token, &["deploy", path]));
    assert!(out.contains("version 10 ") && out.contains("live on 3 nodes"), "{out}");

    // Nothing lost: every version, in order, and the same from a replica that comes back.
    let versions = ok(b.tern(&["versions", "site"]));
    let numbers: Vec<u32> =
        versions.lines().filter_map(|l| l.split_whitespace().next()?.trim_start_matches('*').parse().ok()).collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<_>>(), "{versions}");
    a.restart();
    assert_eq!(ok(a.tern(&["versions", "site"])), versions);
    let status = ok(a.tern(&["status"]));
    assert!(status.contains("live on 3 connected nodes"), "{status}");
    let revision = etcd.get_prefix("/tern/revision");
    assert_eq!(revision.lines().nth(1), Some("10"), "one revision per deploy, none skipped: {revision}");
}

#[tokio::test]
async fn a_control_plane_says_when_etcd_is_unreachable_or_holds_another_platforms_keys() {
    let dir = tempfile::tempdir().unwrap();
    let tern = |data: &str, store: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["control-plane", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join(data))
            .args(["--store", store])
            .output()
            .unwrap()
    };
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = tern("lonely", &format!("etcd://127.0.0.1:{port}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("127.0.0.1:{port}")) && err.contains("etcd"), "{err}");

    let etcd = support::etcd::Etcd::start(&dir.path().join("etcd"));
    let first = ControlPlane::start_with_store(&dir.path().join("cp"), "127.0.0.1:0", &etcd.url);
    ok(first.tern(&["deploy", project("shop", "one", "").path().to_str().unwrap()]));
    // A data directory made by another control plane (its own keys) cannot join.
    drop(ControlPlane::start(&dir.path().join("other")));
    let out = tern("other", &etcd.url);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("signing-key.pk8 differs") && err.contains("start this replica with an empty --data"),
        "{err}"
    );
    // Another prefix is another platform: that directory is welcome there.
    let staging =
        ControlPlane::start_with_store(&dir.path().join("other"), "127.0.0.1:0", &format!("{}/staging", etcd.url));
    assert!(!ok(staging.tern(&["status"])).contains("shop"));
    assert!(ok(first.tern(&["status"])).contains("shop"));
}

#[tokio::test]
async fn with_etcd_down_deploys_fail_saying_so_and_nodes_keep_serving_until_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = support::etcd::Etcd::start(&dir.path().join("etcd"));
    let cp = ControlPlane::start_with_store(&dir.path().join("cp"), "127.0.0.1:0", &etcd.url);
    let node = Node::start(&cp, "a", "eu-west", &dir.path().join("a"));
    all_connected(&cp, &[&node]).await;
    let site = project("site", "one", "");
    let path = site.path().to_str().unwrap();
    ok(cp.tern(&["deploy", path]));

    etcd.stop();
    set_body(&site, "two");
    let out = cp.tern(&["deploy", path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("store_failed") && err.contains("etcd"), "{err}");
    assert_eq!(ask(&node, "site.localhost", "/").await.text, "one", "the node serves what it has");

    etcd.restart();
    let out = ok(cp.tern(&["deploy", path]));
    assert!(out.contains("version 2 ") && out.contains("live on 1 node"), "{out}");
    assert_eq!(ask(&node, "site.localhost", "/").await.text, "two");
}

#[tokio::test]
async fn a_replica_whose_lease_is_lost_publishes_its_nodes_again() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = support::etcd::Etcd::start(&dir.path().join("etcd"));
    let cp = ControlPlane::start_with_store(&dir.path().join("cp"), "127.0.0.1:0", &etcd.url);
    let node = Node::start(&cp, "a", "eu-west", &dir.path().join("a"));
    all_connected(&cp, &[&node]).await;
    let lease = std::fs::read_to_string(dir.path().join("cp/etcd-lease")).unwrap();
    assert!(
        etcd.get_prefix("/tern/live/").contains(&format!("/tern/live/a/{:x}", lease.trim().parse::<i64>().unwrap()))
    );
    // As if etcd had been out of reach longer than the lease: the records go with it.
    let revoke = std::process::Command::new("etcdctl")
        .args(["--endpoints", &format!("http://127.0.0.1:{}", etcd.client_port), "lease", "revoke"])
        .arg(format!("{:x}", lease.trim().parse::<i64>().unwrap()))
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    assert!(revoke.status.success(), "{revoke:?}");
    let started = Instant::now();
    loop {
        let renewed = std::fs::read_to_string(dir.path().join("cp/etcd-lease")).unwrap();
        if renewed != lease && etcd.get_prefix("/tern/live/").contains("/tern/live/a/") {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the node's record was not published again:\n{}",
            cp.output.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Each scenario once per store.
/// Waits (at most [`PATIENCE`]) until `tern status` has a line for `name` for which `want`
/// holds; that line.
async fn status_line(cp: &ControlPlane, name: &str, want: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let status = ok(cp.tern(&["status"]));
        if let Some(line) = status.lines().find(|l| l.starts_with(&format!("{name:<16} ")) && want(l)) {
            return line.to_string();
        }
        assert!(started.elapsed() < PATIENCE, "no status line for {name} as wanted:\n{status}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The column `VIA` of a node's status line: `direct`, a relay's name, or `-`.
fn via(line: &str) -> &str {
    line.split_whitespace().nth(3).unwrap_or_default()
}

mod relay {
    use super::*;

    #[tokio::test]
    async fn a_relay_feeds_the_nodes_below_it_and_the_control_plane_knows_what_each_serves() {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = ControlPlane::start(&dir.path().join("cp"));
        let mut relay = Relay::start(&cp, "r1", &dir.path().join("r1"));
        let mut nodes: Vec<Node> = ["a", "b", "c"]
            .map(|name| Node::start_via(&cp, &relay, name, "eu-west", &dir.path().join(name)))
            .into_iter()
            .collect();
        for node in &nodes {
            status_line(&cp, &node.name, |l| l.contains(" connected ") && via(l) == "r1").await;
        }
        let relay_line = status_line(&cp, "r1", |l| l.contains(" connected ")).await;
        assert!(relay_line.ends_with(&relay.addr), "{relay_line}");

        // Deploy, update and rollback: each is acknowledged by the nodes through the relay.
        let shop = project("shop", "one", "\"shop.example.com/*\"");
        let path = shop.path().to_str().unwrap();
        let out = ok(cp.tern(&["deploy", path]));
        assert!(out.contains("live on 3 nodes in "), "the relay is no node, and its nodes count: {out}");
        for node in &nodes {
            assert_eq!(ask(node, "shop.example.com", "/").await.text, "one", "node {}", node.name);
            let subscribed = node.output().lines().any(|l| l.contains("subscribed") && l.contains(&relay.addr));
            assert!(subscribed, "node {} subscribed at the relay:\n{}", node.name, node.output());
        }
        set_body(&shop, "two");
        let out = ok(cp.tern(&["deploy", path]));
        assert!(out.contains("version 2 ") && out.contains("live on 3 nodes"), "{out}");
        for node in &nodes {
            assert_eq!(ask(node, "shop.example.com", "/").await.text, "two", "node {}", node.name);
        }
        let out = ok(cp.tern(&["rollback", "shop"]));
        assert!(out.contains("now runs version 1 ") && out.contains("live on 3 nodes"), "{out}");
        let status = ok(cp.tern(&["status", "shop"]));
        for node in &nodes {
            let line = status.lines().find(|l| l.starts_with(&format!("{:<16} ", node.name))).expect(&status);
            assert!(line.ends_with("shop@1") && via(line) == "r1", "{status}");
        }
        assert!(status.contains("live on 3 connected nodes in "), "{status}");
        for node in &nodes {
            assert_eq!(ask(node, "shop.example.com", "/").await.text, "one", "node {}", node.name);
        }

        // The relay dies: its nodes follow the control plane directly, and deploys go on.
        relay.stop();
        for node in &nodes {
            status_line(&cp, &node.name, |l| l.contains(" connected ") && via(l) == "direct").await;
        }
        set_body(&shop, "three");
        let out = ok(cp.tern(&["deploy", path]));
        assert!(out.contains("version 3 ") && out.contains("live on 3 nodes"), "{out}");

        // It comes back and catches up; then, with the control plane down, it serves what it
        // keeps, across its own restart, to a node that lost its whole state.
        relay.restart();
        let revision = status_line(&cp, "a", |_| true).await.split_whitespace().nth(4).unwrap().to_string();
        status_line(&cp, "r1", |l| l.contains(" connected ") && l.split_whitespace().nth(3) == Some(&revision)).await;
        cp.stop();
        relay.restart();
        nodes[2].stop();
        std::fs::remove_file(dir.path().join("c/state.json")).unwrap();
        std::fs::remove_dir_all(dir.path().join("c/bundles")).unwrap();
        nodes[2].restart();
        eventually_serves(&nodes[2], "shop.example.com", "three").await;
        for node in &nodes[..2] {
            assert_eq!(ask(node, "shop.example.com", "/").await.text, "three", "node {}", node.name);
        }
        assert!(relay.output().contains("node connected"), "{}", relay.output());
    }

    #[tokio::test]
    async fn a_relay_drops_a_node_whose_enrolment_was_replaced_and_no_node_takes_a_relays_name() {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(&dir.path().join("cp"));
        let relay = Relay::start(&cp, "r1", &dir.path().join("r1"));
        let mut old = Node::start_via(&cp, &relay, "a", "eu-west", &dir.path().join("a"));
        status_line(&cp, "a", |l| l.contains(" connected ") && via(l) == "r1").await;

        // Another machine enrols as "a": the old one's certificate is no current enrolment,
        // and the control plane has the relay turn it away when it comes back.
        let _new = Node::start(&cp, "a", "eu-west", &dir.path().join("a2"));
        old.restart();
        let started = Instant::now();
        while !relay.output().contains("the control plane refused a node below this relay") {
            assert!(started.elapsed() < PATIENCE, "the relay never dropped the old node:\n{}", relay.output());
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(relay.output().contains("belongs to no enrolled node"), "{}", relay.output());
        let line = status_line(&cp, "a", |_| true).await;
        assert_eq!(via(&line), "direct", "the control plane counts only the current \"a\": {line}");

        // A node cannot enrol under a relay's name (it starts, then stops saying why).
        let args = Node::args(&cp.url, &cp.join_token, "r1", "eu-west", &dir.path().join("n"));
        let output = match Node::spawn("r1", args) {
            Ok(mut taken) => {
                assert!(!taken.wait_exit().success());
                taken.output()
            }
            Err(output) => output,
        };
        assert!(output.contains("\"r1\" is enrolled as a relay"), "{output}");
    }
}

macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Embedded).await
            })*
        }
        mod etcd {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Etcd).await
            })*
        }
    };
}

on_every_store!(
    a_deploy_is_live_on_every_node_when_tern_deploy_returns_and_updates_and_rollbacks_follow,
    a_node_that_was_down_during_a_deploy_catches_up_when_it_returns,
    nodes_keep_serving_with_the_control_plane_down_even_across_their_own_restart,
    a_corrupted_bundle_on_a_nodes_disk_is_never_served_and_is_fetched_again,
    a_bundle_signed_by_another_control_plane_is_refused,
    created_join_tokens_enrol_nodes_until_they_expire,
    a_node_with_a_wrong_join_token_is_refused_and_says_why,
    a_webassembly_function_deploys_through_the_control_plane_like_any_other,
    percentage_and_header_rollouts_split_requests_the_same_way_on_every_node,
    secrets_reach_the_function_as_env_and_nowhere_else,
);
