#!/usr/bin/env python3
"""Soak test (issue 6): wsfwd for minutes under a steady feed whose origin is
restarted every minute, checking that nothing is lost or reordered and that
descriptors and memory stay flat.  Not part of `make check`.

usage: python3 bench/soak.py [--minutes M] [--clients N] [--rate R]
                             [--restart-every S] [--sample-every S] [BINARY]
       (defaults: 10 minutes, 1,000 clients, 100 messages/s, a restart every
       60 s, a sample every 10 s, ./wsfwd)

On 127.0.0.1 only:
  - an origin (this script in a child process, `--origin PORT RATE S`):
    a WebSocket server that sends RATE binary messages a second, in bursts
    every 100 ms, each 16 bytes: u32 session (1, 2, ... one per connection),
    u32 zero, u64 sequence number from 0 within the session.  It answers
    wsfwd's pings.  Every S seconds it ends the session and restarts on the
    same port, alternately cleanly (close 1001 after the last message) and
    abruptly (a reset), and reports how many messages the session sent;
  - `BINARY -l 127.0.0.1:PORT /soak=ws://127.0.0.1:ORIGIN/feed` with every
    other option at its default (--ping 30, --max-queue 1M), its log kept;
  - N raw RFC 6455 clients in this process (one epoll loop), answering
    pings.  Each client checks every message as it comes: sessions only go
    up, a new session starts at sequence 0 (the one a client joined during
    starts wherever it joined), and within a session each number is the
    last one plus 1.  So nothing is reordered and nothing is lost
    while the origin is up; after an abrupt restart the messages the reset
    destroyed on their way into wsfwd are the only ones allowed missing (a
    tail of the session, the same for every client); after a clean one, none.
  - every --sample-every seconds: wsfwd's descriptors (/proc/PID/fd), VmRSS,
    CPU (utime+stime over the interval) and the messages the clients got.

At the end: the table, each session (sent, got by every client or the range
over clients, how it ended), and a verdict: PASS when no client saw a gap
or a reordering, every clean session arrived whole at every client, every
client is still connected, wsfwd exited 0 on SIGTERM, and after the first
minute (warm-up) descriptors varied by at most 2 and VmRSS by at most
1 MiB.  Exit status 0 on PASS, 1 otherwise.  Run it under `nice` on a shared
machine.
"""

import argparse
import os
import resource
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from wslib import (  # noqa: E402
    HOST, OP_BIN, OP_CLOSE, OP_PING, OP_PONG, accept_key, build_request,
    close_payload, encode_frame, free_port, mask_bytes)

MSG = struct.Struct("!IIQ")         # session, 0, sequence
FRAME = struct.Struct("!BBIIQ")     # the same as a whole unmasked frame
DATA_HEAD = (0x80 | OP_BIN, MSG.size)
WAIT = 20.0                         # bound of every setup wait
STOP = False                        # the origin got SIGTERM
FD_SLACK, RSS_SLACK_KB = 2, 1024    # "flat" after the first minute


# ---------------------------------------------------------------- origin

def read_head(sock, deadline):
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(4096)
        if not data:
            raise OSError("EOF in the upgrade request")
        buf += data
    return buf


def origin_session(conn, session, rate, seconds, clean):
    """Serve one session; returns the number of messages sent."""
    head = read_head(conn, time.monotonic() + WAIT).decode("latin-1")
    key = ""
    for ln in head.split("\r\n"):
        name, _, value = ln.partition(":")
        if name.strip().lower() == "sec-websocket-key":
            key = value.strip()
    conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                  % accept_key(key)).encode())
    conn.settimeout(5)
    t0 = time.monotonic()
    sent = 0
    rbuf = bytearray()
    while not STOP:
        t = time.monotonic() - t0
        if t >= seconds:
            break
        due = int(rate * t) - sent
        if due > 0:
            conn.sendall(b"".join(encode_frame(OP_BIN, MSG.pack(session, 0, sent + i),
                                               mask=False) for i in range(due)))
            sent += due
        r, _, _ = select.select([conn], [], [], max(0, 0.1 - (time.monotonic() - t0 - t)))
        if r:
            data = conn.recv(65536)
            if not data:
                return sent, "lost"
            rbuf += data
            while len(rbuf) >= 6:       # wsfwd's frames: masked, short
                n = rbuf[1] & 127
                if n > 125 or len(rbuf) < 6 + n:
                    break
                op, payload = rbuf[0] & 15, mask_bytes(bytes(rbuf[6:6 + n]), bytes(rbuf[2:6]))
                del rbuf[:6 + n]
                if op == OP_PING:
                    conn.sendall(encode_frame(OP_PONG, payload, mask=False))
    if clean or STOP:
        conn.sendall(encode_frame(OP_CLOSE, close_payload(1001), mask=False))
        try:
            conn.settimeout(2)
            while conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()
        return sent, "clean"
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    return sent, "reset"


