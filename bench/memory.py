#!/usr/bin/env python3
"""wsfwd's memory on a small box (issue 7): resident set size with one wss://
upstream and 0, 100 and 1,000 idle clients.

usage: python3 bench/memory.py [--hold SECONDS] [--ping SECONDS] [BINARY...]
       (default binaries: ./wsfwd-static, then ./wsfwd; build them with
       `make static` and `make`)

For each binary, a fresh setup on 127.0.0.1:
  - a test CA and an RSA-2048 leaf for `localhost`, made with `openssl` in a
    temporary directory (as tests/tls.py does);
  - a TLS 1.2/1.3 WebSocket origin on Python's `ssl` (one thread) at
    wss://localhost:PORT/feed, which answers wsfwd's pings and sends a small
    JSON-like text message when told to;
  - `BINARY -l 127.0.0.1:PORT --ca CA.pem /feed=wss://localhost:PORT/feed`
    with every other option at its default (--ping 30, --max-queue 1M);
  - raw RFC 6455 clients that complete the handshake and then only read,
    answering pings with pongs (one selector loop in this process).
At each step the clients are brought to 0, 100, 1,000; then the origin sends
10 messages of ~100 bytes, every client must receive all of them (so every
client has had data queued once, as in real use), the clients are left idle
for --hold seconds (default 2), and VmRSS, RssAnon, RssFile and VmHWM are read
from /proc/PID/status.  A table follows, and whether the target of issue 7 --
under 4 MiB RSS at 100 clients for the static binary -- is met.

Only 127.0.0.1 is used; every wait is bounded; wsfwd and the origin are
stopped by PID / by this process at the end.  Python standard library and the
`openssl` command only.
"""

import base64
import hashlib
import os
import platform
import re
import resource
import selectors
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
STEPS = (0, 100, 1000)
TARGET_KIB = 4096       # issue 7: under 4 MiB at 100 clients (static binary)
MSGS_PER_STEP = 10
WAIT = 30.0             # bound of every wait


class Fail(Exception):
    pass


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def frame(opcode, payload, mask):
    n = len(payload)
    b1 = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", 0x80 | opcode, b1 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", 0x80 | opcode, b1 | 126, n)
    else:
        hdr = struct.pack("!BBQ", 0x80 | opcode, b1 | 127, n)
    if not mask:
        return hdr + payload
    key = os.urandom(4)
    return hdr + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def parse_frames(buf):
    """Complete frames at the start of bytearray BUF, removed from it:
    [(opcode, payload)] (payloads unmasked)."""
    out = []
    while len(buf) >= 2:
        n, off = buf[1] & 127, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = int.from_bytes(buf[2:10], "big"), 10
        key = None
        if buf[1] & 0x80:
            if len(buf) < off + 4:
                break
            key, off = bytes(buf[off:off + 4]), off + 4
        if len(buf) < off + n:
            break
        payload = bytes(buf[off:off + n])
        if key:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        out.append((buf[0] & 15, payload))
        del buf[:off + n]
    return out


# ---------------------------------------------------------------- certificates

def openssl(tmp, *args):
    r = subprocess.run(["openssl"] + list(args), cwd=tmp, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)
    if r.returncode != 0:
        raise Fail("openssl %s: %s" % (" ".join(args[:2]), r.stderr.decode()[-300:]))


