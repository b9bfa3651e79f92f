#!/usr/bin/env python3
"""Black-box protocol tests for wsfwd.

usage: python3 tests/proto.py ./wsfwd [TEST...]

Every test starts real wsfwd processes on 127.0.0.1 and talks to them over
raw sockets: as a WebSocket client (class WS), as the upstream origin that
wsfwd connects to (class FakeUpstream), or as the server for `--cat`.  All
waits are bounded (socket timeouts <= 5 s, log polls with deadlines), every
process is stopped by PID (SIGTERM, then SIGKILL) when its test ends, and
wsfwd's stderr goes to a log file in $WSFWD_LOGDIR (or a private temporary
directory) that is searched for sanitizer reports after each test.  The
helpers and the runner are in wslib.py, shared with tls.py.

Output: one line per test, "ok - NAME" or "FAIL - NAME: reason", then a last
line "N passed, M failed".  Diagnostics (log tails) go to stderr.
"""

import base64
import datetime
import os
import random
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wslib  # noqa: E402
from wslib import (  # noqa: E402
    HOST, TIMEOUT, OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG, SOCKS,
    TestFail, Timeout, Closed, fail, check, eq, short, first_diff,
    accept_key, new_key, encode_frame, close_payload, HttpHead, build_request, check_101,
    Peer, WS, free_port, new_log, Wsfwd, test, add,
    FakeUpstream, UpConn, start_server, client, attempt, sort_out)

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")


def assert_still_serving(w, path="/a"):
    """wsfwd is alive and a new client on a `-` route gets a fed line."""
    check(w.alive(), "wsfwd exited (status %s)" % w.proc.returncode)
    c = client(w, path)
    line = "still serving %d" % random.randrange(1 << 30)
    w.feed(line.encode() + b"\n")
    c.expect_msg(OP_TEXT, line.encode())


