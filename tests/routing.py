#!/usr/bin/env python3
"""End-to-end tests of wsfwd's routing features: prefix routes with shared
per-path upstreams, --linger, --max-upstreams, connection pacing per host,
--send, --replay, --rotate, --tunnel, --client-rate, access control and
--stats.

usage: python3 tests/routing.py ./wsfwd [TEST...]

Like proto.py: real wsfwd processes on 127.0.0.1, raw-socket clients and a
fake origin (wslib.FakeUpstream) that counts the connections wsfwd makes,
every wait bounded, processes stopped by PID.  Ends with "N passed, M failed".
"""

import json
import os
import select
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wslib  # noqa: E402
from wslib import (  # noqa: E402
    HOST, TIMEOUT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG,
    TestFail, Timeout, fail, check, eq, close_payload, build_request,
    check_101, WS, Wsfwd, test, FakeUpstream, EchoOrigin, start_server, client)


def no_connection(up, within):
    """The fake origin gets no connection within `within` seconds."""
    try:
        c = up.accept(within)
    except Timeout:
        return
    fail("an unexpected upstream connection: %r" % c.read_head().start)


def status_of(w, path, headers=None):
    """The HTTP status wsfwd answers an upgrade of `path` with."""
    ws = WS(w.port)
    req, key = build_request(w.port, path, headers=headers)
    ws.send_raw(req)
    head = ws.read_head()
    if head.status == 101:
        check_101(head, key)
    return head.status, ws


def body_of(peer):
    """What follows the head until the peer closes."""
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            peer.fill(deadline)
    except wslib.Closed:
        pass
    return bytes(peer.buf)


def expect_refused(w, path, status, headers=None):
    got, ws = status_of(w, path, headers)
    eq(got, status, "HTTP status for %s" % path)
    ws.wait_closed()


# ---------------------------------------------------------------- prefix routes

def prefix_server(up, *opts):
    return start_server(*opts, "/ws/*=" + up.url("/up/*"), stdin=False)


@test
def t_prefix_one_upstream_per_path():
    up = FakeUpstream()
    w = prefix_server(up, "--linger", "1")
    a1 = client(w, "/ws/a?x=1")
    u1 = up.accept()
    u1.handshake("/up/a?x=1")
    a2 = client(w, "/ws/a?x=1")
    b = client(w, "/ws/b")
    u2 = up.accept()
    u2.handshake("/up/b")
    w.wait_log("upstream /ws/b: connected to " + up.url("/up/b"))
    u1.send_frame(OP_TEXT, b"for a", mask=False)
    u2.send_frame(OP_TEXT, b"for b", mask=False)
    a1.expect_msg(OP_TEXT, b"for a")
    a2.expect_msg(OP_TEXT, b"for a")
    b.expect_msg(OP_TEXT, b"for b")
    no_connection(up, 0.3)
    # A different query is a different feed.
    client(w, "/ws/a?x=2")
    up.accept().handshake("/up/a?x=2")
    # Everyone leaves: each upstream is closed (1000) after the linger.
    t0 = time.monotonic()
    for c in (a1, a2, b):
        c.close()
    u1.expect_close(1000, timeout=4, reply=True)
    u2.expect_close(1000, timeout=4, reply=True)
    took = time.monotonic() - t0
    check(0.7 <= took <= 3.5, "upstreams closed %.2f s after the last client "
          "left (--linger 1)" % took)


@test
def t_prefix_linger_keeps_upstream_for_returning_client():
    up = FakeUpstream()
    w = prefix_server(up, "--linger", "3")
    c = client(w, "/ws/t")
    u = up.accept()
    u.handshake("/up/t")
    w.wait_log("upstream /ws/t: connected")
    c.close()
    time.sleep(0.5)
    c2 = client(w, "/ws/t")
    u.send_frame(OP_TEXT, b"same upstream", mask=False)
    c2.expect_msg(OP_TEXT, b"same upstream")
    no_connection(up, 0.3)


