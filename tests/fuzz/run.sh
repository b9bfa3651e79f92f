#!/usr/bin/env bash
# tests/fuzz/run.sh SECONDS TARGET...: run each fuzz-TARGET (make fuzz) for
# SECONDS over its corpus in fuzz-corpus/TARGET (seeded by seeds.py, and
# kept between runs so that long runs build on each other).  A crash, leak
# or timeout fails the target and leaves its input in fuzz-corpus/.  Ends
# with "N passed, M failed".
set -u
cd "$(dirname "$0")/../.." || exit 2
secs=${1:?usage: run.sh SECONDS TARGET...}
shift
PASS=0 FAIL=0
python3 tests/fuzz/seeds.py fuzz-corpus || exit 2
for t in "$@"; do
	log=fuzz-corpus/$t.log
	if [ ! -x "./fuzz-$t" ]; then
		echo "FAIL - fuzz $t: no ./fuzz-$t (make fuzz)"
		FAIL=$((FAIL + 1))
		continue
	fi
	# -timeout: one input may take 10 s at most; -rss_limit_mb bounds memory.
	if timeout $((secs + 60)) "./fuzz-$t" -max_total_time="$secs" \
	    -timeout=10 -rss_limit_mb=2048 -artifact_prefix="fuzz-corpus/$t-" \
	    "fuzz-corpus/$t" >"$log" 2>&1; then
		echo "ok - fuzz $t: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" |
		    tail -n 1 | sed -E 's/^#([0-9]+)[[:space:]]+DONE[[:space:]]+cov: ([0-9]+).*/\1 runs, coverage \2/')"
		PASS=$((PASS + 1))
	else
		echo "FAIL - fuzz $t: $(grep -m 1 -E 'ERROR|SUMMARY|deadly' "$log")"
		FAIL=$((FAIL + 1))
	fi
done
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
