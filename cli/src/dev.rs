//! `tern dev PATH... [--port N]`: the edge node's runtime on a laptop.
//!
//! Serves the given function projects on one port. With one project it answers whatever
//! the Host; with several, each is reached as `NAME.localhost:PORT` or through its
//! `routes`. Files are watched: a change reloads the projects as new versions.
//!
//! This process is a supervisor: it owns the listening socket and the file watcher, and a
//! child `tern serve` process serves one set of versions. A reload starts a new child, waits
//! until its isolates are booted (compile errors are reported then, with file and line),
//! and only then tells the old child to drain: requests in flight finish on the old
//! version, new ones reach the new. A child that dies is replaced. A project that fails to
//! read (say, a broken `tern.toml`) keeps the last good version serving.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tern_proto::Bundle;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::project;

/// Quiet period after a file change before reloading (editors write in bursts).
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(100);
/// How long a new server process may take to boot its isolates.
const BOOT_PATIENCE: Duration = Duration::from_secs(60);
/// How long `tern dev` waits, when it is stopped, for its server to finish answering.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(2);
/// Descriptor the admin listener has in the server process.
const ADMIN_FD: i32 = 3;
/// Pause before replacing a server process that died, so a crash loop cannot spin.
const RESTART_BACKOFF: Duration = Duration::from_millis(200);

pub struct DevOptions {
    pub paths: Vec<PathBuf>,
    pub addr: IpAddr,
    pub port: u16,
    pub http_threads: usize,
    pub log_format: &'static str,
    pub ca_certs: Vec<PathBuf>,
    pub header_read_timeout: Duration,
    pub admin_port: Option<u16>,
    pub isolates: crate::IsolateArgs,
}

struct Project {
    path: PathBuf,
    bundle: Bundle,
}

pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    let mut projects = Vec::new();
    for path in &options.paths {
        let bundle = project::load(path)?;
        let path = path.canonicalize().with_context(|| format!("{}", path.display()))?;
        projects.push(Project { path, bundle });
    }
    let mut names: Vec<&str> = projects.iter().map(|p| p.bundle.name()).collect();
    names.sort_unstable();
    if let Some(dup) = names.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("two projects are named {:?}; names must be unique", dup[0]);
    }
    // Check the CA files here so a bad one stops `tern dev` with its name, not a child.
    crate::serve::trusted_roots(&options.ca_certs)?;
    let listener = std::net::TcpListener::bind(SocketAddr::new(options.addr, options.port))
        .with_context(|| format!("cannot listen on {}:{}", options.addr, options.port))?;
    let local = listener.local_addr()?;
    let admin = match options.admin_port {
        Some(port) => {
            let admin = std::net::TcpListener::bind(SocketAddr::new(options.addr, port))
                .with_context(|| format!("cannot listen for the admin endpoint on port {port}"))?;
            println!("tern dev: metrics at http://{}/metrics", admin.local_addr()?);
            Some(admin)
        }
        None => None,
    };
    let mut server = ServerProcess::start(&options, &listener, admin.as_ref()).await?;
    // Watch before announcing: a change made right after "listening on" must not be missed.
    let (changes_tx, mut changes) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let _watcher = watch(&projects, changes_tx)?;

    let single = projects.len() == 1;
    for p in &projects {
        let url = if single {
            format!("http://{local}/")
        } else {
            format!("http://{}.localhost:{}/", p.bundle.name(), local.port())
        };
        println!("tern dev: serving {} (version {}) at {url}", p.bundle.name(), p.bundle.id().short());
    }
    println!("tern dev: listening on http://{local}");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            status = server.child.wait() => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                eprintln!("tern dev: the server process stopped ({status}); starting a new one");
                tokio::time::sleep(RESTART_BACKOFF).await;
                server = ServerProcess::start(&options, &listener, admin.as_ref()).await?;
            }
            changed = changes.recv() => {
                let Some(first) = changed else { break };
                let mut touched = vec![first];
                tokio::time::sleep(RELOAD_DEBOUNCE).await;
                while let Ok(p) = changes.try_recv() {
                    touched.push(p);
                }
                let reloaded = reload(&mut projects, &touched);
                if reloaded.is_empty() {
                    continue;
                }
                match ServerProcess::start(&options, &listener, admin.as_ref()).await {
                    Ok(next) => {
                        std::mem::replace(&mut server, next).drain();
                        for (name, version) in reloaded {
                            println!("tern dev: reloaded {name} (version {version})");
                        }
                    }
                    Err(e) => eprintln!("tern dev: not reloaded, the previous version keeps serving: {e:#}"),
                }
            }
        }
    }
    // On the way out, give the server a moment to finish what it is answering.
    server.stop(SHUTDOWN_PATIENCE).await;
    Ok(())
}

