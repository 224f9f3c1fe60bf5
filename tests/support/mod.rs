//! Test harness: starts the real `tern` binary on a free port, captures what it prints, and
//! talks HTTP/1.1 or HTTP/2 (h2c) to it through hyper. No test-only code paths in the product.
#![allow(dead_code)]

pub mod etcd;
pub mod netns;
pub mod platform;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// How long a test waits for the server to come up or for a log line; generous because CI
/// machines are shared. Never a performance threshold.
/// A function that answers "fine", and on `?fork` starts a microtask chain that forks:
/// termination cannot stop it on this engine, so its isolate is declared stuck.
pub const FORKING_MICROTASKS: &str = r#"export default { fetch(req) {
    if (new URL(req.url).searchParams.has("fork")) {
        const spin = () => { Promise.resolve().then(spin); Promise.resolve().then(spin); };
        spin();
        return new Promise(() => {});
    }
    return new Response("fine");
} };"#;

pub const PATIENCE: Duration = Duration::from_secs(30);

/// A running `tern dev`.
pub struct Tern {
    child: Child,
    pub addr: SocketAddr,
    output: Arc<Mutex<String>>,
}

impl Tern {
    /// `tern dev PATHS --port 0`.
    pub fn dev(paths: &[&Path]) -> Self {
        Self::dev_with(paths, &[])
    }

    pub fn dev_with(paths: &[&Path], extra: &[&str]) -> Self {
        Self::dev_with_env(paths, extra, &[])
    }

    /// `tern dev` with extra arguments and environment variables.
    pub fn dev_with_env(paths: &[&Path], extra: &[&str], env: &[(&str, &Path)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.arg("--log-format").arg("json").arg("dev").args(paths).args(["--port", "0"]).args(extra);
        cmd.envs(env.iter().map(|(k, v)| (*k, *v)));
        cmd.env("TERN_LOG", "info").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start tern");
        let output = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("tern dev: listening on http://") {
                    let _ = addr_tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                out.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let stderr = child.stderr.take().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                out.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let addr = match addr_rx.recv_timeout(PATIENCE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("tern dev did not start; it printed:\n{}", output.lock().unwrap());
            }
        };
        Self { child, addr, output }
    }

    /// Everything the process printed so far (stdout and the JSON log on stderr).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the output contains `needle`; false after [`PATIENCE`].
    pub async fn wait_for_output(&self, needle: &str) -> bool {
        output_comes(&self.output, needle).await
    }

    /// `host:port` of the admin endpoint, as `tern dev --admin-port` prints it.
    pub fn admin_addr(&self) -> String {
        self.output()
            .lines()
            .find_map(|l| l.strip_prefix("tern dev: metrics at http://")?.strip_suffix("/metrics"))
            .expect("tern dev prints the admin address")
            .to_string()
    }

    /// The JSON log lines (stderr) as values.
    pub fn log_events(&self) -> Vec<serde_json::Value> {
        self.output().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// PIDs of this process's children (the `tern serve` processes of `tern dev`).
    pub fn child_pids(&self) -> Vec<u32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        let _ = host;
        format!("http://{}{}", self.addr, path)
    }

    /// A request to this server for `host` (sent as the Host header).
    pub fn request(&self, method: &str, host: &str, path: &str) -> http::request::Builder {
        http::Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header(http::header::HOST, host)
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A function project in a temporary folder: `tern.toml` plus files.
pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// `name` with `main = "index.js"` and the given files (which should include index.js).
    pub fn new(name: &str, files: &[(&str, &str)]) -> Self {
        Self::with_manifest(&format!("name = \"{name}\"\nmain = \"index.js\"\n"), files)
    }

    pub fn with_manifest(manifest: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tern.toml"), manifest).unwrap();
        let p = Self { dir };
        for (path, text) in files {
            p.write(path, text.as_bytes());
        }
        p
    }

    pub fn write(&self, path: &str, bytes: &[u8]) {
        let full = self.dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, bytes).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Waits (at most [`PATIENCE`]) until a child's captured output contains `needle`. The
/// output is read on a thread of its own, so a line the child wrote before answering on a
/// socket may not have been read yet when the answer arrives.
pub async fn output_comes(output: &Mutex<String>, needle: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if output.lock().unwrap().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn http1() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn http2() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

pub fn body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    body(Bytes::new())
}

/// A response read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub text: String,
    pub version: http::Version,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

pub async fn send(client: &Client<HttpConnector, Body>, request: http::Request<Body>) -> Answer {
    let response =
        tokio::time::timeout(PATIENCE, client.request(request)).await.expect("response in time").expect("response");
    let status = response.status().as_u16();
    let version = response.version();
    let headers = response.headers().clone();
    let bytes = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    Answer { status, headers, text: String::from_utf8_lossy(&bytes).into_owned(), version }
}

/// GET `path` on `tern` with Host `host`, over HTTP/1.1.
pub async fn get(tern: &Tern, host: &str, path: &str) -> Answer {
    send(&http1(), tern.request("GET", host, path).body(empty()).unwrap()).await
}

/// `GET /metrics` at the admin endpoint `admin` (`host:port`).
pub async fn scrape(admin: &str) -> Answer {
    send(&http1(), http::Request::get(format!("http://{admin}/metrics")).body(empty()).unwrap()).await
}

/// The value of the sample `name` (with its labels, if any) in a metrics text.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
