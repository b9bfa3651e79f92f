#!/usr/bin/env python3
"""wsfwd against the Node.js forwarder, scenario by scenario (issue 4).

Called by bench/run.sh (make bench).  Python standard library only.
Scenarios Z, Zp and Zmax (issue 8, permessage-deflate) need bench/load built
with zlib (run.sh does that when zlib.h is there).

For each scenario and each relay: bench/load (source and sink in one process,
pinned to CPU 1) listens as the origin, the relay (pinned to CPU 0) connects
to it, the sink's clients connect to the relay; after a warm-up the load tool
measures for BENCH_SECONDS while this script samples the relay's CPU time
(/proc/PID/task/*/schedstat) and memory (VmRSS, VmHWM) and counts its
send-type system calls with `perf stat` tracepoints when perf can.  Then it
prints one table: scenario, metric, wsfwd, node, ratio (wsfwd / node).

Before the scenarios, bench/floor measures what one send() on a loopback TCP
socket costs on this machine, with the relay's and the load tool's CPUs, at
the socket counts and write sizes the scenarios have; each scenario's "CPU us
/ send" is then divided by the floor at its client count and its average
bytes per send.

Environment:
  BENCH_SECONDS   measured window per scenario (default 10)
  BENCH_WARMUP    warm-up before it (default 2; 1 when BENCH_SECONDS < 5)
  BENCH_ONLY      comma-separated scenarios to run (A,B,C,D,E,F,Fctl,flood,
                  Z; F brings Fctl, Z brings Zp and Zmax; "deflate" = Z;
                  "floor" = the send() floor alone, nothing else)
  BENCH_FLOOR_SECONDS  bench/floor's measured window per point (default
                  1.5, after 0.5 s of warm-up; 0: no floor)
  BENCH_RELAYS    comma-separated relays (default wsfwd,node)
  BENCH_MAX_QUEUE wsfwd --max-queue (default 1M, wsfwd's own default)
  BENCH_OUT       where logs and raw results go (default bench/out)
  BENCH_WSFWD     the wsfwd binary to measure (default ./wsfwd, built by
                  run.sh)
"""

import datetime
import json
import math
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time

from benchlib import free_port, proc_cpu_ns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOAD = os.path.join(ROOT, "bench", "load")
FLOOR = os.path.join(ROOT, "bench", "floor")
WSFWD = os.environ.get("BENCH_WSFWD") or os.path.join(ROOT, "wsfwd")
NODE_FWD = os.path.join(ROOT, "bench", "node", "forwarder.js")

SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
WARMUP = float(os.environ.get("BENCH_WARMUP", "2" if SECONDS >= 5 else "1"))
MAX_QUEUE = os.environ.get("BENCH_MAX_QUEUE", "1M")
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench", "out"))
RELAYS = os.environ.get("BENCH_RELAYS", "wsfwd,node").split(",")
FLOOR_SECONDS = float(os.environ.get("BENCH_FLOOR_SECONDS", "1.5"))
FLOOR_WARMUP = 0.5
RELAY_CPU, LOAD_CPU = "0", "1"
PATH = "/feed"

# One process per end holds one descriptor per client (plus a few).
NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
MANY = max(100, min(10000, NOFILE - 200))

SEND_EVENTS = ["sendmsg", "sendto", "sendmmsg", "write", "writev"]
# scenarios with a "CPU us / send" row, so a floor to compare it with
FLOOR_SCENARIOS = ("A", "B", "C", "E", "F", "Fctl", "flood")
JSON_SIZE = 32768       # Z: ~190 tickers, like a !miniTicker@arr message


def scenarios():
    short = min(SECONDS, 3.0)
    return [
        dict(name="A", what="100 clients, 100 B, source as fast as it can",
             n=100, size=100, rate=0),
        dict(name="B", what="1,000 clients x 1,000 msgs/s, 100 B "
             "(1 M/s offered)", n=1000, size=100, rate=1000, inflight=1000),
        dict(name="C", what="5,000 clients x 100 msgs/s, 200 B "
             "(500 k/s offered)", n=5000, size=200, rate=100, inflight=1000),
        dict(name="D", what="%d idle clients (source silent)" % MANY,
             n=MANY, size=100, rate=0, silent=True, inflight=1000),
        dict(name="E", what="10 clients x 64 KiB, as fast as possible",
             n=10, size=65536, rate=0),
        dict(name="F", what="1 client that never reads + 10 readers, "
             "64 KiB x 1,000/s", n=10, stalled=1, size=65536, rate=1000,
             floor_rate=1000),
        dict(name="Fctl", what="F's control run: the 10 readers alone",
             n=10, size=65536, rate=1000, floor_rate=1000),
        dict(name="flood", what="%d clients join a stream flooding at full "
             "speed (all connects at once, bounded 10 s; then %gs measured)"
             % (MANY, short),
             n=MANY, size=100, rate=0, warmup=0, duration=short,
             connect_timeout=10, flood_first=True),
        # issue 8: permessage-deflate.  The source sends ticker JSON (text,
        # compressible); Z's clients offer the extension, Zp's do not.
        dict(name="Zp", what="Z's control: 100 plain clients x 200 msgs/s, "
             "32 KiB ticker JSON (20 k/s offered)",
             n=100, size=JSON_SIZE, rate=200, json=True),
        dict(name="Z", what="100 permessage-deflate clients x 200 msgs/s, "
             "32 KiB ticker JSON (20 k/s offered)",
             n=100, size=JSON_SIZE, rate=200, json=True, deflate=True),
        dict(name="Zmax", what="100 permessage-deflate clients, 32 KiB "
             "ticker JSON, as fast as possible (wsfwd only: Node falls "
             "behind Z already and reads its upstream regardless)",
             n=100, size=JSON_SIZE, rate=0, json=True, deflate=True,
             relays=["wsfwd"]),
    ]


