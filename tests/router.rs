//! The router through the real binaries on a real topology: network namespaces joined by
//! veth pairs (a router namespace holding the control plane and `tern router`, and three
//! node namespaces), with a delaying relay in front of each node for link latency (5, 40
//! and 120 ms round trip; this kernel has no netem). Needs root: a topology that cannot be
//! built fails the test, saying why.

mod support;

use std::time::{Duration, Instant};

use support::netns::{DelayRelay, Topology};
use support::platform::{ControlPlane, Node, Router};
use support::*;

/// name, region, location, round trip added by its link.
const NODES: [(&str, &str, &str, u64); 3] = [
    ("near", "eu-west", "50.11,8.68", 5),
    ("mid", "eu-north", "64.15,-21.94", 40),
    ("far", "us-east", "40.71,-74.01", 120),
];
/// Where every node listens, each in its own namespace.
const NODE_PORT: u16 = 8000;
const AMSTERDAM: &str = "52.37,4.90";
const NEW_YORK: &str = "40.71,-74.01";
const REYKJAVIK: &str = "64.15,-21.94";

struct Platform {
    cp: ControlPlane,
    nodes: Vec<Node>,
    router: Router,
    _relays: Vec<DelayRelay>,
    // Last: namespaces go after the processes in them.
    _topology: Topology,
    _dir: tempfile::TempDir,
}

fn netns_exec(ns: &str) -> Vec<String> {
    ["ip", "netns", "exec", ns].map(String::from).to_vec()
}

/// The platform; `http2`: the router speaks HTTP/2 to nodes.
fn platform(http2: bool) -> Platform {
    let topology = Topology::build(NODES.len());
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start_wrapped(&netns_exec(topology.router_ns()), &dir.path().join("cp"), "0.0.0.0:0");
    let port: u16 = cp.url.rsplit(':').next().unwrap().parse().unwrap();
    // The CLI runs in the root namespace.
    cp.url = format!("http://{}:{port}", topology.router_ip());
    let (mut nodes, mut relays) = (Vec::new(), Vec::new());
    for (i, (name, region, location, rtt_ms)) in NODES.into_iter().enumerate() {
        let k = i + 1;
        let relay = DelayRelay::start(
            topology.router_ns(),
            (topology.router_ip_towards(k), 0).into(),
            (topology.node_ip(k), NODE_PORT).into(),
            Duration::from_millis(rtt_ms) / 2,
        );
        let args: Vec<String> = [
            "--log-format".into(),
            "json".into(),
            "node".into(),
            "--control-plane".into(),
            format!("http://{}:{port}", topology.router_ip_towards(k)),
            "--join-token".into(),
            cp.join_token.clone(),
            "--name".into(),
            name.into(),
            "--region".into(),
            region.into(),
            "--location".into(),
            location.into(),
            "--listen".into(),
            format!("{}:{NODE_PORT}", topology.node_ip(k)),
            "--advertise".into(),
            relay.addr().to_string(),
            "--data".into(),
            dir.path().join(name).display().to_string(),
            "--trusted-proxy".into(),
            format!("{}/32", topology.router_ip_towards(k)),
            // What a node reports of itself reaches the router.
            "--max-in-flight".into(),
            (1000 * k).to_string(),
        ]
        .to_vec();
        let node = Node::spawn_wrapped(netns_exec(topology.node_ns(k)), name, args)
            .unwrap_or_else(|out| panic!("tern node {name} did not start:\n{out}"));
        nodes.push(node);
        relays.push(relay);
    }
    let mut router_args = vec![];
    if http2 {
        router_args.push("--http2-to-nodes".to_string());
    }
    let router = Router::start_wrapped(
        &netns_exec(topology.router_ns()),
        &[
            router_args,
            vec![
                "--control-plane".into(),
                format!("http://127.0.0.1:{port}"),
                "--join-token".into(),
                cp.join_token.clone(),
                "--listen".into(),
                format!("{}:0", topology.router_ip()),
                "--location".into(),
                AMSTERDAM.into(),
                "--trusted-upstream".into(),
                format!("{}/32", topology.root_side_ip()),
            ],
        ]
        .concat(),
    );
    Platform { cp, nodes, router, _relays: relays, _topology: topology, _dir: dir }
}

