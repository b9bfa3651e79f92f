"""What tests/proto.py and tests/tls.py share: checks, the RFC 6455 codec,
raw-socket WebSocket peers, the wsfwd process wrapper, the test registry and
the runner.

Each test starts real wsfwd processes on 127.0.0.1.  Every socket wait is
bounded (at most TIMEOUT at a time, against a deadline); every process is
stopped by PID when its test ends (SIGTERM, then SIGKILL); each wsfwd's
stderr goes to a log file in $WSFWD_LOGDIR (or in a temporary directory,
removed at the end) that is searched for sanitizer reports after the test.

Output: "ok - NAME" or "FAIL - NAME: reason" per test, then as the last line
"N passed, M failed"; diagnostics (log tails) go to stderr.

The state of the run is kept here: a script reads BIN, TMP, LOGDIR and
CURRENT as wslib.NAME (they are set while it runs), and registers what its
running test opens in PROCS, SOCKS and CLEANUP.
"""

import base64
import hashlib
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HOST = "127.0.0.1"
TIMEOUT = 5.0           # upper bound of every single socket wait
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")

OP_CONT, OP_TEXT, OP_BIN = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
OP_NAMES = {0: "cont", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}

BIN = None              # path of the binary under test (argv[1])
TMP = None              # the run's temporary directory
LOGDIR = None           # where wsfwd's logs go: $WSFWD_LOGDIR or TMP
CURRENT = "setup"       # the running test's name as it starts its log files
PROCS = []              # Wsfwd objects started by the running test
SOCKS = []              # sockets opened by the running test
CLEANUP = []            # callables run, last first, when the running test ends
LOGS = []               # log files of the running test


class TestFail(Exception):
    pass


class Timeout(TestFail):
    pass


class Closed(TestFail):
    pass


def fail(msg):
    raise TestFail(msg)


def check(cond, msg):
    if not cond:
        fail(msg)


def short(v, n=80):
    r = repr(v)
    return r if len(r) <= n else r[:n] + "...(%d)" % len(v)


def eq(got, want, what):
    if got != want:
        fail("%s: got %s, want %s" % (what, short(got), short(want)))


def first_diff(a, b):
    """Index of the first byte where a and b differ (the shorter length if none)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


# ---------------------------------------------------------------- codecs

def accept_key(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def new_key(nbytes=16):
    return base64.b64encode(os.urandom(nbytes)).decode()


def mask_bytes(data, key):
    if not data:
        return b""
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def encode_frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length=None):
    """One frame; `length` overrides the encoded length (for bad headers)."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = os.urandom(4)
        return hdr + key + mask_bytes(payload, key)
    return hdr + payload


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


class Frame:
    def __init__(self, fin, rsv, opcode, masked, payload):
        self.fin, self.rsv, self.opcode = fin, rsv, opcode
        self.masked, self.payload = masked, payload

    @property
    def code(self):
        if self.opcode == OP_CLOSE and len(self.payload) >= 2:
            return struct.unpack("!H", self.payload[:2])[0]
        return None

    def __repr__(self):
        if self.opcode == OP_CLOSE and self.code is not None:
            return "close %d %s" % (self.code, short(self.payload[2:], 40))
        return "%s%s %s" % (OP_NAMES.get(self.opcode, "op%d" % self.opcode),
                            "" if self.fin else "(FIN=0)", short(self.payload, 40))


