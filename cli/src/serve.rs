//! `tern serve` (internal, started by `tern dev`): serves function projects on a listening
//! socket inherited as standard input, the way inetd hands sockets to its servers.
//!
//! It boots every function's isolate, prints `ready` on standard output, and serves until
//! SIGTERM (or SIGINT, or its parent going away); then it stops accepting, lets open
//! connections finish their requests, and exits. One such process serves one set of
//! versions: `tern dev` replaces the process on every reload, so no process lives long
//! enough for the engine's per-isolate leak to matter, and a crash costs a restart.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tern_edge_node::hosts::{HostConfig, HostPool};
use tern_edge_node::{Backend, EdgeNode, ErrorDetail, RouteTable, ServerLimits};
use tern_js_api::cache::ResponseCache;
use tern_js_api::egress::{Egress, EgressPolicy, TrustedRoots};
use tern_runtime::{IsolateConfig, Isolates};
use tokio::signal::unix::{SignalKind, signal};

use crate::project;

/// How long open connections get to finish after the stop signal.
const DRAIN_PATIENCE: Duration = Duration::from_secs(30);
/// How often the process checks that its parent is still there.
const PARENT_CHECK: Duration = Duration::from_millis(250);

pub struct ServeOptions {
    pub paths: Vec<PathBuf>,
    /// PEM files of certificate authorities trusted by outbound HTTPS, besides Mozilla's.
    pub ca_certs: Vec<PathBuf>,
    /// Booted isolates kept waiting for functions new to the process.
    pub warm_pool: usize,
    /// Serve the only project whatever the Host.
    pub fallback: bool,
    pub limits: ServerLimits,
    /// Listening socket inherited for the admin endpoint.
    pub admin_fd: Option<i32>,
    /// Where isolates run, and whether they may reach loopback.
    pub isolates: crate::IsolateArgs,
    pub log_format: &'static str,
}

pub async fn run(options: ServeOptions) -> anyhow::Result<()> {
    // First of all, so that even a boot that never finishes cannot outlive `tern dev`: the
    // kernel sends SIGTERM when the parent dies (checked once here for the race before it).
    let parent = std::os::unix::process::parent_id();
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).context("cannot watch the parent process")?;
    if parent == 1 {
        anyhow::bail!("started without a parent process (tern dev went away)");
    }
    let listener = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::net::TcpListener::from)
        .context("standard input must be the listening socket")?;
    let mut bundles = Vec::new();
    for path in &options.paths {
        bundles.push(Arc::new(project::load(path)?));
    }
    let fallback = options.fallback.then(|| bundles[0].name().to_string());
    let hosts = options.isolates.isolate_hosts.unwrap_or(0);
    let backend = backend(&options.isolates, hosts, &options.ca_certs, options.warm_pool, options.log_format).await?;
    let node = Arc::new(EdgeNode::new(backend, ErrorDetail::Expose, options.limits));
    node.set_routes(RouteTable::new(bundles, fallback.as_deref())).await;
    let serving = tern_edge_node::server::listen_on(&node, listener).context("cannot serve the inherited socket")?;
    if let Some(fd) = options.admin_fd {
        // SAFETY: `tern dev` placed a listening socket at this descriptor for this process.
        let admin = unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        admin.set_nonblocking(true)?;
        let admin =
            tokio::net::TcpListener::from_std(admin).context("the admin descriptor is not a listening socket")?;
        tokio::spawn(tern_edge_node::metrics::serve_admin(node.metrics().clone(), admin));
    }
    println!("ready");
    std::io::stdout().flush()?;

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut check = tokio::time::interval(PARENT_CHECK);
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = check.tick() => {
                if std::os::unix::process::parent_id() != parent {
                    tracing::info!("tern dev went away; stopping");
                    break;
                }
            }
        }
    }
    serving.drain(DRAIN_PATIENCE).await;
    Ok(())
}