def on_term(signum, frame):
    global STOP
    STOP = True


def origin_main(port, rate, every):
    """--origin: serve sessions until SIGTERM; one line per session on stdout.
    Odd sessions end cleanly, even ones with a reset."""
    signal.signal(signal.SIGTERM, on_term)
    session = 0
    while not STOP:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((HOST, port))
        ls.listen(4)
        if session == 0:
            print("listening", flush=True)
        ls.settimeout(0.5)
        conn = None
        while not STOP and conn is None:
            try:
                conn, _ = ls.accept()
            except socket.timeout:
                pass
        ls.close()
        if conn is None:
            break
        session += 1
        try:
            sent, how = origin_session(conn, session, rate, every, session % 2 == 1)
        except OSError as e:
            sent, how = -1, "error: %s" % e
        print("session %d sent %d %s" % (session, sent, how), flush=True)
        time.sleep(0.2)
    return 0


# ---------------------------------------------------------------- clients

class Client:
    __slots__ = ("sock", "buf", "session", "next", "counts", "errors", "closed", "msgs",
                 "first")

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.session = 0
        self.next = 0
        self.counts = {}            # session -> messages received
        self.errors = []
        self.closed = None
        self.msgs = 0
        self.first = None           # (session, seq) of the first message

    def error(self, what):
        if len(self.errors) < 5:
            self.errors.append(what)

    def take(self, items):
        """Check (session, seq) pairs in arrival order."""
        for s, q in items:
            if s == self.session and q == self.next:
                self.next += 1
                continue
            if self.first is None:      # joined mid-stream: starts anywhere
                self.first = (s, q)
                self.session, self.next = s, q + 1
                continue
            if s > self.session and q == 0:
                if self.session:
                    self.counts[self.session] = self.next
                self.session, self.next = s, 1
                continue
            self.error("got %d:%d after %d:%d" % (s, q, self.session, self.next - 1))
            self.session, self.next = max(s, self.session), q + 1
        self.msgs += len(items)

    def parse(self):
        b = self.buf
        off = 0
        while True:
            n = (len(b) - off) // FRAME.size
            if n:
                items = []
                for b0, b1, s, _, q in FRAME.iter_unpack(memoryview(b)[off:off + n * FRAME.size]):
                    if (b0, b1) != DATA_HEAD:
                        break
                    items.append((s, q))
                off += len(items) * FRAME.size
                self.take(items)
                if len(items) == n:
                    continue
            if len(b) - off < 2:
                break
            b0, b1 = b[off], b[off + 1]     # not a data frame: the slow path
            ln = b1 & 127
            if ln > 125 or len(b) - off < 2 + ln:
                if ln > 125:
                    self.error("unexpected frame %02x %02x" % (b0, b1))
                    self.closed = "bad frame"
                break
            payload = bytes(b[off + 2:off + 2 + ln])
            off += 2 + ln
            op = b0 & 15
            if op == OP_PING:
                try:
                    self.sock.send(encode_frame(OP_PONG, payload))
                except OSError as e:
                    self.error("pong: %s" % e)
            elif op == OP_CLOSE:
                self.closed = "close %d" % struct.unpack("!H", payload[:2])[0] \
                    if len(payload) >= 2 else "close"
                break
            elif op != OP_PONG:
                self.error("unexpected frame %02x %02x len %d" % (b0, b1, ln))
        del b[:off]

    def finish(self):
        """counts[session]: its last number + 1 (all of it, if no tail is lost)."""
        if self.session:
            self.counts[self.session] = self.next


