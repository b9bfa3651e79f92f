#!/usr/bin/env python3
"""permessage-deflate (RFC 7692) end to end: negotiation, the one shared
compressed form of each message, inflating what clients and upstreams
send, and real peers with deflate of their own (Python's zlib always;
Python `websockets`, Node's `ws` and headless Chromium where installed,
else those tests print "skip").

usage: python3 tests/deflate.py ./wsfwd [TEST...]

Like proto.py: real wsfwd processes on 127.0.0.1, bounded waits, processes
stopped by PID.  Ends with "N passed, M failed".
"""

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wslib  # noqa: E402
from wslib import (  # noqa: E402
    HOST, TIMEOUT, OP_TEXT, OP_BIN, OP_CONT, OP_CLOSE, OP_PING, OP_PONG,
    TestFail, Timeout, fail, check, eq, close_payload, encode_frame,
    build_request, check_101, WS, test, add, FakeUpstream, EchoOrigin,
    accept_key, start_server, client)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PMD_ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
TAIL = b"\x00\x00\xff\xff"


def ticker_json(n=200, seed=1):
    """A Binance !miniTicker@arr-style array, as the feed sends it."""
    rnd = random.Random(seed)
    syms = ["BTC", "ETH", "BNB", "SOL", "XRP", "ADA", "DOGE", "TRX", "LINK", "DOT"]
    out = []
    for i in range(n):
        p = rnd.uniform(0.01, 40000)
        out.append({"e": "24hrMiniTicker", "E": 1700000000000 + rnd.randrange(1000),
                    "s": "%s%s" % (rnd.choice(syms), rnd.choice(["USDT", "BTC", "FDUSD"])),
                    "c": "%.8f" % p, "o": "%.8f" % (p * rnd.uniform(0.9, 1.1)),
                    "h": "%.8f" % (p * 1.1), "l": "%.8f" % (p * 0.9),
                    "v": "%.8f" % rnd.uniform(0, 1e6), "q": "%.8f" % rnd.uniform(0, 1e9)})
    return json.dumps(out, separators=(",", ":")).encode()


def inflate(payload, d=None):
    d = d or zlib.decompressobj(-15)
    return d.decompress(payload + TAIL)


def deflate_client(w, path="/a", offer="permessage-deflate; client_max_window_bits"):
    """A client that offered permessage-deflate; checks wsfwd's answer."""
    ws = WS(w.port)
    req, key = build_request(w.port, path, headers={"Sec-WebSocket-Extensions": offer})
    ws.send_raw(req)
    head = ws.read_head()
    check_101(head, key)
    eq(head.get("sec-websocket-extensions"), PMD_ANSWER, "wsfwd's answer")
    ws.deflate = True
    w.wait_client(ws, path)
    return ws


def compress(data, level=6, wbits=-15, strategy=zlib.Z_DEFAULT_STRATEGY, flush=zlib.Z_SYNC_FLUSH):
    c = zlib.compressobj(level, zlib.DEFLATED, wbits, 8, strategy)
    out = c.compress(data) + c.flush(flush)
    return out[:-4] if out.endswith(TAIL) else out


# ---------------------------------------------------------------- negotiation

OFFERS = [
    ("permessage-deflate", True),
    ("permessage-deflate; client_max_window_bits", True),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", True),
    ("permessage-deflate; server_max_window_bits=15", "+sbits"),
    ("permessage-deflate; server_max_window_bits=10", False),
    ("permessage-deflate; server_max_window_bits=10, permessage-deflate", True),
    ("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=12", True),
    ("permessage-deflate; server_max_window_bits=16", False),
    ("permessage-deflate; client_max_window_bits=7", False),
    ("permessage-deflate; foo=bar", False),
    ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", False),
    ("deflate-frame", False),
    ("permessage-deflate; a=\"unterminated", False),
    ("garbage;;;", False),
    ("permessage-deflate;", False),
]


