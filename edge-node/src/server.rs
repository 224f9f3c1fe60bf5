//! HTTP serving: HTTP/1.1 and HTTP/2 cleartext (h2c, prior knowledge) on one port, through
//! hyper, on the tokio runtime of the caller. Each request is routed to a function and
//! handed to its isolate; the response streams back as the function produces it, under the
//! function's wall time and body limits ([`crate::guard`]). Every response carries
//! `tern-request-id`, which also names the request in kill records.
//!
//! [`ServeHandle::drain`] stops accepting and lets every connection finish its in-flight
//! requests: HTTP/1.1 connections close after their current response, HTTP/2 ones get
//! GOAWAY, so clients reconnect to whoever serves next.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tern_js_api::exchange::{BoxError, Exchange, Failure, FailureKind, Reply, RequestId};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::errors::NodeError;
use crate::guard::{BodyCut, GuardedBody};
use crate::limits::ServerLimits;
use crate::node::EdgeNode;
use crate::routing::normalize_host;

pub type NodeBody = BoxBody<Bytes, BoxError>;

/// The client's address as functions see it (as on Cloudflare Workers).
pub const CONNECTING_IP: http::HeaderName = http::HeaderName::from_static("cf-connecting-ip");

/// After it stops accepting, a draining server keeps serving its open connections this long
/// before closing the idle ones: a client that connected just before the stop has sent its
/// request by then, and hyper would otherwise close such a connection unread.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Serving; dropping it does not stop serving, [`Self::drain`] does.
pub struct ServeHandle {
    pub local_addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    drained: oneshot::Receiver<()>,
}

impl ServeHandle {
    /// Stops accepting and waits up to `patience` for open connections to finish their
    /// requests; says whether they did.
    pub async fn drain(self, patience: std::time::Duration) -> bool {
        let _ = self.stop.send(true);
        matches!(tokio::time::timeout(patience, self.drained).await, Ok(Ok(())))
    }
}

/// Serves an already bound listener (for example one inherited from a supervisor) on the
/// current tokio runtime.
pub fn listen_on(node: &Arc<EdgeNode>, listener: std::net::TcpListener) -> std::io::Result<ServeHandle> {
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    node.set_local_addr(local_addr);
    let listener = TcpListener::from_std(listener)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (done, drained) = oneshot::channel();
    let node = node.clone();
    tokio::spawn(async move {
        serve(node, listener, stopped).await;
        let _ = done.send(());
    });
    Ok(ServeHandle { local_addr, stop, drained })
}