def connect_clients(port, n):
    clients = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(WAIT)
        s.connect((HOST, port))
        req, key = build_request(port, "/soak")
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = s.recv(4096)
            if not data:
                raise SystemExit("client %d: wsfwd closed during the upgrade" % i)
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101") or accept_key(key).encode() not in head:
            raise SystemExit("client %d: no valid 101: %r" % (i, head[:80]))
        s.setblocking(False)
        c = Client(s)
        c.buf += rest
        clients.append(c)
    return clients


# ---------------------------------------------------------------- wsfwd

def proc_sample(pid):
    fds = len(os.listdir("/proc/%d/fd" % pid))
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                rss = int(ln.split()[1])
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return fds, rss, cpu


def wait_line(path, text, deadline):
    while time.monotonic() < deadline:
        with open(path, "rb") as f:
            if text.encode() in f.read():
                return
        time.sleep(0.05)
    raise SystemExit("no %r in %s within %.0f s" % (text, path, WAIT))


def main():
    ap = argparse.ArgumentParser(description="wsfwd soak test (see the header)")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--restart-every", type=float, default=60)
    ap.add_argument("--sample-every", type=float, default=10)
    ap.add_argument("--origin", nargs=3, metavar=("PORT", "RATE", "S"), help=argparse.SUPPRESS)
    ap.add_argument("binary", nargs="?", default=os.path.join(ROOT, "wsfwd"))
    a = ap.parse_args()
    if a.origin:
        return origin_main(int(a.origin[0]), int(a.origin[1]), float(a.origin[2]))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.clients + 100
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise SystemExit("ulimit -Hn is %d; %d clients need %d" % (hard, a.clients, want))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    tmp = tempfile.mkdtemp(prefix="wsfwd-soak.")
    log = os.path.join(tmp, "wsfwd.log")
    oport, wport = free_port(), free_port()
    origin = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--origin",
                               str(oport), str(a.rate), str(a.restart_every)],
                              stdout=subprocess.PIPE, text=True)
    if origin.stdout.readline().strip() != "listening":
        raise SystemExit("the origin did not start")
    with open(log, "wb") as lf:
        w = subprocess.Popen([a.binary, "-l", "%s:%d" % (HOST, wport),
                              "/soak=ws://%s:%d/feed" % (HOST, oport)],
                             stdin=subprocess.DEVNULL, stderr=lf)
    try:
        return run(a, w, origin, log, wport)
    finally:
        for p in (origin, w):
            if p.poll() is None:
                p.kill()
                p.wait()
        sys.stdout.write("wsfwd's log: %s\n" % log)


def run(a, w, origin, log, wport):
    deadline = time.monotonic() + WAIT
    wait_line(log, "listening on", deadline)
    clients = connect_clients(wport, a.clients)
    wait_line(log, "connected to /soak, %d clients" % a.clients, deadline)
    sel = selectors.DefaultSelector()
    for c in clients:
        sel.register(c.sock, selectors.EVENT_READ, c)
    print("wsfwd %s, %d clients, %d msgs/s, origin restarted every %.0f s, %.1f min"
          % (a.binary, a.clients, a.rate, a.restart_every, a.minutes), flush=True)
    print("%7s %5s %9s %6s %8s %9s %7s" % ("t (s)", "fds", "VmRSS kB", "CPU %",
                                          "clients", "msgs/s", "session"), flush=True)
    t0 = time.monotonic()
    end = t0 + a.minutes * 60
    samples = []
    last_t, last_cpu, last_msgs = t0, proc_sample(w.pid)[2], 0
    next_sample = t0
    while True:
        now = time.monotonic()
        if now >= next_sample:
            fds, rss, cpu = proc_sample(w.pid)
            msgs = sum(c.msgs for c in clients)
            alive = sum(c.closed is None for c in clients)
            session = max(c.session for c in clients)
            dt = max(now - last_t, 1e-6)
            row = (now - t0, fds, rss, 100 * (cpu - last_cpu) / dt, alive,
                   (msgs - last_msgs) / dt / max(alive, 1), session)
            samples.append(row)
            print("%7.0f %5d %9d %6.1f %8d %9.1f %7d" % row, flush=True)
            last_t, last_cpu, last_msgs = now, cpu, msgs
            next_sample += a.sample_every
            if now >= end:
                break
        if w.poll() is not None:
            break
        for key, _ in sel.select(max(0, min(next_sample, end) - time.monotonic())):
            c = key.data
            try:
                data = c.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError as e:
                data, c.closed = b"", "error %s" % e
            if not data:
                c.closed = c.closed or "EOF"
                sel.unregister(c.sock)
                continue
            c.buf += data
            c.parse()
            if c.closed:
                sel.unregister(c.sock)
    return verdict(a, w, origin, clients, sel, samples)


