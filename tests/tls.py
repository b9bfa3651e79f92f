#!/usr/bin/env python3
"""Black-box TLS (wss://) tests for wsfwd.

usage: python3 tests/tls.py ./wsfwd [TEST-SUBSTRING...]

Certificates are made at start with the `openssl` command in a temporary
directory: a throwaway CA and leaves signed by it (RSA and ECDSA P-256 for
localhost, RSA for other.example, and an RSA one for localhost that expired
in 2020).  The origin is a threaded WebSocket server on Python's `ssl`
(OpenSSL), and a plain TCP listener that accepts and never answers stands in
for a stalled TLS server.  wsfwd's clients are raw-socket RFC 6455 clients
or `wsfwd --cat`.

Only 127.0.0.1 is used; every wait is bounded (socket timeouts <= 5 s, log
polls with deadlines, one alarm per test); every process is stopped by PID
(SIGTERM, then SIGKILL after 2 s) when its test ends; each wsfwd's stderr
goes to a log file (in $WSFWD_LOGDIR if set, else in the temporary directory,
which is removed at the end) that is searched for sanitizer reports.  The
helpers and the runner are in wslib.py, shared with proto.py.

Output: "ok - NAME" or "FAIL - NAME: reason" per test, then as the last line
"N passed, M failed"; exit status 1 if any test failed.  Diagnostics (log
tails) go to stderr.
"""

import base64
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wslib  # noqa: E402
from wslib import (  # noqa: E402
    HOST, TIMEOUT, OP_TEXT, OP_BIN, OP_CLOSE, CLEANUP,
    Timeout, Closed, fail, check, eq, short, first_diff,
    accept_key, encode_frame, HttpHead, Peer, WS, free_port, test)

TEST_ALARM = 25         # seconds any one test may take, all waits included

CERT = {}               # name -> (certificate file, key file)
CA = None               # the CA certificate (PEM) for --ca


# ---------------------------------------------------------------- origins

