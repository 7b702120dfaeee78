#!/usr/bin/env bash
# What the status page costs the proxy under load: wrk against tollgate
# with the page closed, then with a headless Chromium holding the page
# open (it reads GET /status every second), alternating ROUNDS times so
# the machine's drift shows as the spread of each side.
#
#   scripts/status_cost.sh                  # ROUNDS=3 DURATION=10s
#   MODE=curl scripts/status_cost.sh        # a curl loop reading /status
#                                           # every second instead of Chromium
#
# Everything (wrk, Chromium, tollgate, three demo backends) shares the
# machine's cores, so the "open" side pays for the browser's rendering
# too; MODE=curl leaves only the server's side of a refresh.
# Needs wrk, curl, python3; chromium for the default mode.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
MODE=${MODE:-chromium}
run_setup wrk curl
if [ "$MODE" = chromium ]; then
  command -v chromium >/dev/null || { echo "missing chromium (or MODE=curl)" >&2; exit 1; }
fi

start_backends
PORT=$(free_port); ADMIN=$(free_port)
tollgate_conf "$WORK/tollgate.yaml" "$PORT" "$ADMIN"
"$BIN" serve --config "$WORK/tollgate.yaml" >"$WORK/tollgate.log" 2>&1 &
TG=$!
PIDS+=("$TG")
wait_http "http://127.0.0.1:$PORT/"
wait_http "http://127.0.0.1:$ADMIN/status"

# open_page: a reader of /status until close_page; its pid in READER.
open_page() {
  if [ "$MODE" = chromium ]; then
    local dbg; dbg=$(free_port)
    chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
      --user-data-dir="$WORK/chromium" --remote-debugging-port="$dbg" \
      --window-size=1400,1200 "http://127.0.0.1:$ADMIN/" >/dev/null 2>&1 &
    READER=$!
    # Loaded when the debugging endpoint lists the page by its title.
    for _ in $(seq 1 200); do
      curl -fs "http://127.0.0.1:$dbg/json" 2>/dev/null | grep -q '"title": "tollgate status"' && break
      sleep 0.1
    done
    curl -fs "http://127.0.0.1:$dbg/json" | grep -q '"title": "tollgate status"' \
      || { echo "the page did not load in Chromium" >&2; exit 1; }
    sleep 2   # a couple of refreshes before measuring
  else
    ( while true; do curl -fs -o /dev/null "http://127.0.0.1:$ADMIN/status"; sleep 1; done ) &
    READER=$!
  fi
}
close_page() {
  kill "$READER" 2>/dev/null || true
  wait "$READER" 2>/dev/null || true
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$TG/stat"; }

measure() {
  local before after out rps p99
  before=$(cpu_ticks)
  out=$(wrk -t1 -c64 -d"$DURATION" --latency "http://127.0.0.1:$PORT/")
  after=$(cpu_ticks)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  # CPU time of tollgate itself per request, in µs (clock ticks of 10 ms).
  python3 -c "import sys; r=float('$rps'); d=float('${DURATION%s}'); print(f'{r:.0f} req/s, p99 $p99, tollgate CPU {($after-$before)*10000/(r*d):.1f} µs/req')"
}

echo "wrk -t1 -c64 -d$DURATION against tollgate; page reader: $MODE"
for round in $(seq 1 "$ROUNDS"); do
  printf 'round %s closed: ' "$round"; measure
  open_page
  printf 'round %s open:   ' "$round"; measure
  close_page
done
