#!/usr/bin/env bash
# usage: tests/cross.sh [ARCH...]     ARCH: aarch64 armhf mipsel mips (default: all)
#
# For each ARCH whose toolchain is here (Debian's gcc-TRIPLET, its libc, that
# CPU's BearSSL, qemu-ARCH-static), else "skip - ARCH: reason", counting
# nothing: build wsfwd-ARCH with "make cross" (static, stripped, no compiler
# warning allowed) and wsfwd-test-ARCH, then run under qemu-user-static, as
# ordinary processes on this machine:
#   - the known-answer tests (wsfwd-test-ARCH: codecs, frame decoder);
#   - a chain: "wsfwd-ARCH -l 127.0.0.1:P1 /a=- <fifo", a second wsfwd-ARCH
#     forwarding it as /b, one --cat on each: lines byte-exact and in order,
#     a 100 KiB line included; at EOF A closes with 1000, its cat and A exit
#     0; B exits 0 on SIGTERM;
#   - "wsfwd-ARCH --cat wss://localhost:PORT/feed --ca ca.pem" against a TLS
#     WebSocket origin in Python's ssl (a throwaway CA and a localhost leaf
#     made here by openssl): every message byte-exact, a 70,000-byte binary
#     one included (the 64-bit length form on 32-bit CPUs), exit 0 on close
#     1000.
# BearSSL: Debian's libbearssl-dev:DEBARCH; or, for an ARCH where
# $BEARSSL/build-ARCH/libbearssl.a exists, that tree (see the Makefile).
#
# Output: "ok - ARCH ..." or "FAIL - ARCH ...: reason" per check, then
# "N passed, M failed"; exit 1 on any failure, 2 on bad usage.  127.0.0.1
# only; every wait has a deadline (about 10 s: qemu is slower); processes
# are stopped by PID; the temporary directory goes in a trap.

set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

ALL="aarch64 armhf mipsel mips"
for a in "$@"; do
	case " $ALL " in
	*" $a "*) ;;
	*) echo "usage: tests/cross.sh [ARCH...], ARCH one of: $ALL" >&2; exit 2 ;;
	esac
done
for c in python3 openssl make; do
	command -v "$c" >/dev/null 2>&1 || { echo "tests/cross.sh needs $c" >&2; exit 2; }
done

T=$(mktemp -d "${TMPDIR:-/tmp}/wsfwd-cross.XXXXXX") || exit 2
PIDS=""
PASS=0
FAIL=0

. tests/lib.sh
WAIT_TENTHS=100		# qemu is slower

