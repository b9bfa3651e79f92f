# wsfwd - WebSocket forwarder.    make; make check; make static
# GNU make.  make BEARSSL=DIR builds against a BearSSL source tree (after
# "make" in DIR) instead of the system library.

VERSION  = 0.1.0
PREFIX   = /usr/local
MANPREFIX = $(PREFIX)/share/man
CC       = cc
CFLAGS   = -std=c99 -pedantic -Wall -Wextra -O2
CPPFLAGS = -D_DEFAULT_SOURCE
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -g -O1

ifdef BEARSSL
BR_CPPFLAGS = -I$(BEARSSL)/inc
BR_LIBS     = $(BEARSSL)/build/libbearssl.a
else
BR_CPPFLAGS =
BR_LIBS     = -lbearssl
endif
LDLIBS = $(BR_LIBS) -lpthread

# Said when the BearSSL header cannot be found.
NEED_BEARSSL = printf '\#include <bearssl.h>\n' | \
	$(CC) $(CPPFLAGS) $(BR_CPPFLAGS) -E -x c - >/dev/null 2>&1 || { \
	echo 'wsfwd needs BearSSL. Debian/Ubuntu: apt-get install libbearssl-dev;' \
	     'Alpine: apk add bearssl-dev; or make BEARSSL=/path/to/BearSSL' >&2; \
	exit 1; }

all: wsfwd

