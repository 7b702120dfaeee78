#!/bin/bash
# RSS of tollgate with its stdout blocked (piped into a process that never
# reads) and 20,000 requests carrying a 30 KB header, log.access on: the
# access log queue must drop and count, not grow (issue 23, item 16).
#   scripts/access_log_rss.sh [path/to/tollgate]
set -u
BIN=${1:-target/debug/tollgate}
DIR=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
BPORT=$(port); PPORT=$(port); APORT=$(port)
cat > "$DIR/c.yaml" <<YAML
server: {listen: "127.0.0.1:$PPORT"}
admin: {listen: "127.0.0.1:$APORT"}
backends: [{url: "http://127.0.0.1:$BPORT"}]
store: {url: "sqlite://$DIR/t.db"}
rate_limit: {enabled: false}
log: {level: error, access: true}
YAML
"$BIN" backend --listen "127.0.0.1:$BPORT" >/dev/null 2>&1 &
BP=$!
"$BIN" serve --config "$DIR/c.yaml" 2>/dev/null | sleep 100000 &
SP=$!
sleep 2
TP=$(pgrep -f -- "serve --config $DIR/c.yaml" | head -1)
echo "start: $(grep VmRSS "/proc/$TP/status")"
python3 - "$PPORT" <<'PY'
import http.client, sys
c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]))
big = 'x' * 30 * 1024
for _ in range(20000):
    c.request('GET', '/', headers={'X-Big': big})
    c.getresponse().read()
PY
echo "after 20000 requests with 30 KB headers: $(grep VmRSS "/proc/$TP/status")"
curl -s "127.0.0.1:$APORT/metrics" | grep '^tollgate_access_log_dropped_total'
kill "$TP" "$BP" "$SP" 2>/dev/null
rm -rf "$DIR"
