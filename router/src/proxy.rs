//! The router's HTTP front: takes a request, asks the [`Directory`] for the nodes to try,
//! and proxies to them over pooled HTTP/1.1 connections (or one HTTP/2 connection per
//! node, `--http2-to-nodes`), streaming bodies both ways.
//!
//! - Adds `x-forwarded-for` (its peer's address appended to a trusted upstream's list, or
//!   alone), `x-forwarded-proto`, `tern-connecting-ip` (the client, as the router
//!   determined it) and `tern-cf` (what it knows of the client's place, for
//!   `request.cf`); drops
//!   hop-by-hop headers; keeps `Host`. Responses carry `tern-node`, naming the node.
//! - Fails over: a node that cannot be reached, or closes before any response byte, is
//!   charged a failure, and the request goes to the next node in the order if no byte of
//!   its body has left (requests without a body always qualify), at most
//!   [`RetryBudget::MAX_ATTEMPTS`] nodes and within the [`RetryBudget`]. Otherwise 502
//!   `tern-error: upstream_unavailable`.
//! - No node can take it: 503 `tern-error: no_eligible_node`, saying why.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

use crate::budget::RetryBudget;
use crate::client::{ClientPlace, Locator};
use crate::directory::Directory;
use crate::upstream::Upstream;

pub type RouterBody = BoxBody<Bytes, hyper::Error>;

/// Response header naming the node that served.
pub const TERN_NODE: &str = "tern-node";
/// Response header naming why the router (not a node) answered.
pub const TERN_ERROR: &str = "tern-error";
/// Request header asking for a region (debugging; placement still holds).
pub const REGION_HEADER: &str = "tern-region";
pub use tern_proto::forwarding::{CF_HEADER, CONNECTING_IP_HEADER};

pub struct Proxy {
    directory: Arc<Directory>,
    locator: Locator,
    upstream: Upstream,
    budget: Mutex<RetryBudget>,
}

impl Proxy {
    /// `http2`: one multiplexed HTTP/2 (h2c) connection per node rather than a pool of
    /// HTTP/1.1 ones.
    pub fn new(directory: Arc<Directory>, locator: Locator, http2: bool) -> Self {
        Self { directory, locator, upstream: Upstream::new(http2), budget: Mutex::default() }
    }

    /// Answers one client request.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<RouterBody> {
        let now = self.directory.now();
        self.budget.lock().unwrap_or_else(|p| p.into_inner()).deposit(now);
        let trusted = self.locator.trusts(peer.ip());
        let client_ip = if trusted { last_forwarded(req.headers()).unwrap_or(peer.ip()) } else { peer.ip() };
        let place = self.locator.locate(peer.ip(), client_ip, req.headers());
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
            .unwrap_or_default();
        let host = tern_proto::route::normalize_host(&authority);
        let region = req.headers().get(REGION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let route = match self.directory.route(&host, req.uri().path(), place.location, region.as_deref()) {
            Ok(route) => route,
            Err(e) => return refusal(StatusCode::SERVICE_UNAVAILABLE, "no_eligible_node", &e.to_string()),
        };
        let (parts, body) = req.into_parts();
        let shared = Arc::new(Shared { slot: Mutex::new(Some(body)), started: AtomicBool::new(false) });
        let head = outbound_head(&parts, &authority, client_ip, peer.ip(), trusted, &place);
        let mut failures = Vec::new();
        for (attempt, node) in route.nodes.iter().take(RetryBudget::MAX_ATTEMPTS).enumerate() {
            if attempt > 0 {
                if shared.started.load(Ordering::Acquire) {
                    break;
                }
                if !self.budget.lock().unwrap_or_else(|p| p.into_inner()).withdraw(self.directory.now()) {
                    failures.push("the retry budget is spent".to_string());
                    break;
                }
            }
            let mut request = Request::new(Lent(shared.clone()));
            *request.method_mut() = parts.method.clone();
            *request.headers_mut() = head.clone();
            if let Ok(uri) = path_and_query(&parts.uri).parse() {
                *request.uri_mut() = uri;
            }
            match self.upstream.send(&node.listen, &authority, request).await {
                Ok(response) => {
                    self.directory.track(&node.name, &node.listen, |t, _| t.request_answered());
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    if let Ok(name) = HeaderValue::from_str(&node.name) {
                        parts.headers.insert(TERN_NODE, name);
                    }
                    return Response::from_parts(parts, body.boxed());
                }
                Err(why) => {
                    tracing::warn!(node = %node.name, attempt, "proxying failed: {why}");
                    self.directory.track(&node.name, &node.listen, |t, at| t.failed(at));
                    failures.push(format!("{}: {why}", node.name));
                }
            }
        }
        if shared.started.load(Ordering::Acquire) && failures.len() < route.nodes.len().min(RetryBudget::MAX_ATTEMPTS) {
            failures.push("part of the request body had been sent, so it was not retried".into());
        }
        refusal(StatusCode::BAD_GATEWAY, "upstream_unavailable", &format!("no node answered: {}", failures.join("; ")))
    }
}

/// The request head as it goes to a node.
fn outbound_head(
    parts: &http::request::Parts,
    authority: &str,
    client: std::net::IpAddr,
    peer: std::net::IpAddr,
    trusted: bool,
    place: &ClientPlace,
) -> HeaderMap {
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(CF_HEADER);
    headers.remove(REGION_HEADER);
    if let Ok(ip) = HeaderValue::from_str(&client.to_canonical().to_string()) {
        headers.insert(CONNECTING_IP_HEADER, ip);
    }
    if let Ok(host) = HeaderValue::from_str(authority) {
        headers.insert(http::header::HOST, host);
    }
    // A trusted upstream's list is extended; anyone else's is replaced.
    let forwarded = match (trusted, headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())) {
        (true, Some(list)) => format!("{list}, {}", peer.to_canonical()),
        _ => peer.to_canonical().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    let mut cf = serde_json::Map::new();
    if let Some(country) = &place.country {
        cf.insert("country".into(), country.clone().into());
    }
    if let Some(location) = place.location {
        cf.insert("latitude".into(), format!("{:.4}", location.lat).into());
        cf.insert("longitude".into(), format!("{:.4}", location.lon).into());
    }
    if let Ok(value) = HeaderValue::from_str(&serde_json::Value::Object(cf).to_string()) {
        headers.insert(CF_HEADER, value);
    }
    headers
}

/// The last address in `x-forwarded-for`: the one a trusted upstream appended.
fn last_forwarded(headers: &HeaderMap) -> Option<std::net::IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .next_back()
}

fn path_and_query(uri: &http::Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

/// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"] {
        headers.remove(name);
    }
}

/// The router's own answer.
pub fn refusal(status: StatusCode, code: &'static str, message: &str) -> Response<RouterBody> {
    let body = http_body_util::Full::new(Bytes::from(format!("{message}\n"))).map_err(|never| match never {}).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(TERN_ERROR, HeaderValue::from_static(code));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The client's request body, lent to one attempt after another until a byte of it leaves.
struct Shared {
    slot: Mutex<Option<Incoming>>,
    started: AtomicBool,
}

pub struct Lent(Arc<Shared>);

impl Body for Lent {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut slot = self.0.slot.lock().unwrap_or_else(|p| p.into_inner());
        let Some(body) = slot.as_mut() else { return Poll::Ready(None) };
        let polled = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.data_ref().is_none_or(|d| !d.is_empty())
        {
            self.0.started.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.0.slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}
