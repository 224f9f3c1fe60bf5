#!/usr/bin/env python3
"""Isolate churn through the real binary: memory of the whole node (server process plus its
isolate host processes) over many isolate create/evict cycles.

    benches/churn.py [CYCLES] [--functions N] [--recycle-after N]

`tern dev` runs with one isolate host, a memory budget of two isolates and FUNCTIONS
functions (default 8); requesting them round-robin makes every request evict one isolate
and boot another: one cycle. Hosts are replaced once RECYCLE_AFTER isolates have ended in
them (default 100).
Samples the RSS of the node (all its processes) every 50 cycles. Within one host's life
RSS climbs with every isolate (the engine's leak) and drops when the host is replaced, so
growth is measured peak to peak: the highest RSS of the second half of the run against the
first half's, per 1,000 cycles, against PERFORMANCE.md's churn budget (under 1 MiB per
1,000 cycles). Also prints whether every request was answered. Each cycle boots an isolate
(about 10 ms of CPU here since the startup snapshot), so the issue's 100,000 cycles take
about 18 minutes on 2 cores: `benches/churn.py 100000`.
"""
import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_rss_kib(pid):
    """RSS of `pid` and all its descendants, in KiB."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def own_rss_kib(pid):
    """RSS of `pid` and its direct children (tern dev and its server process, not the hosts)."""
    total = 0
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids.extend(int(c) for c in f.read().split())
    except FileNotFoundError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (FileNotFoundError, StopIteration):
            pass
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cycles", nargs="?", type=int, default=2000)
    ap.add_argument("--functions", type=int, default=8)
    ap.add_argument("--recycle-after", type=int, default=100)
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "tern"], cwd=ROOT, check=True)
    tern = os.path.join(ROOT, "target/release/tern")
    work = tempfile.mkdtemp(prefix="tern-churn-")
    paths = []
    for i in range(args.functions):
        d = os.path.join(work, f"churn-{i}")
        os.makedirs(d)
        with open(os.path.join(d, "tern.toml"), "w") as f:
            f.write(f'name = "churn-{i}"\nmain = "index.js"\n')
        with open(os.path.join(d, "index.js"), "w") as f:
            f.write(f"export default {{ fetch: () => new Response('f{i}') }};\n")
        paths.append(d)
    proc = subprocess.Popen(
        [tern, "--log-format", "json", "dev", "--port", "0", "--isolate-hosts", "1",
         "--host-recycle-after", str(args.recycle_after), "--isolate-memory-budget-mib", "24", *paths],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = None
    for line in proc.stdout:
        if line.startswith("tern dev: listening on http://"):
            port = int(line.strip().rsplit(":", 1)[1])
            break
    if port is None:
        sys.exit("tern dev did not start")

    conn = http.client.HTTPConnection("127.0.0.1", port)

    def request(i):
        conn.request("GET", "/", headers={"Host": f"churn-{i % args.functions}.localhost"})
        r = conn.getresponse()
        body = r.read().decode()
        return r.status == 200 and body == f"f{i % args.functions}"

    warm = 2 * args.functions
    failures = sum(not request(i) for i in range(warm))
    time.sleep(1)
    start_rss = tree_rss_kib(proc.pid)
    start_own = own_rss_kib(proc.pid)
    samples = []
    t0 = time.time()
    for i in range(args.cycles):
        if not request(warm + i):
            failures += 1
        if i % 50 == 0:
            samples.append(tree_rss_kib(proc.pid))
        if i and i % 1000 == 0:
            print(f"  {i} cycles, node RSS {samples[-1] / 1024:.1f} MiB", flush=True)
    elapsed = time.time() - t0
    end_own = own_rss_kib(proc.pid)
    proc.terminate()
    proc.wait(timeout=30)
    half = len(samples) // 2
    first, second = max(samples[:half]), max(samples[half:])
    per_1000 = (second - first) / 1024 / (args.cycles / 2) * 1000
    verdict = "ok" if per_1000 < 1 else "MISSED"
    print(f"churn: {args.cycles} create/evict cycles in {elapsed:.0f} s ({args.cycles / elapsed:.0f}/s), "
          f"hosts replaced every {args.recycle_after} isolates ended")
    print(f"  node RSS (server + hosts): {start_rss / 1024:.1f} MiB after start; peak {first / 1024:.1f} MiB "
          f"in the first half, {second / 1024:.1f} MiB in the second: {per_1000:+.2f} MiB per 1,000 cycles"
          f"   budget < 1   {verdict}")
    print(f"  without the hosts (tern dev + server process): {start_own / 1024:.1f} -> {end_own / 1024:.1f} MiB "
          f"({(end_own - start_own) / 1024 / args.cycles * 1000:+.2f} MiB per 1,000 cycles)")
    print(f"  requests not answered correctly: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
