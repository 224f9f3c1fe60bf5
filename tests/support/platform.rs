//! The platform's processes for tests: a `tern control-plane` with its data directory,
//! `tern node`s and `tern relay`s enrolled with it, each the real binary on loopback,
//! killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use super::PATIENCE;
use super::etcd::Etcd;

/// Where a test's control plane keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The default: one file under the data directory.
    Embedded,
    /// A real etcd the test starts, one per control plane (dropped with it).
    Etcd,
}

/// A running `tern control-plane`.
pub struct ControlPlane {
    child: Child,
    pub url: String,
    pub token: String,
    pub join_token: String,
    data: PathBuf,
    pub output: Arc<Mutex<String>>,
    /// `--store`, if not the embedded one.
    pub store: Option<String>,
    /// The etcd this control plane started for itself, if any.
    pub etcd: Option<Arc<Etcd>>,
}

/// A command that starts the `tern` binary, behind `wrapper` (like `ip netns exec NS`) if any.
pub fn tern_command(wrapper: &[String]) -> Command {
    match wrapper.split_first() {
        None => Command::new(env!("CARGO_BIN_EXE_tern")),
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(env!("CARGO_BIN_EXE_tern"));
            cmd
        }
    }
}

impl ControlPlane {
    /// Starts on a free port.
    pub fn start(data: &Path) -> Self {
        Self::start_on(data, "127.0.0.1:0")
    }

    /// Starts on a free port with its state in `backend` (an etcd of its own, with its
    /// data beside `data`, for [`Backend::Etcd`]).
    pub fn start_in(data: &Path, backend: Backend) -> Self {
        match backend {
            Backend::Embedded => Self::start(data),
            Backend::Etcd => {
                let etcd = Arc::new(Etcd::start(&data.with_extension("etcd")));
                let mut cp = Self::start_with_store(data, "127.0.0.1:0", &etcd.url);
                cp.etcd = Some(etcd);
                cp
            }
        }
    }

    /// Starts on `listen` with `--store STORE` (a replica of any other naming it).
    pub fn start_with_store(data: &Path, listen: &str, store: &str) -> Self {
        Self::spawn(&[], data, listen, Some(store))
    }

    /// Starts on `listen` (to come back on the same address after a stop).
    pub fn start_on(data: &Path, listen: &str) -> Self {
        Self::start_wrapped(&[], data, listen)
    }

    /// Starts behind `wrapper` (see [`tern_command`]) on `listen`.
    pub fn start_wrapped(wrapper: &[String], data: &Path, listen: &str) -> Self {
        Self::spawn(wrapper, data, listen, None)
    }

    fn spawn(wrapper: &[String], data: &Path, listen: &str, store: Option<&str>) -> Self {
        let mut command = tern_command(wrapper);
        command.args(["--log-format", "json", "control-plane", "--listen", listen, "--data"]).arg(data);
        if let Some(store) = store {
            command.args(["--store", store]);
        }
        let mut child =
            command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start tern control-plane");
        let (output, _) = capture(child.stderr.take().unwrap());
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let Some(Ok(first)) = lines.next() else {
            let _ = child.wait();
            std::thread::sleep(std::time::Duration::from_millis(100));
            panic!("tern control-plane printed nothing:\n{}", output.lock().unwrap());
        };
        let url = first.strip_prefix("tern control-plane: listening on ").expect(&first).to_string();
        std::thread::spawn(move || lines.for_each(drop));
        let read = |file: &str| std::fs::read_to_string(data.join(file)).unwrap().trim().to_string();
        Self {
            child,
            url,
            token: read("admin-token"),
            join_token: read("join-token"),
            data: data.to_owned(),
            output,
            store: store.map(str::to_string),
            etcd: None,
        }
    }

