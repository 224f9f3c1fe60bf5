//! Connections from the router to nodes: a pool of HTTP/1.1 keep-alive connections per node
//! (hyper's pooled client), or one multiplexed HTTP/2 (h2c, prior knowledge) connection per
//! node, reopened when it closes. Either way a request goes to a node address while keeping
//! the client's host: in the `Host` header for HTTP/1.1, in `:authority` for HTTP/2.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::proxy::Lent;

/// How long a connection to a node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub enum Upstream {
    Http1(Box<Client<HttpConnector, Lent>>),
    Http2(Mutex<HashMap<String, SendRequest<Lent>>>),
}

impl Upstream {
    pub fn new(http2: bool) -> Self {
        if http2 {
            return Self::Http2(Mutex::default());
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self::Http1(Box::new(client))
    }

    /// Sends `request` (its URI: origin form) for `authority` to the node at `addr`; an
    /// error says what failed, before any response byte.
    pub async fn send(
        &self,
        addr: &str,
        authority: &str,
        mut request: Request<Lent>,
    ) -> Result<Response<Incoming>, String> {
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        match self {
            Self::Http1(client) => {
                *request.uri_mut() =
                    format!("http://{addr}{path}").parse().map_err(|e| format!("bad address {addr:?}: {e}"))?;
                client.request(request).await.map_err(|e| chain(&e))
            }
            Self::Http2(connections) => {
                let authority = if authority.is_empty() { addr } else { authority };
                *request.uri_mut() =
                    format!("http://{authority}{path}").parse().map_err(|e| format!("bad host {authority:?}: {e}"))?;
                request.headers_mut().remove(http::header::HOST);
                let mut sender = self.connection(connections, addr).await?;
                sender.ready().await.map_err(|e| chain(&e))?;
                sender.send_request(request).await.map_err(|e| chain(&e))
            }
        }
    }

    /// The open HTTP/2 connection to `addr`, or a new one.
    async fn connection(
        &self,
        connections: &Mutex<HashMap<String, SendRequest<Lent>>>,
        addr: &str,
    ) -> Result<SendRequest<Lent>, String> {
        if let Some(sender) = connections.lock().unwrap_or_else(|p| p.into_inner()).get(addr).filter(|s| !s.is_closed())
        {
            return Ok(sender.clone());
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("tcp connect error: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| chain(&e))?;
        let node = addr.to_string();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%node, "HTTP/2 connection ended: {e}");
            }
        });
        connections.lock().unwrap_or_else(|p| p.into_inner()).insert(addr.to_string(), sender.clone());
        Ok(sender)
    }
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}