# ----------------------------------------------------------------- helpers

def proc_mem_kib(pid):
    rss = hwm = None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, hwm


def perf_works():
    if shutil.which("perf") is None:
        return False, "perf not installed"
    try:
        r = subprocess.run(["perf", "stat", "-x,", "-e",
                            "syscalls:sys_enter_sendto", "true"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    if r.returncode != 0 or "not supported" in r.stderr or \
            "<not" in r.stderr:
        return False, r.stderr.strip().splitlines()[-1:] or "perf failed"
    return True, ""


def parse_kv(line):
    d = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            try:
                d[k] = float(v)
            except ValueError:
                d[k] = v
    return d


def relay_cmd(relay, src_port, port):
    upstream = "ws://127.0.0.1:%d/feed" % src_port
    if relay == "wsfwd":
        return [WSFWD, "-q", "-l", "127.0.0.1:%d" % port,
                "--max-queue", MAX_QUEUE, "%s=%s" % (PATH, upstream)]
    return ["node", NODE_FWD, upstream, str(port), PATH]


def load_cmd(sc, src_port, port):
    cmd = [LOAD, "both", "-p", str(src_port),
           "-u", "ws://127.0.0.1:%d%s" % (port, PATH),
           "-n", str(sc["n"]), "-s", str(sc["size"]),
           "-r", str(sc["rate"]),
           "-w", str(sc.get("warmup", WARMUP)),
           "-d", str(sc.get("duration", SECONDS)),
           "--connect-timeout", str(sc.get("connect_timeout", 10)),
           "--after-upstream", "--start-delay", "0.5"]
    if sc.get("stalled"):
        cmd += ["--stalled", str(sc["stalled"]), "--drain", "3"]
    if sc.get("flood_first"):
        cmd += ["--flood-first"]
    if sc.get("silent"):
        cmd += ["--silent"]
    if sc.get("inflight"):
        cmd += ["--inflight", str(sc["inflight"])]
    if sc.get("json"):
        cmd += ["--json"]
    if sc.get("deflate"):
        cmd += ["--deflate"]
    return cmd


def load_has_zlib():
    try:
        r = subprocess.run([LOAD, "-h"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "zlib: yes" in r.stdout


# ------------------------------------------------------------ send floor

def floor_points():
    """(sockets, bytes, rounds/s) where bench/floor measures: the scenarios'
    client counts, at their message size and larger (a relay hands several
    queued messages to one send: in A and E, ~128 KiB of them), as fast as
    it can (rounds/s 0) and, for F, at F's pace: 1,000 sends a second to
    each socket, so that its reader keeps up as F's readers do."""
    pts = [(100, 100, 0), (100, 1024, 0), (100, 131072, 0), (1000, 100, 0),
           (1000, 1024, 0), (5000, 256, 0), (5000, 1024, 0), (10, 65536, 0),
           (10, 131072, 0), (10, 65536, 1000)]
    if MANY not in (100, 1000, 5000):                   # D and flood
        pts += [(MANY, 100, 0), (MANY, 1024, 0), (MANY, 131072, 0)]
    return pts


def floor_clients(sc):
    """The sockets a scenario's relay sends to."""
    return sc["n"] + sc.get("stalled", 0)


def nearest(values, v):
    """The value nearest v on a log scale: counts and sizes span decades."""
    return min(values, key=lambda x: (abs(math.log(x / v)), x))


def floor_pick(floors, sockets, nbytes, rate=0):
    """The floor measured at the count nearest sockets and, of that count's,
    at the size nearest nbytes; paced at rate rounds/s if such was measured,
    else as fast as it could."""
    ok = [f for f in floors if f.get("us_per_send")]
    ok = [f for f in ok if f.get("rate", 0) == rate] or \
        [f for f in ok if not f.get("rate")]
    if not ok or not sockets or not nbytes:
        return None
    n = nearest({f["sockets"] for f in ok}, sockets)
    at = [f for f in ok if f["sockets"] == n]
    b = nearest({f["bytes"] for f in at}, nbytes)
    return [f for f in at if f["bytes"] == b][0]


def run_floor(points, perf_ok):
    """bench/floor at each point, with the relay's and the load tool's
    CPUs: its sender's CPU time per send() is the floor.  Under the same
    perf stat tracepoints as the relays when they are counted: enabled,
    they add ~10 % to a send(), to the floor as to the relays."""
    res = []
    for n, size, rate in points:
        cmd = [FLOOR, "-n", str(n), "-s", str(size),
               "-t", "%g" % FLOOR_SECONDS, "-w", "%g" % FLOOR_WARMUP,
               "-c", RELAY_CPU, "-C", LOAD_CPU] + \
            (["-r", str(rate)] if rate else [])
        if perf_ok:
            cmd = ["taskset", "-c", LOAD_CPU, "perf", "stat", "-x,", "-o",
                   os.devnull, "-e", ",".join("syscalls:sys_enter_" + e
                                              for e in SEND_EVENTS),
                   "--"] + cmd
        try:
            r = subprocess.run(cmd, capture_output=True, text=True,
                               timeout=FLOOR_SECONDS + FLOOR_WARMUP + 60)
            out, err = r.stdout, r.stderr
        except (OSError, subprocess.TimeoutExpired) as e:
            out, err = "", "floor: %s" % e
        d = {}
        for line in reversed(out.strip().splitlines()):
            try:
                d = json.loads(line)
                break
            except ValueError:
                pass
        if not d:
            d = dict(sockets=n, bytes=size, rate=rate)
        d["notes"] = [l.strip() for l in err.splitlines() if l.strip()]
        d["cmd"] = " ".join(cmd)
        res.append(d)
        time.sleep(0.2)
    return res


def floor_table(floors):
    hdr = ("sockets", "bytes", "rounds/s", "us / send", "sends/s", "EAGAIN")
    body = [(fmt(f["sockets"], "int"), fmt(f["bytes"], "int"),
             fmt(f.get("rate"), "int") if f.get("rate") else "max",
             fmt(f.get("us_per_send"), "f2"),
             fmt(f.get("sends_per_s"), "int"),
             fmt(f.get("eagain"), "int")) for f in floors]
    w = [max(len(r[i]) for r in body + [hdr]) for i in range(len(hdr))]
    lines = ["  " + " | ".join(h.rjust(w[i]) for i, h in enumerate(hdr)),
             "  " + "-+-".join("-" * x for x in w)]
    for row in body:
        lines.append("  " + " | ".join(v.rjust(w[i])
                                        for i, v in enumerate(row)))
    for f in floors:
        for note in f["notes"]:
            lines.append("  note (%d x %d B): %s" % (f["sockets"], f["bytes"],
                                                    note))
    return "\n".join(lines)


# -------------------------------------------------------------- one run

def run_one(relay, sc, perf_ok, floors=()):
    src_port, port = free_port(), free_port()
    tag = "%s-%s" % (sc["name"], relay)
    os.makedirs(OUT, exist_ok=True)
    res = dict(relay=relay, scenario=sc["name"], notes=[])
    lcmd = ["taskset", "-c", LOAD_CPU] + load_cmd(sc, src_port, port)
    rcmd = ["taskset", "-c", RELAY_CPU] + relay_cmd(relay, src_port, port)
    res["load_cmd"] = " ".join(lcmd)
    res["relay_cmd"] = " ".join(rcmd)
    load = subprocess.Popen(lcmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    # the source must listen before the relay looks for it
    line = load.stderr.readline().decode(errors="replace")
    if "phase=listening" not in line:
        load.kill()
        load.wait()
        res["notes"].append("load did not start: " + line.strip())
        return res
    rlog = open(os.path.join(OUT, tag + ".relay.log"), "wb")
    relay_p = subprocess.Popen(rcmd, stdout=rlog, stderr=subprocess.STDOUT,
                               cwd=ROOT)
    pid = relay_p.pid
    snaps = {}
    peak_rss = 0
    perf_p = None
    perf_file = os.path.join(OUT, tag + ".perf")
    sel = selectors.DefaultSelector()
    sel.register(load.stderr, selectors.EVENT_READ)
    buf = b""
    load_err = []
    deadline = time.time() + 120
    died = None

    def snap(name):
        rss, hwm = proc_mem_kib(pid)
        snaps[name] = dict(t=time.monotonic(), cpu=proc_cpu_ns(pid),
                           rss=rss, hwm=hwm)

    snap("start")
    eof = False
    while not eof and time.time() < deadline:
        for _key, _ev in sel.select(timeout=0.1):
            chunk = os.read(load.stderr.fileno(), 65536)
            if not chunk:
                eof = True
                break
            buf += chunk
            while b"\n" in buf:
                l, buf = buf.split(b"\n", 1)
                l = l.decode(errors="replace")
                m = re.search(r"phase=(\w+)", l)
                if not m:
                    load_err.append(l)
                    continue
                ph = m.group(1)
                snap(ph)
                if ph == "measure" and perf_ok and relay_p.poll() is None:
                    dur = sc.get("duration", SECONDS)
                    ev = ",".join("syscalls:sys_enter_" + e
                                  for e in SEND_EVENTS)
                    perf_p = subprocess.Popen(
                        ["taskset", "-c", LOAD_CPU, "perf", "stat", "-x,",
                         "-o", perf_file, "-e", ev, "-p", str(pid), "--",
                         "sleep", str(dur)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    res["perf_s"] = dur
        rss, _ = proc_mem_kib(pid)
        if rss and "connecting" in snaps:
            peak_rss = max(peak_rss, rss)
        if died is None and relay_p.poll() is not None:
            died = relay_p.returncode
    if not eof:
        res["notes"].append("load tool timed out; killed")
        load.kill()
    out = load.stdout.read().decode(errors="replace")
    load.wait()
    snap("done")
    if died is None and relay_p.poll() is not None:
        died = relay_p.returncode
    if perf_p is not None:
        try:
            perf_p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            perf_p.kill()
    # stop the relay
    if relay_p.poll() is None:
        relay_p.send_signal(signal.SIGTERM)
        try:
            relay_p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            relay_p.kill()
            relay_p.wait()
            res["notes"].append("relay ignored SIGTERM for 5 s")
    rlog.close()
    if died is not None:
        sig = -died if died < 0 else None
        res["notes"].append("relay exited during the run: %s" % (
            "signal %s" % signal.Signals(sig).name if sig else
            "status %d" % died))
    res["died"] = died
    kv = parse_kv(out.strip().splitlines()[-1]) if out.strip() else {}
    if not kv:
        res["notes"].append("no result from load: %s" %
                            " | ".join(load_err[-3:]))
    res["load"] = kv
    res["load_line"] = out.strip()
    res["snaps"] = snaps
    res["peak_rss_kib"] = peak_rss
    if perf_p is not None and os.path.exists(perf_file):
        total, seen = 0, False
        with open(perf_file) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) > 2 and parts[2].startswith("syscalls:"):
                    try:
                        total += int(parts[0])
                        seen = True
                    except ValueError:
                        pass
        if seen:
            res["sends"] = total
    # derived figures
    m, e = snaps.get("measure"), snaps.get("end")
    if m and e and m["cpu"] is not None and e["cpu"] is not None:
        wall = e["t"] - m["t"]
        cpu = e["cpu"] - m["cpu"]
        res["cpu_pct"] = 100.0 * cpu / 1e9 / wall if wall > 0 else None
        res["cpu_win_ns"] = cpu
        msgs = kv.get("msgs", 0)
        if msgs:
            res["cpu_ns_msg"] = cpu / msgs
    if kv.get("msgs_s") and res.get("sends") is not None:
        res["sends_msg"] = res["sends"] / (kv["msgs_s"] * res["perf_s"])
    if res.get("sends") and m and e and m["cpu"] is not None and \
            e["cpu"] is not None:
        # both over the measured window (perf's is its own `sleep`)
        res["cpu_us_send"] = (e["cpu"] - m["cpu"]) / 1e3 / res["sends"] * \
            res["perf_s"] / max(e["t"] - m["t"], 1e-9)
    # the floor at this client count and (delivered wire bytes / sends)
    hdr = 2 if sc["size"] < 126 else 4 if sc["size"] < 65536 else 10
    nbytes = sc["size"] + hdr
    if kv.get("msgs_s") and kv.get("bytes_s") and res.get("sends"):
        pay = kv["bytes_s"] / kv["msgs_s"]
        hdr = 2 if pay < 126 else 4 if pay < 65536 else 10
        nbytes = res["bytes_send"] = (kv["bytes_s"] + hdr * kv["msgs_s"]) * \
            res["perf_s"] / res["sends"]
    f = floor_pick(floors, floor_clients(sc), nbytes, sc.get("floor_rate", 0))
    if f:
        res["floor"] = dict((k, f.get(k)) for k in ("sockets", "bytes",
                                                    "us_per_send", "rate"))
        if res.get("cpu_us_send"):
            res["cpu_send_floor"] = res["cpu_us_send"] / f["us_per_send"]
    before = snaps.get("connecting", {}).get("rss")
    after = (snaps.get("end") or {}).get("rss")
    nconn = kv.get("connected", 0) + kv.get("stalled_connected", 0)
    if before and after and nconn:
        res["rss_before_kib"] = before
        res["rss_after_kib"] = after
        res["rss_client_kib"] = (after - before) / nconn
    if before and peak_rss:
        res["rss_growth_kib"] = peak_rss - before
    hwm = (snaps.get("done") or snaps.get("end") or {}).get("hwm")
    res["hwm_kib"] = hwm
    with open(os.path.join(OUT, tag + ".json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    return res


# ---------------------------------------------------------------- table

def fmt(v, kind):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if kind == "int":
        return "{:,.0f}".format(v)
    if kind == "k":
        return "{:,.0f} k".format(v / 1e3)
    if kind == "ms":
        return "%.2f" % v if v < 100 else "{:,.0f}".format(v)
    if kind == "f1":
        return "%.1f" % v
    if kind == "f2":
        return "%.2f" % v
    if kind == "f3":
        return "%.3f" % v if v >= 0.01 or v == 0 else "%.2g" % v
    return str(v)


def ratio(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        r = a / b
        return "%.2f" % r if r < 100 else "%.0f" % r
    return "-"


def metrics_for(name, r, runs):
    """(metric, value, kind) rows for one relay's run of one scenario."""
    kv = r.get("load", {})
    rows = []
    if not kv:
        return [("result", "no result", None)]
    n = int(kv.get("clients", 0))

    def msg_rows():
        rows.append(("delivered msgs/s", kv.get("msgs_s"), "int"))
        rows.append(("p99 latency ms", kv.get("p99_ms")
                     if kv.get("msgs") else None, "ms"))
        rows.append(("lost msgs (seq gaps)", kv.get("gaps"), "int"))
        rows.append(("clients dropped", kv.get("closed"), "int"))
        rows.append(("relay CPU %", r.get("cpu_pct"), "f1"))
        rows.append(("CPU ns / delivered msg", r.get("cpu_ns_msg"), "int"))
        rows.append(("sends / delivered msg", r.get("sends_msg"), "f3"))
        rows.append(("CPU us / send", r.get("cpu_us_send"), "f2"))
        fl = r.get("floor")
        rows.append(("CPU per send / floor", r.get("cpu_send_floor"), "f2"))
        rows.append(("floor us at sockets x B (B / send)",
                     "%.2f at %d x %d%s (%s)" % (
                         fl["us_per_send"], fl["sockets"], fl["bytes"],
                         " %d/s" % fl["rate"] if fl.get("rate") else "",
                         fmt(r.get("bytes_send"), "int"))
                     if fl else None, None))
        bps = r.get("bytes_send")
        if fl and bps and max(bps, fl["bytes"]) > 4096 and \
                max(bps, fl["bytes"]) / min(bps, fl["bytes"]) > 1.5:
            # below a few KiB a send costs the same whatever its size
            rows.append(("NOTE", "the nearest floor was measured with %s-"
                         "byte sends, the relay's averaged %s bytes: the "
                         "floor ratio is rough" % (
                             fmt(fl["bytes"], "int"), fmt(bps, "int")),
                         None))
        rows.append(("RSS KiB / client", r.get("rss_client_kib"), "f1"))

    connected = ("connected (of %d)" % n, kv.get("connected"), "int")
    load_cpu = ("load tool CPU % / loop avg, max ms",
                "%s / %s, %s" % (fmt(kv.get("load_cpu_pct"), "f1"),
                                 fmt(kv.get("loop_avg_ms"), "f2"),
                                 fmt(kv.get("loop_max_ms"), "f2")), None)
    if name in ("A", "B", "C"):
        rows.append(connected)
        msg_rows()
        rows.append(("p50 / p999 ms", "%s / %s" % (
            fmt(kv.get("p50_ms"), "ms"), fmt(kv.get("p999_ms"), "ms"))
            if kv.get("msgs") else None, None))
        rows.append(load_cpu)
    elif name == "D":
        rows.append(connected)
        rows.append(("RSS KiB / client", r.get("rss_client_kib"), "f2"))
        rows.append(("RSS MiB before -> with clients",
                     "%.1f -> %.1f" % (r["rss_before_kib"] / 1024,
                                       r["rss_after_kib"] / 1024)
                     if r.get("rss_before_kib") else None, None))
        rows.append(("relay CPU % while idle", r.get("cpu_pct"), "f2"))
        rows.append(("time to connect all s",
                     kv["connect_ms"] / 1000 if kv.get("connect_ms", -1) >= 0
                     else "not all", "f2"))
    elif name == "E":
        rows.append(("delivered MB/s", kv.get("bytes_s", 0) / 1e6, "int"))
        msg_rows()
        rows.append(("peak RSS MiB (VmHWM)", r["hwm_kib"] / 1024
                     if r.get("hwm_kib") else None, "f1"))
        rows.append(load_cpu)
    elif name in ("F", "Fctl"):
        if name == "F":
            rows.append(("stalled client dropped",
                         "yes" if kv.get("stalled_dropped") else "no", None))
        rows.append(("delivered MB/s", kv.get("bytes_s", 0) / 1e6, "int"))
        msg_rows()
        rows.append(("RSS growth MiB (peak - before)",
                     r["rss_growth_kib"] / 1024
                     if r.get("rss_growth_kib") is not None else None, "f1"))
        if name == "F":
            ctl = runs.get(("Fctl", r["relay"]))
            c99 = ctl and ctl.get("load", {}).get("msgs") and \
                ctl["load"].get("p99_ms")
            p99 = kv.get("p99_ms") if kv.get("msgs") else None
            rows.append(("readers' p99 / control p99",
                         p99 / c99 if p99 and c99 and c99 > 0 else None,
                         "f2"))
    elif name == "flood":
        rows.append(("connected within 10 s (of %d)" % n,
                     kv.get("connected"), "int"))
        rows.append(("time to connect all s",
                     kv["connect_ms"] / 1000 if kv.get("connect_ms", -1) >= 0
                     else "not all", "f2"))
        msg_rows()
        rows.append(("relay peak RSS MiB", r["peak_rss_kib"] / 1024
                     if r.get("peak_rss_kib") else None, "f1"))
        rows.append(load_cpu)
    elif name in ("Z", "Zp", "Zmax"):
        rows += z_rows(name, r, kv, n, runs)
    for note in r.get("notes", []):
        rows.append(("NOTE", note, None))
    if kv.get("closed", 0) > 0 and name != "D":
        rows.append(("NOTE", "%d of %d clients dropped by the relay: the "
                     "message figures are the survivors'" % (
                         kv["closed"], n), None))
    if name == "flood" and kv.get("msgs"):
        rows.append(("NOTE", "message figures include the backlog queued "
                     "while connecting", None))
    if kv.get("load_cpu_pct", 0) >= 95:
        rows.append(("NOTE", "load tool at %.0f%% of its core: figures may "
                     "be capped by it" % kv["load_cpu_pct"], None))
    return rows


def z_rows(name, r, kv, n, runs):
    """Rows of the permessage-deflate scenarios (issue 8)."""
    rows = []
    paced = name != "Zmax"
    msgs_s = kv.get("msgs_s") or 0
    src_s = kv.get("src_msgs_s") or 0
    win = kv.get("window_s") or 0
    pay = kv["bytes_s"] / msgs_s if msgs_s else None
    hdr = (2 if pay < 126 else 4 if pay < 65536 else 10) if pay else 0
    offered = src_s * n
    p99 = kv.get("p99_ms") if kv.get("msgs") else None
    rows.append(("connected (of %d)" % n, kv.get("connected"), "int"))
    rows.append(("permessage-deflate agreed (clients)",
                 kv.get("deflate_clients"), "int"))
    rows.append(("source msgs/s (each to every client)", src_s, "int"))
    rows.append(("delivered msgs/s", msgs_s, "int"))
    rows.append(("delivered / offered", msgs_s / offered
                 if offered and paced else None, "f3"))
    rows.append(("kept up (>= 99 %, p99 < 100 ms, no loss)",
                 ("yes" if offered and msgs_s >= 0.99 * offered and
                  p99 is not None and p99 < 100 and not kv.get("gaps") and
                  not kv.get("closed") else "no") if paced else "-", None))
    rows.append(("wire bytes / msg (frame)", pay + hdr if pay else None,
                 "int"))
    rows.append(("compression (JSON bytes / payload)",
                 JSON_SIZE / pay if pay else None, "f2"))
    rows.append(("delivered MB/s on the wire",
                 kv.get("bytes_s", 0) / 1e6, "f1"))
    rows.append(("p50 / p99 latency ms", "%s / %s" % (
        fmt(kv.get("p50_ms"), "ms"), fmt(p99, "ms")) if p99 is not None
        else None, None))
    rows.append(("lost msgs (seq gaps)", kv.get("gaps"), "int"))
    rows.append(("clients dropped", kv.get("closed"), "int"))
    rows.append(("relay CPU %", r.get("cpu_pct"), "f1"))
    rows.append(("relay CPU us / delivered msg",
                 r["cpu_ns_msg"] / 1e3 if r.get("cpu_ns_msg") else None,
                 "f2"))
    cpu = r.get("cpu_win_ns")
    rows.append(("relay CPU us / source msg",
                 cpu / 1e3 / (src_s * win) if cpu and src_s and win
                 else None, "f1"))
    rows.append(("relay peak RSS MiB (VmHWM)", r["hwm_kib"] / 1024
                 if r.get("hwm_kib") else None, "f1"))
    if name != "Zp":
        rows.append(("client 0 inflated whole: msgs / bad",
                     "%s / %s" % (fmt(kv.get("zfull_msgs"), "int"),
                                  fmt((kv.get("zfull_bad") or 0) +
                                      (kv.get("zerr") or 0), "int")), None))
    rows.append(("load tool CPU % / loop avg, max ms",
                 "%s / %s, %s" % (fmt(kv.get("load_cpu_pct"), "f1"),
                                  fmt(kv.get("loop_avg_ms"), "f2"),
                                  fmt(kv.get("loop_max_ms"), "f2")), None))
    if kv.get("zerr") or kv.get("zfull_bad"):
        rows.append(("NOTE", "%d compressed messages did not inflate (or "
                     "to the wrong length)" % ((kv.get("zerr") or 0) +
                                               (kv.get("zfull_bad") or 0)),
                     None))
    if kv.get("rsv_bad"):
        rows.append(("NOTE", "%d RSV1 frames without the extension" %
                     kv["rsv_bad"], None))
    if not paced and r.get("cpu_pct") is not None and r["cpu_pct"] < 90 and \
            kv.get("load_cpu_pct", 100) < 90:
        rows.append(("NOTE", "neither the relay (%.0f%%) nor the load tool "
                     "(%.0f%%) used its whole core: the pace is set by "
                     "wake-ups between them (and whatever else runs on the "
                     "machine), not by CPU; at %.2f us per delivered message "
                     "one core would take about %s msgs/s" % (
                         r["cpu_pct"], kv["load_cpu_pct"],
                         r["cpu_ns_msg"] / 1e3,
                         fmt(1e9 / r["cpu_ns_msg"], "int"))
                     if r.get("cpu_ns_msg") else "relay not CPU-bound",
                     None))
    return rows


def print_table(scs, runs):
    lines = []
    hdr = ("scenario", "metric", "wsfwd", "node", "ratio")
    body = []
    for sc in scs:
        per = {}
        order = []
        for relay in RELAYS:
            r = runs.get((sc["name"], relay))
            if r is None:
                continue
            for metric, v, kind in metrics_for(sc["name"], r, runs):
                key = metric if metric != "NOTE" else "NOTE:" + relay
                if key not in per:
                    per[key] = {}
                    order.append((key, kind))
                if metric == "NOTE":
                    per[key][relay] = per[key].get(relay, "") and \
                        per[key][relay] + "; " + v or v
                else:
                    per[key][relay] = v
        first = True
        for key, kind in order:
            a, b = per[key].get("wsfwd"), per[key].get("node")
            if key.startswith("NOTE:"):
                relay = key[5:]
                body.append((sc["name"] if first else "", "note (%s)" % relay,
                             per[key][relay], "", ""))
            else:
                body.append((sc["name"] if first else "", key,
                             fmt(a, kind), fmt(b, kind), ratio(a, b)))
            first = False
    cells = [row for row in body if not row[1].startswith("note (")]
    w = [max(len(str(row[i])) for row in cells + [hdr]) for i in range(5)]
    sep = "-+-".join("-" * x for x in w)
    lines.append(" | ".join(str(h).ljust(w[i]) if i < 2 else
                            str(h).rjust(w[i]) for i, h in enumerate(hdr)))
    lines.append(sep)
    prev = None
    for row in body:
        if row[0] and prev is not None:
            lines.append(sep)
        prev = row
        if row[1].startswith("note ("):
            lines.append(" | ".join([row[0].ljust(w[0]), row[1].ljust(w[1]),
                                     row[2]]))
            continue
        lines.append(" | ".join(str(v).ljust(w[i]) if i < 2 else
                                str(v).rjust(w[i]) for i, v in enumerate(row)))
    return "\n".join(lines)


def machine():
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "%d cores (nproc), %s, Linux %s" % (
        os.cpu_count() or 0, model, platform.release())


def versions():
    v = []
    try:
        v.append(subprocess.run([WSFWD, "--version"], capture_output=True,
                                text=True).stdout.strip())
    except OSError:
        pass
    try:
        node = subprocess.run(["node", "--version"], capture_output=True,
                              text=True).stdout.strip()
        with open(os.path.join(ROOT, "bench", "node", "node_modules", "ws",
                               "package.json")) as f:
            ws = json.load(f)["version"]
        v.append("node %s + ws %s" % (node, ws))
    except (OSError, ValueError, KeyError):
        pass
    return ", ".join(v)


def self_ceiling():
    """bench/load against itself: 100 clients, 100 B, as fast as possible.

    Once with source and sink in one process on the load tool's core (what
    `load both` can do alone), once with the source on the relay's core and
    the sink alone on its core (what the sink can take, the part that
    matters when a relay sits in between)."""
    dur = "%g" % min(SECONDS, 3.0)
    out = {}
    port = free_port()
    r = subprocess.run(["taskset", "-c", LOAD_CPU, LOAD, "both", "-p",
                        str(port), "-n", "100", "-s", "100", "-w", "1",
                        "-d", dur], capture_output=True, text=True,
                       timeout=120)
    out["both"] = parse_kv(r.stdout.strip().splitlines()[-1]) \
        if r.stdout.strip() else {}
    port = free_port()
    src = subprocess.Popen(["taskset", "-c", RELAY_CPU, LOAD, "source", "-p",
                            str(port), "-s", "100"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    src.stderr.readline()           # phase=listening
    r = subprocess.run(["taskset", "-c", LOAD_CPU, LOAD, "sink", "-u",
                        "ws://127.0.0.1:%d/feed" % port, "-n", "100",
                        "-w", "1", "-d", dur], capture_output=True,
                       text=True, timeout=120)
    src.send_signal(signal.SIGTERM)
    src.wait()
    out["sink"] = parse_kv(r.stdout.strip().splitlines()[-1]) \
        if r.stdout.strip() else {}
    return out


def main():
    scs = scenarios()
    only = os.environ.get("BENCH_ONLY")
    want = set()
    if only:
        want = set(only.split(","))
        if "deflate" in want:
            want.add("Z")
        if "F" in want:
            want.add("Fctl")
        if "Z" in want:
            want |= {"Zp", "Zmax"}
        scs = [s for s in scs if s["name"] in want]
    # the floor where the scenarios will want it (all of it when asked for)
    points = floor_points()
    if only and "floor" not in want:
        counts = {p[0] for p in points}
        need = {nearest(counts, floor_clients(sc)) for sc in scs
                if sc["name"] in FLOOR_SCENARIOS}
        points = [p for p in points if p[0] in need]
    if FLOOR_SECONDS <= 0:
        points = []
    if any(s.get("deflate") for s in scs) and not load_has_zlib():
        print("bench: bench/load was built without zlib (no zlib.h: "
              "apt-get install zlib1g-dev); skipping %s" % ", ".join(
                  s["name"] for s in scs if s.get("json")))
        scs = [s for s in scs if not s.get("json")]
        if not scs and not points:
            return 1
    perf_ok, why = perf_works()
    started = datetime.datetime.now().astimezone()
    print("wsfwd benchmark, %s" % started.strftime("%Y-%m-%d %H:%M %Z"))
    print("machine: %s" % machine())
    try:
        with open("/proc/loadavg") as f:
            print("load average before the run: %s" %
                  " ".join(f.read().split()[:3]))
    except OSError:
        pass
    print("relays: %s" % versions())
    print("relay on CPU %s (taskset), bench/load (source and sink in one "
          "process) on CPU %s; %gs measured after %gs warm-up per scenario"
          % (RELAY_CPU, LOAD_CPU, SECONDS, WARMUP))
    print("wsfwd: -q --max-queue %s (E, F: its default 1M); node: %s"
          % (MAX_QUEUE, "bench/node/forwarder.js"))
    if any(sc.get("json") for sc in scs):
        print("Z, Zp, Zmax: the source sends %d-byte text messages of ticker "
              "JSON (bench/load --json); Z and Zmax clients offer "
              "permessage-deflate (--deflate) and inflate the first 64 bytes "
              "of each message for its sequence number and stamp (client 0 "
              "inflates all of it); node: perMessageDeflate as in the "
              "original (level 3, window 2^10, threshold 10)" % JSON_SIZE)
    print("descriptors: soft limit %d, so D and flood use %d clients%s"
          % (NOFILE, MANY, "" if MANY == 10000 else
             " (10,000 do not fit)"))
    print("sends counted with perf stat (sendmsg, sendto, sendmmsg, write, "
          "writev tracepoints) over the measured window" if perf_ok else
          "sends per message: skipped (%s)" % why)
    sys.stdout.flush()
    runs = {}
    t0 = time.time()
    floors = []
    if points and not os.access(FLOOR, os.X_OK):
        print("send floor: skipped (no bench/floor: make -C bench floor, "
              "or run bench/run.sh)")
    elif points:
        print("send floor (bench/floor: send() of BYTES to each of SOCKETS "
              "loopback TCP sockets in turn, sender on CPU %s, reader on "
              "CPU %s; sender's CPU time / sends over %gs after %gs%s, "
              "~%.0f s) ..." % (RELAY_CPU, LOAD_CPU, FLOOR_SECONDS,
                        FLOOR_WARMUP, ", under the same perf stat" if perf_ok
                        else "",
                        len(points) * (FLOOR_SECONDS + FLOOR_WARMUP + 0.5)),
              flush=True)
        floors = run_floor(points, perf_ok)
        print(floor_table(floors))
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "floor.json"), "w") as f:
            json.dump(floors, f, indent=1)
        sys.stdout.flush()
    if not scs:
        print("total %.0f s%s" % (time.time() - t0, "; floor results in %s"
                                  % os.path.relpath(os.path.join(
                                      OUT, "floor.json"), ROOT)
                                  if floors else ""))
        return 0
    ceil = self_ceiling()
    for k, what in (("both", "source and sink in one process on one core"),
                    ("sink", "sink alone on its core, source on the other")):
        kv = ceil.get(k, {})
        print("load tool ceiling (%s): %s msgs/s, %s MB/s, load CPU %s%%, "
              "gaps %s" % (what, fmt(kv.get("msgs_s"), "int"),
                           fmt(kv.get("bytes_s", 0) / 1e6, "int"),
                           fmt(kv.get("load_cpu_pct"), "f1"),
                           fmt(kv.get("gaps"), "int")))
    sys.stdout.flush()
    for sc in scs:
        for relay in RELAYS:
            if relay not in sc.get("relays", RELAYS):
                continue
            print("  running %-5s %-5s: %s ..." % (sc["name"], relay,
                                                   sc["what"]),
                  end="", flush=True)
            r = run_one(relay, sc, perf_ok, floors)
            runs[(sc["name"], relay)] = r
            kv = r.get("load", {})
            print(" %s msgs/s, %s connected%s" % (
                fmt(kv.get("msgs_s"), "int"),
                fmt(kv.get("connected"), "int"),
                ", " + "; ".join(r["notes"]) if r["notes"] else ""),
                flush=True)
            time.sleep(0.5)
    print()
    for sc in scs:
        print("%-5s %s" % (sc["name"], sc["what"]))
    print()
    print("ratio = wsfwd / node")
    print(print_table(scs, runs))
    print()
    print("total %.0f s; raw results and relay logs in %s"
          % (time.time() - t0, os.path.relpath(OUT, ROOT)))


if __name__ == "__main__":
    sys.exit(main())
