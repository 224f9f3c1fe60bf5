//! The edge node's state: its current route table (swapped whole, atomically) and its
//! isolate threads.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tern_runtime::IsolateThreads;

use crate::errors::ErrorDetail;
use crate::limits::ServerLimits;
use crate::routing::RouteTable;

pub struct EdgeNode {
    routes: RwLock<Arc<RouteTable>>,
    isolates: IsolateThreads,
    error_detail: ErrorDetail,
    limits: ServerLimits,
    local_addr: RwLock<Option<SocketAddr>>,
}

impl EdgeNode {
    pub fn new(isolates: IsolateThreads, error_detail: ErrorDetail, limits: ServerLimits) -> Self {
        Self {
            routes: RwLock::new(Arc::new(RouteTable::default())),
            isolates,
            error_detail,
            limits,
            local_addr: RwLock::new(None),
        }
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
            self.isolates.prepare_and_wait(bundle.clone()).await;
        }
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn isolates(&self) -> &IsolateThreads {
        &self.isolates
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
