#!/usr/bin/env python3
"""Memory per idle client connection, and RSS after a burst (docs/benchmarks.md).

usage: scripts/idle_memory.py [--bin PATH] [--conns 5000,10000] [--burst 5000]
                              [--settle 60] [--idle-pool N] [--env K=V ...]

Starts three demo backends and tollgate over them (limits that never
refuse, `header_read_timeout: 10m` so that idle connections stay open,
`max_connections: 15000`), then for each N in --conns:

  sequential  N kept-alive HTTP/1.1 connections, one after the other, each
              sends one `GET /` and reads its answer, then stays open and
              idle; tollgate's RSS (VmRSS from /proc) before and after, and
              (after - before) / N = KiB per idle connection;

and with --burst N (0: skip), on a fresh tollgate:

  at-once     N connections opened first, then the N requests sent at once
              and answered; (after - before) / N as above; then every
              connection closed and RSS read again --settle seconds later,
              against the RSS of the idle proxy before the burst (the
              target is within 1.5x).

--env K=V passes variables to tollgate (allocator settings such as
MIMALLOC_PURGE_DELAY=0). --bin defaults to target/production/tollgate.
Raises its own open-file soft limit to the hard one (the children inherit
it). All load stays on 127.0.0.1.
"""
import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REQUEST = b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_http(url, timeout=30, proc=None):
    """Until `url` answers 2xx; exits if `proc` (the server) ends first."""
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"{proc.args[0]} exited ({proc.returncode}) before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 300:
                    return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"no answer from {url}")


class Servers:
    """Three demo backends and one tollgate over them."""

    def __init__(self, binary, env, idle_pool, work):
        self.procs = []
        self.backends = [free_port() for _ in range(3)]
        for i, port in enumerate(self.backends):
            self.procs.append(subprocess.Popen(
                [binary, "backend", "--listen", f"127.0.0.1:{port}", "--name", f"b{i}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.backends:
            wait_http(f"http://127.0.0.1:{port}/health")
        self.port, admin = free_port(), free_port()
        pool = f"\n  backend_idle_connections: {idle_pool}" if idle_pool is not None else ""
        config = f"""server:
  listen: 127.0.0.1:{self.port}
  header_read_timeout: 10m
  max_connections: 15000
admin: {{listen: 127.0.0.1:{admin}}}
backends:
""" + "".join(f"  - url: http://127.0.0.1:{p}\n" for p in self.backends) + f"""rate_limit:
  default: {{capacity: 1000000000, rate_per_sec: 1000000000}}
proxy:
  request_timeout: 60s{pool}
store: {{url: 'sqlite://{work}/tollgate.db'}}
log: {{level: warn}}
"""
        path = os.path.join(work, "tollgate.yaml")
        with open(path, "w") as f:
            f.write(config)
        self.tollgate = subprocess.Popen(
            [binary, "serve", "--config", path],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "tollgate.log"), "w"),
            env={**os.environ, **env})
        self.procs.append(self.tollgate)
        wait_http(f"http://127.0.0.1:{self.port}/health")

    def rss(self):
        return rss_kib(self.tollgate.pid)

    def fds(self):
        return open_fds(self.tollgate.pid)

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
    await reader.readexactly(length)


async def warm_up(port, n=200):
    """A few requests, so that lazily built state (the client's bucket,
    metric handles, a few backend connections) exists before `before`."""
    for _ in range(n // 20):
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for _, w in conns:
            w.write(REQUEST)
        for r, _ in conns:
            await read_response(r)
        for _, w in conns:
            w.close()
    await asyncio.sleep(1)


async def settle(servers, seconds=2.0):
    """Waits until RSS stops moving (at most `seconds`), then reads it."""
    await asyncio.sleep(seconds)
    return servers.rss()


async def sequential(servers, n):
    """`servers` is anything with `port`, `rss()` (KiB) and `fds()`:
    benches/compare/run.py passes nginx and HAProxy too."""
    await warm_up(servers.port)
    before = servers.rss()
    conns = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", servers.port)
        w.write(REQUEST)
        await read_response(r)
        conns.append((r, w))
    after = await settle(servers)
    fds = servers.fds()
    for _, w in conns:
        w.close()
    per = (after - before) / n
    print(f"sequential n={n}: RSS {before} KiB -> {after} KiB "
          f"({fds} fds open), {per:.2f} KiB per idle connection", flush=True)
    await asyncio.sleep(1)
    return per


async def at_once(servers, n, settle_s):
    """Returns (KiB per connection at once, idle RSS before, RSS settle_s
    after the clients closed)."""
    await warm_up(servers.port)
    baseline = servers.rss()
    conns = [await asyncio.open_connection("127.0.0.1", servers.port) for _ in range(n)]
    for _, w in conns:
        w.write(REQUEST)
    await asyncio.gather(*(read_response(r) for r, _ in conns))
    after = await settle(servers)
    fds = servers.fds()
    per = (after - baseline) / n
    print(f"at-once n={n}: RSS {baseline} KiB -> {after} KiB "
          f"({fds} fds open), {per:.2f} KiB per idle connection", flush=True)
    for _, w in conns:
        w.close()
    await asyncio.sleep(1)
    closed = servers.rss()
    await asyncio.sleep(max(settle_s - 1, 0))
    later = servers.rss()
    print(f"after the burst: RSS {closed} KiB 1 s after the clients closed, "
          f"{later} KiB {settle_s} s after ({servers.fds()} fds open); "
          f"{later / baseline:.2f}x the idle baseline ({baseline} KiB)", flush=True)
    return per, baseline, later


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "production", "tollgate"))
    ap.add_argument("--conns", default="5000,10000")
    ap.add_argument("--burst", type=int, default=5000)
    ap.add_argument("--settle", type=int, default=60)
    ap.add_argument("--idle-pool", type=int, default=None,
                    help="proxy.backend_idle_connections (default: tollgate's)")
    ap.add_argument("--env", action="append", default=[])
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    env = dict(kv.split("=", 1) for kv in args.env)
    print(f"{args.bin}; env {env or '-'}; open-file limit {hard}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        if os.environ.get("KEEP"):
            work = tempfile.mkdtemp(prefix="idle-memory-")
            print(f"logs kept in {work}")
        for n in [int(x) for x in args.conns.split(",") if x]:
            servers = Servers(args.bin, env, args.idle_pool, work)
            try:
                asyncio.run(sequential(servers, n))
            finally:
                servers.stop()
        if args.burst:
            servers = Servers(args.bin, env, args.idle_pool, work)
            try:
                asyncio.run(at_once(servers, args.burst, args.settle))
            finally:
                servers.stop()


if __name__ == "__main__":
    main()
