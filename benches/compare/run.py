#!/usr/bin/env python3
"""One table of ratios: tollgate against nginx and HAProxy (issue #27 targets).

usage: python3 benches/compare/run.py [--quick] [--only ROWS] [--markdown]

ROWS (comma-separated; default all):
  cpu           CPU us per request and req/s, wrk -t1 keep-alive at 64 and
                1000 connections: tollgate, nginx, HAProxy
  accesslog     tollgate with the JSON access log to a file / tollgate alone
  routes        tollgate with 50 routes + 20 rules / with 1 route
  lease         tollgate with limits shared through Redis (mode: lease) /
                tollgate alone (REDIS_URL, default redis://127.0.0.1:6379)
  tls           h1 over TLS (wrk https -c64) and h2 over TLS (h2load -c64
                -m10), ECDSA P-256: tollgate, nginx, HAProxy
  instructions  instructions per request under callgrind
                (scripts/instructions.sh with ACCESS_LOG=1 ROUTES=50 HAPROXY=1)
  memory        KiB of RSS per idle kept-alive client at 10,000 clients, and
                RSS 60 s after a burst of 10,000 / the idle RSS before it
                (scripts/idle_memory.py's method, for the three proxies)

The rows of cpu, accesslog, routes and lease are measured in one rotation
(REPS reps, each target in turn, the order rotated every rep; a warm-up
before each load, CPU of the proxy's own processes read from /proc around
the load), so every ratio compares figures of the same run. Medians of
the reps are shown.

--quick: 3 s loads, 1 rep, 10 s settle after the burst, 3 s callgrind
loads (200-225 s on the shared 2-core box); default: 10 s loads, 3 reps, 60 s
settle (about 17 minutes, estimated from those settings). --markdown
prints the table for docs/benchmarks.md.
TG_BIN selects the tollgate binary (default target/production/tollgate);
KEEP=1 keeps the rendered configs and the proxies' logs.

The configs are the files beside this script; only the placeholders between @ signs
(ports and paths) are replaced. Needs wrk, ab, nginx, haproxy, valgrind,
h2load (Debian: wrk apache2-utils nginx haproxy valgrind nghttp2-client).
Run from anywhere; all load stays on 127.0.0.1.
"""
import argparse
import functools
import importlib.util
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ALL_ROWS = ["cpu", "accesslog", "routes", "lease", "tls", "instructions", "memory"]
TOOLS = {"cpu": ["wrk", "nginx", "haproxy"], "tls": ["wrk", "h2load", "nginx", "haproxy", "openssl"],
         "instructions": ["valgrind", "callgrind_control", "wrk", "ab", "nginx", "haproxy"],
         "memory": ["nginx", "haproxy"], "accesslog": ["wrk"], "routes": ["wrk"], "lease": ["wrk"]}
IDLE_CLIENTS = 10000


class Settings:
    """Durations of one run: --quick or full."""

    def __init__(self, quick):
        self.quick = quick
        self.duration = 3 if quick else 10
        self.warm = 1 if quick else 2
        self.reps = 1 if quick else 3
        self.settle = 10 if quick else 60
        self.ir_seconds = 3 if quick else 10