class OriginConn(Peer):
    """One upgraded connection of wsfwd to the TLS origin, server side."""
    expect_masked = True
    who = "wsfwd (as client)"
    send_timeout = 10.0
    broken_errors = OSError     # TLS errors too

    def __init__(self, sock, sni, request, rest):
        super().__init__(sock, rest)
        self.sni = sni
        self.request = request

    def send(self, opcode, payload):
        self.send_frame(opcode, payload)

    def abort(self):
        """Close TCP with no close_notify and no close frame: SSLSocket's
        shutdown() drops the TLS layer and just shuts the socket down."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close()


class TlsOrigin:
    """A threaded TLS WebSocket server on 127.0.0.1 that checks wsfwd's
    upgrade request, answers 101, and hands each connection to the test."""

    def __init__(self, cert, path="/feed", host_header=None, ciphers=None):
        certfile, keyfile = CERT[cert]
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certfile, keyfile)
        if ciphers:             # TLS 1.2 with exactly these suites
            self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            self.ctx.set_ciphers(ciphers)
        self.ctx.sni_callback = self._sni
        self.tl = threading.local()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind((HOST, 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.path = path
        self.host_header = host_header or "localhost:%d" % self.port
        self.cond = threading.Condition()
        self.accepts = 0        # TCP connections
        self.tls_failed = []    # TLS handshake failures, as text
        self.errors = []        # faults in wsfwd's upgrade requests
        self.conns = []         # OriginConn after 101
        self.raws = []
        self.stopping = False
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()
        CLEANUP.append(self.stop)

    def url(self, host="localhost"):
        return "wss://%s:%d%s" % (host, self.port, self.path)

    def _sni(self, sslobj, name, ctx):
        self.tl.sni = name
        return None

    def _accept_loop(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.cond:
                self.accepts += 1
                self.raws.append(s)
                self.cond.notify_all()
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, raw):
        self.tl.sni = None
        raw.settimeout(TIMEOUT)
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ValueError) as e:
            with self.cond:
                self.tls_failed.append(str(e))
                self.cond.notify_all()
            raw.close()
            return
        with self.cond:
            self.raws.append(s)
        sni = self.tl.sni
        buf = b""
        deadline = time.monotonic() + TIMEOUT
        try:
            while b"\r\n\r\n" not in buf and len(buf) < 16384 and time.monotonic() < deadline:
                d = s.recv(16384)
                if not d:
                    break
                buf += d
        except OSError as e:
            self._error("reading the upgrade request: %s (got %s)" % (e, short(buf)))
            s.close()
            return
        if b"\r\n\r\n" not in buf:
            self._error("no complete upgrade request: %s" % short(buf))
            s.close()
            return
        head, _, rest = buf.partition(b"\r\n\r\n")
        h = HttpHead(head)
        problems = []
        if h.start != "GET %s HTTP/1.1" % self.path:
            problems.append("request line %r, want %r" % (h.start, "GET %s HTTP/1.1" % self.path))
        if h.get("host") != self.host_header:
            problems.append("Host %r, want %r" % ([v for n, v in h.headers if n == "host"],
                                                  self.host_header))
        if (h.get("upgrade") or "").lower() != "websocket":
            problems.append("Upgrade %r" % h.get("upgrade"))
        if "upgrade" not in h.tokens("connection"):
            problems.append("Connection %r" % h.get("connection"))
        if h.get("sec-websocket-version") != "13":
            problems.append("Sec-WebSocket-Version %r" % h.get("sec-websocket-version"))
        key = h.get("sec-websocket-key") or ""
        try:
            if len(base64.b64decode(key, validate=True)) != 16:
                problems.append("Sec-WebSocket-Key %r is not 16 bytes" % key)
        except ValueError:
            problems.append("Sec-WebSocket-Key %r is not base64" % key)
        try:
            if problems:
                self._error("bad upgrade request: " + "; ".join(problems))
                s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                s.close()
                return
            s.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                       % accept_key(key)).encode())
        except OSError as e:
            self._error("sending the upgrade response: %s" % e)
            s.close()
            return
        c = OriginConn(s, sni, head, rest)
        with self.cond:
            self.conns.append(c)
            self.cond.notify_all()

    def _error(self, msg):
        with self.cond:
            self.errors.append(msg)
            self.cond.notify_all()

    def wait_conn(self, i, timeout=TIMEOUT):
        """The i-th (0-based) upgraded connection, waiting for it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.conns) <= i:
                check(not self.errors, "origin: %s" % self.errors[-1] if self.errors else "")
                left = deadline - time.monotonic()
                if left <= 0:
                    fail("origin :%d: no upgraded connection #%d within %.1f s "
                         "(%d TCP accepts, TLS failures %s)" % (
                             self.port, i + 1, timeout, self.accepts, self.tls_failed[-2:]))
                self.cond.wait(min(left, 0.1))
            return self.conns[i]

    def check_clean(self):
        """Every upgrade request wsfwd sent was well-formed."""
        with self.cond:
            check(not self.errors, "origin: %s" % (self.errors[0] if self.errors else ""))

    def stop(self):
        self.stopping = True
        self.thread.join(2.0)
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.cond:
            socks = list(self.raws)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass


