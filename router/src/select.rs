//! The choice: which node serves a request, and which ones to try next if it fails. A pure
//! function of what the router knows (each node's [`Tracker`]) and of the request.
//!
//! 1. Eligible nodes: up (see [`crate::health`]), in a region the function's placement
//!    allows, and in the region a `tern-region` header asks for (a debugging override that
//!    still respects placement). None: [`NoEligible`], which the router answers with 503
//!    `tern-error: no_eligible_node`.
//! 2. Each eligible node gets an estimated client round trip. A client at the router (no
//!    location known) is as far as the router measured ([`Tracker::rtt`]). A client
//!    elsewhere is as far as the latency model says ([`crate::geo`]) plus whatever the
//!    measurement shows beyond the model from the router (a congested or badly routed node
//!    stays slow for everyone).
//! 3. Nodes with room come first (a node reporting itself full or draining is used only
//!    when no other can be). Among those within a margin of the best estimate (2 ms plus
//!    10 % of it), the function's rendezvous hash picks one, so requests for a function go
//!    to the node that already holds it warm, and every router picks the same one. The
//!    rest follow by estimate: that is the failover order.

use std::time::Duration;

use crate::geo::Location;
use crate::health::Tracker;

/// A node as the choice sees it.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    pub name: &'a str,
    pub region: &'a str,
    pub location: Location,
    pub tracker: &'a Tracker,
}

/// What the request brings to the choice.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask<'a> {
    /// The function the request is for, when the router knows it (warmth hashing).
    pub function: Option<&'a str>,
    /// Regions its placement allows; empty: any.
    pub placement: &'a [String],
    /// Where the client is, when known.
    pub client: Option<Location>,
    /// A region asked for with the `tern-region` header.
    pub region: Option<&'a str>,
}

/// Where the router is, and how near counts as "as near".
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub router: Location,
    pub margin: Duration,
    pub margin_share: f64,
}

impl Policy {
    pub fn at(router: Location) -> Self {
        Self { router, margin: Duration::from_millis(2), margin_share: 0.1 }
    }
}

/// Why no node can take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoEligible {
    #[error("the router knows no nodes yet (is the control plane reachable, and has a node enrolled?)")]
    NoNodes,
    #[error("no node is up: {total} known, none answering probes")]
    AllDown { total: usize },
    #[error("no node is up in the regions the function's placement allows ({})", .0.join(", "))]
    Placement(Vec<String>),
    #[error("no node is up in region {0:?} (asked for with tern-region)")]
    Region(String),
}

/// The estimated client round trip to `node`, which must have been measured.
pub fn estimate(node: &NodeView, client: Option<Location>, policy: &Policy) -> Duration {
    let measured = node.tracker.rtt().unwrap_or(Duration::MAX);
    match client {
        None => measured,
        Some(client) => {
            let beyond_model = measured.saturating_sub(policy.router.modelled_rtt(node.location));
            client.modelled_rtt(node.location).saturating_add(beyond_model)
        }
    }
}

/// The function's preference for a node: the highest score wins (rendezvous hashing).
pub fn rendezvous_score(function: &str, node: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{function}\0{node}").as_bytes());
    u64::from_be_bytes(digest.as_ref()[..8].try_into().expect("8 bytes"))
}