# ---------------------------------------------------------------- processes

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, proc, timeout=30):
    load_idle_memory().wait_http(url, timeout, proc)


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def cpu_seconds(pids):
    """User + system CPU of whole processes (all their threads)."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tck


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Proxy:
    """One started proxy: its process tree, port(s) and what idle_memory reads."""

    def __init__(self, name, proc, port, tls_port=None):
        self.name, self.proc, self.port, self.tls_port = name, proc, port, tls_port
        self.pids = [proc.pid]

    def settle_pids(self):
        # nginx's workers are forked after start; they are counted with it.
        self.pids = [self.proc.pid] + children(self.proc.pid)

    def cpu(self):
        return cpu_seconds(self.pids)

    def rss(self):
        return sum(status_kib(p, "VmRSS") for p in self.pids)

    def fds(self):
        return sum(len(os.listdir(f"/proc/{p}/fd")) for p in self.pids)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Lab:
    """The run's scratch folder, certificate, backends and proxies."""

    def __init__(self, tg_bin, redis_url):
        self.tg_bin, self.redis_url = tg_bin, redis_url
        self.work = tempfile.mkdtemp(prefix="tg-compare-")
        self.procs = []
        self.backends = [free_port() for _ in range(3)]
        for i, port in enumerate(self.backends):
            p = self.spawn([tg_bin, "backend", "--listen", f"127.0.0.1:{port}", "--name", f"b{i}"])
            wait_http(f"http://127.0.0.1:{port}/health", p)
        tls = os.path.join(self.work, "tls")
        subprocess.run(["sh", os.path.join(ROOT, "scripts", "dev-cert.sh"), tls],
                       check=True, capture_output=True)
        self.cert, self.key = os.path.join(tls, "site.pem"), os.path.join(tls, "site.key")
        # HAProxy reads certificate and key from one file.
        self.bundle = os.path.join(tls, "bundle.pem")
        with open(self.bundle, "w") as out:
            for part in (self.cert, self.key):
                with open(part) as f:
                    out.write(f.read())

    def spawn(self, argv, stdout=None):
        out = open(stdout, "wb") if stdout else subprocess.DEVNULL
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT if stdout else subprocess.DEVNULL,
                             cwd=self.work)
        self.procs.append(p)
        return p

    def render(self, template, **values):
        """The committed template with its @NAME@ placeholders filled."""
        values.update(WORK=self.work, B0=self.backends[0], B1=self.backends[1], B2=self.backends[2],
                      CERT=self.cert, KEY=self.key, CERT_BUNDLE=self.bundle, REDIS_URL=self.redis_url)
        with open(os.path.join(HERE, template)) as f:
            text = f.read()
        text = re.sub(r"@([A-Z0-9_]+)@", lambda m: str(values[m.group(1)]), text)
        path = os.path.join(self.work, template[:-3])
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self, kind):
        """kind: nginx, haproxy, or a tollgate variant named as its template."""
        port, tls_port = free_port(), free_port()
        if kind == "nginx":
            cfg = self.render("nginx.conf.in", PORT=port, TLS_PORT=tls_port)
            proc = self.spawn(["nginx", "-c", cfg, "-p", self.work, "-e", f"{self.work}/nginx-error.log"])
        elif kind == "haproxy":
            cfg = self.render("haproxy.cfg.in", PORT=port, TLS_PORT=tls_port)
            proc = self.spawn(["haproxy", "-f", cfg, "-db"], stdout=f"{self.work}/haproxy.log")
        else:
            cfg = self.render(f"{kind}.yaml.in", PORT=port, TLS_PORT=tls_port, ADMIN_PORT=free_port())
            proc = self.spawn([self.tg_bin, "serve", "--config", cfg], stdout=f"{self.work}/{kind}.out")
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        proxy = Proxy(kind, proc, port, tls_port if kind in ("nginx", "haproxy", "tollgate") else None)
        proxy.settle_pids()
        return proxy

    def close(self):
        for p in reversed(self.procs):
            Proxy("", p, 0).stop()
        if os.environ.get("KEEP"):
            print(f"configs and logs kept in {self.work}", file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


# ---------------------------------------------------------------- loads

def wrk(url, conns, seconds):
    r = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url], capture_output=True, text=True)
    n = re.search(r"(\d+) requests in", r.stdout)
    errors = re.findall(r"(Non-2xx or 3xx responses: \d+|Socket errors: .*)", r.stdout)
    if not n:
        sys.exit(f"wrk {url}: no result\n{r.stdout}{r.stderr}")
    return int(n.group(1)), errors


def h2load(url, conns, seconds):
    r = subprocess.run(["h2load", "-t1", f"-c{conns}", "-m10", "-D", str(seconds), url],
                       capture_output=True, text=True)
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", r.stdout)
    if not m:
        sys.exit(f"h2load {url}: no result\n{r.stdout}{r.stderr}")
    errors = [f"failed: {m.group(2)}"] if m.group(2) != "0" else []
    alpn = re.search(r"Application protocol: (\S+)", r.stdout)
    if not alpn or alpn.group(1) != "h2":
        errors.append(f"h2load negotiated {alpn.group(1) if alpn else 'nothing'}, not h2")
    return int(m.group(1)), errors


