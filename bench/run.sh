#!/usr/bin/env bash
# Benchmarks of issue 8: the gateway side by side with Node socket.io 4.8 (and a raw tokio-tungstenite
# broadcast server for the physical limit), each server pinned to core 0, the load generator to core 1.
#
#   bench/run.sh [s1|s2|s3|s4|s5|s6|s7|all ...]     (default: all; s7 is run only when named)
#   RUNS=3           runs per scenario and server (the table shows the median)
#   SERVERS="gateway gwws node raw gwnohist gwcluster"   restrict the servers (gwws: the gateway measured
#                    through /ws, S1, S2 and S5; gwnohist: the gateway with CHANNEL_HISTORY_SIZE=0, for s7; gwcluster: S5 with
#                    the two nodes on a Redis Cluster of three masters instead of one Redis, SPEC §9)
#   NO_BUILD=1       use the binaries copied by an earlier run
#   S1_IDLE_SECS=5   how long S1 measures idle CPU (30 covers a whole ping interval of the gateway's 25 s)
#   REDIS_CORE=0     the core Redis (each master of the gwcluster cluster too) is pinned to: 0 shares the
#                    servers' core, 1 the generator's (S5, S7)
#
# Loopback only (127.0.0.0/8). Every generator run is bounded by --max-secs, every server is stopped
# by the pid this script started. Results: bench/results/<stamp>/*.json, summary.{json,md}, and
# bench/results/latest -> <stamp>.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
RUNS=${RUNS:-3}
REDIS_CORE=${REDIS_CORE:-0}
SERVERS=${SERVERS:-"gateway gwws node raw gwnohist gwcluster"}
SECRET="bench-secret-$$-$(date +%s)"
# BIN: where the binaries are copied (NO_BUILD=1 BIN=<dir> measures the binaries already in <dir>).
BIN=${BIN:-"$ROOT/target/rtg-bench-bin"}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$HERE/results/$STAMP"
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(all)
if [ "${SCENARIOS[0]}" = all ]; then SCENARIOS=(s1 s4 s2 s3 s5 s6); fi

