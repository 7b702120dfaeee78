#!/usr/bin/env python3
"""Front-door measurements (docs/security.md, "Limits on hostile clients").

usage: scripts/front_door.py BINARY LABEL item1|item4|item5
  item1  2000 h2c connections that never finish a HEADERS block,
         header_read_timeout 2s: how many are still open at 1/3/10/30 s
  item4  tollgate's RSS with 1000 connections each holding an unfinished
         request head (HEADER_KIB, default 400)
  item5  50 each of: backend stalling its body, 1-byte-every-2-s upload,
         client not reading; with LABEL "new" the three idle timeouts are
         set to 1 s (older builds do not know the keys)
Run with `ulimit -n 20000`. Load stays on 127.0.0.1, bounded, and stops
by itself.
"""
import asyncio, os, socket, subprocess, sys, tempfile, time

BIN, FLAVOUR, ITEM = sys.argv[1], sys.argv[2], sys.argv[3]

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

stats = {"stall": 0, "upload": 0, "forever": 0}

async def backend(reader, writer):
    route = None
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n")[0].decode()
        path = line.split(" ")[1]
        if path == "/health":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await writer.drain(); writer.close(); return
        route = path.strip("/")
        if route in stats:
            stats[route] += 1
        if route == "stall":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n0123456789")
            await writer.drain()
            await reader.read()  # until the proxy closes
        elif route == "upload":
            n = int([l for l in head.decode().split("\r\n") if l.lower().startswith("content-length:")][0].split(":")[1])
            await reader.readexactly(n)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await reader.read()
        elif route == "forever":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
            while True:
                writer.write(chunk)
                await writer.drain()
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await reader.read()
    except Exception:
        pass
    finally:
        if route in stats:
            stats[route] -= 1
        try:
            writer.close()
        except Exception:
            pass

def start_tollgate(backend_port, extra_server="", extra_proxy=""):
    port = free_port()
    d = tempfile.mkdtemp()
    cfg = f"""server:
  listen: 127.0.0.1:{port}
  header_read_timeout: {HRT}
{extra_server}admin:
  listen: 127.0.0.1:{free_port()}
backends:
  - url: http://127.0.0.1:{backend_port}
proxy:
  request_timeout: 60s
{extra_proxy}rate_limit:
  enabled: false
store:
  url: sqlite://{d}/t.db
log:
  level: error
"""
    open(f"{d}/c.yaml", "w").write(cfg)
    p = subprocess.Popen([BIN, "serve", "--config", f"{d}/c.yaml"], stderr=open(f"{d}/log", "w"))
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close(); break
        except OSError:
            time.sleep(0.05)
    return p, port

def rss_kib(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])

def frame(kind, flags, stream, payload):
    n = len(payload)
    return bytes([n >> 16 & 255, n >> 8 & 255, n & 255, kind, flags]) + stream.to_bytes(4, "big") + payload

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

async def hold_open(reader, closed, i):
    try:
        while await reader.read(65536):
            pass
    except Exception:
        pass
    closed[i] = time.monotonic()

async def item1(port, n=2000):
    block = bytes([0x82, 0x86, 0x04, 1]) + b"/" + bytes([0x01, 9]) + b"localhost"
    hello = PREFACE + frame(4, 0, 0, b"") + frame(1, 1, 1, block)  # HEADERS, END_STREAM, no END_HEADERS
    closed = [None] * n
    opened = [None] * n
    tasks, writers = [], []
    t0 = time.monotonic()
    for i in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        opened[i] = time.monotonic()
        w.write(hello)
        writers.append(w)
        tasks.append(asyncio.create_task(hold_open(r, closed, i)))
    print(f"item1 {FLAVOUR}: {n} connections opened in {time.monotonic()-t0:.2f}s (preface + SETTINGS + HEADERS without END_HEADERS)")
    for at in (1, 3, 10, 30):
        await asyncio.sleep(max(0, t0 + at - time.monotonic()))
        print(f"  t={at:>2}s: {sum(1 for c in closed if c is None)} still open")
    life = sorted(c - o for c, o in zip(closed, opened) if c is not None)
    if life:
        print(f"  lifetime of closed connections: min {life[0]:.2f}s, median {life[len(life)//2]:.2f}s, max {life[-1]:.2f}s ({len(life)} closed)")
    for w in writers:
        w.close()

async def item4(pid, port, n=1000, size=int(os.environ.get('HEADER_KIB', '400')) * 1024):
    base = rss_kib(pid)
    head = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * size  # never ends
    ws = []
    async def one():
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            ws.append(w)
            w.write(head)
            await w.drain()
        except Exception:
            pass
    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(3)
    now = rss_kib(pid)
    print(f"item4 {FLAVOUR}: RSS {base/1024:.1f} MiB idle -> {now/1024:.1f} MiB with {n} connections each holding an unfinished {size//1024} KiB header (+{(now-base)/1024:.1f} MiB)")
    for w in ws:
        w.close()

async def item5(port, n=50):
    async def stalled():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /stall HTTP/1.1\r\nhost: x\r\n\r\n")
        closed = [None]
        await hold_open(r, closed, 0)
    async def slow_upload():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
        t = asyncio.create_task(hold_open(r, [None], 0))
        try:
            for _ in range(100):
                if t.done():
                    return
                w.write(b"u")
                await w.drain()
                await asyncio.sleep(2)
        except Exception:
            pass
    async def not_reading():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        w.write(b"GET /forever HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.sleep(3600)
    cases = {"stall": stalled, "upload": slow_upload, "forever": not_reading}
    tasks = {k: [asyncio.create_task(f()) for _ in range(n)] for k, f in cases.items()}
    t0 = time.monotonic()
    for at in (3, 10, 30):
        await asyncio.sleep(max(0, t0 + at - time.monotonic()))
        open_clients = {k: sum(1 for t in v if not t.done()) for k, v in tasks.items()}
        print(f"item5 {FLAVOUR} t={at:>2}s: backend connections still open: stalled body {stats['stall']}, slow upload {stats['upload']}, non-reading client {stats['forever']}; "
              f"client connections still open: stalled body {open_clients['stall']}, slow upload {open_clients['upload']}")
    for v in tasks.values():
        for t in v:
            t.cancel()

async def main():
    global HRT
    HRT = "2s" if ITEM == "item1" else "30s"
    server = await asyncio.start_server(backend, "127.0.0.1", 0, backlog=4096)
    bport = server.sockets[0].getsockname()[1]
    extra_server = extra_proxy = ""
    if ITEM == "item5" and FLAVOUR == "new":
        extra_server = "  client_body_timeout: 1s\n  send_timeout: 1s\n"
        extra_proxy = "  backend_body_timeout: 1s\n"
    # In a thread: the backend on this loop must answer the first health round.
    p, port = await asyncio.to_thread(start_tollgate, bport, extra_server, extra_proxy)
    try:
        await asyncio.sleep(0.5)
        if ITEM == "item1":
            await item1(port)
        elif ITEM == "item4":
            await item4(p.pid, port)
        else:
            await item5(port)
    finally:
        p.terminate()
        try:
            p.wait(5)
        except Exception:
            p.kill()
        server.close()

asyncio.run(main())
