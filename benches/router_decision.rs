//! Router decision time: how long `tern-router` takes to pick the node for a request (route
//! lookup by host and path, client position, eligibility, estimates, rendezvous hashing), on a
//! simulated cluster of 20 nodes in 5 regions with 100 functions, 10 of them placed. No I/O.
//! Budget (`../shared/design/PERFORMANCE.md`): ≤ 20 µs per request.
//!
//!   cargo bench -p tern-router --bench decision

use std::time::{Duration, Instant};

use tern_router::directory::{Directory, NodeEntry, RawFunction, Topology};
use tern_router::geo::Location;
use tern_router::health::Load;

const BUDGET: Duration = Duration::from_micros(20);
const REGIONS: [(&str, (f64, f64)); 5] = [
    ("eu-west", (52.37, 4.90)),
    ("eu-north", (59.33, 18.07)),
    ("us-east", (40.71, -74.01)),
    ("us-west", (37.77, -122.42)),
    ("ap-southeast", (1.35, 103.82)),
];

fn main() {
    let directory = Directory::new(Location::new(52.37, 4.90));
    let nodes: Vec<NodeEntry> = (0..20)
        .map(|i| {
            let (region, (lat, lon)) = REGIONS[i % REGIONS.len()];
            NodeEntry {
                name: format!("node-{i}"),
                region: region.into(),
                location: (lat + i as f64 * 0.01, lon),
                listen: format!("10.0.0.{i}:8000"),
                connected: true,
            }
        })
        .collect();
    let functions = (0..100)
        .map(|i| RawFunction {
            name: format!("fn-{i}"),
            routes: vec![format!("fn-{i}.example.com/*")],
            placement: if i % 10 == 0 { vec!["us-east".into()] } else { vec![] },
        })
        .collect();
    directory.update(Topology { revision: 1, nodes: nodes.clone(), functions });
    for (i, node) in nodes.iter().enumerate() {
        let rtt = Duration::from_millis(5 + 10 * (i as u64 % 5));
        directory.track(&node.name, &node.listen, |t, at| t.probe_answered(rtt, Load::default(), at));
    }
    let clients = [None, Some(Location::new(40.0, -75.0)), Some(Location::new(3.0, 101.0))];
    let hosts: Vec<String> = (0..100).map(|i| format!("fn-{i}.example.com")).collect();

    // Warm up, then time batches of 1,000 decisions.
    let mut sink = 0usize;
    for i in 0..10_000 {
        sink += directory.route(&hosts[i % 100], "/", clients[i % 3], None).map_or(0, |r| r.nodes.len());
    }
    let mut per_decision = Vec::new();
    for batch in 0..300 {
        let started = Instant::now();
        for i in 0..1_000 {
            let k = batch * 1_000 + i;
            sink += directory.route(&hosts[k % 100], "/api", clients[k % 3], None).map_or(0, |r| r.nodes.len());
        }
        per_decision.push(started.elapsed() / 1_000);
    }
    per_decision.sort();
    let p50 = per_decision[per_decision.len() / 2];
    let p99 = per_decision[per_decision.len() * 99 / 100];
    let verdict = if p99 <= BUDGET { "met" } else { "MISSED" };
    println!("router decision, 20 nodes, 100 functions (batches of 1,000; {sink} candidates seen)");
    println!("  mean per decision: p50 {:.2} µs, p99 {:.2} µs over 300 batches", micros(p50), micros(p99));
    println!("  budget ≤ {:.0} µs per request: {verdict}", micros(BUDGET));
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
