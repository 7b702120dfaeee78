#!/usr/bin/env bash
# User-space instructions per proxied request, tollgate against nginx,
# counted by valgrind's callgrind: unlike req/s or CPU time these counts do
# not move with whatever else the shared machine is doing, so a change to
# the proxy path can be judged by one run.
#
#   scripts/instructions.sh
#   ACCESS_LOG=1 scripts/instructions.sh     # adds tollgate+accesslog (JSON lines to a file)
#   REDIS_URL=redis://127.0.0.1:6379 scripts/instructions.sh   # adds shared limits, lease and exact
#   RULES=10 scripts/instructions.sh   # adds tollgate+10rules (rules the load never matches)
#   ROUTES=50 scripts/instructions.sh  # adds tollgate+1route and tollgate+50routes+20rules
#                                      # (the load takes the last route; no rule matches it)
#   OTLP=1 scripts/instructions.sh     # adds tollgate+otlp0, +otlp0.01, +otlp1: spans
#                                      # exported (telemetry.otlp) at those sample ratios
#                                      # to scripts/otlp_sink.py (answers 200)
#   BIN=/tmp/tollgate-old scripts/instructions.sh   # another build, not rebuilt
#   HAPROXY=1 scripts/instructions.sh  # adds HAProxy with benches/compare/haproxy.cfg.in
#   IR_SECONDS=3 scripts/instructions.sh   # shorter keep-alive load (default 10)
#
# Each server runs under callgrind; counting is switched on only around
# each load (callgrind_control -z before, -d after):
#   keep-alive:      wrk -t1 -c10 -d10s   (requests counted by wrk; IR_SECONDS)
#   new connection:  ab -n 3000 -c 50     (one connection per request)
# and the table shows instructions / requests. nginx (optional) runs one
# worker with the configuration scripts/bench.sh gives it.
#
# For a breakdown by function, build with line tables
# (CARGO_PROFILE_PRODUCTION_DEBUG=line-tables-only), keep the files
# (KEEP=1) and read them with callgrind_annotate --inclusive=yes.
# Needs valgrind, wrk and ab (Debian: valgrind wrk apache2-utils).
#
# The regression guard (docs/benchmarks.md, "Instruction counts"):
#   scripts/instructions.sh --update   # counts the standard set and writes
#                                      # benches/instructions.txt
#   scripts/instructions.sh --check    # counts it again; exits 1 if a figure
#                                      # grew by more than 10% (CHECK_PERCENT)
# The standard set is tollgate alone, with the access log, and with one
# route and with 50 routes + 20 rules, each under both loads; no nginx, no
# Redis. About 3 minutes, so it is run by hand (and in review), not in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-}
FIGURES=benches/instructions.txt
case "$MODE" in
  "") ;;
  --check | --update)
    ACCESS_LOG=1 ROUTES=50 RULES=0 NGINX=0
    unset REDIS_URL
    [ "$MODE" = --check ] && [ ! -f "$FIGURES" ] && { echo "no $FIGURES: run --update first" >&2; exit 2; }
    ;;
  *) echo "usage: scripts/instructions.sh [--check|--update]" >&2; exit 2 ;;
esac

ACCESS_LOG=${ACCESS_LOG:-0}
if [ -z "${BIN:-}" ]; then
  BIN=${CARGO_TARGET_DIR:-target}/production/tollgate
  BUILD=1
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "callgrind files kept in $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

for tool in valgrind callgrind_control wrk ab; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install valgrind wrk apache2-utils)" >&2; exit 1; }
done
[ -n "${BUILD:-}" ] && cargo build --profile production --quiet
ulimit -n "$(ulimit -Hn)"

. scripts/common.sh
start_backends

# measure NAME PID URL: prints "NAME keep-alive IR/req" and "NAME new-connection IR/req".
measure() {
  local name=$1 pid=$2 u=$3 n total
  wrk -t1 -c10 -d2s "$u" >/dev/null # warm-up: backend connections, caches
  callgrind_control -z "$pid" >/dev/null 2>&1
  n=$(wrk -t1 -c10 -d"${IR_SECONDS:-10}s" "$u" | awk '/requests in/ {print $1}')
  total=$(dump "$pid" "$name-keepalive")
  echo "$name keep-alive $((total / n))"
  callgrind_control -z "$pid" >/dev/null 2>&1
  ab -q -n 3000 -c 50 "$u" >/dev/null
  total=$(dump "$pid" "$name-newconn")
  echo "$name new-connection $((total / 3000))"
}
# dump PID LABEL: writes the counts so far and prints their total.
dump() {
  callgrind_control -d "$2" "$1" >/dev/null 2>&1
  local f
  f=$(ls -t "$WORK"/callgrind."$1".* 2>/dev/null | head -n1)
  awk '/^summary:/ {print $2}' "$f"
}

RESULTS=()
port=$(free_port); admin=$(free_port)
tollgate_conf "$WORK/tollgate.yaml" "$port" "$admin"
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
  "$BIN" serve --config "$WORK/tollgate.yaml" >"$WORK/tollgate.log" 2>&1 & TPID=$!; PIDS+=("$TPID")