@test
def t_negotiation_offers():
    w = start_server("/a=-")
    for offer, accepted in OFFERS:
        ws = WS(w.port)
        req, key = build_request(w.port, "/a", headers={"Sec-WebSocket-Extensions": offer})
        ws.send_raw(req)
        head = ws.read_head()
        check_101(head, key)
        want = (PMD_ANSWER + "; server_max_window_bits=15" if accepted == "+sbits"
                else PMD_ANSWER if accepted else None)
        eq(head.get("sec-websocket-extensions"), want, "answer to %r" % offer)
        ws.close()
    check(w.alive(), "wsfwd died")


@test
def t_negotiation_off():
    w = start_server("--deflate", "off", "/a=-")
    ws = WS(w.port)
    req, key = build_request(w.port, "/a", headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    ws.send_raw(req)
    eq(ws.read_head().get("sec-websocket-extensions"), None, "answer with --deflate off")


# ---------------------------------------------------------------- wsfwd compresses

@test
def t_fanout_once_for_deflate_clients():
    w = start_server("/a=-")
    zc = [deflate_client(w) for _ in range(3)]
    plain = client(w, "/a")
    big = ticker_json(200)
    rnd = os.urandom(3000).hex().encode()[:3000]      # text that barely shrinks
    w.feed(big + b"\nshort\n" + rnd + b"\n")
    frames = []
    for ws in zc:
        f1, f2, f3 = ws.recv_frame(), ws.recv_frame(), ws.recv_frame()
        eq((f1.opcode, f1.rsv), (OP_TEXT, 4), "the big message is compressed")
        eq(inflate(f1.payload), big, "inflated by zlib")
        z6 = len(compress(big, 6))
        check(len(f1.payload) <= z6 * 1.05, "%d bytes for %d, zlib -6: %d" % (
            len(f1.payload), len(big), z6))
        eq((f2.rsv, f2.payload), (0, b"short"), "under --deflate-min: as it is")
        got3 = inflate(f3.payload) if f3.rsv else f3.payload
        eq(got3, rnd, "hex text")
        frames.append(f1.payload)
    check(frames[0] == frames[1] == frames[2], "clients got different compressed forms")
    plain.expect_msg(OP_TEXT, big)
    f = plain.recv_frame()
    eq((f.rsv, f.payload), (0, b"short"), "plain client")
    plain.expect_msg(OP_TEXT, rnd)


@test
def t_upstream_binary_and_deflate_min():
    up = FakeUpstream()
    w = start_server("--deflate-min", "0", "/b=" + up.url("/up"), stdin=False)
    zc = deflate_client(w, "/b")
    u = up.accept_ws("/up")
    msgs = [(OP_BIN, bytes(range(256)) * 40), (OP_TEXT, b"aaaaaaaaaaaaaaaaaaaa"),
            (OP_BIN, b""), (OP_TEXT, "\u20ac".encode() * 30000)]
    for op, p in msgs:
        u.send_frame(op, p, mask=False)
    for op, p in msgs:
        f = zc.recv_frame()
        eq(f.opcode, op, "opcode")
        eq(inflate(f.payload) if f.rsv else f.payload, p, "payload of %d bytes" % len(p))


# ---------------------------------------------------------------- wsfwd inflates

def compressed_client_case(frames, want_close=None, path="/a"):
    w = start_server("/a=-")
    ws = deflate_client(w)
    pings = 0
    for f in frames:
        ws.send_raw(f)
        pings += f[0] == 0x80 | OP_PING
    for _ in range(pings):
        eq(ws.recv_frame().opcode, OP_PONG, "answer to the ping between fragments")
    if want_close:
        ws.expect_close(want_close)
    else:
        ws.ping_pong()
        w.feed(b"still\n")
        ws.expect_msg(OP_TEXT, b"still")


def zframe(op, payload, fin=True, rsv=4):
    return encode_frame(op, payload, fin=fin, mask=True, rsv=rsv)


TEXT = ("h\u00e9llo w\u00f6rld " * 500).encode()
add("inflate_text_ok", compressed_client_case, [zframe(OP_TEXT, compress(TEXT))])
add("inflate_fragmented_ok", compressed_client_case,
    [zframe(OP_TEXT, compress(TEXT)[:10], fin=False),
     encode_frame(OP_PING, b"p"),
     zframe(OP_CONT, compress(TEXT)[10:], rsv=0)])
add("inflate_bad_utf8_1007", compressed_client_case,
    [zframe(OP_TEXT, compress(b"ok " * 100 + b"\xff\xfe"))], 1007)
add("inflate_corrupt_1007", compressed_client_case,
    [zframe(OP_BIN, b"\xff" * 50)], 1007)
add("inflate_bomb_1009", compressed_client_case,
    [zframe(OP_BIN, compress(b"\0" * (17 << 20), 9))], 1009)
add("inflate_64k_inflates_to_16m_ok", compressed_client_case,
    [zframe(OP_BIN, compress(b"\0" * (15 << 20), 9))])
add("compressed_client_message_over_64k_1009", compressed_client_case,
    [zframe(OP_BIN, os.urandom(65537))], 1009)
add("rsv1_on_continuation_1002", compressed_client_case,
    [zframe(OP_TEXT, b"a", fin=False, rsv=0), zframe(OP_CONT, b"b")], 1002)
add("rsv1_on_ping_1002", compressed_client_case, [zframe(OP_PING, b"x")], 1002)
add("rsv2_1002", compressed_client_case, [zframe(OP_TEXT, b"x", rsv=2)], 1002)


@test
def t_rsv1_without_agreement_1002():
    w = start_server("/a=-")
    ws = client(w, "/a")
    ws.send_raw(zframe(OP_TEXT, compress(b"hello")))
    ws.expect_close(1002)


@test
def t_zlib_every_level_and_strategy_round_trip():
    # Through a tunnel: zlib's compression in, wsfwd inflates, the origin
    # echoes the plain bytes, wsfwd compresses them, zlib inflates.
    o = EchoOrigin()
    w = start_server("--tunnel", "--deflate-min", "1", "/t=" + o.up.url("/e"), stdin=False)
    ws = deflate_client(w, "/t")
    o.wait_conns(1)
    data = ticker_json(60, seed=7)
    strategies = (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY,
                  zlib.Z_RLE, zlib.Z_FIXED)
    n = 0
    for level in range(10):
        for st in strategies:
            for wbits in (-15, -9):
                msg = data[: 200 + 97 * n]
                ws.send_frame(OP_TEXT, compress(msg, level, wbits, st), rsv=4)
                f = ws.recv_frame()
                got = inflate(f.payload) if f.rsv else f.payload
                if got != msg:
                    fail("level %d strategy %d wbits %d: echo differs" % (level, st, wbits))
                n += 1
    # Z_FULL_FLUSH and Z_FINISH endings too.
    for fl in (zlib.Z_FULL_FLUSH, zlib.Z_FINISH):
        ws.send_frame(OP_BIN, compress(data, 6, flush=fl), rsv=4)
        f = ws.recv_frame()
        eq(inflate(f.payload) if f.rsv else f.payload, data, "flush mode %d" % fl)
    recs = [r for r in o.conns[0][2] if r[0] in (OP_TEXT, OP_BIN)]
    eq(len(recs), n + 2, "messages at the origin")
    check(all(r[1][:1] == b"[" for r in recs), "the origin got compressed bytes")


# ---------------------------------------------------------------- upstream deflate

class DeflateUpstream:
    """The fake origin's side of an upstream that agreed to deflate."""

    def __init__(self, answer):
        self.up = FakeUpstream()
        self.answer = answer

    def accept(self):
        u = self.up.accept()
        head = u.read_head()
        eq(head.get("sec-websocket-extensions"), "permessage-deflate", "wsfwd's offer")
        ans = "Sec-WebSocket-Extensions: %s\r\n" % self.answer if self.answer else ""
        u.send_raw(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n"
                    % (accept_key(head.get("sec-websocket-key")), ans)).encode())
        return u


