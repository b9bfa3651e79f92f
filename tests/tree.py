#!/usr/bin/env python3
"""Scaling out (issue 7): a two-level tree of wsfwd processes, and a TCP load
balancer in front of its edges.

usage: python3 tests/tree.py ./wsfwd [TEST...]

The tree: one root wsfwd on a `-` route (/a, fed through its stdin) and two
edge wsfwd processes, each with the route /e=ws://127.0.0.1:ROOT/a, so the
root's only clients are the two edges.  Clients (raw RFC 6455 clients from
wslib.py and `wsfwd --cat`) connect to the edges.  The tests check that every
client gets the same messages in the same order, that the root sees exactly
two clients (never three), that an edge stopped with SIGTERM leaves the root
(1 client) and, restarted on the same port, rejoins it (2 clients again) and
serves the messages sent after that to its new clients, and that a root
restarted on the same port gets both edges back while the edges' clients stay
connected.

The balancer test puts nginx's `stream` module (or, when nginx is missing or
WSFWD_LB=haproxy is set, HAProxy in `mode tcp`) in front of the two edges, run
from the example files contrib/nginx-stream.conf / contrib/haproxy.cfg with
the placeholder addresses replaced by the edges' and a free port: clients
connecting to the balancer land on both edges and all get every message.
nginx runs in the foreground (`daemon off`) from a config and pid file in
the run's temporary directory (`nginx -c FILE -p DIR`, and `-e` where nginx
has it), its error log next to wsfwd's logs; HAProxy runs with -db; either is
stopped by PID.  Without either, the test prints
"skip - NAME: reason" and counts as neither passed nor failed.

WSFWD_TREE_WRONG=1 makes every test check one deliberately wrong expectation
(a changed message, a third client at the root, one edge taking every
client): each test must then FAIL, which shows that it can.  WSFWD_LB=nginx
or WSFWD_LB=haproxy picks the balancer (default: nginx if it can run the
config, else HAProxy).

Only 127.0.0.1 is used; every wait is bounded (socket waits <= 5 s, log polls
with deadlines, one alarm per test); every process is stopped by PID (SIGTERM,
then SIGKILL) when its test ends.  Output: "ok - NAME" or "FAIL - NAME:
reason" per test, then "N passed, M failed"; diagnostics go to stderr.
"""

import os
import pwd
import grp
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wslib  # noqa: E402
from wslib import (  # noqa: E402
    HOST, OP_TEXT, CLEANUP, TestFail, fail, check, eq, short,
    first_diff, WS, Wsfwd, free_port, new_log, add)

TEST_ALARM = 90         # seconds any one test may take, all waits included
WAIT = 15.0             # generous bound for log waits on a loaded machine
CONTRIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "contrib")
WRONG = os.environ.get("WSFWD_TREE_WRONG") == "1"


def expect(right, wrong):
    """The value a check expects: `wrong` under WSFWD_TREE_WRONG=1."""
    return wrong if WRONG else right


# ---------------------------------------------------------------- messages

