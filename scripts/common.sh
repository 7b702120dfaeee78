# Shared by the load scripts (sourced, not run): their setup (run_setup,
# used by strategies.sh and reload_load.sh), free ports, waiting for a
# server, the three demo backends, and the tollgate and nginx
# configurations bench.sh and instructions.sh compare. Expects BIN (the
# tollgate binary), WORK (a scratch folder) and the array PIDS (processes
# to stop), which run_setup provides.

# run_setup TOOL...: what a load script starts with: a scratch folder WORK
# and the list PIDS of processes stopped (with WORK removed) on exit, the
# TOOLs checked, the production build (fat LTO, as the Docker image ships
# it) made, and the open-file limit raised. Sets BIN. PROFILE=release
# builds (and runs) the quicker release profile instead.
run_setup() {
  PROFILE=${PROFILE:-production}
  BIN=${CARGO_TARGET_DIR:-target}/$PROFILE/tollgate
  WORK=$(mktemp -d)
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
  done
  cargo build --profile "$PROFILE" --quiet
  ulimit -n "$(ulimit -Hn)"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL: until URL answers 2xx (up to 30 s: servers under valgrind
# start slowly).
wait_http() {
  for _ in $(seq 1 600); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "no answer from $1" >&2
  exit 1
}

# start_backends: three demo backends on free ports; their ports go to B,
# their processes to PIDS (b0 first).
start_backends() {
  B=()
  for _ in 1 2 3; do B+=("$(free_port)"); done
  for i in 0 1 2; do
    "$BIN" backend --listen "127.0.0.1:${B[$i]}" --name "b$i" >/dev/null 2>&1 &
    PIDS+=($!)
  done
  for p in "${B[@]}"; do wait_http "http://127.0.0.1:$p/health"; done
}

# tollgate_conf FILE PORT ADMIN_PORT [RATE_LIMIT_LINE [SERVER_LINES [LOG_KEYS]]]:
# tollgate over the backends with limits too high ever to reject;
# SERVER_LINES go under `server:` (the TLS listener), LOG_KEYS into `log:`
# (the access log).
tollgate_conf() {
  cat > "$1" <<YAML
server:
  listen: 127.0.0.1:$2
${5:-}
admin: {listen: 127.0.0.1:$3}
backends:
  - url: http://127.0.0.1:${B[0]}
  - url: http://127.0.0.1:${B[1]}
  - url: http://127.0.0.1:${B[2]}
rate_limit:
  default: {capacity: 1000000000, rate_per_sec: 1000000000}
${4:-}
store: {url: 'sqlite://$1.db'}
log: {level: warn${6:+, $6}}
YAML
}

# nginx_conf FILE PORT MAIN_LINES [TLS_PORT CERT KEY]: nginx with round
# robin over keep-alive upstreams and a limit_req zone that never rejects,
# after MAIN_LINES (worker and process settings); with TLS_PORT, the same
# site on a TLS listener too (TLS 1.2 and 1.3, h2 by ALPN, like tollgate).
nginx_conf() {
  local tls_server=""
  if [ -n "${4:-}" ]; then
    tls_server="server {
    listen 127.0.0.1:$4 ssl http2 backlog=4096;
    ssl_certificate $5;
    ssl_certificate_key $6;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      limit_req zone=perip burst=1000000 nodelay;
      proxy_pass http://pool;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
    }
  }"
  fi
  cat > "$1" <<NGINX
$3
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
http {
  access_log off;
  limit_req_zone \$binary_remote_addr zone=perip:10m rate=1000000r/s;
  upstream pool {
    server 127.0.0.1:${B[0]}; server 127.0.0.1:${B[1]}; server 127.0.0.1:${B[2]};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location / {
      limit_req zone=perip burst=1000000 nodelay;
      proxy_pass http://pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
  $tls_server
}
NGINX
}
