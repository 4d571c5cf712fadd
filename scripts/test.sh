#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what it needs (npm deps, redis-server
# from Debian's packages when missing), checks formatting, lints and the Dockerfile, then runs the Rust
# unit and integration tests and the js-client-tests (real socket.io-client 2, 3 and 4, real
# redis-server, the chat example) against the binary cargo built.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nerror: %s\n' "$*" >&2; exit 1; }

# Every node test gets this long at most (ms): a hung wait fails its test instead of hanging the run.
NODE_TEST_TIMEOUT_MS="${NODE_TEST_TIMEOUT_MS:-180000}"

need_node() {
  command -v node >/dev/null 2>&1 || die "node is not installed: the js-client-tests need Node.js 20 or later"
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  [ "$major" -ge 20 ] || die "node $(node --version) is too old: the js-client-tests need Node.js 20 or later"
  command -v npm >/dev/null 2>&1 || die "npm is not installed (it comes with Node.js)"
  node --version
}

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

# Headless Chromium for the browser WebSocket tests (test/browser.test.js): Debian's package, driven by
# puppeteer-core (which downloads no browser of its own).
need_chromium() {
  if [ -z "${CHROMIUM_BIN:-}" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    step "installing chromium from Debian's packages (the browser WebSocket tests)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  fi
}

# moto's S3-compatible server (PyPI), for the two-node file tests (test/files.test.js).
need_moto() {
  if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
    step "installing moto[server] from PyPI (the S3-compatible store of the file tests)"
    if ! python3 -m pip --version >/dev/null 2>&1; then
      local sudo=""
      [ "$(id -u)" -eq 0 ] || sudo="sudo"
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-pip >/dev/null
    fi
    python3 -m pip install -q 'moto[server]' 2>/dev/null || python3 -m pip install -q --break-system-packages 'moto[server]'
  fi
  python3 -c 'import moto; print("moto", moto.__version__)'
}

need_node

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "Dockerfile: the build stage replayed, then cargo check (scripts/check-dockerfile.sh)"
./scripts/check-dockerfile.sh

need_redis
need_chromium
need_moto

step "cargo build (the binary the js-client-tests start)"
# The path comes from cargo itself (the bin artifact's `executable`), so CARGO_TARGET_DIR, a
# build.target-dir in a cargo config or a --target triple cannot make the tests start a stale binary.
GATEWAY_BIN="$(
  cargo build --quiet -p realtime-gateway --bin realtime-gateway --message-format=json-render-diagnostics |
    node -e '
      let buf = "";
      process.stdin.on("data", (d) => { buf += d; });
      process.stdin.on("end", () => {
        let exe = "";
        for (const line of buf.split("\n")) {
          if (!line.startsWith("{")) continue;
          const m = JSON.parse(line);
          if (m.reason === "compiler-artifact" && m.target && m.target.name === "realtime-gateway"
              && m.target.kind.includes("bin") && m.executable) exe = m.executable;
        }
        if (!exe) { console.error("cargo build reported no realtime-gateway executable"); process.exit(1); }
        console.log(exe);
      });
    '
)"
[ -x "$GATEWAY_BIN" ] || die "the gateway binary cargo reported, '$GATEWAY_BIN', does not exist or is not executable"
export GATEWAY_BIN
echo "gateway binary: $GATEWAY_BIN"

step "cargo test (unit and integration)"
cargo test --quiet

step "js-client-tests (socket.io-client 2, 3 and 4; the chat example)"
cd js-client-tests
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
# cargo test may have rebuilt it: check again right before the tests start it.
[ -x "$GATEWAY_BIN" ] || die "the gateway binary '$GATEWAY_BIN' is missing: the js-client-tests cannot start it"
# Explicit files, expanded by the shell (Node 22 loads a directory argument as a module; Node 20 does not
# expand globs itself). The same command as `npm test`.
node --test --test-concurrency=2 --test-timeout="$NODE_TEST_TIMEOUT_MS" test/*.test.js

# The cluster, history, webhooks and emitter files again in every other place Redis can run (lib/helpers.js,
# RTG_REDIS_MODE): TLS with a test CA (rediss:// and REDIS_CA_FILE), a Sentinel set (REDIS_SENTINELS), a Redis
# Cluster of three masters (REDIS_CLUSTER_NODES); each started by the tests.
for mode in tls sentinel cluster; do
  step "js-client-tests with Redis in mode $mode (RTG_REDIS_MODE=$mode): cluster, history, webhooks, emitter"
  RTG_REDIS_MODE=$mode node --test --test-concurrency=2 --test-timeout="$NODE_TEST_TIMEOUT_MS" \
    test/cluster.test.js test/history.test.js test/webhooks.test.js test/emitter.test.js
done