def make_certs(tmp):
    """A CA and an RSA-2048 leaf for localhost; (ca.pem, leaf.pem, leaf.key)."""
    p = lambda name: os.path.join(tmp, name)
    openssl(tmp, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p("ca.key"),
            "-out", p("ca.pem"), "-days", "2", "-subj", "/CN=wsfwd-memory-bench-ca")
    with open(p("ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
    openssl(tmp, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", p("leaf.key"),
            "-out", p("leaf.csr"), "-subj", "/CN=localhost")
    openssl(tmp, "x509", "-req", "-in", p("leaf.csr"), "-CA", p("ca.pem"), "-CAkey",
            p("ca.key"), "-CAcreateserial", "-days", "2", "-sha256", "-extfile",
            p("ext.cnf"), "-out", p("leaf.pem"))
    return p("ca.pem"), p("leaf.pem"), p("leaf.key")


# ---------------------------------------------------------------- the origin

class Origin(threading.Thread):
    """A TLS WebSocket origin for one connection (wsfwd's), in one thread:
    it answers pings and sends what send() queues."""

    def __init__(self, cert, key):
        super().__init__(daemon=True)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind((HOST, 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.outq = []
        self.pings = 0
        self.cipher = None
        self.error = None
        self.ready = threading.Event()
        self.stopping = False
        self.start()

    def url(self):
        return "wss://localhost:%d/feed" % self.port

    def send(self, payload):
        with self.lock:
            self.outq.append(frame(0x1, payload, mask=False))

    def run(self):
        try:
            self.serve()
        except Exception as e:      # reported by the main thread
            self.error = "%s: %s" % (type(e).__name__, e)
        finally:
            self.ready.set()

    def serve(self):
        self.lsock.settimeout(0.2)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                raw, _ = self.lsock.accept()
                break
            except socket.timeout:
                if self.stopping or time.monotonic() > deadline:
                    raise Fail("wsfwd did not connect to the origin")
        raw.settimeout(10)
        s = self.ctx.wrap_socket(raw, server_side=True)
        self.cipher = "%s %s" % (s.version(), s.cipher()[0])
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(16384)
            if not d:
                raise Fail("origin: EOF in the upgrade request")
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)\s*$", head)
        if not head.startswith(b"GET /feed HTTP/1.1\r\n") or not m:
            raise Fail("origin: bad upgrade request %r" % head[:200])
        s.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                   % accept_key(m.group(1).decode())).encode())
        self.ready.set()
        inbuf = bytearray(rest)
        s.settimeout(0.05)
        while not self.stopping:
            with self.lock:
                out, self.outq = self.outq, []
            for f in out:
                s.sendall(f)
            for op, payload in parse_frames(inbuf):
                if op == 0x9:
                    self.pings += 1
                    with self.lock:
                        self.outq.append(frame(0xA, payload, mask=False))
                elif op == 0x8:
                    return
            try:
                d = s.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            if not d:
                return
            inbuf += d
        s.close()


# ---------------------------------------------------------------- clients

class Client:
    def __init__(self, port):
        self.sock = socket.create_connection((HOST, port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET /feed HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n" % (HOST, port, key)).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = self.sock.recv(4096)
            if not d:
                raise Fail("client: EOF during the handshake (%r)" % buf[:100])
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 ") or accept_key(key).encode() not in head:
            raise Fail("client: no valid 101: %r" % head[:200])
        self.buf = bytearray(rest)
        self.msgs = 0
        self.base = 0           # msgs at the end of the previous step
        self.pings = 0
        self.closed = None
        self.sock.setblocking(False)


class Clients:
    """Idle clients in one selector loop: they read, count data messages and
    answer pings."""

    def __init__(self, port):
        self.port = port
        self.sel = selectors.DefaultSelector()
        self.all = []

    def add(self, n):
        for _ in range(n):
            c = Client(self.port)
            self.all.append(c)
            self.sel.register(c.sock, selectors.EVENT_READ, c)
            self.handle(c, b"")

    def handle(self, c, data):
        c.buf += data
        for op, payload in parse_frames(c.buf):
            if op in (0x1, 0x2):
                c.msgs += 1
            elif op == 0x9:
                c.pings += 1
                c.sock.setblocking(True)
                c.sock.sendall(frame(0xA, payload, mask=True))
                c.sock.setblocking(False)
            elif op == 0x8:
                c.closed = "close frame %r" % payload[:2]

    def pump(self, seconds, until=None):
        """Run the loop for SECONDS, or until until() is true; that value."""
        deadline = time.monotonic() + seconds
        while True:
            if until and until():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return bool(until and until())
            for key, _ in self.sel.select(min(left, 0.05)):
                c = key.data
                try:
                    d = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    d, c.closed = b"", str(e)
                if not d:
                    c.closed = c.closed or "EOF"
                    self.sel.unregister(c.sock)
                    continue
                self.handle(c, d)

    def close(self):
        for c in self.all:
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
        self.all = []


# ---------------------------------------------------------------- measuring

def status(pid):
    """VmRSS, RssAnon, RssFile, VmHWM in KiB from /proc/PID/status."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            k, _, v = ln.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


def elf_kind(path):
    """'static' or 'dynamic' (has a PT_INTERP program header)."""
    with open(path, "rb") as f:
        h = f.read(64)
        if h[:4] != b"\x7fELF" or h[4] != 2:
            return "?"
        end = "<" if h[5] == 1 else ">"
        phoff, = struct.unpack(end + "Q", h[32:40])
        phentsize, phnum = struct.unpack(end + "HH", h[54:58])
        f.seek(phoff)
        for _ in range(phnum):
            ph = f.read(phentsize)
            if struct.unpack(end + "I", ph[:4])[0] == 3:
                return "dynamic"
    return "static"


def wait_log(path, proc, pattern, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        if re.search(pattern, text):
            return text
        if proc.poll() is not None:
            raise Fail("wsfwd exited %s before %s:\n%s" % (proc.returncode, what, text[-800:]))
        if time.monotonic() > deadline:
            raise Fail("wsfwd: no %s within %.0f s:\n%s" % (what, timeout, text[-800:]))
        time.sleep(0.05)


def measure(binary, certs, tmp, hold, ping):
    ca, cert, key = certs
    origin = Origin(cert, key)
    port = free_port()
    log = os.path.join(tmp, "%s.log" % os.path.basename(binary))
    args = [binary, "-l", "%s:%d" % (HOST, port), "--ca", ca]
    if ping is not None:
        args += ["--ping", str(ping)]
    args.append("/feed=" + origin.url())
    rows = []
    with open(log, "wb") as logf:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=logf)
    clients = Clients(port)
    try:
        wait_log(log, proc, re.escape("upstream /feed: connected to %s (" % origin.url()),
                 "upstream connection")
        origin.ready.wait(WAIT)
        if origin.error:
            raise Fail(origin.error)
        sent = 0
        for n in STEPS:
            clients.add(n - len(clients.all))
            want = "connected to /feed, %d clients" % n
            if n:
                wait_log(log, proc, re.escape(want), "'%s'" % want)
            for i in range(MSGS_PER_STEP):
                origin.send(('{"e":"24hrMiniTicker","E":%d,"s":"BTCUSDT","c":"%d.%02d",'
                             '"v":"%d"}' % (time.time() * 1000, 60000 + i, i, sent))
                            .encode())
                sent += 1
            behind = lambda: [c for c in clients.all if c.msgs < c.base + MSGS_PER_STEP]
            if not clients.pump(WAIT, lambda: not behind()):
                raise Fail("%d of %d clients did not get the %d messages (e.g. %s)" % (
                    len(behind()), n, MSGS_PER_STEP, behind()[0].closed))
            for c in clients.all:
                c.base = c.msgs
            clients.pump(hold)
            closed = [c.closed for c in clients.all if c.closed]
            if closed:
                raise Fail("%d clients were closed: %s" % (len(closed), closed[0]))
            if proc.poll() is not None:
                raise Fail("wsfwd exited %s" % proc.returncode)
            st = status(proc.pid)
            st["clients"] = n
            st["client_pings"] = sum(c.pings for c in clients.all)
            rows.append(st)
        with open(log, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        lost = text.count("upstream /feed: lost")
        if lost:
            raise Fail("the upstream was lost %d times:\n%s" % (lost, text[-800:]))
    finally:
        clients.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        origin.stopping = True
        origin.join(3)
        origin.lsock.close()
    return rows, origin


def main(argv):
    hold, ping, bins = 2.0, None, []
    args = list(argv[1:])
    while args:
        a = args.pop(0)
        if a == "--hold":
            hold = float(args.pop(0))
        elif a == "--ping":
            ping = int(args.pop(0))
        elif a in ("-h", "--help"):
            print(__doc__.strip())
            return 0
        else:
            bins.append(a)
    if not bins:
        bins = [os.path.join(ROOT, "wsfwd-static"), os.path.join(ROOT, "wsfwd")]
    for b in bins:
        if not os.access(b, os.X_OK):
            sys.stderr.write("%s: not built (make static; make)\n" % b)
            return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < max(STEPS) + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(STEPS) + 500), hard))
    tmp = tempfile.mkdtemp(prefix="wsfwd-memory.")
    results = []
    try:
        certs = make_certs(tmp)
        for b in bins:
            rows, origin = measure(os.path.abspath(b), certs, tmp, hold, ping)
            results.append((b, rows, origin))
    except Fail as e:
        print("FAILED: %s" % e)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("wsfwd memory, one wss:// upstream (%s, RSA-2048 leaf, --ca), idle clients"
          % results[0][2].cipher)
    print("%s, %s, Python %s; %d messages of ~100 B per step, then %.0f s idle; "
          "wsfwd %s" % (platform.node() or "host", platform.release(),
                        platform.python_version(), MSGS_PER_STEP, hold,
                        "--ping %d" % ping if ping is not None else "default options"))
    print()
    print("| binary | bytes | clients | VmRSS KiB | RssAnon | RssFile | VmHWM | "
          "KiB per client |")
    print("|---|---|---|---|---|---|---|---|")
    verdict = []
    for b, rows, origin in results:
        name = os.path.relpath(b, ROOT) if b.startswith(ROOT) else b
        desc = "%s (%s)" % (name, elf_kind(b))
        prev = None
        for r in rows:
            per = "" if prev is None or r["clients"] == prev["clients"] else "%.2f" % (
                (r["VmRSS"] - prev["VmRSS"]) / (r["clients"] - prev["clients"]))
            print("| %s | %s | %d | %d | %d | %d | %d | %s |" % (
                desc, "{:,}".format(os.path.getsize(b)), r["clients"], r["VmRSS"],
                r["RssAnon"], r["RssFile"], r["VmHWM"], per))
            prev = r
        at100 = [r for r in rows if r["clients"] == 100][0]
        if elf_kind(b) == "static":
            verdict.append("%s: %d KiB VmRSS at 100 clients: target under %d KiB %s"
                           % (name, at100["VmRSS"], TARGET_KIB,
                              "MET" if at100["VmRSS"] < TARGET_KIB else "NOT MET"))
        pings = rows[-1]["client_pings"]
        if pings or origin.pings:
            verdict.append("%s: pings answered: %d by clients, %d by the origin"
                           % (name, pings, origin.pings))
    print()
    for v in verdict:
        print(v)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
