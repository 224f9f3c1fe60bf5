//! Active probes: every [`INTERVAL`] the router asks each node `GET /health` (host
//! `node.tern.invalid`) over a kept-alive connection, and feeds the round trip and the
//! node's reported load, or the failure, to its tracker. A probe unanswered after
//! [`TIMEOUT`] is a failure; a node's next probe waits for its previous one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::directory::{Directory, NodeEntry};
use crate::health::Load;

pub const INTERVAL: Duration = Duration::from_millis(250);
pub const TIMEOUT: Duration = Duration::from_secs(1);
pub use tern_proto::forwarding::PROBE_HOST;

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// Probes every known node until the process ends.
pub async fn run(directory: Arc<Directory>) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(TIMEOUT));
    let client: ProbeClient =
        Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for node in directory.nodes() {
            if !busy.lock().unwrap_or_else(|p| p.into_inner()).insert(node.name.clone()) {
                continue;
            }
            let (client, directory, busy) = (client.clone(), directory.clone(), busy.clone());
            tokio::spawn(async move {
                let outcome = probe(&client, &node).await;
                directory.track(&node.name, &node.listen, |tracker, at| match outcome {
                    Ok((rtt, load)) => tracker.probe_answered(rtt, load, at),
                    Err(e) => {
                        let was_up = tracker.usable();
                        tracker.failed(at);
                        if was_up && !tracker.usable() {
                            tracing::warn!(node = %node.name, "node taken out: {e}");
                        }
                    }
                });
                busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&node.name);
            });
        }
    }
}

/// One probe: the round trip and what the node reported.
async fn probe(client: &ProbeClient, node: &NodeEntry) -> Result<(Duration, Load), String> {
    let request = http::Request::get(format!("http://{}/health", node.listen))
        .header(http::header::HOST, PROBE_HOST)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let answer = async {
        let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!("the probe got {status}"));
        }
        serde_json::from_slice::<Load>(&body).map_err(|e| format!("the probe's answer does not parse: {e}"))
    };
    let load = tokio::time::timeout(TIMEOUT, answer).await.map_err(|_| format!("no answer within {TIMEOUT:?}"))??;
    Ok((started.elapsed(), load))
}
