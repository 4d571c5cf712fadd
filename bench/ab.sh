#!/usr/bin/env bash
# A/B of gateway binaries through /ws (PROTO=sio: Socket.IO), each pinned to core 0 with the generator on core 1 (the method of
# run.sh, without the peers): S1 (10k idle, idle CPU over a whole ping interval) and S2 (fan-out to 1,000), S4 (10k connects, 256 in flight).
#
#   bench/ab.sh <rtg-bench binary> <label>=<gateway binary> ...     RUNS=3 SCENARIOS="s1 s2"
#
# Results: bench/results/<stamp>/<scenario>-<label>-<run>.json.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
GEN=$1; shift
RUNS=${RUNS:-3}
PROTO=${PROTO:-ws}   # ws: the clients use /ws; sio: Socket.IO
SCENARIOS=${SCENARIOS:-"s1 s2"}
SECRET="bench-secret-$$"
OUT="$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
ulimit -n 65535 2>/dev/null || true
PORT=19400
for sc in $SCENARIOS; do
  for run in $(seq 1 "$RUNS"); do
    for pair in "$@"; do
      label=${pair%%=*}; bin=${pair#*=}
      PORT=$((PORT + 1))
      env -i PATH="$PATH" HOME="${HOME:-/root}" PORT="$PORT" HOST=127.0.0.1 JWT_SECRET="$SECRET" ALLOW_ANONYMOUS=false \
        RATE_LIMIT_PER_SEC=1000000000 RATE_LIMIT_BURST=1000000000 CONNECT_RATE_PER_IP=0 \
        MAX_SOCKETS_PER_USER=1000000 LOG_FORMAT=json RUST_LOG=warn \
        taskset -c 0 "$bin" >"$OUT/server-$label-$sc-$run.log" 2>&1 &
      pid=$!
      for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
      sleep 0.5
      file="$OUT/$sc-$label-$run.json"
      case $sc in
        s1) taskset -c 1 "$GEN" idle --proto "$PROTO" --server "127.0.0.1:$PORT" --pid "$pid" --label "$label" --clients 10000 \
              --concurrency 200 --settle-secs 5 --idle-secs "${S1_IDLE_SECS:-30}" --max-secs 150 --out "$file" \
              --secret "$SECRET" >/dev/null || echo "s1 $label $run failed" ;;
        s4) taskset -c 1 "$GEN" storm --proto "$PROTO" --server "127.0.0.1:$PORT" --pid "$pid" --label "$label" --clients 10000 \
              --concurrency 256 --connect-timeout-secs 20 --max-secs 120 --out "$file" --secret "$SECRET" >/dev/null \
              || echo "s4 $label $run failed" ;;
        s2) taskset -c 1 "$GEN" fanout --proto "$PROTO" --server "127.0.0.1:$PORT" --pid "$pid" --label "$label" --clients 1000 \
              --concurrency 50 --rates "${S2_RATES:-100,150,200,250,300,350,400,500,600,800}" --step-secs 2 --drain-secs 2 \
              --p99-limit-ms 50 --stop-after 2 --max-secs 150 --out "$file" --secret "$SECRET" >/dev/null \
              || echo "s2 $label $run failed" ;;
      esac
      kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
      echo "$sc $label run $run: $file"
    done
  done
done
echo "$OUT"
