#!/usr/bin/env bash
# Load comparison in one run: a demo backend hit directly, tollgate, and
# (when installed) nginx, all on 127.0.0.1, with wrk and ab.
#
#   scripts/bench.sh            # wrk 10 s per target, ab -n 5000 -c 1000 x3
#   DURATION=5s AB_ROUNDS=5 scripts/bench.sh
#   REDIS_URL=redis://127.0.0.1:6379 scripts/bench.sh   # adds shared limits
#   TLS=0 scripts/bench.sh      # without the TLS section
#   ACCESS_LOG=1 scripts/bench.sh   # adds tollgate+accesslog
#   RULES=10 scripts/bench.sh       # adds tollgate+10rules (limit rules none of the requests match)
#
# The TLS section puts tollgate and nginx in front of the same backends
# with the same ECDSA P-256 certificate (made by openssl for the run):
# wrk over https measures keep-alive requests, and ab without -k opens a
# new TLS connection (a full handshake: ab never resumes a session) for
# every request.
#
# One ab run of 5000 requests lasts well under a second here, and its rate
# swung by 2x between identical runs (the first burst also opens ~1000
# backend connections), so ab runs AB_ROUNDS times per target and the
# table shows the median run, with the range of all runs beside it.
#
# Beside rate and latency the table gives the CPU time each target's own
# processes spent per request, and ab's own: everything shares the same
# cores, so a server's CPU per request decides how much is left for the
# load generator and the backends.
#
# Limits are set high enough that neither tollgate nor nginx ever rejects:
# the numbers compare the cost of proxying plus limiting, not rejections.
# Needs wrk and ab (Debian: wrk, apache2-utils); nginx is optional.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
AB_N=${AB_N:-5000}
AB_C=${AB_C:-1000}
AB_ROUNDS=${AB_ROUNDS:-3}
TLS=${TLS:-1}
ACCESS_LOG=${ACCESS_LOG:-0}
# The production profile (fat LTO), as the Docker image ships it (where
# cargo puts it: CARGO_TARGET_DIR is honoured).
BIN=${CARGO_TARGET_DIR:-target}/production/tollgate
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

for tool in wrk ab; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk apache2-utils)" >&2; exit 1; }
done
cargo build --profile production --quiet
ulimit -n "$(ulimit -Hn)"
. scripts/common.sh

start_backends
if [ "$TLS" = 1 ]; then
  sh scripts/dev-cert.sh "$WORK" >/dev/null 2>&1
  # curl (the readiness checks) trusts the run's CA; wrk and ab do not verify.
  export CURL_CA_BUNDLE=$WORK/ca.pem
  TGS=$(free_port); NGS=$(free_port)
  TLS_LINES="  tls: {listen: 127.0.0.1:$TGS, certificates: [{cert: $WORK/site.pem, key: $WORK/site.key}]}"
fi
# Processes whose CPU time is charged to each target (the "direct" target
# is backend b0 alone).
declare -A SERVER_PIDS=([direct]=${PIDS[0]})

# start_tollgate NAME [SHARED [SERVER_LINES [LOG_KEYS]]]: a tollgate on
# free ports with limits that never reject; SHARED is an extra
# rate_limit.shared line, SERVER_LINES extra server settings, LOG_KEYS
# extra `log:` keys. Prints its pid and port.
start_tollgate() {
  local port admin; port=$(free_port); admin=$(free_port)
  tollgate_conf "$WORK/$1.yaml" "$port" "$admin" "${2:-}" "${3:-}" "${4:-}"
  "$BIN" serve --config "$WORK/$1.yaml" >"$WORK/$1.log" 2>&1 &
  echo "$! $port"
}
read -r pid TG < <(start_tollgate tollgate "" "${TLS_LINES:-}"); PIDS+=("$pid"); SERVER_PIDS[tollgate]=$pid
wait_http "http://127.0.0.1:$TG/health"
TARGETS=("direct http://127.0.0.1:${B[0]}/" "tollgate http://127.0.0.1:$TG/")
TLS_TARGETS=()
if [ "$TLS" = 1 ]; then
  SERVER_PIDS[tollgate-tls]=$pid
  wait_http "https://127.0.0.1:$TGS/health"
  TLS_TARGETS+=("tollgate-tls https://127.0.0.1:$TGS/")
