#!/usr/bin/env python3
"""Deploy propagation through the real binary: a `tern control-plane` and NODES `tern node`
processes on loopback (default 20), then DEPLOYS deploys (default 50) of a function whose
body changes each time; `tern deploy` reports each one's propagation time, from the commit
to the last node's acknowledgement (the node has fetched the bundle over QUIC, verified its
hash and signature, booted its isolate and swapped its route table). Prints p50/p99/max
against PERFORMANCE.md's budget (p99 <= 1 s with 20 nodes on loopback; stretch 250 ms),
and checks through HTTP that every node serves the last version.

    cargo build --release -p tern && benches/deploy.py [--nodes 20] [--deploys 50] [--interval 2] [--etcd] [--relays N]

With `--etcd`, the state lives in a real etcd (Debian's etcd-server, started here on free
loopback ports) shared by two control-plane replicas; half the nodes follow each replica and
deploys alternate between them, so every deploy reaches half the nodes through the other
replica's watch on etcd.

With `--relays N`, N `tern relay`s follow the control plane and the nodes subscribe through
them (node i through relay i mod N), so every deploy takes one more hop: control plane ->
relay (fetch, verify, keep) -> node, and every acknowledgement comes back through the relay.

Every node is a process on this machine: with 20 of them on 2 cores, the CPU each node
spends on a deploy (booting the new version's isolate, refilling its warm pool) is spent
20 times on the same 2 cores, so back-to-back deploys (`--interval 0`) queue behind each
other's refills. The default leaves 2 s between deploys.
"""
import argparse
import http.client
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERN = os.path.join(ROOT, "target", "release", "tern")
BUDGET_MS, STRETCH_MS = 1000, 250


def start(args, prefix, log):
    """Starts `tern ARGS`; waits for the stdout line starting with `prefix`; returns the
    process and the rest of that line."""
    proc = subprocess.Popen([TERN, "--log-format", "json", *args], stdout=subprocess.PIPE,
                            stderr=log, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return proc, line[len(prefix):].strip()
    proc.kill()
    sys.exit(f"{' '.join(args[:1])} did not start; see {log.name}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd(tmp, procs):
    """A one-member etcd on free loopback ports; returns its `etcd://` URL once healthy."""
    client, peer = free_port(), free_port()
    curl, purl = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    proc = subprocess.Popen(["etcd", "--name", "bench", "--data-dir", f"{tmp}/etcd",
                             "--listen-client-urls", curl, "--advertise-client-urls", curl,
                             "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
                             "--initial-cluster", f"bench={purl}", "--logger", "zap"],
                            stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/etcd.log", "w"))
    procs.append(proc)
    for _ in range(200):
        ok = subprocess.run(["etcdctl", "--endpoints", curl, "endpoint", "health"], capture_output=True,
                            env=dict(os.environ, ETCDCTL_API="3")).returncode == 0
        if ok:
            return f"etcd://127.0.0.1:{client}"
        time.sleep(0.1)
    sys.exit(f"etcd did not start; see {tmp}/etcd.log")


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--deploys", type=int, default=50)
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between deploys, so each node's warm pool refills (0: back to back)")
    parser.add_argument("--etcd", action="store_true", help="two replicas sharing a real etcd")
    parser.add_argument("--relays", type=int, default=0, help="nodes subscribe through this many relays")
    args = parser.parse_args()
    if not os.path.exists(TERN):
        sys.exit("build first: cargo build --release -p tern")
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            log = open(os.path.join(tmp, "platform.log"), "w")
            store = []
            if args.etcd:
                store = ["--store", start_etcd(tmp, procs)]
            urls = []
            for replica in ["cp", "cp2"] if args.etcd else ["cp"]:
                cp, url = start(["control-plane", "--listen", "127.0.0.1:0", "--data", f"{tmp}/{replica}", *store],
                                "tern control-plane: listening on ", log)
                procs.append(cp)
                urls.append(url)
            join = open(f"{tmp}/cp/join-token").read().strip()
            admin = open(f"{tmp}/cp/admin-token").read().strip()
            relays = []
            for r in range(args.relays):
                name = f"relay{r}"
                relay, addr = start(["relay", "--upstream", urls[r % len(urls)], "--join-token", join, "--name", name,
                                     "--region", f"r{r}", "--listen", "127.0.0.1:0", "--data", f"{tmp}/{name}"],
                                    f"tern relay {name}: serving nodes on udp ", log)
                procs.append(relay)
                relays.append(addr)
            addrs = []
            for i in range(args.nodes):
                name = f"n{i:02}"
                via = ["--relay", relays[i % len(relays)]] if relays else []
                node, addr = start(["node", "--control-plane", urls[i % len(urls)], *via, "--join-token", join,
                                    "--name", name, "--region", f"r{i % 5}", "--location", "52.37,4.90", "--listen",
                                    "127.0.0.1:0", "--data", f"{tmp}/{name}", "--warm-pool", "1"],
                                   f"tern node {name}: serving on ", log)
                procs.append(node)
                addrs.append(addr.removeprefix("http://"))
            project = os.path.join(tmp, "fn")
            os.makedirs(project)
            with open(os.path.join(project, "tern.toml"), "w") as f:
                f.write('name = "bench"\nmain = "index.js"\n')
            env = dict(os.environ, TERN_TOKEN=admin)
            # Let every node fill its warm pool: 20 nodes booting at once share 2 cores.
            time.sleep(max(args.interval, 5))
            times = []
            for d in range(args.deploys):
                with open(os.path.join(project, "index.js"), "w") as f:
                    f.write(f'export default {{ fetch() {{ return new Response("v{d}"); }} }};\n')
                env["TERN_CONTROL_PLANE"] = urls[d % len(urls)]
                out = subprocess.run([TERN, "deploy", project, "--timeout", "60s"], env=env,
                                     capture_output=True, text=True)
                m = re.search(r"live on (\d+) nodes? in (\d+) ms", out.stdout + out.stderr)
                if out.returncode != 0 or not m or int(m.group(1)) != args.nodes:
                    sys.exit(f"deploy {d} did not reach every node:\n{out.stdout}{out.stderr}")
                times.append(int(m.group(2)))
                time.sleep(args.interval)
            last = f"v{args.deploys - 1}"
            for addr in addrs:
                conn = http.client.HTTPConnection(addr, timeout=10)
                conn.request("GET", "/", headers={"Host": "bench.localhost"})
                body = conn.getresponse().read().decode()
                if body != last:
                    sys.exit(f"node at {addr} serves {body!r}, not {last!r}")
        finally:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()
    print("each deploy, ms:", " ".join(map(str, times)))
    p50, p99, worst = percentile(times, 50), percentile(times, 99), max(times)
    where = "two replicas on etcd" if args.etcd else "embedded store"
    if args.relays:
        where += f", through {args.relays} relay{'s' if args.relays > 1 else ''}"
    print(f"deploy propagation, {args.nodes} nodes on loopback, {where}, {args.deploys} deploys "
          f"{args.interval} s apart (commit to the last node's acknowledgement):")
    print(f"  p50 {p50} ms, p99 {p99} ms, max {worst} ms; every node serves the last version")
    verdict = "met" if p99 <= BUDGET_MS else "MISSED"
    stretch = "met" if p99 <= STRETCH_MS else "missed"
    print(f"  budget p99 <= {BUDGET_MS} ms: {verdict}; stretch <= {STRETCH_MS} ms: {stretch}")


if __name__ == "__main__":
    main()
