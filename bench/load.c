/*
 * load.c - the load tool of wsfwd's benchmark (bench/run.sh).
 *
 * It plays both ends of a WebSocket relay, in one single-threaded epoll loop:
 *
 *   source  a WebSocket server on 127.0.0.1:PORT.  Every client that completes
 *           the handshake (normally the relay's upstream connection) gets the
 *           same stream of unmasked binary messages of SIZE bytes at RATE
 *           messages/s (0: as fast as the socket takes them).  Each payload
 *           starts with a u64 sequence number and a u64 CLOCK_MONOTONIC
 *           timestamp in ns (little-endian), then filler.  With --json the
 *           messages are text instead: a Binance !miniTicker@arr-style JSON
 *           array of random tickers (16 variants, each padded to SIZE),
 *           wrapped as {"seq":"<20 digits>","ts":"<20 digits>",...,"data":
 *           [...]}, which compresses like a real market-data feed.  Pings
 *           get pongs, other client frames are ignored.
 *   sink    N clients of ws://IP:PORT/PATH (the relay) that check sequence
 *           continuity per connection, histogram the latency (now - stamp),
 *           count messages and bytes; optionally K "stalled" clients that
 *           never read (drained at the end to see whether the relay dropped
 *           them).  With --deflate they offer permessage-deflate (RFC 7692)
 *           and accept compressed (RSV1) frames: each inflates only the
 *           first 64 bytes of a compressed message (for the sequence number
 *           and timestamp), except client 0, which inflates every message
 *           whole and checks its length (needs zlib: -DWITH_ZLIB -lz).
 *           Every message is counted, its sequence number checked and its
 *           latency histogrammed; the source's own frames go through a
 *           header walk (sink_scan()) that does this for a few ns each.
 *   both    the two in one process; without -u the sink connects straight to
 *           the source (the self-ceiling test).
 *
 * Progress goes to stderr as "load: phase=..." lines, the result to stdout as
 * one line of key=value pairs.  C99 plus Linux (epoll, getrandom).
 *
 *   cc -O2 -o bench/load bench/load.c                        (no --deflate)
 *   cc -O2 -DWITH_ZLIB -o bench/load bench/load.c -lz         (with it)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef WITH_ZLIB
#include <zlib.h>
#endif

#define RBUF_SIZE	(256 * 1024)	/* one shared read buffer */
#define BATCH_BYTES	(64 * 1024)	/* source: frames built per batch */
#define SRC_LOW		(256 * 1024)	/* source: generate while every client's
					   backlog is below this */
#define HS_MAX		8192		/* largest handshake head */
#define MAX_EVENTS	4096
#define DATA_SLICE	64		/* open sinks read per round while
					   connects/handshakes are in flight */
#define PFX		64		/* message bytes kept for seq/stamp */
#define JSON_VARIANTS	16		/* --json: distinct payloads */

/* ------------------------------------------------------------ utilities */