/// Accepts connections on `listener` until `stopped` turns true, then waits for the open
/// connections to finish gracefully.
pub async fn serve(node: Arc<EdgeNode>, listener: TcpListener, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let builder = Arc::new(http_builder(node.limits()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let service = service_fn(move |req| {
            let node = node.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&node, req, remote).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%remote, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    tokio::time::sleep(DRAIN_GRACE).await;
    graceful.shutdown().await;
}

/// hyper's server, configured with the node's [`ServerLimits`].
fn http_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

pub use tern_proto::forwarding::PROBE_HOST;

/// A router's probe: how busy the node is, how much it takes, and whether it is stopping.
fn health(node: &EdgeNode) -> Response<NodeBody> {
    let capacity = node.edge().capacity.map_or_else(|| "null".to_string(), |c| c.to_string());
    let body = format!(r#"{{"in_flight":{},"capacity":{capacity},"draining":{}}}"#, node.in_flight(), node.draining());
    let mut response =
        Response::new(http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}

async fn handle(node: &EdgeNode, req: Request<Incoming>, remote: SocketAddr) -> Response<NodeBody> {
    if req.uri().path() == "/health" && req.headers().get(http::header::HOST).is_some_and(|h| h == PROBE_HOST) {
        return health(node);
    }
    let _counted = node.start_request();
    let id = node.next_request_id();
    node.metrics().requests.inc();
    let mut response = exchange(node, req, remote, id).await;
    if let Ok(value) = http::HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(TERN_REQUEST_ID, value);
    }
    response
}

/// Response header naming the request, as kill records and logs name it.
pub const TERN_REQUEST_ID: &str = "tern-request-id";

async fn exchange(node: &EdgeNode, req: Request<Incoming>, remote: SocketAddr, id: RequestId) -> Response<NodeBody> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .unwrap_or_default();
    let host = normalize_host(&authority);
    let Some(serving) = node.routes().resolve(&host, req.uri().path()).cloned() else {
        return error(node, NodeError::NoRoute { host });
    };
    let (client_ip, cf) = node.edge().client(remote.ip(), req.headers());
    let client_ip = client_ip.to_string();
    let bundle = serving.pick(|name| req.headers().get(name).and_then(|v| v.to_str().ok()), &client_ip).clone();
    let authority = if authority.is_empty() { node.local_authority() } else { authority };
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{authority}{path_and_query}");
    let limits = bundle.manifest.limits;
    let function = bundle.name().to_string();
    let hops = req
        .headers()
        .get(tern_js_api::egress::HOPS_HEADER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if hops > tern_js_api::egress::MAX_HOPS {
        tracing::warn!(%function, request = %id, hops, "request refused: it went through Tern too many times (a loop?)");
        return error(node, NodeError::LoopDetected { function, hops });
    }
    let declared = req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.request_body_bytes) {
        return error(node, NodeError::RequestBodyTooLarge { function, limit: limits.request_body_bytes });
    }
    // Who is asking, as Workers tell it; a client's own value is never trusted.
    let mut req = req;
    let client = http::HeaderValue::try_from(client_ip).expect("an IP is a header value");
    req.headers_mut().insert(CONNECTING_IP, client);
    req.headers_mut().remove(crate::forwarded::CONNECTING_IP_HEADER);
    // `request.cf`, as the node vouches for it (the runtime takes the header off again).
    // A client's own `tern-cf` never reaches the function.
    match cf.map(http::HeaderValue::try_from) {
        Some(Ok(cf)) => req.headers_mut().insert(crate::forwarded::CF_HEADER, cf),
        _ => req.headers_mut().remove(crate::forwarded::CF_HEADER),
    };
    let deadline = tokio::time::Instant::now() + limits.wall_per_request;
    let (reply, answer) = oneshot::channel();
    let max_body = usize::try_from(limits.request_body_bytes).unwrap_or(usize::MAX);
    let request = req.map(|body| {
        http_body_util::Limited::new(body, max_body)
            .map_err(move |e| match e.downcast::<http_body_util::LengthLimitError>() {
                Ok(_) => format!(
                    "the request body is larger than this function accepts ({max_body} bytes, limits.request_body_mib)"
                )
                .into(),
                Err(e) => e,
            })
            .boxed_unsync()
    });
    tracing::trace!(%remote, %function, %url, "dispatch");
    let version = bundle.id().short();
    node.backend().dispatch(bundle, Exchange { id, hops, request, url, reply });
    let answer = match tokio::time::timeout_at(deadline, answer).await {
        Ok(answer) => answer,
        Err(_) => {
            let failure = Failure {
                kind: FailureKind::WallTimeExceeded,
                detail: format!(
                    "the function did not answer within its wall time limit of {} ms",
                    limits.wall_per_request.as_millis()
                ),
            };
            record_wall_time_kill(node, &function, &version, id, "no response head");
            return error(node, NodeError::Function { function, failure });
        }
    };
    match answer {
        Ok(Reply::Response(response)) => {
            if http_body::Body::size_hint(response.body()).lower() > limits.response_body_bytes {
                tracing::warn!(target: "tern::kill", function = %function, version = %version, request = %id,
                    limit = "response_body_too_large", "response refused: larger than limits.response_body_mib");
                return error(node, NodeError::ResponseBodyTooLarge { function, limit: limits.response_body_bytes });
            }
            let metrics = node.metrics().clone();
            let on_cut = Box::new(move |cut: &BodyCut| {
                tracing::warn!(target: "tern::kill", function = %function, version = %version, request = %id,
                    limit = cut.code(), "response cut: {cut}");
                if matches!(cut, BodyCut::WallTime(_)) {
                    metrics.wall_time_kills.inc();
                }
            });
            response.map(|b| {
                GuardedBody::new(
                    b.map_err(|e| Box::new(e) as BoxError),
                    deadline,
                    limits.wall_per_request.as_millis(),
                    limits.response_body_bytes,
                    on_cut,
                )
                .boxed()
            })
        }
        Ok(Reply::Failed(failure)) => error(node, NodeError::Function { function, failure }),
        Err(_) => {
            let failure =
                Failure { kind: FailureKind::IsolateFailed, detail: "the isolate dropped the request".into() };
            error(node, NodeError::Function { function, failure })
        }
    }
}

fn record_wall_time_kill(node: &EdgeNode, function: &str, version: &str, id: RequestId, what: &str) {
    tracing::warn!(target: "tern::kill", function, version, request = %id, limit = "wall_time_exceeded",
        "function killed: wall_time_exceeded ({what})");
    node.metrics().wall_time_kills.inc();
}

fn error(node: &EdgeNode, e: NodeError) -> Response<NodeBody> {
    node.metrics().count_error(e.code());
    e.into_response(node.error_detail()).map(|b| http_body_util::Full::new(b).map_err(|never| match never {}).boxed())
}
