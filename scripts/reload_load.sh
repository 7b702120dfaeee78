#!/usr/bin/env bash
# Config reload under load, with the real binary: wrk (keep-alive) and ab
# (a new connection per request) run against tollgate while its config
# file is switched RELOADS times between two backend sets that share one
# backend (A = b0+b1, B = b1+b2) and reloaded with POST /reload. Before
# each reload a slow request (/delay/SLOW_MS) is started; half of them
# are on a backend the reload removes. Prints the reload answers, wrk's
# and ab's errors and p99, and the slow requests' statuses.
#
#   scripts/reload_load.sh
#   RELOADS=40 scripts/reload_load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RELOADS=${RELOADS:-20}
SLOW_MS=${SLOW_MS:-400}
. scripts/common.sh
run_setup wrk ab curl

start_backends
PORT=$(free_port); ADMIN=$(free_port)
# conf FIRST SECOND: the config with backends FIRST and SECOND.
conf() {
  cat > "$WORK/tollgate.yaml" <<YAML
server: {listen: 127.0.0.1:$PORT}
admin: {listen: 127.0.0.1:$ADMIN}
backends:
  - {url: 'http://127.0.0.1:$1', name: b$3}
  - {url: 'http://127.0.0.1:$2', name: b$4}
rate_limit:
  default: {capacity: 1000000000, rate_per_sec: 1000000000}
store: {url: 'sqlite://$WORK/t.db'}
log: {level: info}
YAML
}
conf "${B[0]}" "${B[1]}" 0 1
"$BIN" serve --config "$WORK/tollgate.yaml" >"$WORK/tollgate.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PORT/health"

u="http://127.0.0.1:$PORT/"
# Long enough to cover every reload (0.55 s each) with a second to spare
# on both sides.
SECS=$((RELOADS * 55 / 100 + 3))
wrk -t1 -c32 -d"${SECS}s" --latency "$u" >"$WORK/wrk.txt" 2>&1 &
WRK=$!
ab -q -t "$SECS" -n 10000000 -c 20 "$u" >"$WORK/ab.txt" 2>&1 &
AB=$!
sleep 1
slow=()
answers=()
for i in $(seq 1 "$RELOADS"); do
  # The slow request goes to either backend of the set in use; the
  # reload below removes b0 (A -> B) or b2 (B -> A).
  curl -s -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$PORT/delay/$SLOW_MS" >>"$WORK/slow.txt" &
  slow+=($!)
  sleep 0.05
  if [ $((i % 2)) = 1 ]; then conf "${B[1]}" "${B[2]}" 1 2; else conf "${B[0]}" "${B[1]}" 0 1; fi
  answers+=("$(curl -s -X POST "http://127.0.0.1:$ADMIN/reload")")
  sleep 0.5
done
for p in "${slow[@]}"; do wait "$p" || true; done
wait "$WRK" "$AB" || true

echo "reload answers (distinct): $(printf '%s\n' "${answers[@]}" | sort | uniq -c | tr -s ' ')"
echo "slow requests by status: $(sort "$WORK/slow.txt" | uniq -c | tr -s ' ' | tr '\n' ' ')"
echo "--- wrk (keep-alive)"
grep -E 'requests in|Requests/sec|^ +99%' "$WORK/wrk.txt" || true
grep -E 'Non-2xx|Socket errors' "$WORK/wrk.txt" || echo "no non-2xx answers, no socket errors"
echo "--- ab (new connection per request)"
grep -E 'Complete requests|Failed requests|Requests per second|^ +99%' "$WORK/ab.txt" || true
grep -E 'Non-2xx' "$WORK/ab.txt" || echo "no non-2xx answers"
echo "--- tollgate: \"backend set replaced\" log lines"
grep -c 'backend set replaced' "$WORK/tollgate.log" || true
