#!/usr/bin/env bash
# bench/run.sh - wsfwd against the Node.js forwarder it replaces (issue 4).
# `make bench` calls it.  It builds what it needs (wsfwd, bench/load,
# bench/floor, the forwarder's `ws` from npm), raises the descriptor limit,
# and runs bench/run.py, which measures the send() floor, runs every scenario
# against both relays and prints one table.  It takes a few minutes;
# BENCH_SECONDS=3 makes it shorter (see bench/run.py for the other knobs).
set -euo pipefail
cd "$(dirname "$0")/.."

# D and flood hold 10,000 clients: one descriptor each in the load tool and
# in the relay.  Raise the soft limit to 65536 or the hard limit if lower.
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then
	ulimit -n 65536
else
	ulimit -n "$hard"
fi

for tool in taskset node npm python3; do
	command -v "$tool" >/dev/null || { echo "bench: needs $tool" >&2; exit 1; }
done
[ "$(nproc)" -ge 2 ] || echo "bench: fewer than 2 CPUs; relay and load tool will share one" >&2

[ -n "${BENCH_WSFWD:-}" ] || make -s wsfwd
# bench/load links zlib for the permessage-deflate scenarios (Z) if it can
if printf '#include <zlib.h>\nint main(void){return !zlibVersion();}\n' |
	${CC:-cc} -x c -o /dev/null - -lz 2>/dev/null; then
	${CC:-cc} -O2 -DWITH_ZLIB -o bench/load bench/load.c -lz
else
	echo "bench: zlib.h or libz not found (apt-get install zlib1g-dev):" \
	    "bench/load built without --deflate; scenarios Z, Zp, Zmax skipped" >&2
	${CC:-cc} -O2 -o bench/load bench/load.c
fi
# bench/floor: what one send() costs here, the relays' floor
${CC:-cc} -O2 -Wall -Wextra -std=c99 -D_GNU_SOURCE -o bench/floor bench/floor.c
if [ ! -f bench/node/node_modules/ws/package.json ]; then
	(cd bench/node && npm install --no-audit --no-fund --loglevel=error)
fi
exec python3 bench/run.py "$@"
