//! `tern dev PATH... [--port N]`: the edge node's runtime on a laptop.
//!
//! Serves the given function projects on one port. With one project it answers whatever
//! the Host; with several, each is reached as `NAME.localhost:PORT` or through its
//! `routes`. Files are watched: a change reloads the project as a new version (in-flight
//! requests finish on the old one). A project that fails to read keeps its last good
//! version; modules that fail to compile are reported with file and line, and the server
//! keeps running.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tern_edge_node::{EdgeNode, ErrorDetail, RouteTable};
use tern_proto::Bundle;
use tern_runtime::IsolateThreads;

use crate::project;

/// Quiet period after a file change before reloading (editors write in bursts).
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(100);

pub struct DevOptions {
    pub paths: Vec<PathBuf>,
    pub addr: IpAddr,
    pub port: u16,
    pub isolate_threads: usize,
}

struct Project {
    path: PathBuf,
    bundle: Arc<Bundle>,
}

pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    let mut projects = Vec::new();
    for path in &options.paths {
        let bundle = project::load(path)?;
        let path = path.canonicalize().with_context(|| format!("{}", path.display()))?;
        projects.push(Project { path, bundle: Arc::new(bundle) });
    }
    let mut names: Vec<&str> = projects.iter().map(|p| p.bundle.name()).collect();
    names.sort_unstable();
    if let Some(dup) = names.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("two projects are named {:?}; names must be unique", dup[0]);
    }
    let isolates = IsolateThreads::start(options.isolate_threads)?;
    let node = Arc::new(EdgeNode::new(isolates, ErrorDetail::Expose));
    let single = projects.len() == 1;
    node.set_routes(table(&projects, single));
    let local = tern_edge_node::server::listen(&node, SocketAddr::new(options.addr, options.port))
        .with_context(|| format!("cannot listen on {}:{}", options.addr, options.port))?;
    for p in &projects {
        let url = if single {
            format!("http://{local}/")
        } else {
            format!("http://{}.localhost:{}/", p.bundle.name(), local.port())
        };
        println!("tern dev: serving {} (version {}) at {url}", p.bundle.name(), p.bundle.id().short());
    }
    println!("tern dev: listening on http://{local}");

    let (changes_tx, mut changes) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let _watcher = watch(&projects, changes_tx)?;

    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            changed = changes.recv() => {
                let Some(first) = changed else { break };
                let mut touched = vec![first];
                tokio::time::sleep(RELOAD_DEBOUNCE).await;
                while let Ok(p) = changes.try_recv() {
                    touched.push(p);
                }
                if reload(&mut projects, &touched) {
                    node.set_routes(table(&projects, single));
                }
            }
        }
    }
    Ok(())
}

fn table(projects: &[Project], single: bool) -> RouteTable {
    let fallback = single.then(|| projects[0].bundle.name());
    RouteTable::new(projects.iter().map(|p| p.bundle.clone()), fallback)
}

/// Reloads the projects that contain a changed path; true if any version changed.
fn reload(projects: &mut [Project], touched: &[PathBuf]) -> bool {
    let mut changed = false;
    for p in projects.iter_mut() {
        // `p.path` is canonical; notify reports absolute paths.
        if !touched.iter().any(|t| t.starts_with(&p.path)) {
            continue;
        }
        match project::load(&p.path) {
            Ok(bundle) if bundle.id() == p.bundle.id() => {}
            Ok(bundle) => {
                println!("tern dev: reloaded {} (version {})", bundle.name(), bundle.id().short());
                p.bundle = Arc::new(bundle);
                changed = true;
            }
            Err(e) => eprintln!("tern dev: not reloaded, still serving version {}: {e}", p.bundle.id().short()),
        }
    }
    changed
}

fn watch(
    projects: &[Project],
    changes: tokio::sync::mpsc::UnboundedSender<PathBuf>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && (event.kind.is_modify() || event.kind.is_create() || event.kind.is_remove())
        {
            for path in event.paths {
                let _ = changes.send(path);
            }
        }
    })
    .context("cannot watch project files")?;
    for p in projects {
        let path = &p.path;
        // A single file is watched through its folder, so editors that replace it still count.
        let (target, mode) = if path.is_dir() {
            (path.clone(), RecursiveMode::Recursive)
        } else {
            (path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")), RecursiveMode::NonRecursive)
        };
        watcher.watch(&target, mode).with_context(|| format!("cannot watch {}", target.display()))?;
    }
    Ok(watcher)
}
