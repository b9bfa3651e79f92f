#!/usr/bin/env bash
# Documentation checks: --help, the man page and the README agree with each
# other and with the binary.  Run from the project root:
#
#     tests/docs.sh ./wsfwd
#
# Prints "ok - ..." or "FAIL - ...: reason" per check, then "N passed,
# M failed"; exits non-zero if any check failed.  WSFWD_MAN and
# WSFWD_README name other files to check (by default wsfwd.1 and README.md
# next to tests/), which is how each check is shown to be able to fail.

set -u

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-./wsfwd}
man=${WSFWD_MAN:-$root/wsfwd.1}
readme=${WSFWD_README:-$root/README.md}
npass=0
nfail=0

# Count characters, not bytes, where a UTF-8 locale exists.
if locale -a 2>/dev/null | grep -qixE 'c\.utf-?8'; then
	export LC_ALL=C.UTF-8
fi

ok() { echo "ok - $1"; npass=$((npass + 1)); }
fail() { echo "FAIL - $1: $2"; nfail=$((nfail + 1)); }
check() {	# check NAME REASON: ok if REASON is empty
	if [ -z "$2" ]; then ok "$1"; else fail "$1" "$2"; fi
}

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

# Run the binary with a time limit (it never should need one here).
run() {
	if command -v timeout >/dev/null 2>&1; then
		timeout 10 "$bin" "$@"
	else
		"$bin" "$@"
	fi
}

for f in "$bin" "$man" "$readme"; do
	if [ ! -e "$f" ]; then
		echo "FAIL - setup: $f does not exist"
		echo "0 passed, 1 failed"
		exit 1
	fi
done

# ---- --help exits 0 and fits in 80 columns -----------------------------

run --help >"$tmp/help" 2>"$tmp/help.err" </dev/null
rc=$?
why=
if [ "$rc" -ne 0 ]; then
	why="exit status $rc"
elif [ ! -s "$tmp/help" ]; then
	why="nothing on stdout"
fi
check "--help exits 0 with the usage on stdout" "$why"

why=
n=0
while IFS= read -r line; do
	n=$((n + 1))
	if [ "${#line}" -gt 80 ]; then
		why="${why:+$why; }line $n is ${#line} columns"
	fi
done < <(expand "$tmp/help")
check "every --help line fits in 80 columns" "$why"

# ---- the options --help lists ------------------------------------------

# Long options anywhere in the text; short ones from the option table,
# whose lines begin with blanks and a dash ("  -l, --listen ...").
{
	grep -oE -- '--[A-Za-z0-9][A-Za-z0-9-]*' "$tmp/help"
	grep -E '^[[:space:]]+-[A-Za-z0-9]([,[:space:]]|$)' "$tmp/help" |
	    sed -E 's/^[[:space:]]+(-[A-Za-z0-9]).*/\1/'
} | sort -u >"$tmp/help.opts"
why=
[ -s "$tmp/help.opts" ] || why="no option found in --help"
check "--help lists options ($(tr '\n' ' ' <"$tmp/help.opts" |
    sed 's/ $//'))" "$why"

# ---- the options the man page names (every Fl macro) -------------------

# The words after "Fl" up to the next macro name: "-max-queue" is --max-queue,
# "k" is -k, "kqv" is -k -q -v.  "|" and other delimiters are skipped.
awk '
/^\./ {
	gsub(/\\&/, "")
	for (i = 1; i <= NF; i++) {
		if ($i != "Fl" && $i != ".Fl")
			continue
		for (j = i + 1; j <= NF; j++) {
			w = $j
			if (w ~ /^[A-Z][a-z][a-z]?$/ || w ~ /^%[A-Z]$/)
				break		# the next macro
			if (w ~ /^[|,.;:()\[\]!?]$/)
				continue	# a delimiter
			if (w ~ /^-/)
				print "-" w
			else if (length(w) == 1)
				print "-" w
			else
				for (k = 1; k <= length(w); k++)
					print "-" substr(w, k, 1)
		}
		i = j - 1
	}
}' "$man" | sort -u >"$tmp/man.opts"

