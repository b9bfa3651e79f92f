#!/usr/bin/env python3
"""wsfwd's permessage-deflate compressor against zlib (issue 8, figure 1).

usage: python3 bench/deflate.py [--msgs N] [--rounds R] [--objects K] [BINARY]
       (default binary ./wsfwd; `make` builds it)

The payloads: 50 Binance !miniTicker@arr-style arrays of K (default 200)
random tickers each, {"e":"24hrMiniTicker","E":...,"s":"BTCUSDT","c":"...",
...} as tests/deflate.py makes them (seeds 1..50), compact JSON, ~35 KB.
No network.

zlib (Python's, the C library): each array compressed on its own as
permessage-deflate does it without context takeover -- raw deflate (wbits
-15), Z_SYNC_FLUSH, the trailing 00 00 ff ff removed -- at levels 1, 6 and
9, and with the Node.js forwarder's settings (ws: level 3, memLevel 7,
server_max_window_bits 10).  CPU per message is process time over many
repetitions, this process pinned to CPU 0.

wsfwd: measured through the real binary, pinned to CPU 0 (this process on
CPU 1): `wsfwd -q -l 127.0.0.1:PORT /t=-` reads the arrays as lines of its
stdin and sends each to the one client connected.  Each round runs N
messages (default 500, the 50 arrays in turn) once to a client that offered
permessage-deflate and once to one that did not; wsfwd's CPU time over the
round (/proc/PID/task/*/schedstat: user + system, every thread) divided by
N is its CPU per message.  The difference, deflate client minus plain
client, is what compressing costs (the plain client's round has every other
cost: reading stdin, UTF-8 check, framing, send).  Median over R rounds
(default 5).  Every compressed frame is inflated here with zlib and compared
with what was sent, and its size counted for wsfwd's ratio.

Only 127.0.0.1; every wait is bounded; wsfwd is stopped by its PID at the
end.  Python standard library only.
"""

import base64
import hashlib
import json
import os
import platform
import random
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import time
import zlib

from benchlib import free_port, proc_cpu_ns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TAIL = b"\x00\x00\xff\xff"
WAIT = 60.0                     # bound of every round
VARIANTS = 50


class Fail(Exception):
    pass


def ticker_json(n=200, seed=1):
    """A Binance !miniTicker@arr-style array (as tests/deflate.py makes)."""
    rnd = random.Random(seed)
    syms = ["BTC", "ETH", "BNB", "SOL", "XRP", "ADA", "DOGE", "TRX", "LINK",
            "DOT"]
    out = []
    for _ in range(n):
        p = rnd.uniform(0.01, 40000)
        out.append({"e": "24hrMiniTicker",
                    "E": 1700000000000 + rnd.randrange(1000),
                    "s": "%s%s" % (rnd.choice(syms),
                                   rnd.choice(["USDT", "BTC", "FDUSD"])),
                    "c": "%.8f" % p, "o": "%.8f" % (p * rnd.uniform(0.9, 1.1)),
                    "h": "%.8f" % (p * 1.1), "l": "%.8f" % (p * 0.9),
                    "v": "%.8f" % rnd.uniform(0, 1e6),
                    "q": "%.8f" % rnd.uniform(0, 1e9)})
    return json.dumps(out, separators=(",", ":")).encode()


def pmd_compress(data, level, wbits=-15, mem=8):
    c = zlib.compressobj(level, zlib.DEFLATED, wbits, mem)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4] if out.endswith(TAIL) else out


# ------------------------------------------------------------------- zlib

def bench_zlib(msgs, label, level, wbits=-15, mem=8, min_s=1.0):
    outs = [pmd_compress(m, level, wbits, mem) for m in msgs]
    for m, o in zip(msgs, outs):          # the round trip, once
        if zlib.decompressobj(-15).decompress(o + TAIL) != m:
            raise Fail("zlib round trip failed (%s)" % label)
    n = 0
    t0 = time.process_time_ns()
    while True:
        for m in msgs:
            pmd_compress(m, level, wbits, mem)
        n += len(msgs)
        el = time.process_time_ns() - t0
        if el >= min_s * 1e9 or n >= 200 * len(msgs):
            break
    return dict(label=label, inb=sum(map(len, msgs)) / len(msgs),
                outb=sum(map(len, outs)) / len(outs),
                us=el / 1e3 / n)


# ------------------------------------------------------------------ wsfwd