/// A child `tern serve` process and what it serves.
struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Starts a server for the projects on `listener` and waits until it is ready.
    /// The admin listener, if any, is handed over as descriptor [`ADMIN_FD`].
    async fn start(
        options: &DevOptions,
        listener: &std::net::TcpListener,
        admin: Option<&std::net::TcpListener>,
    ) -> anyhow::Result<Self> {
        let socket = std::os::fd::OwnedFd::from(listener.try_clone()?);
        let mut command = Command::new(std::env::current_exe().context("cannot find the tern executable")?);
        command
            .args(["--log-format", options.log_format, "serve", "--http-threads"])
            .arg(options.http_threads.to_string())
            .args(if options.paths.len() == 1 { &["--any-host"][..] } else { &[] })
            .args(options.isolates.to_args())
            .args(options.ca_certs.iter().flat_map(|c| [std::ffi::OsStr::new("--ca-cert"), c.as_os_str()]))
            .arg(format!("--header-read-timeout={}ms", options.header_read_timeout.as_millis()))
            .args(&options.paths)
            .stdin(Stdio::from(socket))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(admin) = admin {
            let admin = std::os::fd::OwnedFd::from(admin.try_clone()?);
            command.arg(format!("--admin-fd={ADMIN_FD}"));
            let raw = std::os::fd::AsRawFd::as_raw_fd(&admin);
            // SAFETY: dup2 is async-signal-safe; it places the admin socket at ADMIN_FD in the
            // child (without close-on-exec); `admin` outlives the spawn.
            unsafe {
                command.pre_exec(move || {
                    if libc::dup2(raw, ADMIN_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = command.spawn().context("cannot start the server process");
            drop(admin);
            return Self::wait_ready(child?).await;
        }
        Self::wait_ready(command.spawn().context("cannot start the server process")?).await
    }

    /// Waits until the started process says `ready`.
    async fn wait_ready(mut child: Child) -> anyhow::Result<Self> {
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(BOOT_PATIENCE, async {
            while let Some(line) = lines.next_line().await? {
                if line == "ready" {
                    return Ok(true);
                }
                println!("{line}");
            }
            Ok::<_, std::io::Error>(false)
        })
        .await;
        match ready {
            Ok(Ok(true)) => {
                // Keep draining its standard output, so a full pipe can never block it.
                tokio::spawn(async move {
                    while let Ok(Some(line)) = lines.next_line().await {
                        println!("{line}");
                    }
                });
                Ok(Self { child })
            }
            Ok(Ok(false)) | Ok(Err(_)) => {
                let status = child.wait().await.map_or_else(|e| e.to_string(), |s| s.to_string());
                anyhow::bail!("the server process exited before it was ready ({status})")
            }
            Err(_) => anyhow::bail!("the server process was not ready within {BOOT_PATIENCE:?}"),
        }
    }

    /// Tells the process to drain and waits up to `patience` for it to exit, then kills it.
    async fn stop(mut self, patience: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(patience, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    /// Tells the process to stop accepting, finish its requests and exit; reaps it later.
    fn drain(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        tokio::spawn(async move {
            let _ = self.child.wait().await;
        });
    }
}

/// Re-reads the projects that contain a changed path; returns the ones whose version changed.
fn reload(projects: &mut [Project], touched: &[PathBuf]) -> Vec<(String, String)> {
    let mut changed = Vec::new();
    for p in projects.iter_mut() {
        // `p.path` is canonical; notify reports absolute paths.
        if !touched.iter().any(|t| t.starts_with(&p.path)) {
            continue;
        }
        match project::load(&p.path) {
            Ok(bundle) if bundle.id() == p.bundle.id() => {}
            Ok(bundle) => {
                changed.push((bundle.name().to_string(), bundle.id().short()));
                p.bundle = bundle;
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
        // A single file is watched through its folder, so editors that replace it still count.
        let (target, mode) = if p.path.is_dir() {
            (p.path.clone(), RecursiveMode::Recursive)
        } else {
            (p.path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")), RecursiveMode::NonRecursive)
        };
        watcher.watch(&target, mode).with_context(|| format!("cannot watch {}", target.display()))?;
    }
    Ok(watcher)
}
