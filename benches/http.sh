#!/usr/bin/env bash
# HTTP benchmark: `tern dev examples/hello` against a bare hyper hello-world built in the
# same run (and, with PEERS=1, workerd, Deno, Bun and Node from ../shared/bench/peers).
# `tern-hosts` is the same with the isolates in an isolate host process, as `tern node`
# runs them by default (the budgets are checked against both).
# Uses the shared harness ../shared/bench/peers/bench.py: server pinned to core 0, wrk to
# core 1; cold start, req/s, server CPU per request, p50/p99, RSS. Runs at 50 connections
# and at 1, then prints the figures against PERFORMANCE.md's budgets.
#   benches/http.sh                 # tern + hyper
#   PEERS=1 benches/http.sh         # + the peer runtimes (installs them from npm)
#   DURATION=10 benches/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
SHARED="$(cd .. && pwd)/shared/bench/peers"
[[ -f "$SHARED/bench.py" ]] || { echo "missing $SHARED/bench.py (the shared peers harness)" >&2; exit 1; }
cargo build --release --locked -p tern -p hyper-baseline
peers=""
if [[ "${PEERS:-0}" == 1 ]]; then
  "$SHARED/install.sh"
  peers="node,deno,bun,workerd"
fi
out=bench-results
mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)
for conns in 50 1; do
  python3 "$SHARED/bench.py" --mode pinned --conns "$conns" --duration "${DURATION:-10}" --reps "${REPS:-5}" \
    --extra 'hyper=target/release/hyper-baseline {port}' \
    --extra 'tern=target/release/tern --log-format json dev --port {port} examples/hello' \
    --extra 'tern-hosts=target/release/tern --log-format json dev --isolate-hosts 1 --port {port} examples/hello' \
    --peers "$peers" --out "$out/http-c$conns-$stamp.json" >/dev/null
done
python3 benches/report.py "$out/http-c50-$stamp.json" "$out/http-c1-$stamp.json"