def run_cmd(args, timeout=TIMEOUT, stdin=subprocess.DEVNULL):
    """Run BIN ARGS to completion (bounded); return (rc, stdout, stderr)."""
    path = new_log("cmd") + ".log"
    p = subprocess.Popen([wslib.BIN] + args, stdin=stdin, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.terminate()
        try:
            p.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
        fail("`wsfwd %s` still running after %.1f s" % (" ".join(args), timeout))
    with open(path, "wb") as f:
        f.write(err)
    return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


# ---------------------------------------------------------------- handshake

@test
def t_hs_valid():
    w = start_server("/a=-")
    ws = WS(w.port)
    head = ws.handshake("/a")
    check(not ws.buf, "unexpected bytes after the 101: %s" % short(bytes(ws.buf)))
    w.wait_client(ws, "/a")
    ws.ping_pong()


@test
def t_hs_header_case_and_tokens():
    w = start_server("/a=-")
    ws = WS(w.port)
    req, key = build_request(w.port, "/a", headers={
        "Host": None, "Upgrade": None, "Connection": None,
        "host": "127.0.0.1:%d" % w.port, "UPGRADE": "WebSocket",
        "connection": "keep-alive, Upgrade", "User-Agent": "proto.py"})
    ws.send_raw(req)
    check_101(ws.read_head(), key)
    ws.ping_pong()


@test
def t_hs_rfc_sample_key():
    # RFC 6455 section 1.3: dGhlIHNhbXBsZSBub25jZQ== -> s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
    w = start_server("/a=-")
    ws = WS(w.port)
    req, key = build_request(w.port, "/a", key="dGhlIHNhbXBsZSBub25jZQ==")
    ws.send_raw(req)
    head = ws.read_head()
    eq(head.get("sec-websocket-accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "accept for RFC key")


@test
def t_hs_query_ignored():
    w = start_server("/a=-")
    ws = WS.open(w.port, "/a?x=1&y=2")
    w.wait_log("%s:%d connected to /a" % (HOST, ws.lport))
    w.feed(b"q\n")
    ws.expect_msg(OP_TEXT, b"q")


def expect_status(status, path="/a", raw=None, headers=None, method="GET",
                  version="HTTP/1.1", key=None, need_header=None):
    w = start_server("/a=-")
    ws = WS(w.port)
    if raw is None:
        raw, _ = build_request(w.port, path, method, version, key, headers)
    try:
        ws.send_raw(raw)
    except OSError:
        pass                    # oversized request: wsfwd may stop reading early
    head = ws.read_head()
    allowed = status if isinstance(status, tuple) else (status,)
    check(head.status in allowed, "HTTP status: got %r, want %s" % (
        head.start, " or ".join(map(str, allowed))))
    check(head.start.startswith("HTTP/1.1 "), "status line %r" % head.start)
    if need_header:
        eq(head.get(need_header[0]), need_header[1], need_header[0] + " header")
    ws.wait_closed()
    assert_still_serving(w)


add("hs_404_unknown_path", expect_status, 404, path="/nope")
add("hs_404_prefix_only", expect_status, 404, path="/ab")
add("hs_400_no_host", expect_status, 400, headers={"Host": None})
add("hs_400_no_upgrade", expect_status, 400, headers={"Upgrade": None})
add("hs_400_bad_upgrade", expect_status, 400, headers={"Upgrade": "h2c"})
add("hs_400_no_connection", expect_status, 400, headers={"Connection": None})
add("hs_400_connection_no_upgrade", expect_status, 400, headers={"Connection": "keep-alive"})
add("hs_400_no_key", expect_status, 400, headers={"Sec-WebSocket-Key": None})
add("hs_400_key_12_bytes", expect_status, 400, key=new_key(12))
add("hs_400_key_not_base64", expect_status, 400, key="!!!!!!!!!!!!!!!!!!!!!!==")
add("hs_400_http10", expect_status, 400, version="HTTP/1.0")
add("hs_426_version_8", expect_status, 426, headers={"Sec-WebSocket-Version": "8"},
    need_header=("sec-websocket-version", "13"))
add("hs_400_no_version", expect_status, (400, 426), headers={"Sec-WebSocket-Version": None})
add("hs_405_post", expect_status, 405, method="POST")
add("hs_400_oversized_head", expect_status, 400,
    raw=b"GET /a HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n")
add("hs_400_garbage", expect_status, 400, raw=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\r\n\r\n")


@test
def t_hs_byte_at_a_time():
    w = start_server("/a=-")
    ws = WS(w.port)
    req, key = build_request(w.port, "/a")
    for i in range(len(req)):
        ws.send_raw(req[i:i + 1])
        time.sleep(0.002)
    check_101(ws.read_head(), key)
    w.wait_client(ws, "/a")
    ping = encode_frame(OP_PING, b"bytewise")
    for i in range(len(ping)):
        ws.send_raw(ping[i:i + 1])
        time.sleep(0.002)
    f = ws.recv_frame()
    eq((f.opcode, f.payload), (OP_PONG, b"bytewise"), "reply to a bytewise ping")


@test
def t_hs_pipelined_frames():
    w = start_server("/a=-")
    ws = WS(w.port)
    req, key = build_request(w.port, "/a")
    ws.send_raw(req + encode_frame(OP_PING, b"one") + encode_frame(OP_PING, b"two"))
    check_101(ws.read_head(), key)
    for p in (b"one", b"two"):
        f = ws.recv_frame()
        eq((f.opcode, f.payload), (OP_PONG, p), "pong to pipelined ping")


@test
def t_hs_idle_timeout():
    w = start_server("/a=-")
    idle = WS(w.port)
    t0 = time.monotonic()
    good = client(w)            # an idle socket must not block others
    good.ping_pong()
    idle.wait_closed(timeout=15)
    took = time.monotonic() - t0
    check(5 <= took <= 13, "idle connection closed after %.1f s, want ~10 s" % took)
    good.ping_pong()


@test
def t_hs_max_clients():
    w = start_server("--max-clients", "1", "/a=-")
    c1 = client(w)
    c2 = WS(w.port)
    req, _ = build_request(w.port, "/a")
    c2.send_raw(req)
    head = c2.read_head()
    eq(head.status, 503, "status for the second client (%s)" % head.start)
    c2.wait_closed()
    c1.ping_pong()
    c1.send_frame(OP_CLOSE, close_payload(1000))
    c1.expect_close(1000)
    w.wait_log("disconnected from /a")
    c3 = client(w)              # the slot is free again
    c3.ping_pong()


# ---------------------------------------------------------------- client frames

def expect_protocol_close(data, code, opts=()):
    """Send raw bytes after the handshake; expect close `code`, then TCP close."""
    w = start_server(*opts, "/a=-")
    ws = client(w)
    try:
        ws.send_raw(data)
    except OSError:
        pass
    ws.expect_close(code)
    w.wait_log("%s:%d disconnected from /a" % (HOST, ws.lport))
    assert_still_serving(w)


def text_frame(payload):
    return encode_frame(OP_TEXT, payload)


add("fr_unmasked", expect_protocol_close, encode_frame(OP_TEXT, b"hi", mask=False), 1002)
add("fr_unmasked_ping", expect_protocol_close, encode_frame(OP_PING, b"hi", mask=False), 1002)
for _rsv in (4, 2, 1):
    add("fr_rsv%d" % {4: 1, 2: 2, 1: 3}[_rsv], expect_protocol_close,
        encode_frame(OP_TEXT, b"hi", rsv=_rsv), 1002)
for _op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
    add("fr_opcode_%x" % _op, expect_protocol_close, encode_frame(_op, b"x"), 1002)
add("fr_control_126", expect_protocol_close, encode_frame(OP_PING, b"p" * 126), 1002)
add("fr_close_126", expect_protocol_close,
    encode_frame(OP_CLOSE, close_payload(1000, b"r" * 124)), 1002)
add("fr_ping_fragmented", expect_protocol_close, encode_frame(OP_PING, b"x", fin=False), 1002)
add("fr_continuation_first", expect_protocol_close, encode_frame(OP_CONT, b"x"), 1002)
add("fr_text_during_fragments", expect_protocol_close,
    encode_frame(OP_TEXT, b"a", fin=False) + encode_frame(OP_TEXT, b"b"), 1002)
add("fr_binary_during_fragments", expect_protocol_close,
    encode_frame(OP_BIN, b"a", fin=False) + encode_frame(OP_BIN, b"b"), 1002)
add("fr_close_1_byte", expect_protocol_close, encode_frame(OP_CLOSE, b"\x03"), 1002)
for _code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535):
    add("fr_close_code_%d" % _code, expect_protocol_close,
        encode_frame(OP_CLOSE, close_payload(_code)), 1002)
add("fr_close_reason_bad_utf8", expect_protocol_close,
    encode_frame(OP_CLOSE, close_payload(1000, b"ok\xff")), 1007)
for _name, _bad in (("ff", b"\xff"), ("overlong", b"\xc0\xaf"),
                    ("overlong3", b"\xe0\x80\xaf"), ("surrogate", b"\xed\xa0\x80"),
                    ("above_10ffff", b"\xf4\x90\x80\x80"), ("truncated", b"ok\xe2\x82"),
                    ("lone_continuation", b"a\x80b")):
    add("fr_utf8_" + _name, expect_protocol_close, text_frame(b"x" + _bad), 1007)
add("fr_utf8_fragments_surrogate", expect_protocol_close,
    encode_frame(OP_TEXT, b"ab\xed", fin=False) + encode_frame(OP_CONT, b"\xa0\x80"), 1007)
add("fr_utf8_fragments_truncated", expect_protocol_close,
    encode_frame(OP_TEXT, b"ab", fin=False) + encode_frame(OP_CONT, b"\xe2\x82", fin=False)
    + encode_frame(OP_CONT, b""), 1007)
add("fr_too_big", expect_protocol_close, text_frame(b"x" * 2000), 1009, ("--max-message", "1K"))
add("fr_too_big_binary", expect_protocol_close, encode_frame(OP_BIN, os.urandom(70000)), 1009,
    ("--max-message", "64K"))
add("fr_too_big_fragments", expect_protocol_close,
    encode_frame(OP_TEXT, b"y" * 500, fin=False) + encode_frame(OP_CONT, b"y" * 500, fin=False)
    + encode_frame(OP_CONT, b"y" * 500), 1009, ("--max-message", "1K"))
add("fr_len64_msb", expect_protocol_close,
    bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 63) + os.urandom(4), 1002)


def expect_close_echo(payload, want):
    w = start_server("/a=-")
    ws = client(w)
    ws.send_frame(OP_CLOSE, payload)
    f = ws.recv_frame()
    eq(f.opcode, OP_CLOSE, "reply opcode")
    if want is None:
        check(f.payload in (b"", close_payload(1000)) or f.code == 1000,
              "reply to an empty close: %r" % f)
    else:
        eq(f.code, want, "echoed close code")
    ws.expect_eof()
    w.wait_log("%s:%d disconnected from /a" % (HOST, ws.lport))
    assert_still_serving(w)


for _code in (1000, 1001, 1003, 1011, 3000, 4999):
    add("fr_close_echo_%d" % _code, expect_close_echo, close_payload(_code, b"bye"), _code)
add("fr_close_echo_empty", expect_close_echo, b"", None)
add("fr_close_echo_utf8_reason", expect_close_echo,
    close_payload(1000, "fin \u20ac".encode()), 1000)


def expect_stays_open(data, opts=()):
    w = start_server(*opts, "/a=-")
    ws = client(w)
    ws.send_raw(data)
    ws.ping_pong()
    w.feed(b"after\n")
    ws.expect_msg(OP_TEXT, b"after")


_EURO = "\u20ac".encode()               # e2 82 ac
_CLEF = "\U0001d11e".encode()           # f0 9d 84 9e
add("fr_utf8_valid", expect_stays_open, text_frame("h\u00e9llo \u20ac \U0001d11e".encode()))
add("fr_utf8_split_codepoint", expect_stays_open,
    encode_frame(OP_TEXT, b"a" + _EURO[:1], fin=False)
    + encode_frame(OP_CONT, _EURO[1:2], fin=False)
    + encode_frame(OP_CONT, _EURO[2:] + _CLEF[:3], fin=False)
    + encode_frame(OP_CONT, _CLEF[3:] + b"z"))
add("fr_binary_not_utf8", expect_stays_open, encode_frame(OP_BIN, b"\xff\xfe\xc0\xaf"))
add("fr_binary_fragments", expect_stays_open,
    encode_frame(OP_BIN, b"\xff", fin=False) + encode_frame(OP_CONT, b"\xfe"))
add("fr_empty_text", expect_stays_open, text_frame(b""))
add("fr_unsolicited_pong", expect_stays_open, encode_frame(OP_PONG, b"unasked"))
add("fr_len16_and_len64", expect_stays_open,
    text_frame(b"m" * 200) + text_frame(b"n" * 70000) + encode_frame(OP_BIN, os.urandom(65535)))
add("fr_at_max_message", expect_stays_open,
    text_frame(b"x" * 1000) + encode_frame(OP_TEXT, b"y" * 500, fin=False) + encode_frame(OP_CONT, b"y" * 500),
    ("--max-message", "1K"))


def ping_echo(payload):
    w = start_server("/a=-")
    ws = client(w)
    ws.ping_pong(payload)
    ws.ping_pong(payload)


add("fr_ping_empty", ping_echo, b"")
add("fr_ping_payload", ping_echo, b"hello")
add("fr_ping_125", ping_echo, bytes(range(125)))


@test
def t_fr_ping_between_fragments():
    w = start_server("/a=-")
    ws = client(w)
    ws.send_raw(encode_frame(OP_TEXT, b"ab", fin=False) + encode_frame(OP_PING, b"mid")
                + encode_frame(OP_CONT, b"cd"))
    f = ws.recv_frame()
    eq((f.opcode, f.payload), (OP_PONG, b"mid"), "reply to ping between fragments")
    ws.ping_pong()


@test
def t_fr_many_pings_one_segment():
    # RFC 6455 5.5.3 lets an endpoint answer only the most recent of several
    # pings, so pongs may be skipped, but those sent must keep the pings'
    # order, the last must answer ping 49, and none may come later: a final
    # ping "end", sent once pong 49 is in, must get the next pong.
    w = start_server("/a=-")
    ws = client(w)
    ws.send_raw(b"".join(encode_frame(OP_PING, b"%d" % i) for i in range(50)))
    seen = []
    while b"end" not in seen:
        try:
            f = ws.recv_frame()
        except (Timeout, Closed) as e:
            fail("pongs so far %s: %s" % (seen, e))
        eq(f.opcode, OP_PONG, "reply opcode")
        seen.append(f.payload)
        if f.payload == b"49":
            ws.send_frame(OP_PING, b"end")
    got = [int(p) for p in seen[:-1]]
    check(got and got == sorted(set(got)) and got[-1] == 49,
          "pongs in the order %s" % " ".join(p.decode() for p in seen))


# ---------------------------------------------------------------- fan-out

def read_msgs(ws, n, timeout=10):
    deadline = time.monotonic() + timeout
    out = []
    for i in range(n):
        try:
            out.append(ws.recv_msg(max(0.01, deadline - time.monotonic())))
        except (Timeout, Closed) as e:
            fail("client got %d of %d messages: %s" % (i, n, e))
    return out


@test
def t_fo_order_two_clients():
    w = start_server("/a=-")
    a, b = client(w), client(w)
    lines = [("line %d " % i).encode() + os.urandom(8).hex().encode() for i in range(1000)]
    w.feed(b"".join(l + b"\n" for l in lines))
    for name, ws in (("first", a), ("second", b)):
        got = read_msgs(ws, len(lines))
        for i, f in enumerate(got):
            if (f.opcode, f.payload) != (OP_TEXT, lines[i]):
                fail("%s client message %d: got %r, want %s" % (name, i, f, short(lines[i])))


@test
def t_fo_many_clients_cat_and_raw():
    w = start_server("/a=-")
    url = "ws://%s:%d/a" % (HOST, w.port)
    outs, cats = [], []
    for i in range(3):
        path = os.path.join(wslib.LOGDIR, "%s.cat%d.out" % (wslib.CURRENT, i))
        with open(path, "wb") as f:
            cats.append(Wsfwd(["--cat", url], stdout=f, role="cat%d" % i))
        outs.append(path)
    raws = [client(w), client(w)]
    w.wait_log("connected to /a", count=5)
    lines = [("msg %04d " % i).encode() + os.urandom(6).hex().encode() for i in range(1000)]
    big = bytes(random.choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(1 << 20))
    lines.append(big)
    want = b"".join(l + b"\n" for l in lines)
    w.feed(want)
    for ws in raws:
        got = read_msgs(ws, len(lines), timeout=15)
        for i, f in enumerate(got):
            if (f.opcode, f.payload) != (OP_TEXT, lines[i]):
                fail("raw client message %d: got %r, want %s" % (i, f, short(lines[i])))
    deadline = time.monotonic() + 10
    for path in outs:
        while os.path.getsize(path) < len(want) and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(path, "rb") as f:
            got = f.read()
        if got != want:
            fail("%s: %d bytes, want %d; first difference at byte %d" % (
                os.path.basename(path), len(got), len(want), first_diff(got, want)))
    w.proc.stdin.close()        # EOF: close 1000 to everyone, then exit 0
    for ws in raws:
        ws.expect_close(1000, reply=True)
    for c in cats:
        eq(c.wait_exit(5), 0, "%s exit status after close 1000" % c.role)
    eq(w.wait_exit(5), 0, "server exit status after stdin EOF")


@test
def t_fo_stdin_eof():
    w = start_server("/a=-")
    a, b = client(w), client(w)
    w.feed(b"last\n")
    w.proc.stdin.close()
    for ws in (a, b):
        ws.expect_msg(OP_TEXT, b"last")
        ws.expect_close(1000, reply=True)
    w.wait_log("route /a: end of input")
    eq(w.wait_exit(5), 0, "exit status after stdin EOF")


@test
def t_fo_stdin_eof_partial_line():
    # "each line without its newline": a final unterminated line is still a line
    w = start_server("/a=-")
    ws = client(w)
    w.feed(b"one\ntwo")
    ws.expect_msg(OP_TEXT, b"one")
    w.proc.stdin.close()
    f = ws.recv_frame()
    if f.opcode == OP_TEXT:
        eq(f.payload, b"two", "unterminated last line")
        f = ws.recv_frame()
    eq(f.code, 1000, "close code after EOF (%r)" % f)
    eq(w.wait_exit(5), 0, "exit status after stdin EOF")


@test
def t_fo_routes_are_separate():
    up = FakeUpstream()
    w = start_server("-", up.url("/up?k=v"))   # paths "/" and "/up"
    root, sub = client(w, "/"), client(w, "/up")
    u = up.accept_ws("/up?k=v")
    w.wait_log("upstream /up: connected to %s" % up.url("/up?k=v"))
    w.feed(b"from stdin\n")
    u.send_frame(OP_TEXT, b"from upstream")
    root.expect_msg(OP_TEXT, b"from stdin")
    sub.expect_msg(OP_TEXT, b"from upstream")
    root.ping_pong()            # and nothing else is queued for either
    sub.ping_pong()


@test
def t_fo_log_lines():
    w = start_server("/a=-")
    a = client(w)
    b = client(w)
    text = w.wait_log("connected to /a, 2 clients")
    check(re.search(r"\[[^\]]+\] 127\.0\.0\.1:%d connected to /a, 1 clients" % a.lport, text),
          "no '[ID] 127.0.0.1:%d connected to /a, 1 clients' line" % a.lport)
    a.send_frame(OP_CLOSE, close_payload(1000))
    a.expect_close(1000)
    text = w.wait_log("disconnected from /a")
    check(re.search(r"\[[^\]]+\] 127\.0\.0\.1:%d disconnected from /a \(.+\), 1 clients" % a.lport,
                    text), "no '[ID] 127.0.0.1:%d disconnected from /a (REASON), 1 clients'" % a.lport)
    for ln in text.splitlines():
        check(TIMESTAMP.match(ln), "log line without timestamp: %r" % ln)


# ---------------------------------------------------------------- upstream

def upstream_setup(*opts, target="/up"):
    """Fake origin + wsfwd route /b to it + one client; upstream handshaken."""
    up = FakeUpstream()
    w = start_server(*opts, "/b=" + up.url(target), stdin=False)
    ws = client(w, "/b")
    u = up.accept_ws(target)
    w.wait_log("upstream /b: connected to " + up.url(target))
    return up, w, ws, u


@test
def t_us_handshake_request():
    up = FakeUpstream()
    w = start_server("/b=" + up.url("/up/x?a=1&b=2"), stdin=False)
    u = up.accept()
    key = u.read_request("/up/x?a=1&b=2")
    u.reply_101(key)
    w.wait_log("upstream /b: connected to " + up.url("/up/x?a=1&b=2"))


@test
def t_us_text_and_binary():
    up, w, ws, u = upstream_setup()
    ws2 = client(w, "/b")
    msgs = [(OP_TEXT, b"hello"), (OP_BIN, b"")]
    msgs += [(OP_BIN, os.urandom(n)) for n in (1, 125, 126, 127, 65535, 65536, 200000)]
    msgs += [(OP_TEXT, "\u20ac".encode() * 30000), (OP_BIN, b"\xff\x00\xfe")]
    for op, p in msgs:
        u.send_frame(op, p)
    for c in (ws, ws2):
        for i, (op, p) in enumerate(msgs):
            try:
                c.expect_msg(op, p)
            except TestFail as e:
                fail("message %d: %s" % (i, e))


@test
def t_us_fragmented_with_ping():
    up, w, ws, u = upstream_setup()
    u.send_raw(encode_frame(OP_TEXT, b"hel", fin=False, mask=False)
               + encode_frame(OP_PING, b"ping-mid", mask=False)
               + encode_frame(OP_CONT, b"lo ", fin=False, mask=False)
               + encode_frame(OP_CONT, b"world", mask=False))
    f = u.recv_frame()          # UpConn checks that it is masked
    eq((f.opcode, f.payload), (OP_PONG, b"ping-mid"), "wsfwd's reply to the upstream ping")
    f = ws.recv_frame()
    eq((f.opcode, f.fin, f.payload), (OP_TEXT, True, b"hello world"), "reassembled message")
    ws.ping_pong()


@test
def t_us_differential_random_streams():
    # An independent encoder (this one) builds random valid frame streams:
    # text and binary messages of every length encoding, fragmented at random
    # (through UTF-8 sequences too), pings between fragments, the whole sent
    # in random-sized chunks.  The client must get exactly the messages meant,
    # in order, and the origin a masked pong for every ping, in order.
    rnd = random.Random(6455)
    up, w, ws, u = upstream_setup()
    lengths = [0, 1, 124, 125, 126, 127, 65535, 65536, 70000]
    msgs, stream, pings = [], bytearray(), []
    for i in range(300):
        n = rnd.choice(lengths) if rnd.random() < 0.15 else rnd.randrange(0, 600)
        if rnd.random() < 0.5:
            text = "".join(rnd.choice("aZ9 éλ€😀") for _ in range(n // 3 + 1))
            op, payload = OP_TEXT, text.encode()
        else:
            op, payload = OP_BIN, bytes(rnd.randrange(256) for _ in range(n))
        msgs.append((op, payload))
        cuts = sorted(rnd.sample(range(len(payload) + 1), min(rnd.randrange(4),
                                                              len(payload) + 1)))
        parts = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]
        for j, part in enumerate(parts):
            stream += encode_frame(op if j == 0 else OP_CONT, part,
                                   fin=j == len(parts) - 1, mask=False)
            if j < len(parts) - 1 and rnd.random() < 0.3:
                p = bytes(rnd.randrange(256) for _ in range(rnd.randrange(126)))
                pings.append(p)
                stream += encode_frame(OP_PING, p, mask=False)
    check(len(pings) > 20 and len(stream) > 300000, "the generator made %d pings, %d bytes"
          % (len(pings), len(stream)))
    off = 0
    while off < len(stream):
        k = rnd.choice([1, 2, 7, 100, 1500, 4096, 65536])
        u.send_raw(bytes(stream[off:off + k]))
        off += k
    for i, (op, payload) in enumerate(msgs):
        try:
            ws.expect_msg(op, payload)
        except TestFail as e:
            fail("message %d of %d: %s" % (i, len(msgs), e))
    for i, p in enumerate(pings):
        f = u.recv_frame()          # UpConn checks that it is masked
        eq((f.opcode, f.payload), (OP_PONG, p), "pong %d of %d" % (i, len(pings)))


@test
def t_us_frames_with_101():
    up = FakeUpstream()
    w = start_server("/b=" + up.url(), stdin=False)
    ws = client(w, "/b")
    u = up.accept()
    key = u.read_request("/up")
    frames = b"".join(encode_frame(OP_TEXT, b"seg %d" % i, mask=False) for i in range(3))
    u.reply_101(key, extra=frames)
    for i in range(3):
        ws.expect_msg(OP_TEXT, b"seg %d" % i)


def upstream_lost(how):
    up, w, ws, u = upstream_setup()
    u.send_frame(OP_TEXT, b"before")
    ws.expect_msg(OP_TEXT, b"before")
    if how == "close":
        u.send_frame(OP_CLOSE, close_payload(1000))
        try:
            f = u.recv_frame(2)
            check(f.opcode == OP_CLOSE, "wsfwd answered the upstream close with %r" % f)
        except Closed:
            pass
        u.sock.close()
    elif how == "eof":
        u.sock.close()
    else:
        u.rst()
    t0 = time.monotonic()
    text = w.wait_log("upstream /b: lost")
    check(re.search(r"upstream /b: lost: .+; retry in \d+\.\d s", text),
          "no 'upstream /b: lost: REASON; retry in X.X s' line")
    u2 = up.accept(timeout=3)
    took = time.monotonic() - t0
    u2.handshake("/up")
    check(took <= 2.5, "reconnected after %.1f s, want within ~1.5 s" % took)
    w.wait_log("upstream /b: connected", count=2)
    ws.ping_pong()              # the client was kept
    u2.send_frame(OP_TEXT, b"after")
    ws.expect_msg(OP_TEXT, b"after")


add("us_reconnect_after_close", upstream_lost, "close")
add("us_reconnect_after_eof", upstream_lost, "eof")
add("us_reconnect_after_rst", upstream_lost, "rst")


@test
def t_us_bad_accept():
    up = FakeUpstream()
    w = start_server("/b=" + up.url(), stdin=False)
    ws = client(w, "/b")
    u = up.accept()
    key = u.read_request("/up")
    u.reply_101(key, accept=accept_key(new_key()))
    w.wait_log("upstream /b: lost")
    ws.ping_pong()
    u2 = up.accept(timeout=4)
    u2.handshake("/up")
    w.wait_log("upstream /b: connected")
    u2.send_frame(OP_TEXT, b"good")
    ws.expect_msg(OP_TEXT, b"good")


@test
def t_us_not_101():
    up = FakeUpstream()
    w = start_server("/b=" + up.url(), stdin=False)
    ws = client(w, "/b")
    u = up.accept()
    u.read_request("/up")
    u.send_raw(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    w.wait_log("upstream /b: lost")
    ws.ping_pong()
    up.accept(timeout=4).handshake("/up")
    w.wait_log("upstream /b: connected")


@test
def t_us_masked_frame():
    up, w, ws, u = upstream_setup()
    u.send_frame(OP_TEXT, b"masked from server", mask=True)
    f = u.recv_frame()
    eq(f.code, 1002, "close code wsfwd sends a masking upstream (%r)" % f)
    u.sock.close()
    w.wait_log("upstream /b: lost")
    u2 = up.accept(timeout=3)
    u2.handshake("/up")
    u2.send_frame(OP_TEXT, b"after")
    ws.expect_msg(OP_TEXT, b"after")     # and not the masked message


@test
def t_us_too_big():
    up, w, ws, u = upstream_setup("--max-message", "1K")
    u.send_frame(OP_BIN, b"z" * 2000)
    f = u.recv_frame()
    eq(f.code, 1009, "close code for an oversized upstream message (%r)" % f)
    u.sock.close()
    u2 = up.accept(timeout=3)
    u2.handshake("/up")
    u2.send_frame(OP_TEXT, b"small")
    ws.expect_msg(OP_TEXT, b"small")


@test
def t_us_ping_interval():
    up = FakeUpstream()
    w = start_server("--ping", "1", "/b=" + up.url(), stdin=False)
    u = up.accept_ws("/up")
    pings = 0
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        try:
            f = u.recv_frame(max(0.01, deadline - time.monotonic()))
        except Timeout:
            break
        eq(f.opcode, OP_PING, "frame wsfwd sent its upstream")
        u.send_frame(OP_PONG, f.payload)
        pings += 1
    check(pings >= 2, "upstream got %d pings in 3.5 s with --ping 1" % pings)
    check(w.log().count("upstream /b: lost") == 0, "answering upstream was dropped")


@test
def t_us_silent_upstream_dropped():
    up = FakeUpstream()
    w = start_server("--ping", "1", "/b=" + up.url(), stdin=False)
    u = up.accept_ws("/up")
    t0 = time.monotonic()
    w.wait_log("upstream /b: lost", timeout=4.5)
    took = time.monotonic() - t0
    check(took >= 1.0, "silent upstream dropped after only %.1f s" % took)
    up.accept(timeout=4).handshake("/up")


def log_events(text, pattern):
    """(seconds, match) for each log line whose message matches `pattern`.

    The time is the line's own timestamp (millisecond resolution), so the
    gaps measured do not depend on how fast this script polls the log."""
    out = []
    for ln in text.splitlines():
        if not TIMESTAMP.match(ln):
            continue
        m = re.search(pattern, ln[24:])
        if m:
            t = datetime.datetime.strptime(ln[:23], "%Y-%m-%d %H:%M:%S.%f")
            out.append((t.timestamp(), m))
    return out


RETRY_LINE = r"upstream %s: (?:(connecting to) |lost: (.+); retry in (\d+\.\d) s$)"


def retry_events(text, path):
    """[(t, "connecting", None) or (t, "lost: REASON", delay)] in log order."""
    ev = []
    for t, m in log_events(text, RETRY_LINE % re.escape(path)):
        if m.group(1):
            ev.append((t, "connecting", None))
        else:
            ev.append((t, "lost: " + m.group(2), float(m.group(3))))
    return ev


@test
def t_us_backoff_doubles():
    # Nothing listens: each attempt is refused at once, so the log alternates
    # "connecting to" / "lost: ...; retry in X s" with delays of RETRY_MIN_MS
    # doubling, each jittered into [d/2, d].
    port = free_port()
    w = start_server("/x=ws://%s:%d/feed" % (HOST, port), stdin=False)
    text = w.wait_log("upstream /x: connecting to", count=4, timeout=8.5)
    ev = retry_events(text, "/x")[:7]
    kinds = ["connecting" if k == "connecting" else "lost" for _, k, _ in ev]
    eq(kinds, ["connecting", "lost"] * 3 + ["connecting"], "sequence of upstream /x log lines")
    for i, (lo, hi) in enumerate(((0.5, 1.0), (1.0, 2.0), (2.0, 4.0))):
        t_lost, why, delay = ev[2 * i + 1]
        t_next = ev[2 * i + 2][0]
        check("connect" in why, "reason for failure %d is %r" % (i + 1, why))
        check(lo <= delay <= hi, "retry delay %d announced as %.1f s, want %.1f-%.1f s (%s)"
              % (i + 1, delay, lo, hi, ", ".join("%.1f" % e[2] for e in ev if e[2] is not None)))
        gap = t_next - t_lost
        check(abs(gap - delay) <= 0.3, "retry %d came %.2f s after 'retry in %.1f s'"
              % (i + 1, gap, delay))

    # Back to fast: a connection that delivered a message resets the backoff.
    # Two connections that deliver nothing first raise it (to 2 s, which
    # would be 4 s and then 8 s without the reset).
    up = FakeUpstream()
    w2 = start_server("/b=" + up.url(), stdin=False)
    ws = client(w2, "/b")
    t_close = None
    for i, deliver in enumerate((False, False, True, True)):
        u = up.accept(timeout=5)
        took = None if t_close is None else time.monotonic() - t_close
        u.handshake("/up")
        w2.wait_log("upstream /b: connected", count=i + 1)
        if i >= 3:
            check(took <= 1.3, "reconnect after a connection that delivered a message "
                  "took %.2f s, want <= 1.0 s (+0.3)" % took)
        if deliver:
            u.send_frame(OP_TEXT, b"msg %d" % i)
            ws.expect_msg(OP_TEXT, b"msg %d" % i)
        u.sock.close()
        t_close = time.monotonic()
        text = w2.wait_log("upstream /b: lost", count=i + 1)
        delay = [e[2] for e in retry_events(text, "/b") if e[2] is not None][i]
        lo, hi = ((0.5, 1.0), (1.0, 2.0), (0.5, 1.0), (0.5, 1.0))[i]
        check(lo <= delay <= hi, "after connection %d (%s), retry in %.1f s, want %.1f-%.1f s"
              % (i + 1, "delivered a message" if deliver else "no message", delay, lo, hi))
    u = up.accept(timeout=5)
    took = time.monotonic() - t_close
    check(took <= 1.3, "reconnect after a connection that delivered a message "
          "took %.2f s, want <= 1.0 s (+0.3)" % took)
    u.handshake("/up")
    ws.ping_pong()


@test
def t_us_hostname_resolved():
    up = FakeUpstream()
    url = "ws://localhost:%d/feed" % up.port
    w = start_server("/b=" + url, stdin=False)
    ws = client(w, "/b")
    u = up.accept()
    u.reply_101(u.read_request("/feed", host="localhost:%d" % up.port))
    w.wait_log("upstream /b: connected to " + url)
    u.send_frame(OP_TEXT, b"by name")
    ws.expect_msg(OP_TEXT, b"by name")


@test
def t_us_unresolvable_name_does_not_block():
    w = start_server("/x=ws://no-such-host.invalid/feed", "/y=-")
    x, y = client(w, "/x"), client(w, "/y")
    # Feed /y, one line at a time, while /x's lookup fails, is retried and
    # fails again (the first retry comes within a second); each line must
    # arrive at once, and /x's client must stay connected throughout.
    deadline = time.monotonic() + 12
    n = 0
    while True:
        ev = retry_events(w.log(), "/x")
        lost = [e[1] for e in ev if e[1].startswith("lost")]
        if len(lost) >= 2:
            break
        check(time.monotonic() < deadline, "/x did not fail and retry its lookup within "
              "12 s; log of /x: %r" % [e[1] for e in ev])
        line = b"line %d" % n
        t0 = time.monotonic()
        w.feed(line + b"\n")
        y.expect_msg(OP_TEXT, line, timeout=3)
        took = time.monotonic() - t0
        check(took < 0.5, "line %d on /y took %.2f s while /x was resolving" % (n, took))
        n += 1
        if n % 5 == 0:
            x.ping_pong(timeout=0.5)
        time.sleep(0.05)
    for why in lost:
        check(why.startswith("lost: lookup no-such-host.invalid: ") and len(why) > 36,
              "reason for the failure of /x is %r, want 'lookup no-such-host.invalid: ...'"
              % why)
    check(n >= 3, "only %d lines fed before the retry" % n)
    x.ping_pong(timeout=0.5)


@test
def t_us_fresh_masks_and_keys():
    up = FakeUpstream()
    w = start_server("/b=" + up.url(), stdin=False)
    u = up.accept()
    key1 = u.read_request("/up")        # checks that it decodes to 16 bytes
    u.reply_101(key1)
    w.wait_log("upstream /b: connected")
    masks = []
    for p in (os.urandom(125), b"second ping"):
        u.send_frame(OP_PING, p)
        f = u.recv_frame()
        eq((f.opcode, f.payload), (OP_PONG, p), "wsfwd's pong (unmasked)")
        masks.append(f.key)
    check(masks[0] != masks[1], "two pongs masked with the same key %s" % masks[0].hex())
    u.sock.close()                      # the second connection needs a new key
    w.wait_log("upstream /b: lost")
    u2 = up.accept(timeout=3)
    key2 = u2.read_request("/up")
    check(key1 != key2, "both upstream connections sent Sec-WebSocket-Key %s" % key1)
    u2.reply_101(key2)
    u2.send_frame(OP_PING, b"third")
    f = u2.recv_frame()
    eq((f.opcode, f.payload), (OP_PONG, b"third"), "pong on the second connection")
    check(f.key not in masks, "mask key %s reused on the second connection" % f.key.hex())


@test
def t_fo_hundreds_of_clients_while_flooded():
    # 600 clients: more than one flush slice (256), so wsfwd reads its
    # upstream again partway through writing to them, and the clients it
    # had already written get the new messages a turn later.  The origin
    # sends one message at a time while 150 clients reset their connections
    # midway.  Every surviving client must get every message, in order, and
    # nothing more.  (How much sooner messages arrive is for bench/ to show.)
    up, w, first, u = upstream_setup()
    clients = [first] + [WS.open(w.port, "/b") for _ in range(599)]
    msgs = [b"%06d " % i + os.urandom(96).hex().encode() for i in range(400)]
    for i, m in enumerate(msgs):
        u.send_raw(encode_frame(OP_TEXT, m, mask=False))
        if i == 150:
            for ws in clients[100:250]:
                ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                ws.sock.close()
        time.sleep(0.0003)
    survivors = clients[:100] + clients[250:]
    for n, ws in enumerate(survivors):
        got = read_msgs(ws, len(msgs), timeout=10)
        for i, f in enumerate(got):
            if (f.opcode, f.payload) != (OP_TEXT, msgs[i]):
                fail("client %d message %d: got %r, want %s" % (n, i, f, short(msgs[i])))
    for ws in survivors:
        ws.ping_pong()          # fails on any frame but the pong


@test
def t_fo_timeouts_while_flowing():
    # 600 clients that never answer pings (--ping 1) while the origin sends
    # a message every ~0.5 ms: they all time out at once, some of them while
    # waiting on the flush list from one turn to the next.  wsfwd must free
    # them safely (the ASan build checks) and serve a new client.
    import threading
    up, w, first, u = upstream_setup("--ping", "1")
    clients = [first] + [WS.open(w.port, "/b") for _ in range(599)]
    stop = [time.monotonic() + 20]

    def origin():
        i = 0
        while time.monotonic() < stop[0]:
            try:
                u.send_raw(encode_frame(OP_TEXT, b"m%d" % i, mask=False))
                u.sock.settimeout(0)
                while True:             # answer wsfwd's pings
                    f = u.parse_frame() if u.buf else None
                    if f is None:
                        try:
                            u.buf += u.sock.recv(65536)
                        except (BlockingIOError, socket.timeout):
                            break
                        continue
                    if f.opcode == OP_PING:
                        u.send_frame(OP_PONG, f.payload)
                u.sock.settimeout(None)
            except OSError:
                return
            i += 1
            time.sleep(0.0005)

    t = threading.Thread(target=origin)
    t.start()
    w.wait_log("ping timeout", timeout=6)
    deadline = time.monotonic() + 6
    while w.log().count("ping timeout") < 600 and time.monotonic() < deadline:
        time.sleep(0.1)
    eq(w.log().count("ping timeout"), 600, "clients dropped for ping timeout")
    late = client(w, "/b")
    for _ in range(5):          # its pings may come first
        f = late.recv_frame()
        if f.opcode == OP_TEXT:
            break
    check(f.opcode == OP_TEXT and f.payload.startswith(b"m"), "a late client gets messages: %r" % (f,))
    stop[0] = 0
    t.join(6)


# ---------------------------------------------------------------- slow client

@test
def t_slow_client_dropped():
    # The writer keeps at most WINDOW bytes of stdin ahead of what the fast
    # client has received, so only the client that never reads can pass
    # --max-queue, whatever batching wsfwd does.
    WINDOW = 32768
    w = start_server("--max-queue", "64K", "/a=-")
    slow = WS(w.port, rcvbuf=4096)
    slow.handshake("/a")
    w.wait_client(slow, "/a")
    fast = client(w)
    count, size = 10000, 2000           # 20 MB
    msgs = [b"%08d" % i + b"x" * (size - 9) for i in range(count)]
    data = memoryview(b"".join(m + b"\n" for m in msgs))
    fd = w.proc.stdin.fileno()
    os.set_blocking(fd, False)
    fast.sock.setblocking(False)
    off, got = 0, 0
    deadline = time.monotonic() + 30
    while got < count:
        check(time.monotonic() < deadline, "fast client got %d of %d messages in 30 s" % (got, count))
        room = min(16384, WINDOW - (off - got * size), len(data) - off)
        r, wr, _ = select.select([fast.sock], [fd] if room > 0 else [], [], 0.5)
        if wr:
            try:
                off += os.write(fd, data[off:off + room])
            except BlockingIOError:
                pass
        if not r:
            continue
        try:
            chunk = fast.sock.recv(1 << 20)
        except BlockingIOError:
            continue
        if chunk == b"":
            dropped = "%d slow client dropped" % fast.lport in w.log()
            fail("fast client disconnected after %d messages%s" % (
                got, " (dropped as slow)" if dropped else ""))
        fast.buf += chunk
        while True:
            f = fast.parse_frame()
            if f is None:
                break
            if (f.opcode, f.payload) != (OP_TEXT, msgs[got]):
                fail("fast client message %d: got %r" % (got, f))
            got += 1
    w.wait_log("%s:%d slow client dropped" % (HOST, slow.lport))
    check("%s:%d slow client dropped" % (HOST, fast.lport) not in w.log(), "fast client dropped")


def write_until_stalled(write, data, limit, what):
    """Non-blocking write() of data until it makes no progress for 1 s.

    Returns the bytes written; fails once more than `limit` went in, which
    means the other side kept reading with nobody reading from it.
    """
    off, last = 0, time.monotonic()
    deadline = last + 30
    while time.monotonic() - last < 1.0:
        check(time.monotonic() < deadline, "%s: still taking data after 30 s" % what)
        check(off <= limit, "%s took %d bytes for a client that reads nothing: "
              "no backpressure" % (what, off))
        try:
            k = write(data[off:off + 65536])
        except (BlockingIOError, socket.timeout):
            k = 0
        if k:
            off += k
            last = time.monotonic()
        else:
            time.sleep(0.01)
    return off


@test
def t_syslog_and_sighup():
    # --syslog=SOCKET: each event one datagram, daemon facility, no
    # timestamp; SIGHUP changes nothing; a socket that is not there: exit 1.
    import tempfile
    d = tempfile.mkdtemp(prefix="wsfwd-syslog.")
    path = os.path.join(d, "log")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    SOCKS.append(s)
    s.bind(path)
    s.settimeout(TIMEOUT)
    port = free_port()
    w = Wsfwd(["--syslog=" + path, "-l", "%s:%d" % (HOST, port), "/a=-"],
              stdin=subprocess.PIPE)
    try:
        eq(s.recv(4096), b"<30>wsfwd[%d]: listening on %s:%d" % (w.proc.pid, HOST.encode(), port),
           "first datagram")
        w.proc.send_signal(signal.SIGHUP)
        ws = WS.open(port, "/a")
        m = s.recv(4096)
        check(re.match(rb"<30>wsfwd\[\d+\]: \[\d+\] 127\.0\.0\.1:\d+ connected to /a, 1 clients$", m),
              "connect datagram: %r" % m)
        w.proc.stdin.write(b"after hup\n")
        w.proc.stdin.flush()
        ws.expect_msg(OP_TEXT, b"after hup")
        check(w.log() == "", "wsfwd wrote to stderr with --syslog: %r" % w.log()[:200])
    finally:
        os.unlink(path)
        os.rmdir(d)
    r = subprocess.run([wslib.BIN, "--syslog=" + path, "/a=-"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=5)
    eq(r.returncode, 1, "exit status without a syslog socket")
    check(path in r.stderr, "stderr does not name the socket: %r" % r.stderr)


@test
def t_backpressure_stdin():
    # The only client reads nothing: wsfwd stops reading stdin rather than
    # dropping it, and once it reads it gets every line, in order.
    w = start_server("--max-queue", "256K", "/a=-")
    ws = client(w, "/a", rcvbuf=4096)
    size, count = 1000, 40000
    lines = [b"%08d" % i + b"y" * (size - 9) for i in range(count)]
    data = memoryview(b"".join(l + b"\n" for l in lines))
    fd = w.proc.stdin.fileno()
    os.set_blocking(fd, False)
    off = write_until_stalled(lambda b: os.write(fd, b), data, 30 * size * 1000, "stdin")
    check("slow client dropped" not in w.log(), "the only client was dropped as slow")
    for i in range(off // size):
        try:
            ws.expect_msg(OP_TEXT, lines[i])
        except TestFail as e:
            fail("line %d of %d: %s" % (i, off // size, e))


@test
def t_pace_is_the_median():
    # One client reads at full speed, two read 256 KB every 20 ms, and
    # stdin floods.  The source must go at the pace most clients keep
    # (theirs): all three get every line and nobody is dropped.  Paced by
    # the fastest client alone, the other two would fall --max-queue
    # behind within a second and be dropped.
    import threading
    w = start_server("--max-queue", "256K", "/a=-")
    fast = client(w, "/a")
    slow = [client(w, "/a", rcvbuf=65536) for _ in range(2)]
    size, count = 1000, 8000
    lines = [b"%08d" % i + b"s" * (size - 9) for i in range(count)]
    got, errors = {}, []

    def reader(ws, pause):
        n = 0
        deadline = time.monotonic() + 25
        try:
            while n < count and time.monotonic() < deadline:
                ws.fill(deadline)
                while True:
                    f = ws.parse_frame()
                    if f is None:
                        break
                    if f.payload != lines[n]:
                        raise TestFail("line %d: got %r" % (n, short(f.payload)))
                    n += 1
                if pause:
                    time.sleep(pause)
        except TestFail as e:
            errors.append(str(e))
        got[ws] = n

    threads = [threading.Thread(target=reader, args=(ws, p))
               for ws, p in [(fast, 0)] + [(s, 0.02) for s in slow]]
    for t in threads:
        t.start()
    w.proc.stdin.write(b"".join(l + b"\n" for l in lines))
    w.proc.stdin.flush()
    for t in threads:
        t.join(30)
    check("slow client dropped" not in w.log(), "a client was dropped as slow: %s" %
          [l for l in w.log().splitlines() if "slow client dropped" in l][:1])
    check(not errors, "; ".join(errors))
    check(sorted(got.values()) == [count] * 3, "lines received: %s of %d" %
          (sorted(got.values()), count))


@test
def t_backpressure_upstream():
    # Same through an upstream: the origin's send() blocks (TCP pushes back)
    # instead of wsfwd reading without limit or dropping its only client.
    up, w, ws, u = upstream_setup("--max-queue", "256K")
    size, count = 10000, 6000
    frames = [encode_frame(OP_BIN, b"%08d" % i + b"z" * (size - 12), mask=False)
              for i in range(count)]
    flen = len(frames[0])
    data = memoryview(b"".join(frames))
    u.sock.setblocking(False)
    off = write_until_stalled(u.sock.send, data, 40 * flen * 1000, "the upstream socket")
    u.sock.settimeout(TIMEOUT)
    check("slow client dropped" not in w.log(), "the only client was dropped as slow")
    for i in range(off // flen):
        try:
            ws.expect_msg(OP_BIN, frames[i][4:])
        except TestFail as e:
            fail("message %d of %d: %s" % (i, off // flen, e))


@test
def t_big_message_into_empty_queue():
    # a message is always accepted into an empty queue, even if > --max-queue
    w = start_server("--max-queue", "1K", "/a=-")
    ws = client(w)
    big = b"B" * 5000
    w.feed(big + b"\n")
    ws.expect_msg(OP_TEXT, big)
    w.feed(b"small\n")
    ws.expect_msg(OP_TEXT, b"small")
    check("slow client dropped" not in w.log(), "reading client dropped as slow")


@test
def t_big_message_then_more_at_once():
    # A message larger than --max-queue with more right behind it in the
    # same write: the client is busy with the big one, not behind; it is not
    # dropped and gets everything in order.  (Counting the message on the
    # wire as backlog dropped every client here.)
    for role, lines in (("cat", [b"x" * 2000000, b"small"]),
                        ("raw", [b"x" * 2000000, b"small", b"y" * 300000, b"z" * 960000,
                                 b"end"])):
        w = start_server("--max-queue", "1M", "/a=-")
        if role == "raw":
            ws = client(w)
        else:
            out = new_log("cat") + ".out"
            cat = subprocess.Popen([wslib.BIN, "--cat", "ws://%s:%d/a" % (HOST, w.port)],
                                   stdout=open(out, "wb"), stderr=subprocess.DEVNULL)
            w.wait_log("connected to /a, 1 clients")
        # Fed from a thread: stdin is paused while the client is behind.
        import threading
        feeder = threading.Thread(target=w.feed, args=(b"".join(l + b"\n" for l in lines),))
        feeder.start()
        if role == "raw":
            for i, l in enumerate(lines):
                try:
                    ws.expect_msg(OP_TEXT, l)
                except TestFail as e:
                    fail("message %d: %s" % (i, e))
        else:
            want = b"".join(l + b"\n" for l in lines)
            deadline = time.monotonic() + TIMEOUT
            while os.path.getsize(out) < len(want) and time.monotonic() < deadline:
                time.sleep(0.05)
            cat.kill()
            cat.wait()
            with open(out, "rb") as f:
                check(f.read() == want, "--cat did not print the two lines")
        feeder.join(TIMEOUT)
        check("slow client dropped" not in w.log(), "%s client dropped as slow" % role)
        w.stop()


# ---------------------------------------------------------------- keepalive

@test
def t_ping_unanswered_dropped():
    w = start_server("--ping", "1", "/a=-")
    ws = client(w)
    t0 = time.monotonic()
    pings = 0
    deadline = t0 + 6
    while True:
        try:
            f = ws.recv_frame(max(0.01, deadline - time.monotonic()))
        except Closed:
            break
        except Timeout:
            fail("silent client still connected after 6 s with --ping 1")
        if f.opcode == OP_PING:
            pings += 1
        elif f.opcode == OP_CLOSE:
            ws.wait_closed()
            break
        else:
            fail("unexpected %r" % f)
    took = time.monotonic() - t0
    check(pings >= 1, "client saw no ping frame before being dropped")
    check(1.0 <= took <= 4.0, "silent client dropped after %.1f s, want 2-3 s" % took)
    w.wait_log("%s:%d disconnected from /a" % (HOST, ws.lport))


@test
def t_ping_answered_kept():
    w = start_server("--ping", "1", "/a=-")
    ws = client(w)
    pings = 0
    end = time.monotonic() + 4.2
    while time.monotonic() < end:
        try:
            f = ws.recv_frame(max(0.01, end - time.monotonic()))
        except Timeout:
            break
        except Closed as e:
            fail("answering client dropped after %d pings: %s" % (pings, e))
        check(f.opcode == OP_PING, "unexpected %r" % f)
        ws.send_frame(OP_PONG, f.payload)
        pings += 1
    check(pings >= 3, "got %d pings in 4.2 s with --ping 1" % pings)
    w.feed(b"still here\n")
    ws.expect_msg(OP_TEXT, b"still here")


# ---------------------------------------------------------------- signals

def signal_close_1001(sig, limit):
    """sig: both clients get close 1001, wsfwd exits 0 within limit seconds."""
    w = start_server("/a=-")
    a, b = client(w), client(w)
    t0 = time.monotonic()
    w.proc.send_signal(sig)
    for ws in (a, b):
        ws.expect_close(1001, timeout=2, reply=True)
    eq(w.wait_exit(2), 0, "exit status after %s" % sig.name)
    check(time.monotonic() - t0 <= limit, "exit took %.1f s" % (time.monotonic() - t0))


for _sig, _limit in ((signal.SIGTERM, 2.5), (signal.SIGINT, 2.0)):
    add("%s_close_1001" % _sig.name.lower(), signal_close_1001, _sig, _limit)


@test
def t_sigterm_unresponsive_client():
    # a client that never answers the close must not hold up the exit
    w = start_server("/a=-")
    ws = client(w)
    w.proc.send_signal(signal.SIGTERM)
    f = ws.recv_frame(2)
    eq(f.code, 1001, "close code on SIGTERM (%r)" % f)
    eq(w.wait_exit(3), 0, "exit status after SIGTERM")


# ---------------------------------------------------------------- descriptors

def nofile_limits(pid):
    """(soft, hard) "Max open files" of a process, from /proc/PID/limits."""
    with open("/proc/%d/limits" % pid) as f:
        for ln in f:
            if ln.startswith("Max open files"):
                soft, hard = ln[len("Max open files"):].split()[:2]
                return soft, hard
    fail("no 'Max open files' line in /proc/%d/limits" % pid)


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@test
def t_fd_rlimit_raised():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    check(hard > 128, "hard RLIMIT_NOFILE of this shell is only %d" % hard)
    w = start_server("/a=-", preexec_fn=lambda: resource.setrlimit(
        resource.RLIMIT_NOFILE, (64, hard)))
    want = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    eq(nofile_limits(w.proc.pid), (want, want), "wsfwd's (soft, hard) Max open files")
    # and it serves more clients than the soft limit it was started with
    clients = [client(w) for _ in range(80)]
    w.feed(b"to 80\n")
    for c in clients:
        c.expect_msg(OP_TEXT, b"to 80")


@test
def t_fd_exhaustion_no_busy_loop():
    w = start_server("/y=-", preexec_fn=lambda: resource.setrlimit(
        resource.RLIMIT_NOFILE, (32, 32)))
    eq(nofile_limits(w.proc.pid), ("32", "32"), "wsfwd's Max open files")
    pending, refused = attempt(w.port, 60)
    upgraded = 0

    def collect(until):
        nonlocal refused, upgraded
        up, r = sort_out(pending, until)
        upgraded += len(up)
        refused += r

    collect(time.monotonic() + 2)
    cpu0, t0 = cpu_seconds(w.proc.pid), time.monotonic()
    collect(t0 + 2)             # still watching the sockets, all kept open
    time.sleep(max(0, t0 + 2 - time.monotonic()))
    cpu = cpu_seconds(w.proc.pid) - cpu0
    span = time.monotonic() - t0
    check(w.alive(), "wsfwd exited (status %s)" % w.proc.returncode)
    check(cpu < 0.3, "wsfwd used %.2f s of CPU in %.1f s with descriptors exhausted "
          "(%d upgraded, %d refused, %d unanswered)" % (cpu, span, upgraded, refused, len(pending)))
    check(upgraded >= 1 and refused >= 1, "of 60 connections %d upgraded, %d refused, "
          "%d unanswered; want some of each of the first two" % (upgraded, refused, len(pending)))
    check(not pending, "%d of 60 connections neither upgraded nor closed after 4 s "
          "(%d upgraded, %d refused)" % (len(pending), upgraded, refused))
    for s in SOCKS:
        s.close()
    del SOCKS[:]
    deadline = time.monotonic() + 2
    while True:                 # wsfwd may still be closing the old ones
        try:
            c = WS(w.port)
            c.sock.settimeout(max(0.01, deadline - time.monotonic()))
            c.handshake("/y")
            break
        except (TestFail, OSError) as e:
            check(time.monotonic() < deadline,
                  "no new client upgraded within 2 s after closing all: %s" % e)
            time.sleep(0.05)
    w.wait_client(c, "/y")
    w.feed(b"fds back\n")
    c.expect_msg(OP_TEXT, b"fds back")


# ---------------------------------------------------------------- CLI

@test
def t_cli_help():
    for opt in ("--help", "-h"):
        rc, out, err = run_cmd([opt])
        eq(rc, 0, opt + " exit status")
        for o in ("--listen", "--max-message", "--max-queue", "--max-clients", "--ping",
                  "--quiet", "--verbose", "--help", "--version", "--cat"):
            check(o in out, "%s output lacks %s" % (opt, o))


@test
def t_cli_version():
    rc, out, err = run_cmd(["--version"])
    eq(rc, 0, "exit status")
    check(re.fullmatch(r"wsfwd \d+\.\d+\.\d+\n", out), "--version printed %r" % out)


def bad_args(args, must_say=None):
    rc, out, err = run_cmd(args)
    eq(rc, 2, "exit status of `wsfwd %s`" % " ".join(args))
    lines = err.splitlines()
    check(len(lines) == 1 and lines[0].strip(), "want one stderr line, got %r" % err)
    if must_say:
        check(must_say in err, "stderr %r lacks %r" % (err, must_say))


for _name, _args, _say in (
        ("unknown_option", ["--bogus", "/a=-"], None),
        ("no_route", [], None),
        ("only_options", ["-l", "127.0.0.1:1"], None),
        ("bad_size", ["--max-message", "12Q", "/a=-"], None),
        ("bad_queue_size", ["--max-queue", "abc", "/a=-"], None),
        ("bad_max_clients", ["--max-clients", "x", "/a=-"], None),
        ("bad_ping", ["--ping", "soon", "/a=-"], None),
        ("listen_port_99999", ["-l", "99999", "/a=-"], None),
        ("listen_port_0", ["-l", "0", "/a=-"], None),
        ("listen_garbage", ["-l", "garbage", "/a=-"], None),
        ("listen_missing_value", ["/a=-", "-l"], None),
        ("ftp_url", ["ftp://x/"], None),
        ("url_no_host", ["/a=ws:///x"], None),
        ("url_port_99999", ["ws://127.0.0.1:99999/x"], None),
        ("duplicate_path", ["/a=-", "/a=-"], None),
        ("duplicate_default_path", ["ws://127.0.0.1:1/x", "/x=-"], None),
        ("two_stdin_routes", ["/a=-", "/b=-"], "only one route can read stdin"),
        ("wss_ip_literal", ["wss://127.0.0.1:1/x"], "-k")):
    add("cli_bad_" + _name, bad_args, _args, _say)


@test
def t_cli_options_accepted():
    port = free_port()
    w = Wsfwd(["--listen", "%s:%d" % (HOST, port), "--max-message", "2M", "--max-queue", "1G",
               "--max-clients", "10", "--ping", "0", "-v", "/a=-"], stdin=subprocess.PIPE)
    w.port = port
    w.wait_log("listening on %s:%d" % (HOST, port))
    ws = client(w)
    w.feed(b"x" * 1500000 + b"\n")        # under 2M
    ws.expect_msg(OP_TEXT, b"x" * 1500000)


@test
def t_cli_listen_port_only():
    port = free_port()
    w = Wsfwd(["-l", str(port), "/a=-"], stdin=subprocess.PIPE)
    w.port = port
    w.wait_log("listening on")
    w.wait_log(":%d" % port)
    client(w).ping_pong()


@test
def t_cli_quiet():
    port = free_port()
    w = Wsfwd(["-q", "-l", "%s:%d" % (HOST, port), "/a=-"], stdin=subprocess.PIPE)
    w.port = port
    deadline = time.monotonic() + TIMEOUT
    while True:                 # -q logs no "listening on": poll the port
        try:
            ws = WS.open(port, "/a")
            break
        except (ConnectionRefusedError, TestFail):
            check(w.alive() and time.monotonic() < deadline, "-q server not reachable")
            time.sleep(0.05)
    w.feed(b"quiet\n")
    ws.expect_msg(OP_TEXT, b"quiet")
    check("connected to" not in w.log(), "-q logged a client event: %r" % w.log())


@test
def t_cli_cat_dead_port():
    rc, out, err = run_cmd(["--cat", "ws://%s:%d/x" % (HOST, free_port())])
    eq(rc, 1, "exit status")
    check(err.strip(), "no message on stderr")


def cat_session(ending, want_rc):
    """--cat against a fake server: request, masked frames, output, exit."""
    up = FakeUpstream()
    out_path = os.path.join(wslib.LOGDIR, "%s.cat.out" % wslib.CURRENT)
    with open(out_path, "wb") as f:
        cat = Wsfwd(["--cat", up.url("/feed?x=1")], stdout=f, role="cat")
    u = up.accept_ws("/feed?x=1")
    u.send_frame(OP_TEXT, b"first line")
    u.send_raw(encode_frame(OP_TEXT, b"sec", fin=False, mask=False)
               + encode_frame(OP_CONT, b"ond", mask=False))
    u.send_frame(OP_PING, b"cat?")
    f = u.recv_frame()
    eq((f.opcode, f.payload), (OP_PONG, b"cat?"), "--cat reply to ping")
    if ending == "rst":
        u.rst()
    else:
        u.send_frame(OP_CLOSE, close_payload(ending))
        f = u.recv_frame()
        eq(f.opcode, OP_CLOSE, "--cat reply to close")
        u.sock.close()
    eq(cat.wait_exit(3), want_rc, "--cat exit status")
    with open(out_path, "rb") as f:
        eq(f.read(), b"first line\nsecond\n", "--cat stdout")
    if want_rc:
        check(cat.log().strip(), "--cat gave no message on stderr")


add("cli_cat_close_1000", cat_session, 1000, 0)
add("cli_cat_close_1001", cat_session, 1001, 1)
add("cli_cat_reset", cat_session, "rst", 1)


# ---------------------------------------------------------------- runner

if __name__ == "__main__":
    sys.exit(wslib.main(sys.argv, "./wsfwd [TEST...]", "wsfwd-proto."))