def verdict(a, w, origin, clients, sel, samples):
    # Stop the origin (its last session ends cleanly), let the tail arrive.
    wsfwd_alive = w.poll() is None
    origin.send_signal(signal.SIGTERM)
    t_end = time.monotonic() + 3
    while time.monotonic() < t_end:
        for key, _ in sel.select(0.2):
            c = key.data
            try:
                data = c.sock.recv(262144)
            except (BlockingIOError, OSError):
                continue
            if data:
                c.buf += data
                c.parse()
    try:
        out, _ = origin.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        origin.kill()
        out, _ = origin.communicate()
    for c in clients:
        c.finish()
    w.send_signal(signal.SIGTERM)
    try:
        rc = w.wait(5)
    except subprocess.TimeoutExpired:
        w.kill()
        rc = "killed after 5 s"
    sessions = []
    for ln in out.splitlines():
        p = ln.split()
        if p and p[0] == "session":
            sessions.append((int(p[1]), int(p[3]), " ".join(p[4:])))
    problems = []
    print("\n%7s %7s %15s  %s" % ("session", "sent", "got (clients)", "ended"))
    for s, sent, how in sessions:
        # The last number + 1: for the session a client joined during, too.
        got = [c.counts.get(s, 0) for c in clients]
        lo, hi = min(got), max(got)
        print("%7d %7d %15s  %s" % (s, sent, str(lo) if lo == hi else "%d-%d" % (lo, hi), how))
        if how == "clean" and lo != sent:
            problems.append("session %d ended cleanly with %d sent, a client got %d"
                            % (s, sent, lo))
        if hi > sent or (how == "reset" and lo != hi):
            problems.append("session %d: clients got %d-%d of %d" % (s, lo, hi, sent))
    errs = [(i, c.errors) for i, c in enumerate(clients) if c.errors]
    if errs:
        problems.append("%d clients saw gaps or reordering, e.g. client %d: %s"
                        % (len(errs), errs[0][0], errs[0][1]))
    gone = [(i, c.closed) for i, c in enumerate(clients) if c.closed]
    if gone:
        problems.append("%d clients were disconnected, e.g. client %d: %s"
                        % (len(gone), gone[0][0], gone[0][1]))
    if not wsfwd_alive or rc != 0:
        problems.append("wsfwd %s, exit status after SIGTERM %s"
                        % ("was alive" if wsfwd_alive else "had exited", rc))
    warm = [r for r in samples if r[0] >= 60] or samples[-1:]
    fds = [r[1] for r in warm]
    rss = [r[2] for r in warm]
    if max(fds) - min(fds) > FD_SLACK:
        problems.append("descriptors %d-%d after the first minute" % (min(fds), max(fds)))
    if max(rss) - min(rss) > RSS_SLACK_KB:
        problems.append("VmRSS %d-%d kB after the first minute" % (min(rss), max(rss)))
    total = sum(c.msgs for c in clients)
    print("\n%d messages to %d clients; after the first minute: descriptors %d-%d, "
          "VmRSS %d-%d kB, wsfwd CPU %.1f%% on average"
          % (total, len(clients), min(fds), max(fds), min(rss), max(rss),
             sum(r[3] for r in warm) / len(warm)))
    print("verdict: %s" % ("PASS" if not problems else "FAIL"))
    for p in problems:
        print("  - %s" % p)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