log() { printf '[run.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- environment -----------------------------------------------------------------------------------
ulimit -HSn 65535 2>/dev/null || ulimit -n 65535 2>/dev/null || ulimit -n "$(ulimit -Hn)"
log "ulimit -n $(ulimit -n) (hard $(ulimit -Hn); 10k sockets need ~10k fds per side), nproc $(nproc)"
if [ "$(nproc)" -lt 2 ]; then log "need 2 cores (server on 0, generator on 1)"; exit 1; fi
command -v taskset >/dev/null || { log "taskset missing (util-linux)"; exit 1; }
if ! command -v redis-server >/dev/null; then
  log "installing redis-server"
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
command -v node >/dev/null || { log "node is required for the Node peer"; exit 1; }

# ---- build -----------------------------------------------------------------------------------------
if [ -z "${NO_BUILD:-}" ]; then
  log "building the gateway and the bench (release)"
  (cd "$ROOT" && cargo build --release -q -p realtime-gateway)
  (cd "$ROOT" && cargo build --release -q -p rtg-bench)
  mkdir -p "$BIN"
  # Copies, so that a rebuild during the run does not swap a binary under us.
  cp "$ROOT/target/release/realtime-gateway" "$ROOT/target/release/rtg-bench" \
     "$ROOT/target/release/rtg-raw-server" "$BIN/"
fi
for b in realtime-gateway rtg-bench rtg-raw-server; do
  [ -x "$BIN/$b" ] || { log "missing $BIN/$b (run without NO_BUILD)"; exit 1; }
done
if [ ! -d "$HERE/node/node_modules/socket.io" ]; then
  log "npm ci in bench/node"
  (cd "$HERE/node" && npm ci --no-audit --no-fund --loglevel=error)
fi
mkdir -p "$OUT"
ln -sfn "$STAMP" "$HERE/results/latest"
# What was measured, on what.
{
  printf '{\n'
  printf '  "stamp": "%s",\n' "$STAMP"
  printf '  "git_commit": "%s",\n' "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  printf '  "src_dirty": %s,\n' "$(cd "$ROOT" && if git diff --quiet HEAD -- src Cargo.toml 2>/dev/null; then echo false; else echo true; fi)"
  printf '  "nproc": %s,\n' "$(nproc)"
  printf '  "cpu_model": "%s",\n' "$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
  printf '  "mem_total_kib": %s,\n' "$(awk '/^MemTotal/{print $2}' /proc/meminfo)"
  printf '  "kernel": "%s",\n' "$(uname -r)"
  printf '  "rustc": "%s",\n' "$(rustc --version 2>/dev/null)"
  printf '  "node": "%s",\n' "$(node --version)"
  printf '  "socket_io": "%s",\n' "$(node -p "require('$HERE/node/node_modules/socket.io/package.json').version")"
  printf '  "ws": "%s",\n' "$(node -p "require('$HERE/node/node_modules/ws/package.json').version")"
  printf '  "redis_adapter": "%s",\n' "$(node -p "require('$HERE/node/node_modules/@socket.io/redis-adapter/package.json').version")"
  printf '  "redis_server": "%s",\n' "$(redis-server --version | awk '{print $3}')"
  printf '  "runs": %s\n' "$RUNS"
  printf '}\n'
} > "$OUT/meta.json"

# ---- servers ---------------------------------------------------------------------------------------
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

PORT_NEXT=$((19000 + RANDOM % 2000))
next_port() { PORT_NEXT=$((PORT_NEXT + 1)); PORT=$PORT_NEXT; }  # sets PORT (no subshell)

wait_port() { # port
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "nothing listens on $1 after 10 s"; return 1
}

# start_server KIND PORT [REDIS_URL NODE_ID]; sets SERVER_PID
start_server() {
  local kind=$1 port=$2 redis=${3:-} node_id=${4:-n1} logf="$OUT/server-$1-$2.log"
  case $kind in
    gateway|gwws|gwnohist|gwcluster)
      local -a extra=()
      # gwnohist: the same gateway with channel history off (S7 measures what history costs).
      [ "$kind" = gwnohist ] && extra=(CHANNEL_HISTORY_SIZE=0)
      # gwcluster: `redis` is the cluster's node list.
      if [ "$kind" = gwcluster ] && [ -n "$redis" ]; then extra=(REDIS_CLUSTER_NODES="$redis"); redis=""; fi
      env -i PATH="$PATH" HOME="${HOME:-/root}" "${extra[@]}" \
        PORT="$port" HOST=127.0.0.1 JWT_SECRET="$SECRET" ALLOW_ANONYMOUS=false \
        RATE_LIMIT_PER_SEC=1000000000 RATE_LIMIT_BURST=1000000000 CONNECT_RATE_PER_IP=0 \
        MAX_SOCKETS_PER_USER=1000000 LOG_FORMAT=json RUST_LOG=warn NODE_ID="bench-$node_id" \
        ${redis:+REDIS_URL="$redis" REDIS_PREFIX=benchs5} \
        taskset -c 0 "$BIN/realtime-gateway" >"$logf" 2>&1 &
      ;;
    node)
      env -i PATH="$PATH" HOME="${HOME:-/root}" NODE_ENV=production \
        PORT="$port" HOST=127.0.0.1 JWT_SECRET="$SECRET" \
        ${redis:+REDIS_URL="$redis" REDIS_PREFIX=benchs5} \
        taskset -c 0 node "$HERE/node/server.js" >"$logf" 2>&1 &
      ;;
    raw)
      taskset -c 0 "$BIN/rtg-raw-server" --port "$port" >"$logf" 2>&1 &
      ;;
    *) log "unknown server $kind"; return 1 ;;
  esac
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_port "$port"
  sleep 0.5
}

stop_pid() { # pid
  local p=$1
  kill -TERM "$p" 2>/dev/null || return 0
  for _ in $(seq 1 120); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

REDIS_PID=""
start_redis() { # port
  taskset -c "$REDIS_CORE" redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no \
    --protected-mode yes --loglevel warning >"$OUT/redis-$1.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  wait_port "$1"
}

# Waits (at most ~90 s) for the machine to be quiet: other processes (builds, test suites) on these
# two cores would disturb the figures. Measures anyway afterwards, with a warning in the log.
cpu_sample() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }
quiet() {
  local t1 i1 t2 i2 busy
  for i in $(seq 1 45); do
    read -r t1 i1 < <(cpu_sample); sleep 1; read -r t2 i2 < <(cpu_sample)
    busy=$(( 100 * ((t2 - t1) - (i2 - i1)) / (t2 - t1 > 0 ? t2 - t1 : 1) ))
    if [ "$busy" -lt 8 ]; then return 0; fi
    [ "$i" -eq 1 ] && log "machine busy (${busy}% of both cores used by other processes): waiting up to 90 s"
    sleep 1
  done
  log "WARNING: still busy (${busy}%): measuring anyway, figures may be disturbed"
  echo "$sc $srv run $run: measured while ${busy}% busy" >> "$OUT/busy.log"
}

