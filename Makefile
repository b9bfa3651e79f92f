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
# shims in wsfwd.c.  Unwind tables serve no C program: they go, which
# keeps the x86-64 musl binary under 200 KB (strip warns of the emptied
# segment; that is expected).
BR_ARCHIVE  = $(if $(BEARSSL),$(BEARSSL)/build/libbearssl.a,$(shell $(CC) -print-file-name=libbearssl.a))
BR_MUSL_INC = $(if $(BEARSSL),-I$(BEARSSL)/inc,-isystem /usr/include/bearssl)
STATIC_CFLAGS = -std=c99 -Wall -Wextra -Os -fno-asynchronous-unwind-tables \
	-ffunction-sections -fdata-sections

static: wsfwd-static

wsfwd-static: wsfwd.c
	@$(NEED_BEARSSL)
	if command -v musl-gcc >/dev/null 2>&1; then \
	    musl-gcc $(CPPFLAGS) $(BR_MUSL_INC) -DWSFWD_FORTIFY_SHIM \
	        $(STATIC_CFLAGS) -static -Wl,--gc-sections -o $@ wsfwd.c \
	        $(BR_ARCHIVE); \
	else \
	    $(CC) $(CPPFLAGS) $(BR_CPPFLAGS) $(STATIC_CFLAGS) -static \
	        -Wl,--gc-sections -o $@ wsfwd.c $(LDLIBS); \
	fi
	strip -R .eh_frame -R .comment $@ 2>/dev/null
	@ls -l $@

check: all
	./test.sh

# wsfwd against the Node.js forwarder it replaces: minutes, not part of check.
bench: wsfwd
	./bench/run.sh

install: wsfwd
	mkdir -p $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(MANPREFIX)/man1
	cp -f wsfwd $(DESTDIR)$(PREFIX)/bin/wsfwd
	chmod 755 $(DESTDIR)$(PREFIX)/bin/wsfwd
	cp -f wsfwd.1 $(DESTDIR)$(MANPREFIX)/man1/wsfwd.1
	chmod 644 $(DESTDIR)$(MANPREFIX)/man1/wsfwd.1

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/wsfwd $(DESTDIR)$(MANPREFIX)/man1/wsfwd.1

clean:
	rm -f wsfwd wsfwd-asan wsfwd-test wsfwd-static

.PHONY: all asan unit static check bench install uninstall clean