class Client:
    """A raw RFC 6455 client of wsfwd, reading whole frames."""

    def __init__(self, port, path, deflate):
        self.s = socket.create_connection((HOST, port), timeout=5)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16))
        ext = ("Sec-WebSocket-Extensions: permessage-deflate; "
               "client_max_window_bits\r\n" if deflate else "")
        self.s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13"
                        "\r\n%s\r\n" % (path, HOST, port, key.decode(), ext))
                       .encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = self.s.recv(4096)
            if not d:
                raise Fail("wsfwd closed during the handshake")
            buf += d
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        head = head.decode("latin-1")
        if not head.startswith("HTTP/1.1 101"):
            raise Fail("handshake: %s" % head.splitlines()[0])
        want = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        if "sec-websocket-accept: " + want.lower() not in head.lower():
            raise Fail("bad Sec-WebSocket-Accept")
        agreed = "permessage-deflate" in head.lower()
        if agreed != deflate:
            raise Fail("permessage-deflate %s" % ("not agreed" if deflate
                                                  else "agreed unasked"))
        self.s.setblocking(False)

    def frames(self):
        """Whole frames in what has been read: (rsv1, opcode, payload)."""
        out = []
        b = self.buf
        while len(b) >= 2:
            n, o = b[1] & 0x7f, 2
            if n == 126:
                if len(b) < 4:
                    break
                n, o = struct.unpack(">H", b[2:4])[0], 4
            elif n == 127:
                if len(b) < 10:
                    break
                n, o = struct.unpack(">Q", b[2:10])[0], 10
            if len(b) < o + n:
                break
            out.append((bool(b[0] & 0x40), b[0] & 0x0f, b[o:o + n]))
            b = b[o + n:]
        self.buf = b
        return out

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def run_round(w, port, path, deflate, lines, sent_plain, nmsgs):
    """N messages through wsfwd to one client; (cpu ns, out bytes list)."""
    c = Client(port, path, deflate)
    try:
        # the client is in once a message reaches it
        deadline = time.monotonic() + 10
        got = []
        probe = b"probe\n"
        os.write(w.stdin.fileno(), probe)
        while not got and time.monotonic() < deadline:
            try:
                d = c.s.recv(65536)
                if not d:
                    raise Fail("wsfwd closed the client")
                c.buf += d
            except BlockingIOError:
                time.sleep(0.01)
            got = c.frames()
        if not got:
            raise Fail("the probe message did not arrive")
        data = b"".join(lines[i % len(lines)] for i in range(nmsgs))
        sel = selectors.DefaultSelector()
        fd = w.stdin.fileno()
        os.set_blocking(fd, False)
        sel.register(c.s, selectors.EVENT_READ, "r")
        sel.register(fd, selectors.EVENT_WRITE, "w")
        cpu0 = proc_cpu_ns(w.pid)
        off, n, sizes, bad = 0, 0, [], 0
        deadline = time.monotonic() + WAIT
        while n < nmsgs and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                if key.data == "w":
                    try:
                        off += os.write(fd, data[off:off + 262144])
                    except BlockingIOError:
                        pass
                    if off >= len(data):
                        sel.unregister(fd)
                    continue
                try:
                    d = c.s.recv(1 << 20)
                except BlockingIOError:
                    continue
                if not d:
                    raise Fail("wsfwd closed the client")
                c.buf += d
                for rsv1, op, pl in c.frames():
                    if op != 1:
                        continue
                    want = sent_plain[n % len(sent_plain)]
                    if rsv1:
                        if zlib.decompressobj(-15).decompress(pl + TAIL) \
                                != want:
                            bad += 1
                    elif pl != want:
                        bad += 1
                    sizes.append((rsv1, len(pl)))
                    n += 1
        cpu1 = proc_cpu_ns(w.pid)
        os.set_blocking(fd, True)
        sel.close()
        if n < nmsgs:
            raise Fail("only %d of %d messages arrived in %gs"
                       % (n, nmsgs, WAIT))
        if bad:
            raise Fail("%d messages differ from what was sent" % bad)
        return cpu1 - cpu0, sizes
    finally:
        c.close()


