//! The edge node's state: its current route table (swapped whole, atomically) and its
//! isolates (in process or in host processes), and the request ids it hands out.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tern_js_api::exchange::RequestId;
use tern_proto::Bundle;
use tern_runtime::Isolates;

use crate::hosts::HostPool;

use crate::errors::ErrorDetail;
use crate::forwarded::EdgeIdentity;
use crate::limits::ServerLimits;
use crate::metrics::NodeMetrics;
use crate::routing::RouteTable;

/// Where the node's isolates run.
#[derive(Clone)]
pub enum Backend {
    /// In this process (`tern dev`'s server process, which is itself replaced per reload).
    InProcess(Isolates),
    /// In isolate host processes, replaced before the engine's leak adds up.
    Hosts(HostPool),
}

impl Backend {
    pub fn dispatch(&self, bundle: Arc<Bundle>, exchange: tern_js_api::exchange::Exchange) {
        match self {
            Self::InProcess(isolates) => isolates.dispatch(bundle, exchange),
            Self::Hosts(hosts) => hosts.dispatch(bundle, exchange),
        }
    }

    pub async fn prepare_and_wait(&self, bundle: Arc<Bundle>) {
        match self {
            Self::InProcess(isolates) => isolates.prepare_and_wait(bundle).await,
            Self::Hosts(hosts) => hosts.prepare_and_wait(bundle).await,
        }
    }
}

pub struct EdgeNode {
    routes: RwLock<Arc<RouteTable>>,
    backend: Backend,
    metrics: Arc<NodeMetrics>,
    next_request: AtomicU64,
    error_detail: ErrorDetail,
    limits: ServerLimits,
    local_addr: RwLock<Option<SocketAddr>>,
    edge: EdgeIdentity,
    in_flight: AtomicU64,
    draining: AtomicBool,
}

impl EdgeNode {
    pub fn new(backend: Backend, error_detail: ErrorDetail, limits: ServerLimits) -> Self {
        Self {
            routes: RwLock::new(Arc::new(RouteTable::default())),
            metrics: Arc::new(NodeMetrics::new(&backend)),
            backend,
            next_request: AtomicU64::new(request_id_base()),
            error_detail,
            limits,
            local_addr: RwLock::new(None),
            edge: EdgeIdentity::default(),
            in_flight: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// The node's region and the routers it trusts (see [`crate::forwarded`]).
    pub fn with_edge(mut self, edge: EdgeIdentity) -> Self {
        self.edge = edge;
        self
    }

    pub fn edge(&self) -> &EdgeIdentity {
        &self.edge
    }

    /// Counts a request until its response head is out; the guard counts it down.
    pub fn start_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Requests waiting for their response head now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// From now on the node tells routers' probes it is stopping.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// Replaces the functions the node serves once their isolates are booted (or have
    /// reported their load errors). Requests already dispatched finish on the versions they
    /// started with.
    pub async fn set_routes(&self, table: RouteTable) {
        let table = Arc::new(table);
        for bundle in table.functions() {
            self.backend.prepare_and_wait(bundle.clone()).await;
        }
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    /// A fresh id for a request arriving now.
    pub fn next_request_id(&self) -> RequestId {
        RequestId(self.next_request.fetch_add(1, Ordering::Relaxed))
    }

    pub fn error_detail(&self) -> ErrorDetail {
        self.error_detail
    }

    pub fn set_local_addr(&self, addr: SocketAddr) {
        *self.local_addr.write().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }

    /// `host:port` this node listens on, for requests that carry no Host.
    pub fn local_authority(&self) -> String {
        self.local_addr.read().unwrap_or_else(|p| p.into_inner()).map_or_else(|| "localhost".into(), |a| a.to_string())
    }
}

/// One request being answered; dropping it counts it out.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Request ids count up from a base drawn from the clock at start, so that ids of one node
/// do not repeat across its restarts: seconds since the epoch in the high 32 bits.
fn request_id_base() -> u64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (secs & 0xffff_ffff) << 32
}