def measure(proxy, load, url, conns, s):
    """(req/s, CPU us per request, errors) of one load after its warm-up."""
    load(url, conns, s.warm)
    c0, t0 = proxy.cpu(), time.monotonic()
    n, errors = load(url, conns, s.duration)
    c1, t1 = proxy.cpu(), time.monotonic()
    return n / (t1 - t0), (c1 - c0) / max(n, 1) * 1e6, errors


def rotation(plan, s):
    """plan: {label: (proxy, load, url, conns)}; medians over s.reps rotated reps."""
    results = {label: {"rps": [], "cpu": [], "errors": []} for label in plan}
    labels = list(plan)
    for rep in range(s.reps):
        k = rep % len(labels)
        for label in labels[k:] + labels[:k]:
            rps, cpu, errors = measure(*plan[label], s)
            results[label]["rps"].append(rps)
            results[label]["cpu"].append(cpu)
            results[label]["errors"] += errors
            print(f"  {label}: {rps:,.0f} req/s, {cpu:.1f} us CPU/req {' '.join(errors)}", file=sys.stderr)
    return {label: {"rps": statistics.median(r["rps"]), "cpu": statistics.median(r["cpu"]),
                    "errors": r["errors"]} for label, r in results.items()}


# ---------------------------------------------------------------- table rows

def ratio_text(value, others):
    """'0.76× nginx, 1.32× HAProxy' for the peers that have a value."""
    return ", ".join(f"{value / v:.2f}× {name}" for name, v in others if v)


def verdict(ok):
    return "met" if ok else "**not met**"


def num(v, digits=1):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def http_rows(lab, rows, s):
    kinds = []
    if "cpu" in rows:
        kinds += ["tollgate", "nginx", "haproxy"]
    if "accesslog" in rows:
        kinds += ["tollgate", "tollgate-accesslog"]
    if "routes" in rows:
        kinds += ["tollgate-1route", "tollgate-50routes"]
    if "lease" in rows and lab.redis_ok:
        kinds += ["tollgate", "tollgate-lease"]
    kinds = list(dict.fromkeys(kinds))
    proxies = {k: lab.start(k) for k in kinds}
    try:
        print(f"keep-alive, wrk -t1 -c64 -d{s.duration}s, {s.reps} rep(s):", file=sys.stderr)
        r64 = rotation({k: (p, wrk, f"http://127.0.0.1:{p.port}/", 64) for k, p in proxies.items()}, s)
        r1000 = {}
        if "cpu" in rows:
            print(f"keep-alive, wrk -t1 -c1000 -d{s.duration}s:", file=sys.stderr)
            r1000 = rotation({k: (proxies[k], wrk, f"http://127.0.0.1:{proxies[k].port}/", 1000)
                              for k in ("tollgate", "nginx", "haproxy")}, s)
    finally:
        for p in proxies.values():
            p.stop()
    out = []
    if "cpu" in rows:
        for conns, r in ((64, r64), (1000, r1000)):
            out += three_way(f"{conns} keep-alive connections (wrk -t1 -c{conns})", r, "haproxy")
    out += variant_rows(rows, r64, lab)
    notes = [(k, e) for r in (r64, r1000) for k, v in r.items() for e in v["errors"]]
    if "accesslog" in rows:
        # Evidence that the log was on: one JSON line per answered request.
        with open(os.path.join(lab.work, "tollgate-accesslog.out"), "rb") as f:
            notes.append(("tollgate-accesslog", f"{sum(1 for _ in f):,} access log lines written to a file"))
    return out, notes