def prefix_refused(rest, status, extra=b""):
    """A prefix route whose origin answers the first upgrade of /up/REST
    with STATUS ("404 Not Found"): (origin, wsfwd, its client)."""
    up = FakeUpstream()
    w = prefix_server(up)
    c = client(w, "/ws/" + rest)
    u = up.accept()
    u.read_request("/up/" + rest)
    u.send_raw(b"HTTP/1.1 " + status.encode() + b"\r\n" + extra +
               b"Content-Length: 0\r\n\r\n")
    return up, w, c


@test
def t_prefix_4xx_closes_clients_1014():
    up, w, c = prefix_refused("nope", "404 Not Found")
    c.expect_close(1014)
    w.wait_log("handshake refused: HTTP 404")
    no_connection(up, 1.5)      # no retry
    # The path can be asked for again: a new attempt.
    c2 = client(w, "/ws/nope")
    up.accept().handshake("/up/nope")
    w.wait_log("upstream /ws/nope: connected")
    c2.ping_pong()


@test
def t_prefix_5xx_retried_clients_wait():
    up, w, c = prefix_refused("busy", "503 Service Unavailable")
    w.wait_log("upstream /ws/busy: lost: handshake refused: HTTP 503")
    u2 = up.accept(timeout=4)
    u2.handshake("/up/busy")
    u2.send_frame(OP_TEXT, b"after retry", mask=False)
    c.expect_msg(OP_TEXT, b"after retry")


@test
def t_prefix_max_upstreams():
    up = FakeUpstream()
    w = prefix_server(up, "--max-upstreams", "2")
    client(w, "/ws/1")
    client(w, "/ws/2")
    client(w, "/ws/1")          # an existing feed: no new upstream
    got, ws = status_of(w, "/ws/3")
    eq(got, 503, "HTTP status beyond --max-upstreams")
    check(b"--max-upstreams" in body_of(ws), "503 body does not say why")


@test
def t_prefix_rejects_dot_segments():
    up = FakeUpstream()
    w = prefix_server(up)
    for path in ("/ws/../admin", "/ws/a/./b", "/ws/%2e%2E/x", "/ws/.."):
        expect_refused(w, path, 400)
    no_connection(up, 0.2)
    client(w, "/ws/..ok/x.y")   # dots inside a name are fine
    up.accept().handshake("/up/..ok/x.y")


@test
def t_prefix_longest_and_exact_first():
    up = FakeUpstream()
    w = start_server("/ws/*=" + up.url("/any/*"), "/ws/x/*=" + up.url("/x/*"),
                     "/ws/fixed=" + up.url("/fixed"), stdin=False)
    fixed = up.accept()
    fixed.handshake("/fixed")
    client(w, "/ws/x/1")
    up.accept().handshake("/x/1")
    client(w, "/ws/y")
    up.accept().handshake("/any/y")
    client(w, "/ws/fixed")
    no_connection(up, 0.3)


@test
def t_prefix_host_pacing():
    # 10 attempts at once, then one per 1.05 s to one host:port.
    up = FakeUpstream()
    w = prefix_server(up)
    t0 = time.monotonic()
    for i in range(12):
        client(w, "/ws/p%d" % i)
    conns = [up.accept(timeout=2) for _ in range(10)]
    check(time.monotonic() - t0 < 1.0, "the first 10 attempts were not at once")
    w.wait_log("too many connection attempts to 127.0.0.1:%d" % up.port)
    c11 = up.accept(timeout=3)
    took = time.monotonic() - t0
    check(took >= 0.8, "the 11th attempt came %.2f s after the burst" % took)
    c12 = up.accept(timeout=3)
    took2 = time.monotonic() - t0
    check(took2 - took >= 0.8, "the 12th came %.2f s after the 11th" % (took2 - took))
    del conns, c11, c12


# ---------------------------------------------------------------- --send

