//! HTTP serving: HTTP/1.1 and HTTP/2 cleartext (h2c, prior knowledge) on one port, through
//! hyper. Each request is routed to a function and handed to the isolate threads; the
//! response streams back as the function produces it.
//!
//! Connections are accepted and served on the isolate threads themselves (each accepts from
//! a clone of one listening socket), so a request whose function lives on the accepting
//! thread never crosses threads: on one core, no context switch per request.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tern_js_api::exchange::{BoxError, Exchange, Failure, FailureKind, Reply};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::errors::NodeError;
use crate::node::EdgeNode;
use crate::routing::normalize_host;

pub type NodeBody = BoxBody<Bytes, BoxError>;

/// Binds `addr` and serves it on every isolate thread; returns the bound address.
pub fn listen(node: &Arc<EdgeNode>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    node.set_local_addr(local);
    let node = node.clone();
    let listener = std::sync::Mutex::new(listener);
    node.clone().isolates().spawn_on_each(move |index| {
        let clone = listener.lock().unwrap_or_else(|p| p.into_inner()).try_clone();
        let node = node.clone();
        Box::pin(async move {
            match clone.and_then(TcpListener::from_std) {
                Ok(listener) => serve(node, listener).await,
                Err(e) => tracing::error!("isolate thread {index} cannot accept connections: {e}"),
            }
        })
    });
    Ok(local)
}

/// Accepts connections on `listener` until the task is dropped.
pub async fn serve(node: Arc<EdgeNode>, listener: TcpListener) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, remote) = match listener.accept().await {
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
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&node, req, remote).await) }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%remote, "connection ended: {e}");
            }
        });
    }
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