def make_lines(n, tag):
    """n distinct text lines (some with multi-byte UTF-8) and, among them,
    large ones: the 125/126 and 65535/65536-byte frame-length boundaries,
    300 kB and 250 kB (several of the edge's 64 KiB reads each).

    Nothing near --max-queue (1 MiB by default): wsfwd drops a client whose
    unsent bytes plus the next message would exceed it, so a ~1 MB message
    drops any client with a few tens of kB still unsent, however fast it
    reads (the slow-client rule, which proto.py tests; not the tree's)."""
    lines = [("%s %04d %s %s" % (tag, i, os.urandom(6).hex(), "é€😀" * (i % 3)))
             .encode() for i in range(n)]
    big = {100: 125, 200: 126, 300: 65535, 400: 65536, 500: 300000, 700: 250000}
    for pos, size in big.items():
        if pos < n:
            head = ("%s big %d " % (tag, size)).encode()
            body = os.urandom(size // 2 + 1).hex().encode()
            lines.insert(pos, (head + body)[:size])
    return lines


def wire(lines):
    return b"".join(ln + b"\n" for ln in lines)


# ---------------------------------------------------------------- processes

def client_counts(text, path):
    """The client counts wsfwd logged for joins to PATH, in order."""
    return [int(n) for n in re.findall(r"\] \S+ connected to %s, (\d+) clients"
                                       % re.escape(path), text)]


def wait_until(what, cond, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            fail("%s: not within %.0f s" % (what() if callable(what) else what, timeout))
        time.sleep(0.05)


def start_root():
    return Wsfwd.listen(["/a=-"], role="root", stdin=subprocess.PIPE, term_exit_zero=True)


def start_edge(root, role, port=None):
    """An edge forwarding ROOT's /a as /e; on a free port, or on PORT (a restart)."""
    route = "/e=ws://%s:%d/a" % (HOST, root.port)
    if port is None:
        e = Wsfwd.listen([route], role=role, term_exit_zero=True)
    else:
        e = Wsfwd(["-l", "%s:%d" % (HOST, port), route], role=role, term_exit_zero=True)
        e.port = port
        e.wait_log("listening on %s:%d" % (HOST, port), timeout=WAIT)
    e.wait_log("upstream /e: connected to ws://%s:%d/a (" % (HOST, root.port), timeout=WAIT)
    return e


def start_tree():
    root = start_root()
    edges = [start_edge(root, "edge1"), start_edge(root, "edge2")]
    root.wait_log("connected to /a, 2 clients", timeout=WAIT)
    return root, edges


def check_root_clients(root, most=2):
    counts = client_counts(root.log(), "/a")
    check(counts and max(counts) <= most,
          "root logged client counts %s (want none above %d)" % (counts, most))


def cat(port, role, path="/e"):
    return Wsfwd(["--cat", "ws://%s:%d%s" % (HOST, port, path)], role=role, out_file=True)


def check_cat(c, want, deadline):
    while True:
        got = c.out()
        if len(got) >= len(want) or time.monotonic() > deadline or not c.alive():
            break
        time.sleep(0.05)
    got = c.out()
    if got != want:
        fail("%s printed %d bytes, want %d; first difference at byte %d%s" % (
            c.role, len(got), len(want), first_diff(got, want),
            "" if c.alive() else " (exited %s)" % c.proc.returncode))


class Reader(threading.Thread):
    """Reads n messages from a client in the background (answering pings)."""

    def __init__(self, ws, n, name, timeout=40.0):
        super().__init__(daemon=True)
        self.ws, self.n, self.name = ws, n, name
        self.deadline = time.monotonic() + timeout
        self.got, self.err = [], None
        self.start()

    def run(self):
        try:
            while len(self.got) < self.n:
                f = self.ws.recv_msg(max(0.01, self.deadline - time.monotonic()))
                self.got.append((f.opcode, f.payload))
        except (TestFail, OSError) as e:
            self.err = "%s: %s" % (type(e).__name__, e)

    def check(self, lines):
        self.join(max(0.0, self.deadline - time.monotonic()) + 1)
        check(not self.is_alive(), "%s still reading after its deadline" % self.name)
        for i, (got, want) in enumerate(zip(self.got, lines)):
            if got != (OP_TEXT, want):
                fail("%s: message %d is %s %s, want text %s" % (
                    self.name, i, wslib.OP_NAMES.get(got[0]), short(got[1], 50),
                    short(want, 50)))
        if self.err or len(self.got) != len(lines):
            fail("%s got %d of %d messages: %s" % (self.name, len(self.got), len(lines),
                                                    self.err))


def expected(lines):
    """What the clients must receive: one message changed under WSFWD_TREE_WRONG."""
    if not WRONG:
        return lines
    out = list(lines)
    out[len(out) // 2] += b"!"
    return out


# ---------------------------------------------------------------- tree tests

def t_tree_identical_order():
    """2 raw clients and 1 --cat on each edge: every one gets the same 1,006
    messages (1,000 lines and 6 larger ones) in the order fed to the root."""
    root, (e1, e2) = start_tree()
    raws = [WS.open(e.port, "/e") for e in (e1, e1, e2, e2)]
    cats = [cat(e1.port, "cat-edge1"), cat(e2.port, "cat-edge2")]
    for e in (e1, e2):
        wait_until("3 clients on %s" % e.role,
                   lambda: len(client_counts(e.log(), "/e")) >= 3)
    lines = make_lines(1000, "tree")
    readers = [Reader(ws, len(lines), "raw client %d of edge%d" % (i % 2 + 1, i // 2 + 1))
               for i, ws in enumerate(raws)]
    root.feed(wire(lines))
    want = expected(lines)
    for r in readers:
        r.check(want)
    deadline = time.monotonic() + 20
    for c in cats:
        check_cat(c, wire(want), deadline)
    for e in (e1, e2):
        eq(client_counts(e.log(), "/e"), [1, 2, 3], "%s client counts" % e.role)
        check("slow client dropped" not in e.log(), "%s dropped a slow client" % e.role)
    check_root_clients(root, expect(2, 1))
    eq(len(client_counts(root.log(), "/a")), 2, "root: client joins logged")


def t_tree_edge_restart():
    """SIGTERM an edge: the root logs it gone (1 client); the edge restarted on
    the same port rejoins (2 clients) and its new client gets what is fed
    after that, in order, like the other edge's client."""
    root, (e1, e2) = start_tree()
    a, b = WS.open(e1.port, "/e"), WS.open(e2.port, "/e")
    for e in (e1, e2):
        wait_until("a client on %s" % e.role, lambda: client_counts(e.log(), "/e"))
    batch1 = make_lines(200, "before")
    ra, rb = Reader(a, len(batch1), "edge1 client"), Reader(b, len(batch1), "edge2 client")
    root.feed(wire(batch1))
    ra.check(batch1)
    rb.check(batch1)

    e2.proc.send_signal(signal.SIGTERM)
    b.expect_close(1001, reply=True)
    eq(e2.wait_exit(5), 0, "edge2 exit status after SIGTERM")
    text = root.wait_log("disconnected from /a (", timeout=WAIT)
    check(re.search(r"\] \S+ disconnected from /a \(close 1001\), 1 clients", text),
          "root's disconnect line does not say (close 1001), 1 clients:\n" + "\n".join(
              ln for ln in text.splitlines() if "disconnected" in ln))

    batch2 = make_lines(100, "while-down")
    ra = Reader(a, len(batch2), "edge1 client")
    root.feed(wire(batch2))
    ra.check(batch2)

    e2b = start_edge(root, "edge2-restarted", port=e2.port)
    root.wait_log("connected to /a, 2 clients", count=2, timeout=WAIT)
    eq(client_counts(root.log(), "/a"), expect([1, 2, 2], [1, 2, 3]),
       "root client counts over the test")
    b2 = WS.open(e2b.port, "/e")
    wait_until("a client on the restarted edge2",
               lambda: client_counts(e2b.log(), "/e"))
    batch3 = make_lines(300, "after")
    ra = Reader(a, len(batch3), "edge1 client")
    rb = Reader(b2, len(batch3), "restarted edge2's new client")
    root.feed(wire(batch3))
    ra.check(batch3)
    rb.check(batch3)
    a.ping_pong()               # nothing more was queued for either
    b2.ping_pong()
    check_root_clients(root)


def t_tree_root_restart():
    """SIGTERM the root: the edges keep their clients and retry; the root
    restarted on the same port gets both edges back (2 clients), and what it
    is fed then reaches the edges' clients, in order, with nothing older."""
    root, (e1, e2) = start_tree()
    a, b = WS.open(e1.port, "/e"), WS.open(e2.port, "/e")
    for e in (e1, e2):
        wait_until("a client on %s" % e.role, lambda: client_counts(e.log(), "/e"))
    batch1 = make_lines(100, "first-root")
    readers = [Reader(a, len(batch1), "edge1 client"), Reader(b, len(batch1), "edge2 client")]
    root.feed(wire(batch1))
    for r in readers:
        r.check(batch1)

    root.proc.send_signal(signal.SIGTERM)
    eq(root.wait_exit(5), 0, "root exit status after SIGTERM")
    for e in (e1, e2):
        e.wait_log("upstream /e: lost: close 1001; retry in", timeout=WAIT)
    a.ping_pong()               # the edges' clients stay connected
    b.ping_pong()

    root2 = Wsfwd(["-l", "%s:%d" % (HOST, root.port), "/a=-"], role="root-restarted",
                  stdin=subprocess.PIPE, term_exit_zero=True)
    root2.port = root.port
    root2.wait_log("listening on %s:%d" % (HOST, root.port), timeout=WAIT)
    for e in (e1, e2):          # backoff: up to a few seconds after the refusals
        e.wait_log("upstream /e: connected to ws://%s:%d/a (" % (HOST, root.port), count=2,
                   timeout=WAIT + 15)
    root2.wait_log("connected to /a, 2 clients", timeout=WAIT)
    eq(client_counts(root2.log(), "/a"), expect([1, 2], [1, 2, 3]),
       "restarted root's client counts")
    batch2 = make_lines(300, "second-root")
    readers = [Reader(a, len(batch2), "edge1 client"), Reader(b, len(batch2), "edge2 client")]
    root2.feed(wire(batch2))
    for r in readers:
        r.check(batch2)
    a.ping_pong()
    b.ping_pong()
    eq([len(client_counts(e.log(), "/e")) for e in (e1, e2)], [1, 1],
       "client joins on the edges (nobody reconnected)")


# ---------------------------------------------------------------- balancers

class Balancer:
    """nginx or HAProxy, in the foreground, stopped by PID (and its workers)."""

    def __init__(self, kind, argv, log_path, error_log=None):
        self.kind, self.argv, self.log_path = kind, argv, log_path
        self.error_log = error_log      # nginx's error_log, besides its stderr
        with open(log_path, "wb") as logf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=logf)
        CLEANUP.append(self.stop)

    def children(self):
        try:
            with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                return [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            return []

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def complaints(self):
        """Lines of its logs at level error or worse."""
        text = self.log()
        if self.error_log and os.path.exists(self.error_log):
            with open(self.error_log, "rb") as f:
                text += f.read().decode("utf-8", "replace")
        return [ln for ln in text.splitlines()
                if re.search(r"\[(error|crit|alert|emerg)\]|\[ALERT\]", ln)]

    def wait_listening(self, port, timeout=WAIT):
        """Until a socket listens on HOST:PORT (seen in /proc/net/tcp, so
        that no probe connection takes a turn of the round robin)."""
        deadline = time.monotonic() + timeout
        while True:
            check(self.proc.poll() is None, "%s exited %s: %s" % (
                self.kind, self.proc.returncode, short(self.log()[-400:], 400)))
            if listening(port):
                return
            if time.monotonic() > deadline:
                fail("%s not listening on %d within %.0f s" % (self.kind, port, timeout))
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is not None:
            return
        kids = self.children()
        self.proc.terminate()
        try:
            self.proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            pass
        for pid in [self.proc.pid] + kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait()
        sys.stderr.write("# %s ignored SIGTERM for 5 s (killed)\n" % self.kind)


def listening(port):
    """A TCP socket listens on HOST:PORT."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(HOST.split("."))), port)
    with open("/proc/net/tcp") as f:
        for ln in f.readlines()[1:]:
            fields = ln.split()
            if fields[1] == want and fields[3] == "0A":
                return True
    return False


def nginx_stream_block(lb_port, edge_ports):
    """The stream { } block of contrib/nginx-stream.conf with the listen port
    and the two edge addresses replaced."""
    with open(os.path.join(CONTRIB, "nginx-stream.conf")) as f:
        text = f.read()
    m = re.search(r"^stream \{\n.*?^\}\n", text, re.M | re.S)
    check(m, "contrib/nginx-stream.conf has no stream { } block")
    block = m.group(0)
    servers = re.findall(r"^\s*server (\S+?:\d+)", block, re.M)
    eq(len(servers), 2, "upstream servers in contrib/nginx-stream.conf")
    for addr, port in zip(servers, edge_ports):
        block = block.replace("server %s" % addr, "server %s:%d" % (HOST, port))
    block, n = re.subn(r"^(\s*)listen [^;]+;", r"\g<1>listen %s:%d;" % (HOST, lb_port),
                       block, flags=re.M)
    eq(n, 1, "listen lines in contrib/nginx-stream.conf's stream block")
    return block


def nginx_module_line():
    """'' if nginx has the stream module built in, a load_module line if it
    has it as a dynamic module, None if it has not got it."""
    try:
        r = subprocess.run(["nginx", "-V"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    info = (r.stdout + r.stderr).decode("utf-8", "replace")
    if re.search(r"--with-stream(?=\s|$)", info):
        return ""
    m = re.search(r"--modules-path=(\S+)", info)
    p = re.search(r"--prefix=(\S+)", info)
    dirs = [m.group(1)] if m else []
    dirs += [os.path.join(p.group(1), "modules")] if p else []
    dirs += ["/usr/lib/nginx/modules", "/usr/lib64/nginx/modules",
             "/usr/share/nginx/modules", "/etc/nginx/modules"]
    for d in dirs:
        so = os.path.join(d, "ngx_stream_module.so")
        if os.path.exists(so):
            return "load_module %s;\n" % so
    return None


def nginx_config(tmp, lb_port, edge_ports, module_line, error_log):
    """A whole nginx.conf in TMP, the stream block from contrib: in the
    foreground, one worker, pid file in TMP, errors to ERROR_LOG."""
    user = ""
    if os.geteuid() == 0:       # workers must not stay root; nobody's own group
        pw = pwd.getpwnam("nobody")
        user = "user nobody %s;\n" % grp.getgrgid(pw.pw_gid).gr_name
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(module_line + user +
                "daemon off;\nworker_processes 1;\n"
                "pid %s;\nerror_log %s info;\n"
                "events {\n    worker_connections 1024;\n}\n\n"
                % (os.path.join(tmp, "nginx.pid"), error_log))
        f.write(nginx_stream_block(lb_port, edge_ports))
    return conf


def haproxy_config(tmp, lb_port, edge_ports):
    """contrib/haproxy.cfg with the bind port and the edge addresses replaced."""
    with open(os.path.join(CONTRIB, "haproxy.cfg")) as f:
        text = f.read()
    servers = re.findall(r"^\s*server \S+ (\S+?:\d+)", text, re.M)
    eq(len(servers), 2, "servers in contrib/haproxy.cfg")
    for addr, port in zip(servers, edge_ports):
        text = text.replace(" %s " % addr, " %s:%d " % (HOST, port))
    text, n = re.subn(r"^(\s*)bind \S+", r"\g<1>bind %s:%d" % (HOST, lb_port), text,
                      flags=re.M)
    eq(n, 1, "bind lines in contrib/haproxy.cfg")
    conf = os.path.join(tmp, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(text)
    return conf


def start_balancer(kind, lb_port, edge_ports):
    tmp = os.path.join(wslib.TMP, "%s.%s" % (wslib.CURRENT, kind))
    os.makedirs(tmp, exist_ok=True)
    log, error_log = new_log(kind) + ".log", None
    if kind == "nginx":
        # error_log in LOGDIR (TMP unless $WSFWD_LOGDIR), shown if the test fails
        error_log = new_log("nginx-error") + ".log"
        conf = nginx_config(tmp, lb_port, edge_ports, LB_MODULE, error_log)
        argv = ["nginx", "-c", conf, "-p", tmp + "/"]
        if NGINX_E:             # the log before the config is read (>= 1.19.5)
            argv += ["-e", error_log]
    else:
        conf = haproxy_config(tmp, lb_port, edge_ports)
        argv = ["haproxy", "-db", "-f", conf]
    b = Balancer(kind, argv, log, error_log)
    b.wait_listening(lb_port)
    return b


def t_tree_behind_balancer(kind):
    """8 clients (6 raw, 2 --cat) connect to the balancer: both edges get
    clients, and every client gets every message in order."""
    root, (e1, e2) = start_tree()
    lb_port = free_port()
    lb = start_balancer(kind, lb_port, [e1.port, e2.port])
    raws = [WS.open(lb_port, "/e") for _ in range(6)]
    cats = [cat(lb_port, "cat%d-via-%s" % (i, kind)) for i in range(2)]
    per_edge = lambda: [len(client_counts(e.log(), "/e")) for e in (e1, e2)]
    wait_until(lambda: "8 clients on the edges (have %s)" % per_edge(),
               lambda: sum(per_edge()) >= 8)
    split = per_edge()
    sys.stderr.write("# %s put %s clients on edge1, edge2\n" % (kind, split))
    eq(sum(split), 8, "clients on the two edges")
    check(min(split) >= expect(1, 8), "%s spread 8 clients as %s over the edges"
          % (kind, split))
    lines = make_lines(1000, "lb")
    readers = [Reader(ws, len(lines), "client %d via %s" % (i, kind))
               for i, ws in enumerate(raws)]
    root.feed(wire(lines))
    for r in readers:
        r.check(lines)
    deadline = time.monotonic() + 20
    for c in cats:
        check_cat(c, wire(lines), deadline)
    check_root_clients(root)
    bad = lb.complaints()
    check(not bad, "%s logged: %s" % (kind, " | ".join(bad[:3])))


# ---------------------------------------------------------------- main

LB_MODULE = None        # nginx's load_module line ('' if built in)
NGINX_E = False         # nginx has -e (error log before the config)


def pick_balancer():
    """('nginx'|'haproxy', None) or (None, why not)."""
    global LB_MODULE, NGINX_E
    want = os.environ.get("WSFWD_LB", "")
    why = []
    if want in ("", "nginx"):
        if not shutil.which("nginx"):
            why.append("nginx not installed")
        else:
            LB_MODULE = nginx_module_line()
            if LB_MODULE is None:
                why.append("nginx has no stream module (Debian: libnginx-mod-stream)")
            else:
                try:
                    r = subprocess.run(["nginx", "-h"], capture_output=True, timeout=10)
                    NGINX_E = b"-e filename" in r.stdout + r.stderr
                except (OSError, subprocess.TimeoutExpired):
                    pass
                ok, err = nginx_config_ok()
                if ok:
                    return "nginx", None
                why.append("nginx -t fails: %s" % err)
    if want in ("", "haproxy"):
        if shutil.which("haproxy"):
            return "haproxy", None
        why.append("haproxy not installed")
    return None, "; ".join(why) or "WSFWD_LB=%s is neither nginx nor haproxy" % want


def balancer_version(kind):
    try:
        r = subprocess.run([kind, "-v"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "%s (-v: %s)" % (kind, e)
    out = (r.stdout + r.stderr).decode("utf-8", "replace").strip().splitlines()
    return out[0] if out else kind


def nginx_config_ok():
    """nginx -t on the generated config (ports that are only checked, not bound)."""
    tmp = tempfile.mkdtemp(prefix="wsfwd-tree-nginx.")
    try:
        conf = nginx_config(tmp, free_port(), [free_port(), free_port()], LB_MODULE,
                            os.path.join(tmp, "error.log"))
        argv = ["nginx", "-t", "-c", conf, "-p", tmp + "/"]
        argv += ["-e", os.path.join(tmp, "error.log")] if NGINX_E else []
        r = subprocess.run(argv, capture_output=True, timeout=20)
        msg = (r.stdout + r.stderr).decode("utf-8", "replace").strip().splitlines()
        return r.returncode == 0, msg[-1] if msg else "exit %d" % r.returncode
    except (OSError, subprocess.TimeoutExpired, TestFail) as e:
        return False, str(e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    add("tree_identical_order", t_tree_identical_order)
    add("tree_edge_restart", t_tree_edge_restart)
    add("tree_root_restart", t_tree_root_restart)
    kind, why = pick_balancer()
    only = sys.argv[2:]
    if kind:
        add("tree_behind_" + kind, t_tree_behind_balancer, kind)
        sys.stderr.write("# balancer: %s\n" % balancer_version(kind))
    elif len(sys.argv) > 1 and (not only or any(n.startswith("tree_behind") for n in only)):
        print("skip - tree_behind_balancer: %s" % why, flush=True)
        sys.argv[2:] = [n for n in only if not n.startswith("tree_behind")]
        if only and not sys.argv[2:]:
            print("0 passed, 0 failed")
            return 0
    return wslib.main(sys.argv, "WSFWD-BINARY [TEST...]", "wsfwd-tree.", alarm=TEST_ALARM)


if __name__ == "__main__":
    sys.exit(main())
