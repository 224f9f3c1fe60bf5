//! What the control plane knows of its nodes while they are connected: which revision each
//! has applied and when, what it refused, and from that how far a revision has spread and
//! how long it took ([`progress`], a pure function of the fleet's state). Enrolment records
//! live in the store; this state is rebuilt as nodes reconnect. Replicas sharing a store
//! publish their part of it there, and [`merge`] puts the parts together.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tern_proto::distribution::NodeInfo;

/// Acknowledgements remembered per node, enough for recent deploys.
const ACKS_KEPT: usize = 256;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLive {
    pub info: Option<NodeInfo>,
    pub connected: bool,
    /// The relay the node is connected through, if not directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Which connection is the node's current one (a new one replaces it).
    #[serde(skip)]
    pub session: u64,
    /// The revision the node serves.
    pub applied: u64,
    /// The last update it refused, and why.
    pub refused: Option<(u64, String)>,
    /// (revision, when it was applied in ms since the epoch), oldest first.
    pub acks: VecDeque<(u64, u64)>,
}

#[derive(Default)]
pub struct Fleet {
    nodes: Mutex<BTreeMap<String, NodeLive>>,
}

impl Fleet {
    /// A node's new connection; returns its session, which [`Fleet::disconnected`] takes.
    pub fn connected(&self, info: NodeInfo, applied: u64, now_ms: u64) -> u64 {
        self.connected_via(info, applied, now_ms, None)
    }

    /// A node's new connection through relay `via` (or directly, with `None`).
    pub fn connected_via(&self, info: NodeInfo, applied: u64, now_ms: u64, via: Option<String>) -> u64 {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let node = nodes.entry(info.name.clone()).or_default();
        node.info = Some(info);
        node.connected = true;
        node.via = via;
        node.session += 1;
        record(node, applied, now_ms);
        node.session
    }

    /// The end of connection `session`: a connection that a newer one replaced (the node
    /// restarted before the old one timed out) changes nothing.
    pub fn disconnected(&self, name: &str, session: u64) {
        if let Some(node) = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).get_mut(name)
            && node.session == session
        {
            node.connected = false;
        }
    }

    pub fn applied(&self, name: &str, revision: u64, now_ms: u64) {
        if let Some(node) = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).get_mut(name) {
            record(node, revision, now_ms);
            node.refused = None;
        }
    }

    pub fn refused(&self, name: &str, revision: u64, reason: String) {
        if let Some(node) = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).get_mut(name) {
            node.refused = Some((revision, reason));
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, NodeLive> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What this replica knows of node `name`.
    pub fn get(&self, name: &str) -> Option<NodeLive> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }
}

/// This replica's view of the nodes (`local`) joined with what other replicas published
/// (`shared`): a node is described by the replica it is connected to; when it is connected
/// to none (or, for a moment while it moves, to two), by the entry that heard from it last.
pub fn merge(local: BTreeMap<String, NodeLive>, shared: BTreeMap<String, NodeLive>) -> BTreeMap<String, NodeLive> {
    let mut out = shared;
    for (name, mine) in local {
        add(&mut out, name, mine);
    }
    out
}

/// Adds `live` to `nodes` unless the entry there for `name` says more (see [`merge`]).
pub fn add(nodes: &mut BTreeMap<String, NodeLive>, name: String, live: NodeLive) {
    let rank = |n: &NodeLive| (n.connected, n.acks.back().map_or(0, |(_, ms)| *ms));
    if nodes.get(&name).is_none_or(|there| rank(there) <= rank(&live)) {
        nodes.insert(name, live);
    }
}

fn record(node: &mut NodeLive, revision: u64, now_ms: u64) {
    if revision > node.applied || node.acks.is_empty() {
        node.acks.push_back((revision, now_ms));
        if node.acks.len() > ACKS_KEPT {
            node.acks.pop_front();
        }
    }
    node.applied = revision;
}

/// What each function ran at `revision`: the latest version assigned at or before it.
pub fn versions_at(changes: &[crate::store::Change], revision: u64) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for change in changes.iter().filter(|c| c.revision <= revision) {
        out.insert(change.active.function.clone(), change.active.version);
    }
    out
}