def three_way(what, r, peer):
    """CPU and req/s rows of tollgate, nginx and HAProxy; the CPU target is
    ≤ 1.00× `peer`'s (HAProxy for plain HTTP, nginx for TLS); req/s ≥ 1.00×
    nginx's for TLS."""
    tg, ng, hx = r["tollgate"], r["nginx"], r["haproxy"]
    peers = lambda key: [("nginx", ng[key]), ("HAProxy", hx[key])]
    peer_name = {"haproxy": "HAProxy", "nginx": "nginx"}[peer]
    cpu_ok = tg["cpu"] <= r[peer]["cpu"]
    rows = [[f"CPU µs/request, {what}", num(tg["cpu"]), num(ng["cpu"]), num(hx["cpu"]),
             ratio_text(tg["cpu"], peers("cpu")), f"≤ 1.00× {peer_name}", verdict(cpu_ok)]]
    rps_target, rps_met = "—", "—"
    if peer == "nginx":
        rps_target, rps_met = "≥ 1.00× nginx", verdict(tg["rps"] >= ng["rps"])
    rows.append([f"req/s, {what}", num(tg["rps"], 0), num(ng["rps"], 0), num(hx["rps"], 0),
                 ratio_text(tg["rps"], peers("rps")), rps_target, rps_met])
    return rows


def variant_rows(rows, r, lab):
    out = []
    if "accesslog" in rows:
        a, b = r["tollgate-accesslog"]["cpu"], r["tollgate"]["cpu"]
        out.append(["access log on (JSON to a file): CPU µs/request, -c64", f"{a:.1f} (alone {b:.1f})",
                    "", "", f"{a / b:.2f}× alone", "≤ 1.10×", verdict(a <= 1.10 * b)])
    if "routes" in rows:
        a, b = r["tollgate-50routes"]["cpu"], r["tollgate-1route"]["cpu"]
        out.append(["50 routes + 20 rules: CPU µs/request, -c64", f"{a:.1f} (1 route {b:.1f})",
                    "", "", f"{a / b:.2f}× 1 route", "≤ 1.03×", verdict(a <= 1.03 * b)])
    if "lease" in rows and not lab.redis_ok:
        out.append(["lease-mode shared limits", f"not run: no Redis at {lab.redis_url}",
                    "", "", "", "≥ 0.95×", "—"])
    elif "lease" in rows:
        a, b = r["tollgate-lease"], r["tollgate"]
        out.append(["lease-mode shared limits (Redis): req/s, -c64", f"{a['rps']:,.0f} (alone {b['rps']:,.0f})",
                    "", "", f"{a['rps'] / b['rps']:.2f}× alone", "≥ 0.95×", verdict(a["rps"] >= 0.95 * b["rps"])])
        out.append(["lease-mode shared limits (Redis): CPU µs/request, -c64", f"{a['cpu']:.1f} (alone {b['cpu']:.1f})",
                    "", "", f"{a['cpu'] / b['cpu']:.2f}× alone", "—", "—"])
    return out


def tls_rows(lab, s):
    proxies = {k: lab.start(k) for k in ("tollgate", "nginx", "haproxy")}
    out, errors = [], []
    try:
        for proto, load in (("h1", wrk), ("h2", h2load)):
            tool = "wrk -t1 -c64" if proto == "h1" else "h2load -t1 -c64 -m10"
            print(f"{proto} over TLS, {tool}, {s.duration} s, {s.reps} rep(s):", file=sys.stderr)
            r = rotation({k: (p, load, f"https://127.0.0.1:{p.tls_port}/", 64) for k, p in proxies.items()}, s)
            out += three_way(f"{proto} over TLS, ECDSA P-256 ({tool})", r, "nginx")
            errors += [(f"{k} {proto}", e) for k, v in r.items() for e in v["errors"]]
    finally:
        for p in proxies.values():
            p.stop()
    return out, errors