cleanup() {
	local p
	exec 3>&-
	for p in $PIDS; do stop_pid "$p"; done
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

oneline() { head -n 3 | tr '\n' ' ' | cut -c1-300; }

# ------------------------------------------------------------ TLS material

# A throwaway CA and a leaf for localhost, as tests/tls.py makes them.
certs() {
	local c=$T/certs
	mkdir -p "$c" && (
		cd "$c" &&
		openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem \
		    -days 7 -subj /CN=wsfwd-cross-ca &&
		openssl req -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr \
		    -subj /CN=localhost &&
		printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' >ext.cnf &&
		openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
		    -days 7 -sha256 -extfile ext.cnf -out leaf.pem &&
		openssl verify -CAfile ca.pem leaf.pem
	) >"$T/certs.log" 2>&1
}

# origin.py CERT KEY PORTFILE WANTFILE: one TLS WebSocket connection on
# 127.0.0.1: checks the upgrade, sends the messages, then close 1000; writes
# what --cat must print (each payload and a newline) to WANTFILE first.
cat >"$T/origin.py" <<'EOF'
import base64, hashlib, os, socket, ssl, struct, sys, time

cert, key, portfile, wantfile = sys.argv[1:5]
MSGS = [(1, b"hello"),
        (1, "caf\u00e9 \u2713 second".encode()),
        (2, bytes((i * 7 + 3) & 0xFF for i in range(70000))),  # 64-bit length
        (2, bytes(range(256)) * 4),                             # 16-bit length
        (1, b"after the big ones")]


def die(msg):
    sys.stderr.write("origin: %s\n" % msg)
    sys.exit(1)


def frame(op, p):
    n = len(p)
    if n < 126:
        h = struct.pack("!BB", 0x80 | op, n)
    elif n < 65536:
        h = struct.pack("!BBH", 0x80 | op, 126, n)
    else:
        h = struct.pack("!BBQ", 0x80 | op, 127, n)
    return h + p


with open(wantfile, "wb") as f:
    f.write(b"".join(p + b"\n" for _, p in MSGS))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.bind(("127.0.0.1", 0))
ls.listen(4)
ls.settimeout(30)
with open(portfile + ".tmp", "w") as f:
    f.write("%d\n" % ls.getsockname()[1])
os.rename(portfile + ".tmp", portfile)
try:
    raw, _ = ls.accept()
except socket.timeout:
    die("no connection within 30 s")
raw.settimeout(15)
try:
    s = ctx.wrap_socket(raw, server_side=True)
except (OSError, ValueError) as e:
    die("TLS handshake: %s" % e)
buf = b""
deadline = time.monotonic() + 15
while b"\r\n\r\n" not in buf:
    if time.monotonic() > deadline or len(buf) > 16384:
        die("no upgrade request: %r" % buf[:200])
    d = s.recv(16384)
    if not d:
        die("EOF before the upgrade request: %r" % buf[:200])
    buf += d
lines = buf.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
hdr = {}
for line in lines[1:]:
    k, _, v = line.partition(":")
    hdr[k.strip().lower()] = v.strip()
port = ls.getsockname()[1]
if lines[0] != "GET /feed HTTP/1.1" or hdr.get("host") != "localhost:%d" % port \
        or hdr.get("upgrade", "").lower() != "websocket" \
        or hdr.get("sec-websocket-version") != "13" or "sec-websocket-key" not in hdr:
    die("bad upgrade request: %r" % lines)
acc = base64.b64encode(hashlib.sha1(hdr["sec-websocket-key"].encode() +
                                    b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
          b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
for op, p in MSGS:
    s.sendall(frame(op, p))
s.sendall(frame(8, struct.pack("!H", 1000)))
# Until wsfwd answers the close and hangs up (bounded).
deadline = time.monotonic() + 10
try:
    while time.monotonic() < deadline and s.recv(4096):
        pass
except OSError:
    pass
s.close()
EOF

# ------------------------------------------------------------ the checks

# chain ARCH QEMU BIN: fifo -> A (/a=-) -> B (/b=ws://A/a); a --cat on each.
chain() {
	local arch=$1 q=$2 bin=$3 d=$T/$1/chain p1 p2 pa pb ca cb size
	mkdir -p "$d"
	p1=$(free_port)
	p2=$(free_port)
	mkfifo "$d/fifo"
	timeout 120 "$q" "$bin" -l "127.0.0.1:$p1" /a=- <"$d/fifo" 2>"$d/a.log" &
	pa=$!
	PIDS="$PIDS $pa"
	exec 3>"$d/fifo"	# held open so A sees no EOF while the chain connects
	if ! wait_log "$d/a.log" "listening on 127.0.0.1:$p1"; then
		nok "$arch chain: A, B and two cats connect" "no 'listening on' in A's log: $(tail1 "$d/a.log")"
		exec 3>&-
		stop_pid "$pa"
		return
	fi
	# Children get 3>&-: a stray copy of the fifo's write end would hide EOF.
	timeout 120 "$q" "$bin" -l "127.0.0.1:$p2" "/b=ws://127.0.0.1:$p1/a" \
	    2>"$d/b.log" 3>&- &
	pb=$!
	PIDS="$PIDS $pb"
	timeout 120 "$q" "$bin" --cat "ws://127.0.0.1:$p1/a" \
	    >"$d/cat-a.out" 2>"$d/cat-a.log" 3>&- &
	ca=$!
	PIDS="$PIDS $ca"
	if wait_log "$d/b.log" "upstream /b: connected to ws://127.0.0.1:$p1/a" &&
	    wait_log "$d/b.log" "listening on 127.0.0.1:$p2"; then
		timeout 120 "$q" "$bin" --cat "ws://127.0.0.1:$p2/b" \
		    >"$d/cat-b.out" 2>"$d/cat-b.log" 3>&- &
		cb=$!
		PIDS="$PIDS $cb"
	fi
	if [ -n "${cb:-}" ] && wait_log "$d/a.log" "connected to /a" 2 &&
	    wait_log "$d/b.log" "connected to /b"; then
		ok "$arch chain: A listens, B forwards A, a cat on each connects"
	else
		nok "$arch chain: A listens, B forwards A, a cat on each connects" \
		    "A: $(tail1 "$d/a.log") / B: $(tail1 "$d/b.log")"
	fi

	# 300 numbered lines, UTF-8, a 100 KiB line, and lines after it.
	{
		seq 1 300 | sed 's/^/line /'
		printf 'caf\303\251 \342\234\223 utf-8\n'
		head -c 76800 /dev/urandom | base64 -w 0	# 102,400 bytes
		echo
		seq 301 310 | sed 's/^/line /'
	} >"$d/want"
	size=$(wc -c <"$d/want")
	cat "$d/want" >&3
	for c in a b; do
		wait_size "$d/cat-$c.out" "$size" 150
		if cmp -s "$d/want" "$d/cat-$c.out"; then
			ok "$arch chain: the cat on $(echo $c | tr ab AB) got 312 lines in order, byte-exact, a 100 KiB one included"
		else
			nok "$arch chain: the cat on $(echo $c | tr ab AB) got 312 lines in order, byte-exact, a 100 KiB one included" \
			    "$(wc -c <"$d/cat-$c.out") of $size bytes; $(cmp "$d/want" "$d/cat-$c.out" 2>&1 | head -n 1)"
		fi
	done

	# EOF on the fifo: A closes its clients with 1000 and exits 0, and so
	# does the cat on A.
	exec 3>&-
	exit_status "$ca" 100
	local rca=$RC
	exit_status "$pa" 100
	if [ "$rca" = 0 ] && [ "$RC" = 0 ] && grep -qF "route /a: end of input" "$d/a.log"; then
		ok "$arch chain: at EOF A closes with 1000: its cat exits 0, A exits 0"
	else
		nok "$arch chain: at EOF A closes with 1000: its cat exits 0, A exits 0" \
		    "cat status $rca ($(tail1 "$d/cat-a.log")), A status $RC ($(tail1 "$d/a.log"))"
	fi

	# SIGTERM to B: it exits 0; its cat gets 1001 and exits 1.
	kill -TERM "$pb" 2>/dev/null
	exit_status "$pb" 100
	local rb=$RC
	RC=none
	[ -n "${cb:-}" ] && exit_status "$cb" 100
	if [ "$rb" = 0 ] && [ "$RC" = 1 ]; then
		ok "$arch chain: B exits 0 on SIGTERM, its cat 1 (close 1001)"
	else
		nok "$arch chain: B exits 0 on SIGTERM, its cat 1 (close 1001)" \
		    "B status $rb, cat status $RC ($(tail1 "$d/cat-b.log"))"
	fi
	stop_pid "$pa"
	stop_pid "$pb"
	stop_pid "$ca"
	[ -n "${cb:-}" ] && stop_pid "$cb"
}

# wss ARCH QEMU BIN: --cat of a TLS origin with --ca.
wss() {
	local arch=$1 q=$2 bin=$3 d=$T/$1/wss po pc port name
	name="$arch wss: --cat wss://localhost/feed --ca: 5 messages byte-exact, a 70,000-byte binary one included, exit 0"
	mkdir -p "$d"
	if [ ! -s "$T/certs/leaf.pem" ]; then
		nok "$name" "no certificates: $(tail1 "$T/certs.log")"
		return
	fi
	timeout 60 python3 "$T/origin.py" "$T/certs/leaf.pem" "$T/certs/leaf.key" \
	    "$d/port" "$d/want" 2>"$d/origin.log" &
	po=$!
	PIDS="$PIDS $po"
	if ! wait_size "$d/port" 2 100; then
		nok "$name" "the origin did not start: $(tail1 "$d/origin.log")"
		stop_pid "$po"
		return
	fi
	port=$(cat "$d/port")
	timeout 60 "$q" "$bin" --cat "wss://localhost:$port/feed" --ca "$T/certs/ca.pem" \
	    >"$d/cat.out" 2>"$d/cat.log" &
	pc=$!
	PIDS="$PIDS $pc"
	exit_status "$pc" 150
	if [ "$RC" = 0 ] && cmp -s "$d/want" "$d/cat.out"; then
		ok "$name"
	else
		nok "$name" "status $RC, $(wc -c <"$d/cat.out") of $(wc -c <"$d/want") bytes$(
		    cmp "$d/want" "$d/cat.out" >/dev/null 2>&1 || echo ' (differ)'); cat: $(
		    tail1 "$d/cat.log"); origin: $(tail1 "$d/origin.log")"
	fi
	exit_status "$po" 100
	[ "$RC" = 0 ] || nok "$arch wss: the origin saw a well-formed upgrade" \
	    "status $RC: $(tail1 "$d/origin.log")"
	stop_pid "$pc"
	stop_pid "$po"
}

# ------------------------------------------------------------ per ARCH

certs

for arch in ${*:-$ALL}; do
	case $arch in
	aarch64) triplet=aarch64-linux-gnu   deb=arm64  qa=aarch64 ;;
	armhf)   triplet=arm-linux-gnueabihf deb=armhf  qa=arm ;;
	mipsel)  triplet=mipsel-linux-gnu    deb=mipsel qa=mipsel ;;
	mips)    triplet=mips-linux-gnu      deb=mips   qa=mips ;;
	esac
	q=qemu-$qa-static
	if ! command -v "$triplet-gcc" >/dev/null 2>&1; then
		echo "skip - $arch: no $triplet-gcc (apt-get install gcc-$triplet)"
		continue
	fi
	if ! command -v "$q" >/dev/null 2>&1; then
		echo "skip - $arch: no $q (apt-get install qemu-user-static)"
		continue
	fi
	br="BEARSSL=" brname="libbearssl-dev:$deb"
	if [ -n "${BEARSSL:-}" ] && [ -f "$BEARSSL/build-$arch/libbearssl.a" ]; then
		br="BEARSSL=$BEARSSL" brname="BearSSL in $BEARSSL/build-$arch"
	elif ! case $("$triplet-gcc" -print-file-name=libbearssl.a) in /*) true ;; *) false ;; esac ||
	    ! printf '#include <bearssl.h>\n' | "$triplet-gcc" -E -x c - >/dev/null 2>&1; then
		echo "skip - $arch: no BearSSL for $arch (apt-get install libbearssl-dev:$deb after dpkg --add-architecture $deb; or BEARSSL=DIR with DIR/build-$arch/libbearssl.a)"
		continue
	fi
	mkdir -p "$T/$arch"
	bin=$ROOT/wsfwd-$arch

	# Build: -B, so that the compiler runs and its warnings are seen.  The
	# only warning allowed is glibc's about getaddrinfo in a static binary.
	if make -B -C "$ROOT" --no-print-directory cross ARCH="$arch" "$br" \
	    >"$T/$arch/build.log" 2>&1; then
		warn=$(grep -F 'warning:' "$T/$arch/build.log" |
		    grep -vF 'in statically linked applications requires at runtime')
		if [ -n "$warn" ]; then
			nok "$arch build: make cross ARCH=$arch, no warning" "$(echo "$warn" | oneline)"
		else
			ok "$arch build: make cross ARCH=$arch with $brname: wsfwd-$arch, $(wc -c <"$bin") bytes stripped, no warning"
		fi
	else
		nok "$arch build: make cross ARCH=$arch, no warning" "$(grep -E 'error|make cross' "$T/$arch/build.log" | oneline)"
		continue
	fi

	# The known-answer tests, compiled for ARCH.
	if make -B -C "$ROOT" --no-print-directory "wsfwd-test-$arch" "$br" \
	    >"$T/$arch/unit-build.log" 2>&1; then
		timeout 300 "$q" "$ROOT/wsfwd-test-$arch" >"$T/$arch/unit.log" 2>&1
		rc=$?
		line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$T/$arch/unit.log" | tail -n 1)
		if [ "$rc" = 0 ] && [ -n "$line" ] && [ "${line#* passed, }" = "0 failed" ]; then
			ok "$arch unit: wsfwd-test-$arch under $q: $line"
		else
			nok "$arch unit: wsfwd-test-$arch under $q" "status $rc, ${line:-no summary}; $(grep '^FAIL' "$T/$arch/unit.log" | oneline)"
		fi
	else
		nok "$arch unit: wsfwd-test-$arch builds" "$(grep -E 'error' "$T/$arch/unit-build.log" | oneline)"
	fi

	chain "$arch" "$q" "$bin"
	wss "$arch" "$q" "$bin"
done

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