fn deploy(cp: &ControlPlane, project: &Project) {
    let output = cp.tern(&["deploy", project.path().to_str().unwrap()]);
    assert!(output.status.success(), "deploy failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

fn function(name: &str, placement: &str, body: &str) -> Project {
    Project::with_manifest(
        &format!("name = \"{name}\"\nmain = \"index.js\"\n{placement}"),
        &[("index.js", &format!("export default {{ fetch(request) {{ return {body}; }} }};"))],
    )
}

/// A request through the router: `host`, and extra headers.
async fn through(router: &Router, method: &str, host: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let path = if host == "router.tern.invalid" { "/status" } else { "/" };
    let uri = format!("http://{}{path}", router.addr);
    let mut request = http::Request::builder().method(method).uri(uri).header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(&http1(), request.body(support::body(body.to_string())).unwrap()).await
}

fn served_by(answer: &Answer) -> &str {
    answer.header("tern-node").unwrap_or("(none)")
}

/// The router's view of the nodes.
async fn router_status(router: &Router) -> serde_json::Value {
    let answer = through(router, "GET", "router.tern.invalid", &[], "").await;
    assert_eq!(answer.status, 200, "router {} status: {}\n{}", router.addr, answer.text, router.output());
    answer.json()
}

/// Waits until the router reports node `name` in `health`; how long that took.
async fn until_health(p: &Platform, name: &str, health: &str) -> Duration {
    let started = Instant::now();
    loop {
        let status = router_status(&p.router).await;
        let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.iter().any(|n| n["name"] == name && n["health"] == health) {
            return started.elapsed();
        }
        assert!(started.elapsed() < PATIENCE, "node {name} never became {health}: {status}\n{}", p.router.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the router has the control plane's revision `revision`.
async fn until_revision(p: &Platform, revision: u64) {
    let started = Instant::now();
    while router_status(&p.router).await["revision"].as_u64() < Some(revision) {
        assert!(started.elapsed() < PATIENCE, "the router never learnt revision {revision}\n{}", p.router.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_sends_requests_to_the_nearest_healthy_node_and_fails_over() {
    nearest_placement_and_failover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_does_the_same_speaking_http2_to_nodes() {
    nearest_placement_and_failover(true).await;
}

async fn nearest_placement_and_failover(http2: bool) {
    let mut p = platform(http2);
    let echo = function("echo", "", "Response.json({ cf: request.cf, ip: request.headers.get('cf-connecting-ip') })");
    let pinned = function("pinned", "[placement]\nregion = \"eu-north\"\n", "new Response('pinned')");
    let nowhere = function("nowhere", "[placement]\nregion = \"ap-south\"\n", "new Response('never')");
    for project in [&echo, &pinned, &nowhere] {
        deploy(&p.cp, project);
    }
    for (name, ..) in NODES {
        until_health(&p, name, "up").await;
    }
    until_revision(&p, 3).await;
    // The router measured the links it goes through.
    let status = router_status(&p.router).await;
    for (k, (name, _, _, rtt_ms)) in NODES.into_iter().enumerate() {
        let node = status["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name).unwrap().clone();
        let measured = node["rtt_ms"].as_f64().unwrap();
        assert!(measured >= rtt_ms as f64, "{name}: the router measured {measured} ms over a {rtt_ms} ms link");
        assert_eq!(node["load"]["capacity"], 1000 * (k + 1), "{name} reports its capacity: {node}");
    }

    // Nearest by measurement: every request goes to the 5 ms node.
    for _ in 0..10 {
        let answer = through(&p.router, "GET", "echo.localhost", &[], "").await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(served_by(&answer), "near");
    }

    // A client placed by a trusted upstream goes to the node nearest to it, and the function
    // sees where it is (request.cf) and who it is.
    let answer = through(
        &p.router,
        "GET",
        "echo.localhost",
        &[("tern-client-location", NEW_YORK), ("tern-client-country", "US"), ("x-forwarded-for", "198.51.100.7")],
        "",
    )
    .await;
    assert_eq!(served_by(&answer), "far", "{}", answer.text);
    let seen = answer.json();
    assert_eq!(seen["cf"]["country"], "US");
    assert_eq!(seen["cf"]["colo"], "us-east");
    assert_eq!(seen["cf"]["latitude"], "40.7100");
    assert_eq!(seen["ip"], "198.51.100.7", "the node believes the router about the client");
    let answer = through(&p.router, "GET", "echo.localhost", &[("tern-client-location", REYKJAVIK)], "").await;
    assert_eq!(served_by(&answer), "mid");
    // The debugging override, within placement.
    let answer = through(&p.router, "GET", "echo.localhost", &[("tern-region", "us-east")], "").await;
    assert_eq!(served_by(&answer), "far");
    let answer = through(&p.router, "GET", "echo.localhost", &[("tern-region", "mars")], "").await;
    assert_eq!((answer.status, answer.header("tern-error")), (503, Some("no_eligible_node")), "{}", answer.text);

    // Placement: pinned to its region whoever asks; no node there is a clear 503.
    for place in [AMSTERDAM, NEW_YORK, REYKJAVIK] {
        let answer = through(&p.router, "GET", "pinned.localhost", &[("tern-client-location", place)], "").await;
        assert_eq!((answer.status, served_by(&answer)), (200, "mid"), "client at {place}");
    }
    let answer = through(&p.router, "GET", "nowhere.localhost", &[], "").await;
    assert_eq!((answer.status, answer.header("tern-error")), (503, Some("no_eligible_node")));
    assert!(answer.text.contains("ap-south"), "{}", answer.text);

    // Failover: requests flow every 10 ms while the near node is killed.
    let router_addr = p.router.addr.clone();
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let mut seen = Vec::new();
        let client = http1();
        while !*stop.borrow() {
            let request = http::Request::get(format!("http://{router_addr}/")).header("host", "echo.localhost");
            let sent = Instant::now();
            let answer = send(&client, request.body(empty()).unwrap()).await;
            seen.push((sent, answer.status, served_by(&answer).to_string(), answer.text));
            let _ = tokio::time::timeout(Duration::from_millis(10), stop.changed()).await;
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Requests sent once the process is gone cannot have been served by it.
    p.nodes[0].stop();
    let killed_at = Instant::now();
    let taken_out = until_health(&p, "near", "down").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_tx.send(true).unwrap();
    let seen = load.await.unwrap();
    let failed: Vec<_> = seen.iter().filter(|(_, status, ..)| *status != 200).collect();
    assert!(failed.is_empty(), "idempotent requests failed during failover: {failed:?}\n{}", p.router.output());
    let after: Vec<_> = seen.iter().filter(|(sent, ..)| *sent > killed_at).collect();
    assert!(after.len() >= 5, "too few requests after the kill: {}", after.len());
    assert!(after.iter().all(|(_, _, node, _)| node == "mid"), "after the kill: {after:?}");
    let before = seen.iter().filter(|(sent, ..)| *sent < killed_at).count();
    let retried = p.router.output().matches("proxying failed").count();
    eprintln!(
        "failover (http2 to nodes: {http2}): near taken out {taken_out:?} after the kill; {before} requests before and {} after, none failed; \
         {retried} attempts at the dead node retried (budget: 1 s to stop sending to it)",
        after.len()
    );

    // A request with a body goes to a live node.
    let answer = through(&p.router, "POST", "echo.localhost", &[], "payload").await;
    assert_eq!((answer.status, served_by(&answer)), (200, "mid"));

    // The near node comes back: requests return to it.
    p.nodes[0].restart();
    let back = until_health(&p, "near", "up").await;
    let answer = through(&p.router, "GET", "echo.localhost", &[], "").await;
    assert_eq!(served_by(&answer), "near", "{}", answer.text);
    eprintln!("the restarted near node served again {back:?} after its process was up");

    // Every node down: 503 no_eligible_node, not a hang.
    for node in &mut p.nodes {
        node.stop();
    }
    for (name, ..) in NODES {
        until_health(&p, name, "down").await;
    }
    let answer = through(&p.router, "GET", "echo.localhost", &[], "").await;
    assert_eq!((answer.status, answer.header("tern-error")), (503, Some("no_eligible_node")), "{}", answer.text);
}
