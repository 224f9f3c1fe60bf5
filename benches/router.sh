#!/usr/bin/env bash
# Router benchmark: the overhead of going through `tern router` against asking the node
# straight, in the same run (a control plane, one `tern node` and one router on loopback,
# examples/hello deployed), and the router's decision time (cargo bench, no I/O).
# wrk (1 thread) at 50 connections for throughput and at 1 connection for latency; prints
# the figures against ../shared/design/PERFORMANCE.md.
#   benches/router.sh
#   DURATION=10 benches/router.sh
# On 2 cores the router, the node and wrk share the machine: the through-router throughput
# ratio is a floor, not what a router on its own core would give.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p tern
cargo bench --locked -p tern-router --bench decision
T=target/release/tern
dir=$(mktemp -d)
# start() runs in command substitutions (subshells), so its processes are not this shell's
# jobs: their pids go to a file, and the exit trap stops them.
trap 'kill $(cat "$dir/pids" 2>/dev/null) 2>/dev/null || true; rm -rf "$dir"' EXIT

# Starts `tern ARGS` in the background, stdout to $dir/NAME.out; waits for a line with PREFIX
# and prints what follows it.
start() {
  local name=$1 prefix=$2
  shift 2
  "$T" --log-format json "$@" >"$dir/$name.out" 2>"$dir/$name.log" &
  echo $! >>"$dir/pids"
  for _ in $(seq 1 300); do
    if line=$(grep -m1 "^$prefix" "$dir/$name.out" 2>/dev/null); then
      echo "${line#"$prefix"}"
      return
    fi
    sleep 0.1
  done
  echo "$name did not start; its log:" >&2
  cat "$dir/$name.log" >&2
  exit 1
}

cp=$(start cp "tern control-plane: listening on " control-plane --listen 127.0.0.1:0 --data "$dir/cp")
join=$(cat "$dir/cp/join-token")
node=$(start node "tern node bench: serving on " node --control-plane "$cp" --join-token "$join" --name bench \
  --region local --location 52.37,4.90 --listen 127.0.0.1:0 --data "$dir/node" --trusted-proxy 127.0.0.0/8)
router=$(start router "tern router: listening on " router --control-plane "$cp" --join-token "$join" \
  --listen 127.0.0.1:0 --location 52.37,4.90)
TERN_CONTROL_PLANE=$cp TERN_TOKEN=$(cat "$dir/cp/admin-token") "$T" deploy examples/hello >/dev/null 2>&1
for _ in $(seq 1 100); do
  curl -sf -H 'Host: hello.localhost' "$router/" >/dev/null && break
  sleep 0.1
done

# wrk TARGET CONNECTIONS: "req/s p50_ms p99_ms"
measure() {
  wrk -t1 -c"$2" -d"${DURATION:-10}s" --latency -H 'Host: hello.localhost' "$1/" | awk '
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = $2 } $1 == "99%" { p99 = $2 }
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    END { printf "%.0f %.3f %.3f\n", rps, ms(p50), ms(p99) }'
}

read -r node_rps _ _ < <(measure "$node" 50)
read -r router_rps _ _ < <(measure "$router" 50)
read -r _ node_p50 node_p99 < <(measure "$node" 1)
read -r _ router_p50 router_p99 < <(measure "$router" 1)
python3 - "$node_rps" "$router_rps" "$node_p50" "$node_p99" "$router_p50" "$router_p99" <<'PY'
import sys
node_rps, router_rps, node_p50, node_p99, router_p50, router_p99 = map(float, sys.argv[1:])
print("router overhead, examples/hello, loopback, one node:")
print(f"  50 connections: straight {node_rps:,.0f} req/s, through the router {router_rps:,.0f} req/s "
      f"= {router_rps / node_rps:.2f} x")
print(f"  1 connection: straight p50 {node_p50:.3f} ms p99 {node_p99:.3f} ms; through the router "
      f"p50 {router_p50:.3f} ms p99 {router_p99:.3f} ms (+{(router_p50 - node_p50) * 1000:.0f} us at p50)")
print("  budget: decision overhead <= 20 us per request (see the decision benchmark above); "
      "the added latency at p50 includes the extra hop's HTTP work")
PY
