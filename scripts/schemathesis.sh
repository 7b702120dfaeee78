#!/usr/bin/env bash
# Fuzzes the admin API against its own OpenAPI document with schemathesis
# (`--checks all`): every answer must be one the document lists, with the
# documented content type and schema, and data the schema forbids must be
# refused. scripts/schemathesis.toml holds the one exception and why.
#
# Runs twice, against a tollgate without admin.token and one with it (the
# served document differs: bearer security and 401s only with a token).
# Each tollgate listens on ports the kernel picks (127.0.0.1:0, read back
# from its JSON log) over a fresh SQLite file in a temporary folder.
#
#   scripts/schemathesis.sh            # builds tollgate (debug) first
#   BIN=target/release/tollgate scripts/schemathesis.sh
#   MAX_EXAMPLES=200 scripts/schemathesis.sh
#
# schemathesis is installed with pip into a virtualenv under
# ${CARGO_TARGET_DIR:-target}/schemathesis-venv (or $SCHEMATHESIS_VENV),
# once; SCHEMATHESIS_VERSION
# pins it). Not part of CI: a run takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-target}
VENV=${SCHEMATHESIS_VENV:-$TARGET/schemathesis-venv}
VERSION=${SCHEMATHESIS_VERSION:-4.32.5}
MAX_EXAMPLES=${MAX_EXAMPLES:-100}
TOKEN=schemathesis-token-0123456789

if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis==$VERSION"
fi
if [ -z "${BIN:-}" ]; then
  cargo build --quiet
  BIN=$TARGET/debug/tollgate
fi

WORK=$(mktemp -d)
PID=
stop() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  PID=
}
trap 'stop; rm -rf "$WORK"' EXIT

# start NAME [TOKEN]: a tollgate on :0 ports; sets ADMIN to its admin address.
start() {
  local dir=$WORK/$1
  mkdir -p "$dir"
  {
    echo "server: {listen: 127.0.0.1:0, drain_timeout: 1s}"
    echo "admin: {listen: 127.0.0.1:0${2:+, token: $2}}"
    # A backend that is down: the admin API does not need one.
    echo "backends: [{url: http://127.0.0.1:9}]"
    echo "store: {url: sqlite://$dir/tollgate.db}"
    echo "log: {format: json, level: info}"
  } > "$dir/config.yaml"
  "$BIN" serve --config "$dir/config.yaml" 2> "$dir/log" &
  PID=$!
  ADMIN=
  for _ in $(seq 1 200); do
    ADMIN=$(python3 - "$dir/log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if entry.get("message") == "admin API listening":
        print(entry["listen"])
PY
)
    [ -n "$ADMIN" ] && break
    sleep 0.05
  done
  if [ -z "$ADMIN" ]; then
    echo "tollgate did not start:" >&2
    cat "$dir/log" >&2
    exit 1
  fi
}

# fuzz [HEADER...]: schemathesis against http://$ADMIN, run from $WORK so
# its cache (.schemathesis/) does not land in the repository.
fuzz() {
  local config=$PWD/scripts/schemathesis.toml
  (cd "$WORK" && "$VENV/bin/schemathesis" --config-file "$config" \
    run "http://$ADMIN/openapi.json" \
    --checks all \
    --max-examples "$MAX_EXAMPLES" \
    --no-color \
    "$@")
}

status=0
echo "== without admin.token"
start open
fuzz || status=1
stop

echo "== with admin.token"
start token "$TOKEN"
fuzz -H "Authorization: Bearer $TOKEN" || status=1
stop

exit $status
