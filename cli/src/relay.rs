//! `tern relay`: stands between the control plane and the nodes of a region
//! (`tern_distribution::relay`). It enrols with the control plane once, serves nodes on a
//! QUIC endpoint (nodes name it with `tern node --relay HOST:PORT`), and keeps what it relays
//! in its data directory so that it serves its nodes across its own restart with the control
//! plane down.

use std::path::PathBuf;

use anyhow::Context;
use tern_distribution::relay::RelayConfig;
use tern_proto::distribution::NodeInfo;
use tokio::signal::unix::{SignalKind, signal};

pub struct RelayOptions {
    /// The control plane's API URLs, comma-separated.
    pub upstream: String,
    pub listen: std::net::SocketAddr,
    /// The address nodes reach the relay on; default: the bound listen address.
    pub advertise: Option<String>,
    pub join_token: Option<String>,
    pub name: String,
    pub region: String,
    pub location: (f64, f64),
    pub data: Option<PathBuf>,
}

pub async fn run(options: RelayOptions) -> anyhow::Result<()> {
    let data =
        options.data.clone().unwrap_or_else(|| crate::node::default_data_dir(&format!("relay-{}", options.name)));
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create the data directory {}", data.display()))?;
    // Bound here so that the address a node is told of is the one in use (also with port 0).
    let socket = std::net::UdpSocket::bind(options.listen)
        .with_context(|| format!("cannot open the relay's endpoint on udp {}", options.listen))?;
    let addr = socket.local_addr()?;
    let info = NodeInfo {
        name: options.name.clone(),
        region: options.region,
        location: options.location,
        listen: options.advertise.unwrap_or_else(|| addr.to_string()),
    };
    let upstream = crate::control::urls(&options.upstream);
    anyhow::ensure!(!upstream.is_empty(), "--upstream: give the control plane's URL, e.g. http://127.0.0.1:7700");
    let config = RelayConfig { upstream, join_token: options.join_token, info, socket, data };
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let mut relay = tokio::spawn(tern_distribution::relay::run(config, ready_tx));
    tokio::select! {
        _ = ready => {}
        result = &mut relay => return finished(result),
    }
    println!("tern relay {}: serving nodes on udp {addr}", options.name);
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = &mut relay => finished(result)?,
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// The relay ends only when it cannot go on.
fn finished(
    result: Result<Result<(), tern_distribution::relay::RelayError>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("the relay cannot follow the control plane")),
        Err(e) => Err(anyhow::anyhow!("the relay failed: {e}")),
    }
}