fi
# With REDIS_URL, two more tollgates whose limits are shared through
# Redis, one per rate_limit.shared.mode: leased tokens spent locally, and
# one Redis round trip per request. Redis's own command count (INFO
# commandstats, reset before each) gives the calls per request.
SHARED_MODES=()
if [ -n "${REDIS_URL:-}" ]; then
  command -v redis-cli >/dev/null || { echo "missing redis-cli (apt-get install redis-tools)" >&2; exit 1; }
  for mode in lease exact; do
    read -r pid port < <(start_tollgate "tollgate+$mode" \
      "  shared: {redis_url: '$REDIS_URL', key_prefix: 'tollgate-bench-$mode:', mode: $mode}"); PIDS+=("$pid")
    SERVER_PIDS[tollgate+$mode]=$pid
    wait_http "http://127.0.0.1:$port/health"
    TARGETS+=("tollgate+$mode http://127.0.0.1:$port/")
    SHARED_MODES+=("$mode")
  done
fi
# Script calls Redis ran since its stats were last reset.
redis_calls() {
  redis-cli -u "$REDIS_URL" INFO commandstats | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_(evalsha|eval):/ {n += $3} END {print n + 0}'
}
# With ACCESS_LOG=1, a second tollgate writing a JSON access log line per
# request to a file (its stdout): the cost of the log against the row
# above, in the same run.
if [ "$ACCESS_LOG" = 1 ]; then
  read -r pid TA < <(start_tollgate tollgate-accesslog "" "" "access: true, format: json"); PIDS+=("$pid")
  SERVER_PIDS[tollgate+accesslog]=$pid
  wait_http "http://127.0.0.1:$TA/health"
  TARGETS+=("tollgate+accesslog http://127.0.0.1:$TA/")
fi
# With RULES=N, a tollgate with N limit rules on paths the load never
# asks for: what evaluating rules costs a request they do not match.
if [ "${RULES:-0}" -gt 0 ]; then
  rules_lines="  rules:"
  for i in $(seq "$RULES"); do
    rules_lines+=$'\n'"    - {name: rule-$i, match: {path_prefix: /rule-$i, methods: [GET]}, limits: {capacity: 1000, rate_per_sec: 100}}"
  done
  read -r pid port < <(start_tollgate "tollgate+${RULES}rules" "$rules_lines"); PIDS+=("$pid")
  SERVER_PIDS[tollgate+${RULES}rules]=$pid
  wait_http "http://127.0.0.1:$port/health"
  TARGETS+=("tollgate+${RULES}rules http://127.0.0.1:$port/")
fi
if command -v nginx >/dev/null; then
  NG=$(free_port)
  tls_args=()
  [ "$TLS" = 1 ] && tls_args=("$NGS" "$WORK/site.pem" "$WORK/site.key")
  nginx_conf "$WORK/nginx.conf" "$NG" "worker_processes auto;
worker_rlimit_nofile 20000;
events { worker_connections 20000; }" "${tls_args[@]}"
  nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log"
  wait_http "http://127.0.0.1:$NG/health"
  TARGETS+=("nginx http://127.0.0.1:$NG/")
  SERVER_PIDS[nginx]="$(cat "$WORK/nginx.pid") $(pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' ')"
  if [ "$TLS" = 1 ]; then
    wait_http "https://127.0.0.1:$NGS/health"
    TLS_TARGETS+=("nginx-tls https://127.0.0.1:$NGS/")
    SERVER_PIDS[nginx-tls]=${SERVER_PIDS[nginx]}
  fi
else
  echo "(nginx not installed: skipping the nginx column; apt-get install nginx-light)" >&2
fi

to_ms() { # wrk latency like 1.23ms / 456.00us / 1.02s
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v+0 } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000 } else print v }'
}