/// Where the process's isolates run: in it (`hosts` 0), or in `hosts` isolate host
/// processes it starts, which share the isolates' memory budget.
pub async fn backend(
    isolates: &crate::IsolateArgs,
    hosts: usize,
    ca_certs: &[PathBuf],
    warm_pool: usize,
    log_format: &'static str,
) -> anyhow::Result<Backend> {
    if hosts == 0 {
        let egress = Egress { policy: egress_policy(isolates.allow_loopback), roots: trusted_roots(ca_certs)? };
        return Ok(Backend::InProcess(Isolates::start(IsolateConfig {
            egress,
            warm_pool,
            memory_budget: isolates.isolate_memory_budget_mib << 20,
            idle_ttl: isolates.isolate_idle_ttl,
            response_cache: ResponseCache::new(isolates.cache_memory_mib << 20),
            ..IsolateConfig::default()
        })?));
    }
    trusted_roots(ca_certs)?;
    let mut args: Vec<String> = vec!["--log-format".into(), log_format.into(), "isolate-host".into()];
    args.extend(["--warm-pool".into(), warm_pool.to_string()]);
    // Each function lives on one host, so the hosts share the budgets rather than each
    // having them whole.
    let share = |mib: u64| (mib / hosts as u64).max(1).to_string();
    args.extend(["--memory-budget-mib".into(), share(isolates.isolate_memory_budget_mib)]);
    args.extend(["--cache-memory-mib".into(), share(isolates.cache_memory_mib)]);
    args.extend(["--idle-ttl".into(), format!("{}ms", isolates.isolate_idle_ttl.as_millis())]);
    if isolates.allow_loopback {
        args.push("--allow-loopback".into());
    }
    for ca in ca_certs {
        args.extend(["--ca-cert".into(), ca.display().to_string()]);
    }
    let config = HostConfig {
        count: hosts,
        recycle_after: isolates.host_recycle_after,
        program: std::env::current_exe().context("cannot find the tern executable")?,
        args,
    };
    Ok(Backend::Hosts(HostPool::start(config, Default::default()).await.context("cannot start isolate hosts")?))
}

/// Public destinations, plus loopback when asked.
pub fn egress_policy(allow_loopback: bool) -> EgressPolicy {
    if allow_loopback {
        let loopback = ["127.0.0.0/8", "::1/128"].map(|r| r.parse().expect("valid range"));
        EgressPolicy::PublicOnly.also_allowing(&loopback)
    } else {
        EgressPolicy::PublicOnly
    }
}

/// What an isolate host may hold: memory for isolates (an estimate, by count) and for the
/// Cache API's responses, and how long an idle isolate stays.
pub struct HostBudgets {
    pub isolates_mib: u64,
    pub cache_mib: u64,
    pub idle_ttl: Duration,
}

/// `tern isolate-host` (internal, started by `tern serve --isolate-hosts`): runs isolates
/// for the node connected on standard input (a Unix socket), until it goes away.
pub async fn run_isolate_host(
    warm_pool: usize,
    budgets: HostBudgets,
    allow_loopback: bool,
    ca_certs: &[PathBuf],
) -> anyhow::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).context("cannot watch the parent process")?;
    let socket = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::os::unix::net::UnixStream::from)
        .context("standard input must be the node's socket")?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UnixStream::from_std(socket)?;
    let egress = Egress { policy: egress_policy(allow_loopback), roots: trusted_roots(ca_certs)? };
    let isolates = Isolates::start(IsolateConfig {
        egress,
        warm_pool,
        memory_budget: budgets.isolates_mib << 20,
        idle_ttl: budgets.idle_ttl,
        response_cache: ResponseCache::new(budgets.cache_mib << 20),
        ..Default::default()
    })?;
    tokio::select! {
        _ = tern_edge_node::host_server::serve_host(isolates, socket) => {}
        _ = async { signal(SignalKind::terminate())?.recv().await; Ok::<_, std::io::Error>(()) } => {}
    }
    Ok(())
}

/// Mozilla's roots plus the given CA files; `None` when there are none.
pub fn trusted_roots(files: &[PathBuf]) -> anyhow::Result<Option<Arc<TrustedRoots>>> {
    if files.is_empty() {
        return Ok(None);
    }
    let pems = files
        .iter()
        .map(|f| Ok((f.display().to_string(), std::fs::read(f).with_context(|| format!("{}", f.display()))?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let roots = TrustedRoots::with_extra_pem(pems.iter().map(|(name, pem)| (name.as_str(), pem.as_slice())))?;
    Ok(Some(Arc::new(roots)))
}
