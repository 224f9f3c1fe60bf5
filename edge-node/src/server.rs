//! HTTP serving: HTTP/1.1 and HTTP/2 cleartext (h2c, prior knowledge) on one port, through
//! hyper. Each request is routed to a function and handed to the isolate threads; the
//! response streams back as the function produces it.
//!
//! Connections are accepted and served on the isolate threads themselves (each accepts from
//! a clone of one listening socket), so a request whose function lives on the accepting
//! thread never crosses threads: on one core, no context switch per request.
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
use tern_js_api::exchange::{BoxError, Exchange, Failure, FailureKind, Reply};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::errors::NodeError;
use crate::limits::ServerLimits;
use crate::node::EdgeNode;
use crate::routing::normalize_host;

pub type NodeBody = BoxBody<Bytes, BoxError>;

/// After it stops accepting, a draining server keeps serving its open connections this long
/// before closing the idle ones: a client that connected just before the stop has sent its
/// request by then, and hyper would otherwise close such a connection unread.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Serving on every isolate thread; dropping it does not stop serving, [`Self::drain`] does.
pub struct ServeHandle {
    pub local_addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    drained: Vec<oneshot::Receiver<()>>,
}

impl ServeHandle {
    /// Stops accepting, waits up to `patience` for open connections to finish their
    /// requests, and returns how many isolate threads drained in time.
    pub async fn drain(self, patience: std::time::Duration) -> usize {
        let _ = self.stop.send(true);
        tokio::time::timeout(patience, count_drained(self.drained)).await.unwrap_or(0)
    }
}

/// Waits for every isolate thread's serve loop to report that it drained.
async fn count_drained(threads: Vec<oneshot::Receiver<()>>) -> usize {
    let mut drained = 0;
    for thread in threads {
        if thread.await.is_ok() {
            drained += 1;
        }
    }
    drained
}

/// Serves an already bound listener (for example one inherited from a supervisor) on every
/// isolate thread.
pub fn listen_on(node: &Arc<EdgeNode>, listener: std::net::TcpListener) -> std::io::Result<ServeHandle> {
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    node.set_local_addr(local_addr);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (done_senders, drained): (Vec<_>, Vec<_>) = (0..node.isolates().len()).map(|_| oneshot::channel()).unzip();
    let done_senders = std::sync::Mutex::new(done_senders.into_iter().map(Some).collect::<Vec<_>>());
    let listener = std::sync::Mutex::new(listener);
    let shared = node.clone();
    node.isolates().spawn_on_each(move |index| {
        let clone = listener.lock().unwrap_or_else(|p| p.into_inner()).try_clone();
        let done = done_senders.lock().unwrap_or_else(|p| p.into_inner())[index].take();
        let node = shared.clone();
        let stopped = stopped.clone();
        Box::pin(async move {
            match clone.and_then(TcpListener::from_std) {
                Ok(listener) => serve(node, listener, stopped).await,
                Err(e) => tracing::error!("isolate thread {index} cannot accept connections: {e}"),
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        })
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

async fn handle(node: &EdgeNode, req: Request<Incoming>, remote: SocketAddr) -> Response<NodeBody> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .unwrap_or_default();
    let host = normalize_host(&authority);
    let Some(bundle) = node.routes().resolve(&host, req.uri().path()).cloned() else {
        return error(node, NodeError::NoRoute { host });
    };
    let authority = if authority.is_empty() { node.local_authority() } else { authority };
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{authority}{path_and_query}");
    let (reply, answer) = oneshot::channel();
    let request = req.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
    let function = bundle.name().to_string();
    tracing::trace!(%remote, %function, %url, "dispatch");
    node.isolates().dispatch(bundle, Exchange { request, url, reply });
    match answer.await {
        Ok(Reply::Response(response)) => response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()),
        Ok(Reply::Failed(failure)) => error(node, NodeError::Function { function, failure }),
        Err(_) => {
            let failure =
                Failure { kind: FailureKind::IsolateFailed, detail: "the isolate dropped the request".into() };
            error(node, NodeError::Function { function, failure })
        }
    }
}

fn error(node: &EdgeNode, e: NodeError) -> Response<NodeBody> {
    e.into_response(node.error_detail()).map(|b| http_body_util::Full::new(b).map_err(|never| match never {}).boxed())
}
