//! Tern's router: sends each request to the nearest healthy node that can serve it.
//!
//! Owns the latency model ([`geo`]), what it knows of each node ([`health`]), the choice
//! ([`select`]) and the retry budget ([`budget`]), all pure and tested on a virtual clock;
//! where clients are ([`client`]); the topology from the control plane ([`directory`]);
//! active probes ([`probe`]); the HTTP proxy with failover ([`proxy`]) and its connections
//! to nodes ([`upstream`]). Never links the
//! JS engine.

pub mod budget;
pub mod client;
pub mod directory;
pub mod geo;
pub mod health;
pub mod probe;
pub mod proxy;
pub mod select;
pub mod upstream;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::client::Locator;
use crate::directory::Directory;
use crate::geo::Location;
use crate::proxy::{Proxy, RouterBody};

/// Host of the router's own status page (`GET /status`): the nodes and what it measured.
pub const STATUS_HOST: &str = "router.tern.invalid";

pub struct RouterConfig {
    /// `http://host:port` of the control plane's API.
    pub control_plane: String,
    /// The join token (or the admin token): the topology is read with it.
    pub token: String,
    pub location: Location,
    pub locator: Locator,
    /// HTTP/2 (h2c) to nodes instead of pooled HTTP/1.1 connections.
    pub http2_to_nodes: bool,
}

/// Routes requests arriving on `listener` until the process ends.
pub async fn run(config: RouterConfig, listener: tokio::net::TcpListener) {
    let directory = Arc::new(Directory::new(config.location));
    tokio::spawn(directory::follow(directory.clone(), config.control_plane, config.token));
    tokio::spawn(probe::run(directory.clone()));
    let proxy = Arc::new(Proxy::new(directory.clone(), config.locator, config.http2_to_nodes));
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (proxy, directory, builder) = (proxy.clone(), directory.clone(), builder.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (proxy, directory) = (proxy.clone(), directory.clone());
                async move {
                    let own = req.headers().get(http::header::HOST).is_some_and(|h| h == STATUS_HOST);
                    if own && req.uri().path() == "/status" {
                        return Ok::<_, Infallible>(status(&directory));
                    }
                    Ok(proxy.handle(req, peer).await)
                }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

fn status(directory: &Directory) -> http::Response<RouterBody> {
    let body = Bytes::from(directory.snapshot().to_string() + "\n");
    let mut response = http::Response::new(http_body_util::Full::new(body).map_err(|never| match never {}).boxed());
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}