@test
def t_send_on_connect_and_reconnect():
    up = FakeUpstream()
    sub = '{"type":"subscribe","channels":["ticker"]}'
    path = os.path.join(wslib.TMP, "sub.json")
    with open(path, "w") as f:
        f.write('{"op":"two"}\n')
    w = start_server("--send", sub, "--send", "@" + path,
                     "/b=" + up.url("/up"), "/c=" + up.url("/other"), stdin=False)
    got = {}
    for _ in range(2):
        u = up.accept()
        head = u.read_head()
        got[head.start.split()[1]] = (u, head)
    u, head = got["/up"]
    u.reply_101(head.get("sec-websocket-key"))
    u.expect_msg(OP_TEXT, sub.encode())
    u.expect_msg(OP_TEXT, b'{"op":"two"}')
    other, ohead = got["/other"]
    other.reply_101(ohead.get("sec-websocket-key"))
    # /c had no --send: nothing comes but wsfwd's answers.
    other.sock.settimeout(0.3)
    try:
        data = other.sock.recv(100)
        fail("route /c got %r, --send belongs to /b only" % data)
    except socket.timeout:
        pass
    # A forced reconnect: the subscription again, first thing.
    u.rst()
    u2 = up.accept(timeout=4)
    u2.handshake("/up")
    u2.expect_msg(OP_TEXT, sub.encode())
    u2.expect_msg(OP_TEXT, b'{"op":"two"}')


@test
def t_send_usage_errors():
    for args, want in ((["/a=ws://h/a", "--send", "x"], "--send must come before"),
                       (["--send", "x", "/a=-"], "--send needs an upstream"),
                       (["--send", "@/nonexistent/file", "/a=ws://h/a"], "/nonexistent/file"),
                       (["--send", "\udcff", "/a=ws://h/a"], "not UTF-8")):
        rc, out, err = run(args)
        eq(rc, 2 if "nonexistent" not in want else 1, "exit status of %s" % args)
        check(want in err, "%s: %r lacks %r" % (args, err, want))


def run(args):
    import subprocess
    p = subprocess.run([wslib.BIN] + args, capture_output=True, timeout=TIMEOUT,
                       env=dict(os.environ, PYTHONUTF8="0"))
    return p.returncode, p.stdout.decode(), p.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------- --replay

@test
def t_replay_last_n_then_live():
    up = FakeUpstream()
    w = start_server("--replay", "3", "/b=" + up.url("/up"), stdin=False)
    early = client(w, "/b")
    u = up.accept()
    u.handshake("/up")
    for i in range(1, 6):
        u.send_frame(OP_TEXT, b"m%d" % i, mask=False)
    for i in range(1, 6):
        early.expect_msg(OP_TEXT, b"m%d" % i)
    late = client(w, "/b")
    u.send_frame(OP_BIN, b"m6", mask=False)
    got = [late.recv_msg() for _ in range(4)]
    eq([(f.opcode, f.payload) for f in got],
       [(OP_TEXT, b"m3"), (OP_TEXT, b"m4"), (OP_TEXT, b"m5"), (OP_BIN, b"m6")],
       "late client's first messages")
    early.expect_msg(OP_BIN, b"m6")
    late.ping_pong()            # nothing else was queued before the pong


@test
def t_replay_stdin_and_no_clients():
    w = start_server("--replay", "2", "/a=-")
    w.feed(b"one\ntwo\nthree\n")
    w.wait_log("listening")
    time.sleep(0.3)             # read with nobody connected
    c = client(w, "/a")
    c.expect_msg(OP_TEXT, b"two")
    c.expect_msg(OP_TEXT, b"three")
    w.feed(b"four\n")
    c.expect_msg(OP_TEXT, b"four")


# ---------------------------------------------------------------- --rotate

