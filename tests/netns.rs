//! Self-check of the network namespace harness: a topology's links carry TCP, a delay relay adds
//! its latency to a round trip, a relay to a dead upstream closes the client's connection, and
//! the namespaces are gone after drop. Needs root.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::PATIENCE;
use support::netns::{DelayRelay, Topology};

/// Echoes every connection back, one after another; prints its port first.
const ECHO: &str = "
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    while d := c.recv(65536):
        c.sendall(d)
    c.close()
";

/// Kills the echo server on drop.
struct Echo(Child);

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, PATIENCE).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

#[test]
fn topology_and_delay_relay_work() {
    let topology = Topology::build(2);
    let names: Vec<String> = [topology.router_ns(), topology.node_ns(1), topology.node_ns(2)].map(String::from).into();

    let addrs = topology.command(topology.node_ns(2), "ip").args(["-4", "-o", "addr", "show"]).output().unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(addrs.contains(&format!("{}/24", topology.node_ip(2))), "node 2 has its address:\n{addrs}");

    let mut child = topology
        .command(topology.node_ns(1), "python3")
        .args(["-c", ECHO, &topology.node_ip(1).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut port = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let echo = Echo(child);
    let port: u16 = port.trim().parse().unwrap_or_else(|_| panic!("echo server printed {port:?}"));

    let one_way = Duration::from_millis(20);
    let listen = SocketAddr::from((topology.router_ip(), 0));
    let relay = DelayRelay::start(topology.router_ns(), listen, (topology.node_ip(1), port).into(), one_way);
    assert_eq!(relay.addr().ip(), topology.router_ip());
    assert_ne!(relay.addr().port(), 0);

    let mut stream = connect(relay.addr());
    for _ in 0..2 {
        let started = Instant::now();
        stream.write_all(b"hello through the router\n").unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        let took = started.elapsed();
        assert_eq!(line, "hello through the router\n");
        assert!(took >= 2 * one_way, "a round trip through the relay took {took:?}, less than 2 × {one_way:?}");
    }
    // Half-close: our EOF reaches the echo server, whose EOF comes back after the data.
    stream.write_all(b"last").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "last");
    drop(echo);

    let dead = DelayRelay::start(topology.router_ns(), listen, (topology.node_ip(2), port).into(), one_way);
    let mut stream = connect(dead.addr());
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "a relay to a dead upstream sent {:?}", &buf[..n]),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "reading from a relay to a dead upstream"),
    }

    drop((relay, dead));
    drop(topology);
    let left = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    for name in names {
        assert!(!left.lines().any(|l| l.split_whitespace().next() == Some(&name)), "{name} left behind:\n{left}");
    }
}