def bench_wsfwd(binary, msgs, nmsgs, rounds):
    port = free_port()
    cmd = ["taskset", "-c", "0", binary, "-q", "-l", "%s:%d" % (HOST, port),
           "/t=-"]
    w = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                if w.poll() is not None or time.monotonic() > deadline:
                    raise Fail("wsfwd did not start: %s" %
                               w.stderr.read().decode(errors="replace"))
                time.sleep(0.05)
        lines = [m + b"\n" for m in msgs]
        res = {True: [], False: []}
        sizes = []
        # warm up both paths (the compressor's tables are made on first use)
        for deflate in (True, False):
            run_round(w, port, "/t", deflate, lines, msgs, len(msgs))
        for _ in range(rounds):
            for deflate in (True, False):
                cpu, sz = run_round(w, port, "/t", deflate, lines, msgs,
                                    nmsgs)
                res[deflate].append(cpu / nmsgs)
                if deflate:
                    sizes += sz
        comp = [n for rsv1, n in sizes if rsv1]
        return dict(
            ns_deflate=statistics.median(res[True]),
            ns_plain=statistics.median(res[False]),
            all_deflate=res[True], all_plain=res[False],
            outb=(sum(n for _, n in sizes) / len(sizes)),
            compressed=len(comp), total=len(sizes))
    finally:
        w.terminate()
        try:
            w.wait(timeout=5)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def machine():
    model = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True,
                                   text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "%d cores, %s, Linux %s, Python %s, zlib %s" % (
        os.cpu_count() or 0, model, platform.release(),
        platform.python_version(), zlib.ZLIB_RUNTIME_VERSION)


def main():
    args = sys.argv[1:]
    nmsgs, rounds, nobj = 500, 5, 200
    binary = os.path.join(ROOT, "wsfwd")
    while args:
        a = args.pop(0)
        if a in ("--msgs", "--rounds", "--objects") and args:
            v = int(args.pop(0))
            if a == "--msgs":
                nmsgs = max(1, v)
            elif a == "--rounds":
                rounds = max(1, v)
            else:
                nobj = max(1, v)
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        elif not a.startswith("-"):
            binary = a
        else:
            print("bench/deflate.py: unknown option %s" % a, file=sys.stderr)
            return 2
    if not os.access(binary, os.X_OK):
        print("bench/deflate.py: no %s (make wsfwd)" % binary,
              file=sys.stderr)
        return 1
    msgs = [ticker_json(nobj, seed) for seed in range(1, VARIANTS + 1)]
    inb = sum(map(len, msgs)) / len(msgs)
    print("machine: %s" % machine())
    with open("/proc/loadavg") as f:
        print("load average before: %s" % " ".join(f.read().split()[:3]))
    print("payload: %d ticker arrays of %d objects, %.0f bytes on average "
          "(%d..%d)" % (len(msgs), nobj, inb, min(map(len, msgs)),
                        max(map(len, msgs))))
    os.sched_setaffinity(0, {0})
    rows = []
    for label, lv, wb, mem in (("zlib level 1", 1, -15, 8),
                               ("zlib level 6", 6, -15, 8),
                               ("zlib level 9", 9, -15, 8),
                               ("zlib as ws (Node): level 3, memLevel 7, "
                                "window 2^10", 3, -10, 7)):
        rows.append(bench_zlib(msgs, label, lv, wb, mem))
    os.sched_setaffinity(0, {1} if (os.cpu_count() or 1) > 1 else {0})
    wr = bench_wsfwd(binary, msgs, nmsgs, rounds)
    rows.insert(0, dict(label="wsfwd (deflate client CPU - plain client CPU)",
                        inb=inb, outb=wr["outb"],
                        us=(wr["ns_deflate"] - wr["ns_plain"]) / 1e3))
    print()
    w0 = max(len(r["label"]) for r in rows)
    print("%-*s | %9s | %9s | %5s | %10s | %7s" % (
        w0, "compressor", "bytes in", "bytes out", "ratio", "us CPU/msg",
        "MB/s in"))
    print("-" * (w0 + 60))
    for r in rows:
        print("%-*s | %9.0f | %9.0f | %5.2f | %10.1f | %7.1f" % (
            w0, r["label"], r["inb"], r["outb"], r["inb"] / r["outb"],
            r["us"], r["inb"] / r["us"] if r["us"] > 0 else 0))
    print()
    print("wsfwd, whole-process CPU per message (median of %d rounds of %d "
          "messages): deflate client %.1f us, plain client %.1f us"
          % (rounds, nmsgs, wr["ns_deflate"] / 1e3, wr["ns_plain"] / 1e3))
    print("  rounds, deflate: %s" % ", ".join(
        "%.1f" % (v / 1e3) for v in wr["all_deflate"]))
    print("  rounds, plain:   %s" % ", ".join(
        "%.1f" % (v / 1e3) for v in wr["all_plain"]))
    print("  %d of %d frames to the deflate client compressed; all inflated "
          "by zlib to what was sent" % (wr["compressed"], wr["total"]))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Fail as e:
        print("bench/deflate.py: %s" % e, file=sys.stderr)
        sys.exit(1)
