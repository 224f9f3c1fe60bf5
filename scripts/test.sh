#!/usr/bin/env bash
# Every test Tern has, from a fresh machine: installs what is missing, then runs
#   1. the unit and integration tests (integration tests start the real `tern` binary;
#      the framework tests run Hono and itty-router, installed from npm),
#   2. rustfmt and clippy, warnings as errors,
#   3. a type-check of the V8 engine build (its prebuilt library cannot be downloaded here,
#      DOCS_RS=1 makes rusty_v8's build script skip it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

echo "== npm packages for the framework tests (from the npm registry, per package-lock.json)"
for fixture in tests/functions/hono tests/functions/itty-router; do
  npm ci --prefix "$fixture" --no-audit --no-fund --loglevel=error
done

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
passed=$(awk '/^test result:/ {s += $4} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {s += $6} END {print s + 0}' "$log")

echo "== format"
cargo fmt --all --check

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== V8 engine build type-checks"
DOCS_RS=1 cargo check --locked -p tern --no-default-features --features v8 --target-dir target/v8-check

# One line that sums up every test above (cargo prints one result line per test binary).
echo "tests: $passed passed, $failed failed"