def upstream_deflate_case(answer, takeover):
    d = DeflateUpstream(answer)
    w = start_server("--upstream-deflate", "/b=" + d.up.url("/up"), stdin=False)
    plain = client(w, "/b")
    zc = deflate_client(w, "/b")
    u = d.accept()
    w.wait_log("upstream /b: connected")
    msgs = [ticker_json(20, seed=i) for i in range(5)] + [b"tiny"]
    co = zlib.compressobj(6, zlib.DEFLATED, -15)
    for m in msgs:
        if takeover:
            z = co.compress(m) + co.flush(zlib.Z_SYNC_FLUSH)
            z = z[:-4]
        else:
            z = compress(m)
        u.send_frame(OP_TEXT, z, mask=False, rsv=4)
    for m in msgs:
        plain.expect_msg(OP_TEXT, m)
        f = zc.recv_frame()
        eq(inflate(f.payload) if f.rsv else f.payload, m, "deflate client")


add("upstream_deflate_context_takeover", upstream_deflate_case, "permessage-deflate", True)
add("upstream_deflate_no_context_takeover", upstream_deflate_case,
    "permessage-deflate; server_no_context_takeover; client_max_window_bits=10", False)


@test
def t_upstream_bad_deflate_answers():
    for args, answer in (([], "permessage-deflate"),
                         (["--upstream-deflate"], "permessage-deflate; client_max_window_bits"),
                         (["--upstream-deflate"], "permessage-deflate; x=1")):
        up = FakeUpstream()
        w = start_server(*args, "/b=" + up.url("/up"), stdin=False)
        u = up.accept()
        head = u.read_head()
        u.send_raw(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                    "Sec-WebSocket-Extensions: %s\r\n\r\n"
                    % (accept_key(head.get("sec-websocket-key")), answer)).encode())
        w.wait_log("lost: handshake: ")
        check("extension" in w.log() or "permessage-deflate" in w.log(), "reason logged")
        w.stop()