class HttpHead:
    """An HTTP head: start line, [(lower-case name, value)], status code."""

    def __init__(self, raw):
        lines = raw.decode("latin-1").split("\r\n")
        self.start = lines[0]
        self.headers = []
        for ln in lines[1:]:
            name, _, value = ln.partition(":")
            self.headers.append((name.strip().lower(), value.strip()))
        parts = self.start.split(" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None

    def get(self, name):
        """The header's value if it occurs exactly once, else None."""
        vals = [v for n, v in self.headers if n == name.lower()]
        return vals[0] if len(vals) == 1 else None

    def tokens(self, name):
        v = self.get(name) or ""
        return [t.strip().lower() for t in v.split(",")]


def build_request(port, path="/a", method="GET", version="HTTP/1.1",
                  key=None, headers=None):
    """A valid upgrade request; `headers` overrides by name, None drops one."""
    key = key or new_key()
    hs = [("Host", "%s:%d" % (HOST, port)), ("Upgrade", "websocket"),
          ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
          ("Sec-WebSocket-Version", "13")]
    over = {k.lower(): (k, v) for k, v in (headers or {}).items()}
    out = []
    for n, v in hs:
        if n.lower() in over:
            n, v = over.pop(n.lower())
        if v is not None:
            out.append((n, v))
    out += [(n, v) for n, v in over.values() if v is not None]
    text = "%s %s %s\r\n" % (method, path, version)
    text += "".join("%s: %s\r\n" % nv for nv in out) + "\r\n"
    return text.encode(), key


def check_101(head, key):
    eq(head.start, "HTTP/1.1 101 Switching Protocols", "status line")
    eq((head.get("upgrade") or "").lower(), "websocket", "Upgrade header")
    check("upgrade" in head.tokens("connection"),
          "Connection header %r lacks upgrade" % head.get("connection"))
    eq(head.get("sec-websocket-accept"), accept_key(key), "Sec-WebSocket-Accept")


# ---------------------------------------------------------------- raw upgrades

def recv_or_eof(sock, n=65536):
    """Up to n bytes from sock; b"" at EOF, and on any error (a reset, a
    timeout), which the callers treat alike: the peer is gone."""
    try:
        return sock.recv(n)
    except OSError:
        return b""


def forget(sock):
    """Close a socket the running test opened and drop it from SOCKS."""
    try:
        sock.close()
    except OSError:
        pass
    try:
        SOCKS.remove(sock)
    except ValueError:
        pass


def attempt(port, n, path="/y"):
    """n raw connections (descriptor exhaustion tests) that each send an
    upgrade request: ({socket: [key, bytes received]}, number refused)."""
    pending, refused = {}, 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        SOCKS.append(s)
        s.settimeout(2)
        req, key = build_request(port, path)
        try:
            s.connect((HOST, port))
            s.sendall(req)
        except socket.timeout:
            fail("connect or send to wsfwd blocked for 2 s")
        except OSError:
            refused += 1
            forget(s)
            continue
        pending[s] = [key, b""]
    return pending, refused


def sort_out(pending, until):
    """Read answers until `until`: (upgraded sockets, number refused); the
    sockets still unanswered stay in pending."""
    upgraded, refused = [], 0
    while pending:
        left = until - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select(list(pending), [], [], left)
        for s in r:
            key, buf = pending[s]
            data = recv_or_eof(s, 4096)
            if not data:
                del pending[s]
                check(not buf, "connection closed after a partial response %r" % buf)
                refused += 1
                forget(s)
                continue
            buf += data
            if b"\r\n\r\n" in buf:
                del pending[s]
                i = buf.index(b"\r\n\r\n")
                check_101(HttpHead(buf[:i]), key)
                upgraded.append((s, buf[i + 4:]))
            else:
                pending[s][1] = buf
    return upgraded, refused


# ---------------------------------------------------------------- peers

class Peer:
    """A buffered socket (plain or TLS) that parses WebSocket frames and HTTP
    heads; closed when the running test ends."""
    expect_masked = None        # True/False: assert the masking direction
    who = "wsfwd"               # the other end, for messages
    send_timeout = None         # if set, the socket timeout for each send
    broken_errors = ()          # errors of recv() that mean closed, besides a reset
    deflate = False             # permessage-deflate agreed: RSV1 allowed on data

    def __init__(self, sock, buf=b""):
        self.sock = sock
        self.buf = bytearray(buf)
        self.lport = None       # our port, as wsfwd logs it; set once connected
        self.wlock = threading.Lock()
        sock.settimeout(TIMEOUT)
        SOCKS.append(sock)

    def fill(self, deadline):
        """Append one recv() to self.buf; each wait is at most TIMEOUT."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout("timed out waiting for data from %s" % self.who)
            self.sock.settimeout(min(left, TIMEOUT))
            try:
                data = self.sock.recv(262144)
                break
            except socket.timeout:
                continue
            except ConnectionResetError:
                raise Closed("connection reset")
            except self.broken_errors as e:
                raise Closed("connection broken: %s" % e)
        if not data:
            raise Closed("connection closed (EOF)")
        self.buf += data

    def send_raw(self, data):
        with self.wlock:
            if self.send_timeout is not None:
                self.sock.settimeout(self.send_timeout)
            self.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", fin=True, mask=None, rsv=0):
        if mask is None:
            mask = not self.expect_masked
        self.send_raw(encode_frame(opcode, payload, fin, mask, rsv))

    def parse_frame(self):
        """A complete, checked frame from self.buf, or None if more is needed."""
        b = self.buf
        if len(b) < 2:
            return None
        b0, b1 = b[0], b[1]
        n, off = b1 & 127, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, off = int.from_bytes(b[2:4], "big"), 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, off = int.from_bytes(b[2:10], "big"), 10
        check(n < 1 << 31, "frame length %d from %s" % (n, self.who))
        masked = bool(b1 & 0x80)
        key = None
        if masked:
            if len(b) < off + 4:
                return None
            key, off = bytes(b[off:off + 4]), off + 4
        if len(b) < off + n:
            return None
        payload = bytes(b[off:off + n])
        del b[:off + n]
        if masked:
            payload = mask_bytes(payload, key)
        f = Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 15, masked, payload)
        f.key = key             # the masking key as sent, or None
        self.check_frame(f)
        return f

    def recv_frame(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            f = self.parse_frame()
            if f is not None:
                return f
            self.fill(deadline)

    def check_frame(self, f):
        if self.expect_masked is not None and f.masked != self.expect_masked:
            fail("frame %r from %s is %s" % (f, self.who, "masked" if f.masked else "not masked"))
        check(f.rsv == 0 or (f.rsv == 4 and self.deflate and f.opcode in (OP_TEXT, OP_BIN)),
              "frame %r from %s has RSV bits %d" % (f, self.who, f.rsv))
        if f.opcode >= 8:
            check(f.fin and len(f.payload) <= 125, "bad control frame %r from %s" % (f, self.who))

    def recv_msg(self, timeout=TIMEOUT):
        """Next data frame (answering pings); fail on close or fragmentation."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if f.opcode == OP_PING:
                self.send_frame(OP_PONG, f.payload)
                continue
            if f.opcode == OP_PONG:
                continue
            check(f.opcode != OP_CLOSE, "got %r from %s while waiting for a message"
                  % (f, self.who))
            check(f.opcode in (OP_TEXT, OP_BIN), "got %r, want a data frame" % f)
            check(f.fin, "fragmented message %r from %s" % (f, self.who))
            return f

    def expect_msg(self, opcode, payload, timeout=TIMEOUT):
        try:
            f = self.recv_msg(timeout)
        except (Timeout, Closed) as e:
            fail("waiting for %s %s: %s" % (OP_NAMES[opcode], short(payload, 40), e))
        if (f.opcode, f.payload) != (opcode, payload):
            fail("got %r, want %s %s" % (f, OP_NAMES[opcode], short(payload, 40)))
        return f

    def expect_eof(self, timeout=TIMEOUT):
        """The peer closes TCP with no further data (a reset counts as closed).

        Then we close too, as a real client does on EOF."""
        deadline = time.monotonic() + timeout
        try:
            while not self.buf:
                self.fill(deadline)
        except Closed:
            self.sock.close()
            return
        except Timeout:
            fail("TCP connection still open %.1f s after the close frame" % timeout)
        fail("data after close frame: %s" % short(bytes(self.buf)))

    def wait_closed(self, timeout=TIMEOUT):
        """Discard data until the peer closes TCP; return the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            while True:
                self.buf.clear()
                self.fill(deadline)
        except Closed:
            self.sock.close()
            return time.monotonic() - t0
        except Timeout:
            fail("connection not closed within %.1f s" % timeout)

    def expect_close(self, code, timeout=TIMEOUT, reply=False):
        """Next frame is a close with `code`; then TCP is closed.

        reply=True answers it first, as a client must after a server-initiated
        close; for protocol errors the server closes TCP without waiting."""
        try:
            f = self.recv_frame(timeout)
        except Closed as e:
            fail("no close frame (want %d): %s" % (code, e))
        except Timeout:
            fail("no close frame (want %d) within %.1f s" % (code, timeout))
        if f.opcode != OP_CLOSE or f.code != code:
            fail("got %r, want close %d" % (f, code))
        if reply:
            try:
                self.send_frame(OP_CLOSE, close_payload(code))
            except OSError:
                pass
        self.expect_eof(timeout)

    def read_head(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        try:
            while b"\r\n\r\n" not in self.buf:
                check(len(self.buf) < 16384, "HTTP head from %s too long" % self.who)
                self.fill(deadline)
        except (Closed, Timeout) as e:
            fail("no HTTP head from %s (%s; got %s)" % (self.who, e, short(bytes(self.buf))))
        i = self.buf.index(b"\r\n\r\n")
        head = HttpHead(bytes(self.buf[:i]))
        del self.buf[:i + 4]
        return head

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class WS(Peer):
    """A raw WebSocket client of wsfwd (frames it sends are masked)."""
    expect_masked = False
    who = "wsfwd (as server)"

    def __init__(self, port, rcvbuf=None):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(s)
        self.port = port
        s.connect((HOST, port))
        self.lport = s.getsockname()[1]

    @classmethod
    def open(cls, port, path="/a", **kw):
        """A client of PORT that has sent the upgrade request for PATH and
        checked the 101 response."""
        ws = cls(port, **kw)
        ws.handshake(path)
        return ws

    def handshake(self, path="/a", headers=None, extra=b""):
        req, key = build_request(self.port, path, headers=headers)
        self.send_raw(req + extra)
        head = self.read_head()
        check_101(head, key)
        return head

    def ping_pong(self, payload=None, timeout=TIMEOUT):
        """The connection is alive: a ping gets a pong with the same payload."""
        if payload is None:
            payload = os.urandom(8)
        try:
            self.send_frame(OP_PING, payload)
        except OSError as e:
            fail("sending ping: %s" % e)
        try:
            f = self.recv_frame(timeout)
        except (Closed, Timeout) as e:
            fail("no pong: %s" % e)
        if f.opcode != OP_PONG or f.payload != payload:
            fail("got %r, want pong %s" % (f, short(payload, 40)))


# ---------------------------------------------------------------- processes

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def new_log(role):
    """LOGDIR/TEST.N.ROLE for the running test's next log file, TEST.N.ROLE.log
    (added to LOGS: searched for sanitizer reports when the test ends)."""
    base = os.path.join(LOGDIR, "%s.%d.%s" % (CURRENT, len(LOGS), role))
    LOGS.append(base + ".log")
    return base


class Wsfwd:
    """One wsfwd process with stderr in a log file under LOGDIR.

    out_file=True sends its stdout to a file next to the log (see out()).
    stop() sends SIGTERM, then SIGKILL after TERM_WAIT seconds; with
    term_exit_zero the exit status after SIGTERM must be 0.  ASAN_OPTIONS and
    UBSAN_OPTIONS default to reporting and stopping at the first error."""
    TERM_WAIT = 3.0

    def __init__(self, args, role="server", stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, preexec_fn=None, out_file=False,
                 term_exit_zero=False):
        self.role = role
        self.args = args
        self.term_exit_zero = term_exit_zero
        base = new_log(role)
        self.log_path = base + ".log"
        self.out_path = base + ".out" if out_file else None
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
        with open(self.log_path, "wb") as logf:
            outf = open(self.out_path, "wb") if out_file else None
            try:
                self.proc = subprocess.Popen([BIN] + args, stdin=stdin,
                                             stdout=outf or stdout, stderr=logf,
                                             env=env, preexec_fn=preexec_fn)
            finally:
                if outf:
                    outf.close()
        PROCS.append(self)

    @classmethod
    def listen(cls, args, **kw):
        """wsfwd -l 127.0.0.1:PORT ARGS... on a free PORT (in .port), once it
        logs that it listens."""
        port = free_port()
        w = cls(["-l", "%s:%d" % (HOST, port)] + list(args), **kw)
        w.port = port
        w.wait_log("listening on %s:%d" % (HOST, port))
        return w

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def out(self):
        with open(self.out_path, "rb") as f:
            return f.read()

    def wait_log(self, substr, count=1, timeout=TIMEOUT):
        """The log once it has `substr` `count` times; fail if wsfwd exits first."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None
            text = self.log()
            if text.count(substr) >= count:
                return text
            if exited:
                fail("%s exited %s before logging %r%s" % (
                    self.role, self.proc.returncode, substr,
                    "" if count == 1 else " x%d" % count))
            if time.monotonic() > deadline:
                fail("%s did not log %r%s within %.1f s (has it %d times)" % (
                    self.role, substr, "" if count == 1 else " x%d" % count,
                    timeout, text.count(substr)))
            time.sleep(0.02)

    def wait_client(self, ws, path="/a"):
        self.wait_log("%s:%d connected to %s, " % (HOST, ws.lport, path))

    def feed(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def alive(self):
        return self.proc.poll() is None

    def wait_exit(self, timeout=TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            fail("%s still running %.1f s later" % (self.role, timeout))

    def stop(self):
        """Terminate by PID; return a problem string or None."""
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                rc = self.proc.wait(self.TERM_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "%s ignored SIGTERM for %g s (killed)" % (self.role, self.TERM_WAIT)
            if self.term_exit_zero and rc != 0:
                return "%s exited %d after SIGTERM (want 0)" % (self.role, rc)
        rc = self.proc.returncode
        crash = (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL)
        if rc < 0 and -rc in crash:
            return "%s died of signal %d" % (self.role, -rc)
        return None


# ---------------------------------------------------------------- origins

class FakeUpstream:
    """A listening origin server that wsfwd (or --cat) connects to."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind((HOST, 0))
        self.lsock.listen(64)
        SOCKS.append(self.lsock)
        self.port = self.lsock.getsockname()[1]

    def url(self, target="/up"):
        return "ws://%s:%d%s" % (HOST, self.port, target)

    def accept(self, timeout=TIMEOUT):
        self.lsock.settimeout(timeout)
        try:
            s, _ = self.lsock.accept()
        except socket.timeout:
            raise Timeout("no connection to the fake upstream within %.1f s" % timeout)
        return UpConn(s, self.port)

    def accept_ws(self, target="/up", timeout=TIMEOUT):
        c = self.accept(timeout)
        c.handshake(target)
        return c


class UpConn(Peer):
    """wsfwd's upstream connection, seen from the origin server's side."""
    expect_masked = True
    who = "wsfwd (as client)"

    def __init__(self, sock, port):
        super().__init__(sock)
        self.port = port

    def read_request(self, target, host=None):
        """Read and verify the client's upgrade request; return its key.

        `host` is the expected Host header, default 127.0.0.1:PORT."""
        head = self.read_head()
        eq(head.start, "GET %s HTTP/1.1" % target, "request line")
        eq(head.get("host"), host or "%s:%d" % (HOST, self.port), "Host header")
        eq((head.get("upgrade") or "").lower(), "websocket", "Upgrade header")
        check("upgrade" in head.tokens("connection"),
              "Connection header %r lacks upgrade" % head.get("connection"))
        eq(head.get("sec-websocket-version"), "13", "Sec-WebSocket-Version")
        key = head.get("sec-websocket-key") or ""
        try:
            raw = base64.b64decode(key, validate=True)
        except ValueError:
            fail("Sec-WebSocket-Key %r is not base64" % key)
        eq(len(raw), 16, "decoded Sec-WebSocket-Key length")
        return key

    def reply_101(self, key, accept=None, extra=b""):
        resp = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                % (accept or accept_key(key)))
        self.send_raw(resp.encode() + extra)

    def handshake(self, target="/up", extra=b""):
        self.reply_101(self.read_request(target), extra=extra)

    def rst(self):
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def start_server(*args, stdin=True, preexec_fn=None):
    """wsfwd -l 127.0.0.1:PORT ARGS..., once it logs that it listens."""
    return Wsfwd.listen(args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                        preexec_fn=preexec_fn)


def client(w, path="/a", **kw):
    """A handshaken client that wsfwd has logged as connected."""
    ws = WS.open(w.port, path, **kw)
    w.wait_client(ws, path)
    return ws



class EchoOrigin:
    """An origin that echoes every data frame back with its opcode, answers
    pings, records what it got (per connection: (opcode, payload, time)) and
    answers closes.  One thread per connection, each bounded in time."""

    def __init__(self, pick_protocol=None, first=None):
        self.up = FakeUpstream()
        self.pick = pick_protocol
        self.first = first          # sent to each connection after the 101
        self.conns = []             # [(UpConn, head, [records])]
        self.stop = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.accept_loop, daemon=True)
        self.thread.start()
        CLEANUP.append(self.halt)

    def halt(self):
        self.stop = True
        self.thread.join(TIMEOUT)

    def accept_loop(self):
        self.up.lsock.settimeout(0.1)
        deadline = time.monotonic() + 30
        while not self.stop and time.monotonic() < deadline:
            try:
                s, _ = self.up.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return              # closed as the test ended
            s.settimeout(None)
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def serve(self, s):
        c = UpConn(s, self.up.port)
        got = []
        try:
            head = c.read_head()
            extra = ""
            if self.pick and head.get("sec-websocket-protocol"):
                extra = "Sec-WebSocket-Protocol: %s\r\n" % self.pick
            c.send_raw(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n"
                        % (accept_key(head.get("sec-websocket-key")), extra)).encode())
            with self.lock:
                self.conns.append((c, head, got))
            if self.first:
                c.send_frame(OP_TEXT, self.first, mask=False)
            deadline = time.monotonic() + 20
            while not self.stop and time.monotonic() < deadline:
                try:
                    f = c.recv_frame(0.2)
                except Timeout:
                    continue
                got.append((f.opcode, f.payload, time.monotonic()))
                if f.opcode == OP_PING:
                    c.send_frame(OP_PONG, f.payload, mask=False)
                elif f.opcode == OP_CLOSE:
                    c.send_frame(OP_CLOSE, f.payload, mask=False)
                    return
                elif f.opcode in (OP_TEXT, OP_BIN):
                    c.send_frame(f.opcode, f.payload, mask=False)
        except (TestFail, OSError):
            return

    def wait_conns(self, n, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.conns) >= n:
                    return list(self.conns)
            time.sleep(0.01)
        fail("the origin has %d connections, want %d" % (len(self.conns), n))

    def wait_record(self, i, pred, timeout=TIMEOUT):
        """The first frame connection i (None: any) got that pred likes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                conns = list(self.conns) if i is None else [self.conns[i]]
            for c in conns:
                for r in list(c[2]):
                    if pred(r):
                        return r
            time.sleep(0.01)
        fail("the origin's connection %s never got the frame (has %r)"
             % (i, [[(op, p[:20]) for op, p, _ in c[2]] for c in conns]))



# ---------------------------------------------------------------- registry

TESTS = {}              # name -> function, in the order registered


def add(name, fn, *args, **kw):
    """Register the test NAME: fn(*args, **kw)."""
    assert name not in TESTS, name
    TESTS[name] = lambda: fn(*args, **kw)


def test(arg):
    """Decorator: bare on t_NAME registers NAME; test("name") registers "name"."""
    def reg(fn, name):
        assert name not in TESTS, name
        TESTS[name] = fn
        return fn
    if callable(arg):
        return reg(arg, arg.__name__[len("t_"):])
    return lambda fn: reg(fn, arg)


def register_optional(optional, only):
    """Register the tests (name, fn, why) whose why is None; for the others,
    which this build or machine cannot run, print "skip - NAME: why" (if
    they were asked for): they count as neither passed nor failed.  Returns
    the names in `only` left to run, or None when nothing is left."""
    for name, fn, why in optional:
        if why is None:
            test(name)(fn)
        elif not only or name in only:
            print("skip - %s: %s" % (name, why), flush=True)
            if name in only:
                only.remove(name)
                if not only:
                    print("0 passed, 0 failed")
                    return None
    return only


# ---------------------------------------------------------------- runner

ALARM = None            # seconds a test may take, or None
LOG_NAME = str          # test name -> the start of its log files' names
CLOSE_FIRST = True      # close SOCKS before stopping PROCS (else after)
_armed = 0              # seconds of the pending alarm


def arm(seconds):
    """SIGALRM (a TestFail) in `seconds`; 0 cancels."""
    global _armed
    _armed = seconds
    signal.alarm(seconds)


def on_alarm(signum, frame):
    raise TestFail("test still running after %d s" % _armed)


def sanitizer_reports(paths):
    out = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        for mark in SANITIZER_MARKS:
            if mark in text:
                out.append("sanitizer report %r in %s" % (mark, os.path.basename(path)))
                break
    return out


def close_socks():
    for s in SOCKS:
        try:
            s.close()
        except OSError:
            pass
    SOCKS.clear()


def finish_test():
    """Stop the running test's processes and peers; complaints about them."""
    problems = []
    if CLOSE_FIRST:
        close_socks()
    for p in PROCS:
        why = p.stop()
        if why:
            problems.append(why)
    close_socks()
    for fn in reversed(CLEANUP):
        try:
            fn()
        except Exception as e:      # cleanup must go on
            sys.stderr.write("# cleanup: %s\n" % e)
    CLEANUP.clear()
    return problems + sanitizer_reports(LOGS)


def run_test(name, fn):
    """Run one test, print its ok/FAIL line; True if it passed."""
    global CURRENT
    CURRENT = LOG_NAME(name)
    PROCS.clear()
    CLEANUP.clear()
    LOGS.clear()
    err = None
    t0 = time.monotonic()
    if ALARM:
        arm(ALARM)
    try:
        fn()
    except TestFail as e:
        err = str(e)
    except Exception as e:      # a bug in the test, or an unexpected socket error
        err = "%s: %s" % (type(e).__name__, e)
        traceback.print_exc(file=sys.stderr)
    finally:
        if ALARM:
            arm(0)
    problems = finish_test()
    if err is None and problems:
        err = "; ".join(problems)
    elif problems:
        err += " (also: %s)" % "; ".join(problems)
    if err is None:
        print("ok - %s" % name, flush=True)
        return True
    print("FAIL - %s: %s" % (name, err), flush=True)
    sys.stderr.write("# %s (%.1f s)\n" % (name, time.monotonic() - t0))
    procs = {p.log_path: p for p in PROCS}
    for path in LOGS:
        try:
            with open(path, "rb") as f:
                tail = f.read().decode("utf-8", "replace").splitlines()[-15:]
        except OSError:
            continue
        p = procs.get(path)
        if p:
            sys.stderr.write("# --- %s %s, exit %s, log tail:\n" % (
                p.role, " ".join(p.args), p.proc.returncode))
        else:
            sys.stderr.write("# --- %s:\n" % os.path.basename(path))
        sys.stderr.writelines("#   %s\n" % ln for ln in tail)
    sys.stderr.flush()
    return False


def main(argv, usage, tmp_prefix, substring=False, alarm=None, log_name=str,
         close_first=True, setup=None):
    """Run the registered tests against the binary argv[1]; the exit status.

    argv[2:] name the tests to run (all if none): whole names, or with
    substring=True any part of one.  alarm: seconds any one test may take.
    log_name(test name) starts its log files' names.  close_first: close the
    test's sockets before stopping its processes, not after.  setup: (name,
    fn, seconds) run first like a test (a TestFail is its failure, a string
    it returns a note on stderr); if it fails no test runs."""
    global BIN, TMP, LOGDIR, ALARM, LOG_NAME, CLOSE_FIRST
    if len(argv) < 2:
        sys.stderr.write("usage: %s %s\n" % (argv[0], usage))
        return 2
    BIN = os.path.abspath(argv[1])
    ALARM, LOG_NAME, CLOSE_FIRST = alarm, log_name, close_first
    only = argv[2:]
    if substring:
        names = [n for n in TESTS if not only or any(s in n for s in only)]
    else:
        names = only or list(TESTS)
        unknown = [n for n in names if n not in TESTS]
        if unknown:
            sys.stderr.write("unknown tests: %s\n" % " ".join(unknown))
            return 2
    if alarm or setup:
        signal.signal(signal.SIGALRM, on_alarm)
    TMP = tempfile.mkdtemp(prefix=tmp_prefix)
    LOGDIR = os.environ.get("WSFWD_LOGDIR") or TMP
    os.makedirs(LOGDIR, exist_ok=True)
    passed = failed = 0
    t_start = time.monotonic()
    try:
        if setup:
            name, fn, seconds = setup
            try:
                arm(seconds)
                note = fn()
                print("ok - %s" % name, flush=True)
                if note:
                    sys.stderr.write("# %s\n" % note)
                passed += 1
            except TestFail as e:
                print("FAIL - %s: %s" % (name, e), flush=True)
                failed += 1
            finally:
                arm(0)
        if failed == 0:
            if not os.access(BIN, os.X_OK):
                print("FAIL - setup: %s is not an executable" % argv[1])
                failed += 1
            else:
                for name in names:
                    if run_test(name, TESTS[name]):
                        passed += 1
                    else:
                        failed += 1
    finally:
        if alarm or setup:
            arm(0)
        finish_test()
        shutil.rmtree(TMP, ignore_errors=True)
    sys.stderr.write("# %s: %.1f s\n" % (os.path.basename(argv[0]), time.monotonic() - t_start))
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0