static void
die(const char *fmt, ...)
{
	va_list ap;

	fputs("load: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static uint64_t
mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double
cpu_s(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
	    (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void
put64le(unsigned char *p, uint64_t v)
{
	int i;

	for (i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t
get64le(const unsigned char *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	uint64_t v;

	memcpy(&v, p, 8);
	return v;
#else
	uint64_t v = 0;
	int i;

	for (i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
#endif
}

static uint64_t rng_s;

static uint32_t
rng32(void)
{
	/* xorshift64*, seeded from getrandom(): masks only need to vary */
	rng_s ^= rng_s >> 12;
	rng_s ^= rng_s << 25;
	rng_s ^= rng_s >> 27;
	return (uint32_t)((rng_s * 2685821657736338717ull) >> 32);
}

/* ------------------------------------------------------ SHA-1, base64 */

static uint32_t
rol(uint32_t x, int n)
{
	return x << n | x >> (32 - n);
}

static void
sha1_block(uint32_t h[5], const unsigned char *p)
{
	uint32_t w[80], a, b, c, d, e, f, k, t;
	int i;

	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		    (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (; i < 80; i++)
		w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
	a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
	for (i = 0; i < 80; i++) {
		if (i < 20)
			f = (b & c) | (~b & d), k = 0x5a827999;
		else if (i < 40)
			f = b ^ c ^ d, k = 0x6ed9eba1;
		else if (i < 60)
			f = (b & c) | (b & d) | (c & d), k = 0x8f1bbcdc;
		else
			f = b ^ c ^ d, k = 0xca62c1d6;
		t = rol(a, 5) + f + e + k + w[i];
		e = d, d = c, c = rol(b, 30), b = a, a = t;
	}
	h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
}

static void
sha1(const void *data, size_t len, unsigned char out[20])
{
	uint32_t h[5] = { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476,
	    0xc3d2e1f0 };
	const unsigned char *p = data;
	unsigned char blk[64];
	size_t i, r;
	uint64_t bits = (uint64_t)len * 8;

	for (i = 0; i + 64 <= len; i += 64)
		sha1_block(h, p + i);
	r = len - i;
	memset(blk, 0, sizeof blk);
	memcpy(blk, p + i, r);
	blk[r] = 0x80;
	if (r >= 56) {
		sha1_block(h, blk);
		memset(blk, 0, sizeof blk);
	}
	for (i = 0; i < 8; i++)
		blk[63 - i] = (unsigned char)(bits >> (8 * i));
	sha1_block(h, blk);
	for (i = 0; i < 20; i++)
		out[i] = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void
base64(const unsigned char *in, size_t len, char *out)
{
	static const char t[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i;
	uint32_t v;

	for (i = 0; i + 2 < len; i += 3) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		*out++ = t[v >> 18], *out++ = t[v >> 12 & 63];
		*out++ = t[v >> 6 & 63], *out++ = t[v & 63];
	}
	if (len - i == 1) {
		v = (uint32_t)in[i] << 16;
		*out++ = t[v >> 18], *out++ = t[v >> 12 & 63];
		*out++ = '=', *out++ = '=';
	} else if (len - i == 2) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		*out++ = t[v >> 18], *out++ = t[v >> 12 & 63];
		*out++ = t[v >> 6 & 63], *out++ = '=';
	}
	*out = '\0';
}

/* Sec-WebSocket-Accept for a key (out: 29 bytes). */
static void
ws_accept(const char *key, size_t klen, char *out)
{
	static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
	char buf[128];
	unsigned char d[20];

	if (klen > sizeof buf - sizeof guid)
		klen = sizeof buf - sizeof guid;
	memcpy(buf, key, klen);
	memcpy(buf + klen, guid, sizeof guid - 1);
	sha1(buf, klen + sizeof guid - 1, d);
	base64(d, 20, out);
}

/* --------------------------------------------------- latency histogram */

/*
 * Log-linear, in microseconds: 1 us buckets below 1024 us, then 512
 * sub-buckets per power of two (0.2 %) up to 2^34 us (4.7 hours).
 */
#define H_SUB_BITS	9
#define H_SUB		(1 << H_SUB_BITS)
#define H_LIN		1024
#define H_MAXEXP	34
#define H_N		(H_LIN + (H_MAXEXP - 10) * H_SUB)

static uint64_t hist[H_N];
static uint64_t hist_n, hist_max_ns;

/* Middle of bucket i, in microseconds. */
static double
hist_val(int i)
{
	int k, sub;

	if (i < H_LIN)
		return i + 0.5;
	i -= H_LIN;
	k = 10 + i / H_SUB;
	sub = i % H_SUB;
	return (double)((uint64_t)(H_SUB + sub) << (k - H_SUB_BITS)) +
	    (double)((uint64_t)1 << (k - H_SUB_BITS)) / 2;
}

/* Percentile q (0..1) in ms; -1 without samples. */
static double
hist_pct(double q)
{
	uint64_t want, acc = 0;
	int i;

	if (hist_n == 0)
		return -1;
	want = (uint64_t)(q * (double)hist_n);
	if (want >= hist_n)
		want = hist_n - 1;
	for (i = 0; i < H_N; i++) {
		acc += hist[i];
		if (acc > want)
			return hist_val(i) / 1000;
	}
	return hist_max_ns / 1e6;
}

/* ------------------------------------------------------------- options */

static int	 mode;		/* 1 source, 2 sink, 3 both */
static int	 src_port;
static char	*url;
static long	 n_clients = 1, n_stalled;
static long	 msg_size = 100;
static double	 rate;
static int	 silent;
static double	 duration = 10, warmup = 2;
static double	 connect_rate, connect_timeout = 10, start_delay, drain_s = 2;
static long	 inflight_max;
static int	 after_upstream;
static int	 src_hold = -1;	/* both: no data until the sink is in */
static double	 src_time;
static int	 rcvbuf;		/* sink: SO_RCVBUF, 0: kernel autotuning */
static int	 json;		/* source: ticker-JSON text messages */
static int	 deflate_offer;	/* sink: offer permessage-deflate */

/* ---------------------------------------------------------- connections */

enum { R_LISTEN, R_SRC, R_SINK, R_DATA };
enum { S_CONNECTING, S_HANDSHAKE, S_OPEN, S_DEAD };

struct fparse {
	unsigned char	 hdr[14];
	unsigned char	 hlen;
	unsigned char	 inpay;		/* in a frame's payload */
	unsigned char	 op, fin, masked;
	unsigned char	 mask[4];
	uint64_t	 left, pos;	/* payload bytes left, offset in frame */
	unsigned char	 msgop;		/* data message in progress (opcode) */
	unsigned char	 pfxlen;
	unsigned char	 pfx[PFX];	/* first PFX bytes of the message */
	unsigned char	 comp;		/* message compressed (RSV1) */
	unsigned char	 zstop;		/* inflated as much as it needs */
	unsigned char	 zbad;		/* inflate failed */
	uint64_t	 zout;		/* bytes inflated */
	uint64_t	 msglen;
	unsigned char	 ctllen;
	unsigned char	 ctl[125];
};

struct conn {
	int		 fd;
	unsigned char	 role, state, stalled, closing;
	unsigned char	 epout;		/* EPOLLOUT armed */
	unsigned char	 indata;	/* in ep_data (an open sink), not ep */
	unsigned char	 seen;		/* sink: a sequence number seen */
	uint32_t	 events;	/* current epoll mask */
	long		 idx;		/* in src_clients[] */
	char		*hs;		/* handshake head, while handshaking */
	size_t		 hslen;
	unsigned char	*out;		/* bytes not yet taken by the kernel */
	size_t		 ooff, olen, ocap;
	uint64_t	 expect;	/* sink: next sequence number */
	char		 accept[29];	/* sink: expected Sec-WebSocket-Accept */
	unsigned char	 deflate;	/* sink: permessage-deflate agreed */
	unsigned char	 full;		/* sink: inflate whole messages */
	void		*z;		/* sink: z_stream, made when needed */
	struct fparse	 fp;
};

/*
 * Two epoll sets.  ep holds the listener, the source's clients and the
 * sink's connects and handshakes, and ep_data; ep_data holds the sink's open
 * connections (the data).  Each round takes all of ep's events, then at most
 * DATA_SLICE of ep_data's while connects or handshakes are in flight, so that
 * a flood read by thousands of open clients cannot bury them (one epoll set
 * returns its ready list in order: a handshake's reply would wait behind
 * every flooded client, a 256 KiB read each).
 */
static int		 ep, ep_data;
static unsigned char	 rbuf[RBUF_SIZE];
static volatile sig_atomic_t stop;
static uint64_t		 now;

/* source */
static struct conn	**src_clients;
static long		 n_src, src_cap;
static uint64_t		 src_seq, src_t0, src_msgs, src_bytes;
static uint64_t		 src_lag_max;
static unsigned char	*batch, *frame_tpl;
static unsigned char	*json_var[JSON_VARIANTS];	/* --json payloads */
static size_t		 frame_len, frame_hl, batch_msgs;
static long		 src_accepted, src_bad;

/* sink */
static struct sockaddr_in dst;
static char		*dst_host, *dst_path;
static long		 opened, inflight, connected, failed, closed_normal;
static long		 stalled_open, stalled_dropped;
static int		 first_err;
static long		 hs_eof, hs_reset, hs_bad;	/* handshake failures */
static uint64_t		 msgs, bytes, gaps, gaps_win, dups, nostamp;
static uint64_t		 reads;		/* sink reads with data (window) */
static uint64_t		 ctl_pings;
static long		 deflate_clients;	/* sink: agreed */
static uint64_t		 zmsgs, zerr, rsv_bad;	/* compressed msgs (window) */
static uint64_t		 zfull_msgs, zfull_bad, zfull_out;
static int		 measuring, draining;

static void	conn_close(struct conn *);
static void	conn_flush(struct conn *);

static void
ep_set(struct conn *c, uint32_t ev)
{
	struct epoll_event e;

	if (c->events == ev)
		return;
	e.events = ev;
	e.data.ptr = c;
	if (epoll_ctl(c->indata ? ep_data : ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
		die("epoll_ctl: %s", strerror(errno));
	c->events = ev;
}

static void
ep_add(struct conn *c, uint32_t ev)
{
	struct epoll_event e;

	e.events = ev;
	e.data.ptr = c;
	if (epoll_ctl(c->indata ? ep_data : ep, EPOLL_CTL_ADD, c->fd, &e) < 0)
		die("epoll_ctl: %s", strerror(errno));
	c->events = ev;
}

/* The events a connection wants now. */
static uint32_t
want_events(struct conn *c)
{
	uint32_t ev = 0;

	if (c->state == S_CONNECTING)
		return EPOLLOUT;
	if (!(c->role == R_SINK && c->stalled && c->state == S_OPEN &&
	    !draining))
		ev |= EPOLLIN;
	if (c->olen > 0)
		ev |= EPOLLOUT;
	return ev;
}

static void
out_append(struct conn *c, const void *p, size_t n)
{
	if (c->ooff > 0 && c->ooff == c->olen)
		c->ooff = c->olen = 0;
	if (c->olen + n > c->ocap) {
		if (c->ooff > 0) {
			memmove(c->out, c->out + c->ooff, c->olen - c->ooff);
			c->olen -= c->ooff;
			c->ooff = 0;
		}
		if (c->olen + n > c->ocap) {
			size_t cap = c->ocap ? c->ocap : 4096;

			while (cap < c->olen + n)
				cap *= 2;
			if ((c->out = realloc(c->out, cap)) == NULL)
				die("out of memory");
			c->ocap = cap;
		}
	}
	memcpy(c->out + c->olen, p, n);
	c->olen += n;
}

static size_t
pending(const struct conn *c)
{
	return c->olen - c->ooff;
}

/* Send p now if nothing is queued, queue what the kernel did not take. */
static void
conn_send(struct conn *c, const void *p, size_t n)
{
	ssize_t k = 0;

	if (c->state == S_DEAD)
		return;
	if (pending(c) == 0) {
		do
			k = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		while (k < 0 && errno == EINTR);
		if (k < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				conn_close(c);
				return;
			}
			k = 0;
		}
	}
	if ((size_t)k < n) {
		out_append(c, (const unsigned char *)p + k, n - (size_t)k);
		ep_set(c, want_events(c));
	}
}

static void
conn_flush(struct conn *c)
{
	ssize_t k;

	while (pending(c) > 0) {
		k = send(c->fd, c->out + c->ooff, pending(c),
		    MSG_NOSIGNAL | MSG_DONTWAIT);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			conn_close(c);
			return;
		}
		c->ooff += (size_t)k;
	}
	if (pending(c) == 0) {
		c->ooff = c->olen = 0;
			if (c->closing) {
			conn_close(c);
			return;
		}
	}
	ep_set(c, want_events(c));
}

/* A control frame: masked from the sink (a client), not from the source. */
static void
send_ctl(struct conn *c, int op, const unsigned char *p, size_t n)
{
	unsigned char f[2 + 4 + 125];
	size_t i, hl = 2;

	if (n > 125)
		n = 125;
	f[0] = (unsigned char)(0x80 | op);
	if (c->role == R_SINK) {
		uint32_t m = rng32();

		f[1] = (unsigned char)(0x80 | n);
		memcpy(f + 2, &m, 4);
		for (i = 0; i < n; i++)
			f[6 + i] = p[i] ^ f[2 + (i & 3)];
		hl = 6;
	} else {
		f[1] = (unsigned char)n;
		memcpy(f + 2, p, n);
	}
	conn_send(c, f, hl + n);
}

static void
src_remove(struct conn *c)
{
	if (c->idx < 0)
		return;
	src_clients[c->idx] = src_clients[--n_src];
	src_clients[c->idx]->idx = c->idx;
	c->idx = -1;
}

static void
conn_close(struct conn *c)
{
	if (c->state == S_DEAD)
		return;
	if (c->role == R_SINK) {
		if (c->state == S_CONNECTING || c->state == S_HANDSHAKE) {
			failed++;
			inflight--;
		} else if (c->stalled) {
			stalled_dropped++;
			stalled_open--;
		} else
			closed_normal++;
	}
	if (c->role == R_SRC)
		src_remove(c);
	epoll_ctl(c->indata ? ep_data : ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	c->state = S_DEAD;
	free(c->hs);
	c->hs = NULL;
	free(c->out);
	c->out = NULL;
	c->olen = c->ooff = c->ocap = 0;
#ifdef WITH_ZLIB
	if (c->z != NULL) {
		inflateEnd(c->z);
		free(c->z);
		c->z = NULL;
	}
#endif
	/* the struct stays: a sink's is in sinks[], a source's is leaked
	   (there are few) so that pointers in this turn's events stay valid */
}

/* ------------------------------------------------------------- frames */

/*
 * Latency samples come in runs: the source stamps a whole batch with one
 * time and the sink reads with one clock, so equal stamps in one read make
 * equal latencies; they are counted and added to the histogram at once.
 */
static uint64_t run_ts, run_n;

static void
hist_add_n(uint64_t ns, uint64_t n)
{
	uint64_t us = ns / 1000;
	int k, i;

	if (ns > hist_max_ns)
		hist_max_ns = ns;
	hist_n += n;
	if (us < H_LIN) {
		hist[us] += n;
		return;
	}
	k = 63 - __builtin_clzll(us);
	if (k >= H_MAXEXP)
		i = H_N - 1;
	else
		i = H_LIN + (k - 10) * H_SUB +
		    (int)((us >> (k - H_SUB_BITS)) - H_SUB);
	hist[i] += n;
}

static void
run_flush(void)
{
	if (run_n > 0)
		hist_add_n(now > run_ts ? now - run_ts : 0, run_n);
	run_n = 0;
}

static uint64_t
dec20(const unsigned char *p)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < 20; i++)
		v = v * 10 + (uint64_t)(p[i] - '0');
	return v;
}

static void
put_dec20(unsigned char *p, uint64_t v)
{
	int i;

	for (i = 19; i >= 0; i--, v /= 10)
		p[i] = (unsigned char)('0' + v % 10);
}

#ifdef WITH_ZLIB
static unsigned char zscratch[64 * 1024];

/* A compressed message starts: a fresh raw inflater (no context takeover). */
static void
zbegin(struct conn *c)
{
	struct fparse *f = &c->fp;
	z_stream *z = c->z;

	f->comp = 1;
	f->zstop = f->zbad = 0;
	f->zout = 0;
	f->pfxlen = 0;
	if (z == NULL) {
		if ((z = calloc(1, sizeof *z)) == NULL ||
		    inflateInit2(z, -15) != Z_OK)
			die("out of memory (inflateInit2)");
		c->z = z;
	} else
		inflateReset(z);
}

/*
 * Compressed payload bytes: inflated into f->pfx until it holds PFX bytes;
 * then, for the client that checks whole messages, on into scratch space,
 * for the others not at all (the rest of the message is only counted).
 */
static void
zfeed(struct conn *c, const unsigned char *in, size_t n)
{
	struct fparse *f = &c->fp;
	z_stream *z = c->z;
	uInt before_out, before_in;
	int r, rounds;

	if (f->zstop || n == 0)
		return;
	z->next_in = (Bytef *)(uintptr_t)in;
	z->avail_in = (uInt)n;
	for (rounds = 0; rounds < 1 << 20 && z->avail_in > 0; rounds++) {
		if (f->pfxlen < PFX) {
			z->next_out = f->pfx + f->pfxlen;
			z->avail_out = PFX - f->pfxlen;
		} else if (c->full) {
			z->next_out = zscratch;
			z->avail_out = sizeof zscratch;
		} else {
			f->zstop = 1;
			break;
		}
		before_out = z->avail_out;
		before_in = z->avail_in;
		r = inflate(z, Z_SYNC_FLUSH);
		if (f->pfxlen < PFX)
			f->pfxlen += (unsigned char)(before_out - z->avail_out);
		f->zout += before_out - z->avail_out;
		if (r == Z_STREAM_END) {
			f->zstop = 1;
			break;
		}
		if (r != Z_OK && r != Z_BUF_ERROR) {
			zerr++;
			f->zbad = f->zstop = 1;
			break;
		}
		if (z->avail_out == before_out && z->avail_in == before_in)
			break;		/* no progress: wants more input */
	}
}

/* The end of a compressed message (the client that checks it whole). */
static void
zend(struct conn *c)
{
	static const unsigned char tail[4] = { 0, 0, 0xff, 0xff };
	struct fparse *f = &c->fp;

	if (!c->full)
		return;
	zfeed(c, tail, sizeof tail);
	zfull_msgs++;
	zfull_out += f->zout;
	if (f->zbad || (mode == 3 && f->zout != (uint64_t)msg_size))
		zfull_bad++;
}
#endif

/* A whole data message arrived (sink side: check and measure it). */
static inline void
message_done(struct conn *c, uint64_t len, const unsigned char *pfx,
    size_t pfxlen)
{
	uint64_t seq, ts;

	if (c->role != R_SINK)
		return;		/* the source ignores what clients send */
	if (c->fp.comp && measuring)
		zmsgs++;
	if (pfxlen >= 56 && memcmp(pfx, "{\"seq\":\"", 8) == 0) {
		/* --json: {"seq":"<20 digits>","ts":"<20 digits>",... */
		seq = dec20(pfx + 8);
		ts = dec20(pfx + 36);
	} else if (pfxlen < 16 || c->fp.zbad) {
		nostamp++;
		if (measuring)
			msgs++, bytes += len;
		return;
	} else {
		seq = get64le(pfx);
		ts = get64le(pfx + 8);
	}
	if (seq != c->expect && c->seen) {
		if (seq > c->expect) {
			gaps += seq - c->expect;
			if (measuring)
				gaps_win += seq - c->expect;
		} else
			dups++;
	}
	c->seen = 1;
	c->expect = seq + 1;
	if (measuring) {
		msgs++;
		bytes += len;
		if (ts != run_ts) {
			run_flush();
			run_ts = ts;
		}
		run_n++;
	}
}

static void
frame_end(struct conn *c)
{
	struct fparse *f = &c->fp;

	if (f->op >= 8) {
		if (f->op == 9) {
			ctl_pings++;
			send_ctl(c, 10, f->ctl, f->ctllen);
		} else if (f->op == 8) {
			/* echo the close (its status code) and hang up */
			send_ctl(c, 8, f->ctl, f->ctllen >= 2 ? 2 : 0);
			if (c->state != S_DEAD) {
				c->closing = 1;
				if (pending(c) == 0)
					conn_close(c);
			}
		}
		return;
	}
	if (f->fin && f->msgop) {
#ifdef WITH_ZLIB
		if (f->comp)
			zend(c);
#endif
		message_done(c, f->msglen, f->pfx, f->pfxlen);
		f->msgop = 0;
		f->comp = 0;
	}
}

static void
frame_begin(struct conn *c)
{
	struct fparse *f = &c->fp;
	const unsigned char *h = f->hdr;
	unsigned len7 = h[1] & 0x7f, i;
	size_t o = 2;

	f->fin = h[0] >> 7;
	f->op = h[0] & 15;
	f->masked = h[1] >> 7;
	if (len7 == 126) {
		f->left = (uint64_t)h[2] << 8 | h[3];
		o = 4;
	} else if (len7 == 127) {
		f->left = 0;
		for (i = 0; i < 8; i++)
			f->left = f->left << 8 | h[2 + i];
		o = 10;
	} else
		f->left = len7;
	if (f->masked)
		memcpy(f->mask, h + o, 4);
	f->pos = 0;
	if (f->op >= 8)
		f->ctllen = 0;
	else if (f->op != 0 || !f->msgop) {
		/* a new message (a stray continuation starts one too) */
		f->msgop = f->op ? f->op : 2;
		f->pfxlen = 0;
		f->msglen = 0;
		f->comp = 0;
		if (h[0] & 0x40) {
#ifdef WITH_ZLIB
			if (c->deflate)
				zbegin(c);
			else
#endif
				rsv_bad++;
		}
	}
}

static void
frame_payload(struct conn *c, const unsigned char *p, size_t n)
{
	struct fparse *f = &c->fp;
	size_t i, k;

	if (f->op >= 8) {
		for (i = 0; i < n && f->ctllen < 125; i++)
			f->ctl[f->ctllen++] = f->masked ?
			    p[i] ^ f->mask[(f->pos + i) & 3] : p[i];
	} else {
		f->msglen += n;
#ifdef WITH_ZLIB
		if (f->comp) {
			/* server frames are unmasked: no copy to unmask */
			zfeed(c, p, n);
		} else
#endif
		if (f->pfxlen < PFX) {
			k = (size_t)(PFX - f->pfxlen) < n ?
			    (size_t)(PFX - f->pfxlen) : n;
			for (i = 0; i < k; i++)
				f->pfx[f->pfxlen++] = f->masked ?
				    p[i] ^ f->mask[(f->pos + i) & 3] : p[i];
		}
	}
	f->pos += n;
}

static size_t
header_len(const unsigned char *h)
{
	unsigned len7 = h[1] & 0x7f;

	return 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) +
	    (h[1] & 0x80 ? 4 : 0);
}

/*
 * The latency of m messages in a row, their stamps at s, s + step, ...:
 * equal stamps are neighbours (the source stamps a whole batch with one
 * time, batches in sequence order, and the caller has just checked the
 * sequence numbers), so each run of equal stamps is found by galloping,
 * then halving: O(log run length) loads per run instead of one per message,
 * and every message still counts once in the histogram (see run_flush()).
 */
static void
lat_runs(const unsigned char *s, size_t step, uint64_t m)
{
	uint64_t i = 0, d, lo, hi, mid, ts;

	while (i < m) {
		ts = get64le(s + i * step);
		for (d = 1; i + d < m && get64le(s + (i + d) * step) == ts;
		    d *= 2)
			;
		/* [i, i + d/2] hold ts; i + d does not, or is m */
		lo = i + d / 2 + 1;
		hi = i + d < m ? i + d : m;
		while (lo < hi) {
			mid = lo + (hi - lo) / 2;
			if (get64le(s + mid * step) == ts)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (ts != run_ts) {
			run_flush();
			run_ts = ts;
		}
		run_n += lo - i;
		i = lo;
	}
}

/*
 * The sink's fast path, over what one read brought: the whole binary frames
 * the source sends (FIN, opcode 2, no RSV bit, unmasked, a payload of 16
 * bytes or more) whose sequence numbers go on from c->expect one by one.
 * Per frame it compares the header with the previous one's and the
 * sequence number with the expected one, and skips the rest by the payload
 * length: no call, no copy, and the next frame's address never waits for a
 * load (a chain of header loads through a 256 KiB buffer costs an L2
 * latency per frame).  Every sequence number is checked, so a lost,
 * repeated or reordered message is caught exactly as before; stamps are
 * read per run of equal ones (lat_runs()).  It stops before the first frame
 * that is anything else: incomplete (the tail of the read), of another kind
 * (text, compressed, control) or out of sequence; the general parser takes
 * that one (and counts the gap or duplicate), then this goes on.  Returns
 * the bytes it consumed.
 */
static size_t
sink_scan(struct conn *c, const unsigned char *buf, size_t n)
{
	const unsigned char *p = buf, *end = buf + n, *q;
	uint64_t expect = c->expect, plen, m, h, hmask;
	size_t hl, step;
	unsigned len7;

	while ((size_t)(end - p) >= 2 + 16) {
		if (p[0] != 0x82)
			break;
		len7 = p[1];
		if (len7 < 126) {
			hl = 2;
			plen = len7;
			hmask = 0xffff;
		} else if (len7 == 126) {
			hl = 4;
			plen = (uint64_t)p[2] << 8 | p[3];
			hmask = 0xffffffff;
		} else if (len7 == 127 && (size_t)(end - p) >= 10 + 16) {
			hl = 10;
			plen = (uint64_t)p[2] << 56 | (uint64_t)p[3] << 48 |
			    (uint64_t)p[4] << 40 | (uint64_t)p[5] << 32 |
			    (uint64_t)p[6] << 24 | (uint64_t)p[7] << 16 |
			    (uint64_t)p[8] << 8 | p[9];
			hmask = ~(uint64_t)0;
		} else
			break;		/* masked: not from a server */
		if (plen < 16 || plen > (uint64_t)(end - p) - hl)
			break;
		step = hl + (size_t)plen;
		h = get64le(p) & hmask;	/* step >= 18: inside the frame */
		/* this frame and the next ones with the same header */
		q = p;
		m = 0;
		do {
			if (get64le(p + hl) != expect)
				break;
			expect++;
			m++;
			p += step;
		} while ((size_t)(end - p) >= step &&
		    (get64le(p) & hmask) == h &&
		    (hl < 10 || (p[8] == (unsigned char)(plen >> 8) &&
		    p[9] == (unsigned char)plen)));
		if (m == 0)
			break;		/* out of sequence */
		if (measuring) {
			msgs += m;
			bytes += m * plen;
			lat_runs(q + hl + 8, step, m);
		}
	}
	c->expect = expect;
	return (size_t)(p - buf);
}

/* Feed received bytes to the frame parser. */
static void
feed(struct conn *c, const unsigned char *p, size_t n)
{
	struct fparse *f = &c->fp;
	size_t hl, k;
	uint64_t plen;

	while (n > 0 && c->state != S_DEAD) {
		if (c->role == R_SINK && c->seen && !f->inpay &&
		    f->hlen == 0 && !f->msgop) {
			k = sink_scan(c, p, n);
			p += k, n -= k;
			if (n == 0)
				break;
		}
		if (f->inpay) {
			k = f->left < n ? (size_t)f->left : n;
			frame_payload(c, p, k);
			p += k, n -= k;
			if ((f->left -= k) == 0) {
				f->inpay = 0;
				frame_end(c);
			}
			continue;
		}
		if (f->hlen == 0 && n >= 2 && n >= (hl = header_len(p))) {
			/* fast path: the whole header is here */
			if (!(p[1] & 0x80) && (p[0] & 0x8f) >= 0x81 &&
			    (p[0] & 0x8f) <= 0x82 && !f->msgop) {
				/* an unmasked, unfragmented data frame */
				unsigned len7 = p[1] & 0x7f;

				plen = len7 < 126 ? len7 : len7 == 126 ?
				    (uint64_t)p[2] << 8 | p[3] : 0;
				if (len7 == 127) {
					int i;

					for (i = 0; i < 8; i++)
						plen = plen << 8 | p[2 + i];
				}
				if (n - hl >= plen && !(p[0] & 0x40)) {
					message_done(c, plen, p + hl,
					    plen < PFX ? (size_t)plen : PFX);
					p += hl + plen, n -= hl + plen;
					continue;
				}
#ifdef WITH_ZLIB
				if (n - hl >= plen && c->deflate) {
					/* a whole compressed message */
					zbegin(c);
					zfeed(c, p + hl, (size_t)plen);
					zend(c);
					message_done(c, plen, f->pfx,
					    f->pfxlen);
					f->comp = 0;
					p += hl + plen, n -= hl + plen;
					continue;
				}
#endif
			}
			memcpy(f->hdr, p, hl);
			p += hl, n -= hl;
		} else {
			/* gather the header byte by byte across reads */
			f->hdr[f->hlen++] = *p++, n--;
			if (f->hlen < 2 || f->hlen < header_len(f->hdr))
				continue;
			f->hlen = 0;
		}
		frame_begin(c);
		if (f->left == 0)
			frame_end(c);
		else
			f->inpay = 1;
	}
}

/* -------------------------------------------------------------- source */

static double
rnd01(void)
{
	return rng32() / 4294967296.0;
}

/*
 * One --json payload of exactly size bytes: a Binance !miniTicker@arr-style
 * array of random tickers (as tests/deflate.py makes), wrapped with the
 * sequence number and timestamp first (filled in per message) and padded
 * with spaces before the closing brace.
 */
static void
json_build(unsigned char *dst, size_t size)
{
	static const char *const sym[] = { "BTC", "ETH", "BNB", "SOL", "XRP",
	    "ADA", "DOGE", "TRX", "LINK", "DOT" };
	static const char *const quote[] = { "USDT", "BTC", "FDUSD" };
	char obj[512];
	size_t len;
	int k;

	len = (size_t)snprintf((char *)dst, size, "{\"seq\":\"%020d\","
	    "\"ts\":\"%020d\",\"stream\":\"!miniTicker@arr\",\"data\":[", 0,
	    0);
	for (;;) {
		double p = 0.01 + rnd01() * 40000;

		k = snprintf(obj, sizeof obj, "%s{\"e\":\"24hrMiniTicker\","
		    "\"E\":%llu,\"s\":\"%s%s\",\"c\":\"%.8f\",\"o\":\"%.8f\","
		    "\"h\":\"%.8f\",\"l\":\"%.8f\",\"v\":\"%.8f\",\"q\":\"%.8f\"}",
		    dst[len - 1] == '[' ? "" : ",",
		    1700000000000ull + rng32() % 1000, sym[rng32() % 10],
		    quote[rng32() % 3], p, p * (0.9 + 0.2 * rnd01()),
		    p * 1.1, p * 0.9, rnd01() * 1e6, rnd01() * 1e9);
		if (len + (size_t)k + 2 > size)
			break;
		memcpy(dst + len, obj, (size_t)k);
		len += (size_t)k;
	}
	dst[len++] = ']';
	while (len < size - 1)
		dst[len++] = ' ';
	dst[len] = '}';
}

static void
src_build_template(void)
{
	size_t i, hl;

	if (msg_size < 126)
		hl = 2;
	else if (msg_size < 65536)
		hl = 4;
	else
		hl = 10;
	frame_hl = hl;
	frame_len = hl + (size_t)msg_size;
	if ((frame_tpl = malloc(frame_len)) == NULL)
		die("out of memory");
	frame_tpl[0] = json ? 0x81 : 0x82;	/* FIN, text or binary */
	if (hl == 2)
		frame_tpl[1] = (unsigned char)msg_size;
	else if (hl == 4) {
		frame_tpl[1] = 126;
		frame_tpl[2] = (unsigned char)(msg_size >> 8);
		frame_tpl[3] = (unsigned char)msg_size;
	} else {
		frame_tpl[1] = 127;
		for (i = 0; i < 8; i++)
			frame_tpl[2 + i] = (unsigned char)
			    ((uint64_t)msg_size >> (56 - 8 * i));
	}
	for (i = hl; i < frame_len; i++)
		frame_tpl[i] = (unsigned char)('a' + i % 26);
	if (json) {
		uint64_t saved = rng_s;

		rng_s = 0x9e3779b97f4a7c15ull;	/* the same payloads every run */
		for (i = 0; i < JSON_VARIANTS; i++) {
			if ((json_var[i] = malloc((size_t)msg_size)) == NULL)
				die("out of memory");
			json_build(json_var[i], (size_t)msg_size);
		}
		rng_s = saved;
		memcpy(frame_tpl + hl, json_var[0], (size_t)msg_size);
	}
	batch_msgs = BATCH_BYTES / frame_len;
	if (batch_msgs == 0)
		batch_msgs = 1;
	if ((batch = malloc(batch_msgs * frame_len)) == NULL)
		die("out of memory");
	for (i = 0; i < batch_msgs; i++)
		memcpy(batch + i * frame_len, frame_tpl, frame_len);
}

/*
 * Generate what is due and hand it to every client, pacing at the slowest:
 * nothing is generated while some client still has SRC_LOW bytes queued
 * (TCP pushback from the relay holds the source back, and the due
 * messages are sent late, stamped when they are built).  Returns 1 when
 * it stopped with more to do right away.
 */
static int
src_pump(void)
{
	uint64_t due, k, i, stamp;
	long j;
	int rounds;

	if (silent || n_src == 0 || src_hold > 0)
		return 0;
	for (rounds = 0; rounds < 16; rounds++) {
		if (rate > 0) {
			due = (uint64_t)((double)(now - src_t0) * rate / 1e9);
			due = due > src_seq ? due - src_seq : 0;
			if (due == 0)
				return 0;
		} else
			due = batch_msgs;
		for (j = 0; j < n_src; j++)
			if (pending(src_clients[j]) >= SRC_LOW) {
				if (rate > 0 && due > src_lag_max)
					src_lag_max = due;
				return 0;
			}
		k = due < batch_msgs ? due : batch_msgs;
		stamp = mono_ns();
		for (i = 0; i < k; i++) {
			unsigned char *f = batch + i * frame_len + frame_hl;

			if (json) {
				memcpy(f, json_var[src_seq % JSON_VARIANTS],
				    (size_t)msg_size);
				put_dec20(f + 8, src_seq++);
				put_dec20(f + 36, stamp);
				continue;
			}
			put64le(f, src_seq++);
			put64le(f + 8, stamp);
		}
		src_msgs += k;
		src_bytes += k * (uint64_t)msg_size;
		for (j = n_src - 1; j >= 0; j--)
			conn_send(src_clients[j], batch, k * frame_len);
		if (n_src == 0)
			return 0;
	}
	return 1;
}

/* A complete request head in c->hs / head of hlen bytes. */
static int
src_handshake(struct conn *c, const char *head, size_t hlen)
{
	const char *p = head, *end = head + hlen, *eol, *v;
	char acc[29], resp[256];
	int n;

	while (p < end && (eol = memchr(p, '\n', (size_t)(end - p))) != NULL) {
		if ((size_t)(eol - p) > 18 &&
		    strncasecmp(p, "Sec-WebSocket-Key:", 18) == 0) {
			v = p + 18;
			while (v < eol && (*v == ' ' || *v == '\t'))
				v++;
			while (eol > v && (eol[-1] == '\r' || eol[-1] == ' '))
				eol--;
			ws_accept(v, (size_t)(eol - v), acc);
			n = snprintf(resp, sizeof resp,
			    "HTTP/1.1 101 Switching Protocols\r\n"
			    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
			    "Sec-WebSocket-Accept: %s\r\n\r\n", acc);
			conn_send(c, resp, (size_t)n);
			return 0;
		}
		p = eol + 1;
	}
	return -1;
}

/* ---------------------------------------------------------------- sink */

static struct conn *sinks;
static long n_sinks;
static uint64_t t_conn_start, t_last_conn;

/* Does [p, end) hold word (case-insensitive)? */
static int
has_word(const char *p, const char *end, const char *word)
{
	size_t n = strlen(word);

	for (; p + n <= end; p++)
		if (strncasecmp(p, word, n) == 0)
			return 1;
	return 0;
}

static int
sink_handshake(struct conn *c, const char *head, size_t hlen)
{
	const char *p, *end = head + hlen, *eol, *v;
	int ok = -1;

	if (hlen < 12 || memcmp(head, "HTTP/1.1 101", 12) != 0)
		return -1;
	for (p = head; p < end &&
	    (eol = memchr(p, '\n', (size_t)(end - p))) != NULL; p = eol + 1) {
		if ((size_t)(eol - p) > 21 &&
		    strncasecmp(p, "Sec-WebSocket-Accept:", 21) == 0) {
			v = p + 21;
			while (v < eol && (*v == ' ' || *v == '\t'))
				v++;
			if (strncmp(v, c->accept, 28) != 0)
				return -1;
			ok = 0;
		} else if (deflate_offer && (size_t)(eol - p) > 25 &&
		    strncasecmp(p, "Sec-WebSocket-Extensions:", 25) == 0 &&
		    has_word(p + 25, eol, "permessage-deflate")) {
			/* each message is inflated on its own: the server
			   must not keep its context between messages */
			if (!has_word(p + 25, eol,
			    "server_no_context_takeover")) {
				static int said;

				if (!said++)
					fprintf(stderr, "load: the relay "
					    "agreed permessage-deflate with "
					    "context takeover; not supported\n");
				return -1;
			}
			c->deflate = 1;
		}
	}
	if (ok == 0 && c->deflate) {
		deflate_clients++;
		/* the first client inflates whole messages as a check */
		c->full = c == &sinks[0];
	}
	return ok;
}


static void
sink_open(long i)
{
	struct conn *c = &sinks[i];
	int fd, one = 1;

	memset(c, 0, sizeof *c);
	c->role = R_SINK;
	c->idx = -1;
	c->stalled = i >= n_clients;
	opened++;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		if (!first_err)
			first_err = errno;
		c->state = S_DEAD;
		c->fd = -1;
		failed++;
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (rcvbuf > 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
	c->fd = fd;
	c->state = S_CONNECTING;
	inflight++;
	if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0 &&
	    errno != EINPROGRESS) {
		if (!first_err)
			first_err = errno;
		c->state = S_DEAD;
		close(fd);
		c->fd = -1;
		inflight--;
		failed++;
		return;
	}
	ep_add(c, EPOLLOUT);
}

static void
sink_connected(struct conn *c)
{
	unsigned char key[16];
	char k64[25], req[512];
	int err = 0, n;
	socklen_t len = sizeof err;

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
		if (!first_err)
			first_err = err ? err : errno;
		conn_close(c);
		return;
	}
	if (getrandom(key, sizeof key, 0) != (ssize_t)sizeof key) {
		uint32_t r[4] = { rng32(), rng32(), rng32(), rng32() };

		memcpy(key, r, 16);
	}
	base64(key, 16, k64);
	ws_accept(k64, 24, c->accept);
	n = snprintf(req, sizeof req,
	    "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
	    "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
	    "Sec-WebSocket-Version: 13\r\n%s\r\n", dst_path, dst_host, k64,
	    deflate_offer ? "Sec-WebSocket-Extensions: permessage-deflate; "
	    "client_max_window_bits\r\n" : "");
	c->state = S_HANDSHAKE;
	ep_set(c, EPOLLIN);
	conn_send(c, req, (size_t)n);
}

/* ------------------------------------------------------------- reading */

static const char *
find_head_end(const char *p, size_t n)
{
	size_t i;

	for (i = 3; i < n; i++)
		if (p[i] == '\n' && p[i - 1] == '\r' && p[i - 2] == '\n' &&
		    p[i - 3] == '\r')
			return p + i + 1;
	return NULL;
}

static void
on_handshake_bytes(struct conn *c, const unsigned char *p, size_t n)
{
	const char *head, *e;
	size_t hlen, rest;
	int r;

	if (c->hslen == 0 && (e = find_head_end((const char *)p, n)) != NULL) {
		head = (const char *)p;
		hlen = (size_t)(e - head);
	} else {
		if (c->hs == NULL && (c->hs = malloc(HS_MAX)) == NULL)
			die("out of memory");
		if (c->hslen + n > HS_MAX) {
			conn_close(c);
			return;
		}
		memcpy(c->hs + c->hslen, p, n);
		/* search from a little before the new bytes */
		e = find_head_end(c->hs, c->hslen + n);
		c->hslen += n;
		if (e == NULL)
			return;
		head = c->hs;
		hlen = (size_t)(e - head);
		/* the rest of the new bytes past the head */
		p = (const unsigned char *)e;
		n = c->hslen - hlen;
		goto have_head;
	}
	p += hlen;
	n -= hlen;
have_head:
	rest = n;
	if (c->role == R_SRC) {
		r = src_handshake(c, head, hlen);
		if (r < 0) {
			static const char bad[] =
			    "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";

			src_bad++;
			send(c->fd, bad, sizeof bad - 1, MSG_NOSIGNAL);
			conn_close(c);
			return;
		}
		if (c->state == S_DEAD)
			return;
		c->state = S_OPEN;
		if (n_src == src_cap) {
			src_cap = src_cap ? src_cap * 2 : 16;
			src_clients = realloc(src_clients,
			    (size_t)src_cap * sizeof *src_clients);
			if (src_clients == NULL)
				die("out of memory");
		}
		c->idx = n_src;
		src_clients[n_src++] = c;
		src_accepted++;
		if (src_t0 == 0 && src_hold <= 0)
			src_t0 = now;
	} else {
		if (sink_handshake(c, head, hlen) < 0) {
			hs_bad++;
			conn_close(c);
			return;
		}
		c->state = S_OPEN;
		inflight--;
		if (c->stalled)
			stalled_open++;
		else
			connected++;
		t_last_conn = now;
		/* from now on its events come from ep_data */
		if (epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL) < 0)
			die("epoll_ctl: %s", strerror(errno));
		c->indata = 1;
		ep_add(c, want_events(c));
	}
	if (rest > 0) {
		/* p may point into c->hs: parse before freeing it */
		feed(c, p, rest);
	}
	free(c->hs);
	c->hs = NULL;
	c->hslen = 0;
	if (c->state != S_DEAD)
		ep_set(c, want_events(c));
}

static void
on_readable(struct conn *c)
{
	ssize_t n;

	do
		n = recv(c->fd, rbuf, sizeof rbuf, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return;
	now = mono_ns();
	if (n <= 0) {
		if (c->role == R_SINK && c->state == S_HANDSHAKE) {
			if (n == 0)
				hs_eof++;
			else
				hs_reset++;
		}
		conn_close(c);
		return;
	}
	if (c->state == S_HANDSHAKE)
		on_handshake_bytes(c, rbuf, (size_t)n);
	else if (c->state == S_OPEN) {
		if (measuring && c->role == R_SINK)
			reads++;
		feed(c, rbuf, (size_t)n);
	}
	run_flush();
}

/* One epoll event of a connection (not the listener). */
static void
on_event(struct conn *c, uint32_t ev)
{
	if (c->state == S_DEAD)
		return;
	if (c->state == S_CONNECTING) {
		if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			sink_connected(c);
		return;
	}
	if (ev & EPOLLOUT)
		conn_flush(c);
	if (c->state == S_DEAD)
		return;
	if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
		on_readable(c);
}

static void
on_accept(int lfd)
{
	struct conn *c;
	int fd, one = 1;

	while ((fd = accept4(lfd, NULL, NULL,
	    SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		if ((c = calloc(1, sizeof *c)) == NULL)
			die("out of memory");
		c->fd = fd;
		c->role = R_SRC;
		c->state = S_HANDSHAKE;
		c->idx = -1;
		ep_add(c, EPOLLIN);
	}
}

/* ---------------------------------------------------------------- main */

static void
usage(void)
{
	fputs(
"usage: load source -p PORT [-s SIZE] [-r RATE] [--silent] [-t SECONDS]\n"
"       load sink   -u ws://IP:PORT/PATH -n N [options]\n"
"       load both   -p PORT [-u URL] -n N [options]\n"
"\n"
"  -p, --port PORT          source: listen on 127.0.0.1:PORT\n"
"  -u, --url URL            sink: connect here (both: default the source)\n"
"  -n, --clients N          sink clients that read everything (default 1)\n"
"      --stalled K          and K clients that never read; drained at the end\n"
"                           to see whether the relay dropped them\n"
"  -s, --size BYTES         message size, at least 16 (default 100)\n"
"  -r, --rate R             source messages/s (default 0: as fast as the\n"
"                           socket takes them)\n"
"      --silent             the source sends nothing (idle clients)\n"
"  -w, --warmup S           seconds after all are connected before measuring\n"
"                           (default 2)\n"
"  -d, --duration S         measured window in seconds (default 10)\n"
"      --connect-rate R     connects opened per second (default 0: all at once)\n"
"      --inflight M         at most M connects/handshakes in flight (default\n"
"                           0: no limit)\n"
"      --connect-timeout S  give up waiting for all connects (default 10)\n"
"      --after-upstream     both: connect the sink once the source has a client\n"
"      --start-delay S      wait S seconds more before connecting (default 0)\n"
"      --drain S            time to drain stalled clients (default 2)\n"
"      --rcvbuf BYTES       sink sockets' SO_RCVBUF (default: autotuned)\n"
"      --flood-first        both: the source sends from its first client on\n"
"                           (default: once the sink's clients are connected)\n"
"      --json               source: text messages of ticker JSON (a Binance\n"
"                           !miniTicker@arr-style array, SIZE >= 128) instead\n"
"                           of binary filler; the sequence number and stamp\n"
"                           lead it as 20 decimal digits each\n"
"      --deflate            sink: offer permessage-deflate and take compressed\n"
"                           frames; inflate each one's first 64 bytes (client\n"
"                           0: all of it, checking the length)\n"
"  -t, --time S             source: exit after S seconds (default: at SIGTERM)\n"
"\n"
"The result is one line of key=value pairs on stdout; progress on stderr.\n"
#ifdef WITH_ZLIB
"zlib: yes (--deflate available)\n",
#else
"zlib: no (--deflate unavailable: build with -DWITH_ZLIB -lz, needs\n"
"zlib.h, e.g. apt-get install zlib1g-dev)\n",
#endif
	    stdout);
}

static void
on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void
parse_url(const char *u)
{
	const char *p, *slash, *colon;
	char host[64];
	size_t hl;
	long port = 80;

	if (strncmp(u, "ws://", 5) != 0)
		die("URL must be ws://IP:PORT/PATH: %s", u);
	p = u + 5;
	slash = strchr(p, '/');
	if (slash == NULL)
		slash = p + strlen(p);
	colon = memchr(p, ':', (size_t)(slash - p));
	hl = (size_t)((colon ? colon : slash) - p);
	if (hl == 0 || hl >= sizeof host)
		die("bad host in %s", u);
	memcpy(host, p, hl);
	host[hl] = '\0';
	if (colon)
		port = strtol(colon + 1, NULL, 10);
	if (port <= 0 || port > 65535)
		die("bad port in %s", u);
	memset(&dst, 0, sizeof dst);
	dst.sin_family = AF_INET;
	dst.sin_port = htons((uint16_t)port);
	if (strcmp(host, "localhost") == 0)
		strcpy(host, "127.0.0.1");
	if (inet_pton(AF_INET, host, &dst.sin_addr) != 1)
		die("host must be an IPv4 address: %s", host);
	if ((dst_host = malloc(hl + 8)) == NULL)
		die("out of memory");
	snprintf(dst_host, hl + 8, "%.*s:%ld", (int)hl, p, port);
	dst_path = strdup(*slash ? slash : "/");
}

int
main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "port", 1, NULL, 'p' }, { "url", 1, NULL, 'u' },
		{ "clients", 1, NULL, 'n' }, { "stalled", 1, NULL, 'K' },
		{ "size", 1, NULL, 's' }, { "rate", 1, NULL, 'r' },
		{ "silent", 0, NULL, 'S' }, { "warmup", 1, NULL, 'w' },
		{ "duration", 1, NULL, 'd' }, { "connect-rate", 1, NULL, 'C' },
		{ "inflight", 1, NULL, 'I' }, { "connect-timeout", 1, NULL, 'T' },
		{ "after-upstream", 0, NULL, 'A' }, { "start-delay", 1, NULL, 'D' },
		{ "drain", 1, NULL, 'R' }, { "time", 1, NULL, 't' },
		{ "flood-first", 0, NULL, 'F' }, { "rcvbuf", 1, NULL, 'B' },
		{ "json", 0, NULL, 'J' }, { "deflate", 0, NULL, 'Z' },
		{ "help", 0, NULL, 'h' }, { NULL, 0, NULL, 0 }
	};
	struct epoll_event *evs;
	struct rlimit rl;
	struct sigaction sa;
	int o, lfd = -1, k, i, more = 0, timeout, data;
	uint64_t t_iter, loop_n = 0, loop_sum = 0, loop_max = 0;
	enum { P_WAIT, P_CONNECT, P_WARM, P_MEASURE, P_DRAIN } phase = P_WAIT;
	uint64_t t0, t_start = 0, t_warm = 0, t_meas = 0, t_end = 0;
	uint64_t t_drain = 0, src_msgs0 = 0;
	double cpu0 = 0, cpu_win = 0, win_s = 0, connect_ms = -1;
	long connected_at = 0, stalled_at = 0, next;
	struct conn lconn, dconn;

	if (argc < 2) {
		usage();
		return 2;
	}
	if (strcmp(argv[1], "source") == 0)
		mode = 1;
	else if (strcmp(argv[1], "sink") == 0)
		mode = 2;
	else if (strcmp(argv[1], "both") == 0)
		mode = 3;
	else if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
		usage();
		return 0;
	} else {
		usage();
		return 2;
	}
	optind = 2;
	while ((o = getopt_long(argc, argv, "p:u:n:s:r:w:d:t:h", lo,
	    NULL)) != -1) {
		switch (o) {
		case 'p': src_port = atoi(optarg); break;
		case 'u': url = optarg; break;
		case 'n': n_clients = atol(optarg); break;
		case 'K': n_stalled = atol(optarg); break;
		case 's': msg_size = atol(optarg); break;
		case 'r': rate = atof(optarg); break;
		case 'S': silent = 1; break;
		case 'w': warmup = atof(optarg); break;
		case 'd': duration = atof(optarg); break;
		case 'C': connect_rate = atof(optarg); break;
		case 'I': inflight_max = atol(optarg); break;
		case 'T': connect_timeout = atof(optarg); break;
		case 'A': after_upstream = 1; break;
		case 'D': start_delay = atof(optarg); break;
		case 'R': drain_s = atof(optarg); break;
		case 't': src_time = atof(optarg); break;
		case 'F': src_hold = 0; break;
		case 'B': rcvbuf = atoi(optarg); break;
		case 'J': json = 1; break;
		case 'Z': deflate_offer = 1; break;
		case 'h': usage(); return 0;
		default: usage(); return 2;
		}
	}
	if (optind != argc)
		die("unexpected argument: %s", argv[optind]);
	if (mode & 1 && (src_port <= 0 || src_port > 65535))
		die("source needs -p PORT");
	if (msg_size < 16)
		die("--size must be at least 16 (sequence + timestamp)");
	if (json && msg_size < 128)
		die("--json needs --size of at least 128");
#ifndef WITH_ZLIB
	if (deflate_offer)
		die("--deflate needs zlib, and this bench/load was built "
		    "without it: install zlib.h (apt-get install zlib1g-dev) "
		    "and build with -DWITH_ZLIB -lz (bench/run.sh does)");
#endif
	if (n_clients < 0 || n_stalled < 0 || rate < 0)
		die("negative count or rate");
	src_hold = mode == 3 && src_hold != 0;
	if (mode == 3 && url == NULL) {
		static char self[64];

		snprintf(self, sizeof self, "ws://127.0.0.1:%d/feed", src_port);
		url = self;
	}
	if (mode & 2) {
		if (url == NULL)
			die("sink needs -u URL");
		parse_url(url);
	}

	/* descriptors: one per connection, and ours may be many */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	signal(SIGPIPE, SIG_IGN);
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (getrandom(&rng_s, sizeof rng_s, 0) != (ssize_t)sizeof rng_s ||
	    rng_s == 0)
		rng_s = mono_ns() | 1;

	if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
	    (ep_data = epoll_create1(EPOLL_CLOEXEC)) < 0)
		die("epoll_create1: %s", strerror(errno));
	memset(&dconn, 0, sizeof dconn);
	dconn.fd = ep_data;
	dconn.role = R_DATA;
	ep_add(&dconn, EPOLLIN);	/* ep_data is readable: data is */
	if ((evs = calloc(MAX_EVENTS, sizeof *evs)) == NULL)
		die("out of memory");
	now = t0 = mono_ns();

	if (mode & 1) {
		struct sockaddr_in sin;
		int one = 1;

		src_build_template();
		lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    0);
		if (lfd < 0)
			die("socket: %s", strerror(errno));
		setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		memset(&sin, 0, sizeof sin);
		sin.sin_family = AF_INET;
		sin.sin_port = htons((uint16_t)src_port);
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
		    listen(lfd, 4096) < 0)
			die("listen on 127.0.0.1:%d: %s", src_port,
			    strerror(errno));
		memset(&lconn, 0, sizeof lconn);
		lconn.fd = lfd;
		lconn.role = R_LISTEN;
		ep_add(&lconn, EPOLLIN);
		fprintf(stderr, "load: phase=listening port=%d\n", src_port);
	}
	if (mode & 2) {
		n_sinks = n_clients + n_stalled;
		if ((sinks = calloc((size_t)n_sinks + 1, sizeof *sinks)) == NULL)
			die("out of memory");
		for (next = 0; next < n_sinks; next++)
			sinks[next].state = S_DEAD, sinks[next].fd = -1;
	}
	next = 0;

	for (;;) {
		timeout = more ? 0 : (mode & 1 && rate > 0) ? 1 : 10;
		if (mode & 2 && phase == P_CONNECT && next < n_sinks)
			timeout = connect_rate > 0 ? 1 : timeout;
		k = epoll_wait(ep, evs, MAX_EVENTS, timeout);
		if (k < 0 && errno != EINTR)
			die("epoll_wait: %s", strerror(errno));
		now = mono_ns();
		t_iter = now;
		/* ep: accepts, the source's clients, connects, handshakes */
		data = 0;
		for (i = 0; i < k; i++) {
			struct conn *c = evs[i].data.ptr;

			if (c->role == R_LISTEN)
				on_accept(c->fd);
			else if (c->role == R_DATA)
				data = 1;
			else
				on_event(c, evs[i].events);
		}
		/* ep_data: the open sinks; a slice of them while others wait
		   for their connects or handshakes (the rest stay ready, and
		   epoll hands them out in turn, round-robin) */
		k = data ? epoll_wait(ep_data, evs, inflight > 0 ? DATA_SLICE :
		    MAX_EVENTS, 0) : 0;
		if (k < 0 && errno != EINTR)
			die("epoll_wait: %s", strerror(errno));
		for (i = 0; i < k; i++)
			on_event(evs[i].data.ptr, evs[i].events);
		if (measuring) {
			uint64_t d;

			now = mono_ns();
			d = now - t_iter;
			loop_n++;
			loop_sum += d;
			if (d > loop_max)
				loop_max = d;
		}
		if (stop)
			break;
		if (mode & 1)
			more = src_pump();
		if (mode == 1) {
			if (src_time > 0 && now - t0 >= (uint64_t)(src_time * 1e9))
				break;
			continue;
		}

		/* the sink's timeline */
		switch (phase) {
		case P_WAIT:
			if (after_upstream && mode == 3 && n_src == 0) {
				if (now - t0 > (uint64_t)(connect_timeout * 1e9))
					die("no upstream connected within %gs",
					    connect_timeout);
				break;
			}
			if (t_start == 0)
				t_start = now + (uint64_t)(start_delay * 1e9);
			if (now < t_start)
				break;
			fprintf(stderr, "load: phase=connecting clients=%ld\n",
			    n_sinks);
			t_conn_start = now;
			phase = P_CONNECT;
			/* FALLTHROUGH */
		case P_CONNECT:
			while (next < n_sinks &&
			    (inflight_max == 0 || inflight < inflight_max) &&
			    (connect_rate == 0 || (double)next <
			    (double)(now - t_conn_start) * connect_rate / 1e9 + 1))
				sink_open(next++);
			if ((next == n_sinks && inflight == 0) ||
			    now - t_conn_start >
			    (uint64_t)(connect_timeout * 1e9)) {
				connected_at = connected;
				stalled_at = stalled_open;
				if (next == n_sinks && inflight == 0 &&
				    connected + stalled_open == n_sinks)
					connect_ms = (t_last_conn -
					    t_conn_start) / 1e6;
				fprintf(stderr, "load: phase=warmup connected="
				    "%ld failed=%ld connect_ms=%.1f\n",
				    connected + stalled_open, failed,
				    connect_ms);
				t_warm = now;
				phase = P_WARM;
				if (src_hold > 0) {
					src_hold = 0;
					src_t0 = now;
				}
			}
			break;
		case P_WARM:
			if (now - t_warm < (uint64_t)(warmup * 1e9))
				break;
			memset(hist, 0, sizeof hist);
			hist_n = hist_max_ns = 0;
			msgs = bytes = gaps_win = reads = 0;
			measuring = 1;
			cpu0 = cpu_s();
			src_msgs0 = src_msgs;
			t_meas = now;
			fprintf(stderr, "load: phase=measure\n");
			phase = P_MEASURE;
			break;
		case P_MEASURE:
			if (now - t_meas < (uint64_t)(duration * 1e9))
				break;
			run_flush();
			measuring = 0;
			t_end = now;
			cpu_win = cpu_s() - cpu0;
			win_s = (t_end - t_meas) / 1e9;
			src_msgs0 = src_msgs - src_msgs0;
			fprintf(stderr, "load: phase=end\n");
			phase = P_DRAIN;
			t_drain = now;
			/* stalled clients read now: EOF means the relay
			   dropped them */
			draining = 1;
			for (next = n_clients; next < n_sinks; next++)
				if (sinks[next].state == S_OPEN)
					ep_set(&sinks[next],
					    want_events(&sinks[next]));
			break;
		case P_DRAIN:
			break;
		}
		if (phase == P_DRAIN && (stalled_open == 0 ||
		    now - t_drain >= (uint64_t)(drain_s * 1e9)))
			break;
	}

	if (mode == 1) {
		double el = (now - t0) / 1e9;

		printf("mode=source src_clients=%ld src_accepted=%ld "
		    "src_msgs=%llu src_bytes=%llu src_msgs_s=%.0f "
		    "src_lag_max=%llu load_cpu_s=%.3f\n", n_src, src_accepted,
		    (unsigned long long)src_msgs,
		    (unsigned long long)src_bytes,
		    src_t0 ? src_msgs / ((now - src_t0) / 1e9) : 0.0,
		    (unsigned long long)src_lag_max, cpu_s());
		(void)el;
		return 0;
	}
	if (phase != P_DRAIN) {
		/* stopped by a signal before the end of the window */
		t_end = now;
		win_s = t_meas ? (t_end - t_meas) / 1e9 : 0;
		cpu_win = t_meas ? cpu_s() - cpu0 : 0;
		if (t_meas)
			src_msgs0 = src_msgs - src_msgs0;
	}
	printf("mode=%s clients=%ld stalled=%ld connected=%ld failed=%ld "
	    "stalled_connected=%ld connected_end=%ld "
	    "connect_ms=%.1f err=%s hs_eof=%ld hs_reset=%ld hs_bad=%ld "
	    "window_s=%.3f msgs=%llu msgs_s=%.0f "
	    "bytes_s=%.0f gaps=%llu gaps_win=%llu dups=%llu nostamp=%llu "
	    "p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f "
	    "latency_samples=%llu reads=%llu "
	    "closed=%ld stalled_dropped=%ld pings=%llu "
	    "deflate_clients=%ld zmsgs=%llu zerr=%llu rsv_bad=%llu "
	    "zfull_msgs=%llu zfull_bad=%llu zfull_avg=%.0f "
	    "load_cpu_s=%.3f load_cpu_pct=%.1f loop_avg_ms=%.3f loop_max_ms=%.3f",
	    mode == 3 ? "both" : "sink", n_clients, n_stalled,
	    connected_at, failed, stalled_at, connected - closed_normal,
	    connect_ms,
	    first_err ? strerror(first_err) : "none", hs_eof, hs_reset,
	    hs_bad, win_s,
	    (unsigned long long)msgs, win_s > 0 ? msgs / win_s : 0.0,
	    win_s > 0 ? bytes / win_s : 0.0, (unsigned long long)gaps,
	    (unsigned long long)gaps_win, (unsigned long long)dups,
	    (unsigned long long)nostamp, hist_pct(0.50), hist_pct(0.99),
	    hist_pct(0.999), hist_n ? hist_max_ns / 1e6 : -1.0,
	    (unsigned long long)hist_n, (unsigned long long)reads,
	    closed_normal, stalled_dropped, (unsigned long long)ctl_pings,
	    deflate_clients, (unsigned long long)zmsgs,
	    (unsigned long long)zerr, (unsigned long long)rsv_bad,
	    (unsigned long long)zfull_msgs, (unsigned long long)zfull_bad,
	    zfull_msgs ? (double)zfull_out / (double)zfull_msgs : 0.0,
	    cpu_s(), win_s > 0 ? 100 * cpu_win / win_s : 0.0,
	    loop_n ? loop_sum / 1e6 / loop_n : 0.0, loop_max / 1e6);
	if (mode == 3)
		printf(" src_clients=%ld src_msgs_s=%.0f src_lag_max=%llu",
		    n_src, win_s > 0 ? src_msgs0 / win_s : 0.0,
		    (unsigned long long)src_lag_max);
	printf("\n");
	fflush(stdout);
	return 0;
}