    /// Stops it (SIGKILL) and starts it again on the same address and data.
    pub fn restart(&mut self) {
        self.stop();
        let listen = self.url.strip_prefix("http://").unwrap().to_string();
        let etcd = self.etcd.take();
        *self = Self::spawn(&[], &self.data.clone(), &listen, self.store.clone().as_deref());
        self.etcd = etcd;
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs `tern ARGS` against this control plane with the admin token.
    pub fn tern(&self, args: &[&str]) -> Output {
        self.tern_with_token(args, Some(&self.token))
    }

    pub fn tern_with_token(&self, args: &[&str], token: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.args(args).env("TERN_CONTROL_PLANE", &self.url).env_remove("TERN_TOKEN");
        if let Some(token) = token {
            cmd.env("TERN_TOKEN", token);
        }
        cmd.output().expect("run tern")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `tern node`.
pub struct Node {
    child: Child,
    pub name: String,
    /// `host:port` of its HTTP listener.
    pub addr: String,
    args: Vec<String>,
    wrapper: Vec<String>,
    pub output: Arc<Mutex<String>>,
    /// The thread collecting its stderr, done once the process has exited and all is read.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// `tern node` named `name`, enrolling with `cp`'s join token, data under `data`.
    pub fn start(cp: &ControlPlane, name: &str, region: &str, data: &Path) -> Self {
        Self::start_at(&cp.url, &cp.join_token, name, region, data)
    }

    /// `tern node` following `cp` through `relay` first.
    pub fn start_via(cp: &ControlPlane, relay: &Relay, name: &str, region: &str, data: &Path) -> Self {
        let mut args = Self::args(&cp.url, &cp.join_token, name, region, data);
        args.extend(["--relay".to_string(), relay.addr.clone()]);
        Self::spawn(name, args).unwrap_or_else(|output| panic!("tern node {name} did not start:\n{output}"))
    }

    /// `tern node --control-plane CONTROL_PLANE` (one URL or a comma-separated list).
    pub fn start_at(control_plane: &str, join_token: &str, name: &str, region: &str, data: &Path) -> Self {
        let args = Self::args(control_plane, join_token, name, region, data);
        Self::spawn(name, args).unwrap_or_else(|output| panic!("tern node {name} did not start:\n{output}"))
    }

    /// The arguments of `tern node` on a free port.
    pub fn args(control_plane: &str, join_token: &str, name: &str, region: &str, data: &Path) -> Vec<String> {
        [
            "--log-format",
            "json",
            "node",
            "--control-plane",
            control_plane,
            "--join-token",
            join_token,
            "--name",
            name,
            "--region",
            region,
            "--location",
            "52.37,4.90",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Starts `tern node` with `args`; the error is what it printed when it did not come up.
    pub fn spawn(name: &str, args: Vec<String>) -> Result<Self, String> {
        Self::spawn_wrapped(Vec::new(), name, args)
    }

    /// Starts `tern node` with `args` behind `wrapper` (see [`tern_command`]).
    pub fn spawn_wrapped(wrapper: Vec<String>, name: &str, args: Vec<String>) -> Result<Self, String> {
        let prefix = format!("tern node {name}: serving on http://");
        let (child, addr, output, reader) = start_until(&wrapper, &args, &prefix)?;
        Ok(Self { child, name: name.to_string(), addr, args, wrapper, output, reader: Some(reader) })
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it (SIGKILL) and starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.stop();
        *self = Self::spawn_wrapped(self.wrapper.clone(), &self.name.clone(), self.args.clone())
            .expect("tern node restarts");
    }

    /// Waits for the node to exit and for everything it printed to be read; its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits (at most [`PATIENCE`]) until the node's log contains `needle`.
    pub async fn wait_for_output(&self, needle: &str) -> bool {
        super::output_comes(&self.output, needle).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `tern relay`.
pub struct Relay {
    child: Child,
    pub name: String,
    /// `host:port` of its distribution endpoint (UDP), the same across restarts.
    pub addr: String,
    args: Vec<String>,
    pub output: Arc<Mutex<String>>,
}

impl Relay {
    /// `tern relay` named `name` on a free UDP port, enrolling with `cp`'s join token.
    pub fn start(cp: &ControlPlane, name: &str, data: &Path) -> Self {
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let args: Vec<String> = [
            "--log-format",
            "json",
            "relay",
            "--upstream",
            &cp.url,
            "--join-token",
            &cp.join_token,
            "--name",
            name,
            "--region",
            "eu-west",
            "--listen",
            &addr,
            "--data",
            data.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        Self::spawn(name, addr, args)
    }

    fn spawn(name: &str, addr: String, args: Vec<String>) -> Self {
        let ready = format!("tern relay {name}: serving nodes on udp {addr}");
        let (child, _, output, _) = start_until(&[], &args, &ready)
            .unwrap_or_else(|output| panic!("tern relay {name} did not start:\n{output}"));
        Self { child, name: name.to_string(), addr, args, output }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it (SIGKILL) and starts it again with the same arguments and address.
    pub fn restart(&mut self) {
        self.stop();
        *self = Self::spawn(&self.name.clone(), self.addr.clone(), self.args.clone());
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A started process: the child, the rest of its ready line, its standard error as it comes,
/// and the thread collecting it.
type Started = (Child, String, Arc<Mutex<String>>, std::thread::JoinHandle<()>);

/// Starts `tern ARGS` behind `wrapper` and waits (at most [`PATIENCE`]) for the line on its
/// standard output that starts with `ready`. The error is what it printed when it did not
/// come up.
fn start_until(wrapper: &[String], args: &[String], ready: &str) -> Result<Started, String> {
    let mut child = tern_command(wrapper)
        .args(args)
        .env("TERN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tern");
    let (output, reader) = capture(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let prefix = ready.to_string();
    let printed = output.clone();
    // What it prints on standard output joins its log, for tests that read either.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(&prefix) {
                let _ = tx.send(rest.to_string());
            }
            printed.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(rest) => Ok((child, rest, output, reader)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(output.lock().unwrap().clone())
        }
    }
}

/// Collects a child's stream into a shared string, on a thread that ends with the stream.
fn capture(stream: impl std::io::Read + Send + 'static) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let output = Arc::new(Mutex::new(String::new()));
    let out = output.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            out.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    (output, reader)
}

/// A running `tern router`.
pub struct Router {
    child: Child,
    /// `host:port` it serves on.
    pub addr: String,
    pub output: Arc<Mutex<String>>,
}

impl Router {
    /// `tern router ARGS` behind `wrapper` (see [`tern_command`]).
    pub fn start_wrapped(wrapper: &[String], args: &[String]) -> Self {
        let args: Vec<String> =
            ["--log-format", "json", "router"].map(String::from).into_iter().chain(args.to_vec()).collect();
        let (child, addr, output, _) = start_until(wrapper, &args, "tern router: listening on http://")
            .unwrap_or_else(|output| panic!("tern router did not start:\n{output}"));
        Self { child, addr, output }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
