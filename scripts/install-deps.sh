#!/usr/bin/env bash
# Installs the system packages Tern builds and tests with, if any is missing (Debian/Ubuntu,
# as root or through sudo). The JS engine (QuickJS-ng with WAMR) builds from source: it needs
# cmake and Debian's SIMDe headers (libsimde-dev), which .cargo/config.toml points WAMR at so
# the build never reaches for the network. wrk is for the benchmarks. clang, lld, wasi-libc and
# libclang-rt-14-dev-wasm32 build the C WebAssembly example (examples/wasm-c) for wasm32-wasi.
# iproute2 builds the router tests' network namespaces; python3 serves their echo check.
# etcd-server and etcd-client (etcdctl) are the real etcd the control plane tests run against;
# protobuf-compiler (protoc) builds the etcd client crate's gRPC code.
set -euo pipefail

packages=(cmake libsimde-dev wrk curl clang lld wasi-libc libclang-rt-14-dev-wasm32 iproute2 python3
  etcd-server etcd-client protobuf-compiler)
# npm installs the framework fixtures (Hono, itty-router) for the tests.
command -v npm >/dev/null || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust from rustup first" >&2; exit 1; }
