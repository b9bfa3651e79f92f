#!/bin/sh
# tests/lint.sh [FILE] - static analysis of wsfwd.c (or FILE), what `make lint`
# runs: cppcheck and clang-tidy over every build variant of the file (the
# plain program, -DWSFWD_TEST, -DWSFWD_FUZZ, -DWSFWD_FORTIFY_SHIM).  One
# "ok - " or "FAIL - " line per tool and variant, the findings under it, then
# "N passed, M failed"; exit status 1 on any finding or missing tool.
#
# cppcheck: --enable=warning,portability,performance.  Not "style": its
# findings here are "the scope of a variable can be reduced" (the style of
# wsfwd.c declares at the top of a function, as style(9) does), precedence
# that is right as written, and a static array it takes for unassigned.
#
# clang-tidy: clang-analyzer-*, bugprone-*, cert-*, except:
#   clang-analyzer-security.insecureAPI.strcpy: flags every strcpy, checked
#     or not; each strcpy in wsfwd.c copies into a buffer that was sized or
#     checked for that string just before.
#   bugprone-easily-swappable-parameters: adjacent parameters of one type,
#     as in (buf, len, cap); a naming hint, not a defect.
#   bugprone-narrowing-conversions: C's integer promotions make every char
#     or short store of an expression an "int narrowing" (a ?: of two chars,
#     poll masks); -Wconversion is the tool for that question.
#   bugprone-implicit-widening-of-multiplication-result: products of small
#     constants (4 * i as an index, 30 * 86400 as a limit); sizes in wsfwd.c
#     are computed in size_t.
#   bugprone-sizeof-expression: in clang-tidy 14 it flags "sizeof *v" for
#     v a pointer to pointers (an array of pointers), the idiom wsfwd.c uses
#     for every such array; clang-tidy 15 can be told not to
#     (WarnOnSizeOfPointerToAggregate: false), 14 cannot.
#   cert-err33-c: unchecked results of snprintf, fprintf, fputs: logging is
#     best effort, and snprintf truncation is checked where it would matter.
# A false positive that remains gets an inline NOLINTNEXTLINE(check) (or
# cppcheck-suppress) comment in wsfwd.c that says why.

cd "$(dirname "$0")/.." || exit 2
SRC=${1:-wsfwd.c}
DEFS="-D_DEFAULT_SOURCE"
VARIANTS="plain:
test:-DWSFWD_TEST
fuzz:-DWSFWD_FUZZ=1
shim:-DWSFWD_FORTIFY_SHIM"
TIDY_CHECKS='-*,clang-analyzer-*,-clang-analyzer-security.insecureAPI.strcpy,bugprone-*,-bugprone-easily-swappable-parameters,-bugprone-narrowing-conversions,-bugprone-implicit-widening-of-multiplication-result,-bugprone-sizeof-expression,cert-*,-cert-err33-c'
TIDY_CONFIG="{Checks: '$TIDY_CHECKS', WarningsAsErrors: '*'}"
PASS=0
FAIL=0
T=$(mktemp -d "${TMPDIR:-/tmp}/wsfwd-lint.XXXXXX") || exit 2
trap 'rm -rf "$T"' EXIT

report() {	# NAME FILE STATUS: an ok/FAIL line, then the findings
	if [ "$3" = 0 ] && ! grep -qE '(warning|error|style|portability|performance):' "$2"; then
		echo "ok - $1"
		PASS=$((PASS + 1))
	else
		echo "FAIL - $1: $(grep -cE '(warning|error|style|portability|performance):' "$2") findings (status $3)"
		FAIL=$((FAIL + 1))
		sed 's/^/# /' "$2"
	fi
}

need() {
	command -v "$1" >/dev/null 2>&1 && return 0
	echo "FAIL - $1: not installed (Debian/Ubuntu: apt-get install $2)"
	FAIL=$((FAIL + 1))
	return 1
}

if need cppcheck cppcheck; then
	echo "$VARIANTS" | while IFS=: read -r name def; do
		cppcheck --enable=warning,portability,performance --std=c99 \
		    --inline-suppr --error-exitcode=1 --quiet \
		    --suppress=missingIncludeSystem $DEFS $def "$SRC" \
		    >"$T/cppcheck.$name" 2>&1
		echo $? >"$T/cppcheck.$name.rc"
	done
	for name in $(echo "$VARIANTS" | cut -d: -f1); do
		report "cppcheck $name" "$T/cppcheck.$name" "$(cat "$T/cppcheck.$name.rc")"
	done
fi

tidy() {	# NAME DEFINES...: one clang-tidy run, into $T/tidy.NAME
	name=$1
	shift
	clang-tidy --quiet --config="$TIDY_CONFIG" "$SRC" -- -std=c99 $DEFS "$@" \
	    >"$T/tidy.$name" 2>&1
	echo $? >"$T/tidy.$name.rc"
}

if need clang-tidy clang-tidy; then
	# The analyzer takes ~30 s a run: the test build (with the fortify
	# shim, which it does not exclude) beside the plain one, then the fuzz
	# harness (its targets differ only in a runtime switch on WSFWD_FUZZ).
	tidy plain &
	tidy test+shim -DWSFWD_TEST -DWSFWD_FORTIFY_SHIM &
	wait
	tidy fuzz -DWSFWD_FUZZ=1
	for name in plain test+shim fuzz; do
		# Counts of suppressed warnings (system headers, NOLINT) go.
		grep -vE '^[0-9]+ warnings? (and [0-9]+ errors? )?generated\.$|^Suppressed [0-9]+ warnings|^Use -header-filter' \
		    "$T/tidy.$name" >"$T/tidy.$name.out"
		report "clang-tidy $name" "$T/tidy.$name.out" "$(cat "$T/tidy.$name.rc")"
	done
fi

echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