def instruction_rows(tg_bin, s):
    """Calls scripts/instructions.sh (it starts its own servers under
    callgrind) and reads its table."""
    env = dict(os.environ, BIN=tg_bin, ACCESS_LOG="1", ROUTES="50", RULES="0", NGINX="1",
               HAPROXY="1", IR_SECONDS=str(s.ir_seconds))
    env.pop("REDIS_URL", None)
    print("instructions: scripts/instructions.sh (callgrind) ...", file=sys.stderr)
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "instructions.sh")], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    ir = {(m.group(1), m.group(2)): int(m.group(3))
          for m in re.finditer(r"^\| (\S+) \| (keep-alive|new-connection) \| (\d+) \|$", r.stdout, re.M)}
    if r.returncode != 0 or not ir:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        return [["instructions per request", f"not measured: instructions.sh failed ({tail})",
                 "", "", "", "≤ 30k", "—"]]
    out = []
    for load, label in (("keep-alive", "keep-alive (wrk -c10)"), ("new-connection", "new connection (ab -c50)")):
        tg, ng, hx = ir.get(("tollgate", load)), ir.get(("nginx", load)), ir.get(("haproxy", load))
        hx_text = num(hx, 0) if hx else "callgrind run failed"
        out.append([f"instructions/request, {label}", num(tg, 0), num(ng, 0), hx_text,
                    ratio_text(tg, [("nginx", ng), ("HAProxy", hx)]), "≤ 30,000", verdict(tg <= 30000)])
    for load in ("keep-alive", "new-connection"):
        log, alone = ir.get(("tollgate+accesslog", load)), ir.get(("tollgate", load))
        out.append([f"access log on: instructions/request, {load}", f"{log:,} (alone {alone:,})", "", "",
                    f"{log / alone:.3f}× alone", "≤ 1.10×", verdict(log <= 1.10 * alone)])
    for load in ("keep-alive", "new-connection"):
        many, one = ir.get(("tollgate+50routes+20rules", load)), ir.get(("tollgate+1route", load))
        out.append([f"50 routes + 20 rules: instructions/request, {load}", f"{many:,} (1 route {one:,})", "", "",
                    f"{many / one:.3f}× 1 route", "≤ 1.03×", verdict(many <= 1.03 * one)])
    return out