# An option is documented when an .It line of the page gives it as Fl.
documented() {	# documented OPT
	local name=${1#-}
	grep -qE "^\\.It( .*)? Fl ${name}( |\$)" "$man"
}

in_readme() {	# in_readme OPT: the literal option, not part of a longer word
	grep -qE -- "(^|[^A-Za-z0-9-])$1([^A-Za-z0-9-]|\$)" "$readme"
}

missing() {	# missing TEST: the --help options for which TEST fails
	local o why=
	while read -r o; do
		"$1" "$o" || why="${why:+$why, }$o"
	done <"$tmp/help.opts"
	echo "${why:+missing: $why}"
}

check "every option in --help has an entry (.It Fl) in $(basename "$man")" \
    "$(missing documented)"
check "every option in --help appears in $(basename "$readme")" \
    "$(missing in_readme)"

# The other way: the page names nothing --help does not list.  (This also
# catches a misspelt long option that getopt_long would take as an
# abbreviation of a real one.)
why=$(comm -23 "$tmp/man.opts" "$tmp/help.opts" | tr '\n' ' ' | sed 's/ $//')
check "every option in $(basename "$man") is listed by --help" \
    "${why:+not in --help: $why}"

# ---- the binary accepts every option the man page names ----------------

# Options are parsed before routes are checked, so "OPT ftp://x" ends in the
# route error if OPT was taken and needs no value; "OPT V ftp://x" does, for
# V one of 1, /1 and on, if OPT needs one (or "--cat takes no routes" for
# --cat).  -h and --version exit 0 before that.  Anything else, "unknown
# option" in particular, fails.
accepted() {	# accepted OPT: sets $reason when not
	local rc
	reason=
	run "$1" ftp://x >"$tmp/out" 2>"$tmp/err" </dev/null
	rc=$?
	if [ "$rc" -eq 0 ] && [ -s "$tmp/out" ]; then
		return 0
	fi
	if grep -q 'unknown option' "$tmp/err"; then
		reason="$1: $(head -n 1 "$tmp/err")"
		return 1
	fi
	if [ "$rc" -eq 2 ] && grep -q '^wsfwd: route ftp://x:' "$tmp/err"; then
		return 0
	fi
	for v in 1 /1 on; do	# a number, a path (--stats), a switch
		run "$1" "$v" ftp://x >"$tmp/out" 2>"$tmp/err" </dev/null
		rc=$?
		if [ "$rc" -eq 2 ] && grep -qE \
		    '^wsfwd: (route ftp://x:|--cat takes no routes)' "$tmp/err"
		then
			return 0
		fi
	done
	reason="$1: exit $rc, $(head -n 1 "$tmp/err")"
	[ -s "$tmp/err" ] || reason="$1: exit $rc, nothing on stderr"
	return 1
}

why=
while read -r o; do
	accepted "$o" || why="${why:+$why; }$reason"
done <"$tmp/man.opts"
[ -s "$tmp/man.opts" ] || why="no Fl macro found in $(basename "$man")"
check "the binary accepts every option in $(basename "$man")" "$why"

# ---- the version the page quotes ---------------------------------------

version=$(run --version 2>/dev/null </dev/null)
why=
if [ -z "$version" ]; then
	why="--version printed nothing"
elif ! grep -qF -- "$version" "$man"; then
	why="'$version' is not in the page"
fi
check "$(basename "$man") quotes the version --version prints" "$why"

# ---- the page is clean under mandoc or groff ---------------------------

if command -v mandoc >/dev/null 2>&1; then
	out=$(mandoc -T lint -W warning "$man" 2>&1)
	rc=$?
	why=
	if [ -n "$out" ] || [ "$rc" -ne 0 ]; then
		why="exit $rc: $(echo "$out" | head -n 5 | tr '\n' '|')"
	fi
	check "mandoc -T lint -W warning $(basename "$man") is clean" "$why"
elif command -v groff >/dev/null 2>&1; then
	out=$(groff -ww -mandoc -Tutf8 -z "$man" 2>&1)
	rc=$?
	why=
	if [ -n "$out" ] || [ "$rc" -ne 0 ]; then
		why="exit $rc: $(echo "$out" | head -n 5 | tr '\n' '|')"
	fi
	check "groff -ww -mandoc $(basename "$man") is clean" "$why"
else
	echo "skip - man page lint: neither mandoc nor groff is installed"
fi

echo "$npass passed, $nfail failed"
[ "$nfail" -eq 0 ]
