#!/usr/bin/env python3
"""Every claim of the README before the docs split is still somewhere.

The README was split into a short README and docs/ (issue 24). This
script takes the README as it was before the split (from git: the parent
of the commit that added docs/configuration.md, or --ref REV) and checks
that each of its paragraphs, list items, table rows and code lines still
appears, word for word, in README.md or a docs/*.md file of the working
tree. Words are compared, not formatting: link targets, punctuation,
emphasis and line breaks are ignored, so a reference such as
`see "Reload"` may become `see [Reload](operations.md#reload)`.

Headings are not checked (their levels and a few titles changed). A unit
that was reworded on purpose is listed in REWORDED with where it went;
anything else missing is printed and the exit status is 1.

    python3 scripts/docs_moved.py            # against the pre-split README
    python3 scripts/docs_moved.py --ref 3bbd5a2
"""

import argparse
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Units of the old README reworded on purpose: (start of the unit, why).
REWORDED = [
    ("| `src/proxy/` | request path",
     "the row gained the HTTP/2 backend pool (`upstream/multiplexed.rs`, issue 28) "
     "(docs/architecture.md, Module map)"),
    ("| `src/admin/` | admin API",
     "the row gained `guard.rs` and `backends.rs` and the pools/routes commands "
     "(issues 23 and 25; docs/architecture.md, Module map)"),
    ("Helpers live in `tests/support/`",
     "the list gained grpc.rs, redis_cluster.rs, webdriver.rs, and the lone test "
     "binaries are gone (issue 24 item 4; docs/architecture.md, Development)"),
    ("| `server.tls.certificates[].cert` / `.key` |",
     "split into one row per key so the docs test can find each key "
     "(docs/configuration.md, server section)"),
    ("For production, `cargo build --profile production`",
     "'(below)' became a link to benchmarks.md (docs/architecture.md, Build and test)"),
    ("| `tollgate clients list",
     "'(below)' became a link to admin-api.md (docs/operations.md, Command line)"),
    ("0. **Check.**",
     "'*Strict HTTP* below' became a link to security.md (docs/architecture.md)"),
    ("| 400 | malformed API key header",
     "'the strict HTTP rules above' became a link to security.md (docs/architecture.md)"),
    ("The 400, 414 and 431 above",
     "'above' became a link to the errors table (docs/security.md)"),
    ("| atomic check / take / refill |",
     "'(see below)' became a link (docs/architecture.md, The brief in Rust terms)"),
    ("| `ops` | `admin`, `openapi`,",
     "the test table gained the `docs` module (docs/architecture.md, Development)"),
    ("| `cli` | the commands |",
     "the module map row gained `probe` (docs/architecture.md, Module map)"),
    ("| `Dockerfile`, `docker-compose.yml`, `deploy/` |",
     "the layout row gained `.dockerignore` and what the files hold (docs/architecture.md, Layout)"),
    ("| `src/config.rs` |",
     "config.rs became src/config/ (issue 24 item 1; docs/architecture.md, Layout)"),
    ("2. `proxy::strict::check` refuses",
     "admission moved from proxy/mod.rs to proxy/admission.rs (issue 24 item 3): "
     "`proxy::Proxy::admit` is now `proxy::admission::Admission::admit`"),
    ("The image is multi-stage (built in `rust:1-bookworm`",
     "rewritten for issue 24 item 8: the certificate is made by the certs service, "
     "no longer by running scripts/dev-cert.sh first; every other claim is in "
     "docs/operations.md, Docker"),
    # The demo became two pools and three routes (issue 25): backends are
    # named web-1.. and api-1.., and the README says so.
    ("cargo run --release -- demo          # three demo backends",
     "the demo became four backends in two pools behind three routes (issue 25; README.md, Run the demo)"),
    ("`demo` starts a demo backend for every loopback URL under `backends`",
     "now 'every loopback URL of every pool' with pools web and api and the three routes "
     "(issue 25; README.md, Run the demo)"),
    ("x-backend: 127.0.0.1:9001",
     "demo backends are named by the config now: `x-backend: web-1` (README.md, Run the demo)"),
    ('{"backend":"127.0.0.1:9001","method":"GET","path":"/"}',
     'the body names the backend `web-1` (README.md, Run the demo)'),
    ("The demo backend answers `GET /` (JSON naming the backend",
     "gained 'any path it does not know' (the routes' rewritten paths) and `GET /trailers` "
     "(issues 25 and 28; docs/operations.md, Command line)"),
    ("| `tollgate backends list \\| drain NAME \\| enable NAME [--admin URL] [--json]` |",
     "gained `--pool POOL` for a name several pools have (issue 25; docs/operations.md, Command line)"),
    # Config rows that later issues made more precise.
    ("| `admin.token` | `null` | bearer token for the admin API; required (≥ 16 characters)",
     "now 'at least 16 printable characters (`check` refuses a shorter one)' (issue 23 item 5; "
     "docs/configuration.md, admin)"),
    ("| `rate_limit.rules[].match.path_prefix` | `/` |",
     "the path is the normalized one and must be written in normal form (issue 23 item 1; "
     "docs/configuration.md, rate_limit)"),
    ("| `rate_limit.rules[].match.methods` | `[]` |",
     "methods in any case, and `GET` matches `HEAD` (issue 23 item 2; docs/configuration.md, rate_limit)"),
    ("| `rate_limit.shared.redis_url` | `null` |",
     "gained `redis+cluster://` and `redis+sentinel://` (issue 29; docs/configuration.md, "
     "rate_limit; docs/operations.md, Redis topologies)"),
    ("| `rate_limit.shared.on_failure` | `local` |",
     "issue 23 item 8: `local` admits this replica's share (capacity and rate divided by the live "
     "replicas), no longer its own whole bucket (docs/configuration.md; docs/operations.md, "
     "Several replicas, Redis away)"),
    ("| `rate_limit.shared.timeout` | `50ms` |",
     "issue 23 item 8: a broken connection is retried once within it, and the pause is 'up to 1 s, "
     "until a probe answers' (docs/configuration.md)"),
    ("| `store.reload_interval` | `5s` |",
     "issue 23 item 4: the whole table is re-read and applied, the safety net of `store.notify` "
     "(docs/configuration.md, store)"),
    # Admin API examples and rows after paging (issue 23 item 9) and pools (issue 25).
    ("curl -s $A/clients                       # all clients",
     "GET /clients is paged now: 'the first 100 clients by id' (docs/admin-api.md, Routes and examples)"),
    ("curl -s $A/backends                      # [{",
     "backend items gained `pool` (issue 25; docs/admin-api.md, Routes and examples)"),
    ("curl -s -X POST $A/backends/127.0.0.1:9001/drain",
     "demo backends are named `web-1`..; 409 when two pools have the name (docs/admin-api.md)"),
    ("curl -s -X POST $A/backends/127.0.0.1:9001/enable",
     "the same example with `web-1` (docs/admin-api.md, Routes and examples)"),
    ("| `GET /clients` | 200 | |",
     "now `GET /clients?limit=&after=&search=` with its `Link` header and 400s (issue 23 "
     "item 9; docs/admin-api.md, Routes and examples)"),
    ("| `DELETE /clients/{id}` | 204 | 400, 404 |",
     "the 400 now says which ids (not UTF-8 or over 4096 bytes): DELETE removes any row "
     "(docs/admin-api.md, Routes and examples)"),
    ("| `GET /backends`, `GET /healthz`, `GET /openapi.json` | 200 | |",
     "gained `GET /pools` and `GET /routes` (issue 25; docs/admin-api.md)"),
    # Issue 23 item 4 (h-store): a reload compares with what runs, and store.notify.
    ("**Several replicas on PostgreSQL.** Point every replica's `store.url`",
     "issue 23 item 4: reads are compared with what the registry runs, not with the previous read, "
     "and `store.notify` applies writes at once; the POST/PUT/DELETE test sentence is kept "
     "(docs/operations.md, Several replicas on PostgreSQL)"),
    # Issue 23 items 7-8 (h-shared) and issue 29: leases bounded by time, the fallback share, topologies.
    ("- **One limit per client.** Each client's shared bucket is one Redis key",
     "gained the Redis Cluster key form `<key_prefix>{ip:<address>}` (issue 29; "
     "docs/operations.md, Several replicas)"),
    ("- the batch follows the client's demand on that replica",
     "issue 23 item 7: `L` is also bounded by 1 % of the capacity or 5 s of refill "
     "(docs/operations.md, Several replicas)"),
    ("- a lease unused for 1 s is given back to Redis",
     "issue 23 item 7: 'a replica that dies loses at most what it held' became its own item with "
     "the bound and the kill -9 test (docs/operations.md, Several replicas)"),
    ("- **Redis away.** A check waits at most",
     "issue 23 item 8: retry on a fresh connection, the pause ended by a probe, each replica's "
     "share instead of its own bucket, heartbeats (docs/operations.md, Several replicas)"),
    ("- a key's TTL is the time to refill",
     "issue 23 item 8: the new Redis gets the checks as soon as the probe answers, no longer "
     "'about 1 s later (the pause)' (docs/operations.md, Several replicas, Tested)"),
    # The status page pages the client table (issue 23 item 9).
    ("- the client table, with a search box and a form",
     "the table shows a page of 100 with Previous / Next, the search covers the whole "
     "table (issue 23 item 9; docs/admin-api.md, Status page)"),
    ("`tests/ops/status.rs` checks the document after known traffic",
     "the browser test also pages through 124 clients (issue 23 item 9; docs/admin-api.md, Status page)"),
    # Metrics: pool labels (issue 25), h2_send (issue 23 item 13), the pause (item 8).
    ("| `tollgate_backend_healthy` | gauge | `backend` (its name) |",
     "gained the `pool` label with pools or routes (issue 25; docs/operations.md, Metrics)"),
    ("| `tollgate_backend_ejections_total` | counter | `backend` |",
     "gained the `pool` label (issue 25; docs/operations.md, Metrics)"),
    ("| `tollgate_backend_in_flight` | gauge | `backend` |",
     "gained the `pool` label (issue 25; docs/operations.md, Metrics)"),
    ("| `tollgate_backend_connections_opened_total` | counter | `backend` |",
     "gained the `pool` label (issue 25; docs/operations.md, Metrics)"),
    ("| `tollgate_shared_limiter_failures_total` | counter | |",
     "issue 23 item 8: the pause is no longer a fixed 1 s (docs/operations.md, Metrics)"),
    ("| `tollgate_idle_timeouts_total` | counter | `direction`",
     "gained `h2_send`, HTTP/2 streams reset after `server.send_timeout` (issue 23 "
     "item 13; docs/operations.md, Metrics)"),
    ("With `log.access: true`, one line per answered request goes to **stdout**",
     "gained the lines of requests hyper's parser refuses (issue 23 item 13; docs/operations.md, Access log)"),
    ("docker compose up --build      # tollgate + three demo backends",
     "the compose demo is four backends in two pools (issue 25; docs/operations.md, Docker)"),
    # Module map rows: the may-use lists follow the code (redact: issue 23
    # item 6; routing: issue 25; grpc: issue 28); what each owns grew.
    ("| `limiter` | limits, buckets, the registry",
     "gained the fallback share; may use `redact`, `routing`, `sync` (docs/architecture.md, Module map)"),
    ("| `health` | active checks;",
     "may use `error` and `grpc` (gRPC health checks, issue 28; docs/architecture.md, Module map)"),
    ("| `error` | errors a client sees",
     "may use `grpc` (gRPC refusals, issue 28; docs/architecture.md, Module map)"),
    ("| `store` | the client table (SQLite, PostgreSQL), snapshots, reload |",
     "issue 23 items 4 and 6: gained `store::notify` and `store::writes`, may use `escape`, `redact`, "
     "`telemetry` (docs/architecture.md, Module map)"),
    ("| `proxy` | the request path, strict HTTP, identity",
     "gained HTTP/2 streams and parser refusals' log lines; may use `grpc`, `routing` "
     "(docs/architecture.md, Module map)"),
    ("| `reload` | re-reading the config file",
     "may use `routing`; pools are reloaded through it, not `balancer`/`health` directly "
     "(docs/architecture.md, Module map)"),
    ("| `status` | the status page's numbers",
     "gained per-route rates and `routing` (issue 25; docs/architecture.md, Module map)"),
    ("| `admin` | the admin API, its server",
     "gained `admin::backends` (pools, routes) and what it uses (docs/architecture.md, Module map)"),
    ("| `config` | reading, validating and converting",
     "may use `admin` (allowed hosts), `redact`, `routing`, `telemetry` (docs/architecture.md, Module map)"),
    # Layout and tests after issues 23, 29 and the test layout change (issue 24).
    ("| `src/limiter/shared/` | limits shared by replicas",
     "gained `connection.rs` (issue 29) and `fallback.rs` (issue 23 item 8) (docs/architecture.md, Layout)"),
    ("| `src/store/` | `ClientStore` trait",
     "issue 23 items 4 and 12: gained `reload.rs`, `notify.rs`, `writes.rs` and the reasons of `postgres.rs` "
     "(docs/architecture.md, Layout)"),
    ("| `tests/` | integration, property and stress tests",
     "the three lone binaries are gone (issue 24 item 4; docs/architecture.md, Layout)"),
    ("| `proxy` | `end_to_end`, `strict`,",
     "the proxy binary gained path, topologies, routing, streaming, grpc (docs/architecture.md, Development)"),
    ("| `metrics`, `shared_metrics` | alone:",
     "gone: each tollgate has its own metrics, `metrics` is a module of `ops` (issue 24 item 4; "
     "docs/architecture.md, Development)"),
    ("| `streaming` | alone:",
     "gone: a module of `proxy`, the RSS figure is `benches/streaming_memory.rs` (issue 24 "
     "item 4; docs/architecture.md, Development)"),
    # Units later issues changed on purpose after the list above was made.
    ("- `add` and `set` take `--capacity`",
     "the CLI judges rates with the server's parser (issue 23 item 12b; docs/admin-api.md, CLI)"),
    ("`config.yaml` in the repository lists every key",
     "a file must set server, backends, pools or routes (issue 23 item 15; docs/configuration.md)"),
    ("| `balancing.strategy` |",
     "gained `hash` and `least_time` (issue 26; docs/configuration.md, keys)"),
    ("| `rate_limit.default.rate_per_sec` |",
     "negative numbers and -0.0 refused (issue 23 item 12b; docs/configuration.md, keys)"),
    ("| `rate_limit.default.rate` |",
     "no spaces in a rate (issue 23 item 12b; docs/configuration.md, keys)"),
    ("3. **Balance.**",
     "gained hash, least_time, sticky cookies and slow start (issue 26; docs/architecture.md, request path)"),
    ("| `POST /reload` |",
     "400 for an unusable certificate, 503 for a read that blocks (issue 23 item 17; docs/admin-api.md)"),
    ("Any other path is 404 and any other method 405",
     "rate_per_sec without a minus sign, -0.0 refused (issue 23 item 12b; docs/admin-api.md)"),
    ("- The certificate files are read again on every reload",
     "changed files listed in applied; an unusable one is a 400 like an invalid file (issue 23; docs/operations.md, Reload)"),
    ("Everything else is listed in `restart_required`",
     "gained telemetry.otlp (issue 28; docs/operations.md, Reload)"),
    ("Tested in process (`tests/proxy/reload.rs`)",
     "gained the empty-file and blocked-read cases (issue 23 items 15, 17; docs/operations.md, Reload)"),
    ("The request path does not format or write anything",
     "records copy their path and id; the queue is bounded in bytes too (issue 23 item 16; docs/operations.md, Access log)"),
    ("| `src/balancer/` |",
     "the row gained slow start and the new strategies (issue 26; docs/architecture.md, Module map)"),
]