@functools.cache
def load_idle_memory():
    spec = importlib.util.spec_from_file_location("idle_memory", os.path.join(ROOT, "scripts", "idle_memory.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def memory_rows(lab, s):
    """scripts/idle_memory.py's sequential and at-once runs, on a fresh
    process of each proxy for each."""
    import asyncio
    im = load_idle_memory()
    per, burst = {}, {}

    def run(kind, step):
        # One proxy failing the load (an answer other than 200) leaves its
        # cell saying so, not the whole table unprinted.
        proxy = lab.start(kind)
        try:
            return asyncio.run(step(proxy))
        except (RuntimeError, OSError, asyncio.IncompleteReadError) as e:
            return f"failed: {e}"
        finally:
            proxy.stop()

    for kind in ("tollgate", "nginx", "haproxy"):
        print(f"memory: {kind}", file=sys.stderr)
        per[kind] = run(kind, lambda p: im.sequential(p, IDLE_CLIENTS))
        burst[kind] = run(kind, lambda p: im.at_once(p, IDLE_CLIENTS, s.settle))
    kib = lambda k: per[k] if isinstance(per[k], str) else f"{per[k]:.2f}"
    after = lambda k: (burst[k] if isinstance(burst[k], str) else
                       f"{burst[k][2] / burst[k][1]:.2f}× ({burst[k][2] / 1024:.0f} / {burst[k][1] / 1024:.0f} MB)")
    numbers = lambda d: all(not isinstance(d[k], str) for k in d)
    return [
        [f"KiB of RSS per idle kept-alive client, {IDLE_CLIENTS:,} left idle after one request each",
         kib("tollgate"), kib("nginx"), kib("haproxy"),
         ratio_text(per["tollgate"], [("nginx", per["nginx"]), ("HAProxy", per["haproxy"])]) if numbers(per) else "",
         "≤ 8 KiB (HAProxy's as the aim)",
         "—" if isinstance(per["tollgate"], str) else verdict(per["tollgate"] <= 8.0)],
        [f"RSS {s.settle} s after a burst of {IDLE_CLIENTS:,} / idle RSS before it",
         after("tollgate"), after("nginx"), after("haproxy"), "", "≤ 1.5×",
         "—" if isinstance(burst["tollgate"], str) else verdict(burst["tollgate"][2] <= 1.5 * burst["tollgate"][1])],
    ]


# ---------------------------------------------------------------- output

def first_line(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True)
    except OSError:
        return "not installed"
    return ((r.stdout + r.stderr).strip().splitlines() or ["?"])[0]


def header(tg_bin, s, rows):
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = first_line(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD"]).returncode != 0
    return [
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{'--quick (short loads, 1 rep)' if s.quick else 'full run'}; rows: {','.join(rows)}",
        f"box: {os.cpu_count()} CPUs, {model}, {platform.system()} {platform.release()}, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        f"tollgate: commit {commit}{' (with uncommitted changes)' if dirty else ''}, {tg_bin}",
        f"nginx: {first_line(['nginx', '-v'])}; HAProxy: {first_line(['haproxy', '-v'])}",
        f"load: {first_line(['wrk', '-v'])}; {first_line(['h2load', '--version'])}; "
        f"{first_line(['valgrind', '--version'])}",
    ]


COLUMNS = ["measure", "tollgate", "nginx", "HAProxy", "tollgate ratio", "target", "met"]


def print_table(lines, table, notes, markdown):
    if markdown:
        for line in lines:
            print(f"{line}  ")
        print()
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
        for row in table:
            print("| " + " | ".join(c or "" for c in row) + " |")
    else:
        print("\n".join(lines))
        print()
        widths = [max(len(str(r[i])) for r in [COLUMNS] + table) for i in range(len(COLUMNS))]
        for row in [COLUMNS] + table:
            print("  ".join(str(c).replace("**", "").ljust(w) for c, w in zip(row, widths)).rstrip())
    if notes:
        print()
        for n in notes:
            print(f"- {n}")


# ---------------------------------------------------------------- main

def redis_reachable(url):
    u = urllib.parse.urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), 2) as c:
            c.sendall(b"PING\r\n")
            return c.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short loads, one rep (a few minutes)")
    ap.add_argument("--only", default=",".join(ALL_ROWS), help="comma-separated: " + ",".join(ALL_ROWS))
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args()
    rows = [r for r in args.only.split(",") if r]
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {ALL_ROWS}")
    return args, rows


def main():
    args, rows = parse_args()
    s = Settings(args.quick)
    tg_bin = os.path.abspath(os.environ.get("TG_BIN", os.path.join(ROOT, "target", "production", "tollgate")))
    if not os.access(tg_bin, os.X_OK):
        sys.exit(f"no tollgate binary at {tg_bin}: cargo build --profile production (or set TG_BIN)")
    missing = sorted({t for r in rows for t in TOOLS[r] if not shutil.which(t)})
    if missing:
        sys.exit(f"missing {' '.join(missing)} (apt-get install -y wrk apache2-utils nginx haproxy "
                 "valgrind nghttp2-client)")
    # wrk -c1000, 10,000 idle clients and the proxies (which inherit it)
    # need more descriptors than the default soft limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.monotonic()
    lines = header(tg_bin, s, rows)
    print("\n".join(lines), file=sys.stderr)
    table, errors = run_rows(tg_bin, rows, s)
    notes = [f"{who}: {e}" for who, e in errors]
    if "lease" in rows:
        notes.append("lease: Redis at " + os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    if "instructions" in rows:
        notes.append("instructions: scripts/instructions.sh; its tollgate and nginx configs are "
                     "scripts/common.sh's (nginx: one worker, no master, under callgrind), HAProxy's "
                     "is haproxy.cfg.in; user space only")
    lines.append(f"took {time.monotonic() - started:.0f} s")
    print_table(lines, table, notes, args.markdown)


def run_rows(tg_bin, rows, s):
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    table, errors = [], []
    lab = Lab(tg_bin, redis_url)
    lab.redis_ok = redis_reachable(redis_url)
    try:
        if set(rows) & {"cpu", "accesslog", "routes", "lease"}:
            t, e = http_rows(lab, rows, s)
            table += t
            errors += e
        if "tls" in rows:
            t, e = tls_rows(lab, s)
            table += t
            errors += e
        if "memory" in rows:
            table += memory_rows(lab, s)
    finally:
        lab.close()
    if "instructions" in rows:
        table += instruction_rows(tg_bin, s)
    return table, errors


if __name__ == "__main__":
    main()
