#!/usr/bin/env python3
"""Fold a callgrind profile of tollgate into layers (docs/benchmarks.md,
"Where the instructions go").

usage: scripts/instructions_layers.py CALLGRIND_FILE [--requests N | --per-request IR]
                                     [--unmatched K]
       scripts/instructions_layers.py --annotated ANNOTATE_OUTPUT [--requests N]

Runs `callgrind_annotate --inclusive=no --threshold=100` on the file (or
reads that command's saved output) and sums each line's exclusive
instruction count into the first layer whose pattern matches its
"source-file:function" text. Exclusive counts add up to the whole, so
each instruction lands in exactly one layer. With line tables
(CARGO_PROFILE_PRODUCTION_DEBUG=line-tables-only), code that LTO inlined
is reported under the source file it came from, so hyper's header parser
inlined into tollgate's connection task still counts as parsing.

--requests N divides by N (the loads of scripts/instructions.sh: 3000
for ab; wrk's count is not kept, but --per-request IR, the keep-alive
figure instructions.sh printed, gives it back as total / IR). --unmatched K lists the K
biggest lines no pattern took (the helpers' row), to refine the patterns.

The files come from `KEEP=1 scripts/instructions.sh` (callgrind.PID.N,
one per dump: the keep-alive load is the first dump of a server, the
new-connection load the second).
"""
import argparse
import re
import subprocess
import sys

# (layer, owner, pattern). A line is "source-file:function". Its file
# decides when it is a crate's or tollgate's source (code inlined from
# there counts where it came from); when the file is the standard
# library's (/rustc/...) or unknown, the function's name decides instead
# (`drop_in_place<tollgate::...>` is ours). First match wins.
LAYERS = [
    ("allocator", "allocator",
     r"mimalloc|:_?mi_|^[^:]*:(__libc_)?(malloc|free|realloc|calloc|cfree|_int_malloc|_int_free"
     r"|malloc_consolidate|tcache_\w+|unlink_chunk|sysmalloc)$|__rust_(alloc|dealloc|realloc)|__rdl_"
     r"|alloc/src/alloc\.rs|raw_vec|finish_grow|:jemalloc|je_|/jemalloc"),
    ("memcpy/memset (libc)", "libc",
     r"^[^:]*:__?mem(cpy|move|set|cmp)|^[^:]*:(__)?(memcpy|memmove|memset|memcmp|bcmp)"),
    ("syscall wrappers (libc, vdso)", "kernel-crossing",
     r"libc\.so|/sysdeps/|/nptl/|vdso|^[^:]*:(__)?(read|write|writev|readv|recv|recvfrom|send|sendto"
     r"|epoll_wait|epoll_ctl|accept4?|close|connect|socket|setsockopt|getsockopt|getsockname"
     r"|getpeername|shutdown|clock_gettime|syscall|ioctl|eventfd)$"),
    ("header map (http crate: hash, insert, look up, drop)", "http crate, for hyper and us",
     r"http-[0-9.]+/src/header/|http::header::map|HeaderMap|http::header::name"),
    ("parse (request and response heads)", "hyper",
     r"httparse|hyper-[0-9.]+/src/proto/h1/(role|decode)\.rs:.*(parse|decode)|hyper-[0-9.]+/src/headers\.rs"
     r"|Http1Transaction>::parse|role::.*parse|poll_read_head"),
    ("write (heads encoded, buffers flushed)", "hyper",
     r"hyper-[0-9.]+/src/proto/h1/(encode|io|role)\.rs|hyper-[0-9.]+/src/common/(buf|date)\.rs"
     r"|Http1Transaction>::encode|role::.*encode|write_head|date::|httpdate"),
    ("hyper connection state (server and client)", "hyper",
     r"hyper-[0-9.]+/src/|hyper_util|hyper-util|want-|^[^:]*:(<)?hyper::"),
    ("tokio (tasks, IO readiness, timers)", "tokio",
     r"tokio-[0-9.]+/src/|mio-[0-9.]+/src/|^[^:]*:(<)?(tokio|mio)::"),
    ("client pool (backend connections)", "ours",
     r"src/proxy/(upstream|transport|timeout)|src/body\.rs|proxy::upstream|proxy::transport"
     r"|body::Watched|proxy::timeout"),
    ("admission (identify, limit)", "ours",
     r"src/proxy/(admission|identity)\.rs|src/limiter/|proxy::admission|proxy::identity|limiter::"),
    ("routing and balancing", "ours",
     r"src/routing/|src/balancer/|src/proxy/affinity\.rs|routing::|balancer::|affinity::"),
    ("metrics", "ours and metrics crates",
     r"src/telemetry\.rs|src/proxy/labels\.rs|telemetry::|labels::|metrics[^/]*/src/|metrics::"
     r"|metrics_exporter|quanta|sketches"),
    ("logging and tracing", "ours and tracing crates",
     r"src/(trace|access_log|logging)|trace::|access_log::|tracing[^/]*/src/|tracing::"
     r"|tracing_core|tracing_subscriber"),
    ("header edits (hop-by-hop, X-Forwarded-*, request id, rate-limit headers, strict checks)", "ours",
     r"src/proxy/(headers|request_id|strict|path|forward)\.rs|proxy::(headers|request_id|strict|path)"
     r"|src/grpc\.rs|http-[0-9.]+/src/(uri|method)|http::uri"),
    ("request path glue (ours: handle, answer, connection service)", "ours",
     r"tollgate/src/|/src/proxy/|/src/app\.rs|tollgate::"),
]

