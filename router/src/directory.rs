//! What the router knows: the nodes and functions the control plane lists (refreshed by
//! [`follow`]), and what its own probes and requests taught it about each node
//! ([`Tracker`]s, kept across refreshes while a node keeps its address).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tern_proto::RoutePattern;
use tern_proto::route::RouteIndex;

use crate::geo::Location;
use crate::health::Tracker;
use crate::select::{self, Ask, NoEligible, NodeView, Policy};

/// How long the router waits before asking again after a failure. Otherwise it asks again
/// at once: the control plane holds each ask until a newer revision commits, or a second
/// has passed (new nodes are learnt within that second, new functions at once).
pub const RETRY: Duration = Duration::from_secs(1);

/// A node as the control plane lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NodeEntry {
    pub name: String,
    pub region: String,
    pub location: (f64, f64),
    /// `host:port` of its HTTP.
    pub listen: String,
    #[serde(default)]
    pub connected: bool,
}

/// What the router needs of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionEntry {
    pub name: String,
    pub placement: Vec<String>,
}

/// The control plane's `GET /v1/topology`.
#[derive(Debug, Clone, Deserialize)]
pub struct Topology {
    pub revision: u64,
    pub nodes: Vec<NodeEntry>,
    pub functions: Vec<RawFunction>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RawFunction {
    pub name: String,
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default)]
    pub placement: Vec<String>,
}

/// The nodes, each with its tracker, and the functions by route. Requests read it; only a
/// topology change writes it (trackers have locks of their own).
#[derive(Default)]
struct State {
    nodes: Vec<(Arc<NodeEntry>, Mutex<Tracker>)>,
    functions: RouteIndex<Arc<FunctionEntry>>,
    revision: Option<u64>,
}

/// A choice made for one request: the nodes to try, in order.
#[derive(Debug, Clone)]
pub struct Route {
    pub function: Option<Arc<FunctionEntry>>,
    pub nodes: Vec<Arc<NodeEntry>>,
}

pub struct Directory {
    state: RwLock<State>,
    policy: Policy,
    started: Instant,
}

impl Directory {
    pub fn new(router: Location) -> Self {
        Self { state: RwLock::default(), policy: Policy::at(router), started: Instant::now() }
    }