wait_http "http://127.0.0.1:$port/health"
while read -r line; do RESULTS+=("$line"); done < <(measure tollgate "$TPID" "http://127.0.0.1:$port/")

if [ "$ACCESS_LOG" = 1 ]; then
  port=$(free_port); admin=$(free_port)
  tollgate_conf "$WORK/tollgate-accesslog.yaml" "$port" "$admin" "" "" "access: true, format: json"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
    "$BIN" serve --config "$WORK/tollgate-accesslog.yaml" >"$WORK/tollgate-accesslog.log" 2>&1 & APID=$!; PIDS+=("$APID")
  wait_http "http://127.0.0.1:$port/health"
  while read -r line; do RESULTS+=("$line"); done < <(measure tollgate+accesslog "$APID" "http://127.0.0.1:$port/")
fi

if [ "${RULES:-0}" -gt 0 ]; then
  rules_lines="  rules:"
  for i in $(seq "$RULES"); do
    rules_lines+=$'\n'"    - {name: rule-$i, match: {path_prefix: /rule-$i, methods: [GET]}, limits: {capacity: 1000, rate_per_sec: 100}}"
  done
  port=$(free_port); admin=$(free_port)
  tollgate_conf "$WORK/tollgate-rules.yaml" "$port" "$admin" "$rules_lines"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
    "$BIN" serve --config "$WORK/tollgate-rules.yaml" >"$WORK/tollgate-rules.log" 2>&1 & RPID=$!; PIDS+=("$RPID")
  wait_http "http://127.0.0.1:$port/health"
  while read -r line; do RESULTS+=("$line"); done < <(measure "tollgate+${RULES}rules" "$RPID" "http://127.0.0.1:$port/")
  kill "$RPID" 2>/dev/null || true
fi

# Routing: one catch-all route, against ROUTES routes (ROUTES-1 on other
# prefixes and hosts, then the catch-all the load takes) with 20 rules the
# load never matches. Both send to the top-level backends (pool default),
# and both carry route and pool labels, so the difference is the lookup.
if [ "${ROUTES:-0}" -gt 0 ]; then
  one="routes:
  - {name: all, match: {path_prefix: /}, pool: default}"
  many="routes:"
  for i in $(seq $((ROUTES - 1))); do
    many+=$'\n'"  - {name: svc-$i, match: {hosts: [svc-$i.example.com, \"*.svc-$i.example.com\"], path_prefix: /svc-$i}, pool: default}"
  done
  many+=$'\n'"  - {name: all, match: {path_prefix: /}, pool: default}"
  rules_lines="  rules:"
  for i in $(seq 20); do
    rules_lines+=$'\n'"    - {name: rule-$i, match: {path_prefix: /svc-$i, methods: [GET]}, limits: {capacity: 1000, rate_per_sec: 100}}"
  done
  for variant in 1route "${ROUTES}routes+20rules"; do
    port=$(free_port); admin=$(free_port)
    if [ "$variant" = 1route ]; then
      tollgate_conf "$WORK/tollgate-$variant.yaml" "$port" "$admin"
      echo "$one" >>"$WORK/tollgate-$variant.yaml"
    else
      tollgate_conf "$WORK/tollgate-$variant.yaml" "$port" "$admin" "$rules_lines"
      echo "$many" >>"$WORK/tollgate-$variant.yaml"
    fi
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
      "$BIN" serve --config "$WORK/tollgate-$variant.yaml" >"$WORK/tollgate-$variant.log" 2>&1 & XPID=$!; PIDS+=("$XPID")
    wait_http "http://127.0.0.1:$port/health"
    while read -r line; do RESULTS+=("$line"); done < <(measure "tollgate+$variant" "$XPID" "http://127.0.0.1:$port/")
    kill "$XPID" 2>/dev/null || true
  done
fi

# Tracing: spans exported over OTLP/HTTP at three sample ratios. The
# export (batching, protobuf, the POSTs) runs in tollgate's process off
# the request path, and is counted too: the figure is the whole cost.
# The baseline `tollgate` above already sends a traceparent to backends.
if [ "${OTLP:-0}" = 1 ]; then
  sink=$(free_port)
  python3 scripts/otlp_sink.py "$sink" & PIDS+=($!)
  wait_http "http://127.0.0.1:$sink/"
  for ratio in 0 0.01 1; do
    port=$(free_port); admin=$(free_port)
    tollgate_conf "$WORK/tollgate-otlp$ratio.yaml" "$port" "$admin"
    printf 'telemetry:\n  otlp: {endpoint: "http://127.0.0.1:%s", sample_ratio: %s, batch_delay: 1s}\n' \
      "$sink" "$ratio" >>"$WORK/tollgate-otlp$ratio.yaml"
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
      "$BIN" serve --config "$WORK/tollgate-otlp$ratio.yaml" >"$WORK/tollgate-otlp$ratio.log" 2>&1 & OPID=$!; PIDS+=("$OPID")
    wait_http "http://127.0.0.1:$port/health"
    while read -r line; do RESULTS+=("$line"); done < <(measure "tollgate+otlp$ratio" "$OPID" "http://127.0.0.1:$port/")
    curl -fs "http://127.0.0.1:$admin/metrics" | grep '^tollgate_trace_spans' | sed "s/^/otlp$ratio: /" >&2 || true
    kill "$OPID" 2>/dev/null || true
  done
