#!/usr/bin/env bash
# Build wsfwd, run the unit tests, then the end-to-end suites (the fifo
# chain, tests/proto.py, tests/tls.py) against three builds at once: the
# plain binary, the static one and the -fsanitize=address,undefined one.
# Ends with one line "N passed, M failed"; exits non-zero on any failure.
#
# Style of OpenBSD regress/usr.bin/nc: real binaries on 127.0.0.1, free ports,
# bounded waits on log lines, processes stopped by PID only.

set -u
cd "$(dirname "$0")" || exit 2

T=$(mktemp -d "${TMPDIR:-/tmp}/wsfwd-test.XXXXXX") || exit 2
PIDS=""
PASS=0
FAIL=0

stop_all() {
	local p
	exec 3>&-
	for p in $PIDS; do
		kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
	done
	for p in $PIDS; do
		waitpid_bounded "$p" 30 || kill -KILL "$p" 2>/dev/null
	done
}
cleanup() {
	stop_all
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. tests/lib.sh

# Add "N passed, M failed" from the last such line of file $1 (M also goes to
# LAST_FAILED); false if there is no such line.
add_counts() {
	local line
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$1" | tail -n 1)
	[ -n "$line" ] || return 1
	set -- $line
	PASS=$((PASS + $1))
	FAIL=$((FAIL + $3))
	LAST_FAILED=$3
	return 0
}

# chain BIN TAG: A (stdin route fed by a fifo) -> B (upstream route) -> 3 cats.
chain() {
	local bin=$1 tag=$2 d=$T/$2 p1 p2 a b i cb
	local cats=""
	mkdir -p "$d"
	p1=$(free_port)
	p2=$(free_port)
	mkfifo "$d/fifo"
	"$bin" -l "127.0.0.1:$p1" /a=- <"$d/fifo" 2>"$d/a.log" &
	a=$!
	PIDS="$PIDS $a"
	exec 3>"$d/fifo"	# held open so A sees no EOF while the chain connects
	if ! wait_log "$d/a.log" "listening on 127.0.0.1:$p1"; then
		nok "$tag chain: A listens" "no 'listening on 127.0.0.1:$p1' in A's log"
		exec 3>&-
		return
	fi
	# Children get 3>&-: a stray copy of the fifo's write end would hide EOF.
	"$bin" -l "127.0.0.1:$p2" "/b=ws://127.0.0.1:$p1/a" 2>"$d/b.log" 3>&- &
	b=$!
	PIDS="$PIDS $b"
	if wait_log "$d/b.log" "upstream /b: connected to ws://127.0.0.1:$p1/a" &&
	    wait_log "$d/b.log" "listening on 127.0.0.1:$p2"; then
		ok "$tag chain: B connects to A"
	else
		nok "$tag chain: B connects to A" "no 'upstream /b: connected' in B's log"
	fi
	for i in 1 2 3; do
		"$bin" --cat "ws://127.0.0.1:$p2/b" >"$d/cat$i.out" 2>"$d/cat$i.log" 3>&- &
		cats="$cats $!"
		PIDS="$PIDS $!"
	done
	if wait_log "$d/b.log" "connected to /b" 3; then
		ok "$tag chain: 3 cats connect to B"
	else
		nok "$tag chain: 3 cats connect to B" "B logged $(grep -c 'connected to /b' "$d/b.log") of 3"
	fi

	# 1000 numbered lines, then a 1 MiB line.
	seq 1 1000 | sed 's/^/line /' >"$d/want"
	head -c 1048576 /dev/zero | tr '\0' 'x' >>"$d/want"
	echo >>"$d/want"
	cat "$d/want" >&3
	for i in 1 2 3; do
		wait_size "$d/cat$i.out" "$(wc -c <"$d/want")" 150
		if cmp -s "$d/want" "$d/cat$i.out"; then
			ok "$tag chain: cat $i got 1000 lines and a 1 MiB line in order"
		else
			nok "$tag chain: cat $i got 1000 lines and a 1 MiB line in order" \
			    "$(cmp "$d/want" "$d/cat$i.out" 2>&1 | head -n 1)"
		fi
	done

	# EOF on the fifo: A closes its clients with 1000 and exits 0.
	exec 3>&-
	exit_status "$a" 50
	if [ "$RC" = 0 ] && grep -qF "route /a: end of input" "$d/a.log"; then
		ok "$tag chain: A exits 0 at end of input"
	else
		nok "$tag chain: A exits 0 at end of input" "status $RC, log: $(tail -n 1 "$d/a.log")"
	fi
	if wait_log "$d/b.log" "upstream /b: lost" 1 50; then
		ok "$tag chain: B logs upstream loss"
	else
		nok "$tag chain: B logs upstream loss" "no 'upstream /b: lost' in B's log"
	fi

	# A comes back on the same port: B reconnects, the cats stayed connected.
	"$bin" -l "127.0.0.1:$p1" /a=- <"$d/fifo" 2>"$d/a2.log" &
	a=$!
	PIDS="$PIDS $a"
	exec 3>"$d/fifo"
	if wait_log "$d/b.log" "upstream /b: connected" 2 150; then
		echo "again" >&3
		if wait_size "$d/cat3.out" "$(($(wc -c <"$d/want") + 6))" 50 &&
		    [ "$(tail -n 1 "$d/cat3.out")" = again ]; then
			ok "$tag chain: B reconnects, cats keep receiving"
		else
			nok "$tag chain: B reconnects, cats keep receiving" "cat 3 did not print 'again'"
		fi
	else
		nok "$tag chain: B reconnects, cats keep receiving" "B did not reconnect within 15 s"
	fi
	exec 3>&-
	exit_status "$a" 50

	# SIGTERM to B: cats get close 1001 (not 1000), so they exit 1; B exits 0.
	kill -TERM "$b"
	exit_status "$b" 50
	if [ "$RC" = 0 ]; then
		ok "$tag chain: B exits 0 on SIGTERM"
	else
		nok "$tag chain: B exits 0 on SIGTERM" "status $RC"
	fi
	i=0
	for cb in $cats; do
		i=$((i + 1))
		exit_status "$cb" 30
		if [ "$RC" = 1 ] && [ -s "$d/cat$i.log" ]; then
			ok "$tag chain: cat $i exits 1 on close 1001"
		else
			nok "$tag chain: cat $i exits 1 on close 1001" "status $RC"
		fi
	done
	for cb in $cats; do stop_pid "$cb"; done
	stop_pid "$b"
}

# cat_dead BIN TAG: --cat to a port nobody listens on.
cat_dead() {
	local rc
	timeout 10 "$1" --cat "ws://127.0.0.1:$(free_port)/x" >"$T/$2/dead.out" 2>"$T/$2/dead.log"
	rc=$?
	if [ "$rc" = 1 ] && [ -s "$T/$2/dead.log" ]; then
		ok "$2 cat of a dead port exits 1"
	else
		nok "$2 cat of a dead port exits 1" "status $rc"
	fi
}

# pysuite NAME BIN TAG: tests/NAME.py against BIN, its wsfwd logs under
# $T/TAG/NAME.  proto.py: raw-socket clients and a fake origin; tls.py: a
# TLS origin in Python's ssl with certificates made by openssl; tree.py: a
# root and two edges, and nginx's stream proxy in front where installed;
# routing.py: prefix routes, --send, --replay, --rotate, --tunnel, access
# control and --stats; deflate.py: permessage-deflate against zlib,
# Python websockets, Node's ws and headless Chromium; faults.py: flapping
# origin, client churn, descriptor exhaustion, half-open peers, hostile
# pacing, RLIMIT_AS, valgrind (those two skipped where they cannot run).
# "skip - " lines are shown too.
pysuite() {
	local out=$T/$3/$1
	mkdir -p "$out"
	WSFWD_LOGDIR=$out timeout 170 python3 "tests/$1.py" "$2" \
	    >"$out.out" 2>"$out.err"
	grep -E '^(ok|FAIL|skip) - ' "$out.out" | sed -E "s/^(ok|FAIL|skip) - /\1 - $3 $1: /"
	add_counts "$out.out" || nok "$3 $1.py" "no summary line (timed out?)"
	if grep -q '^FAIL' "$out.out"; then
		echo "# $3 $1.py diagnostics:"
		sed 's/^/# /' "$out.err" | tail -n 60
	fi
}

# sanitizer_logs TAG: every wsfwd stderr log of the run must be clean.
sanitizer_logs() {
	local f bad=""
	for f in $(find "$T/$1" -name '*.log' 2>/dev/null); do
		if grep -qE 'ERROR: AddressSanitizer|runtime error:|LeakSanitizer' "$f"; then
			bad="$bad ${f#$T/}"
		fi
	done
	if [ -z "$bad" ]; then
		ok "$1 no sanitizer reports in wsfwd logs"
	else
		nok "$1 no sanitizer reports in wsfwd logs" "$bad"
	fi
}

# suite BIN TAG: every end-to-end test against one build, in the
# background; its lines and its own "N passed, M failed" go to $T/TAG.out.
suite() {
	mkdir -p "$T/$2"
	(
		PIDS="" PASS=0 FAIL=0
		trap stop_all EXIT
		# faults.py waits on timers most of the time: beside the rest.
		(
			PASS=0 FAIL=0
			pysuite faults "$1" "$2"
			echo "$PASS passed, $FAIL failed"
		) >"$T/$2.faults" 2>&1 &
		faults=$!
		chain "$1" "$2"
		cat_dead "$1" "$2"
		pysuite proto "$1" "$2"
		pysuite tls "$1" "$2"
		pysuite tree "$1" "$2"
		pysuite routing "$1" "$2"
		pysuite deflate "$1" "$2"
		wait "$faults"
		grep -v -E '^[0-9]+ passed, [0-9]+ failed$' "$T/$2.faults"
		add_counts "$T/$2.faults" || nok "$2 faults.py" "no summary line"
		sanitizer_logs "$2"
		echo "$PASS passed, $FAIL failed"
	) >"$T/$2.out" 2>&1 &
	SUITES="$SUITES $!:$2"
}

# gather: wait for the suites, print their lines in order, add their counts.
gather() {
	local s pid tag
	for s in $SUITES; do
		pid=${s%%:*} tag=${s#*:}
		wait "$pid"
		grep -v -E '^[0-9]+ passed, [0-9]+ failed$' "$T/$tag.out"
		add_counts "$T/$tag.out" || nok "$tag suite" "no summary line"
	done
}

if timeout 120 make >"$T/make.log" 2>&1 && [ -x ./wsfwd ]; then
	ok "make"
else
	nok "make" "$(tail -n 3 "$T/make.log" | tr '\n' ' ')"
	echo "$PASS passed, $FAIL failed"
	exit 1
fi

if timeout 120 make unit >"$T/unit.log" 2>&1; then rc=0; else rc=$?; fi
if add_counts "$T/unit.log"; then
	echo "# unit: $(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$T/unit.log" | tail -n 1)"
	grep -iE '^(FAIL|not ok)' "$T/unit.log" | sed 's/^/# unit: /'
	[ "$rc" = 0 ] || [ "$LAST_FAILED" != 0 ] || nok "make unit" "exit status $rc"
else
	nok "make unit" "no 'N passed, M failed' line (status $rc): $(tail -n 2 "$T/unit.log" | tr '\n' ' ')"
fi

# make install / uninstall into a staging DESTDIR, and the example
# systemd unit through systemd-analyze (where it exists).
deploy_checks() {
	local root=$T/root unit=$T/wsfwd.service
	if timeout 60 make install DESTDIR="$root" PREFIX=/usr >"$T/install.log" 2>&1 &&
	    [ -x "$root/usr/bin/wsfwd" ] && [ -f "$root/usr/share/man/man1/wsfwd.1" ] &&
	    "$root/usr/bin/wsfwd" --version | grep -q '^wsfwd '; then
		ok "make install DESTDIR PREFIX: binary and man page"
	else
		nok "make install DESTDIR PREFIX" "$(tail -n 2 "$T/install.log" | tr '\n' ' ')"
	fi
	if timeout 60 make uninstall DESTDIR="$root" PREFIX=/usr >>"$T/install.log" 2>&1 &&
	    [ ! -e "$root/usr/bin/wsfwd" ] && [ ! -e "$root/usr/share/man/man1/wsfwd.1" ]; then
		ok "make uninstall removes both"
	else
		nok "make uninstall" "files left under $root"
	fi
	if command -v systemd-analyze >/dev/null 2>&1; then
		sed "s|/usr/local/bin/wsfwd|$PWD/wsfwd|" contrib/wsfwd.service >"$unit"
		if timeout 60 systemd-analyze verify --man=no "$unit" >"$T/unit.log" 2>&1 &&
		    [ ! -s "$T/unit.log" ]; then
			ok "contrib/wsfwd.service passes systemd-analyze verify"
		else
			nok "contrib/wsfwd.service" "$(head -n 3 "$T/unit.log" | tr '\n' ' ')"
		fi
	else
		echo "skip - contrib/wsfwd.service: no systemd-analyze"
	fi
}

deploy_checks

# --help, wsfwd.1 and README.md agree; the man page lints clean.
if timeout 60 tests/docs.sh ./wsfwd >"$T/docs.out" 2>&1; then :; fi
grep -E '^(ok|FAIL|skip) - ' "$T/docs.out" | sed -E 's/^(ok|FAIL|skip) - /\1 - docs: /'
add_counts "$T/docs.out" || nok "tests/docs.sh" "no summary line"

SUITES=""
suite ./wsfwd plain

if timeout 120 make static >"$T/static.log" 2>&1 && [ -x ./wsfwd-static ]; then
	size=$(wc -c <wsfwd-static)
	if ! command -v musl-gcc >/dev/null 2>&1; then
		ok "make static ($size bytes; glibc: no size budget)"
	elif [ "$size" -le 204800 ]; then
		ok "make static: $size bytes, within the 200 KiB budget"
	else
		nok "make static" "$size bytes, over the 200 KiB budget"
	fi
	suite ./wsfwd-static static
else
	nok "make static" "$(tail -n 3 "$T/static.log" | tr '\n' ' ')"
fi

if timeout 180 make asan >"$T/asan.log" 2>&1 && [ -x ./wsfwd-asan ]; then
	ok "make asan"
	export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
	export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
	suite ./wsfwd-asan asan
else
	nok "make asan" "$(tail -n 3 "$T/asan.log" | tr '\n' ' ')"
fi

# The cross builds under qemu-user-static, where their toolchains are
# installed (tests/cross.sh says skip for the others); then each fuzz
# target for a few seconds, where clang has libFuzzer.
(
	timeout 170 tests/cross.sh
	if printf 'int LLVMFuzzerTestOneInput(const char *d, long n)
	    { return 0; }\n' | clang -fsanitize=fuzzer -x c -o "$T/fz" - \
	    >/dev/null 2>&1; then
		timeout 120 make -s fuzz >"$T/fuzz-build.log" 2>&1 ||
		    echo "FAIL - make fuzz: $(tail -n 2 "$T/fuzz-build.log" | tr '\n' ' ')"
		timeout 120 tests/fuzz/run.sh 3 request response frame-server \
		    frame-client utf8 url pem inflate
	else
		echo "skip - fuzz: no clang with libFuzzer"
	fi
) >"$T/cross.out" 2>&1 &
CROSS=$!

gather
wait "$CROSS"
grep -E '^(ok|FAIL|skip) - ' "$T/cross.out"
# Two summary lines (cross.sh, run.sh): add both.
grep -E '^[0-9]+ passed, [0-9]+ failed$' "$T/cross.out" >"$T/cross.sum"
while read -r line; do
	echo "$line" >"$T/one.sum"
	add_counts "$T/one.sum"
done <"$T/cross.sum"
[ -s "$T/cross.sum" ] || nok "tests/cross.sh" "no summary line (timed out?)"

echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
