#!/usr/bin/env bash
# User-space instructions per proxied request, tollgate against nginx,
# counted by valgrind's callgrind: unlike req/s or CPU time these counts do
# not move with whatever else the shared machine is doing, so a change to
# the proxy path can be judged by one run.
#
#   scripts/instructions.sh
#
# Each server runs under callgrind; counting is switched on only around
# each load (callgrind_control -z before, -d after):
#   keep-alive:      wrk -t1 -c10 -d10s   (requests counted by wrk)
#   new connection:  ab -n 3000 -c 50     (one connection per request)
# and the table shows instructions / requests. nginx (optional) runs one
# worker with the configuration scripts/bench.sh gives it.
#
# For a breakdown by function, build with line tables
# (CARGO_PROFILE_PRODUCTION_DEBUG=line-tables-only), keep the files
# (KEEP=1) and read them with callgrind_annotate --inclusive=yes.
# Needs valgrind, wrk and ab (Debian: valgrind wrk apache2-utils).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/production/tollgate
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
cargo build --profile production --quiet
ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 600); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

B=(); for i in 1 2 3; do B+=("$(free_port)"); done
for i in 0 1 2; do
  "$BIN" backend --listen "127.0.0.1:${B[$i]}" --name "b$i" >/dev/null 2>&1 & PIDS+=($!)
done
for p in "${B[@]}"; do wait_http "http://127.0.0.1:$p/health"; done

# measure NAME PID URL: prints "NAME keep-alive IR/req" and "NAME new-connection IR/req".
measure() {
  local name=$1 pid=$2 u=$3 n total
  wrk -t1 -c10 -d2s "$u" >/dev/null # warm-up: backend connections, caches
  callgrind_control -z "$pid" >/dev/null 2>&1
  n=$(wrk -t1 -c10 -d10s "$u" | awk '/requests in/ {print $1}')
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
cat > "$WORK/tollgate.yaml" <<YAML
server: {listen: 127.0.0.1:$port}
admin: {listen: 127.0.0.1:$admin}
backends:
  - url: http://127.0.0.1:${B[0]}
  - url: http://127.0.0.1:${B[1]}
  - url: http://127.0.0.1:${B[2]}
rate_limit:
  default: {capacity: 1000000000, rate_per_sec: 1000000000}
store: {url: 'sqlite://$WORK/tollgate.db'}
log: {level: warn}
YAML
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
  "$BIN" serve --config "$WORK/tollgate.yaml" >"$WORK/tollgate.log" 2>&1 & TPID=$!; PIDS+=("$TPID")
wait_http "http://127.0.0.1:$port/health"
while read -r line; do RESULTS+=("$line"); done < <(measure tollgate "$TPID" "http://127.0.0.1:$port/")

if command -v nginx >/dev/null; then
  NG=$(free_port)
  cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  limit_req_zone \$binary_remote_addr zone=perip:10m rate=1000000r/s;
  upstream pool {
    server 127.0.0.1:${B[0]}; server 127.0.0.1:${B[1]}; server 127.0.0.1:${B[2]};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NG backlog=4096;
    location / {
      limit_req zone=perip burst=1000000 nodelay;
      proxy_pass http://pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
  valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
    nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log" >"$WORK/nginx.log" 2>&1 & NPID=$!; PIDS+=("$NPID")
  wait_http "http://127.0.0.1:$NG/health"
  while read -r line; do RESULTS+=("$line"); done < <(measure nginx "$NPID" "http://127.0.0.1:$NG/")
else
  echo "(nginx not installed: tollgate only)" >&2
fi

printf '\n| server | load | user-space instructions per request |\n|---|---|---|\n'
for r in "${RESULTS[@]}"; do
  read -r name load ir <<<"$r"
  printf '| %s | %s | %s |\n' "$name" "$load" "$ir"
done
echo
echo "$(valgrind --version); $(date -u +%Y-%m-%dT%H:%MZ)"
