#!/usr/bin/env sh
# Builds page.wasm from page.c with Debian's clang and wasi-libc (see page.c).
set -eu
cd "$(dirname "$0")"
clang --target=wasm32-wasi -O2 -Wall -Wextra -Werror -Wl,--strip-all -o page.wasm page.c
