//! A real etcd (Debian's `etcd-server`) for tests: one member on free loopback ports, data
//! in a directory of the test's, killed on drop. A machine without `etcd` fails the test
//! and says how to install it (the README's test command does).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::PATIENCE;

pub struct Etcd {
    child: Child,
    peer_port: u16,
    /// `etcd://127.0.0.1:PORT`, as `tern control-plane --store` takes it.
    pub url: String,
    pub client_port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    /// Starts a one-member cluster with its data under `dir`; returns once it answers.
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, free_port(), free_port())
    }

    /// Kills it (SIGKILL).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        *self = Self::start_on(&self.dir.clone(), self.client_port, self.peer_port);
    }

    fn start_on(dir: &Path, client: u16, peer: u16) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}"), "--logger", "zap", "--log-outputs", "stderr"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}): install Debian's etcd-server (scripts/install-deps.sh does)")
            });
        let etcd = Self {
            child,
            peer_port: peer,
            url: format!("etcd://127.0.0.1:{client}"),
            client_port: client,
            dir: dir.to_owned(),
        };
        let started = Instant::now();
        loop {
            let health = Command::new("etcdctl")
                .args(["--endpoints", &client_url, "--command-timeout=1s", "endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .output();
            if health.is_ok_and(|o| o.status.success()) {
                return etcd;
            }
            assert!(started.elapsed() < PATIENCE, "etcd did not become healthy:\n{}", etcd.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// Every key under `prefix` with its value, as etcdctl prints them.
    pub fn get_prefix(&self, prefix: &str) -> String {
        let output = Command::new("etcdctl")
            .args(["--endpoints", &format!("http://127.0.0.1:{}", self.client_port), "get", "--prefix", prefix])
            .env("ETCDCTL_API", "3")
            .output()
            .expect("run etcdctl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
