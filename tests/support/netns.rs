//! Network namespaces for tests: a [`Topology`] of one router namespace reachable from the root
//! namespace and one namespace per node behind it, each link a veth pair, all deleted on drop;
//! and a [`DelayRelay`], a TCP relay living inside a namespace that delivers every chunk a fixed
//! time after it was read, which is how tests get link latency (this kernel has no netem).
//! Needs root; a setup step that fails panics with the command and what it printed.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Topologies built by this process so far; part of every name, so tests running in parallel
/// threads of one test binary each get their own namespaces.
static BUILT: AtomicUsize = AtomicUsize::new(0);

/// Second octets (the X of 10.X.0.0/16) held by live topologies of this process.
static SUBNETS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The root namespace, a router namespace and `nodes` node namespaces:
///
/// ```text
/// root 10.X.0.1 ── 10.X.0.2 router 10.X.k.1 ── 10.X.k.2 node k   (k = 1..=nodes)
/// ```
///
/// Each node has a default route via the router; the router does not forward, so nodes talk to
/// the router namespace only (put a [`DelayRelay`] there to reach them from the root namespace).
pub struct Topology {
    router: String,
    nodes: Vec<String>,
    /// The root-side end of the root–router veth pair.
    root_link: String,
    subnet: u8,
}

impl Topology {
    /// Creates the namespaces and links, after deleting leftovers with the same names.
    pub fn build(nodes: usize) -> Topology {
        assert!((1..=254).contains(&nodes), "a topology has 1 to 254 nodes, not {nodes}");
        let pid = std::process::id();
        let id = format!("{pid}t{}", BUILT.fetch_add(1, Ordering::Relaxed));
        let root_link = format!("tern{id}");
        assert!(root_link.len() <= 15, "interface name {root_link} is longer than 15 characters");
        let topology = Topology {
            router: format!("tern{id}r"),
            nodes: (1..=nodes).map(|k| format!("tern{id}n{k}")).collect(),
            root_link,
            subnet: reserve_subnet(pid),
        };
        // From here a panic drops `topology`, which removes whatever was set up.
        topology.remove();
        topology.set_up();
        topology
    }

    pub fn router_ns(&self) -> &str {
        &self.router
    }

    /// The namespace of node `k` (1-based).
    pub fn node_ns(&self, k: usize) -> &str {
        &self.nodes[self.node_index(k)]
    }

    /// The root namespace's address on the link to the router.
    pub fn root_side_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 1)
    }

    /// The router's address as seen from the root namespace.
    pub fn router_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 2)
    }

    /// The router's address on the link to node `k`.
    pub fn router_ip_towards(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, self.node_octet(k), 1)
    }

    /// Node `k`'s address.
    pub fn node_ip(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, self.node_octet(k), 2)
    }

    /// `ip netns exec NS PROGRAM`, ready for more arguments.
    pub fn command(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    fn node_index(&self, k: usize) -> usize {
        assert!((1..=self.nodes.len()).contains(&k), "no node {k}: nodes are 1..={}", self.nodes.len());
        k - 1
    }

    fn node_octet(&self, k: usize) -> u8 {
        (self.node_index(k) + 1) as u8
    }

    fn set_up(&self) {
        let (router, root_link) = (self.router.as_str(), self.root_link.as_str());
        for ns in std::iter::once(router).chain(self.nodes.iter().map(String::as_str)) {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["link", "add", root_link, "type", "veth", "peer", "name", "toroot", "netns", router]);
        ip(&["addr", "add", &format!("{}/24", self.root_side_ip()), "dev", root_link]);
        ip(&["link", "set", root_link, "up"]);
        ip(&["-n", router, "addr", "add", &format!("{}/24", self.router_ip()), "dev", "toroot"]);
        ip(&["-n", router, "link", "set", "toroot", "up"]);
        for k in 1..=self.nodes.len() {
            let (node, towards) = (self.node_ns(k), format!("tonode{k}"));
            ip(&["-n", router, "link", "add", &towards, "type", "veth", "peer", "name", "torouter", "netns", node]);
            ip(&["-n", router, "addr", "add", &format!("{}/24", self.router_ip_towards(k)), "dev", &towards]);
            ip(&["-n", router, "link", "set", &towards, "up"]);
            ip(&["-n", node, "addr", "add", &format!("{}/24", self.node_ip(k)), "dev", "torouter"]);
            ip(&["-n", node, "link", "set", "torouter", "up"]);
            ip(&["-n", node, "route", "add", "default", "via", &self.router_ip_towards(k).to_string()]);
        }
    }

    /// Deletes the root-side link and every namespace of this topology, ignoring errors. The
    /// root-side link goes explicitly: the kernel removes a deleted namespace's links later.
    fn remove(&self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).output();
        };
        quiet(&["link", "del", &self.root_link]);
        for ns in std::iter::once(&self.router).chain(&self.nodes) {
            quiet(&["netns", "del", ns]);
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
        SUBNETS.lock().unwrap_or_else(|e| e.into_inner()).retain(|&x| x != self.subnet);
    }
}