# CPU time (clock ticks, user + system) used so far by the given processes
# and all their threads, from /proc.
cpu_ticks() {
  local total=0 f fields
  for pid in "$@"; do
    for f in /proc/"$pid"/task/*/stat; do
      read -r -a fields < "$f" 2>/dev/null || continue
      total=$((total + fields[13] + fields[14]))
    done
  done
  echo "$total"
}
HZ=$(getconf CLK_TCK)
GNU_TIME=$(command -v /usr/bin/time || true) # Debian: time
# µs of CPU per request from a tick difference and a request count.
per_req() { awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "-" }'; }

declare -A RPS
ROWS=()
REDIS_ROWS=()
for t in "${TARGETS[@]}" "${TLS_TARGETS[@]}"; do
  name=${t%% *}; u=${t#* }
  curl -fs -o /dev/null "$u"
  [[ $name == tollgate+lease || $name == tollgate+exact ]] && redis-cli -u "$REDIS_URL" CONFIG RESETSTAT >/dev/null
  served=0
  read -r -a spids <<<"${SERVER_PIDS[$name]}"
  t0=$(cpu_ticks "${spids[@]}")
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$u")
  cpu=$(per_req $(($(cpu_ticks "${spids[@]}") - t0)) "$(awk '/requests in/ {print $1}' <<<"$out")")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  RPS["wrk-$name"]=$rps
  served=$((served + $(awk '/requests in/ {print $1}' <<<"$out")))
  ROWS+=("$name|wrk -t1 -c$CONNS -d$DURATION|$rps|$p50|$p99|${errs:-0}|$cpu|-")

  runs=()
  failed=0; non2xx=0; ab_ticks=0
  t0=$(cpu_ticks "${spids[@]}")
  for _ in $(seq "$AB_ROUNDS"); do
    # ab's own CPU (GNU time's user + system seconds) goes to stderr's
    # last line.
    out=$(${GNU_TIME:+$GNU_TIME -f 'abcpu %U %S'} ab -q -n "$AB_N" -c "$AB_C" "$u" 2>&1)
    ab_ticks=$(awk -v t="$ab_ticks" -v hz="$HZ" '/^abcpu/ {t += ($2 + $3) * hz} END {printf "%d", t}' <<<"$out")
    rps=$(awk '/^Requests per second/ {print $4}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    failed=$((failed + $(awk '/^Failed requests/ {print $3}' <<<"$out")))
    non2xx=$((non2xx + $(awk '/^Non-2xx responses/ {print $3}' <<<"$out" | grep . || echo 0)))
    runs+=("$rps $p50 $p99")
  done
  cpu=$(per_req $(($(cpu_ticks "${spids[@]}") - t0)) $((AB_N * AB_ROUNDS)))
  ab_cpu=-
  [ -n "$GNU_TIME" ] && ab_cpu=$(per_req "$ab_ticks" $((AB_N * AB_ROUNDS)))
  # Median run by rate; failures are summed over all runs.
  read -r rps p50 p99 < <(printf '%s\n' "${runs[@]}" | sort -n | sed -n "$(( (AB_ROUNDS + 1) / 2 ))p")
  range=$(printf '%s\n' "${runs[@]}" | sort -n | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%.0f-%.0f", lo, hi}')
  RPS["ab-$name"]=$rps
  served=$((served + AB_N * AB_ROUNDS))
  if [[ $name == tollgate+lease || $name == tollgate+exact ]]; then
    calls=$(redis_calls)
    REDIS_ROWS+=("| $name | $served | $calls | $(awk -v c="$calls" -v n="$served" 'BEGIN { printf "%.4f", c / n }') |")
  fi
  ROWS+=("$name|ab -n $AB_N -c $AB_C (median of $AB_ROUNDS: $range)|$rps|$p50|$p99|failed=$failed non2xx=$non2xx|$cpu|$ab_cpu")
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a/b; else print "-" }'; }
printf '\n| target | load | req/s | p50 ms | p99 ms | errors | vs direct | vs nginx | server CPU µs/req | ab CPU µs/req |\n|---|---|---|---|---|---|---|---|---|---|\n'
for row in "${ROWS[@]}"; do
  IFS='|' read -r name load rps p50 p99 errs cpu ab_cpu <<<"$row"
  tool=${load%% *}
  # TLS rows compare with nginx terminating TLS; "vs direct" is always the
  # plain backend, so it shows what TLS costs.
  peer=nginx; [[ $name == *-tls ]] && peer=nginx-tls
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$load" "$rps" "$p50" "$p99" "$errs" \
    "$(ratio "$rps" "${RPS[$tool-direct]}")" "$(ratio "$rps" "${RPS[$tool-$peer]:-0}")" "$cpu" "$ab_cpu"
done
echo
echo "server CPU: user + system time of the target's own processes (tollgate; nginx master and"
echo "workers; backend b0 for direct) per request; the backends behind a proxy are not counted."
echo
if [ "${RULES:-0}" -gt 0 ]; then
  echo "tollgate+${RULES}rules vs tollgate alone: wrk $(ratio "${RPS[wrk-tollgate+${RULES}rules]}" "${RPS[wrk-tollgate]}")x, ab $(ratio "${RPS[ab-tollgate+${RULES}rules]}" "${RPS[ab-tollgate]}")x"
  echo
fi
if [ "${#REDIS_ROWS[@]}" -gt 0 ]; then
  for mode in "${SHARED_MODES[@]}"; do
    echo "tollgate+$mode vs tollgate alone: wrk $(ratio "${RPS[wrk-tollgate+$mode]}" "${RPS[wrk-tollgate]}")x, ab $(ratio "${RPS[ab-tollgate+$mode]}" "${RPS[ab-tollgate]}")x"
  done
  echo
  printf '| shared mode, limits never reached | requests (wrk + ab) | Redis script calls | calls per request |\n|---|---|---|---|\n'
  printf '%s\n' "${REDIS_ROWS[@]}"
  echo
  # One client far above its limit (capacity 100, 1000/s; wrk sends
  # tens of thousands a second): what refusing costs each mode.
  printf '| shared mode, one client over its limit | req/s | admitted | refused | Redis calls | calls per refused request | server CPU µs/req |\n|---|---|---|---|---|---|---|\n'
  for mode in "${SHARED_MODES[@]}"; do
    port=$(free_port); admin=$(free_port)
    tollgate_conf "$WORK/over-$mode.yaml" "$port" "$admin" \
      "  shared: {redis_url: '$REDIS_URL', key_prefix: 'tollgate-bench-over-$mode:', mode: $mode}"
    sed -i 's/default: {capacity: 1000000000, rate_per_sec: 1000000000}/default: {capacity: 100, rate_per_sec: 1000}/' "$WORK/over-$mode.yaml"
    "$BIN" serve --config "$WORK/over-$mode.yaml" >"$WORK/over-$mode.log" 2>&1 &
    opid=$!; PIDS+=("$opid")
    wait_http "http://127.0.0.1:$port/health"
    redis-cli -u "$REDIS_URL" CONFIG RESETSTAT >/dev/null
    t0=$(cpu_ticks "$opid")
    out=$(wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$port/")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu=$(per_req $(($(cpu_ticks "$opid") - t0)) "$total")
    refused=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); refused=${refused:-0}
    calls=$(redis_calls)
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$mode" "$(awk '/^Requests\/sec/ {print $2}' <<<"$out")" \
      "$((total - refused))" "$refused" "$calls" \
      "$(awk -v c="$calls" -v n="$refused" 'BEGIN { if (n > 0) printf "%.4f", c / n; else print "-" }')" "$cpu"
    kill "$opid" 2>/dev/null || true
  done
  echo
fi
if [ "$ACCESS_LOG" = 1 ]; then
  echo "access log: $(grep -c '"request_id"' "$WORK/tollgate-accesslog.log") lines written"
  echo
fi
echo "cores: $(nproc); $(date -u +%Y-%m-%dT%H:%MZ)"