gen() { # args...: the load generator on core 1, bounded
  taskset -c 1 "$BIN/rtg-bench" "$@" --secret "$SECRET"
}

# ---- scenarios -------------------------------------------------------------------------------------
S2_RATES=${S2_RATES:-25,50,75,100,125,150,200,250,300,350,400,500,600,800,1000,1250,1500,2000}
S3_RATES=${S3_RATES:-2000,3000,4000,5000,7500,10000,15000,20000,25000,30000,35000,40000,50000,60000}
S5_RATES=${S5_RATES:-50,100,200,300,400,600,800,1000,1500,2000,2500,3000,3500,4000,5000,6000}
# S6: S2 at 10,000 sockets in the room, the size at which a third party measured socketioxide slower than Node.
S6_RATES=${S6_RATES:-2,5,10,15,20,25,30,40,50}
# S7: Redis PUBLISH to a channel with 100 subscribers on node 2 of two, with and without channel history.
S7_RATES=${S7_RATES:-250,500,1000,1500,2000,3000,4000,5000,6000,8000,10000,12000,15000,20000}

# A Redis Cluster of three masters (no replicas), each pinned to core 0 like the single Redis; sets
# CLUSTER_NODES (their URLs) and CLUSTER_PIDS.
start_cluster() {
  local dir ports=() p
  dir=$(mktemp -d)
  CLUSTER_PIDS=()
  for _ in 1 2 3; do
    next_port; p=$PORT
    # The cluster bus listens on port + 10000.
    taskset -c "$REDIS_CORE" redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --protected-mode yes \
      --cluster-enabled yes --cluster-config-file "$dir/nodes-$p.conf" --dir "$dir" --loglevel warning \
      >"$OUT/redis-cluster-$p.log" 2>&1 &
    CLUSTER_PIDS+=($!); PIDS+=($!)
    ports+=("$p")
    wait_port "$p"
  done
  redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
  for _ in $(seq 1 200); do
    local ok=1
    for p in "${ports[@]}"; do redis-cli -p "$p" cluster info | grep -q cluster_state:ok || ok=0; done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  CLUSTER_NODES=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}"); CLUSTER_NODES=${CLUSTER_NODES%,}
}

two_nodes() { # server port: Redis and two nodes of `server` (node 1 on `port`); sets RPORT, P2, PID1, PID2
  if [ "$1" = gwcluster ]; then
    start_cluster
    next_port; P2=$PORT
    start_server "$1" "$2" "$CLUSTER_NODES" n1; PID1=$SERVER_PID
    start_server "$1" "$P2" "$CLUSTER_NODES" n2; PID2=$SERVER_PID
    REDIS_PID=""
    sleep 1
    return
  fi
  next_port; RPORT=$PORT
  start_redis "$RPORT"
  next_port; P2=$PORT
  start_server "$1" "$2" "redis://127.0.0.1:$RPORT" n1; PID1=$SERVER_PID
  start_server "$1" "$P2" "redis://127.0.0.1:$RPORT" n2; PID2=$SERVER_PID
  sleep 1
}

