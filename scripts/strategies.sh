#!/usr/bin/env bash
# Balancing strategies against one slow backend, in one run: two demo
# backends and one that answers every request after SLOW_MS, behind
# tollgate with round_robin, least_connections and p2c in turn; wrk with
# CONNS connections for DURATION each. Prints p50/p99 and the share of
# requests the slow backend got (from tollgate's own request counters).
#
#   scripts/strategies.sh
#   SLOW_MS=100 DURATION=20s CONNS=32 scripts/strategies.sh
#
# The slow backend is a small threaded Python server (the demo backend's
# /delay/{ms} delays a path, not a backend): it sleeps SLOW_MS, then
# answers 200 with keep-alive. Needs wrk, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
SLOW_MS=${SLOW_MS:-50}
STRATEGIES=${STRATEGIES:-round_robin least_connections p2c}
. scripts/common.sh
run_setup wrk curl python3

start_backends
SLOW=$(free_port)
python3 - "$SLOW" "$SLOW_MS" >/dev/null 2>&1 <<'PY' &
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

delay = int(sys.argv[2]) / 1000

class Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path != "/health":
            time.sleep(delay)
        body = b"slow\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", "slow")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
PY
PIDS+=($!)
wait_http "http://127.0.0.1:$SLOW/health"

to_ms() { # wrk latency like 1.23ms / 456.00us / 1.02s
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v+0 } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000 } else print v }'
}

# served ADMIN_PORT NAME: 2xx answers of backend NAME so far.
served() {
  curl -fs "http://127.0.0.1:$1/metrics" |
    awk -v b="backend=\"$2\"" 'index($0, "tollgate_requests_total{") == 1 && index($0, b) && index($0, "status=\"2xx\"") {s += $NF} END {printf "%d", s}'
}

ROWS=()
for strategy in $STRATEGIES; do
  port=$(free_port); admin=$(free_port)
  cat > "$WORK/$strategy.yaml" <<YAML
server: {listen: 127.0.0.1:$port}
admin: {listen: 127.0.0.1:$admin}
backends:
  - {url: http://127.0.0.1:${B[0]}, name: fast-0}
  - {url: http://127.0.0.1:${B[1]}, name: fast-1}
  - {url: http://127.0.0.1:$SLOW, name: slow}
balancing: {strategy: $strategy}
rate_limit:
  default: {capacity: 1000000000, rate_per_sec: 1000000000}
store: {url: 'sqlite://$WORK/$strategy.db'}
log: {level: warn}
YAML
  "$BIN" serve --config "$WORK/$strategy.yaml" >"$WORK/$strategy.log" 2>&1 &
  pid=$!
  PIDS+=($pid)
  wait_http "http://127.0.0.1:$port/health"
  out=$(wrk -t2 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$port/")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  slow=$(served "$admin" slow)
  all=$(( $(served "$admin" fast-0) + $(served "$admin" fast-1) + slow ))
  share=$(awk -v s="$slow" -v a="$all" 'BEGIN { if (a > 0) printf "%.1f%%", 100 * s / a; else print "-" }')
  ROWS+=("$strategy|$rps|$p50|$p99|$share|${errs:-0}")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done

echo
echo "wrk -t2 -c$CONNS -d$DURATION; backends: 2 demo + 1 answering after ${SLOW_MS} ms"
echo "| strategy | req/s | p50 ms | p99 ms | slow backend's share | errors |"
echo "|---|---|---|---|---|---|"
for r in "${ROWS[@]}"; do
  echo "| ${r//|/ | } |"
done