class CounterOrigin:
    """An origin that sends one counter, as text, to every connection it has
    open every `period` seconds (as a real feed does); it answers wsfwd's
    closes and counts connections and closes."""

    def __init__(self, period=0.01):
        self.up = FakeUpstream()
        self.period = period
        self.conns = []
        self.accepted = 0
        self.closes = []
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        wslib.CLEANUP.append(self.halt)

    def halt(self):
        self.stop = True
        self.thread.join(TIMEOUT)

    def run(self):
        try:
            self.serve_all()
        except (OSError, ValueError):
            return                  # sockets closed as the test ended

    def serve_all(self):
        n = 0
        self.up.lsock.setblocking(False)
        deadline = time.monotonic() + 30          # bounded, whatever happens
        while not self.stop and time.monotonic() < deadline:
            r, _, _ = select.select([self.up.lsock] + [c.sock for c in self.conns], [], [],
                                    self.period)
            if self.up.lsock in r:
                s, _ = self.up.lsock.accept()
                s.setblocking(True)
                c = wslib.UpConn(s, self.up.port)
                c.handshake("/feed")
                self.conns.append(c)
                self.accepted += 1
            for c in list(self.conns):
                if c.sock in r:
                    try:
                        f = c.recv_frame(1)
                    except TestFail:
                        self.conns.remove(c)
                        continue
                    if f.opcode == OP_CLOSE:
                        self.closes.append(f.code)
                        c.send_frame(OP_CLOSE, f.payload, mask=False)
                        self.conns.remove(c)
            n += 1
            for c in list(self.conns):
                try:
                    c.send_frame(OP_TEXT, b"%d" % n, mask=False)
                except OSError:
                    self.conns.remove(c)


@test
def t_rotate_without_gap():
    o = CounterOrigin()
    w = start_server("--rotate", "1", "/b=" + o.up.url("/feed"), stdin=False)
    c = client(w, "/b")
    seen = []
    deadline = time.monotonic() + 3.6
    while time.monotonic() < deadline:
        seen.append(int(c.recv_msg().payload))
    o.halt()
    check(o.accepted >= 3, "%d upstream connections in 3.6 s with --rotate 1" % o.accepted)
    w.wait_log("rotated to the second connection", count=2)
    check(o.closes.count(1000) >= 2, "old connections closed with %r" % o.closes)
    gaps = [(a, b) for a, b in zip(seen, seen[1:]) if b > a + 1]
    back = [(a, b) for a, b in zip(seen, seen[1:]) if b < a]
    check(not gaps, "gaps in the counter: %s" % gaps[:5])
    check(not back, "the counter went back: %s" % back[:5])
    check(len(seen) > 100, "only %d messages" % len(seen))


# ---------------------------------------------------------------- --tunnel

def tunnel_client(w, path="/t", headers=None):
    ws = WS(w.port)
    req, key = build_request(w.port, path, headers=headers)
    ws.send_raw(req)
    head = ws.read_head()
    eq(head.status, 101, "status of the tunnel's upgrade")
    check_101(head, key)
    return ws, head


@test
def t_tunnel_both_ways():
    o = EchoOrigin()
    w = start_server("--tunnel", "/t=" + o.up.url("/echo"), stdin=False)
    a, _ = tunnel_client(w)
    b, _ = tunnel_client(w)
    o.wait_conns(2)
    big = os.urandom(200000)
    a.send_frame(OP_TEXT, b"hello")
    a.expect_msg(OP_TEXT, b"hello")
    b.send_frame(OP_BIN, b"\x00\x01")
    b.expect_msg(OP_BIN, b"\x00\x01")
    a.send_frame(OP_BIN, big[:1000], fin=False)
    a.send_frame(0, big[1000:], fin=True)
    a.expect_msg(OP_BIN, big)
    # Pings go through: the origin answers them.
    a.send_frame(OP_PING, b"p1")
    f = a.recv_frame()
    eq((f.opcode, f.payload), (OP_PONG, b"p1"), "the pong to a relayed ping")
    o.wait_record(None, lambda r: r[0] == OP_PING and r[1] == b"p1")
    # The origin pings the client: relayed, and the client's pong goes back.
    c0 = [c for c in o.conns]
    for conn, head, recs in c0:
        conn.send_frame(OP_PING, b"from-origin", mask=False)
    for ws in (a, b):
        f = ws.recv_frame()
        eq((f.opcode, f.payload), (OP_PING, b"from-origin"), "relayed ping")
        ws.send_frame(OP_PONG, b"from-origin")
    for i in range(2):
        o.wait_record(i, lambda r: r[0] == OP_PONG and r[1] == b"from-origin")
    # The client closes with a code and a reason: the origin gets both.
    a.send_frame(OP_CLOSE, close_payload(4001, b"bye now"))
    a.expect_close(4001)
    rec = None
    deadline = time.monotonic() + TIMEOUT
    while rec is None and time.monotonic() < deadline:
        for conn, head, recs in o.conns:
            for r in recs:
                if r[0] == OP_CLOSE:
                    rec = r
        time.sleep(0.01)
    check(rec is not None, "the origin got no close")
    eq(rec[1], close_payload(4001, b"bye now"), "close relayed to the origin")
    # b is untouched.
    b.send_frame(OP_TEXT, b"still here")
    b.expect_msg(OP_TEXT, b"still here")


