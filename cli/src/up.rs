//! `tern up`: the whole platform on one machine. Starts, as child processes of the same
//! binary, a control plane on the embedded store, two edge nodes and a router; deploys the
//! given function projects (default: every project under `./examples`); prints where
//! everything is; and stops it all on Ctrl-C. Children die with it (the kernel sends them
//! SIGTERM when it goes). State is kept under `--data`, so a second `tern up` finds what
//! the first deployed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use bytes::Bytes;

use crate::control::{Credentials, call};

/// The two local nodes: name, region, location (lat,lon).
const NODES: [(&str, &str, &str); 2] = [("local-a", "local-a", "52.37,4.90"), ("local-b", "local-b", "50.11,8.68")];
/// Where the router says it is (the first node's city).
const ROUTER_LOCATION: &str = "52.37,4.90";
/// How long a child gets to say it is up.
const START_PATIENCE: Duration = Duration::from_secs(60);

pub struct UpOptions {
    pub paths: Vec<PathBuf>,
    pub listen: std::net::SocketAddr,
    pub data: Option<PathBuf>,
}

/// A child process of `tern up`, stopped (SIGTERM, then SIGKILL) when dropped.
struct Role {
    name: String,
    child: Child,
}

impl Drop for Role {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::warn!(role = %self.name, "did not stop within 5 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(options: UpOptions) -> anyhow::Result<()> {
    let data = options.data.unwrap_or_else(default_data_dir);
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let paths = if options.paths.is_empty() { examples()? } else { options.paths };

    let cp_data = data.join("control-plane");
    let (cp, cp_url) = start(
        "control-plane",
        &logs,
        &["control-plane", "--listen", "127.0.0.1:0", "--data", &cp_data.display().to_string()],
        "tern control-plane: listening on ",
    )?;
    let read = |file: &str| -> anyhow::Result<String> {
        let path = cp_data.join(file);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .trim()
            .to_string())
    };
    let (admin_token, join_token) = (read("admin-token")?, read("join-token")?);
    let mut roles = vec![cp];
    for (name, region, location) in NODES {
        let node_data = data.join(name).display().to_string();
        let args = [
            "node",
            "--control-plane",
            &cp_url,
            "--join-token",
            &join_token,
            "--name",
            name,
            "--region",
            region,
            "--location",
            location,
            "--listen",
            "127.0.0.1:0",
            "--data",
            &node_data,
            "--trusted-proxy",
            "127.0.0.0/8",
        ];
        let (role, addr) = start(name, &logs, &args, &format!("tern node {name}: serving on "))?;
        roles.push(role);
        println!("node {name} ({region}) on {addr}");
    }
    let listen = options.listen.to_string();
    let router_args = [
        "router",
        "--control-plane",
        &cp_url,
        "--join-token",
        &join_token,
        "--listen",
        &listen,
        "--location",
        ROUTER_LOCATION,
        "--trusted-upstream",
        "127.0.0.0/8",
    ];
    let (router, router_url) = start("router", &logs, &router_args, "tern router: listening on ")?;
    roles.push(router);

    let credentials = Credentials { url: cp_url.clone(), token: Some(admin_token.clone()) };
    let mut deployed = Vec::new();
    for path in &paths {
        match crate::control::deploy(path, Some(Duration::from_secs(60)), &credentials).await {
            Ok(()) => deployed.push(crate::project::load(path)?),
            Err(e) => eprintln!("tern up: {} was not deployed: {e:#}", path.display()),
        }
    }
    until_routable(&credentials, &router_url, &logs).await?;
    let port = router_url.rsplit(':').next().unwrap_or_default();
    println!();
    println!("Tern is up: a control plane, {} nodes and a router.", NODES.len());
    println!("  router          {router_url}   (send requests here)");
    for bundle in &deployed {
        let routes: Vec<&str> = bundle.manifest.routes.iter().map(|r| r.as_str()).collect();
        let routes = if routes.is_empty() { String::new() } else { format!("   routes: {}", routes.join(", ")) };
        println!("  {:<15} http://{}.localhost:{port}/{routes}", bundle.name(), bundle.name());
    }
    println!("  control plane   {cp_url}");
    println!("  logs            {}", logs.display());
    println!();
    println!("Deploy to it from another shell:");
    println!("  export TERN_CONTROL_PLANE={cp_url} TERN_TOKEN={admin_token}");
    println!("  tern deploy PATH && tern status");
    println!();
    println!("Ctrl-C stops everything.");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = check.tick() => {
                for role in &mut roles {
                    if let Ok(Some(status)) = role.child.try_wait() {
                        let log = logs.join(format!("{}.log", role.name));
                        bail!("{} stopped ({status}); see {}", role.name, log.display());
                    }
                }
            }
        }
    }
    println!("tern up: stopping");
    // Router first, control plane last (drop order is reverse of pushing).
    while let Some(role) = roles.pop() {
        drop(role);
    }
    Ok(())
}

/// Waits until the router sees every node up and knows the control plane's latest revision,
/// so that the URLs printed next answer at once.
async fn until_routable(cp: &Credentials, router_url: &str, logs: &Path) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + START_PATIENCE;
    let router = Credentials { url: router_url.to_string(), token: None };
    let own = [("host", tern_router::STATUS_HOST.to_string())];
    loop {
        let revision = call(cp, http::Method::GET, "/v1/status", &[], Bytes::new()).await?["revision"].as_u64();
        let status = call(&router, http::Method::GET, "/status", &own, Bytes::new()).await?;
        let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
        let up = nodes.iter().filter(|n| n["health"] == "up").count();
        if up == NODES.len() && status["revision"].as_u64() >= revision {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the router sees {up} of {} nodes up after {START_PATIENCE:?}; see {}", NODES.len(), logs.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `tern ARGS` with its log in `logs/NAME.log`; waits for the stdout line starting
/// with `ready`, and returns what follows it.
fn start(name: &str, logs: &Path, args: &[&str], ready: &str) -> anyhow::Result<(Role, String)> {
    let log_path = logs.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut command = Command::new(std::env::current_exe().context("cannot find the tern executable")?);
    command.args(["--log-format", "json"]).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    // SAFETY: only an async-signal-safe system call between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().with_context(|| format!("cannot start {name}"))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_string();
    std::thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !found && let Some(rest) = line.strip_prefix(&ready) {
                found = true;
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let role = Role { name: name.to_string(), child };
    match rx.recv_timeout(START_PATIENCE) {
        Ok(rest) => Ok((role, rest)),
        Err(_) => bail!("{name} did not start; see {}", log_path.display()),
    }
}

/// Every project under `./examples` that needs no build step (a folder with tern.toml
/// whose main file exists).
fn examples() -> anyhow::Result<Vec<PathBuf>> {
    let dir = Path::new("examples");
    let entries = std::fs::read_dir(dir).with_context(|| {
        "no paths given and no ./examples folder here: give function projects to deploy".to_string()
    })?;
    let mut paths: Vec<PathBuf> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.join("tern.toml").is_file()).collect();
    paths.sort();
    Ok(paths)
}

/// `$XDG_DATA_HOME/tern/up`, else `~/.local/share/tern/up`.
fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tern").join("up")
}
