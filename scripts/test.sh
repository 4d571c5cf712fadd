#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what it needs (npm deps, redis-server
# from Debian's packages when missing), checks formatting and lints, then runs the Rust unit and
# integration tests and the js-client-tests (real socket.io-client, real redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

need_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    step "installing redis-server from Debian's packages"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  fi
  redis-server --version
}

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

need_redis

step "cargo build (the binary the js-client-tests start)"
cargo build --quiet

step "cargo test (unit and integration)"
cargo test --quiet

step "js-client-tests (socket.io-client 4 and 2)"
cd js-client-tests
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
GATEWAY_BIN="$(pwd)/../target/debug/realtime-gateway" node --test --test-concurrency=2 test/