# What no pattern takes: the standard library's and small crates' code
# not inlined into a caller above (bytes, arc-swap, hashbrown, Vec).
OTHER = "std, bytes, arc-swap and other helpers"

LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(\S.*?)\s*(?:\[([^\]]*)\])?\s*$")


def annotate(path):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", path],
        check=True, capture_output=True, text=True,
    )
    return out.stdout


def fold(text):
    compiled = [(name, owner, re.compile(p)) for name, owner, p in LAYERS]
    totals = {name: 0 for name, _, _ in LAYERS}
    totals[OTHER] = 0
    owners = {name: owner for name, owner, _ in LAYERS}
    owners[OTHER] = "std and crates"
    unmatched = []
    total = None
    body = False
    for line in text.splitlines():
        if "file:function" in line:
            body = True
            continue
        m = LINE.match(line)
        if not m:
            continue
        count = int(m.group(1).replace(",", ""))
        where = m.group(2)
        # Without debug info the file is "???": the object names the
        # library instead (libc.so.6, the tollgate binary for mimalloc).
        if where.startswith("???:") and m.group(3):
            where = m.group(3).rsplit("/", 1)[-1] + where[3:]
        if where.startswith("PROGRAM TOTALS") or "PROGRAM TOTALS" in line:
            total = count
            continue
        if not body:
            continue
        # callgrind_annotate 3.19 lists the thread entry points (clone,
        # start_thread, ...) with the whole program as their own cost;
        # nothing is really spent there.
        if total is not None and count >= total:
            continue
        file, _, function = where.partition(":")
        if file.startswith("/rustc/") or file.startswith("???") or not function:
            key = "???:" + function
        elif file.endswith(".rs"):
            key = file + ":"
        else:  # C and assembly (libc, mimalloc): the function says more
            key = where
        for name, _, pattern in compiled:
            if pattern.search(key):
                totals[name] += count
                break
        else:
            totals[OTHER] += count
            unmatched.append((count, where))
    return total, totals, owners, sorted(unmatched, reverse=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", help="callgrind.out file (or annotate output with --annotated)")
    ap.add_argument("--annotated", action="store_true",
                    help="FILE is callgrind_annotate output, not a callgrind file")
    ap.add_argument("--requests", type=int, default=1)
    ap.add_argument("--per-request", type=int, default=0,
                    help="the per-request figure of the run: requests = total / it")
    ap.add_argument("--unmatched", type=int, default=0)
    args = ap.parse_args()
    text = open(args.file).read() if args.annotated else annotate(args.file)
    total, totals, owners, unmatched = fold(text)
    summed = sum(totals.values())
    total = total or summed
    n = round(total / args.per_request) if args.per_request else args.requests
    print(f"| layer | owner | instructions per request | % |")
    print("|---|---|---|---|")
    for name, count in sorted(totals.items(), key=lambda kv: -kv[1]):
        if count == 0:
            continue
        print(f"| {name} | {owners[name]} | {count // n:,} | {100 * count / total:.1f} |")
    print(f"| total | | {total // n:,} | 100 |")
    if summed != total:
        print(f"(lines summed to {summed:,} of {total:,})", file=sys.stderr)
    for count, where in unmatched[: args.unmatched]:
        print(f"{count // n:>8,}  {where}", file=sys.stderr)


if __name__ == "__main__":
    main()