/// Indexes into `nodes`, the chosen one first, then the failover order.
pub fn choose(nodes: &[NodeView], ask: &Ask, policy: &Policy) -> Result<Vec<usize>, NoEligible> {
    if nodes.is_empty() {
        return Err(NoEligible::NoNodes);
    }
    let allowed = |n: &NodeView| ask.placement.is_empty() || ask.placement.iter().any(|r| r == n.region);
    let asked = |n: &NodeView| ask.region.is_none_or(|r| r == n.region);
    let mut eligible: Vec<(usize, Duration, bool)> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.tracker.usable() && allowed(n) && asked(n))
        .map(|(i, n)| (i, estimate(n, ask.client, policy), n.tracker.load().has_room()))
        .collect();
    if eligible.is_empty() {
        let up: Vec<&NodeView> = nodes.iter().filter(|n| n.tracker.usable()).collect();
        return Err(if up.is_empty() {
            NoEligible::AllDown { total: nodes.len() }
        } else if !up.iter().any(|n| allowed(n)) {
            NoEligible::Placement(ask.placement.to_vec())
        } else {
            NoEligible::Region(ask.region.unwrap_or_default().to_string())
        });
    }
    // Room first, then nearest; the name settles exact ties, so the order is total.
    eligible.sort_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(&b.1)).then_with(|| nodes[a.0].name.cmp(nodes[b.0].name)));
    if let Some(function) = ask.function {
        let (best, room) = (eligible[0].1, eligible[0].2);
        let reach = best.saturating_add(policy.margin).saturating_add(best.mul_f64(policy.margin_share));
        let near = eligible.iter().take_while(|(_, estimate, r)| *r == room && *estimate <= reach).count();
        let warm = (0..near).max_by_key(|&k| rendezvous_score(function, nodes[eligible[k].0].name)).unwrap_or(0);
        let chosen = eligible.remove(warm);
        eligible.insert(0, chosen);
    }
    Ok(eligible.into_iter().map(|(i, _, _)| i).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Load;

    const MS: Duration = Duration::from_millis(1);

    /// A simulated cluster: named nodes with regions, locations and trackers.
    struct Cluster {
        nodes: Vec<(String, String, Location, Tracker)>,
        now: Duration,
    }

    impl Cluster {
        fn new() -> Self {
            Self { nodes: Vec::new(), now: Duration::ZERO }
        }

        /// A node that has answered probes with `rtt_ms`.
        fn node(mut self, name: &str, region: &str, location: Location, rtt_ms: u64) -> Self {
            let mut tracker = Tracker::default();
            tracker.probe_answered(Duration::from_millis(rtt_ms), Load::default(), self.now);
            self.nodes.push((name.into(), region.into(), location, tracker));
            self
        }

        fn tick(&mut self) {
            self.now += 250 * MS;
        }

        fn tracker(&mut self, name: &str) -> &mut Tracker {
            &mut self.nodes.iter_mut().find(|n| n.0 == name).unwrap().3
        }

        fn kill(&mut self, name: &str) {
            for _ in 0..crate::health::FALL {
                self.tick();
                let now = self.now;
                self.tracker(name).failed(now);
            }
        }

        fn answer(&mut self, name: &str, rtt_ms: u64) {
            self.tick();
            let now = self.now;
            self.tracker(name).probe_answered(Duration::from_millis(rtt_ms), Load::default(), now);
        }

        fn choose(&self, ask: &Ask) -> Result<Vec<&str>, NoEligible> {
            let views: Vec<NodeView> = self
                .nodes
                .iter()
                .map(|(name, region, location, tracker)| NodeView { name, region, location: *location, tracker })
                .collect();
            choose(&views, ask, &Policy::at(AMSTERDAM))
                .map(|order| order.into_iter().map(|i| self.nodes[i].0.as_str()).collect())
        }

        fn first(&self, ask: &Ask) -> &str {
            self.choose(ask).unwrap()[0]
        }
    }

    const AMSTERDAM: Location = Location { lat: 52.37, lon: 4.90 };
    const FRANKFURT: Location = Location { lat: 50.11, lon: 8.68 };
    const NEW_YORK: Location = Location { lat: 40.71, lon: -74.01 };
    const SINGAPORE: Location = Location { lat: 1.35, lon: 103.82 };

    fn three() -> Cluster {
        Cluster::new().node("ams", "eu-west", AMSTERDAM, 5).node("nyc", "us-east", NEW_YORK, 80).node(
            "sin",
            "ap-southeast",
            SINGAPORE,
            160,
        )
    }

    #[test]
    fn the_nearest_node_serves_and_the_rest_follow_by_distance() {
        assert_eq!(three().choose(&Ask::default()).unwrap(), ["ams", "nyc", "sin"]);
    }

    #[test]
    fn a_client_elsewhere_goes_to_the_node_nearest_to_it() {
        let cluster = three();
        let ask = |client| Ask { client: Some(client), ..Ask::default() };
        assert_eq!(cluster.first(&ask(Location::new(40.0, -75.0))), "nyc");
        assert_eq!(cluster.first(&ask(Location::new(3.0, 101.0))), "sin");
        assert_eq!(cluster.first(&ask(FRANKFURT)), "ams");
    }

    #[test]
    fn a_slow_path_counts_beyond_the_model() {
        // From Amsterdam the model says ~88 ms to New York. Measured at 80, a client in
        // Boston goes to nyc; measured at 200 (112 ms beyond the model: a congested or
        // badly routed node), the same client is better off crossing the Atlantic.
        let boston = Ask { client: Some(Location::new(42.36, -71.06)), ..Ask::default() };
        let fine = Cluster::new().node("ams", "eu-west", AMSTERDAM, 5).node("nyc", "us-east", NEW_YORK, 80);
        assert_eq!(fine.first(&boston), "nyc");
        let slow = Cluster::new().node("ams", "eu-west", AMSTERDAM, 5).node("nyc", "us-east", NEW_YORK, 200);
        assert_eq!(slow.first(&boston), "ams");
    }

    #[test]
    fn a_dead_node_is_skipped_and_comes_back_after_answering_twice() {
        let mut cluster = three();
        cluster.kill("ams");
        assert_eq!(cluster.choose(&Ask::default()).unwrap(), ["nyc", "sin"]);
        cluster.answer("ams", 5);
        assert_eq!(cluster.first(&Ask::default()), "nyc", "one answer is not enough");
        cluster.answer("ams", 5);
        assert_eq!(cluster.first(&Ask::default()), "ams");
    }

    #[test]
    fn a_flapping_node_does_not_win_back_traffic() {
        let mut cluster = three();
        cluster.kill("ams");
        for i in 0..10 {
            if i % 2 == 0 {
                cluster.answer("ams", 5)
            } else {
                cluster.kill("ams")
            }
            assert_eq!(cluster.first(&Ask::default()), "nyc", "step {i}");
        }
    }

    #[test]
    fn all_nodes_down_is_an_error_that_says_so() {
        let mut cluster = three();
        for name in ["ams", "nyc", "sin"] {
            cluster.kill(name);
        }
        assert_eq!(cluster.choose(&Ask::default()), Err(NoEligible::AllDown { total: 3 }));
        assert_eq!(Cluster::new().choose(&Ask::default()), Err(NoEligible::NoNodes));
    }

    #[test]
    fn placement_limits_the_regions() {
        let cluster = three();
        let placement = ["us-east".to_string(), "ap-southeast".to_string()];
        let ask = Ask { placement: &placement, ..Ask::default() };
        assert_eq!(cluster.choose(&ask).unwrap(), ["nyc", "sin"]);
        let pinned = ["ap-southeast".to_string()];
        let ask = Ask { placement: &pinned, client: Some(AMSTERDAM), ..Ask::default() };
        assert_eq!(cluster.choose(&ask).unwrap(), ["sin"], "pinned: only its region, however far");
    }

    #[test]
    fn placement_with_no_eligible_node_is_an_error_naming_the_regions() {
        let mut cluster = three();
        let pinned = ["sa-east".to_string()];
        let e = cluster.choose(&Ask { placement: &pinned, ..Ask::default() }).unwrap_err();
        assert_eq!(e, NoEligible::Placement(vec!["sa-east".into()]));
        assert!(e.to_string().contains("sa-east"), "{e}");
        cluster.kill("sin");
        let pinned = ["ap-southeast".to_string()];
        assert_eq!(
            cluster.choose(&Ask { placement: &pinned, ..Ask::default() }),
            Err(NoEligible::Placement(vec!["ap-southeast".into()]))
        );
    }

    #[test]
    fn the_region_header_overrides_distance_but_not_placement() {
        let cluster = three();
        assert_eq!(cluster.choose(&Ask { region: Some("us-east"), ..Ask::default() }).unwrap(), ["nyc"]);
        let e = cluster.choose(&Ask { region: Some("mars"), ..Ask::default() }).unwrap_err();
        assert_eq!(e, NoEligible::Region("mars".into()));
        let pinned = ["ap-southeast".to_string()];
        let e = cluster.choose(&Ask { region: Some("us-east"), placement: &pinned, ..Ask::default() }).unwrap_err();
        assert!(matches!(e, NoEligible::Region(_) | NoEligible::Placement(_)), "{e:?}");
    }

    #[test]
    fn near_ties_go_to_the_functions_warm_node_and_each_function_has_its_own() {
        // Two nodes in one city, 1 ms apart: within the margin, so the hash decides.
        let cluster = Cluster::new()
            .node("ams-1", "eu-west", AMSTERDAM, 5)
            .node("ams-2", "eu-west", AMSTERDAM, 6)
            .node("nyc", "us-east", NEW_YORK, 80);
        let mut firsts = std::collections::BTreeMap::new();
        for f in 0..200 {
            let function = format!("fn-{f}");
            let order = cluster.choose(&Ask { function: Some(&function), ..Ask::default() }).unwrap();
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], "nyc", "{function}: the far node is never preferred");
            let again = cluster.choose(&Ask { function: Some(&function), ..Ask::default() }).unwrap();
            assert_eq!(order, again, "{function}: the choice is stable");
            *firsts.entry(order[0].to_string()).or_insert(0) += 1;
        }
        // Functions spread over both near nodes (binomial: 200 draws, each side > 60 is
        // all but certain, and the hash is fixed, so this never flaps).
        assert!(firsts["ams-1"] > 60 && firsts["ams-2"] > 60, "{firsts:?}");
    }

    #[test]
    fn exact_ties_without_a_function_are_settled_by_name() {
        let cluster = Cluster::new().node("b", "eu", AMSTERDAM, 5).node("a", "eu", AMSTERDAM, 5);
        assert_eq!(cluster.choose(&Ask::default()).unwrap(), ["a", "b"]);
    }

    #[test]
    fn a_full_or_draining_node_is_used_last() {
        let mut cluster = three();
        let now = cluster.now;
        cluster.tracker("ams").probe_answered(5 * MS, Load { in_flight: 0, capacity: None, draining: true }, now);
        assert_eq!(cluster.choose(&Ask::default()).unwrap(), ["nyc", "sin", "ams"]);
        cluster.tracker("nyc").probe_answered(80 * MS, Load { in_flight: 8, capacity: Some(8), draining: false }, now);
        assert_eq!(cluster.choose(&Ask::default()).unwrap(), ["sin", "ams", "nyc"]);
    }
}