class SilentServer:
    """Accepts TCP connections and never reads or writes a byte."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind((HOST, 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.socks = []
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        CLEANUP.append(self.stop)

    @property
    def accepts(self):
        with self.lock:
            return len(self.socks)

    def _loop(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.socks.append(s)

    def stop(self):
        self.stopping = True
        self.thread.join(2.0)
        self.lsock.close()
        with self.lock:
            for s in self.socks:
                s.close()


# ---------------------------------------------------------------- processes

class Wsfwd(wslib.Wsfwd):
    """One wsfwd process; stderr to a log file, stdout to a file (out()).

    SIGTERM must give exit 0 unless term_exit_zero=False; SIGKILL follows
    after 2 s."""
    TERM_WAIT = 2.0

    def __init__(self, args, role="wsfwd", term_exit_zero=True):
        super().__init__(args, role, out_file=True, term_exit_zero=term_exit_zero)


def route(routes, *opts, role="wsfwd"):
    """wsfwd listening on a free port with ROUTES; returns (proc, port)."""
    w = Wsfwd.listen(list(opts) + list(routes), role=role)
    return w, w.port


def cat(url, *opts, role="cat"):
    return Wsfwd(["--cat", url] + list(opts), role, term_exit_zero=False)


# ---------------------------------------------------------------- certificates

def openssl(*args):
    try:
        r = subprocess.run(["openssl"] + list(args), cwd=wslib.TMP, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        fail("openssl %s: %s" % (args[0], e))
    return r


def openssl_ok(*args):
    r = openssl(*args)
    if r.returncode != 0:
        fail("openssl %s failed (%d): %s" % (" ".join(args[:2]), r.returncode,
                                             r.stderr.decode(errors="replace").strip()[-300:]))
    return r


def make_certs():
    """CA and leaves in TMP; fills CERT and CA. Returns how the expired leaf was made."""
    global CA
    p = lambda name: os.path.join(wslib.TMP, name)
    openssl_ok("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p("ca.key"),
               "-out", p("ca.pem"), "-days", "7", "-subj", "/CN=wsfwd-test-ca")
    CA = p("ca.pem")
    for name, dns in (("localhost", "localhost"), ("other", "other.example")):
        with open(p("ext-%s.cnf" % name), "w") as f:
            f.write("subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\n" % dns)

    def csr(name, cn, ec=False):
        if ec:
            openssl_ok("ecparam", "-name", "prime256v1", "-genkey", "-noout",
                       "-out", p(name + ".key"))
            openssl_ok("req", "-new", "-key", p(name + ".key"), "-out", p(name + ".csr"),
                       "-subj", "/CN=" + cn)
        else:
            openssl_ok("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p(name + ".key"),
                       "-out", p(name + ".csr"), "-subj", "/CN=" + cn)

    def sign(name, ext):
        openssl_ok("x509", "-req", "-in", p(name + ".csr"), "-CA", p("ca.pem"),
                   "-CAkey", p("ca.key"), "-CAcreateserial", "-days", "7", "-sha256",
                   "-extfile", p("ext-%s.cnf" % ext), "-out", p(name + ".pem"))
        CERT[name] = (p(name + ".pem"), p(name + ".key"))

    csr("rsa", "localhost")
    sign("rsa", "localhost")
    csr("ecdsa", "localhost", ec=True)
    sign("ecdsa", "localhost")
    csr("other", "other.example")
    sign("other", "other")
    csr("expired", "localhost")
    # openssl >= 3.4 has x509 -not_before/-not_after; 3.0 has not, so
    # fall back to `openssl ca` with -startdate/-enddate.
    r = openssl("x509", "-req", "-in", p("expired.csr"), "-CA", p("ca.pem"),
                "-CAkey", p("ca.key"), "-CAcreateserial", "-sha256",
                "-not_before", "20200101000000Z", "-not_after", "20200102000000Z",
                "-extfile", p("ext-localhost.cnf"), "-out", p("expired.pem"))
    how = "openssl x509 -not_before/-not_after"
    if r.returncode != 0:
        how = "openssl ca -startdate/-enddate"
        db = p("cadb")
        os.makedirs(os.path.join(db, "new"), exist_ok=True)
        open(os.path.join(db, "index.txt"), "w").close()
        with open(os.path.join(db, "serial"), "w") as f:
            f.write("1000\n")
        with open(p("ca.cnf"), "w") as f:
            f.write("[ca]\ndefault_ca = tca\n[tca]\ndir = %s\n"
                    "database = $dir/index.txt\nnew_certs_dir = $dir/new\n"
                    "serial = $dir/serial\ndefault_md = sha256\npolicy = pol\n"
                    "unique_subject = no\ncopy_extensions = none\n"
                    "[pol]\ncommonName = supplied\n"
                    "[ext]\nsubjectAltName = DNS:localhost\nbasicConstraints = CA:FALSE\n"
                    % db)
        openssl_ok("ca", "-batch", "-notext", "-config", p("ca.cnf"), "-cert", p("ca.pem"),
                   "-keyfile", p("ca.key"), "-in", p("expired.csr"), "-out", p("expired.pem"),
                   "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
                   "-extensions", "ext")
    CERT["expired"] = (p("expired.pem"), p("expired.key"))

    # Check what was made: the chains verify, names and dates are as meant.
    for name in ("rsa", "ecdsa", "other"):
        openssl_ok("verify", "-CAfile", CA, CERT[name][0])
    r = openssl("verify", "-CAfile", CA, CERT["expired"][0])
    check(r.returncode != 0 and b"expired" in r.stdout + r.stderr,
          "openssl verify does not call the expired leaf expired: %s" % short(r.stdout + r.stderr))
    dates = openssl_ok("x509", "-in", CERT["expired"][0], "-noout", "-dates").stdout.decode()
    check("notBefore=Jan  1 00:00:00 2020 GMT" in dates and
          "notAfter=Jan  2 00:00:00 2020 GMT" in dates, "expired leaf dates: %r" % dates)
    for name, dns in (("rsa", "localhost"), ("ecdsa", "localhost"),
                      ("other", "other.example"), ("expired", "localhost")):
        t = openssl_ok("x509", "-in", CERT[name][0], "-noout", "-text").stdout.decode()
        check("DNS:%s" % dns in t and "CA:FALSE" in t,
              "%s leaf lacks DNS:%s or CA:FALSE" % (name, dns))
    t = openssl_ok("x509", "-in", CERT["ecdsa"][0], "-noout", "-text").stdout.decode()
    check("prime256v1" in t, "ECDSA leaf is not P-256")
    return how


# ---------------------------------------------------------------- the tests

def lost(path, reason):
    return "upstream %s: lost: %s; retry in " % (path, reason)


@test("trusted RSA leaf with --ca: route to 2 clients byte-exact, and --cat")
def t_trusted_rsa():
    o = TlsOrigin("rsa")
    w, port, up = connected(o, "--ca", CA)
    eq(up.sni, "localhost", "SNI sent by wsfwd")
    clients = [WS.open(port, "/a"), WS.open(port, "/a")]
    for c in clients:
        w.wait_client(c)
    lines = [("line %d %s" % (i, "é€😀" * (i % 4))).encode() for i in range(200)]
    for ln in lines:
        up.send(OP_TEXT, ln)
    for i, c in enumerate(clients):
        for ln in lines:
            c.expect_msg(OP_TEXT, ln)
    big = os.urandom(1 << 20)
    up.send(OP_BIN, big)
    up.send(OP_TEXT, b"after the big one")
    for i, c in enumerate(clients):
        try:
            f = c.recv_msg(15)
        except (Timeout, Closed) as e:
            fail("client %d: waiting for the 1 MiB binary message: %s" % (i + 1, e))
        eq(f.opcode, OP_BIN, "client %d: opcode of the 1 MiB message" % (i + 1))
        eq(len(f.payload), len(big), "client %d: length of the binary message" % (i + 1))
        check(f.payload == big, "client %d: 1 MiB message differs at byte %d"
              % (i + 1, first_diff(f.payload, big)))
        c.expect_msg(OP_TEXT, b"after the big one")
    o.check_clean()

    # --cat straight to the origin: text lines and the same 1 MiB binary.
    k = cat(o.url(), "--ca", CA)
    cu = o.wait_conn(1)
    eq(cu.sni, "localhost", "SNI sent by --cat")
    for ln in lines[:50]:
        cu.send(OP_TEXT, ln)
    cu.send(OP_BIN, big)
    cu.send(OP_TEXT, b"last")
    want = b"".join(ln + b"\n" for ln in lines[:50]) + big + b"\nlast\n"
    deadline = time.monotonic() + 15
    while len(k.out()) < len(want) and time.monotonic() < deadline and k.proc.poll() is None:
        time.sleep(0.05)
    got = k.out()
    eq(len(got), len(want), "--cat stdout length")
    check(got == want, "--cat stdout differs at byte %d" % first_diff(got, want))
    cu.send(OP_CLOSE, struct.pack("!H", 1000))
    eq(k.wait_exit(5), 0, "--cat exit status after close 1000")
    o.check_clean()


@test("ECDSA P-256 leaf with --ca: route delivers")
def t_ecdsa():
    o = TlsOrigin("ecdsa")
    w, port, up = connected(o, "--ca", CA)
    cipher = up.sock.cipher()
    check("ECDSA" in cipher[0], "negotiated suite %r is not ECDSA" % (cipher,))
    eq(up.sock.version(), "TLSv1.2", "TLS version")
    c = WS.open(port, "/a")
    w.wait_client(c)
    up.send(OP_TEXT, b"ecdsa ok")
    up.send(OP_BIN, bytes(range(256)) * 300)
    c.expect_msg(OP_TEXT, b"ecdsa ok")
    c.expect_msg(OP_BIN, bytes(range(256)) * 300)
    o.check_clean()


@test("each suite of the trimmed profile works; a server without ECDHE is refused")
def t_suites():
    # wsfwd links only ECDHE with AES-GCM or ChaCha20-Poly1305: check each
    # against an OpenSSL server that offers nothing else.
    for leaf, suite in (("rsa", "ECDHE-RSA-AES128-GCM-SHA256"),
                        ("rsa", "ECDHE-RSA-AES256-GCM-SHA384"),
                        ("rsa", "ECDHE-RSA-CHACHA20-POLY1305"),
                        ("ecdsa", "ECDHE-ECDSA-AES128-GCM-SHA256"),
                        ("ecdsa", "ECDHE-ECDSA-AES256-GCM-SHA384"),
                        ("ecdsa", "ECDHE-ECDSA-CHACHA20-POLY1305")):
        o = TlsOrigin(leaf, ciphers=suite)
        w, port, up = connected(o, "--ca", CA)
        eq(up.sock.cipher()[0], suite, "negotiated suite")
        c = WS.open(port, "/a")
        w.wait_client(c)
        up.send(OP_BIN, bytes(range(256)) * 64)
        c.expect_msg(OP_BIN, bytes(range(256)) * 64)
        w.stop()
    o = TlsOrigin("rsa", ciphers="AES128-GCM-SHA256")
    w, port = route(["/a=" + o.url()], "--ca", CA)
    w.wait_log(lost("/a", "TLS handshake failure: server sent alert 40 (handshake_failure)"))
    eq(len(o.conns), 0, "upgrades the origin saw")


@test("no --ca: system bundle, unknown issuer, retried, client stays")
def t_unknown_issuer():
    o = TlsOrigin("rsa")
    w, port = route(["/a=" + o.url()])
    c = WS.open(port, "/a")
    w.wait_client(c)
    why = lost("/a", "certificate not trusted: unknown issuer (see --ca)")
    w.wait_log(why, 1, TIMEOUT)
    w.wait_log(why, 2, 3.0)             # the retry, within 3 s of the first
    eq(len(o.conns), 0, "upgrades the origin saw")
    check(o.accepts >= 2, "origin saw %d TCP connections, want >= 2" % o.accepts)
    check("connected to wss" not in w.log(), "wsfwd logged a connection")
    c.ping_pong()
    o.check_clean()


def connected(o, *opts, url=None):
    """wsfwd with route /a to origin o (at url), once the upstream is up:
    (w, port, up)."""
    url = url or o.url()
    w, port = route(["/a=" + url], *opts)
    w.wait_log("upstream /a: connected to %s (" % url)
    return w, port, o.wait_conn(0)


def refused(leaf, reason):
    """A route to an origin with this leaf, trusting the test CA, is refused."""
    o = TlsOrigin(leaf)
    w, port = route(["/a=" + o.url()], "--ca", CA)
    w.wait_log(lost("/a", reason))
    eq(len(o.conns), 0, "upgrades the origin saw")
    check("upstream /a: connected" not in w.log(), "wsfwd logged a connection")


@test("name mismatch (other.example) is refused with its reason")
def t_name_mismatch():
    refused("other", "certificate name mismatch: not issued for this host")


@test("expired leaf is refused with its reason")
def t_expired():
    refused("expired", "certificate expired or not yet valid")


@test("-k with the mismatched leaf: warning, messages flow")
def t_insecure():
    o = TlsOrigin("other")
    w, port, up = connected(o, "-k")
    check("NOT verified" in w.log(), "no 'NOT verified' warning on stderr")
    eq(up.sni, "localhost", "SNI with -k and a host name")
    c = WS.open(port, "/a")
    w.wait_client(c)
    up.send(OP_TEXT, b"unverified but flowing")
    c.expect_msg(OP_TEXT, b"unverified but flowing")
    o.check_clean()


@test("wss:// to an IP literal: exit 2 naming -k without it, works with -k")
def t_ip_literal():
    o = TlsOrigin("rsa")
    o.host_header = "%s:%d" % (HOST, o.port)    # no default port: port in Host
    url = o.url(HOST)
    port = free_port()
    w = Wsfwd(["-l", "%s:%d" % (HOST, port), "/a=" + url, "--ca", CA], "refused")
    rc = w.wait_exit(5)
    eq(rc, 2, "exit status for %s without -k" % url)
    err = w.log()
    check("-k" in err, "stderr does not mention -k: %r" % err)
    eq(len(err.strip().splitlines()), 1, "lines on stderr")
    k = cat(url, "--ca", CA, role="cat-refused")
    eq(k.wait_exit(5), 2, "--cat exit status for %s without -k" % url)
    check("-k" in k.log(), "--cat stderr does not mention -k: %r" % k.log())
    time.sleep(0.1)
    eq(o.accepts, 0, "TCP connections to the origin without -k")

    w, port, up = connected(o, "-k", url=url)
    check("NOT verified" in w.log(), "no 'NOT verified' warning on stderr")
    eq(up.sni, None, "SNI for an IP literal")
    c = WS.open(port, "/a")
    w.wait_client(c)
    up.send(OP_TEXT, b"by address")
    c.expect_msg(OP_TEXT, b"by address")
    o.check_clean()


@test("origin dies mid-message without close_notify: reconnect, client keeps receiving")
def t_killed_midstream():
    o = TlsOrigin("rsa")
    w, port, up = connected(o, "--ca", CA)
    c = WS.open(port, "/a")
    w.wait_client(c)
    up.send(OP_TEXT, b"before")
    c.expect_msg(OP_TEXT, b"before")
    # Half of a 1000-byte message, then the socket goes away.
    part = encode_frame(OP_TEXT, b"p" * 1000, mask=False)[:504]
    up.send_raw(part)
    time.sleep(0.1)
    up.abort()
    w.wait_log(lost("/a", "EOF without close_notify"))
    up2 = o.wait_conn(1, timeout=4)
    w.wait_log("upstream /a: connected to %s (" % o.url(), 2)
    up2.send(OP_TEXT, b"after")
    c.expect_msg(OP_TEXT, b"after")     # nothing of the half message before it
    c.ping_pong()
    check("disconnected from /a" not in w.log(), "a client was disconnected")
    o.check_clean()


def clean_tls_close(conn):
    """close_notify (answered by wsfwd or not within 3 s), then TCP close."""
    conn.sock.settimeout(3.0)
    try:
        conn.sock.unwrap().close()
    except (OSError, ValueError):
        conn.close()


@test("message then close_notify in one burst: route notices within 3 s, reconnects")
def t_close_notify_after_message():
    o = TlsOrigin("rsa")
    w, port, up = connected(o, "--ca", CA)
    c = WS.open(port, "/a")
    w.wait_client(c)
    # The last message and the TLS close leave back to back, as from a
    # server that ends its feed with a clean TLS shutdown and no close frame.
    up.send(OP_TEXT, b"last words")
    clean_tls_close(up)
    c.expect_msg(OP_TEXT, b"last words")
    w.wait_log("upstream /a: lost: ", 1, 3.0)
    up2 = o.wait_conn(1, timeout=3)
    w.wait_log("upstream /a: connected to %s (" % o.url(), 2)
    up2.send(OP_TEXT, b"back again")
    c.expect_msg(OP_TEXT, b"back again")
    o.check_clean()


@test("--cat: message then close_notify in one burst: exits 1 within 3 s")
def t_cat_close_notify_after_message():
    o = TlsOrigin("rsa")
    k = cat(o.url(), "--ca", CA)
    up = o.wait_conn(0)
    up.send(OP_TEXT, b"only")
    clean_tls_close(up)
    rc = k.wait_exit(3.0)
    eq(rc, 1, "--cat exit status after a TLS close with no close frame")
    eq(k.out(), b"only\n", "--cat stdout")
    check(k.log().strip() != "", "--cat gave no reason on stderr")
    o.check_clean()


@test("a server that never answers TLS: handshake timeout ~10 s, other route unaffected")
def t_stalled_handshake():
    t0 = time.monotonic()
    silent = SilentServer()
    good = TlsOrigin("rsa")
    w, port = route(["/a=wss://localhost:%d/feed" % silent.port, "/b=" + good.url()],
                    "--ca", CA)
    w.wait_log("upstream /b: connected to %s (" % good.url())
    up = good.wait_conn(0)
    c = WS.open(port, "/b")
    w.wait_client(c, "/b")
    why = lost("/a", "TLS handshake timed out")
    ticks, worst, seen = 0, 0.0, None
    while time.monotonic() - t0 < 15:
        if why in w.log():
            seen = time.monotonic() - t0
            break
        msg = b"tick %d" % ticks
        t = time.monotonic()
        up.send(OP_TEXT, msg)
        c.expect_msg(OP_TEXT, msg, timeout=1.0)
        worst = max(worst, time.monotonic() - t)
        ticks += 1
        time.sleep(0.2)
    check(seen is not None, "no %r within 15 s (log: %r)" % (why, w.log()[-300:]))
    check(silent.accepts >= 1, "the silent server saw no connection")
    check(seen >= 9.5, "handshake timed out after %.1f s, want ~10" % seen)
    check(seen <= 12.5, "handshake timed out after %.1f s, want ~10" % seen)
    check(ticks >= 20, "only %d messages reached /b during the stall" % ticks)
    up.send(OP_TEXT, b"still here")
    c.expect_msg(OP_TEXT, b"still here")
    sys.stderr.write("# stall: timed out at %.2f s; %d messages on /b, worst latency %.3f s\n"
                     % (seen, ticks, worst))
    good.check_clean()


@test("--cat wss:// exits 0 on close 1000 after printing the lines")
def t_cat_close():
    o = TlsOrigin("rsa", path="/x")
    k = cat("wss://localhost:%d/x" % o.port, "--ca", CA)
    up = o.wait_conn(0)
    msgs = [b"first", "zweite Zeile \u2013 \u00fc\u00df".encode(), b"", b'{"n": 3}']
    for m in msgs:
        up.send(OP_TEXT, m)
    up.send(OP_CLOSE, struct.pack("!H", 1000) + b"bye")
    rc = k.wait_exit(5)
    eq(rc, 0, "--cat exit status (stderr %r)" % k.log()[-200:])
    eq(k.out(), b"".join(m + b"\n" for m in msgs), "--cat stdout")
    try:
        f = up.recv_frame(2.0)
    except (Timeout, Closed) as e:
        fail("--cat did not answer the close frame: %s" % e)
    eq((f.opcode, f.code), (OP_CLOSE, 1000), "--cat's answer to close 1000")
    o.check_clean()


@test("--ca file with no certificate, or missing: exit 2 naming --ca and the path")
def t_bad_ca_file():
    url = "wss://localhost:%d/feed" % free_port()
    key_only = os.path.join(wslib.TMP, "key-only.pem")
    shutil.copyfile(CERT["rsa"][1], key_only)
    cases = [("empty", b""), ("hello", b"hello"), ("key-only", None)]
    for name, content in cases:
        path = os.path.join(wslib.TMP, "ca-%s.pem" % name) if content is not None else key_only
        if content is not None:
            with open(path, "wb") as f:
                f.write(content)
        w = Wsfwd(["-l", "%s:%d" % (HOST, free_port()), "/a=" + url, "--ca", path],
                  "ca-" + name)
        rc = w.wait_exit(5)
        eq(rc, 2, "exit status with a %s --ca file (stderr %r)" % (name, w.log()[-200:]))
        err = w.log()
        check("--ca" in err, "stderr for a %s --ca file does not mention --ca: %r"
              % (name, err))
        eq(len(err.strip().splitlines()), 1, "lines on stderr (%s --ca file)" % name)
    missing = os.path.join(wslib.TMP, "no-such-dir", "ca.pem")
    w = Wsfwd(["-l", "%s:%d" % (HOST, free_port()), "/a=" + url, "--ca", missing],
              "ca-missing")
    rc = w.wait_exit(5)
    eq(rc, 2, "exit status with a missing --ca file")
    check(missing in w.log() and "--ca" in w.log(),
          "stderr does not name %s and --ca: %r" % (missing, w.log()))
    k = cat(url, "--ca", missing, role="cat-ca-missing")
    rc = k.wait_exit(5)
    eq(rc, 2, "--cat exit status with a missing --ca file")
    check(missing in k.log() and "--ca" in k.log(),
          "--cat stderr does not name %s and --ca: %r" % (missing, k.log()))


# ---------------------------------------------------------------- runner

def slug(name):
    s = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
    return "-".join(p for p in s.split("-") if p)[:40]



if __name__ == "__main__":
    # wsfwd is stopped with its clients and TLS upstreams still connected
    # (close_first=False); the certificates come first, as a test of their own.
    sys.exit(wslib.main(
        sys.argv, "WSFWD-BINARY [TEST-SUBSTRING...]", "wsfwd-tls.", substring=True,
        alarm=TEST_ALARM, log_name=slug, close_first=False,
        setup=("certificates: CA, RSA, ECDSA P-256, other.example and expired leaves",
               lambda: "expired leaf made with %s" % make_certs(), 60)))
