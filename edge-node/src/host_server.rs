//! The isolate host process's side of [`crate::hosts`]: serves the node over one HTTP/2
//! connection (a Unix socket pair) and runs the isolates.
//!
//! - `PUT /bundles/{id}`: a bundle in wire form, checked against its id, kept by id.
//! - `POST /prepare/{id}`: boots the bundle's isolate; answers once it is ready.
//! - `GET /serving`: the bundle ids that have an isolate serving now, one per line (the
//!   node warms a replacement host with them).
//! - `GET /stats`: the runtime's figures as a JSON [`StatsSnapshot`].
//! - anything else: one exchange for the function named by `tern-bundle`, with the
//!   request's own method, headers and streaming body; `tern-url`, `tern-request-id` and
//!   `tern-hops` carry what the node knows. The answer is the function's response, or a
//!   failure as `tern-failure: CODE` with the detail as body. Every answer carries
//!   `tern-host-ended`, the isolates that have ended in this process (each leaves the
//!   engine's leak behind), and `tern-host-stuck`, so the node knows when to replace it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tern_js_api::exchange::{BoxError, Exchange, Reply, RequestId, StreamAborted};
use tern_proto::{Bundle, BundleId};
use tern_runtime::Isolates;
use tern_runtime::stats::StatsSnapshot;

pub const BUNDLE_HEADER: &str = "tern-bundle";
pub const URL_HEADER: &str = "tern-url";
pub const REQUEST_ID_HEADER: &str = "tern-request-id";
pub const FAILURE_HEADER: &str = "tern-failure";
pub const ENDED_HEADER: &str = "tern-host-ended";
/// On every response: how many of the host's isolates are stuck (JS that went on after
/// termination, on a thread that cannot be stopped); the node replaces a host that has one.
pub const STUCK_HEADER: &str = "tern-host-stuck";

type HostBody = BoxBody<Bytes, StreamAborted>;

struct HostState {
    isolates: Isolates,
    bundles: Mutex<HashMap<BundleId, Arc<Bundle>>>,
}

/// Serves the node on `stream` until it closes.
pub async fn serve_host(isolates: Isolates, stream: tokio::net::UnixStream) {
    let state = Arc::new(HostState { isolates, bundles: Mutex::new(HashMap::new()) });
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.max_concurrent_streams(None);
    if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
        tracing::debug!("the node's connection ended: {e}");
    }
}

fn plain(status: StatusCode, text: String) -> Response<HostBody> {
    let mut r = Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

fn failure(code: &str, detail: String) -> Response<HostBody> {
    let mut r = plain(StatusCode::OK, detail);
    if let Ok(v) = http::HeaderValue::from_str(code) {
        r.headers_mut().insert(FAILURE_HEADER, v);
    }
    r
}

async fn handle(state: &HostState, req: Request<Incoming>) -> Response<HostBody> {
    let mut response = route(state, req).await;
    let stats = state.isolates.stats();
    response.headers_mut().insert(ENDED_HEADER, http::HeaderValue::from(stats.ended_isolates.get()));
    response.headers_mut().insert(STUCK_HEADER, http::HeaderValue::from(stats.stuck_isolates.get()));
    response
}

async fn route(state: &HostState, req: Request<Incoming>) -> Response<HostBody> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&http::Method::GET, "/stats") => {
            let snapshot: StatsSnapshot = state.isolates.stats().snapshot();
            return plain(StatusCode::OK, serde_json::to_string(&snapshot).unwrap_or_default());
        }
        (&http::Method::GET, "/serving") => {
            let ids: Vec<String> = state.isolates.serving().iter().map(ToString::to_string).collect();
            return plain(StatusCode::OK, ids.join("\n"));
        }
        _ => {}
    }
    if let Some(id) = path.strip_prefix("/bundles/") {
        let Ok(id) = id.parse::<BundleId>() else {
            return plain(StatusCode::BAD_REQUEST, format!("{id:?} is not a bundle id"));
        };
        let bytes = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return plain(StatusCode::BAD_REQUEST, format!("bundle upload failed: {e}")),
        };
        return match Bundle::from_wire(&bytes, id) {
            Ok(bundle) => {
                tracing::info!(host_pid = std::process::id(), function = bundle.name(), version = %id.short(),
                    "bundle loaded into isolate host");
                state.bundles.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Arc::new(bundle));
                plain(StatusCode::NO_CONTENT, String::new())
            }
            Err(e) => plain(StatusCode::BAD_REQUEST, format!("bundle {id}: {e}")),
        };
    }
    let bundle_of = |id: Option<&str>| -> Option<Arc<Bundle>> {
        let id = id?.parse::<BundleId>().ok()?;
        state.bundles.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    };
    if let Some(id) = path.strip_prefix("/prepare/") {
        let Some(bundle) = bundle_of(Some(id)) else {
            return failure("unknown_bundle", format!("bundle {id} was not uploaded"));
        };
        state.isolates.prepare_and_wait(bundle).await;
        return plain(StatusCode::NO_CONTENT, String::new());
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let Some(bundle) = bundle_of(header(BUNDLE_HEADER).as_deref()) else {
        return failure("unknown_bundle", "the request names no bundle this host holds".into());
    };
    let url = header(URL_HEADER).unwrap_or_default();
    let id = RequestId(header(REQUEST_ID_HEADER).and_then(|v| u64::from_str_radix(&v, 16).ok()).unwrap_or(0));
    let hops = header(tern_js_api::egress::HOPS_HEADER).and_then(|v| v.parse().ok()).unwrap_or(0);
    let (mut parts, body) = req.into_parts();
    for internal in [BUNDLE_HEADER, URL_HEADER, REQUEST_ID_HEADER] {
        parts.headers.remove(internal);
    }
    let request = Request::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
    let (reply, answer) = tokio::sync::oneshot::channel();
    state.isolates.dispatch(bundle, Exchange { id, hops, request, url, reply });
    match answer.await {
        Ok(Reply::Response(response)) => response.map(|b| b.boxed()),
        Ok(Reply::Failed(f)) => failure(f.kind.code(), f.detail),
        Err(_) => failure("isolate_failed", "the isolate dropped the request".into()),
    }
}