def normalise(text):
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"[^0-9A-Za-z\u00c0-\uffff]+", " ", text)
    return " ".join(text.lower().split())


def units(markdown):
    """Paragraphs, list items, table rows and code lines, headings left out."""
    out, para, fenced = [], [], False

    def flush():
        if para:
            out.append("\n".join(para))
            para.clear()

    for line in markdown.splitlines():
        if line.startswith("```"):
            flush()
            fenced = not fenced
            continue
        if fenced:
            if line.strip():
                out.append(line)
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            flush()
            continue
        if stripped.startswith("|") or re.match(r"^(- |\d+\. )", stripped):
            flush()
        para.append(line)
        if stripped.startswith("|"):
            flush()
    flush()
    return out


def old_readme(ref):
    if ref is None:
        added = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%H", "--", "docs/configuration.md"],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        ref = f"{added[-1]}^" if added else "HEAD"
    return ref, subprocess.run(["git", "show", f"{ref}:README.md"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", help="revision whose README.md is the old one")
    args = parser.parse_args()
    ref, old = old_readme(args.ref)
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    new = " | ".join(normalise(f.read_text()) for f in files)
    missing, reworded = [], 0
    all_units = units(old)
    for unit in all_units:
        if normalise(unit) in new:
            continue
        if any(unit.strip().startswith(start) for start, _ in REWORDED):
            reworded += 1
            continue
        missing.append(unit)
    print(f"README.md at {ref}: {len(all_units)} units, "
          f"{len(all_units) - len(missing) - reworded} found as they were, "
          f"{reworded} reworded on purpose, {len(missing)} missing")
    for unit in missing:
        print("--- missing:\n" + unit)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
