#!/usr/bin/env bash
# Many functions: throughput with requests spread round-robin over 100 distinct functions
# (`tern dev` serving fn-1 … fn-100, each a hello world of its own, warm), against a bare
# hyper hello world built and measured in the same run. Server pinned to core 0, wrk (1
# thread, 50 connections) to core 1, as in benches/http.sh. PERFORMANCE.md's budget:
# >= 0.4 x bare hyper.
#   benches/functions.sh
#   DURATION=10 FUNCTIONS=100 benches/functions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p tern -p hyper-baseline
n=${FUNCTIONS:-100}
duration=${DURATION:-10}
dir=$(mktemp -d)
trap 'kill $(cat "$dir/pids" 2>/dev/null) 2>/dev/null || true; rm -rf "$dir"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for i in $(seq 1 "$n"); do
  mkdir -p "$dir/fn-$i"
  printf 'name = "fn-%s"\nmain = "index.js"\ncompatibility_date = "2026-11-01"\n' "$i" >"$dir/fn-$i/tern.toml"
  printf 'export default { fetch() { return new Response("hello from fn-%s", { headers: { "x-hello": "world" } }); } };\n' \
    "$i" >"$dir/fn-$i/index.js"
done
# Each wrk connection walks the functions in turn, starting at its own offset.
cat >"$dir/round-robin.lua" <<LUA
local n, i = $n, 0
init = function() i = math.random(n) end
request = function()
  i = i % n + 1
  return wrk.format("GET", "/", { Host = "fn-" .. i .. ".localhost" })
end
LUA

# rps URL [WRK ARGS…]: req/s after a 2 s warm-up
rps() {
  local url=$1
  shift
  taskset -c 1 wrk -t1 -c50 -d2s "$@" "$url" >/dev/null
  taskset -c 1 wrk -t1 -c50 -d"${duration}s" "$@" "$url" | awk '/Requests\/sec/ { printf "%.0f\n", $2 }'
}

port=$(free_port)
taskset -c 0 target/release/hyper-baseline "$port" >/dev/null 2>&1 &
echo $! >>"$dir/pids"
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.05; done
hyper=$(rps "http://127.0.0.1:$port/")

port=$(free_port)
dirs=()
for i in $(seq 1 "$n"); do dirs+=("$dir/fn-$i"); done
taskset -c 0 target/release/tern --log-format json dev --port "$port" "${dirs[@]}" >"$dir/tern.out" 2>"$dir/tern.log" &
echo $! >>"$dir/pids"
for _ in $(seq 1 300); do curl -sf -H 'Host: fn-1.localhost' "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
# Every function answers (and is warm) before the clock starts.
for i in $(seq 1 "$n"); do
  body=$(curl -sf -H "Host: fn-$i.localhost" "http://127.0.0.1:$port/") || { echo "fn-$i did not answer" >&2; exit 1; }
  [[ "$body" == "hello from fn-$i" ]] || { echo "fn-$i answered: $body" >&2; exit 1; }
done
one=$(rps "http://127.0.0.1:$port/" -H 'Host: fn-1.localhost')
many=$(rps "http://127.0.0.1:$port/" -s "$dir/round-robin.lua")
errors=$(grep -c '"tern_error"' "$dir/tern.log" || true)

python3 - "$hyper" "$one" "$many" "$n" "$errors" <<'PY'
import sys
hyper, one, many, n, errors = (float(v) for v in sys.argv[1:])
ratio = many / hyper
print(f"{int(n)} distinct functions round-robin, warm, 50 connections, server on one core:")
print(f"  bare hyper              {hyper:>9,.0f} req/s")
print(f"  tern, one function      {one:>9,.0f} req/s  {one / hyper:.2f} x hyper")
print(f"  tern, {int(n)} round-robin  {many:>9,.0f} req/s  {ratio:.2f} x hyper   "
      f"budget >= 0.4 x: {'met' if ratio >= 0.4 else 'MISSED'}")
print(f"  function errors logged: {int(errors)}")
PY