def tunnel_pending():
    """A tunnel route, a client whose upgrade waits for the origin, and
    the origin's end of it: (origin, wsfwd, client, its key, upstream)."""
    up = FakeUpstream()
    w = start_server("--tunnel", "/t=" + up.url("/x"), stdin=False)
    ws = WS(w.port)
    req, key = build_request(w.port, "/t")
    ws.send_raw(req)
    return up, w, ws, key, up.accept()


@test
def t_tunnel_origin_closes_with_code():
    up, w, ws, key, u = tunnel_pending()
    u.handshake("/x")
    check_101(ws.read_head(), key)
    u.send_frame(OP_TEXT, b"last words", mask=False)
    u.send_frame(OP_CLOSE, close_payload(4002, b"maintenance"), mask=False)
    ws.expect_msg(OP_TEXT, b"last words")
    f = ws.recv_frame()
    eq((f.opcode, f.payload), (OP_CLOSE, close_payload(4002, b"maintenance")),
       "the origin's close, relayed")
    ws.send_frame(OP_CLOSE, close_payload(4002))
    f = u.recv_frame()
    eq(f.opcode, OP_CLOSE, "wsfwd answers the origin's close")
    no_connection(up, 1.5)      # a tunnel does not reconnect


@test
def t_tunnel_refusal_is_502():
    up, w, ws, key, u = tunnel_pending()
    u.read_request("/x")
    u.send_raw(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    eq(ws.read_head().status, 502, "client's status after the origin's 403")
    w.wait_log("handshake refused: HTTP 403")
    check(up.url() not in body_of(ws).decode(), "the 502 names the origin")
    # A dead origin: 502 too.
    dead = FakeUpstream()
    port = dead.port
    dead.lsock.close()
    w2 = start_server("--tunnel", "/t=ws://127.0.0.1:%d/x" % port, stdin=False)
    st, ws2 = status_of(w2, "/t")
    eq(st, 502, "status with nobody at the origin")


@test
def t_tunnel_send_first_and_subprotocol():
    o = EchoOrigin(pick_protocol="v2.chat")
    w = start_server("--tunnel", "--send", "SUBSCRIBE", "/t=" + o.up.url("/e"), stdin=False)
    ws, head = tunnel_client(w, headers={"Sec-WebSocket-Protocol": "v1.chat, v2.chat"})
    eq(head.get("sec-websocket-protocol"), "v2.chat", "subprotocol chosen by the origin")
    ws.send_frame(OP_TEXT, b"mine")
    ws.expect_msg(OP_TEXT, b"SUBSCRIBE")     # echoed: it went first
    ws.expect_msg(OP_TEXT, b"mine")
    conn, uhead, recs = o.wait_conns(1)[0]
    eq(uhead.get("sec-websocket-protocol"), "v1.chat, v2.chat", "offer passed on")
    check(uhead.get("origin") is None and uhead.get("x-forwarded-for") is None,
          "client headers leaked upstream")


@test
def t_tunnel_client_rate():
    o = EchoOrigin()
    w = start_server("--tunnel", "--client-rate", "5", "/t=" + o.up.url("/e"), stdin=False)
    ws, _ = tunnel_client(w)
    o.wait_conns(1)
    n = 12
    for i in range(n):
        ws.send_frame(OP_TEXT, b"m%d" % i)
    for i in range(n):
        ws.expect_msg(OP_TEXT, b"m%d" % i, timeout=4)
    recs = [r for r in o.conns[0][2] if r[0] == OP_TEXT]
    eq([r[1] for r in recs], [b"m%d" % i for i in range(n)], "order at the origin")
    times = [r[2] for r in recs]
    for i in range(n - 5):
        check(times[i + 5] - times[i] >= 0.95,
              "messages %d and %d reached the origin %.3f s apart (--client-rate 5)"
              % (i, i + 5, times[i + 5] - times[i]))
    check(times[-1] - times[0] < 3.5, "12 messages took %.2f s" % (times[-1] - times[0]))
    eq(w.log().count("over --client-rate"), 1, "times the rate was logged")


@test
def t_tunnel_prefix_path():
    o = EchoOrigin(first=b"hi")
    w = start_server("--tunnel", "/ws/*=" + o.up.url("/up/*"), stdin=False)
    ws, _ = tunnel_client(w, "/ws/a/b?c=d")
    ws.expect_msg(OP_TEXT, b"hi")
    eq(o.wait_conns(1)[0][1].start, "GET /up/a/b?c=d HTTP/1.1", "request line upstream")


@test
def t_tunnel_origin_unreachable_at_once_with_pipelined_frame():
    # connect() fails inside the upgrade (255.255.255.255): 502, and the
    # frame that came with the request must not be touched after that.
    w = start_server("--tunnel", "/t=ws://255.255.255.255:80/x", stdin=False)
    ws = WS(w.port)
    req, key = build_request(w.port, "/t")
    ws.send_raw(req + wslib.encode_frame(OP_TEXT, b"early"))
    eq(ws.read_head().status, 502, "status when the origin cannot be reached")
    check(w.alive(), "wsfwd died")


@test
def t_tunnel_rate_counts_send_and_keeps_close_order():
    o = EchoOrigin()
    w = start_server("--tunnel", "--client-rate", "5", "--send", "SUB",
                     "/t=" + o.up.url("/e"), stdin=False)
    ws, _ = tunnel_client(w)
    o.wait_conns(1)
    for i in range(6):
        ws.send_frame(OP_TEXT, b"m%d" % i)
    ws.send_frame(OP_CLOSE, close_payload(4000, b"done"))
    o.wait_record(0, lambda r: r[0] == OP_CLOSE, timeout=4)
    recs = o.conns[0][2]
    eq([(r[0], r[1]) for r in recs],
       [(OP_TEXT, b"SUB")] + [(OP_TEXT, b"m%d" % i) for i in range(6)]
       + [(OP_CLOSE, close_payload(4000, b"done"))], "what the origin got, in order")
    times = [r[2] for r in recs]
    for i in range(len(times) - 5):
        check(times[i + 5] - times[i] >= 0.95, "frames %d and %d %.3f s apart "
              "(--client-rate 5, --send counted)" % (i, i + 5, times[i + 5] - times[i]))


@test
def t_rotate_successor_does_not_rotate_itself():
    # An origin that never sends: the successor never takes over, and it
    # must not open a third connection of its own.
    up = FakeUpstream()
    w = start_server("--rotate", "1", "/b=" + up.url("/q"), stdin=False)
    up.accept().handshake("/q")
    up.accept(timeout=3).handshake("/q")
    no_connection(up, 2.5)


@test
def t_prefix_429_retried_after_retry_after():
    up, w, c = prefix_refused("busy", "429 Too Many Requests", b"Retry-After: 2\r\n")
    t0 = time.monotonic()
    u2 = up.accept(timeout=4)
    check(time.monotonic() - t0 >= 1.8, "retried %.2f s after a 429 with "
          "Retry-After: 2" % (time.monotonic() - t0))
    u2.handshake("/up/busy")
    u2.send_frame(OP_TEXT, b"finally", mask=False)
    c.expect_msg(OP_TEXT, b"finally")


@test
def t_prefix_idle_feed_makes_room():
    up = FakeUpstream()
    w = prefix_server(up, "--max-upstreams", "1", "--linger", "30")
    a = client(w, "/ws/a")
    up.accept().handshake("/up/a")
    a.close()
    w.wait_log("disconnected from /ws/a")
    client(w, "/ws/b")          # /ws/a lingers empty: it goes instead of a 503
    up.accept().handshake("/up/b")


@test
def t_tunnel_bad_bytes_in_path_400():
    w = start_server("--tunnel", "--stats", "/stats", "/t=ws://127.0.0.1:1/x", stdin=False)
    ws = WS(w.port)
    ws.send_raw(b"GET /t?a\tb\xff HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n")
    st = ws.read_head().status
    check(st == 400, "status %d for a control byte in the query" % st)
    json.loads(http_get(w.port, "/stats")[2])


# ---------------------------------------------------------------- access control

@test
def t_origin_allowed_list():
    w = start_server("--origin", "https://a.example", "--origin", "https://b.example", "/a=-")
    expect_refused(w, "/a", 403)
    expect_refused(w, "/a", 403, {"Origin": "https://evil.example"})
    st, ws = status_of(w, "/a", {"Origin": "https://b.example"})
    eq(st, 101, "allowed Origin")
    w.feed(b"hi\n")
    ws.expect_msg(OP_TEXT, b"hi")


@test
def t_token_query_and_bearer_never_forwarded():
    up = FakeUpstream()
    w = start_server("--token", "s3cret", "/ws/*=" + up.url("/up/*"), stdin=False)
    expect_refused(w, "/ws/a", 401)
    expect_refused(w, "/ws/a?token=wrong", 401)
    expect_refused(w, "/ws/a?token=s3cre", 401)
    expect_refused(w, "/ws/a", 401, {"Authorization": "Bearer nope"})
    st, ws = status_of(w, "/ws/a?x=1&token=s3cret&y=2")
    eq(st, 101, "?token=")
    up.accept().handshake("/up/a?x=1&y=2")
    st, ws2 = status_of(w, "/ws/a?x=1&y=2", {"Authorization": "Bearer s3cret"})
    eq(st, 101, "Authorization: Bearer")
    no_connection(up, 0.3)      # the same feed: the token is not part of it
    check("s3cret" not in w.log(), "the token is in the log")


@test
def t_max_per_ip():
    w = start_server("--max-per-ip", "2", "/a=-")
    c1 = client(w, "/a")
    c2 = client(w, "/a")
    expect_refused(w, "/a", 503)
    c1.close()
    w.wait_log("disconnected from /a")
    c3 = client(w, "/a")
    w.feed(b"x\n")
    c2.expect_msg(OP_TEXT, b"x")
    c3.expect_msg(OP_TEXT, b"x")


# ---------------------------------------------------------------- --stats

def http_get(port, target, headers=()):
    """(status, headers dict, body) of a plain HTTP GET."""
    s = socket.create_connection((HOST, port), timeout=TIMEOUT)
    wslib.SOCKS.append(s)
    req = "GET %s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n" % (
        target, HOST, port, "".join("%s: %s\r\n" % h for h in headers))
    s.sendall(req.encode())
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = dict((k.lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:]))
    check(int(hdrs.get("content-length", -1)) == len(body),
          "Content-Length %s, body %d bytes" % (hdrs.get("content-length"), len(body)))
    return int(lines[0].split()[1]), hdrs, body


