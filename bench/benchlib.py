"""What the Python scripts of bench/ share: a free port on 127.0.0.1 (the
tests' own, from tests/wslib.py) and a process's CPU time.  Standard library
only; each script imports it from its own directory."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "tests"))
from wslib import free_port  # noqa: E402,F401


def proc_cpu_ns(pid):
    """CPU time of every thread of pid, in ns (schedstat), else from stat;
    None when pid cannot be read."""
    total = 0
    try:
        for t in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        if total:
            return total
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        hz = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) * 1000000000 // hz
    except (OSError, ValueError, IndexError):
        return None