/// Refuses a node description that could not be used: a name that is not a DNS label, no
/// region, a location off the globe, or an address that is not `host:port`.
pub fn check_node(node: &NodeInfo) -> Result<(), String> {
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if !label(&node.name) {
        return Err(format!("node name {:?}: use 1 to 63 lower-case letters, digits and inner dashes", node.name));
    }
    if !label(&node.region) {
        return Err(format!("region {:?}: use 1 to 63 lower-case letters, digits and inner dashes", node.region));
    }
    let (lat, lon) = node.location;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(format!("location {lat},{lon}: latitude must be within ±90 and longitude within ±180"));
    }
    match node.listen.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => Ok(()),
        _ => Err(format!("listen address {:?}: give host:port", node.listen)),
    }
}

/// How far `revision`, committed at `committed_ms`, has spread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub revision: u64,
    /// Connected nodes that serve it (or something newer).
    pub live: Vec<String>,
    /// Connected nodes that do not yet.
    pub pending: Vec<String>,
    /// Connected nodes that refused it, with their reason.
    pub refused: Vec<(String, String)>,
    /// Enrolled nodes not connected now: they catch up when they reconnect.
    pub offline: Vec<String>,
    /// From the commit to the last connected node applying it, once none is pending.
    pub propagation_ms: Option<u64>,
}