def stats_feed(doc, route, path):
    for r in doc["routes"]:
        if r["path"] == route:
            for f in r["feeds"]:
                if f["path"] == path:
                    return f
    fail("no feed %s of route %s in %s" % (path, route, doc))


@test
def t_stats_json_prometheus_and_sigusr1():
    up = FakeUpstream()
    w = start_server("--stats", "/stats", "/b=" + up.url("/up"),
                     "/ws/*=" + up.url("/p/*"), stdin=False)
    u = up.accept()
    u.handshake("/up")
    c1, c2 = client(w, "/b"), client(w, "/b")
    msgs = [b"x" * 10, b"y" * 200, b"z" * 70000]
    for m in msgs:
        u.send_frame(OP_BIN, m, mask=False)
    for c in (c1, c2):
        for m in msgs:
            c.expect_msg(OP_BIN, m)
    p = client(w, "/ws/q?z=1")
    up.accept().handshake("/p/q?z=1")
    w.wait_log("upstream /ws/q?z=1: connected")
    st, hdrs, body = http_get(w.port, "/stats")
    eq(st, 200, "status of GET /stats")
    eq(hdrs.get("content-type"), "application/json", "Content-Type")
    doc = json.loads(body)
    f = stats_feed(doc, "/b", "/b")
    frames = sum(len(m) + (2 if len(m) < 126 else 4 if len(m) < 65536 else 10) for m in msgs)
    eq((f["state"], f["reconnects"], f["messages_in"], f["bytes_in"], f["messages_out"],
        f["bytes_out"], f["clients"], f["slow_clients_dropped"]),
       ("open", 0, 3, sum(map(len, msgs)), 6, 2 * frames, 2, 0), "feed /b")
    check(f["connected_since"].endswith("Z"), "connected_since %r" % f["connected_since"])
    eq(doc["clients"], 3, "clients in all")
    check(doc["rss_kib"] > 0, "rss_kib %r" % doc["rss_kib"])
    q = stats_feed(doc, "/ws/*", "/ws/q?z=1")
    eq((q["state"], q["clients"]), ("open", 1), "prefix feed")
    # A reconnect is counted.
    u.rst()
    up.accept(timeout=4).handshake("/up")
    w.wait_log("upstream /b: connected", count=2)
    doc = json.loads(http_get(w.port, "/stats?x=1")[2])
    eq(stats_feed(doc, "/b", "/b")["reconnects"], 1, "reconnects after one")
    st, hdrs, text = http_get(w.port, "/stats?format=prometheus")
    check(hdrs.get("content-type", "").startswith("text/plain"), "Prometheus Content-Type")
    text = text.decode()
    for line in ('wsfwd_feed_messages_in_total{route="/b",path="/b"} 3',
                 'wsfwd_feed_clients{route="/ws/*",path="/ws/q?z=1"} 1',
                 'wsfwd_feed_reconnects_total{route="/b",path="/b"} 1',
                 '# TYPE wsfwd_feed_bytes_out_total counter'):
        check(line in text.splitlines(), "%r not in the Prometheus text" % line)
    st, hdrs, text2 = http_get(w.port, "/stats", [("Accept", "text/plain")])
    check(b"wsfwd_feed_up{" in text2, "Accept: text/plain gave %r" % text2[:80])
    w.proc.send_signal(10)      # SIGUSR1
    w.wait_log('stats /b: {"path":"/b","state":"open",')
    line = [ln for ln in w.log().splitlines() if 'stats /b: {' in ln][-1]
    f = json.loads(line.split("stats /b: ", 1)[1])
    eq((f["reconnects"], f["messages_in"], f["clients"]), (1, 3, 2), "SIGUSR1 figures")
    p.close()


@test
def t_stats_needs_token():
    w = start_server("--token", "tok", "--stats", "/st", "/a=-")
    eq(http_get(w.port, "/st")[0], 401, "status without token")
    eq(http_get(w.port, "/st?token=tok")[0], 200, "status with ?token=")
    eq(http_get(w.port, "/st", [("Authorization", "Bearer tok")])[0], 200,
       "status with Bearer")
    eq(http_get(w.port, "/nope")[0], 401, "a GET elsewhere, without token")
    eq(http_get(w.port, "/nope?token=tok")[0], 404, "a GET elsewhere, with token")


if __name__ == "__main__":
    sys.exit(wslib.main(sys.argv, "BIN [TEST...]", "wsfwd-routing.", alarm=40))
