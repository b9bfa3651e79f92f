#!/usr/bin/env python3
"""Write the seed corpus of each fuzz target into DIR/<target>/ (make fuzz-run).

Stream targets take their first byte as the seed of the chunk sizes."""
import base64
import glob
import os
import shutil
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def frame(op, payload, mask=True, fin=True):
    n = len(payload)
    b0 = (0x80 if fin else 0) | op
    m = 0x80 if mask else 0
    if n < 126:
        h = bytes([b0, m | n])
    elif n < 65536:
        h = bytes([b0, m | 126]) + n.to_bytes(2, "big")
    else:
        h = bytes([b0, m | 127]) + n.to_bytes(8, "big")
    if not mask:
        return h + payload
    k = b"\x37\xfa\x21\x3d"
    return h + k + bytes(c ^ k[i % 4] for i, c in enumerate(payload))


REQ = (b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
       b"Connection: keep-alive, Upgrade\r\n"
       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
RESP = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


def inflate_seeds():
    """Messages zlib compressed (raw, the RFC 7692 tail cut), each behind a
    2-byte length, after a mode byte (see fuzz_inflate in wsfwd.c)."""
    text = b'[{"e":"24hrMiniTicker","s":"BTCUSDT","c":"37123.45"}]' * 20
    out = {}
    for level, strat, name in ((0, zlib.Z_DEFAULT_STRATEGY, "stored"),
                               (6, zlib.Z_FIXED, "fixed"),
                               (6, zlib.Z_DEFAULT_STRATEGY, "dynamic"),
                               (9, zlib.Z_HUFFMAN_ONLY, "huffman")):
        c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, strat)
        msgs = b""
        for part in (text[:300], text[300:]):
            z = c.compress(part) + c.flush(zlib.Z_SYNC_FLUSH)
            z = z[:-4]
            msgs += struct.pack("<H", len(z)) + z
        out[name] = bytes([0x08 | 0x30 | 7]) + msgs     # window kept, 1 MiB
    out["round-trip"] = b"\x87" + text
    return out


def seeds():
    s = {
        "request": {
            "upgrade": b"\x80" + REQ,
            "upgrade-frames": b"\x03" + REQ + frame(1, b"hi") + frame(9, b"p") +
            frame(8, b"\x03\xe8"),
            "post": b"\x80POST /a HTTP/1.1\r\nHost: h\r\n\r\n",
            "version8": b"\x80" + REQ.replace(b"Version: 13", b"Version: 8"),
        },
        "response": {
            "101": b"\x80" + RESP,
            "101-frames": b"\x01" + RESP + frame(1, b"hello", False) +
            frame(2, b"x" * 300, False),
            "404": b"\x80HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        },
        "frame-server": {
            "fragments-ping": b"\x05" + frame(1, b"hel", fin=False) + frame(9, b"pp") +
            frame(0, b"lo") + frame(2, b"y" * 200) + frame(8, b"\x03\xe8bye"),
            "lengths": b"\x80" + frame(2, b"a" * 126) + frame(2, b"b" * 65536),
            "bad-utf8": b"\x80" + frame(1, b"\xc0\xaf"),
        },
        "frame-client": {
            "fragments-ping": b"\x05" + frame(1, b"hel", False, False) +
            frame(9, b"pp", False) + frame(0, b"lo", False) + frame(8, b"\x03\xe8", False),
            "lengths": b"\x80" + frame(2, b"y" * 70000, False) + frame(1, b"", False),
        },
        "utf8": {
            "mixed": "κόσμε 😀 abc €".encode(),
            "edges": b"\xed\x9f\xbf\xee\x80\x80\xf4\x8f\xbf\xbf",
        },
        "url": {
            "binance": b"wss://stream.binance.com:9443/ws/!miniTicker@arr",
            "v6-query": b"ws://[::1]:80?b=c",
        },
        "pem": {},
        "inflate": inflate_seeds(),
    }
    for f in ("/etc/ssl/certs/ca-certificates.crt",):
        if os.path.exists(f):
            with open(f, "rb") as fh:
                s["pem"]["bundle-head"] = fh.read()[:8000]
    return s


def main():
    out = sys.argv[1]
    for target, files in seeds().items():
        d = os.path.join(out, target)
        os.makedirs(d, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        # Inputs that once crashed a target stay in its corpus.
        for f in glob.glob(os.path.join(HERE, target + "-*")):
            shutil.copy(f, d)


if __name__ == "__main__":
    main()
