//! The node's metrics and its admin endpoint: `GET /metrics` in the Prometheus (OpenMetrics)
//! text format, `GET /healthz`, on a listener of their own (never the public port).
//!
//! Names, all prefixed `tern_`: `requests_total`, `errors_total{tern_error}` (every answer
//! the node made instead of the function), and the runtime's: `isolates_live`,
//! `isolates_warm`, `isolate_boots_total`, `isolate_cold_boots_total`,
//! `isolate_evictions_total`, `isolates_stuck_total`, `function_cpu_seconds_total`,
//! `isolates_ended_total`, `kills_total{limit}`, and `wall_time_kills_total`. With isolate
//! host processes, the runtime's figures are the sum over the hosts, asked of them at each
//! scrape (what replaced hosts counted stays in), and the node adds `isolate_hosts`,
//! `isolate_hosts_started_total`, `isolate_host_crashes_total` and
//! `isolate_hosts_recycled_total`.

use std::convert::Infallible;
use std::sync::Arc;

use crate::hosts::HostPool;
use crate::node::Backend;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub tern_error: &'static str,
}

/// What the node counts itself, plus the registry that also holds the runtime's metrics.
pub struct NodeMetrics {
    registry: Registry,
    pub requests: Counter,
    pub errors: Family<ErrorLabel, Counter>,
    pub wall_time_kills: Counter,
    /// With isolate hosts: the hosts, and the node's own copy of their runtime figures.
    hosts: Option<(HostPool, tern_runtime::RuntimeStats)>,
}

impl NodeMetrics {
    pub fn new(backend: &Backend) -> Self {
        let mut registry = Registry::with_prefix("tern");
        let requests = Counter::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let wall_time_kills = Counter::default();
        registry.register("requests", "Requests received", requests.clone());
        registry.register("errors", "Answers the node made instead of the function, by tern-error", errors.clone());
        registry.register("wall_time_kills", "Requests ended by their wall time limit", wall_time_kills.clone());
        let mut with_hosts = None;
        match backend {
            Backend::InProcess(isolates) => isolates.stats().register(&mut registry),
            Backend::Hosts(hosts) => {
                let runtime = tern_runtime::RuntimeStats::default();
                runtime.register(&mut registry);
                with_hosts = Some((hosts.clone(), runtime));
                let s = hosts.stats();
                registry.register("isolate_hosts", "Isolate host processes running", s.live.clone());
                registry.register("isolate_hosts_started", "Isolate host processes started", s.started.clone());
                registry.register("isolate_host_crashes", "Isolate host processes that died", s.crashed.clone());
                registry.register(
                    "isolate_hosts_recycled",
                    "Isolate host processes replaced (their share of isolates ended, or one was stuck)",
                    s.recycled.clone(),
                );
            }
        }
        Self { registry, requests, errors, wall_time_kills, hosts: with_hosts }
    }

    pub fn count_error(&self, code: &'static str) {
        self.errors.get_or_create(&ErrorLabel { tern_error: code }).inc();
    }

    /// Brings the runtime's figures up to date: with isolate hosts, asks each for its own.
    pub async fn refresh(&self) {
        if let Some((hosts, runtime)) = &self.hosts {
            runtime.catch_up(&hosts.runtime_totals().await);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Serves the admin endpoint on `listener` until the runtime stops.
pub async fn serve_admin(metrics: Arc<NodeMetrics>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let metrics = metrics.clone();
            async move { Ok::<_, Infallible>(admin(&metrics, &req).await) }
        });
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn admin(metrics: &NodeMetrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => {
            metrics.refresh().await;
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.render())
        }
        ("GET", "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "the admin endpoint serves /metrics and /healthz\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_node_and_runtime_metrics() {
        let isolates =
            tern_runtime::Isolates::start(tern_runtime::IsolateConfig { warm_pool: 0, ..Default::default() }).unwrap();
        let runtime = isolates.stats();
        let metrics = NodeMetrics::new(&Backend::InProcess(isolates.clone()));
        metrics.requests.inc();
        metrics.count_error("cpu_limit_exceeded");
        runtime.count_kill(tern_js_api::exchange::FailureKind::CpuLimitExceeded);
        runtime.live_isolates.set(3);
        let text = metrics.render();
        assert!(text.contains("tern_requests_total 1"), "{text}");
        assert!(text.contains("tern_errors_total{tern_error=\"cpu_limit_exceeded\"} 1"), "{text}");
        assert!(text.contains("tern_kills_total{limit=\"cpu_limit_exceeded\"} 1"), "{text}");
        assert!(text.contains("tern_isolates_live 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
