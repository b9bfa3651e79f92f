# tests/lib.sh - the shell helpers of test.sh and tests/cross.sh.  The
# caller keeps PASS and FAIL; WAIT_TENTHS is wait_log's default bound.

ok()   { echo "ok - $1"; PASS=$((PASS + 1)); }
nok()  { echo "FAIL - $1: $2"; FAIL=$((FAIL + 1)); }

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# waitpid_bounded PID TENTHS: true once PID has exited (polling kill -0).
waitpid_bounded() {
	local i=0
	while kill -0 "$1" 2>/dev/null; do
		[ "$i" -ge "$2" ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
	return 0
}

# exit_status PID TENTHS: set RC to the exit status of a background child of
# this shell, or to "timeout".  (Not in $(...): wait needs the parent shell.)
exit_status() {
	RC=timeout
	waitpid_bounded "$1" "$2" || return 0
	wait "$1"
	RC=$?
}

# wait_log FILE STRING [COUNT] [TENTHS]: until FILE has COUNT lines with STRING.
wait_log() {
	local i=0 n
	while :; do
		n=$(grep -cF -- "$2" "$1" 2>/dev/null)
		[ "${n:-0}" -ge "${3:-1}" ] && return 0
		[ "$i" -ge "${4:-${WAIT_TENTHS:-50}}" ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
}

# wait_size FILE BYTES TENTHS: until FILE holds BYTES bytes.
wait_size() {
	local i=0
	while [ "$({ wc -c <"$1"; } 2>/dev/null || echo 0)" -lt "$2" ]; do
		[ "$i" -ge "$3" ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
	return 0
}

# stop_pid PID: SIGTERM, then SIGKILL after 3 s.
stop_pid() {
	kill -0 "$1" 2>/dev/null || return 0
	kill -TERM "$1" 2>/dev/null
	waitpid_bounded "$1" 30 || kill -KILL "$1" 2>/dev/null
}