fi

# Shared limits (limits never reached): tollgate's own instructions only,
# not Redis's. Under valgrind a Redis reply takes longer than the default
# 50 ms timeout allows, hence 2 s.
if [ -n "${REDIS_URL:-}" ]; then
  for mode in lease exact; do
    port=$(free_port); admin=$(free_port)
    tollgate_conf "$WORK/tollgate-$mode.yaml" "$port" "$admin" \
      "  shared: {redis_url: '$REDIS_URL', key_prefix: 'tollgate-ir-$mode:', mode: $mode, timeout: 2s}"
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
      "$BIN" serve --config "$WORK/tollgate-$mode.yaml" >"$WORK/tollgate-$mode.log" 2>&1 & SPID=$!; PIDS+=("$SPID")
    wait_http "http://127.0.0.1:$port/health"
    while read -r line; do RESULTS+=("$line"); done < <(measure "tollgate+$mode" "$SPID" "http://127.0.0.1:$port/")
    kill "$SPID" 2>/dev/null || true
  done
fi

if [ "${NGINX:-1}" = 0 ]; then
  :
elif command -v nginx >/dev/null; then
  NG=$(free_port)
  nginx_conf "$WORK/nginx.conf" "$NG" "worker_processes 1;
master_process off;
daemon off;
events { worker_connections 4096; }"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
    nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log" >"$WORK/nginx.log" 2>&1 & NPID=$!; PIDS+=("$NPID")
  wait_http "http://127.0.0.1:$NG/health"
  while read -r line; do RESULTS+=("$line"); done < <(measure nginx "$NPID" "http://127.0.0.1:$NG/")
else
  echo "(nginx not installed: tollgate only)" >&2
fi

# HAProxy with the configuration benches/compare/run.py compares (its
# plain listener is measured; the TLS one needs a certificate to start).
if [ "${HAPROXY:-0}" = 1 ]; then
  command -v haproxy >/dev/null || { echo "missing haproxy (apt-get install haproxy)" >&2; exit 1; }
  sh scripts/dev-cert.sh "$WORK/tls" >/dev/null 2>&1
  cat "$WORK/tls/site.pem" "$WORK/tls/site.key" >"$WORK/tls/bundle.pem"
  HP=$(free_port)
  sed -e "s#@PORT@#$HP#g; s#@TLS_PORT@#$(free_port)#g; s#@WORK@#$WORK#g" \
    -e "s#@CERT_BUNDLE@#$WORK/tls/bundle.pem#g; s#@B0@#${B[0]}#g; s#@B1@#${B[1]}#g; s#@B2@#${B[2]}#g" \
    benches/compare/haproxy.cfg.in >"$WORK/haproxy.cfg"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
    haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & HXPID=$!; PIDS+=("$HXPID")
  wait_http "http://127.0.0.1:$HP/health"
  while read -r line; do RESULTS+=("$line"); done < <(measure haproxy "$HXPID" "http://127.0.0.1:$HP/")
fi

printf '\n| server | load | user-space instructions per request |\n|---|---|---|\n'
for r in "${RESULTS[@]}"; do
  read -r name load ir <<<"$r"
  printf '| %s | %s | %s |\n' "$name" "$load" "$ir"
done
echo
STAMP="$(valgrind --version); $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $BIN"
echo "$STAMP"

case "$MODE" in
  --update)
    {
      echo "# User-space instructions per proxied request (scripts/instructions.sh --update;"
      echo "# --check fails when a figure grows by more than 10%). $STAMP"
      for r in "${RESULTS[@]}"; do echo "$r"; done
    } >"$FIGURES"
    echo "wrote $FIGURES"
    ;;
  --check)
    limit=${CHECK_PERCENT:-10}
    failed=0
    printf '\n| server | load | committed | now | change |\n|---|---|---|---|---|\n'
    while read -r name load was; do
      case "$name" in "#"* | "") continue ;; esac
      now=""
      for r in "${RESULTS[@]}"; do
        read -r n l ir <<<"$r"
        [ "$n $l" = "$name $load" ] && now=$ir
      done
      if [ -z "$now" ]; then
        echo "| $name | $load | $was | missing | |"
        failed=1
        continue
      fi
      change=$(awk -v a="$was" -v b="$now" 'BEGIN { printf "%+.1f%%", (b - a) * 100 / a }')
      echo "| $name | $load | $was | $now | $change |"
      if [ $((now * 100)) -gt $((was * (100 + limit))) ]; then
        echo "  ^ more than ${limit}% above $FIGURES" >&2
        failed=1
      fi
    done <"$FIGURES"
    if [ "$failed" = 1 ]; then
      echo "instruction counts grew by more than ${limit}% (or a figure is missing)" >&2
      exit 1
    fi
    echo "within ${limit}% of $FIGURES"
    ;;
esac
