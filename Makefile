# wsfwd - WebSocket forwarder.  make; make static; make check
.POSIX:

VERSION  = 0.1.0
PREFIX   = /usr/local
CC       = cc
CFLAGS   = -std=c99 -pedantic -Wall -Wextra -O2
CPPFLAGS = -D_DEFAULT_SOURCE
LDLIBS   = -lpthread
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -g -O1

all: wsfwd

wsfwd: wsfwd.c
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ wsfwd.c $(LDLIBS)

# The same program under AddressSanitizer and UBSan, for test.sh.
wsfwd-asan: wsfwd.c
	$(CC) $(CPPFLAGS) -std=c99 -Wall -Wextra $(SANFLAGS) -o $@ wsfwd.c $(LDLIBS)

# Codec and parser known-answer tests, compiled from the same file.
wsfwd-test: wsfwd.c
	$(CC) $(CPPFLAGS) -DWSFWD_TEST -std=c99 -Wall -Wextra $(SANFLAGS) \
	    -o $@ wsfwd.c $(LDLIBS)

asan: wsfwd-asan
unit: wsfwd-test
	./wsfwd-test

# A static binary: musl where musl-gcc exists, glibc otherwise.
static: wsfwd.c
	if command -v musl-gcc >/dev/null 2>&1; then \
	    musl-gcc $(CPPFLAGS) $(CFLAGS) -static -o wsfwd wsfwd.c; \
	else \
	    $(CC) $(CPPFLAGS) $(CFLAGS) -static -o wsfwd wsfwd.c $(LDLIBS); \
	fi
	strip wsfwd

check: all
	./test.sh

install: wsfwd
	mkdir -p $(DESTDIR)$(PREFIX)/bin
	cp -f wsfwd $(DESTDIR)$(PREFIX)/bin/wsfwd
	chmod 755 $(DESTDIR)$(PREFIX)/bin/wsfwd

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/wsfwd

clean:
	rm -f wsfwd wsfwd-asan wsfwd-test

.PHONY: all asan unit static check install uninstall clean