@test
def t_upstream_rsv1_without_agreement():
    up = FakeUpstream()
    w = start_server("/b=" + up.url("/up"), stdin=False)
    c = client(w, "/b")
    u = up.accept_ws("/up")
    u.send_frame(OP_TEXT, compress(b"x" * 100), mask=False, rsv=4)
    u.expect_close(1002)
    c.ping_pong()


# ---------------------------------------------------------------- real peers

def dist_packages():
    for p in ("/usr/lib/python3/dist-packages",):
        if os.path.isdir(p) and p not in sys.path:
            sys.path.append(p)


def t_python_websockets_client():
    import websockets.client
    w = start_server("--tunnel", "/t=" + EchoOrigin().up.url("/e"), stdin=False)
    msgs = [ticker_json(100, seed=s).decode() for s in range(5)] + ["small", "\u20ac" * 5000]

    async def run():
        async with websockets.client.connect("ws://127.0.0.1:%d/t" % w.port,
                                             open_timeout=TIMEOUT, max_size=None) as ws:
            ext = [e.name for e in ws.extensions]
            for m in msgs:
                await ws.send(m)
                got = await asyncio.wait_for(ws.recv(), TIMEOUT)
                if got != m:
                    return ext, "message of %d characters came back changed" % len(m)
            return ext, None
    ext, err = asyncio.run(asyncio.wait_for(run(), 20))
    eq(ext, ["permessage-deflate"], "extensions websockets negotiated")
    check(err is None, err or "")


NODE_WS = os.path.join(ROOT, "bench", "node", "node_modules", "ws")


