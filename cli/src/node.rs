//! `tern node`: an edge node that serves what the control plane assigns it. It serves the
//! state it applied last at once (kept in its data directory, verified again), then the
//! distribution agent (`tern_distribution::agent`) enrols it if needed, subscribes, and
//! swaps in each verified state whole. Functions answer by their routes and by
//! `NAME.localhost`-style hosts, as under `tern dev`; errors do not expose details.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tern_distribution::agent::{AgentConfig, Apply};
use tern_edge_node::{EdgeIdentity, EdgeNode, ErrorDetail, RouteTable, ServerLimits};
use tern_proto::distribution::NodeInfo;
use tokio::signal::unix::{SignalKind, signal};

/// How long open connections get to finish after the stop signal.
const DRAIN_PATIENCE: Duration = Duration::from_secs(30);

pub struct NodeOptions {
    pub control_plane: String,
    /// Relays to subscribe through (comma-separated `host:port`), before the control plane.
    pub relays: Option<String>,
    pub join_token: Option<String>,
    pub name: String,
    pub region: String,
    pub location: (f64, f64),
    pub listen: std::net::SocketAddr,
    /// The address others reach the node's HTTP on; default: the bound listen address.
    pub advertise: Option<String>,
    pub data: Option<PathBuf>,
    pub isolates: crate::IsolateArgs,
    pub ca_certs: Vec<PathBuf>,
    pub warm_pool: usize,
    pub limits: ServerLimits,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub max_in_flight: Option<u64>,
    pub admin_listen: Option<std::net::SocketAddr>,
    pub log_format: &'static str,
}

pub async fn run(options: NodeOptions) -> anyhow::Result<()> {
    let data = options.data.clone().unwrap_or_else(|| default_data_dir(&format!("node-{}", options.name)));
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let hosts = options.isolates.isolate_hosts.unwrap_or_else(crate::default_isolate_hosts);
    let backend =
        crate::serve::backend(&options.isolates, hosts, &options.ca_certs, options.warm_pool, options.log_format)
            .await?;
    let edge = EdgeIdentity {
        colo: Some(options.region.clone()),
        trusted_proxies: options.trusted_proxies.clone(),
        capacity: options.max_in_flight,
    };
    let node = Arc::new(EdgeNode::new(backend, ErrorDetail::Hide, options.limits).with_edge(edge));
    let listener =
        std::net::TcpListener::bind(options.listen).with_context(|| format!("cannot listen on {}", options.listen))?;
    let addr = listener.local_addr()?;
    let info = NodeInfo {
        name: options.name.clone(),
        region: options.region.clone(),
        location: options.location,
        listen: options.advertise.clone().unwrap_or_else(|| addr.to_string()),
    };
    let serving_node = node.clone();
    let apply: Apply = Arc::new(move |functions| {
        let node = serving_node.clone();
        Box::pin(async move { node.set_routes(RouteTable::serving(functions, None)).await })
    });
    let control_plane = crate::control::urls(&options.control_plane);
    let relays = options.relays.as_deref().map(crate::control::urls).unwrap_or_default();
    let config = AgentConfig { control_plane, relays, join_token: options.join_token, node: info, data };
    let (restored_tx, restored) = tokio::sync::oneshot::channel();
    let mut agent = tokio::spawn(tern_distribution::agent::run(config, apply, restored_tx));
    // Serve once the kept state is back: until then connections wait in the backlog rather
    // than meet a node that knows no functions.
    tokio::select! {
        _ = restored => {}
        result = &mut agent => return finished(result),
    }
    let serving = tern_edge_node::server::listen_on(&node, listener).context("cannot serve")?;
    if let Some(admin) = options.admin_listen {
        let admin = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("cannot serve the admin endpoint on {admin}"))?;
        println!("tern node {}: admin endpoint on http://{}", options.name, admin.local_addr()?);
        tokio::spawn(tern_edge_node::metrics::serve_admin(node.metrics().clone(), admin));
    }
    println!("tern node {}: serving on http://{addr}", options.name);
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = &mut agent => finished(result)?,
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    node.set_draining();
    serving.drain(DRAIN_PATIENCE).await;
    Ok(())
}

/// The agent ends only when the node cannot go on.
fn finished(
    result: Result<Result<(), tern_distribution::agent::AgentError>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("the node cannot follow the control plane")),
        Err(e) => Err(anyhow::anyhow!("the distribution agent failed: {e}")),
    }
}

/// `$XDG_DATA_HOME/tern/DIR`, else `~/.local/share/tern/DIR`.
pub(crate) fn default_data_dir(dir: &str) -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tern").join(dir)
}

/// `LAT,LON` in degrees.
pub fn parse_location(text: &str) -> Result<(f64, f64), String> {
    let (lat, lon) = text.split_once(',').ok_or_else(|| format!("{text:?}: give LAT,LON, e.g. 52.37,4.90"))?;
    let lat: f64 = lat.trim().parse().map_err(|_| format!("{text:?}: latitude {lat:?} is not a number"))?;
    let lon: f64 = lon.trim().parse().map_err(|_| format!("{text:?}: longitude {lon:?} is not a number"))?;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(format!("{text:?}: latitude must be within ±90 and longitude within ±180"));
    }
    Ok((lat, lon))
}