    /// Time since the router started: the clock trackers and budgets run on.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Takes in a fresh topology; trackers of nodes that kept their address survive.
    pub fn update(&self, topology: Topology) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.revision == Some(topology.revision) && same_nodes(&state.nodes, &topology.nodes) {
            return;
        }
        let mut old: HashMap<String, (Arc<NodeEntry>, Mutex<Tracker>)> =
            std::mem::take(&mut state.nodes).into_iter().map(|(n, t)| (n.name.clone(), (n, t))).collect();
        for node in topology.nodes {
            let tracker = match old.remove(&node.name) {
                Some((before, tracker)) if before.listen == node.listen => tracker,
                _ => {
                    tracing::info!(node = %node.name, region = %node.region, listen = %node.listen, "node known");
                    Mutex::default()
                }
            };
            state.nodes.push((Arc::new(node), tracker));
        }
        for name in old.keys() {
            tracing::info!(node = %name, "node gone");
        }
        let mut functions = Vec::new();
        for f in topology.functions {
            let routes: Vec<RoutePattern> = f.routes.iter().filter_map(|r| RoutePattern::parse(r).ok()).collect();
            functions.push((f.name.clone(), routes, Arc::new(FunctionEntry { name: f.name, placement: f.placement })));
        }
        state.functions = RouteIndex::new(functions.iter().map(|(n, r, f)| (n.clone(), r.as_slice(), f.clone())));
        state.revision = Some(topology.revision);
    }

    /// The nodes to probe: name and address.
    pub fn nodes(&self) -> Vec<Arc<NodeEntry>> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).nodes.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Updates the tracker of `node` (at `listen`; a node that moved meanwhile is left alone).
    pub fn track(&self, node: &str, listen: &str, event: impl FnOnce(&mut Tracker, Duration)) {
        let now = self.now();
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        if let Some((_, tracker)) = state.nodes.iter().find(|(n, _)| n.name == node && n.listen == listen) {
            event(&mut tracker.lock().unwrap_or_else(|p| p.into_inner()), now);
        }
    }

    /// The nodes for a request to `host` and `path`, from a client at `client`, in the order
    /// to try them.
    pub fn route(
        &self,
        host: &str,
        path: &str,
        client: Option<Location>,
        region: Option<&str>,
    ) -> Result<Route, NoEligible> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let function = state.functions.resolve(host, path).cloned();
        let trackers: Vec<Tracker> =
            state.nodes.iter().map(|(_, t)| t.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect();
        let views: Vec<NodeView> = state
            .nodes
            .iter()
            .zip(&trackers)
            .map(|((n, _), tracker)| NodeView {
                name: &n.name,
                region: &n.region,
                location: Location::new(n.location.0, n.location.1),
                tracker,
            })
            .collect();
        let ask = Ask {
            function: function.as_deref().map(|f| f.name.as_str()),
            placement: function.as_deref().map_or(&[], |f| f.placement.as_slice()),
            client,
            region,
        };
        let order = select::choose(&views, &ask, &self.policy)?;
        Ok(Route { function, nodes: order.into_iter().map(|i| Arc::clone(&state.nodes[i].0)).collect() })
    }

    /// Every node with what the router knows of it, for the router's status page.
    pub fn snapshot(&self) -> serde_json::Value {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let nodes: Vec<serde_json::Value> = state
            .nodes
            .iter()
            .map(|(n, t)| {
                let t = t.lock().unwrap_or_else(|p| p.into_inner()).clone();
                serde_json::json!({ "name": n.name, "region": n.region, "listen": n.listen, "health": t.health(),
                    "rtt_ms": t.rtt().map(|r| r.as_secs_f64() * 1000.0), "load": t.load() })
            })
            .collect();
        serde_json::json!({ "revision": state.revision, "nodes": nodes })
    }
}

fn same_nodes(known: &[(Arc<NodeEntry>, Mutex<Tracker>)], listed: &[NodeEntry]) -> bool {
    known.len() == listed.len() && known.iter().zip(listed).all(|((a, _), b)| **a == *b)
}

/// Keeps `directory` up to date with the control plane at `control_plane` (`http://host:port`,
/// or a comma-separated list of replicas, used in turn when one fails) until the process
/// ends; failures are logged and retried.
pub async fn follow(directory: Arc<Directory>, control_plane: String, token: String) {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let bases: Vec<String> = control_plane
        .split(',')
        .map(|u| format!("{}/v1/topology", u.trim().trim_end_matches('/')))
        .filter(|u| u != "/v1/topology")
        .collect();
    let mut which = 0;
    let mut failing = false;
    let mut known: Option<u64> = None;
    loop {
        let base = &bases[which % bases.len()];
        let url = known.map_or_else(|| base.clone(), |r| format!("{base}?after={r}"));
        let started = Instant::now();
        match fetch(&client, &url, &token).await {
            Ok(topology) => {
                if failing {
                    tracing::info!("{base} answers");
                    failing = false;
                }
                // A replica behind the others does not take the router back in time.
                if known.is_none_or(|r| topology.revision >= r) {
                    known = Some(topology.revision);
                    directory.update(topology);
                }
                // A control plane that does not hold the ask is not asked in a busy loop.
                tokio::time::sleep(Duration::from_millis(100).saturating_sub(started.elapsed())).await;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("cannot read the topology from {base}: {e}; routing on what is known");
                    failing = true;
                }
                which += 1;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn fetch(client: &Client<HttpConnector, Empty<Bytes>>, url: &str, token: &str) -> Result<Topology, String> {
    let request = http::Request::get(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body).trim()));
    }
    serde_json::from_slice(&body).map_err(|e| format!("the answer does not parse: {e}"))
}