def t_node_ws_client():
    node, mod = shutil.which("node"), NODE_WS
    w = start_server("--replay", "3", "/a=-")
    big = ticker_json(150).decode()
    script = r"""
const WebSocket = require(process.argv[2]);
const want = JSON.parse(process.argv[4]);
const ws = new WebSocket(process.argv[3], {perMessageDeflate: {clientNoContextTakeover: true}});
const got = [];
const timer = setTimeout(() => { console.log("timeout " + got.length); process.exit(1); }, 8000);
ws.on('message', (d) => {
  got.push(d.toString());
  if (got.length === want.length) {
    const ok = got.every((m, i) => m === want[i]);
    console.log((ok ? "ok " : "bad ") + ws.extensions);
    clearTimeout(timer); ws.close(); process.exit(ok ? 0 : 1);
  }
});
ws.on('error', (e) => { console.log("error " + e.message); process.exit(1); });
"""
    w.feed(("%s\nsecond\n%s\n" % (big, big[::-1])).encode())
    time.sleep(0.3)
    path = os.path.join(wslib.TMP, "client.js")
    with open(path, "w") as f:
        f.write(script)
    p = subprocess.run([node, path, mod, "ws://127.0.0.1:%d/a" % w.port,
                        json.dumps([big, "second", big[::-1]])],
                       capture_output=True, timeout=15, text=True)
    check(p.returncode == 0, "node: %s %s" % (p.stdout.strip(), p.stderr.strip()[:200]))
    check("permessage-deflate" in p.stdout, "node negotiated %r" % p.stdout.strip())


CHROMIUM_PAGE = r"""<!doctype html><meta charset=utf-8><title>wsfwd</title><script>
var ws = new WebSocket("ws://127.0.0.1:PORT/t"), n = 0, bad = 0, sum = 0;
ws.onmessage = function (e) {
  if (e.data.startsWith("hello")) return;
  var m = JSON.parse(e.data);
  if (!Array.isArray(m) || m.length !== m[0].n) bad++;
  sum += e.data.length; n++;
  if (n === COUNT) ws.send("result " + n + " " + bad + " " + sum + " " + ws.extensions);
};
ws.onopen = function () { ws.send("hello " + "x".repeat(2000)); };
</script>"""


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def t_chromium_headless():
    exe = chromium()
    count = 20
    rnd = random.Random(3)
    msgs = []
    for i in range(count):
        k = rnd.randrange(1, 300)
        msgs.append(json.dumps([{"n": k, "i": i, "p": "%.8f" % rnd.random()} for _ in range(k)]))
    sent = threading.Event()

    o = EchoOrigin()
    o.first = None
    w = start_server("--tunnel", "/t=" + o.up.url("/e"), stdin=False)
    page = os.path.join(wslib.TMP, "page.html")
    with open(page, "w") as f:
        f.write(CHROMIUM_PAGE.replace("PORT", str(w.port)).replace("COUNT", str(count)))
    prof = os.path.join(wslib.TMP, "chromium-profile")
    proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu",
                             "--no-first-run", "--user-data-dir=" + prof, "file://" + page],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wslib.CLEANUP.append(lambda: (proc.kill(), proc.wait()))
    conn = o.wait_conns(1, timeout=20)[0][0]
    o.wait_record(0, lambda r: r[1].startswith(b"hello "), timeout=20)
    for m in msgs:
        conn.send_frame(OP_TEXT, m.encode(), mask=False)
    r = o.wait_record(0, lambda r: r[1].startswith(b"result "), timeout=20)
    words = r[1].decode().split(" ", 4)
    eq(words[1:4], [str(count), "0", str(sum(len(m) for m in msgs))],
       "messages, bad ones, characters the page counted")
    eq(words[4], "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
       "ws.extensions in the page")
    del sent


def have_websockets():
    dist_packages()
    try:
        import websockets.client  # noqa: F401
        return True
    except ImportError:
        return False


def main():
    # Peers a machine may lack: such a test prints "skip - NAME: why" and
    # counts as neither passed nor failed (.ci/run installs them all).
    only = wslib.register_optional((
        ("python_websockets_client", t_python_websockets_client,
         None if have_websockets() else
         "no Python websockets (apt-get install python3-websockets)"),
        ("node_ws_client", t_node_ws_client,
         None if shutil.which("node") and os.path.isdir(NODE_WS) else
         "no node, or no ws in bench/node (cd bench/node && npm install)"),
        ("chromium_headless", t_chromium_headless,
         None if chromium() else "no chromium (apt-get install chromium)")),
        sys.argv[2:])
    if only is None:
        return 0
    return wslib.main(sys.argv[:2] + only, "BIN [TEST...]", "wsfwd-deflate.", alarm=60)


if __name__ == "__main__":
    sys.exit(main())