/// Picks X for 10.X.0.0/16: first 100 + pid % 100, then the next ones (wrapping within
/// 100..=254), skipping those held by this process or already routed in the root namespace.
fn reserve_subnet(pid: u32) -> u8 {
    let routes = Command::new("ip").args(["-4", "route", "show"]).output().map(|o| o.stdout).unwrap_or_default();
    let routes = String::from_utf8_lossy(&routes);
    let mut held = SUBNETS.lock().unwrap_or_else(|e| e.into_inner());
    let first = (pid % 100) as usize;
    let subnet = (0..155)
        .map(|i| (100 + (first + i) % 155) as u8)
        .find(|x| !held.contains(x) && !routes.contains(&format!("10.{x}.")))
        .expect("a free 10.X.0.0/16 for a test topology");
    held.push(subnet);
    subnet
}

/// Runs `ip ARGS`; panics with the command and its stderr when it fails.
fn ip(args: &[&str]) {
    let shown = format!("ip {}", args.join(" "));
    let output = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("`{shown}` could not run ({e}); this test needs root, iproute2 and network namespaces")
    });
    if !output.status.success() {
        panic!(
            "`{shown}` failed ({}): {}\nthis test needs root and network namespaces",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
}

/// A TCP relay inside a network namespace that adds `one_way` latency in each direction.
///
/// Its listening socket and its upstream connections are made inside the namespace, from a
/// thread of its own that entered it with setns(2) and runs a current-thread tokio runtime.
/// Each chunk read at t is written at t + one_way, in order (delays do not add up, so throughput
/// is not limited); a request/response round trip takes 2 × one_way more. An EOF is passed on
/// the same way, as a shutdown of writing once the data before it is written. When the upstream
/// cannot be reached the client's connection is closed at once: it sees EOF (or a reset, when it
/// had sent bytes) and no data, as with a dead host behind a load balancer.
pub struct DelayRelay {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayRelay {
    /// Listens on `listen` (port 0 for any) in namespace `ns` and relays to `upstream`.
    pub fn start(ns: &str, listen: SocketAddr, upstream: SocketAddr, one_way: Duration) -> DelayRelay {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel();
        let path = format!("/var/run/netns/{ns}");
        let thread = std::thread::Builder::new()
            .name(format!("delay-relay-{ns}"))
            .spawn(move || {
                let listener = match enter_netns(&path).and_then(|()| bind(listen)) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let _ = ready_tx.send(Ok(listener.local_addr().unwrap()));
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, upstream, one_way) => {}
                    }
                });
                // Dropping the runtime drops every connection task and so closes their sockets.
                drop(runtime);
            })
            .expect("start the delay relay thread");
        match ready_rx.recv() {
            Ok(Ok(addr)) => DelayRelay { addr, stop: Some(stop), thread: Some(thread) },
            Ok(Err(e)) => panic!("delay relay in {ns} on {listen}: {e}"),
            Err(_) => panic!("delay relay thread for {ns} died before listening"),
        }
    }

    /// The address it listens on, inside its namespace.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Moves the calling thread into the network namespace bound at `path`.
fn enter_netns(path: &str) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("open {path}: {e} (needs root and the namespace)"))?;
    // SAFETY: setns only reads the descriptor, which `file` keeps open for the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns({path}, CLONE_NEWNET): {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn bind(listen: SocketAddr) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(listen).map_err(|e| format!("bind: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| format!("set_nonblocking: {e}"))?;
    Ok(listener)
}

async fn accept_loop(listener: tokio::net::TcpListener, upstream: SocketAddr, one_way: Duration) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            // A failed connect drops `client`: closed before any byte, as the caller expects.
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                delayed_copy(client_read, server_write, one_way),
                delayed_copy(server_read, client_write, one_way)
            );
        });
    }
}

/// Copies `from` to `to`, each chunk (and the EOF, as a write shutdown) `delay` after it was read.
async fn delayed_copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    // Bounded for backpressure; 1024 chunks in flight is far more than one delay's worth.
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Bytes>)>(1024);
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // A read error ends the stream like an EOF.
            let n = from.read(&mut buf).await.unwrap_or(0);
            let chunk = (n > 0).then(|| Bytes::copy_from_slice(&buf[..n]));
            if tx.send((Instant::now() + delay, chunk)).await.is_err() || n == 0 {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match chunk {
                Some(bytes) if to.write_all(&bytes).await.is_ok() => {}
                _ => break,
            }
        }
        let _ = to.shutdown().await;
        // Dropping `rx` here makes the reader stop at its next chunk when the writer failed.
    };
    tokio::join!(read, write);
}