wsfwd: wsfwd.c
	@$(NEED_BEARSSL)
	$(CC) $(CPPFLAGS) $(BR_CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ wsfwd.c $(LDLIBS)

# The same program under AddressSanitizer and UBSan, for test.sh.
wsfwd-asan: wsfwd.c
	@$(NEED_BEARSSL)
	$(CC) $(CPPFLAGS) $(BR_CPPFLAGS) -std=c99 -Wall -Wextra $(SANFLAGS) \
	    -o $@ wsfwd.c $(LDLIBS)

# Codec and parser known-answer tests, compiled from the same file.
wsfwd-test: wsfwd.c
	@$(NEED_BEARSSL)
	$(CC) $(CPPFLAGS) $(BR_CPPFLAGS) -DWSFWD_TEST -std=c99 -Wall -Wextra \
	    $(SANFLAGS) -o $@ wsfwd.c $(LDLIBS)

asan: wsfwd-asan

unit: wsfwd-test
	./wsfwd-test

# A static, stripped wsfwd-static: musl where musl-gcc exists, glibc
# otherwise.  musl-gcc does not search /usr/include, so BearSSL's headers
# and archive are named directly, and Debian's archive needs the fortify
# shims in wsfwd.c.  Unwind tables serve no C program: they go (strip
# warns of the emptied segment; that is expected).  -z noseparate-code
# lets the headers and read-only data share the code's pages instead of
# each starting a page of its own: 8 KB less file (the cost: constants
# are mapped executable, which a non-PIE static binary's fixed addresses
# make moot).  -z norelro drops the page alignment of a read-only-after-
# relocation region that only a dynamic loader would protect; musl's
# static start-up never does.  Both keep the x86-64 musl binary under
# 200 KB.
BR_ARCHIVE  = $(if $(BEARSSL),$(BEARSSL)/build/libbearssl.a,$(shell $(CC) -print-file-name=libbearssl.a))
BR_MUSL_INC = $(if $(BEARSSL),-I$(BEARSSL)/inc,-isystem /usr/include/bearssl)
STATIC_CFLAGS = -std=c99 -Wall -Wextra -Os -fno-asynchronous-unwind-tables \
	-ffunction-sections -fdata-sections

static: wsfwd-static

wsfwd-static: wsfwd.c
	@$(NEED_BEARSSL)
	if command -v musl-gcc >/dev/null 2>&1; then \
	    musl-gcc $(CPPFLAGS) $(BR_MUSL_INC) -DWSFWD_FORTIFY_SHIM \
	        $(STATIC_CFLAGS) -static -Wl,--gc-sections \
	        -Wl,-z,noseparate-code -Wl,-z,norelro -o $@ wsfwd.c \
	        $(BR_ARCHIVE); \
	else \
	    $(CC) $(CPPFLAGS) $(BR_CPPFLAGS) $(STATIC_CFLAGS) -static \
	        -Wl,--gc-sections -o $@ wsfwd.c $(LDLIBS); \
	fi
	strip -R .eh_frame -R .comment $@ 2>/dev/null
	@ls -l $@

# Cross builds for router and board CPUs: "make cross ARCH=A" (A one of
# CROSS_ARCHES, or several in quotes) gives wsfwd-A, static (glibc) and
# stripped, from Debian's cross compiler (apt-get install gcc-TRIPLET) and
# that CPU's BearSSL: libbearssl-dev:DEBARCH after dpkg --add-architecture
# DEBARCH (the archive goes to /usr/lib/TRIPLET, the headers to
# /usr/include, which the cross compiler searches).  With BEARSSL=DIR:
# DIR/inc and DIR/build-A/libbearssl.a if there is one, else
# DIR/build/libbearssl.a; "make -C DIR BUILD=build-A CC=TRIPLET-gcc
# AR=TRIPLET-ar lib" builds it beside the native build.  32-bit targets get
# a 64-bit time_t.  The link warns that getaddrinfo wants glibc's NSS
# libraries at run time: expected (lookups in /etc/hosts still work).
# wsfwd-test-A is "make unit" for A (no sanitizers).  tests/cross.sh runs
# both under qemu-user-static.
CROSS_ARCHES  = aarch64 armhf mipsel mips
# A = GNU triplet, Debian architecture
CROSS_aarch64 = aarch64-linux-gnu arm64
CROSS_armhf   = arm-linux-gnueabihf armhf
CROSS_mipsel  = mipsel-linux-gnu mipsel
CROSS_mips    = mips-linux-gnu mips
CROSS_CFLAGS  = $(STATIC_CFLAGS) -pedantic
CROSS_CPPFLAGS = $(CPPFLAGS) -D_FILE_OFFSET_BITS=64 -D_TIME_BITS=64
# In the recipes below, $* is A.
X_TRIPLET = $(word 1,$(CROSS_$*))
X_DEBARCH = $(word 2,$(CROSS_$*))
X_CC      = $(X_TRIPLET)-gcc
X_BR_INC  = $(if $(BEARSSL),-I$(BEARSSL)/inc)
X_BR_LIB  = $(if $(BEARSSL),$(BEARSSL)/$(if $(wildcard \
	$(BEARSSL)/build-$*/libbearssl.a),build-$*,build)/libbearssl.a,-lbearssl)
X_BR_HOW  = make -C $(or $(BEARSSL),DIR) BUILD=build-$* CC=$(X_CC) \
	AR=$(X_TRIPLET)-ar lib
# Said when the cross compiler, its C library or A's BearSSL is missing:
# x SOURCE LIBS links a program for A.
X_NEED = x() { t=$$(mktemp) && printf "$$1" | $(X_CC) $(X_BR_INC) -static \
	    -o "$$t" -x c - -x none $$2 >/dev/null 2>&1; r=$$?; rm -f "$$t"; \
	    return $$r; }; \
	command -v $(X_CC) >/dev/null 2>&1 || { \
	    echo 'make cross ARCH=$*: no $(X_CC); Debian/Ubuntu:' \
	        'apt-get install gcc-$(X_TRIPLET)' >&2; exit 1; }; \
	x '\#include <stdio.h>\nint main(void) { return puts(""); }\n' '' || { \
	    echo 'make cross ARCH=$*: $(X_CC) cannot link a static program;' \
	        'Debian/Ubuntu: apt-get install libc6-dev-$(X_DEBARCH)-cross' >&2; \
	    exit 1; }; \
	x '\#include <bearssl.h>\nint main(void) { br_sha1_context c; br_sha1_init(&c); return 0; }\n' \
	    '$(X_BR_LIB)' || { \
	$(if $(BEARSSL),echo 'make cross ARCH=$*: $(X_BR_LIB) or' \
	    '$(BEARSSL)/inc/bearssl.h is missing or not built for $*;' \
	    'build it with: $(X_BR_HOW)' >&2;, \
	echo 'make cross ARCH=$*: no BearSSL for $*. Debian/Ubuntu:' \
	    'dpkg --add-architecture $(X_DEBARCH) && apt-get update &&' \
	    'apt-get install libbearssl-dev:$(X_DEBARCH); or' \
	    'make cross ARCH=$* BEARSSL=DIR after $(X_BR_HOW)' >&2;) \
	exit 1; }

ifneq ($(filter cross,$(MAKECMDGOALS)),)
ifneq ($(if $(ARCH),$(filter-out $(CROSS_ARCHES),$(ARCH)),none),)
$(error make cross ARCH=A, with A one of: $(CROSS_ARCHES))
endif
endif

cross: $(ARCH:%=wsfwd-%)

$(CROSS_ARCHES:%=wsfwd-%): wsfwd-%: wsfwd.c
	@$(X_NEED)
	$(X_CC) $(CROSS_CPPFLAGS) $(X_BR_INC) $(CROSS_CFLAGS) -static \
	    -Wl,--gc-sections -o $@ wsfwd.c $(X_BR_LIB) -lpthread
	$(X_TRIPLET)-strip -R .eh_frame -R .comment $@ 2>/dev/null
	@ls -l $@

$(CROSS_ARCHES:%=wsfwd-test-%): wsfwd-test-%: wsfwd.c
	@$(X_NEED)
	$(X_CC) $(CROSS_CPPFLAGS) $(X_BR_INC) -DWSFWD_TEST -std=c99 -pedantic \
	    -Wall -Wextra -O1 -static -o $@ wsfwd.c $(X_BR_LIB) -lpthread

cross-clean:
	rm -f $(CROSS_ARCHES:%=wsfwd-%) $(CROSS_ARCHES:%=wsfwd-test-%)

# Build and smoke-test under qemu-user-static every ARCH (default: all)
# whose toolchain is installed.
cross-check:
	./tests/cross.sh $(ARCH)

clean: cross-clean

.PHONY: cross cross-clean cross-check

# libFuzzer targets built from the same file (-DWSFWD_FUZZ=N, clang, with
# AddressSanitizer and UBSan): make fuzz; make fuzz-run [FUZZ_SECONDS=20];
# make fuzz-long [FUZZ_SECONDS=3600].  tests/fuzz/run.sh keeps the corpus
# in fuzz-corpus/.
FUZZ_TARGETS = request response frame-server frame-client utf8 url pem \
	inflate
FUZZ_N_request = 1
FUZZ_N_response = 2
FUZZ_N_frame-server = 3
FUZZ_N_frame-client = 4
FUZZ_N_utf8 = 5
FUZZ_N_url = 6
FUZZ_N_pem = 7
FUZZ_N_inflate = 8
FUZZ_CC = clang
FUZZ_CFLAGS = -std=c99 -Wall -Wextra -Wno-unused-function -g -O1 \
	-fsanitize=fuzzer,address,undefined
FUZZ_SECONDS = 20

fuzz: $(FUZZ_TARGETS:%=fuzz-%)

$(FUZZ_TARGETS:%=fuzz-%): fuzz-%: wsfwd.c
	$(FUZZ_CC) $(CPPFLAGS) $(BR_CPPFLAGS) -DWSFWD_FUZZ=$(FUZZ_N_$*) \
	    $(FUZZ_CFLAGS) -o $@ wsfwd.c $(LDLIBS)

fuzz-run: fuzz
	./tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-long: fuzz
	./tests/fuzz/run.sh $(if $(filter 20,$(FUZZ_SECONDS)),3600,$(FUZZ_SECONDS)) \
	    $(FUZZ_TARGETS)

check: all
	./test.sh

# wsfwd against the Node.js forwarder it replaces: minutes, not part of check.
bench: wsfwd
	./bench/run.sh

# Static analysis, about two minutes: cppcheck and clang-tidy over every
# build variant of wsfwd.c; fails on any finding (tests/lint.sh lists the
# checks, and why the few excluded ones are).
lint:
	./tests/lint.sh

install: wsfwd
	mkdir -p $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(MANPREFIX)/man1
	cp -f wsfwd $(DESTDIR)$(PREFIX)/bin/wsfwd
	chmod 755 $(DESTDIR)$(PREFIX)/bin/wsfwd
	cp -f wsfwd.1 $(DESTDIR)$(MANPREFIX)/man1/wsfwd.1
	chmod 644 $(DESTDIR)$(MANPREFIX)/man1/wsfwd.1

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/wsfwd $(DESTDIR)$(MANPREFIX)/man1/wsfwd.1

clean:
	rm -f wsfwd wsfwd-asan wsfwd-test wsfwd-static $(FUZZ_TARGETS:%=fuzz-%)

.PHONY: all asan unit static check bench lint fuzz fuzz-run fuzz-long install uninstall clean
