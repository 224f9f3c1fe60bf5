//! `tern router`: learns the nodes from the control plane and sends each request to the
//! nearest healthy one (see `tern_router`). Stateless: run as many as you like.

use std::path::PathBuf;

use anyhow::Context;
use tern_router::client::Locator;
use tern_router::geo::Location;

pub struct RouterOptions {
    pub control_plane: String,
    pub token: String,
    pub listen: std::net::SocketAddr,
    pub location: Location,
    pub trusted: Vec<ipnet::IpNet>,
    pub networks: Option<PathBuf>,
    pub http2_to_nodes: bool,
}

pub async fn run(options: RouterOptions) -> anyhow::Result<()> {
    let networks = match &options.networks {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Locator::parse_networks(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Vec::new(),
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    println!("tern router: listening on http://{}", listener.local_addr()?);
    let config = tern_router::RouterConfig {
        control_plane: options.control_plane,
        token: options.token,
        location: options.location,
        locator: Locator::new(options.trusted, networks),
        http2_to_nodes: options.http2_to_nodes,
    };
    tokio::select! {
        _ = tern_router::run(config, listener) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?.recv().await; Ok::<_, std::io::Error>(()) } => {}
    }
    Ok(())
}