one_run() { # scenario server run
  local sc=$1 srv=$2 run=$3 port file
  # gwws: the same gateway, its clients on the plain WebSocket endpoint /ws.
  local -a P=()
  [ "$srv" = gwws ] && P=(--proto ws)
  next_port; port=$PORT
  file="$OUT/$sc-$srv-$run.json"
  case $sc in
    s1)
      start_server "$srv" "$port"
      gen idle "${P[@]}" --server "127.0.0.1:$port" --pid "$SERVER_PID" --label "$srv" --clients 10000 \
        --concurrency 200 --settle-secs 5 --idle-secs "${S1_IDLE_SECS:-5}" --max-secs 120 --out "$file" >/dev/null || log "s1 $srv run $run failed"
      stop_pid "$SERVER_PID"
      ;;
    s4)
      start_server "$srv" "$port"
      gen storm --server "127.0.0.1:$port" --pid "$SERVER_PID" --label "$srv" --clients 10000 \
        --concurrency 500 --connect-timeout-secs 20 --max-secs 120 --out "$file" >/dev/null || log "s4 $srv run $run failed"
      stop_pid "$SERVER_PID"
      ;;
    s2)
      start_server "$srv" "$port"
      gen fanout "${P[@]}" --server "127.0.0.1:$port" --pid "$SERVER_PID" --label "$srv" --clients 1000 \
        --concurrency 50 --rates "$S2_RATES" --step-secs 2 --drain-secs 2 --p99-limit-ms 50 --stop-after 2 \
        --max-secs 150 --out "$file" >/dev/null || log "s2 $srv run $run failed"
      stop_pid "$SERVER_PID"
      ;;
    s6)
      start_server "$srv" "$port"
      gen fanout --server "127.0.0.1:$port" --pid "$SERVER_PID" --label "$srv" --clients 10000 --users 1 \
        --concurrency 200 --rates "$S6_RATES" --step-secs 3 --drain-secs 3 --p99-limit-ms 1000 --stop-after 2 \
        --max-secs 400 --out "$file" >/dev/null || log "s6 $srv run $run failed"
      stop_pid "$SERVER_PID"
      ;;
    s3)
      start_server "$srv" "$port"
      gen ack --server "127.0.0.1:$port" --pid "$SERVER_PID" --label "$srv" --clients 1000 \
        --fixed-rate 10000 --fixed-secs 5 --rates "$S3_RATES" --step-secs 2 --drain-secs 2 \
        --p99-limit-ms 10 --stop-after 2 --max-secs 150 --out "$file" >/dev/null || log "s3 $srv run $run failed"
      stop_pid "$SERVER_PID"
      ;;
    s5)
      two_nodes "$srv" "$port"
      # gwws: the same across the two nodes' /ws (the bus carries it), SPEC §10.
      gen fanout "${P[@]}" --server "127.0.0.1:$P2" --sender-server "127.0.0.1:$port" --pid "$PID1" --pid "$PID2" \
        --label "$srv" --clients 200 --concurrency 50 --rates "$S5_RATES" --step-secs 2 --drain-secs 2 \
        --p99-limit-ms 50 --stop-after 2 --max-secs 150 --out "$file" >/dev/null || log "s5 $srv run $run failed"
      stop_pid "$PID1"; stop_pid "$PID2"
      if [ "$srv" = gwcluster ]; then for p in "${CLUSTER_PIDS[@]}"; do stop_pid "$p"; done; else stop_pid "$REDIS_PID"; fi
      ;;
    s7)
      two_nodes "$srv" "$port"
      # Both nodes append every publication (see src/app/publications.rs): their CPU and Redis's count.
      gen publish --server "127.0.0.1:$P2" --redis "127.0.0.1:$RPORT" --pid "$PID1" --pid "$PID2" --pid "$REDIS_PID" \
        --label "$srv" --clients 100 --concurrency 50 --rates "$S7_RATES" --step-secs 2 --drain-secs 2 \
        --p99-limit-ms 50 --stop-after 2 --max-secs 200 --out "$file" >/dev/null || log "s7 $srv run $run failed"
      stop_pid "$PID1"; stop_pid "$PID2"; stop_pid "$REDIS_PID"
      ;;
  esac
}

servers_for() { # scenario -> the servers it runs against
  local want
  case $1 in
    s2|s1) want="gateway gwws node raw" ;;
    s7) want="gateway gwnohist" ;;
    s5) want="gateway gwws gwcluster node" ;;
    *) want="gateway node" ;;
  esac
  for s in $want; do
    case " $SERVERS " in *" $s "*) printf '%s ' "$s" ;; esac
  done
}

T0=$(date +%s)
for sc in "${SCENARIOS[@]}"; do
  case $sc in s1|s2|s3|s4|s5|s6|s7) ;; *) log "unknown scenario $sc (s1..s7 or all)"; exit 2 ;; esac
  for run in $(seq 1 "$RUNS"); do
    for srv in $(servers_for "$sc"); do
      quiet
      log "$sc $srv run $run/$RUNS"
      one_run "$sc" "$srv" "$run"
    done
  done
done
log "measured in $(( $(date +%s) - T0 )) s; results in $OUT"

python3 "$HERE/report.py" "$OUT" --chart "$OUT/s2-latency.png"