/// `revision`'s spread over `nodes` (live state, by name) and `enrolled` (every name).
pub fn progress(revision: u64, committed_ms: u64, nodes: &BTreeMap<String, NodeLive>, enrolled: &[String]) -> Progress {
    let mut out =
        Progress { revision, live: vec![], pending: vec![], refused: vec![], offline: vec![], propagation_ms: None };
    let mut last_ms = committed_ms;
    for name in enrolled {
        let Some(node) = nodes.get(name).filter(|n| n.connected) else {
            out.offline.push(name.clone());
            continue;
        };
        if node.applied >= revision {
            // When it first served this revision or a later one.
            let at = node.acks.iter().find(|(r, _)| *r >= revision).map_or(committed_ms, |(_, ms)| *ms);
            last_ms = last_ms.max(at);
            out.live.push(name.clone());
        } else if let Some((r, reason)) = node.refused.as_ref().filter(|(r, _)| *r >= revision) {
            out.refused.push((name.clone(), format!("revision {r}: {reason}")));
        } else if let Some((relay, (r, reason))) = node
            .via
            .as_ref()
            .and_then(|relay| Some((relay, nodes.get(relay)?.refused.as_ref().filter(|(r, _)| *r >= revision)?)))
        {
            // The node cannot get it: the relay it is connected through refused it.
            out.refused.push((name.clone(), format!("its relay {relay} refused revision {r}: {reason}")));
        } else {
            out.pending.push(name.clone());
        }
    }
    if out.pending.is_empty() && out.refused.is_empty() && !out.live.is_empty() {
        out.propagation_ms = Some(last_ms.saturating_sub(committed_ms));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> NodeInfo {
        NodeInfo { name: name.into(), region: "r".into(), location: (0.0, 0.0), listen: "127.0.0.1:1".into() }
    }

    fn live(connected: bool, applied: u64, last_ms: u64) -> NodeLive {
        NodeLive { connected, applied, acks: [(applied, last_ms)].into(), ..Default::default() }
    }

    #[test]
    fn a_node_is_described_by_the_replica_it_is_connected_to() {
        let local = BTreeMap::from([
            ("moved".to_string(), live(false, 3, 100)),
            ("here".to_string(), live(true, 5, 50)),
            ("both".to_string(), live(true, 4, 200)),
        ]);
        let shared = BTreeMap::from([
            ("moved".to_string(), live(true, 5, 300)),
            ("here".to_string(), live(false, 2, 10)),
            ("both".to_string(), live(true, 5, 250)),
            ("there".to_string(), live(true, 1, 1)),
        ]);
        let merged = merge(local, shared);
        assert_eq!(merged["moved"], live(true, 5, 300), "connected elsewhere now");
        assert_eq!(merged["here"], live(true, 5, 50));
        assert_eq!(merged["both"], live(true, 5, 250), "connected to two for a moment: the newest word");
        assert_eq!(merged["there"], live(true, 1, 1));
        assert_eq!(merged.len(), 4);
    }

    #[test]
    fn a_revision_is_live_everywhere_when_every_connected_node_applied_it() {
        let fleet = Fleet::default();
        fleet.connected(info("a"), 4, 1_000);
        fleet.connected(info("b"), 4, 1_000);
        let c = fleet.connected(info("c"), 3, 1_000);
        fleet.disconnected("c", c);
        let enrolled = ["a", "b", "c", "d"].map(String::from);
        let p = progress(5, 2_000, &fleet.snapshot(), &enrolled);
        assert_eq!((p.live.len(), p.pending.len(), p.offline), (0, 2, vec!["c".to_string(), "d".into()]));
        assert_eq!(p.propagation_ms, None);
        fleet.applied("a", 5, 2_040);
        fleet.applied("b", 6, 2_300);
        let p = progress(5, 2_000, &fleet.snapshot(), &enrolled);
        assert_eq!(p.live, ["a", "b"]);
        assert_eq!(p.propagation_ms, Some(300), "b served revision 5 only from 6 on");
        // A later ack does not move when a node first served it.
        fleet.applied("a", 7, 9_000);
        assert_eq!(progress(5, 2_000, &fleet.snapshot(), &enrolled).propagation_ms, Some(300));
    }

    #[test]
    fn bug_the_end_of_a_replaced_connection_does_not_mark_a_reconnected_node_offline() {
        let fleet = Fleet::default();
        let old = fleet.connected(info("a"), 1, 0);
        let new = fleet.connected(info("a"), 1, 10);
        fleet.disconnected("a", old);
        assert!(fleet.snapshot()["a"].connected);
        fleet.disconnected("a", new);
        assert!(!fleet.snapshot()["a"].connected);
    }

    #[test]
    fn node_descriptions_are_checked() {
        assert_eq!(check_node(&info("edge-1")), Ok(()));
        for bad in [
            NodeInfo { name: "Edge".into(), ..info("x") },
            NodeInfo { region: String::new(), ..info("x") },
            NodeInfo { location: (91.0, 0.0), ..info("x") },
            NodeInfo { listen: "127.0.0.1".into(), ..info("x") },
            NodeInfo { listen: "127.0.0.1:0".into(), ..info("x") },
        ] {
            assert!(check_node(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_refusal_is_reported_and_blocks_completion() {
        let fleet = Fleet::default();
        fleet.connected(info("a"), 1, 0);
        fleet.connected(info("b"), 1, 0);
        fleet.applied("a", 2, 10);
        fleet.refused("b", 2, "bad signature".into());
        let enrolled = ["a", "b"].map(String::from);
        let p = progress(2, 5, &fleet.snapshot(), &enrolled);
        assert_eq!(p.refused, [("b".to_string(), "revision 2: bad signature".to_string())]);
        assert_eq!(p.propagation_ms, None);
        fleet.applied("b", 3, 50);
        assert_eq!(progress(2, 5, &fleet.snapshot(), &enrolled).propagation_ms, Some(45));
    }

    #[test]
    fn a_node_behind_a_relay_that_refused_a_revision_is_reported_with_the_relays_reason() {
        let fleet = Fleet::default();
        fleet.connected(info("r1"), 1, 0);
        fleet.connected_via(info("a"), 1, 0, Some("r1".into()));
        fleet.connected(info("b"), 1, 0);
        fleet.refused("r1", 2, "bundle 1234: bad signature".into());
        fleet.applied("b", 2, 10);
        // Relays are not enrolled as nodes: only a and b count.
        let enrolled = ["a", "b"].map(String::from);
        let p = progress(2, 5, &fleet.snapshot(), &enrolled);
        assert_eq!(p.live, ["b"]);
        assert_eq!(p.refused, [("a".into(), "its relay r1 refused revision 2: bundle 1234: bad signature".into())]);
        assert!(p.pending.is_empty() && p.propagation_ms.is_none());
        // An older refusal by the relay says nothing about this revision.
        assert_eq!(progress(3, 5, &fleet.snapshot(), &enrolled).pending, ["a", "b"]);
    }
}
