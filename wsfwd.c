/*
 * wsfwd - WebSocket forwarder: one upstream connection per feed, fanned out
 * to any number of WebSocket clients.
 *
 * Data flows one way:  upstream ──▶ route ──▶ clients.
 *
 * A route binds a request path to a source: a ws:// upstream that wsfwd
 * keeps connected (reconnecting with backoff), or "-", the lines of stdin.
 * Every message a source produces is framed once into a reference-counted
 * struct msg; each client of the route queues a pointer to it, so a payload
 * is never copied per client.  A client whose queue of unsent bytes would
 * pass --max-queue is dropped; nobody else waits for it.
 *
 * Everything runs in one poll() loop on non-blocking sockets.  The only
 * thread is a short-lived resolver per name lookup, because getaddrinfo()
 * can block for seconds; it hands its answer back through a pipe.
 *
 * Each connection is a small state machine (enum conn_state).  Bytes come in
 * through conn_read() into one shared read buffer, go through the HTTP
 * upgrade parser and then the incremental frame decoder (ws_feed), which
 * keeps at most a frame header and a control payload per connection.
 * Bytes go out through conn_flush(), which hands a batch of queued messages
 * to one sendmsg().  Those two functions are the only I/O seam.
 *
 * Clients never reach the upstream: their data messages are validated and
 * dropped, and no header of theirs is passed on.
 */

#include <sys/types.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <bearssl.h>

#define VERSION			"0.1.0"

/* ==== Limits and defaults ==== */

#define HEADER_MAX		8192	/* an upgrade head larger than this is not a browser */
#define HEADERS_MAX		64	/* header lines in one head */
#define HANDSHAKE_TIMEOUT_MS	10000	/* client upgrade; upstream lookup+connect+upgrade */
#define CLOSE_TIMEOUT_MS	3000	/* wait for the peer's close frame or FIN */
#define SHUTDOWN_MS		1500	/* SIGTERM: time clients get to take their close */
#define RETRY_MIN_MS		1000	/* first reconnect within a second */
#define RETRY_MAX_MS		30000	/* backoff doubles up to this */
#define HEALTHY_MS		10000	/* an upstream up this long resets the backoff */
#define CTRL_MAX		125	/* RFC 6455 5.5: control payloads */
#define FRAME_HEAD		10	/* largest unmasked frame header */
#define RBUF_SIZE		65536	/* the one read buffer everybody shares */
#define READS_PER_EVENT		16	/* reads per upstream readiness: batch, stay fair */
#define IOV_BATCH		64	/* buffers handed to one sendmsg() */
#define BATCH_CAP		65536	/* a turn's small messages share a buffer */
#define BATCH_SMALL		16384	/* larger ones travel in their own */
#define REUSE_MAX		65536	/* keep a reassembly buffer this small */
#define PACE_DIV		8	/* the pacing unit, see pace_bytes() */
#define ACCEPT_BATCH		1024	/* accepts per listener readiness */
#define FLUSH_SLICE		256	/* client writes between source reads */
#define LINE_MAX_DEFAULT	(16u << 20)
#define MAX_QUEUE_DEFAULT	(1u << 20)
#define SIZE_LIMIT		((size_t)1 << 30)	/* no sane message is larger */
#define CA_FILE_MAX		((size_t)16 << 20)	/* a CA bundle is ~200 KB */
#define PING_DEFAULT_S		30
#define LINGER_DEFAULT_S	10	/* a reconnecting browser finds its feed */
#define MAX_UPSTREAMS_DEFAULT	256	/* per prefix route */
#define REPLAY_MAX		100000
#define DEFLATE_MIN_DEFAULT	64	/* smaller JSON hardly shrinks */
#define ZCLIENT_MAX		65536	/* a compressed message nobody gets */
#define IPTAB_SIZE		1024	/* buckets of --max-per-ip counts */
#define HOST_BURST		10	/* connection attempts to one host... */
#define HOST_INTERVAL_MS	1050	/* ...then one per this: < 300 in 5 min */
#define DEFAULT_ADDR		"127.0.0.1"
#define DEFAULT_PORT		"19443"
#define INFL_LBITS	9	/* literal/length lookup bits, then level 2 */
#define INFL_DBITS	8	/* distance lookup */
#define INFL_LSIZE	852	/* zlib's examples/enough 286 9 15 */
#define INFL_DSIZE	400	/* enough 30 8 15 */
#define INFL_SLACK	8	/* output room past max for 8-byte copies */
#define DEFL_HBITS	15	/* hash of the next four bytes */
#define DEFL_SYMS	16384	/* symbols per block (one Huffman code) */
#define DEFL_CHAIN	16	/* hash chain steps per match search */
#define DEFL_GOOD	8	/* after a match this long, a lazy search */
#define DEFL_LAZY	32	/* takes 1/4 chain; after this long, none */
#define DEFL_NICE	128	/* a match this long ends the search */
#define DEFL_IN_MAX	((size_t)1 << 30)	/* positions are 32-bit */
#define DEFL_BOUND(n)	((n) + (n) / 1024 + 16)	/* all stored */
#define WS_GUID			"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#define LEN(a)			(sizeof(a) / sizeof((a)[0]))
#define MIN(a, b)		((a) < (b) ? (a) : (b))
#define MAX(a, b)		((a) > (b) ? (a) : (b))

/* ==== Types ==== */

enum conn_kind { CONN_CLIENT, CONN_UPSTREAM };

enum conn_state {
	CONN_CONNECTING,	/* upstream: non-blocking connect() in flight */
	CONN_HANDSHAKE,		/* HTTP upgrade, either direction */
	CONN_OPEN,		/* frames flow */
	CONN_CLOSING,		/* our close frame is queued; awaiting theirs */
	CONN_DRAIN,		/* last bytes out, then FIN, then wait for EOF */
	CONN_DEAD		/* fd closed; freed at the end of the loop turn */
};

enum ws_op {
	WS_OP_CONT = 0x0, WS_OP_TEXT = 0x1, WS_OP_BINARY = 0x2,
	WS_OP_CLOSE = 0x8, WS_OP_PING = 0x9, WS_OP_PONG = 0xA
};

enum ws_close {
	CLOSE_NORMAL = 1000, CLOSE_GOING_AWAY = 1001, CLOSE_PROTOCOL = 1002,
	CLOSE_BAD_DATA = 1007, CLOSE_TOO_BIG = 1009, CLOSE_INTERNAL = 1011,
	CLOSE_BAD_GATEWAY = 1014
};

enum dec_stage { DEC_HEAD, DEC_PAYLOAD };

/* permessage-deflate parameters seen (RFC 7692 7.1), as pmd_parse() sets. */
enum {
	PMD_SERVER_NCT = 1, PMD_CLIENT_NCT = 2, PMD_SBITS = 4, PMD_CBITS = 8,
	PMD_CBITS_VALUE = 16
};

enum log_level { L_ERR, L_INFO, L_DEBUG };

enum pollslot { POLL_LISTEN, POLL_DNS, POLL_STDIN, POLL_FIXED };

enum inflate_result {
	INFL_OK = 0, INFL_BAD = -1, INFL_TOO_BIG = -2, INFL_NOMEM = -3
};

/*
 * The receiving side of one permessage-deflate direction.  Decoding
 * state lives on the stack for one message; only the window carries
 * over, and only with context takeover.
 */
struct inflate {
	unsigned char	*win;		/* the last wsize bytes, a ring */
	size_t		 wsize, wpos, wlen;
	int		 takeover;	/* 0: peer resets every message */
};

/* Decoding state of one message: input, bit buffer, output, tables. */
struct inflate_run {
	const struct inflate	*z;
	const unsigned char	*in;
	size_t			 n, pos;	/* pos: in n + 4 bytes */
	uint64_t		 bb;		/* past nb: junk */
	unsigned		 nb;
	unsigned char		*out;
	size_t			 len, cap, max;
	const uint32_t		*lt, *dt;	/* the block's tables */
	uint32_t		 lit[INFL_LSIZE], dist[INFL_DSIZE];
};

/* The compressor, about 260 KiB: one serves every message. */
struct deflate {
	uint32_t		*head;		/* hash: last pos */
	uint16_t		*prev;		/* pos: chain step */
	uint32_t		*sym;		/* dist << 16 | len */
	uint32_t		 base;		/* position of in[0] */
	unsigned		 nsym;
	size_t			 bstart, done;	/* block input */
	const unsigned char	*in;
	unsigned char		*out;
	size_t			 olen, ocap;
	uint64_t		 bb;		/* bits not yet out */
	unsigned		 nb, full;
	unsigned		 lfreq[286], dfreq[30];
	unsigned char		 llen[288], dlen[32], flen[288], fdlen[32];
	unsigned short		 lcode[288], dcode[32];
	unsigned short		 fcode[288], fdcode[32];
	unsigned char		 lsym[259], dsym[512];
};

/* A frame as it goes on the wire, shared by every queue that holds it. */
struct msg {
	unsigned	 refs;
	unsigned	 urgent;	/* queued ahead of data: ours alone */
	size_t		 len;		/* bytes at p */
	unsigned char	*p;
	unsigned char	 data[];	/* FRAME_HEAD bytes of room, then payload */
};

/*
 * Ring of messages waiting for one socket; off bytes of the head are sent.
 * Urgent entries (HTTP heads, control frames) are the nurgent entries after
 * a half-sent data head, if there is one, in the order they were queued.
 */
struct queue {
	struct msg	**v;
	unsigned	  cap, head, n, nurgent;
	size_t		  off, bytes;	/* bytes: unsent, over all entries */
};

/* Incremental frame decoder state (RFC 6455 5.2). */
struct wsdec {
	unsigned char	 stage, hlen, op, fin, masked, msgop;
	unsigned char	 zmsg;		/* this message is compressed (RSV1) */
	unsigned char	 keep;		/* this message is assembled in msg */
	unsigned char	 hdr[14], mask[4], ctl[CTRL_MAX];
	unsigned	 mpos, ctllen;
	uint32_t	 utf8;		/* validator state across fragments */
	uint64_t	 left;		/* payload bytes left in this frame */
	uint64_t	 msglen;	/* bytes of the message so far */
	struct msg	*msg;		/* the message being assembled, if kept */
	size_t		 msgcap;
};

/* One PEM bundle, streamed into an X.509 decoder (a single pass). */
struct ca_loader {
	br_x509_decoder_context	 dc;
	unsigned char		 dn[4096];
	size_t			 dnlen;
	int			 dn_overflow;
};

/* -k: a stand-in X.509 engine that checks nothing (see xi_class). */
struct x509_insecure {
	const br_x509_class	*vtable;
	br_x509_decoder_context	 dc;
	int			 ncert;
};

/* A TLS client engine, ~41 KB: upstream connections only, never clients. */
struct tls {
	br_ssl_client_context	 sc;
	br_x509_minimal_context	 xc;
	struct x509_insecure	 xi;
	char			 why[96];	/* what broke, in words */
	unsigned char		 buf[BR_SSL_BUFSIZE_BIDI];
};

/* Client connections from one address (--max-per-ip). */
struct ipcount {
	struct ipcount	*next;
	unsigned	 n;
	char		 addr[48];
};

struct conn {
	int		 fd;
	unsigned char	 kind, state, shut, dirty, joined, pending;
	unsigned char	 pinged;	/* our ping is out: its pong is ours */
	unsigned char	 deflate;	/* permessage-deflate agreed */
	unsigned char	 deflate_sbits;	/* its offer named server_max_window_bits */
	struct inflate	*zi;		/* upstream's window, if it keeps one */
	unsigned	 id;
	unsigned	 close_code;	/* what we sent or will log */
	int64_t		 deadline;	/* handshake, close or drain timer; 0: none */
	int64_t		 last_rx, ping_at;
	struct route	*route;
	struct upstream	*up;		/* upstream connections: the owner */
	struct conn	*next, *prev;	/* the route's open clients */
	struct conn	*dnext;		/* the list of conns with output to flush */
	char		*hs;		/* HTTP head while in CONN_HANDSHAKE */
	size_t		 hslen;
	struct queue	 q;
	struct wsdec	 d;
	struct tls	*tls;		/* NULL: plain TCP */
	struct ipcount	*ip;		/* --max-per-ip: its address's count */
	char		 peer[56];	/* "[v6addr]:port" */
};

struct url {
	char		*text;
	int		 tls;
	char		 host[256];	/* without brackets */
	char		 port[6];
	char		 hosthdr[270];	/* Host: value, port only if not default */
	char		*target;	/* path and query, as sent */
};

struct dnsreq {
	struct upstream	*u;		/* NULL: abandoned, free on arrival */
	char		 host[256], port[6];
	struct addrinfo	*ai;
	int		 err;
};

/*
 * Connection attempts to one host:port, all routes together, are paced
 * (GCRA): a burst of HOST_BURST, then one per HOST_INTERVAL_MS.
 */
struct host {
	struct host	*next;
	char		 name[262];	/* host:port */
	int64_t		 tat;		/* theoretical arrival time */
};

struct upstream {
	struct route	*route;
	struct url	*url;
	struct conn	*c;		/* NULL while waiting or resolving */
	struct dnsreq	*dq;
	struct addrinfo	*ai, *next_ai;
	int64_t		 retry_at;	/* 0: not waiting */
	int64_t		 deadline;	/* lookup + connect + upgrade */
	int64_t		 up_since;
	int		 backoff_ms;
	int		 cat;		/* --cat: exit instead of reconnecting */
	int		 delivered;	/* a message came on this connection */
	unsigned	 connects;	/* successful handshakes */
	int64_t		 rotate_at;	/* --rotate: open the successor then */
	struct upstream	*next;		/* --rotate: the successor, connecting */
	struct upstream	*prev;		/* a successor: the one it replaces */
	int		 failed;	/* a successor that failed: to be freed */
	int		 wait_ms;	/* Retry-After of the last refusal */
	int		 paced;		/* a pacing delay has been logged */
	unsigned	 rturn;		/* the turn rgot counts for */
	size_t		 rgot;		/* bytes read in that turn */
	char		 accept[29];	/* expected Sec-WebSocket-Accept */
	char		 why[160];	/* last connect error */
};

/*
 * A route as configured, and a feed: a source with its clients.  A fixed
 * route is both.  A prefix route (PATH ending in *) is configuration only:
 * each full path its clients ask for gets a feed of its own, an instance,
 * made on demand and retired a --linger after its last client left.
 */
struct route {
	char		*path;		/* instance: path?query as asked */
	struct url	 url;
	struct route	*parent;	/* instance: its prefix route */
	struct route	*inst, *inext;	/* prefix route: its instances */
	struct route	*lnext, *lprev;	/* the feeds: every live source */
	struct host	*host;
	int		 is_stdin, done, prefix;
	unsigned	 ninst;		/* prefix route: instances */
	int64_t		 linger_at;	/* instance left empty: retire then */
	char		**send;		/* --send: texts for each new upstream */
	size_t		*sendlen, nsend;
	unsigned char	*line;		/* stdin: a partial line */
	size_t		 linelen, linecap;
	unsigned long	 lineno;
	struct upstream	*up;
	struct conn	*clients;
	unsigned	 nclients;
	unsigned	 nready;	/* clients not behind, this turn */
	struct msg	*batch[2];	/* this turn's messages, framed: plain,
					   and for the nz deflate clients */
	unsigned	 nz;		/* clients with permessage-deflate */
	struct msg	**ring;		/* --replay: the last messages */
	unsigned	 ringhead, ringn;
	uint64_t	 msgs_in, bytes_in;	/* from the source: payload */
	uint64_t	 msgs_out, bytes_out;	/* queued to clients: frames */
	uint64_t	 dropped;	/* slow clients */
	size_t		 qhwm;		/* longest client queue seen */
	struct conn	*tclient;	/* tunnel: its client, waiting or open */
	char		 accept[29];	/* tunnel: the client's accept value */
	char		*proto;		/* tunnel: subprotocols it offered */
	unsigned char	*stash;		/* tunnel: its bytes before the 101 */
	size_t		 stashlen;
	struct queue	 held;		/* --client-rate: frames waiting */
	int64_t		*rate_ts;	/* --client-rate: when the last N went */
	unsigned	 rate_i, rate_n;
	int		 rate_logged;
};

struct http {
	char		*method, *target, *version;	/* request line */
	int		 status;			/* response line */
	char		*reason;
	struct { char *name, *value; } h[HEADERS_MAX];
	int		 nh;
};

struct options {
	const char	*listen_host;	/* NULL: every interface */
	const char	*listen_port;
	size_t		 max_message, max_queue;
	unsigned	 max_clients;	/* 0: no limit */
	int		 ping_ms;	/* 0: off */
	int		 verbosity;
	const char	*cat;
	const char	*ca;		/* --ca FILE */
	int		 insecure;	/* -k */
	const char	*syslog;	/* --syslog[=SOCKET]: its path */
	int		 linger_ms;
	unsigned	 max_upstreams;	/* per prefix route */
	unsigned	 replay;	/* messages a new client gets first */
	int64_t		 rotate_ms;	/* 0: off */
	int		 tunnel;
	unsigned	 client_rate;	/* tunnel: messages per second; 0: off */
	const char	**origins;	/* --origin */
	size_t		 norigins;
	const char	*token;
	unsigned	 max_per_ip;	/* 0: no limit */
	const char	*stats;		/* --stats PATH */
	int		 deflate;	/* offer permessage-deflate to clients */
	size_t		 deflate_min;	/* smaller payloads go uncompressed */
	int		 upstream_deflate;	/* ask the upstream for it */
};

/* Text built by sb_printf(); oom set once memory ran out. */
struct sbuf {
	char		*p;
	size_t		 len, cap;
	int		 oom;
};

struct sha1 {
	uint32_t	 h[5];
	uint64_t	 len;
	unsigned char	 buf[64];
};

/* ==== Prototypes ==== */

static int	 accept_one(void);
static void	 addr_format(const struct sockaddr *, char *, size_t);
static size_t	 b64_decode(unsigned char *, size_t, const char *, size_t);
static void	 b64_encode(char *, const unsigned char *, size_t);
static int	 b64_value(int);
static void	 batch_flush(struct route *);
static unsigned char	*batch_room(struct route *, int, size_t);
static void	 broadcast(struct route *, struct msg *, int);
static int	 ca_add(struct ca_loader *);
static void	 ca_dn(void *, const void *, size_t);
static size_t	 ca_load(const char *);
static long	 ca_parse(const unsigned char *, size_t);
static void	 ca_push(void *, const void *, size_t);
static void	 ca_setup(void);
static void	 cat_deliver(struct msg *);
static int	 client_allowed(struct conn *, struct http *, int,
		    const char **);
static int	 client_check(struct conn *, struct http *, const char **,
		    const char **);
static void	 client_head(struct conn *, char *, size_t, unsigned char *,
		    size_t);
static void	 client_join(struct conn *, const char *, const char *);
static void	 client_leave(struct conn *, const char *);
static void	 client_oom(struct conn *);
static void	 client_reject(struct conn *, int, const char *);
static int	 client_stats(struct conn *, struct http *);
static void	 client_unlink(struct conn *);
static int	 close_code_valid(unsigned);
static void	 conn_close_body(struct conn *, const unsigned char *, size_t,
		    int);
static void	 conn_closed_by_peer(struct conn *, unsigned);
static void	 conn_drain(struct conn *);
static const char	*conn_error(struct conn *);
static void	 conn_event(struct conn *, short);
static short	 conn_events(struct conn *);
static void	 conn_fail(struct conn *, int);
static int	 conn_flush(struct conn *);
static void	 conn_head(struct conn *, unsigned char *, size_t);
static void	 conn_input(struct conn *, unsigned char *, size_t);
static void	 conn_kill(struct conn *);
static void	 conn_lost(struct conn *, const char *);
static void	 conn_mark(struct conn *);
static struct conn	*conn_new(int, int);
static int	 conn_queue(struct conn *, struct msg *, int);
static ssize_t	 conn_read(struct conn *, unsigned char *, size_t);
static void	 conn_readable(struct conn *);
static void	 conn_reap(void);
static void	 conn_send_close(struct conn *, unsigned, int);
static void	 conn_send_ctl(struct conn *, int, const void *, size_t);
static int	 conn_send_head(struct conn *, const char *, size_t);
static int64_t	 conn_timers(struct conn *);
static void	 deflate_align(struct deflate *);
static void	 deflate_block(struct deflate *);
static void	 deflate_free(struct deflate *);
static int	 deflate_init(struct deflate *);
static uint32_t	 deflate_insert(struct deflate *, size_t, uint32_t);
static unsigned	 deflate_match(struct deflate *, size_t, size_t, uint32_t,
		    unsigned, uint32_t, unsigned *);
static size_t	 deflate_msg(struct deflate *, const unsigned char *, size_t,
		    int, unsigned char *, size_t);
static void	 deflate_put(struct deflate *, uint32_t, unsigned);
static unsigned	 deflate_rle(const unsigned char *, unsigned, unsigned *);
static unsigned	 deflate_same(const unsigned char *, const unsigned char *,
		    unsigned);
static void	 deflate_stored(struct deflate *, size_t, size_t);
static void	 deflate_sym(struct deflate *, unsigned, unsigned, unsigned);
static void	 deflate_symbols(struct deflate *, const unsigned short *,
		    const unsigned char *, const unsigned short *,
		    const unsigned char *);
static void	 die(const char *, ...)
		    __attribute__((noreturn));
static void	 dns_done(void);
static void	*dns_thread(void *);
static void	 err_line(const char *, va_list, int, const char *);
static void	 ext_ows(const char **);
static int	 ext_tchar(int);
static size_t	 ext_token(const char **);
static int	 ext_value(const char **, char[16]);
static struct route	*feed_iter(struct route *, struct route *);
static void	 feed_link(struct route *);
static const char	*feed_state(const struct route *);
static void	 feed_unlink(struct route *);
static unsigned char	*file_read(const char *, size_t *);
static void	 flush_dirty(void);
static struct host	*host_get(const struct url *);
static int	 host_is_ip(const char *);
static int64_t	 host_wait(struct host *);
static int	 http_has_token(const char *, const char *);
static size_t	 http_head_end(const char *, size_t, size_t);
static const char	*http_header(struct http *, const char *, int *);
static char	*http_line(char **);
static int	 http_parse(char *, size_t, struct http *, int);
static int	 http_parse_lines(char *, size_t, struct http *, int);
static void	 huff_codes(const unsigned char *, unsigned, unsigned short *);
static uint32_t	 huff_entry(int, unsigned, unsigned);
static void	 huff_fixed(unsigned char *);
static void	 huff_lengths(const unsigned *, unsigned, unsigned,
		    unsigned char *);
static unsigned	 huff_reverse(unsigned, unsigned);
static int	 huff_table(uint32_t *, unsigned, unsigned,
		    const unsigned char *, unsigned, int);
static int	 inflate_bits(struct inflate_run *, unsigned, unsigned *);
static unsigned	 inflate_byte(const struct inflate_run *, size_t);
static int	 inflate_codes(struct inflate_run *);
static int	 inflate_copy(struct inflate_run *, unsigned, unsigned);
static int	 inflate_dynamic(struct inflate_run *);
static int	 inflate_fixed(struct inflate_run *);
static void	 inflate_free(struct inflate *);
static int	 inflate_grow(struct inflate_run *, size_t);
static void	 inflate_init(struct inflate *, int, int);
static int	 inflate_keep(struct inflate *, const unsigned char *, size_t);
static uint64_t	 inflate_load64(const unsigned char *);
static int	 inflate_msg(struct inflate *, const unsigned char *, size_t,
		    unsigned char **, size_t *, size_t);
static int	 inflate_refill(struct inflate_run *);
static int	 inflate_stored(struct inflate_run *);
static struct ipcount *	*ip_bucket(const char *, size_t);
static struct ipcount	*ip_count(const char *);
static void	 ip_release(struct ipcount *);
static void	 listen_parse(char *);
static void	 listen_setup(void);
static const char	*log_clean(const unsigned char *, size_t);
static void	 logmsg(int, const char *, ...);
static void	 loop(void);
static struct msg	*msg_frame(int, int, const void *, size_t);
static struct msg	*msg_new(size_t);
static struct msg	*msg_raw(const void *, size_t);
static void	 msg_seal(struct msg *, int, size_t);
static void	 msg_unref(struct msg *);
static int64_t	 now_ms(void);
static unsigned long	 num(const char *, const char *, unsigned long,
		    unsigned long);
static void	 on_signal(int);
static void	 options_parse(int, char **);
static size_t	 pace_bytes(void);
static int	 parse_size(const char *, size_t *);
static int	 parse_uint(const char *, unsigned long, unsigned long *);
static int64_t	 ping_next(void);
static int	 pmd_accepted(const char *);
static int	 pmd_bits(const char *);
static int	 pmd_offered(struct http *, int *);
static int	 pmd_parse(const char **, unsigned *, int *);
static size_t	 queue_behind(const struct queue *);
static void	 queue_clear(struct queue *, int);
static void	 queue_consume(struct queue *, size_t);
static size_t	 queue_peek(struct queue *, unsigned char *, size_t);
static int	 queue_push(struct queue *, struct msg *, int);
static void	 rand_bytes(void *, size_t);
static unsigned	 rand_u32(void);
static int	 rate_queue(struct conn *, struct msg *);
static void	 refusing(const char *);
static void	 route_add(char *, char **, size_t *, size_t);
static int	 route_behind(struct route *);
static struct msg	*route_deflate(struct msg *);
static void	 route_end(struct route *);
static struct route	*route_find(const char *, size_t);
static struct route	*route_instance(struct route *, const char *, int *,
		    const char **);
static void	 route_keep(struct route *, struct msg *);
static void	 route_put(struct route *, int, struct msg *);
static void	 route_refused(struct route *, const char *);
static void	 route_replay(struct route *, struct conn *);
static int	 route_rest_ok(const char *);
static void	 route_retire(struct route *);
static void	 route_send(struct route *, struct msg *);
static void	 routes_ready(void);
static unsigned long	 rss_kib(void);
static void	 sb_printf(struct sbuf *, const char *, ...);
static void	 sb_quote(struct sbuf *, const char *);
static void	 send_parse(const char *, char **, size_t *);
static int	 set_nonblock(int);
static void	 setup(void);
static void	 sha1_block(uint32_t[5], const unsigned char *);
static void	 sha1_final(struct sha1 *, unsigned char[20]);
static void	 sha1_init(struct sha1 *);
static void	 sha1_update(struct sha1 *, const void *, size_t);
static int	 should_exit(void);
static void	 shutdown_begin(void);
static void	 signal_setup(void);
static void	 sources_read(void);
static void	 stats_feed_json(struct sbuf *, const struct route *);
static void	 stats_json(struct sbuf *);
static void	 stats_log(void);
static void	 stats_prom(struct sbuf *);
static void	 stats_reply(struct conn *, struct http *);
static void	 stdin_keep(struct route *, const unsigned char *, size_t);
static void	 stdin_line(struct route *, const unsigned char *, size_t);
static void	 stdin_read(struct route *);
static int	 syslog_open(void);
static void	 target_strip(const char *, char *, int *);
static int64_t	 timer_at(int64_t);
static int64_t	 timers(void);
static const char	*tls_alert(int);
static short	 tls_events(struct conn *);
static int	 tls_flush(struct conn *);
static int	 tls_pending(struct conn *);
static void	 tls_profile(struct tls *);
static int	 tls_pump(struct conn *);
static ssize_t	 tls_read(struct conn *, unsigned char *, size_t);
static int	 tls_start(struct conn *, const struct url *);
static void	 tls_why(struct tls *, int);
static int	 token_eq(const char *, size_t);
static int	 token_ok(struct http *, int);
static int	 tunnel_begin(struct conn *, struct http *, const char *,
		    const char **);
static int	 tunnel_behind(struct conn *);
static void	 tunnel_close(struct conn *);
static void	 tunnel_ctl(struct conn *, int, const unsigned char *, size_t);
static void	 tunnel_fail(struct route *, const char *);
static void	 tunnel_open(struct route *, const char *);
static struct conn	*tunnel_peer(struct conn *);
static int64_t	 tunnel_release(struct route *);
static void	 tunnel_send(struct conn *, int, const void *, size_t);
static void	 tunnel_stash(struct conn *, const unsigned char *, size_t);
static int	 upstream_backlog(struct upstream *);
static const char	*upstream_check(struct upstream *, struct http *);
static void	 upstream_connect_done(struct conn *, int);
static void	 upstream_deliver(struct upstream *, struct msg *);
static void	 upstream_fail(struct upstream *, const char *, ...);
static void	 upstream_free(struct upstream *);
static void	 upstream_head(struct conn *, char *, size_t, unsigned char *,
		    size_t);
static int	 upstream_new(struct route *);
static void	 upstream_rotate(struct upstream *);
static void	 upstream_start(struct upstream *);
static void	 upstream_switch(struct upstream *);
static int64_t	 upstream_timers(struct upstream *);
static void	 upstream_try(struct upstream *);
static void	 upstreams_start(void);
static int	 url_parse(struct url *, const char *, char *, size_t);
static void	 usage(int);
static void	 usage_error(const char *, ...)
		    __attribute__((noreturn));
static void	 utc_fields(int64_t, int[6]);
static int	 utf8_check(uint32_t *, const unsigned char *, size_t);
static void	 warnx(const char *, ...);
static void	 ws_accept_key(char[29], const char *, size_t);
static int	 ws_control(struct conn *);
static int	 ws_data(struct conn *, const unsigned char *, size_t);
static int	 ws_feed(struct conn *, unsigned char *, size_t);
static int	 ws_frame_end(struct conn *);
static int	 ws_head(struct conn *);
static size_t	 ws_head_len(uint64_t);
static size_t	 ws_head_need(const unsigned char *, unsigned);
static size_t	 ws_head_write(unsigned char *, int, uint64_t);
static int	 ws_inflate(struct conn *, int, struct msg **, size_t *);
static size_t	 ws_limit(struct conn *);
static void	 x509_feed(br_x509_decoder_context *, const void *, size_t);
static void	 xi_append(const br_x509_class **, const unsigned char *,
		    size_t);
static void	 xi_end_cert(const br_x509_class **);
static unsigned	 xi_end_chain(const br_x509_class **);
static const br_x509_pkey	*xi_get_pkey(const br_x509_class *const *,
		    unsigned *);
static void	 xi_start_cert(const br_x509_class **, uint32_t);
static void	 xi_start_chain(const br_x509_class **, const char *);

/* ==== Globals ==== */

static struct options	 opt;		/* written once, by options_parse() */
static struct route	*routes;	/* as configured */
static size_t		 nroutes;
static struct route	*feeds;		/* every live source, instances too */
static struct host	*hosts;
static struct ipcount	*iptab[IPTAB_SIZE];	/* --max-per-ip */
static struct route	*stdin_route;
static struct conn	**conns;	/* every live connection, in poll order */
static size_t		 nconns, capconns;
static struct pollfd	*pfds;		/* POLL_FIXED, then one per conn */
static struct conn	*dirty, *dirty_tail;	/* conns to flush, in order */
static size_t		 ndirty;
static unsigned		 nbig;		/* feeds of FLUSH_SLICE clients or more */
static unsigned		 turn;		/* loop iterations */
static unsigned		 nclients_open;	/* upgraded clients, all routes */
static unsigned		 nclient_conns;	/* client sockets, any state */
static unsigned		 next_id;
static int		 listen_fd = -1, spare_fd = -1, syslog_fd = -1;
static int		 wake_pipe[2] = { -1, -1 };	/* resolver, signals */
static int64_t		 now;		/* CLOCK_MONOTONIC ms, once per turn */
static int64_t		 exit_at;	/* shutting down: leave by then */
static int64_t		 listen_pause, emfile_logged;
static int64_t		 timer_next;	/* no connection timer is due before */
static int		 exit_status;
static int		 cat_done = -1;	/* --cat: exit status once known */
static unsigned char	 rbuf[RBUF_SIZE];
static struct deflate	 zdef;		/* the compressor, one for all */
static int		 zdef_state;	/* 0: not set up, 1: ready, -1: failed */
static struct inflate	 zinf;		/* inflater without a kept window */
static br_x509_trust_anchor *anchors;	/* loaded once, shared read-only */
static size_t		 nanchors;
static volatile sig_atomic_t quit, dump;
static int64_t		 start_ms;	/* for the uptime */
static struct msg	*oom_close;	/* close 1011, made at start */

/* ==== Logging, errors, time, randomness ==== */

/*
 * The UTC date and time of t, seconds since 1970, as year, month, day,
 * hour, minute, second: days to civil date by whole 400-year eras, so no
 * time zone code of libc's comes in (gmtime_r brings musl's, 5 KB).
 */
static void
utc_fields(int64_t t, int f[6])
{
	int64_t z = t / 86400, sec = t % 86400, era, doe, yoe, doy, mp;

	if (sec < 0)
		sec += 86400, z--;
	z += 719468;			/* days from 0000-03-01 */
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;	/* months from March */
	f[2] = (int)(doy - (153 * mp + 2) / 5 + 1);
	f[1] = (int)(mp < 10 ? mp + 3 : mp - 9);
	f[0] = (int)(yoe + era * 400 + (f[1] <= 2));
	f[3] = (int)(sec / 3600), f[4] = (int)(sec / 60 % 60);
	f[5] = (int)(sec % 60);
}

/*
 * One line per event, if the verbosity allows it: on stderr with a UTC
 * timestamp, in one write(), or with --syslog as one datagram to the
 * syslog socket, sent without waiting: a stalled syslog daemon loses
 * lines rather than stopping the loop.
 */
static void
logmsg(int level, const char *fmt, ...)
{
	static const int sev[] = { LOG_ERR, LOG_INFO, LOG_DEBUG };
	char line[1024];
	struct timespec ts;
	va_list ap;
	int n, f[6];

	if (level > opt.verbosity)
		return;
	if (syslog_fd >= 0)
		n = snprintf(line, sizeof line, "<%d>wsfwd[%ld]: ",
		    LOG_DAEMON | sev[level], (long)getpid());
	else {
		clock_gettime(CLOCK_REALTIME, &ts);
		utc_fields(ts.tv_sec, f);
		n = snprintf(line, sizeof line,
		    "%04d-%02d-%02d %02d:%02d:%02d.%03ld ", f[0], f[1], f[2],
		    f[3], f[4], f[5], ts.tv_nsec / 1000000);
	}
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	va_end(ap);
	n = MIN(n, (int)sizeof line - 2);	/* a long line is cut */
	if (syslog_fd >= 0) {
		if (send(syslog_fd, line, (size_t)n, MSG_DONTWAIT |
		    MSG_NOSIGNAL) < 0 && errno != EAGAIN && syslog_open() == 0)
			send(syslog_fd, line, (size_t)n, MSG_DONTWAIT |
			    MSG_NOSIGNAL);
		return;
	}
	line[n++] = '\n';
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		return;		/* nowhere left to say it */
}

/* (Re)connect to the syslog socket; the daemon may have restarted. */
static int
syslog_open(void)
{
	struct sockaddr_un sun;
	int fd;

	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	if (strlen(opt.syslog) >= sizeof sun.sun_path) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(sun.sun_path, opt.syslog);
	if ((fd = socket(AF_UNIX, SOCK_DGRAM, 0)) < 0)
		return -1;
	if (set_nonblock(fd) < 0 ||
	    connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
		close(fd);
		return -1;
	}
	if (syslog_fd >= 0)
		close(syslog_fd);
	syslog_fd = fd;
	return 0;
}

/*
 * "wsfwd: " and the message on stderr, with strerror(e) when fmt ends in
 * ':', then tail.  No stdio: write(2), like the log.
 */
static void
err_line(const char *fmt, va_list ap, int e, const char *tail)
{
	char line[1024];
	size_t n = strlen(fmt), len;

	len = (size_t)snprintf(line, sizeof line, "wsfwd: ");
	vsnprintf(line + len, sizeof line - len, fmt, ap);
	len = strlen(line);
	if (n > 0 && fmt[n - 1] == ':')
		snprintf(line + len, sizeof line - len, " %s", strerror(e));
	len = strlen(line);
	snprintf(line + len, sizeof line - len, "%s\n", tail);
	if (write(STDERR_FILENO, line, strlen(line)) < 0)
		(void)0;
}

/* A warning or an error at setup, one line on stderr. */
static void
warnx(const char *fmt, ...)
{
	int e = errno;
	va_list ap;

	va_start(ap, fmt);
	err_line(fmt, ap, e, "");
	va_end(ap);
}

/* Setup failure: message, strerror(errno) if fmt ends in ':', exit 1. */
static void
die(const char *fmt, ...)
{
	int e = errno;
	va_list ap;

	va_start(ap, fmt);
	err_line(fmt, ap, e, "");
	va_end(ap);
	exit(1);
}

/* Bad command line: one line on stderr, exit 2. */
static void
usage_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	err_line(fmt, ap, 0, " (see wsfwd --help)");
	va_end(ap);
	exit(2);
}

/*
 * When to ping next: one interval on, rounded up to a whole second (a
 * quarter interval if that is shorter) so that the pings of thousands of
 * clients fall into one timer scan a second rather than one scan each,
 * and a peer that answers is still heard from well within two intervals.
 */
static int64_t
ping_next(void)
{
	int64_t t = now + opt.ping_ms, g = MIN(1000, opt.ping_ms / 4);

	return g > 0 ? t + (g - t % g) % g : t;
}

/*
 * The pacing unit, an eighth of --max-queue: a client with this much unsent
 * is behind, a source is read by at most this much a turn, and a client's
 * kernel send buffer holds this much.
 */
static size_t
pace_bytes(void)
{
	return MAX(opt.max_queue / PACE_DIV, 1);
}

/* Note a connection deadline, so that the timer scan will not skip it. */
static int64_t
timer_at(int64_t t)
{
	if (t < timer_next)
		timer_next = t;
	return t;
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Fill buf from the kernel's CSPRNG: handshake keys and frame masks. */
static void
rand_bytes(void *buf, size_t n)
{
	unsigned char *p = buf;
	ssize_t r;
	int fd;

	while (n > 0) {
		r = getrandom(p, n, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			break;
		p += r;
		n -= (size_t)r;
	}
	if (n == 0)
		return;
	/* Kernels before 3.17 have no getrandom(). */
	if ((fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)) < 0)
		die("open /dev/urandom:");
	while (n > 0) {
		r = read(fd, p, n);
		if (r <= 0 && errno != EINTR)
			die("read /dev/urandom:");
		if (r > 0) {
			p += r;
			n -= (size_t)r;
		}
	}
	close(fd);
}

static unsigned
rand_u32(void)
{
	uint32_t v;

	rand_bytes(&v, sizeof v);
	return v;
}

/* ==== SHA-1 (FIPS 180-4), base64 (RFC 4648) ==== */

#define ROL(x, n)	(((x) << (n)) | ((x) >> (32 - (n))))

static void
sha1_block(uint32_t h[5], const unsigned char *p)
{
	uint32_t w[80], a, b, c, d, e, f, k, t;
	int i;

	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		    (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (; i < 80; i++)
		w[i] = ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
	a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
	for (i = 0; i < 80; i++) {
		if (i < 20)
			f = (b & c) | (~b & d), k = 0x5A827999;
		else if (i < 40)
			f = b ^ c ^ d, k = 0x6ED9EBA1;
		else if (i < 60)
			f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
		else
			f = b ^ c ^ d, k = 0xCA62C1D6;
		t = ROL(a, 5) + f + e + k + w[i];
		e = d, d = c, c = ROL(b, 30), b = a, a = t;
	}
	h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
}

static void
sha1_init(struct sha1 *s)
{
	static const uint32_t iv[5] = {
		0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
	};

	memcpy(s->h, iv, sizeof iv);
	s->len = 0;
}

static void
sha1_update(struct sha1 *s, const void *data, size_t n)
{
	const unsigned char *p = data;
	size_t used = s->len % 64, k;

	s->len += n;
	while (n > 0) {
		k = MIN(64 - used, n);
		memcpy(s->buf + used, p, k);
		used += k, p += k, n -= k;
		if (used == 64) {
			sha1_block(s->h, s->buf);
			used = 0;
		}
	}
}

static void
sha1_final(struct sha1 *s, unsigned char out[20])
{
	uint64_t bits = s->len * 8;
	unsigned char pad[72] = { 0x80 };
	size_t used = s->len % 64, padlen = (used < 56 ? 56 : 120) - used;
	int i;

	for (i = 0; i < 8; i++)
		pad[padlen + i] = (unsigned char)(bits >> (56 - 8 * i));
	sha1_update(s, pad, padlen + 8);
	for (i = 0; i < 20; i++)
		out[i] = (unsigned char)(s->h[i / 4] >> (24 - 8 * (i % 4)));
}

static const char b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Encode n bytes into out, which holds 4 * ((n + 2) / 3) + 1 bytes. */
static void
b64_encode(char *out, const unsigned char *in, size_t n)
{
	uint32_t v;

	for (; n >= 3; in += 3, n -= 3) {
		v = (uint32_t)in[0] << 16 | in[1] << 8 | in[2];
		*out++ = b64chars[v >> 18];
		*out++ = b64chars[v >> 12 & 63];
		*out++ = b64chars[v >> 6 & 63];
		*out++ = b64chars[v & 63];
	}
	if (n > 0) {
		v = (uint32_t)in[0] << 16 | (n > 1 ? in[1] << 8 : 0);
		*out++ = b64chars[v >> 18];
		*out++ = b64chars[v >> 12 & 63];
		*out++ = n > 1 ? b64chars[v >> 6 & 63] : '=';
		*out++ = '=';
	}
	*out = '\0';
}

static int
b64_value(int ch)
{
	const char *s;

	if (ch == '\0' || (s = strchr(b64chars, ch)) == NULL)
		return -1;
	return (int)(s - b64chars);
}

/*
 * Decode canonical padded base64 of length n into out (cap bytes).
 * Returns the decoded length, or (size_t)-1 on any malformation.
 */
static size_t
b64_decode(unsigned char *out, size_t cap, const char *in, size_t n)
{
	size_t i, o = 0, len, pad = 0;
	uint32_t v = 0;
	int j, d;

	if (n == 0 || n % 4 != 0)
		return (size_t)-1;
	if (in[n - 1] == '=')
		pad = in[n - 2] == '=' ? 2 : 1;
	if ((len = n / 4 * 3 - pad) > cap)
		return (size_t)-1;
	for (i = 0; i < n; i += 4) {
		for (v = 0, j = 0; j < 4; j++) {
			d = i + j < n - pad ? b64_value(in[i + j]) : 0;
			if (d < 0)
				return (size_t)-1;
			v = v << 6 | (uint32_t)d;
		}
		for (j = 0; j < 3 && o < len; j++)
			out[o++] = (unsigned char)(v >> (16 - 8 * j));
	}
	/* Bits left under the padding would make the encoding ambiguous. */
	if ((pad == 1 && (v & 0xff)) || (pad == 2 && (v & 0xffff)))
		return (size_t)-1;
	return o;
}

/* Sec-WebSocket-Accept for a key (RFC 6455 4.2.2): base64(SHA-1(key+GUID)). */
static void
ws_accept_key(char out[29], const char *key, size_t n)
{
	struct sha1 s;
	unsigned char md[20];

	sha1_init(&s);
	sha1_update(&s, key, n);
	sha1_update(&s, WS_GUID, sizeof WS_GUID - 1);
	sha1_final(&s, md);
	b64_encode(out, md, sizeof md);
}

/* ==== UTF-8 (RFC 3629) ==== */

/*
 * Validate a chunk of a message, carrying the state of a split code point
 * in *st: bits 0-7 continuation bytes still due, 8-15 and 16-23 the range
 * the next one must fall in (that is how overlongs and surrogates are
 * refused).  Returns -1 on the first bad byte.  The message is complete
 * and valid when the final state has no continuation due.
 */
static int
utf8_check(uint32_t *st, const unsigned char *p, size_t n)
{
	uint32_t need = *st & 0xff, lo = *st >> 8 & 0xff, hi = *st >> 16;
	const unsigned char *end = p + n;
	unsigned b;

	while (p < end) {
		if (need == 0) {
			/* Fast path: eight ASCII bytes at a time. */
			while (end - p >= 8) {
				uint64_t w;

				memcpy(&w, p, 8);
				if (w & 0x8080808080808080ull)
					break;
				p += 8;
			}
			if (p == end)
				break;
			b = *p++;
			if (b < 0x80)
				continue;
			lo = 0x80, hi = 0xBF;
			if (b >= 0xC2 && b <= 0xDF)
				need = 1;
			else if (b >= 0xE0 && b <= 0xEF) {
				need = 2;
				if (b == 0xE0)
					lo = 0xA0;	/* overlong */
				else if (b == 0xED)
					hi = 0x9F;	/* surrogates */
			} else if (b >= 0xF0 && b <= 0xF4) {
				need = 3;
				if (b == 0xF0)
					lo = 0x90;	/* overlong */
				else if (b == 0xF4)
					hi = 0x8F;	/* past U+10FFFF */
			} else
				return -1;
		} else {
			b = *p++;
			if (b < lo || b > hi)
				return -1;
			lo = 0x80, hi = 0xBF;
			need--;
		}
	}
	*st = need | lo << 8 | hi << 16;
	return 0;
}

/* ==== Deflate (RFC 1951) for permessage-deflate (RFC 7692) ==== */

/*
 * Decoding tables: an entry is value << 16 | kind | extra << 4 | bits,
 * where bits is the code length to drop.  A first-level entry of kind
 * HE_SUB points at a second-level table of 2^extra entries indexed by
 * the bits after the first INFL_LBITS (INFL_DBITS).
 */
#define HE_LIT		0x000	/* value: a byte or code length symbol */
#define HE_BASE		0x100	/* value: length or distance base */
#define HE_EOB		0x200
#define HE_SUB		0x300
#define HE_BAD		0x400	/* no code; symbols 286, 287, 30, 31 */
#define HE_KIND		0x700

enum huff_kind { HUFF_LIT, HUFF_DIST, HUFF_CL };

/* RFC 1951 3.2.5: bases and extra bits of lengths 257..285, distances. */
static const unsigned short len_base[29] = {
	3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51,
	59, 67, 83, 99, 115, 131, 163, 195, 227, 258
};
static const unsigned char len_extra[29] = {
	0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4,
	5, 5, 5, 5, 0
};
static const unsigned short dist_base[30] = {
	1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385,
	513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577
};
static const unsigned char dist_extra[30] = {
	0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10,
	10, 11, 11, 12, 12, 13, 13
};
/* RFC 1951 3.2.7: the order of the code length code lengths. */
static const unsigned char cl_order[19] = {
	16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15
};

/* Reverse the low k bits: Huffman codes go out most significant bit first. */
static unsigned
huff_reverse(unsigned code, unsigned k)
{
	code = (code & 0x5555) << 1 | (code >> 1 & 0x5555);
	code = (code & 0x3333) << 2 | (code >> 2 & 0x3333);
	code = (code & 0x0f0f) << 4 | (code >> 4 & 0x0f0f);
	code = (code & 0x00ff) << 8 | (code >> 8 & 0x00ff);
	return code >> (16 - k);
}

/* The decoding table entry for symbol s with a code of k bits. */
static uint32_t
huff_entry(int kind, unsigned s, unsigned k)
{
	if (kind == HUFF_CL || (kind == HUFF_LIT && s < 256))
		return (uint32_t)s << 16 | HE_LIT | k;
	if (kind == HUFF_LIT && s == 256)
		return HE_EOB | k;
	if (kind == HUFF_LIT && s < 286)
		return (uint32_t)len_base[s - 257] << 16 | HE_BASE |
		    (uint32_t)len_extra[s - 257] << 4 | k;
	if (kind == HUFF_DIST && s < 30)
		return (uint32_t)dist_base[s] << 16 | HE_BASE |
		    (uint32_t)dist_extra[s] << 4 | k;
	return HE_BAD | k;
}

/*
 * Build the two-level decoding table t (size entries, root index bits)
 * for code lengths lens[0..n), with codes assigned as in RFC 1951 3.2.2.
 * Returns 0 for a complete code, 1 for an incomplete one that zlib also
 * takes (no codes, or a single one-bit code: "one distance code of one
 * bit", 3.2.7), and -1 for an over-subscribed or otherwise incomplete
 * set, which no conforming encoder makes.  Sub-tables are sized as
 * zlib's inflate_table() sizes them, so zlib's "enough" bounds hold.
 */
static int
huff_table(uint32_t *t, unsigned size, unsigned root, const unsigned char *lens,
    unsigned n, int kind)
{
	unsigned short count[16], left[16], sym[288];
	unsigned i, k, len, code = 0, max = 0, next = 1u << root, sub = 0;
	unsigned subbits = 0, low = 0, rev, fill;
	int avail = 1;
	uint32_t e;

	memset(count, 0, sizeof count);
	for (i = 0; i < n; i++)
		count[lens[i]]++;
	for (len = 1; len <= 15; len++) {
		if ((avail = 2 * avail - count[len]) < 0)
			return -1;		/* over-subscribed */
		if (count[len] != 0)
			max = len;
	}
	if (avail > 0 && max > 1)
		return -1;			/* incomplete */
	for (len = 1, left[1] = 0; len < 15; len++)
		left[len + 1] = left[len] + count[len];
	for (i = 0; i < n; i++)
		if (lens[i] != 0)
			sym[left[lens[i]]++] = (unsigned short)i;
	memcpy(left, count, sizeof left);
	/* A complete code fills every entry; an incomplete one leaves holes. */
	for (i = 0; avail > 0 && i < 1u << root; i++)
		t[i] = HE_BAD;
	for (i = 0, len = 1; len <= max; len++, code <<= 1) {
		for (k = 0; k < count[len]; k++, code++, left[len]--) {
			e = huff_entry(kind, sym[i++], len);
			rev = huff_reverse(code, len);
			if (len <= root) {
				for (fill = rev; fill < 1u << root;
				    fill += 1u << len)
					t[fill] = e;
				continue;
			}
			if (sub == 0 || (rev & ((1u << root) - 1)) != low) {
				/* A new prefix: room for its longest code. */
				int room = 1 << (subbits = len - root);

				while (subbits + root < max &&
				    (room -= left[subbits + root]) > 0)
					subbits++, room <<= 1;
				if (next + (1u << subbits) > size)
					return -1;
				low = rev & ((1u << root) - 1);
				t[low] = (uint32_t)next << 16 | HE_SUB |
				    subbits << 4;
				sub = next;
				next += 1u << subbits;
			}
			for (fill = rev >> root; fill < 1u << subbits;
			    fill += 1u << (len - root))
				t[sub + fill] = e;
		}
	}
	return avail > 0;
}

/* The literal/length code lengths of the fixed code (RFC 1951 3.2.6). */
static void
huff_fixed(unsigned char *lens)
{
	memset(lens, 8, 144);
	memset(lens + 144, 9, 112);
	memset(lens + 256, 7, 24);
	memset(lens + 280, 8, 8);
}

/*
 * Optimal code lengths of at most maxbits for the n frequencies freq[],
 * by package-merge (Larmore and Hirschberg 1990): the lengths are how
 * often each symbol is in the 2m - 2 cheapest items of the last list.
 * At least two symbols get a code, so every code is complete.
 */
static void
huff_lengths(const unsigned *freq, unsigned n, unsigned maxbits,
    unsigned char *len)
{
	unsigned short leaf[286];
	unsigned char isleaf[15][2 * 286];
	uint32_t lw[286], w[2][2 * 286], *pw, *cw;
	unsigned m = 0, i, j, k, lv, np, nl, cur, take;

	memset(len, 0, n);
	for (i = 0; i < n; i++) {
		if (freq[i] == 0)
			continue;
		/* Insertion sort by frequency. */
		for (j = m++; j > 0 && freq[leaf[j - 1]] > freq[i]; j--)
			leaf[j] = leaf[j - 1];
		leaf[j] = (unsigned short)i;
	}
	if (m < 2) {
		/* A lone one-bit code is incomplete: give it a partner. */
		k = m == 1 ? leaf[0] : 0;
		len[k] = 1;
		len[k == 0 ? 1 : 0] = 1;
		return;
	}
	for (i = 0; i < m; i++)
		lw[i] = w[0][i] = freq[leaf[i]], isleaf[0][i] = 1;
	/* No code is longer than m - 1 bits: fewer lists do. */
	maxbits = MIN(maxbits, m - 1);
	for (lv = 1, cur = m; lv < maxbits; lv++) {
		/* Merge the leaves with the pairs of the previous list. */
		pw = w[(lv - 1) & 1], cw = w[lv & 1];
		np = cur / 2, cur = 0, i = 0, j = 0;
		while (cur < 2 * m - 2 && (i < m || j < np)) {
			if (i < m && (j == np ||
			    lw[i] <= pw[2 * j] + pw[2 * j + 1]))
				cw[cur] = lw[i++], isleaf[lv][cur++] = 1;
			else
				cw[cur] = pw[2 * j] + pw[2 * j + 1], j++,
				    isleaf[lv][cur++] = 0;
		}
	}
	for (lv = maxbits, take = 2 * m - 2; lv-- > 0; take = 2 * (take - nl)) {
		for (k = 0, nl = 0; k < take; k++)
			nl += isleaf[lv][k];
		for (k = 0; k < nl; k++)
			len[leaf[k]]++;
	}
}

/* Canonical codes for lengths len[0..n) (RFC 1951 3.2.2), bit-reversed. */
static void
huff_codes(const unsigned char *len, unsigned n, unsigned short *code)
{
	unsigned short count[16], next[16];
	unsigned i, c = 0;

	memset(count, 0, sizeof count);
	for (i = 0; i < n; i++)
		count[len[i]]++;
	for (i = 1, count[0] = 0; i < 16; i++)
		next[i] = (unsigned short)(c = (c + count[i - 1]) << 1);
	for (i = 0; i < n; i++)
		if (len[i] != 0)
			code[i] = (unsigned short)huff_reverse(next[len[i]]++,
			    len[i]);
}

/* Eight bytes, little-endian on any host. */
static uint64_t
inflate_load64(const unsigned char *p)
{
	return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
	    (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 |
	    (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

/* Byte i of the payload followed by the 00 00 ff ff of RFC 7692 7.2.2. */
static unsigned
inflate_byte(const struct inflate_run *s, size_t i)
{
	static const unsigned char tail[4] = { 0x00, 0x00, 0xff, 0xff };

	return i < s->n ? s->in[i] : tail[i - s->n];
}

/*
 * Fill the bit buffer to 56 bits or more.  Past the end it adds zeros;
 * having used one of those means the stream was truncated: -1.
 */
static int
inflate_refill(struct inflate_run *s)
{
	size_t end = s->n + 4;

	if (s->pos + 8 <= s->n) {
		/* Bits past nb come from the same bytes, so OR is safe. */
		s->bb |= inflate_load64(s->in + s->pos) << s->nb;
		s->pos += (63 - s->nb) >> 3;
		s->nb |= 56;
		return 0;
	}
	if (s->pos > end && (uint64_t)(s->pos - end) * 8 > s->nb)
		return -1;
	for (; s->nb <= 56; s->nb += 8, s->pos++)
		if (s->pos < end)
			s->bb |= (uint64_t)inflate_byte(s, s->pos) << s->nb;
	return 0;
}

/* Take k <= 16 bits, the first one lowest. */
static int
inflate_bits(struct inflate_run *s, unsigned k, unsigned *v)
{
	if (s->nb < k && inflate_refill(s) < 0)
		return -1;
	*v = (unsigned)(s->bb & ((1u << k) - 1));
	s->bb >>= k, s->nb -= k;
	return 0;
}

/* Make room for k more output bytes, doubling, but never beyond max. */
static int
inflate_grow(struct inflate_run *s, size_t k)
{
	size_t cap = s->cap;
	unsigned char *p;

	if (k > s->max - s->len)
		return INFL_TOO_BIG;
	while (cap - s->len < k)
		cap = cap < 1024 ? 1024 : cap > s->max / 2 ? s->max : 2 * cap;
	cap = MIN(cap, s->max);
	if ((p = realloc(s->out, cap + INFL_SLACK)) == NULL)
		return INFL_NOMEM;
	s->out = p, s->cap = cap;
	return 0;
}

/*
 * Copy len bytes from dist back, reaching into the previous messages'
 * window when dist passes the start of this one (context takeover).
 */
static int
inflate_copy(struct inflate_run *s, unsigned len, unsigned dist)
{
	const struct inflate *z = s->z;
	unsigned char *d;
	size_t back, from, k;
	int r;

	/* RFC 1951 3.2.2: distances never refer past the start of data. */
	if (dist > s->len + z->wlen)
		return INFL_BAD;
	if (s->cap - s->len < len && (r = inflate_grow(s, len)) != 0)
		return r;
	d = s->out + s->len;
	s->len += len;
	if (dist > s->len - len) {
		back = dist - (s->len - len);
		from = (z->wpos + z->wsize - back) & (z->wsize - 1);
		k = MIN(len, back);
		len -= (unsigned)k;
		while (k-- > 0) {
			*d++ = z->win[from];
			from = (from + 1) & (z->wsize - 1);
		}
	}
	for (; len > 0; len--, d++)
		*d = *(d - dist);
	return 0;
}

/* Decode one Huffman-coded block with the tables in s (RFC 1951 3.2.5). */
static int
inflate_codes(struct inflate_run *s)
{
	const uint32_t *lt = s->lt, *dt = s->dt;
	uint64_t bb = s->bb;
	unsigned nb = s->nb, len, dist, k;
	unsigned char *out = s->out, *d, *from;
	size_t o = s->len, cap = s->cap;
	uint32_t e;
	int r;

	for (;;) {
		/* A refill leaves >= 56 bits: enough for 15+5+15+13. */
		if (nb < 48) {
			if (s->pos + 8 <= s->n) {
				bb |= inflate_load64(s->in + s->pos) << nb;
				s->pos += (63 - nb) >> 3;
				nb |= 56;
			} else {
				s->bb = bb, s->nb = nb;
				if (inflate_refill(s) < 0)
					return INFL_BAD;
				bb = s->bb, nb = s->nb;
			}
		}
		e = lt[bb & ((1u << INFL_LBITS) - 1)];
		if ((e & HE_KIND) == HE_SUB)
			e = lt[(e >> 16) + (unsigned)(bb >> INFL_LBITS &
			    ((1u << (e >> 4 & 15)) - 1))];
		if ((e & HE_KIND) == HE_LIT) {
			bb >>= e & 15, nb -= e & 15;
			if (o == cap) {
				s->len = o;
				if ((r = inflate_grow(s, 1)) != 0)
					return r;
				out = s->out, cap = s->cap;
			}
			out[o++] = (unsigned char)(e >> 16);
			continue;
		}
		if ((e & HE_KIND) != HE_BASE)
			break;
		bb >>= e & 15, nb -= e & 15;
		k = e >> 4 & 15;
		len = (e >> 16) + (unsigned)(bb & ((1u << k) - 1));
		bb >>= k, nb -= k;
		e = dt[bb & ((1u << INFL_DBITS) - 1)];
		if ((e & HE_KIND) == HE_SUB)
			e = dt[(e >> 16) + (unsigned)(bb >> INFL_DBITS &
			    ((1u << (e >> 4 & 15)) - 1))];
		if ((e & HE_KIND) != HE_BASE)
			return INFL_BAD;
		bb >>= e & 15, nb -= e & 15;
		k = e >> 4 & 15;
		dist = (e >> 16) + (unsigned)(bb & ((1u << k) - 1));
		bb >>= k, nb -= k;
		if (dist > o || cap - o < len) {
			s->len = o;
			if ((r = inflate_copy(s, len, dist)) != 0)
				return r;
			out = s->out, o = s->len, cap = s->cap;
			continue;
		}
		d = out + o, from = d - dist, o += len;
		if (dist >= 8) {
			/* Whole words; up to 7 bytes spill into the slack. */
			for (k = 0; k < len; k += 8)
				memcpy(d + k, from + k, 8);
		} else if (dist == 1)
			memset(d, *from, len);
		else	/* dist <= o: every byte from reads is written */
			while (len-- > 0)
				/* NOLINTNEXTLINE(clang-analyzer-core.uninitialized.Assign) */
				*d++ = *from++;
	}
	if ((e & HE_KIND) != HE_EOB)
		return INFL_BAD;
	s->bb = bb >> (e & 15), s->nb = nb - (e & 15), s->len = o;
	return 0;
}

/* A stored block (RFC 1951 3.2.4): LEN, its ones' complement, the bytes. */
static int
inflate_stored(struct inflate_run *s)
{
	size_t end = s->n + 4, len, k;
	int r;

	/* "skip any remaining bits in current partially processed byte" */
	s->pos -= (s->nb >> 3), s->bb = 0, s->nb = 0;
	if (s->pos > end || end - s->pos < 4)
		return INFL_BAD;
	len = inflate_byte(s, s->pos) | inflate_byte(s, s->pos + 1) << 8;
	if ((inflate_byte(s, s->pos + 2) | inflate_byte(s, s->pos + 3) << 8) !=
	    (~len & 0xffff))
		return INFL_BAD;
	if ((s->pos += 4) > end || end - s->pos < len)
		return INFL_BAD;
	if (s->cap - s->len < len && (r = inflate_grow(s, len)) != 0)
		return r;
	k = s->pos < s->n ? MIN(len, s->n - s->pos) : 0;
	memcpy(s->out + s->len, s->in + s->pos, k);
	for (; k < len; k++)
		s->out[s->len + k] = (unsigned char)inflate_byte(s, s->pos + k);
	s->len += len, s->pos += len;
	return 0;
}

/* A block with the fixed codes; distance codes are all five bits. */
static int
inflate_fixed(struct inflate_run *s)
{
	static uint32_t lit[1u << INFL_LBITS], dist[1u << INFL_DBITS];
	static int ready;
	unsigned char lens[288];

	/* Built once: a block of 10 bits must not cost two table builds. */
	if (!ready) {
		huff_fixed(lens);
		huff_table(lit, LEN(lit), INFL_LBITS, lens, 288, HUFF_LIT);
		memset(lens, 5, 32);
		huff_table(dist, LEN(dist), INFL_DBITS, lens, 32, HUFF_DIST);
		ready = 1;
	}
	s->lt = lit, s->dt = dist;
	return inflate_codes(s);
}

/* A block with dynamic codes: read their lengths (RFC 1951 3.2.7). */
static int
inflate_dynamic(struct inflate_run *s)
{
	unsigned char lens[286 + 30], cl[19];
	unsigned nlit, ndist, ncl, i, v, rep, sym;
	uint32_t clt[128], e;

	if (inflate_bits(s, 5, &nlit) < 0 || inflate_bits(s, 5, &ndist) < 0 ||
	    inflate_bits(s, 4, &ncl) < 0)
		return INFL_BAD;
	/* 286, 287 and distances 30, 31 "will never actually occur". */
	if ((nlit += 257) > 286 || (ndist += 1) > 30)
		return INFL_BAD;
	memset(cl, 0, sizeof cl);
	for (i = 0; i < ncl + 4; i++) {
		if (inflate_bits(s, 3, &v) < 0)
			return INFL_BAD;
		cl[cl_order[i]] = (unsigned char)v;
	}
	if (huff_table(clt, 128, 7, cl, 19, HUFF_CL) != 0)
		return INFL_BAD;
	for (i = 0; i < nlit + ndist; i += rep) {
		if (s->nb < 7 && inflate_refill(s) < 0)
			return INFL_BAD;
		if (((e = clt[s->bb & 127]) & HE_KIND) == HE_BAD)
			return INFL_BAD;
		s->bb >>= e & 15, s->nb -= e & 15;
		if ((sym = e >> 16) < 16) {
			lens[i] = (unsigned char)sym, rep = 1;
			continue;
		}
		/* 16 repeats the previous length: there must be one. */
		if ((sym == 16 && i == 0) || inflate_bits(s, sym == 16 ? 2 :
		    sym == 17 ? 3 : 7, &rep) < 0)
			return INFL_BAD;
		rep += sym == 18 ? 11 : 3;
		if (rep > nlit + ndist - i)
			return INFL_BAD;
		memset(lens + i, sym == 16 ? lens[i - 1] : 0, rep);
	}
	/* Without a code for end-of-block the block could not end. */
	if (lens[256] == 0 ||
	    huff_table(s->lit, INFL_LSIZE, INFL_LBITS, lens, nlit,
	    HUFF_LIT) < 0 ||
	    huff_table(s->dist, INFL_DSIZE, INFL_DBITS, lens + nlit, ndist,
	    HUFF_DIST) < 0)
		return INFL_BAD;
	s->lt = s->lit, s->dt = s->dist;
	return inflate_codes(s);
}

/* Set up z; takeover says the peer keeps its window between messages. */
static void
inflate_init(struct inflate *z, int window_bits, int takeover)
{
	memset(z, 0, sizeof *z);
	/* zlib deflates with 9 when asked for 8, so keep 512 bytes anyway. */
	z->wsize = (size_t)1 << (window_bits < 9 ? 9 :
	    window_bits > 15 ? 15 : window_bits);
	z->takeover = takeover;
}

/* Release what inflate_init() and inflate_msg() allocated. */
static void
inflate_free(struct inflate *z)
{
	free(z->win);
	z->win = NULL, z->wlen = 0;
}

/* Keep the last wsize bytes of a message as the next one's window. */
static int
inflate_keep(struct inflate *z, const unsigned char *p, size_t n)
{
	size_t k;

	if (z->win == NULL && (z->win = malloc(z->wsize)) == NULL)
		return INFL_NOMEM;
	if (n >= z->wsize) {
		memcpy(z->win, p + n - z->wsize, z->wsize);
		z->wpos = 0, z->wlen = z->wsize;
		return 0;
	}
	k = MIN(n, z->wsize - z->wpos);
	memcpy(z->win + z->wpos, p, k);
	memcpy(z->win, p + k, n - k);
	z->wpos = (z->wpos + n) & (z->wsize - 1);
	z->wlen = MIN(z->wlen + n, z->wsize);
	return 0;
}

/*
 * Inflate one message: the payload in[0..n) followed by the 00 00 ff ff
 * that RFC 7692 7.2.2 has the receiver append (read in place, not
 * copied).  On INFL_OK *out is a malloc'd buffer of *outlen bytes for
 * the caller to free.  INFL_BAD: corrupt (close 1007); INFL_TOO_BIG:
 * more than max bytes (1009), found without allocating more than max;
 * INFL_NOMEM.  Decoding stops after a final block, and after a block at
 * the end of the input; anything after a final block is ignored.
 */
static int
inflate_msg(struct inflate *z, const unsigned char *in, size_t n,
    unsigned char **out, size_t *outlen, size_t max)
{
	struct inflate_run s;
	uint64_t used, all = (uint64_t)(n + 4) * 8;
	unsigned hdr;
	int r;

	/* A payload of nothing is nothing; zlib sees no error in it either. */
	if (n == 0) {
		*outlen = 0;
		return (*out = malloc(1)) == NULL ? INFL_NOMEM : INFL_OK;
	}
	s.z = z, s.in = in, s.n = n, s.pos = 0, s.bb = 0, s.nb = 0;
	s.len = 0, s.max = max;
	s.cap = n < max / 4 ? MIN(max, 4 * n + 256) : max;
	if ((s.out = malloc(s.cap + INFL_SLACK)) == NULL) {
		*out = NULL, *outlen = 0;
		return INFL_NOMEM;
	}
	do {
		if (inflate_bits(&s, 3, &hdr) < 0 || hdr >> 1 == 3)
			r = INFL_BAD;		/* BTYPE 11 is reserved */
		else if (hdr >> 1 == 0)
			r = inflate_stored(&s);
		else if (hdr >> 1 == 1)
			r = inflate_fixed(&s);
		else
			r = inflate_dynamic(&s);
		if (r != 0)
			goto fail;
		used = (uint64_t)s.pos * 8 - s.nb;
	} while (!(hdr & 1) && used < all);
	r = INFL_BAD;
	if (used > all)
		goto fail;		/* it used zeros past the end */
	if (z->takeover && s.len > 0 &&
	    (r = inflate_keep(z, s.out, s.len)) != 0)
		goto fail;
	*out = s.out, *outlen = s.len;
	return INFL_OK;
fail:
	free(s.out);
	*out = NULL, *outlen = 0;
	return r;
}

/* Release the compressor's tables. */
static void
deflate_free(struct deflate *c)
{
	free(c->head), free(c->prev), free(c->sym);
	c->head = NULL, c->prev = NULL, c->sym = NULL;
}

/* Allocate the compressor's tables (about 260 KiB) and its code maps. */
static int
deflate_init(struct deflate *c)
{
	unsigned i, k;

	memset(c, 0, sizeof *c);
	c->head = calloc((size_t)1 << DEFL_HBITS, sizeof *c->head);
	c->prev = malloc(32768 * sizeof *c->prev);
	c->sym = malloc(DEFL_SYMS * sizeof *c->sym);
	if (c->head == NULL || c->prev == NULL || c->sym == NULL) {
		deflate_free(c);
		return -1;
	}
	c->base = 32768;
	for (i = 0; i < 29; i++)
		for (k = len_base[i]; k < len_base[i] + (1u << len_extra[i]) &&
		    k <= 258; k++)
			c->lsym[k] = (unsigned char)i;
	for (i = 0; i < 30; i++)
		for (k = dist_base[i]; k < dist_base[i] + (1u << dist_extra[i]);
		    k++)
			c->dsym[k <= 256 ? k - 1 : 256 + ((k - 1) >> 7)] =
			    (unsigned char)i;
	huff_fixed(c->flen);
	huff_codes(c->flen, 288, c->fcode);
	memset(c->fdlen, 5, 32);
	huff_codes(c->fdlen, 32, c->fdcode);
	return 0;
}

/* Append k <= 32 bits; a write past the caller's buffer sets full. */
static void
deflate_put(struct deflate *c, uint32_t v, unsigned k)
{
	c->bb |= (uint64_t)v << c->nb;
	if ((c->nb += k) >= 32) {
		if (c->ocap - c->olen >= 4) {
			c->out[c->olen] = (unsigned char)c->bb;
			c->out[c->olen + 1] = (unsigned char)(c->bb >> 8);
			c->out[c->olen + 2] = (unsigned char)(c->bb >> 16);
			c->out[c->olen + 3] = (unsigned char)(c->bb >> 24);
			c->olen += 4;
		} else
			c->full = 1;
		c->bb >>= 32, c->nb -= 32;
	}
}

/* Pad to a byte boundary and write out every whole byte. */
static void
deflate_align(struct deflate *c)
{
	for (c->nb = (c->nb + 7) & ~7u; c->nb > 0; c->nb -= 8, c->bb >>= 8) {
		if (c->olen == c->ocap)
			c->full = 1;
		else
			c->out[c->olen++] = (unsigned char)c->bb;
	}
}

/* Write the block's symbols with the given codes, then end-of-block. */
static void
deflate_symbols(struct deflate *c, const unsigned short *lc,
    const unsigned char *ll, const unsigned short *dc, const unsigned char *dl)
{
	unsigned i, k, len, dist;
	uint32_t s;

	for (i = 0; i < c->nsym; i++) {
		if ((s = c->sym[i]) < 256) {
			deflate_put(c, lc[s], ll[s]);
			continue;
		}
		/* Code and extra bits together: 20 bits, then 28 at most. */
		len = s & 0xffff, dist = s >> 16;
		k = c->lsym[len];
		deflate_put(c, lc[257 + k] | (len - len_base[k]) << ll[257 + k],
		    ll[257 + k] + len_extra[k]);
		k = c->dsym[dist <= 256 ? dist - 1 : 256 + ((dist - 1) >> 7)];
		deflate_put(c, dc[k] | (dist - dist_base[k]) << dl[k],
		    dl[k] + dist_extra[k]);
	}
	deflate_put(c, lc[256], ll[256]);
}

/* Stored blocks (RFC 1951 3.2.4) for in[from..to), 65535 bytes at most each. */
static void
deflate_stored(struct deflate *c, size_t from, size_t to)
{
	size_t k;

	do {
		k = MIN(to - from, 65535);
		deflate_put(c, 0, 3);
		deflate_align(c);
		deflate_put(c, (uint32_t)(k | (~k & 0xffff) << 16), 32);
		deflate_align(c);
		if (c->ocap - c->olen < k)
			c->full = 1;
		else
			memcpy(c->out + c->olen, c->in + from, k);
		c->olen += c->full ? 0 : k;
		from += k;
	} while (from < to);
}

/*
 * Run-length code the code lengths (RFC 1951 3.2.7: 16 repeats the last
 * length 3-6 times, 17 and 18 give 3-10 and 11-138 zeros) into rle[] as
 * symbol | extra << 5.  Returns the count.
 */
static unsigned
deflate_rle(const unsigned char *lens, unsigned n, unsigned *rle)
{
	unsigned i, j, run, k, nr = 0;

	for (i = 0; i < n; i = j) {
		for (j = i + 1; j < n && lens[j] == lens[i]; j++)
			;
		run = j - i;
		if (lens[i] == 0) {
			for (; run >= 11; run -= k)
				k = MIN(run, 138),
				    rle[nr++] = 18 | (k - 11) << 5;
			if (run >= 3)
				rle[nr++] = 17 | (run - 3) << 5, run = 0;
		} else {
			rle[nr++] = lens[i], run--;
			for (; run >= 3; run -= k)
				k = MIN(run, 6), rle[nr++] = 16 | (k - 3) << 5;
		}
		while (run-- > 0)
			rle[nr++] = lens[i];
	}
	return nr;
}

/*
 * Code the symbols gathered for input bstart..done as one block, in
 * whichever of stored, fixed or dynamic (RFC 1951 3.2.3) is shortest.
 */
static void
deflate_block(struct deflate *c)
{
	unsigned short clcode[19];
	unsigned char lens[286 + 30], cllen[19];
	unsigned rle[286 + 30], clfreq[19], i, nr;
	unsigned nlit = 286, ndist = 30, ncl = 19;
	uint64_t dyn = 17, fix = 3, extra = 0, stored = 0;
	size_t k, left = c->done - c->bstart, bit = c->nb;

	c->lfreq[256] = 1;
	huff_lengths(c->lfreq, 286, 15, c->llen);
	huff_lengths(c->dfreq, 30, 15, c->dlen);
	while (c->llen[nlit - 1] == 0)
		nlit--;
	while (ndist > 1 && c->dlen[ndist - 1] == 0)
		ndist--;
	memcpy(lens, c->llen, nlit);
	memcpy(lens + nlit, c->dlen, ndist);
	nr = deflate_rle(lens, nlit + ndist, rle);
	memset(clfreq, 0, sizeof clfreq);
	for (i = 0; i < nr; i++)
		clfreq[rle[i] & 31]++;
	huff_lengths(clfreq, 19, 7, cllen);
	while (ncl > 4 && cllen[cl_order[ncl - 1]] == 0)
		ncl--;
	for (i = 0; i < 29; i++)
		extra += (uint64_t)c->lfreq[257 + i] * len_extra[i];
	for (i = 0; i < 30; i++)
		extra += (uint64_t)c->dfreq[i] * dist_extra[i];
	for (i = 0; i < 286; i++) {
		dyn += (uint64_t)c->lfreq[i] * c->llen[i];
		fix += (uint64_t)c->lfreq[i] * c->flen[i];
	}
	for (i = 0; i < 30; i++) {
		dyn += (uint64_t)c->dfreq[i] * c->dlen[i];
		fix += (uint64_t)c->dfreq[i] * 5;
	}
	dyn += 3 * ncl + 2 * clfreq[16] + 3 * clfreq[17] + 7 * clfreq[18];
	for (i = 0; i < 19; i++)
		dyn += (uint64_t)clfreq[i] * cllen[i];
	do {
		k = MIN(left, 65535), left -= k;
		stored += 3 + (8 - (bit + 3) % 8) % 8 + 32 + 8 * (uint64_t)k;
		bit = 0;
	} while (left > 0);
	if (stored <= dyn + extra && stored <= fix + extra)
		deflate_stored(c, c->bstart, c->done);
	else if (fix <= dyn) {
		deflate_put(c, 2, 3);		/* BFINAL 0, BTYPE 01 */
		deflate_symbols(c, c->fcode, c->flen, c->fdcode, c->fdlen);
	} else {
		huff_codes(c->llen, 286, c->lcode);
		huff_codes(c->dlen, 30, c->dcode);
		huff_codes(cllen, 19, clcode);
		deflate_put(c, 4 | (nlit - 257) << 3 | (ndist - 1) << 8 |
		    (ncl - 4) << 13, 17);	/* BFINAL 0, BTYPE 10 */
		for (i = 0; i < ncl; i++)
			deflate_put(c, cllen[cl_order[i]], 3);
		for (i = 0; i < nr; i++) {
			k = rle[i] & 31;
			deflate_put(c, clcode[k], cllen[k]);
			if (k >= 16)
				deflate_put(c, rle[i] >> 5, k == 16 ? 2 :
				    k == 17 ? 3 : 7);
		}
		deflate_symbols(c, c->lcode, c->llen, c->dcode, c->dlen);
	}
	c->bstart = c->done, c->nsym = 0;
	memset(c->lfreq, 0, sizeof c->lfreq);
	memset(c->dfreq, 0, sizeof c->dfreq);
}

/* Record a literal, or a match when len != 0; a full buffer ends the block. */
static void
deflate_sym(struct deflate *c, unsigned lit, unsigned len, unsigned dist)
{
	if (len == 0) {
		c->sym[c->nsym++] = lit;
		c->lfreq[lit]++;
		c->done++;
	} else {
		c->sym[c->nsym++] = (uint32_t)dist << 16 | len;
		c->lfreq[257 + c->lsym[len]]++;
		c->dfreq[c->dsym[dist <= 256 ? dist - 1 :
		    256 + ((dist - 1) >> 7)]]++;
		c->done += len;
	}
	if (c->nsym == DEFL_SYMS)
		deflate_block(c);
}

/* Put position i on its hash chain; returns the previous head. */
static uint32_t
deflate_insert(struct deflate *c, size_t i, uint32_t wmask)
{
	const unsigned char *p = c->in + i;
	uint32_t h, cand, pos = c->base + (uint32_t)i;

	h = ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24) * 0x9E3779B1u >> (32 - DEFL_HBITS);
	cand = c->head[h];
	c->prev[pos & wmask] = (uint16_t)(pos - cand <= wmask ? pos - cand : 0);
	c->head[h] = pos;
	return cand;
}

/* How many of the first limit bytes at a and b agree. */
static unsigned
deflate_same(const unsigned char *a, const unsigned char *b, unsigned limit)
{
	unsigned k = 0;
	uint64_t x, y;

	for (; k + 8 <= limit; k += 8) {
		memcpy(&x, a + k, 8), memcpy(&y, b + k, 8);
		if (x != y)
			break;
	}
	while (k < limit && a[k] == b[k])
		k++;
	return k;
}

/*
 * The longest match for in[i..] along the chain from cand, no farther
 * back than wmask (so within 2^window_bits), in at most chain steps.
 */
static unsigned
deflate_match(struct deflate *c, size_t i, size_t n, uint32_t cand,
    unsigned chain, uint32_t wmask, unsigned *dist)
{
	const unsigned char *s = c->in + i, *q;
	uint32_t pos = c->base + (uint32_t)i, d;
	unsigned best = 2, len, limit = (unsigned)MIN(n - i, 258);

	while ((d = pos - cand) <= wmask && d > 0) {
		q = s - d;
		/* Only a match that is longer can end like this one. */
		if (q[best] == s[best] && q[best - 1] == s[best - 1] &&
		    (len = deflate_same(q, s, limit)) > best) {
			best = len, *dist = d;
			if (len >= DEFL_NICE || len == limit)
				break;
		}
		if (--chain == 0 || c->prev[cand & wmask] == 0)
			break;
		cand -= c->prev[cand & wmask];
	}
	return best > 2 ? best : 0;
}

/*
 * Compress in[0..n) as one message (RFC 7692 7.2.1): non-final blocks,
 * then the empty stored block of a sync flush without its 00 00 ff ff,
 * no context kept, no distance past 2^window_bits - 1.  LZ77 with hash
 * chains and zlib's lazy matching.  Returns the length written to out,
 * or 0 if it would pass cap (then send the message uncompressed); cap
 * DEFL_BOUND(n) always suffices.
 */
static size_t
deflate_msg(struct deflate *c, const unsigned char *in, size_t n,
    int window_bits, unsigned char *out, size_t cap)
{
	uint32_t wmask = (1u << (window_bits < 8 ? 8 : window_bits > 15 ? 15 :
	    window_bits)) - 1, cand;
	unsigned len = 0, dist = 0, plen = 0, pdist = 0;
	size_t i, end;
	int pending = 0;

	if (n > DEFL_IN_MAX)
		return 0;
	if (UINT32_MAX - c->base < n + 32768) {
		/* Older positions must stay a window behind: start over. */
		memset(c->head, 0, ((size_t)1 << DEFL_HBITS) * sizeof *c->head);
		c->base = 32768;
	}
	c->in = in, c->out = out, c->olen = 0, c->ocap = cap;
	c->bb = 0, c->nb = 0, c->full = 0, c->nsym = 0;
	c->bstart = 0, c->done = 0;
	memset(c->lfreq, 0, sizeof c->lfreq);
	memset(c->dfreq, 0, sizeof c->dfreq);
	for (i = 0; i < n; ) {
		len = 0;
		if (n - i >= 4) {
			cand = deflate_insert(c, i, wmask);
			if (!pending || plen < DEFL_LAZY)
				len = deflate_match(c, i, n, cand, pending &&
				    plen >= DEFL_GOOD ? DEFL_CHAIN / 4 :
				    DEFL_CHAIN, wmask, &dist);
		}
		if (pending && plen >= 3 && len <= plen) {
			/* The match at i - 1 wins: code it, hash its bytes. */
			deflate_sym(c, 0, plen, pdist);
			for (end = i - 1 + plen, i++; i < end; i++)
				if (n - i >= 4)
					deflate_insert(c, i, wmask);
			pending = 0;
			continue;
		}
		if (pending)
			deflate_sym(c, in[i - 1], 0, 0);
		pending = 1, plen = len, pdist = dist, i++;
	}
	if (pending)
		deflate_sym(c, in[n - 1], 0, 0);
	if (c->nsym > 0)
		deflate_block(c);
	deflate_put(c, 0, 3);		/* the empty stored block */
	deflate_align(c);
	c->base += (uint32_t)n + 32768;
	return c->full ? 0 : c->olen;
}

/* ==== HTTP upgrade ==== */

/*
 * Find the end of an HTTP head in buf[0..len), scanning from 'from'.
 * Returns the offset just past the blank line, or 0 if not there yet.
 * Bare LF line ends are tolerated.
 */
static size_t
http_head_end(const char *buf, size_t len, size_t from)
{
	size_t i;

	for (i = from; i < len; i++) {
		if (buf[i] != '\n')
			continue;
		if (i + 1 < len && buf[i + 1] == '\n')
			return i + 2;
		if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n')
			return i + 3;
	}
	return 0;
}

/* Next line of a head in place: NUL-terminate it, strip CR, advance *pp. */
static char *
http_line(char **pp)
{
	char *s = *pp, *nl = strchr(s, '\n');

	if (nl == NULL)
		return NULL;
	*nl = '\0';
	if (nl > s && nl[-1] == '\r')
		nl[-1] = '\0';
	*pp = nl + 1;
	return s;
}

/*
 * Parse a complete head (request or response) in place.  buf holds len
 * bytes ending with the blank line; buf[len] must be addressable and is
 * left as it was (it may be the first byte of a frame).
 * Returns 0, or -1 on anything malformed.
 */
static int
http_parse(char *buf, size_t len, struct http *m, int response)
{
	char save = buf[len];
	int r;

	buf[len] = '\0';
	r = http_parse_lines(buf, len, m, response);
	buf[len] = save;
	return r;
}

/* http_parse() on a NUL-terminated head: lines split at their ends. */
static int
http_parse_lines(char *buf, size_t len, struct http *m, int response)
{
	char *p = buf, *line, *colon, *v, *e, *sp, *s;
	unsigned char ch;
	size_t i;

	memset(m, 0, sizeof *m);
	for (i = 0; i < len; i++) {
		ch = (unsigned char)buf[i];
		if (ch == '\0' || (ch < 0x20 && ch != '\r' && ch != '\n' &&
		    ch != '\t') || ch == 0x7f)
			return -1;
		if (ch == '\r' && (i + 1 == len || buf[i + 1] != '\n'))
			return -1;	/* a bare CR is not a line end */
	}
	if ((line = http_line(&p)) == NULL)
		return -1;
	if (response) {
		/* HTTP/1.1 101 Switching Protocols */
		if (strncmp(line, "HTTP/1.", 7) != 0 || (sp = strchr(line,
		    ' ')) == NULL)
			return -1;
		*sp++ = '\0';
		m->version = line;
		if (strlen(sp) < 3 || sp[0] < '1' || sp[0] > '5' ||
		    sp[1] < '0' || sp[1] > '9' || sp[2] < '0' || sp[2] > '9' ||
		    (sp[3] != '\0' && sp[3] != ' '))
			return -1;
		m->status = (sp[0] - '0') * 100 + (sp[1] - '0') * 10 +
		    (sp[2] - '0');
		m->reason = sp[3] ? sp + 4 : sp + 3;
	} else {
		/* GET /path?query HTTP/1.1 */
		m->method = line;
		if ((sp = strchr(line, ' ')) == NULL || sp == line)
			return -1;
		*sp++ = '\0';
		m->target = sp;
		if ((sp = strchr(sp, ' ')) == NULL || sp == m->target)
			return -1;
		*sp++ = '\0';
		m->version = sp;
		if (strchr(sp, ' ') != NULL || strncmp(sp, "HTTP/", 5) != 0)
			return -1;
	}
	while ((line = http_line(&p)) != NULL && *line != '\0') {
		if (*line == ' ' || *line == '\t')
			return -1;		/* obsolete line folding */
		if ((colon = strchr(line, ':')) == NULL || colon == line)
			return -1;
		for (s = line; s < colon; s++)
			if (*s == ' ' || *s == '\t')
				return -1;	/* no space before the colon */
		if (m->nh == HEADERS_MAX)
			return -1;
		*colon = '\0';
		for (v = colon + 1; *v == ' ' || *v == '\t'; v++)
			;
		for (e = v + strlen(v); e > v && (e[-1] == ' ' ||
		    e[-1] == '\t'); e--)
			;
		*e = '\0';
		m->h[m->nh].name = line;
		m->h[m->nh].value = v;
		m->nh++;
	}
	return 0;
}

/* Value of header 'name' (case-insensitive); *count gets how many there are. */
static const char *
http_header(struct http *m, const char *name, int *count)
{
	const char *v = NULL;
	int i, n = 0;

	for (i = 0; i < m->nh; i++)
		if (strcasecmp(m->h[i].name, name) == 0) {
			if (n++ == 0)
				v = m->h[i].value;
		}
	if (count != NULL)
		*count = n;
	return v;
}

/* Does a comma-separated header value hold 'token' (case-insensitive)? */
static int
http_has_token(const char *v, const char *token)
{
	size_t tl = strlen(token), n;
	const char *e;

	while (v != NULL && *v != '\0') {
		while (*v == ' ' || *v == '\t' || *v == ',')
			v++;
		for (e = v; *e != '\0' && *e != ','; e++)
			;
		for (n = (size_t)(e - v); n > 0 && (v[n - 1] == ' ' ||
		    v[n - 1] == '\t'); n--)
			;
		if (n == tl && strncasecmp(v, token, tl) == 0)
			return 1;
		v = e;
	}
	return 0;
}

/*
 * Sec-WebSocket-Extensions (RFC 6455 9.1), for permessage-deflate (RFC
 * 7692 7.1).  A value is a list of extensions, each a token and ";"
 * parameters, a parameter a token with an optional token or quoted-string
 * value.  The parsers below take one element at *pp and move past it.
 */
static int
ext_tchar(int ch)
{
	return ch > 0x20 && ch < 0x7f && strchr("\"(),/:;<=>?@[\\]{}", ch) ==
	    NULL;
}

static void
ext_ows(const char **pp)
{
	while (**pp == ' ' || **pp == '\t')
		(*pp)++;
}

/* A token; its length, 0 if there is none. */
static size_t
ext_token(const char **pp)
{
	const char *p = *pp;

	while (ext_tchar((unsigned char)**pp))
		(*pp)++;
	return (size_t)(*pp - p);
}

/*
 * A parameter's value after "=": token or quoted-string, unquoted into
 * v[16] (longer ones are cut, which no valid value is).  -1: malformed.
 */
static int
ext_value(const char **pp, char v[16])
{
	const char *p = *pp;
	size_t n = 0;

	if (*p != '"') {
		n = ext_token(pp);
		memcpy(v, p, MIN(n, 15));
		v[MIN(n, 15)] = '\0';
		return n > 0 ? 0 : -1;
	}
	for (p++; *p != '"'; p++) {
		if (*p == '\\')
			p++;
		if (*p == '\0')
			return -1;
		if (n < 15)
			v[n++] = *p;
	}
	v[n] = '\0';
	*pp = p + 1;
	return 0;
}

/* Window bits, "8" to "15" exactly (7.1.2.1); -1 if not. */
static int
pmd_bits(const char *v)
{
	unsigned long b;

	if (v[0] == '0' || parse_uint(v, 15, &b) < 0 || b < 8)
		return -1;
	return (int)b;
}

/*
 * One extension of a list.  1: permessage-deflate, its parameters all
 * known (RFC 7692 7.1), none twice, values valid; *fl says which were
 * there (PMD_*), *bits the server_max_window_bits.  0: another extension,
 * or a permessage-deflate with a bad parameter.  -1: the list is
 * malformed.
 */
static int
pmd_parse(const char **pp, unsigned *fl, int *bits)
{
	static const char *const names[] = { "server_no_context_takeover",
	    "client_no_context_takeover", "server_max_window_bits",
	    "client_max_window_bits" };
	const char *name;
	char v[16];
	size_t n, i;
	int ok, hasv;

	*fl = 0, *bits = 15;
	ext_ows(pp);
	if (**pp == ',') {		/* an empty element (RFC 9110 5.6.1) */
		(*pp)++;
		return 0;
	}
	name = *pp;
	if ((n = ext_token(pp)) == 0)
		return -1;
	ok = n == 18 && strncasecmp(name, "permessage-deflate", 18) == 0;
	for (ext_ows(pp); **pp == ';'; ext_ows(pp)) {
		(*pp)++;
		ext_ows(pp);
		name = *pp;
		if ((n = ext_token(pp)) == 0)
			return -1;
		ext_ows(pp);
		if ((hasv = **pp == '=')) {
			(*pp)++;
			ext_ows(pp);
			if (ext_value(pp, v) < 0)
				return -1;
		}
		for (i = 0; i < LEN(names); i++)
			if (strlen(names[i]) == n &&
			    strncasecmp(names[i], name, n) == 0)
				break;
		if (i == LEN(names) || (*fl & 1u << i) || (i < 2 && hasv) ||
		    (i == 2 && (!hasv || (*bits = pmd_bits(v)) < 0)) ||
		    (i == 3 && hasv && pmd_bits(v) < 0))
			ok = 0;
		*fl |= 1u << (i & 7) | (i == 3 && hasv ? PMD_CBITS_VALUE : 0);
	}
	if (**pp == ',')
		(*pp)++;
	else if (**pp != '\0')
		return -1;
	return ok;
}

/*
 * Does a Sec-WebSocket-Extensions header of a client's request m hold a
 * permessage-deflate offer we accept?  Not one with server_max_window_bits
 * below 15: the one compressed form of a message that every client shares
 * is made with a 32 KiB window.
 */
static int
pmd_offered(struct http *m, int *sbits)
{
	const char *p;
	unsigned fl;
	int i, r, bits;

	for (i = 0; i < m->nh; i++) {
		if (strcasecmp(m->h[i].name, "Sec-WebSocket-Extensions") != 0)
			continue;
		for (p = m->h[i].value; *p != '\0'; ) {
			if ((r = pmd_parse(&p, &fl, &bits)) < 0)
				break;	/* malformed: the rest is unreadable */
			if (r > 0 && bits == 15) {
				/* 7.1.2.1: accepting it means echoing it. */
				*sbits = (fl & PMD_SBITS) != 0;
				return 1;
			}
		}
	}
	return 0;
}

/*
 * The upstream's answer to our offer: exactly one permessage-deflate,
 * client_max_window_bits with a value if at all (7.1.2.2).  Returns -1
 * if unacceptable, else whether it keeps its window between messages.
 */
static int
pmd_accepted(const char *v)
{
	unsigned fl;
	int bits;

	if (pmd_parse(&v, &fl, &bits) != 1 || *v != '\0' ||
	    ((fl & PMD_CBITS) && !(fl & PMD_CBITS_VALUE)))
		return -1;
	return !(fl & PMD_SERVER_NCT);
}

/* ==== Messages and queues ==== */

/*
 *  msg->data:  [ FRAME_HEAD bytes of room ][ payload ... ]
 *                        ^p (header written right before the payload)
 */
static struct msg *
msg_new(size_t cap)
{
	struct msg *m;

	if (cap > SIZE_MAX - sizeof *m - FRAME_HEAD - 4 ||
	    (m = malloc(sizeof *m + FRAME_HEAD + 4 + cap)) == NULL)
		return NULL;
	m->refs = 1;
	m->urgent = 0;
	m->p = m->data + FRAME_HEAD;
	m->len = 0;
	return m;
}

/*
 * Header bytes of an unmasked frame with len payload bytes.
 *
 *   0               1               2               3
 *   0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
 *  +-+-+-+-+-------+-+-------------+-------------------------------+
 *  |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
 *  |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
 *  |N|V|V|V|       |S|             |   (if payload len==126/127)   |
 *  | |1|2|3|       |K|             |                               |
 *  +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
 *  |     Masking-key, if MASK set to 1 (client to server only)     |
 *  +---------------------------------------------------------------+
 */
static size_t
ws_head_len(uint64_t len)
{
	return len < 126 ? 2 : len <= 0xFFFF ? 4 : 10;
}

/* Write the header of an unmasked final frame; returns its length. */
static size_t
ws_head_write(unsigned char *h, int op, uint64_t len)
{
	size_t n = ws_head_len(len), i;

	h[0] = (unsigned char)(0x80 | op);
	if (n == 2)
		h[1] = (unsigned char)len;
	else if (n == 4) {
		h[1] = 126;
		h[2] = (unsigned char)(len >> 8);
		h[3] = (unsigned char)len;
	} else {
		h[1] = 127;
		for (i = 0; i < 8; i++)
			h[2 + i] = (unsigned char)(len >> (56 - 8 * i));
	}
	return n;
}

/* Put a final frame header in front of plen payload bytes in m. */
static void
msg_seal(struct msg *m, int op, size_t plen)
{
	unsigned char *pl = m->data + FRAME_HEAD;

	m->p = pl - ws_head_len(plen);
	m->len = ws_head_write(m->p, op, plen) + plen;
}

/* A whole frame for one peer; masked (fresh key) when we are the client. */
static struct msg *
msg_frame(int op, int masked, const void *payload, size_t n)
{
	const unsigned char *src = payload;
	struct msg *m;
	unsigned char *pl, key[4];
	size_t i;

	if ((m = msg_new(n + 4)) == NULL)
		return NULL;
	pl = m->data + FRAME_HEAD;
	if (!masked) {
		if (n > 0)
			memcpy(pl, src, n);
		msg_seal(m, op, n);
		return m;
	}
	rand_bytes(key, sizeof key);
	memcpy(pl, key, 4);
	for (i = 0; i < n; i++)
		pl[4 + i] = src[i] ^ key[i & 3];
	msg_seal(m, op, n);
	m->p[1] |= 0x80;
	m->len += 4;
	return m;
}

/* Raw bytes (an HTTP head) as a message. */
static struct msg *
msg_raw(const void *p, size_t n)
{
	struct msg *m;

	if ((m = msg_new(n)) == NULL)
		return NULL;
	memcpy(m->p, p, n);
	m->len = n;
	return m;
}

static void
msg_unref(struct msg *m)
{
	if (m != NULL && --m->refs == 0)
		free(m);
}

/*
 * Queue m (taking a reference).  Urgent entries go after the urgent ones
 * already queued but ahead of data, and never into a frame that is half on
 * the wire.  Returns -1 when memory is short.
 */
static int
queue_push(struct queue *q, struct msg *m, int urgent)
{
	struct msg **v;
	unsigned i, cap, at;

	if (q->n == q->cap) {
		cap = q->cap ? q->cap * 2 : 4;
		if ((v = malloc(cap * sizeof *v)) == NULL)
			return -1;
		for (i = 0; i < q->n; i++)
			v[i] = q->v[(q->head + i) & (q->cap - 1)];
		free(q->v);
		q->v = v, q->cap = cap, q->head = 0;
	}
	if (!urgent)
		at = q->n;
	else {
		at = q->n == 0 ? 0 :
		    q->nurgent + (q->off > 0 && !q->v[q->head]->urgent);
		q->nurgent++;
		m->urgent = 1;
		/* Open a slot at 'at' by moving the entries before it back one. */
		q->head = (q->head - 1) & (q->cap - 1);
		for (i = 0; i < at; i++)
			q->v[(q->head + i) & (q->cap - 1)] =
			    q->v[(q->head + i + 1) & (q->cap - 1)];
	}
	q->v[(q->head + at) & (q->cap - 1)] = m;
	q->n++;
	q->bytes += m->len;
	m->refs++;
	return 0;
}

/* Drop n sent bytes from the front. */
static void
queue_consume(struct queue *q, size_t n)
{
	struct msg *m;
	size_t rest;

	while (n > 0 && q->n > 0) {
		m = q->v[q->head];
		rest = m->len - q->off;
		if (n < rest) {
			q->off += n;
			q->bytes -= n;
			return;
		}
		n -= rest;
		q->bytes -= rest;
		q->off = 0;
		q->head = (q->head + 1) & (q->cap - 1);
		q->n--;
		if (m->urgent)
			q->nurgent--;
		msg_unref(m);
	}
}

/*
 * Bytes queued behind the frame at the head (the one on the wire): what
 * --max-queue limits.  A client busy with one large message, however
 * large, is not behind for that alone.
 */
static size_t
queue_behind(const struct queue *q)
{
	return q->n == 0 ? 0 : q->bytes - (q->v[q->head]->len - q->off);
}

/* Copy up to n bytes from the front without consuming them. */
static size_t
queue_peek(struct queue *q, unsigned char *dst, size_t n)
{
	size_t got = 0, k, off = q->off;
	struct msg *m;
	unsigned i;

	for (i = 0; i < q->n && got < n; i++, off = 0) {
		m = q->v[(q->head + i) & (q->cap - 1)];
		k = MIN(m->len - off, n - got);
		memcpy(dst + got, m->p + off, k);
		got += k;
	}
	return got;
}

/* Drop everything queued; keep a half-sent head if asked (its frame must end). */
static void
queue_clear(struct queue *q, int keep_partial)
{
	struct msg *m;
	unsigned keep = keep_partial && q->n > 0 && q->off > 0;

	while (q->n > keep) {
		m = q->v[(q->head + q->n - 1) & (q->cap - 1)];
		q->bytes -= m->len - (q->n == 1 ? q->off : 0);
		q->n--;
		if (m->urgent)
			q->nurgent--;
		msg_unref(m);
	}
	/* Cleared for a close frame: keep the array, it needs no malloc. */
	if (q->n == 0 && !keep_partial) {
		free(q->v);
		memset(q, 0, sizeof *q);
	}
}

/* ==== WebSocket frames (RFC 6455 section 5) ==== */

/* Bytes of header a frame needs, given the first hlen bytes of it. */
static size_t
ws_head_need(const unsigned char *h, unsigned hlen)
{
	size_t n = 2;

	if (hlen < 2)
		return 2;
	if ((h[1] & 0x7F) == 126)
		n += 2;
	else if ((h[1] & 0x7F) == 127)
		n += 8;
	return n + (h[1] & 0x80 ? 4 : 0);
}

static int
close_code_valid(unsigned code)
{
	/* RFC 6455 7.4: 1004-1006 and 1015 are never sent; 1012-1014 are IANA's. */
	return (code >= 1000 && code <= 1003) ||
	    (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

/*
 * The most a message of c's may be: --max-message, but a compressed one
 * from a client whose messages go nowhere is held whole and inflated only
 * to be checked, so it gets ZCLIENT_MAX at most (its inflated form may
 * still reach --max-message): a client cannot make wsfwd hold 16 MiB, nor
 * spend seconds inflating, per connection.
 */
static size_t
ws_limit(struct conn *c)
{
	return c->d.zmsg && c->kind == CONN_CLIENT && !opt.tunnel ?
	    MIN(opt.max_message, ZCLIENT_MAX) : opt.max_message;
}

/* Check a complete frame header; returns 0 or the close code to fail with. */
static int
ws_head(struct conn *c)
{
	struct wsdec *d = &c->d;
	const unsigned char *h = d->hdr;
	uint64_t len = h[1] & 0x7F;
	size_t need;
	struct msg *m;
	int i, at = 2;

	d->fin = h[0] >> 7;
	d->op = h[0] & 0x0F;
	d->masked = h[1] >> 7;
	/*
	 * RSV2-3 belong to no extension we agree to (5.2).  RSV1 marks a
	 * compressed message under permessage-deflate, on its first frame
	 * only, never on a control frame (RFC 7692 6).
	 */
	if ((h[0] & 0x30) || ((h[0] & 0x40) && (!c->deflate ||
	    d->op == WS_OP_CONT || (d->op & 0x8))))
		return CLOSE_PROTOCOL;
	if (d->op > WS_OP_BINARY && (d->op < WS_OP_CLOSE || d->op > WS_OP_PONG))
		return CLOSE_PROTOCOL;
	/* 5.1: a client masks every frame; a server masks none. */
	if (d->masked != (c->kind == CONN_CLIENT))
		return CLOSE_PROTOCOL;
	if (len == 126) {
		len = (uint64_t)h[2] << 8 | h[3];
		at = 4;
	} else if (len == 127) {
		for (len = 0, i = 2; i < 10; i++)
			len = len << 8 | h[i];
		at = 10;
		if (len >> 63)
			return CLOSE_PROTOCOL;
	}
	if (d->masked)
		memcpy(d->mask, h + at, 4);
	d->left = len;
	d->mpos = 0;
	if (d->op & 0x8) {
		/* 5.5: control frames are short and never fragmented. */
		if (!d->fin || len > CTRL_MAX)
			return CLOSE_PROTOCOL;
		d->ctllen = 0;
		return 0;
	}
	if (d->op == WS_OP_CONT && d->msgop == 0)
		return CLOSE_PROTOCOL;
	if (d->op != WS_OP_CONT) {
		if (d->msgop != 0)
			return CLOSE_PROTOCOL;
		d->msgop = d->op;
		d->msglen = 0;
		d->utf8 = 0;
		d->zmsg = (h[0] & 0x40) != 0;
		/* A client's messages go nowhere unless tunnelled or inflated. */
		d->keep = c->kind == CONN_UPSTREAM || opt.tunnel || d->zmsg;
	}
	if (len > ws_limit(c) - d->msglen)
		return CLOSE_TOO_BIG;
	d->msglen += len;
	if (!d->keep)
		return 0;
	/* The message is kept, in the buffer it will be sent from. */
	need = (size_t)d->msglen;
	if (d->msg == NULL || need > d->msgcap) {
		if (d->msg != NULL && need < d->msgcap * 2)
			need = MIN(d->msgcap * 2, opt.max_message);
		m = d->msg;
		if (m == NULL)
			m = msg_new(need);
		else if ((m = realloc(m, sizeof *m + FRAME_HEAD + 4 + need)) !=
		    NULL)
			m->p = m->data + FRAME_HEAD;
		if (m == NULL) {
			logmsg(L_ERR, "[%u] %s: out of memory for a %zu-byte "
			    "message", c->id, c->peer, need);
			return CLOSE_TOO_BIG;
		}
		d->msg = m;
		d->msgcap = need;
	}
	return 0;
}

/* Payload bytes of a data frame, already unmasked. */
static int
ws_data(struct conn *c, const unsigned char *p, size_t n)
{
	struct wsdec *d = &c->d;

	if (d->msgop == WS_OP_TEXT && !d->zmsg && utf8_check(&d->utf8, p, n) < 0)
		return CLOSE_BAD_DATA;
	if (d->keep)
		memcpy(d->msg->data + FRAME_HEAD + (d->msglen - d->left), p, n);
	return 0;
}

/* A control frame is complete: answer a ping, take a close. */
static int
ws_control(struct conn *c)
{
	struct wsdec *d = &c->d;
	unsigned code = 0;
	uint32_t st = 0;

	if (d->op == WS_OP_PONG && c->pinged && d->ctllen == 0) {
		c->pinged = 0;		/* the answer to our keepalive */
		return 0;
	}
	if (d->op == WS_OP_PING || d->op == WS_OP_PONG) {
		if (opt.tunnel) {	/* the other side answers */
			tunnel_ctl(c, d->op, d->ctl, d->ctllen);
			return 0;
		}
		/*
		 * 5.5.3 lets us answer only some pings: a peer that pings and
		 * never reads does not get to fill our memory with pongs.
		 */
		if (d->op == WS_OP_PING && c->q.bytes < opt.max_queue)
			conn_send_ctl(c, WS_OP_PONG, d->ctl, d->ctllen);
		return 0;
	}
	/* 5.5.1: a close body is empty or a valid code plus UTF-8 reason. */
	if (d->ctllen == 1)
		return CLOSE_PROTOCOL;
	if (d->ctllen >= 2) {
		code = (unsigned)d->ctl[0] << 8 | d->ctl[1];
		if (!close_code_valid(code))
			return CLOSE_PROTOCOL;
		if (utf8_check(&st, d->ctl + 2, d->ctllen - 2) < 0 ||
		    (st & 0xff) != 0)
			return CLOSE_BAD_DATA;
	}
	conn_closed_by_peer(c, code);
	return 0;
}

/*
 * A compressed message (RSV1) is whole in d->msg: inflate it, to no more
 * than --max-message (a deflate bomb gets 1009), and check a text's UTF-8
 * (1007; corrupt data too).  With out, the result goes into a message of
 * its own, *plen bytes; without, it is only checked.
 */
static int
ws_inflate(struct conn *c, int op, struct msg **out, size_t *plen)
{
	struct wsdec *d = &c->d;
	unsigned char *p;
	uint32_t st = 0;
	size_t n;
	int r;

	r = inflate_msg(c->zi != NULL ? c->zi : &zinf, d->msg->data +
	    FRAME_HEAD, (size_t)d->msglen, &p, &n, opt.max_message);
	if (r != INFL_OK)
		return r == INFL_TOO_BIG ? CLOSE_TOO_BIG : r == INFL_NOMEM ?
		    CLOSE_INTERNAL : CLOSE_BAD_DATA;
	r = 0;
	if (op == WS_OP_TEXT && (utf8_check(&st, p, n) < 0 || (st & 0xff)))
		r = CLOSE_BAD_DATA;
	else if (out != NULL && (*out = msg_new(n)) == NULL)
		r = CLOSE_INTERNAL;
	else if (out != NULL)
		memcpy((*out)->data + FRAME_HEAD, p, n);
	free(p);
	*plen = n;
	return r;
}

/* The last byte of a frame arrived. */
static int
ws_frame_end(struct conn *c)
{
	struct wsdec *d = &c->d;
	struct msg *m, *z = NULL;
	size_t plen;
	int op = d->msgop, code;

	if (d->op & 0x8)
		return ws_control(c);
	if (!d->fin)
		return 0;
	if (op == WS_OP_TEXT && !d->zmsg && (d->utf8 & 0xff) != 0)
		return CLOSE_BAD_DATA;	/* message ends inside a code point */
	d->msgop = 0;
	if (!d->keep)
		return 0;	/* clients' messages go nowhere */
	m = d->msg;
	plen = (size_t)d->msglen;
	if (d->zmsg) {
		if ((code = ws_inflate(c, op, c->kind == CONN_UPSTREAM ||
		    opt.tunnel ? &z : NULL, &plen)) != 0)
			return code;
		if (z != NULL)
			m = z;		/* the inflated message goes on */
	}
	if (c->kind == CONN_UPSTREAM) {
		msg_seal(m, op, plen);
		upstream_deliver(c->up, m);
	} else if (opt.tunnel)
		tunnel_send(c, op, m->data + FRAME_HEAD, plen);
	msg_unref(z);
	if (c->state == CONN_DEAD)
		return 0;	/* conn_kill() has let go of d->msg */
	/*
	 * Keep a small buffer nobody else holds (its message was copied into
	 * a batch, or nobody listens) for the next message; a plain client's
	 * goes, as what it sends is rare and dropped.
	 */
	if (d->msg->refs == 1 && d->msgcap <= REUSE_MAX &&
	    (c->kind == CONN_UPSTREAM || opt.tunnel))
		return 0;
	msg_unref(d->msg);
	d->msg = NULL;
	d->msgcap = 0;
	return 0;
}

/*
 * Push n received bytes through the decoder.  Payload is unmasked in
 * place.  Returns 0, or the close code the connection must fail with.
 * Stops early when a close frame ends the conversation.
 */
static int
ws_feed(struct conn *c, unsigned char *p, size_t n)
{
	struct wsdec *d = &c->d;
	size_t k, i;
	int code;

	while (n > 0 && (c->state == CONN_OPEN || c->state == CONN_CLOSING)) {
		if (d->stage == DEC_HEAD) {
			k = MIN(ws_head_need(d->hdr, d->hlen) - d->hlen, n);
			memcpy(d->hdr + d->hlen, p, k);
			d->hlen += (unsigned char)k, p += k, n -= k;
			if (d->hlen < ws_head_need(d->hdr, d->hlen))
				continue;
			d->hlen = 0;
			if ((code = ws_head(c)) != 0)
				return code;
			d->stage = DEC_PAYLOAD;
			if (d->left > 0)
				continue;
		} else {
			k = d->left < n ? (size_t)d->left : n;
			if (d->masked) {
				for (i = 0; i < k; i++)
					p[i] ^= d->mask[(d->mpos + i) & 3];
				d->mpos = (unsigned)((d->mpos + k) & 3);
			}
			if (d->op & 0x8) {
				memcpy(d->ctl + d->ctllen, p, k);
				d->ctllen += (unsigned)k;
			} else if ((code = ws_data(c, p, k)) != 0)
				return code;
			d->left -= k, p += k, n -= k;
			if (d->left > 0)
				continue;
		}
		d->stage = DEC_HEAD;
		if ((code = ws_frame_end(c)) != 0)
			return code;
	}
	return 0;
}

/* ==== TLS (BearSSL) ==== */

/*
 * The engine is driven by hand, never through br_sslio: each call moves
 * what can move now and returns, and poll() waits on what the engine's
 * state says it wants (SENDREC: socket writable, RECVREC: readable).
 */

static void
ca_dn(void *ctx, const void *buf, size_t len)
{
	struct ca_loader *ld = ctx;

	if (len > sizeof ld->dn - ld->dnlen) {
		ld->dn_overflow = 1;
		return;
	}
	memcpy(ld->dn + ld->dnlen, buf, len);
	ld->dnlen += len;
}

static void
ca_push(void *ctx, const void *buf, size_t len)
{
	struct ca_loader *ld = ctx;

	x509_feed(&ld->dc, buf, len);
}

/*
 * Push bytes to an X.509 decoder that still wants them.  One that failed
 * or finished must not be run again: it would execute past its end (a
 * crash the PEM fuzz target found, reachable from a server's certificate
 * with -k).
 */
static void
x509_feed(br_x509_decoder_context *dc, const void *buf, size_t len)
{
	if (br_x509_decoder_last_error(dc) == BR_ERR_X509_TRUNCATED)
		br_x509_decoder_push(dc, buf, len);
}

/* Turn the certificate just decoded into a trust anchor (one malloc). */
static int
ca_add(struct ca_loader *ld)
{
	const br_x509_pkey *pk;
	br_x509_trust_anchor *ta, *v;
	unsigned char *mem;
	size_t klen;

	if (ld->dn_overflow || br_x509_decoder_last_error(&ld->dc) != 0 ||
	    (pk = br_x509_decoder_get_pkey(&ld->dc)) == NULL)
		return -1;
	if (pk->key_type == BR_KEYTYPE_RSA)
		klen = pk->key.rsa.nlen + pk->key.rsa.elen;
	else if (pk->key_type == BR_KEYTYPE_EC)
		klen = pk->key.ec.qlen;
	else
		return -1;
	if ((v = realloc(anchors, (nanchors + 1) * sizeof *v)) == NULL ||
	    (mem = malloc(ld->dnlen + klen)) == NULL)
		die("out of memory");
	anchors = v;
	ta = &anchors[nanchors++];
	memset(ta, 0, sizeof *ta);
	memcpy(mem, ld->dn, ld->dnlen);
	ta->dn.data = mem;
	ta->dn.len = ld->dnlen;
	ta->flags = br_x509_decoder_isCA(&ld->dc) ? BR_X509_TA_CA : 0;
	ta->pkey.key_type = pk->key_type;
	mem += ld->dnlen;
	if (pk->key_type == BR_KEYTYPE_RSA) {
		memcpy(mem, pk->key.rsa.n, pk->key.rsa.nlen);
		memcpy(mem + pk->key.rsa.nlen, pk->key.rsa.e, pk->key.rsa.elen);
		ta->pkey.key.rsa.n = mem;
		ta->pkey.key.rsa.nlen = pk->key.rsa.nlen;
		ta->pkey.key.rsa.e = mem + pk->key.rsa.nlen;
		ta->pkey.key.rsa.elen = pk->key.rsa.elen;
	} else {
		memcpy(mem, pk->key.ec.q, pk->key.ec.qlen);
		ta->pkey.key.ec.curve = pk->key.ec.curve;
		ta->pkey.key.ec.q = mem;
		ta->pkey.key.ec.qlen = pk->key.ec.qlen;
	}
	return 0;
}

/* Read a whole (small) file; NULL with errno set on failure. */
static unsigned char *
file_read(const char *path, size_t *len)
{
	unsigned char *buf = NULL, *v;
	size_t cap = 0, n = 0;
	ssize_t r;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return NULL;
	for (;;) {
		if (n == cap) {
			if (cap >= CA_FILE_MAX || (v = realloc(buf, cap ?
			    cap * 2 : 65536)) == NULL) {
				free(buf);
				close(fd);
				errno = EFBIG;
				return NULL;
			}
			buf = v, cap = cap ? cap * 2 : 65536;
		}
		if ((r = read(fd, buf + n, cap - n)) < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	if (r < 0) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}

/*
 * Add every certificate of a PEM bundle in buf as a trust anchor.
 * Returns how many, or -1 if buf is not PEM.
 */
static long
ca_parse(const unsigned char *buf, size_t len)
{
	static struct ca_loader ld;
	br_pem_decoder_context pc;
	const unsigned char *p;
	size_t n, before = nanchors;
	const char *name;
	int incert = 0, pass;

	br_pem_decoder_init(&pc);
	for (p = buf, pass = 0; pass < 2; pass++) {
		/* A newline after the file ends a last line that has none. */
		if (pass == 1)
			p = (const unsigned char *)"\n", len = 1;
		while (len > 0) {
			n = br_pem_decoder_push(&pc, p, len);
			p += n, len -= n;
			switch (br_pem_decoder_event(&pc)) {
			case BR_PEM_BEGIN_OBJ:
				name = br_pem_decoder_name(&pc);
				incert = strcmp(name, "CERTIFICATE") == 0 ||
				    strcmp(name, "X509 CERTIFICATE") == 0;
				ld.dnlen = 0, ld.dn_overflow = 0;
				br_x509_decoder_init(&ld.dc, ca_dn, &ld);
				br_pem_decoder_setdest(&pc, incert ? ca_push :
				    NULL, incert ? &ld : NULL);
				break;
			case BR_PEM_END_OBJ:
				if (incert && ca_add(&ld) < 0)
					logmsg(L_DEBUG, "skipped a certificate "
					    "BearSSL cannot use");
				incert = 0;
				break;
			case BR_PEM_ERROR:
				return -1;
			}
		}
	}
	return (long)(nanchors - before);
}

/* Load a PEM bundle file; returns how many anchors it gave. */
static size_t
ca_load(const char *path)
{
	unsigned char *buf;
	size_t len;
	long n;

	if ((buf = file_read(path, &len)) == NULL) {
		warnx("CA bundle %s: %s; give a readable PEM bundle with "
		    "--ca FILE", path, strerror(errno));
		exit(2);
	}
	n = ca_parse(buf, len);
	free(buf);
	if (n < 0) {
		warnx("%s is not a valid PEM file; give a PEM bundle with "
		    "--ca FILE", path);
		exit(2);
	}
	return (size_t)n;
}

/* Trust anchors: --ca, else the first system bundle that exists. */
static void
ca_setup(void)
{
	static const char *bundles[] = {
		"/etc/ssl/certs/ca-certificates.crt",	/* Debian, Alpine */
		"/etc/pki/tls/certs/ca-bundle.crt",	/* Fedora, RHEL */
		"/etc/ssl/cert.pem",			/* OpenWrt, BSD, macOS */
		"/etc/ssl/ca-bundle.pem",		/* openSUSE */
		"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
		"/usr/local/share/certs/ca-root-nss.crt",	/* FreeBSD */
		"/etc/ssl/certs/ca-bundle.crt",
	};
	const char *path = opt.ca;
	size_t i;

	if (opt.insecure) {
		warnx("warning: -k: TLS certificates and host names are NOT "
		    "verified");
		return;
	}
	for (i = 0; path == NULL && i < LEN(bundles); i++)
		if (access(bundles[i], R_OK) == 0)
			path = bundles[i];
	if (path == NULL) {
		warnx("no CA bundle found for wss://; give one with --ca FILE "
		    "(or -k to skip verification)");
		exit(2);
	}
	if (ca_load(path) == 0) {
		warnx("%s holds no usable certificate; give a PEM bundle "
		    "with --ca FILE", path);
		exit(2);
	}
	logmsg(L_DEBUG, "%zu trust anchors from %s", nanchors, path);
}

/*
 * -k: an X.509 engine that trusts any chain.  It only decodes the first
 * (end-entity) certificate, for the key the handshake needs.
 */
static void
xi_start_chain(const br_x509_class **ctx, const char *server_name)
{
	struct x509_insecure *xi = (struct x509_insecure *)(void *)ctx;

	(void)server_name;
	xi->ncert = 0;
}

static void
xi_start_cert(const br_x509_class **ctx, uint32_t length)
{
	struct x509_insecure *xi = (struct x509_insecure *)(void *)ctx;

	(void)length;
	if (xi->ncert == 0)
		br_x509_decoder_init(&xi->dc, NULL, NULL);
}

static void
xi_append(const br_x509_class **ctx, const unsigned char *buf, size_t len)
{
	struct x509_insecure *xi = (struct x509_insecure *)(void *)ctx;

	if (xi->ncert == 0)
		x509_feed(&xi->dc, buf, len);
}

static void
xi_end_cert(const br_x509_class **ctx)
{
	struct x509_insecure *xi = (struct x509_insecure *)(void *)ctx;

	xi->ncert++;
}

static unsigned
xi_end_chain(const br_x509_class **ctx)
{
	struct x509_insecure *xi = (struct x509_insecure *)(void *)ctx;

	if (xi->ncert == 0)
		return BR_ERR_X509_EMPTY_CHAIN;
	return (unsigned)br_x509_decoder_last_error(&xi->dc);
}

static const br_x509_pkey *
xi_get_pkey(const br_x509_class *const *ctx, unsigned *usages)
{
	struct x509_insecure *xi = (struct x509_insecure *)(void *)ctx;

	if (usages != NULL)
		*usages = BR_KEYTYPE_KEYX | BR_KEYTYPE_SIGN;
	return br_x509_decoder_get_pkey(&xi->dc);
}

static const br_x509_class xi_class = {
	sizeof(struct x509_insecure), xi_start_chain, xi_start_cert,
	xi_append, xi_end_cert, xi_end_chain, xi_get_pkey
};

/* Is host an IP literal?  BearSSL can only match names. */
static int
host_is_ip(const char *host)
{
	unsigned char a[16];

	return inet_pton(AF_INET, host, a) == 1 ||
	    inet_pton(AF_INET6, host, a) == 1;
}

/*
 * What a modern server needs and no more (br_ssl_client_init_full would
 * link every suite BearSSL has): TLS 1.2 (1.0 and 1.1 are deprecated by
 * RFC 8996), ECDHE with AES-GCM or ChaCha20-Poly1305, RSA or ECDSA
 * certificates signed with SHA-1 or SHA-2.
 */
static void
tls_profile(struct tls *t)
{
	static const uint16_t suites[] = {
		BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	};
	static const struct {
		int id;
		const br_hash_class *vt;
	} hashes[] = {	/* no SHA-1: no CA has signed with it since 2016 */
		{ br_sha256_ID, &br_sha256_vtable },
		{ br_sha384_ID, &br_sha384_vtable },
		{ br_sha512_ID, &br_sha512_vtable },
	};
	br_ssl_engine_context *eng = &t->sc.eng;
	struct timespec ts;
	size_t i;

	br_ssl_client_zero(&t->sc);
	br_ssl_engine_set_versions(eng, BR_TLS12, BR_TLS12);
	br_ssl_engine_set_suites(eng, suites, LEN(suites));
	br_ssl_engine_set_default_ec(eng);
	/* i31: RSA only checks a chain, once per connection; 2 KB less than i62. */
	br_ssl_engine_set_rsavrfy(eng, &br_rsa_i31_pkcs1_vrfy);
	br_ssl_engine_set_default_ecdsa(eng);
	br_ssl_engine_set_prf_sha256(eng, &br_tls12_sha256_prf);
	br_ssl_engine_set_prf_sha384(eng, &br_tls12_sha384_prf);
	br_ssl_engine_set_default_aes_gcm(eng);
	/*
	 * ChaCha20-Poly1305 is listed after AES-GCM, so servers pick it only
	 * when they lack AES hardware; the portable code is enough for it.
	 */
	br_ssl_engine_set_chapol(eng, &br_sslrec_in_chapol_vtable,
	    &br_sslrec_out_chapol_vtable);
	br_ssl_engine_set_chacha20(eng, &br_chacha20_ct_run);
	br_ssl_engine_set_poly1305(eng, &br_poly1305_ctmul_run);
	br_x509_minimal_init(&t->xc, &br_sha256_vtable, anchors, nanchors);
	/*
	 * The date, from our own clock: left to itself BearSSL calls time(),
	 * which Debian's 32-bit builds of it take with a 32-bit time_t, and
	 * every certificate would look expired from 2038.  Days since 0 AD.
	 */
	clock_gettime(CLOCK_REALTIME, &ts);
	br_x509_minimal_set_time(&t->xc, (uint32_t)(ts.tv_sec / 86400 + 719528),
	    (uint32_t)(ts.tv_sec % 86400));
	br_x509_minimal_set_rsa(&t->xc, br_ssl_engine_get_rsavrfy(eng));
	br_x509_minimal_set_ecdsa(&t->xc, br_ssl_engine_get_ec(eng),
	    br_ssl_engine_get_ecdsa(eng));
	for (i = 0; i < LEN(hashes); i++) {
		br_ssl_engine_set_hash(eng, hashes[i].id, hashes[i].vt);
		br_x509_minimal_set_hash(&t->xc, hashes[i].id, hashes[i].vt);
	}
	if (opt.insecure) {
		t->xi.vtable = &xi_class;
		br_ssl_engine_set_x509(eng, &t->xi.vtable);
	} else
		br_ssl_engine_set_x509(eng, &t->xc.vtable);
}

/* Give c a client engine for url: SNI and name check on the URL's host. */
static int
tls_start(struct conn *c, const struct url *u)
{
	struct tls *t;

	if ((t = calloc(1, sizeof *t)) == NULL)
		return -1;
	tls_profile(t);
	br_ssl_engine_set_buffer(&t->sc.eng, t->buf, sizeof t->buf, 1);
	if (!br_ssl_client_reset(&t->sc, host_is_ip(u->host) ? NULL : u->host,
	    0)) {
		free(t);
		return -1;
	}
	c->tls = t;
	return 0;
}

static const char *
tls_alert(int a)
{
	switch (a) {
	case 0: return "close_notify";
	case 10: return "unexpected_message";
	case 20: return "bad_record_mac";
	case 40: return "handshake_failure";
	case 42: return "bad_certificate";
	case 43: return "unsupported_certificate";
	case 44: return "certificate_revoked";
	case 45: return "certificate_expired";
	case 46: return "certificate_unknown";
	case 47: return "illegal_parameter";
	case 48: return "unknown_ca";
	case 50: return "decode_error";
	case 51: return "decrypt_error";
	case 70: return "protocol_version";
	case 71: return "insufficient_security";
	case 80: return "internal_error";
	case 112: return "unrecognized_name";
	default: return "alert";
	}
}

/* BearSSL's error codes in words a person can act on. */
static void
tls_why(struct tls *t, int err)
{
	const char *s;

	if (err >= BR_ERR_SEND_FATAL_ALERT) {
		snprintf(t->why, sizeof t->why, "TLS: we sent alert %d (%s)",
		    err - BR_ERR_SEND_FATAL_ALERT,
		    tls_alert(err - BR_ERR_SEND_FATAL_ALERT));
		return;
	}
	if (err >= BR_ERR_RECV_FATAL_ALERT) {
		snprintf(t->why, sizeof t->why, "TLS handshake failure: server "
		    "sent alert %d (%s)", err - BR_ERR_RECV_FATAL_ALERT,
		    tls_alert(err - BR_ERR_RECV_FATAL_ALERT));
		return;
	}
	switch (err) {
	case BR_ERR_X509_NOT_TRUSTED:
		s = "certificate not trusted: unknown issuer (see --ca)";
		break;
	case BR_ERR_X509_EXPIRED:
		s = "certificate expired or not yet valid";
		break;
	case BR_ERR_X509_BAD_SERVER_NAME:
		s = "certificate name mismatch: not issued for this host";
		break;
	case BR_ERR_X509_NOT_CA:
		s = "certificate chain: an issuer is not a CA";
		break;
	case BR_ERR_X509_BAD_SIGNATURE:
		s = "certificate chain: bad signature";
		break;
	case BR_ERR_X509_WEAK_PUBLIC_KEY:
		s = "certificate has a weak public key";
		break;
	case BR_ERR_X509_EMPTY_CHAIN:
		s = "server sent no certificate";
		break;
	case BR_ERR_UNSUPPORTED_VERSION:
		s = "TLS: server does not speak TLS 1.2";
		break;
	case BR_ERR_BAD_CIPHER_SUITE:
		s = "TLS: no cipher suite in common";
		break;
	case BR_ERR_BAD_MAC:
		s = "TLS: bad record MAC";
		break;
	default:
		snprintf(t->why, sizeof t->why, "TLS error %d%s", err,
		    err >= BR_ERR_X509_OK && err < 64 ? " (certificate)" : "");
		return;
	}
	snprintf(t->why, sizeof t->why, "%s", s);
}

/*
 * Move records between socket and engine until neither side can.
 * Returns 1 if anything moved, 0 if not, -1 on a dead socket.
 */
static int
tls_pump(struct conn *c)
{
	br_ssl_engine_context *eng = &c->tls->sc.eng;
	unsigned char *p;
	unsigned st;
	size_t len;
	ssize_t n;
	int moved = 0;

	for (;;) {
		st = br_ssl_engine_current_state(eng);
		if (st & BR_SSL_CLOSED)
			return moved;
		if (st & BR_SSL_SENDREC) {
			p = br_ssl_engine_sendrec_buf(eng, &len);
			if ((n = send(c->fd, p, len, MSG_NOSIGNAL)) > 0) {
				br_ssl_engine_sendrec_ack(eng, (size_t)n);
				moved = 1;
				continue;
			}
			if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
			    errno != EINTR)
				goto broken;
		}
		if (st & BR_SSL_RECVREC) {
			p = br_ssl_engine_recvrec_buf(eng, &len);
			if ((n = recv(c->fd, p, len, 0)) > 0) {
				br_ssl_engine_recvrec_ack(eng, (size_t)n);
				moved = 1;
				continue;
			}
			if (n == 0) {
				snprintf(c->tls->why, sizeof c->tls->why,
				    "EOF without close_notify");
				return -1;
			}
			if (errno != EAGAIN && errno != EWOULDBLOCK &&
			    errno != EINTR)
				goto broken;
		}
		return moved;
	}
broken:
	snprintf(c->tls->why, sizeof c->tls->why, "%s", strerror(errno));
	return -1;
}

/* conn_read() for TLS: plaintext out of the engine, pumping as needed. */
static ssize_t
tls_read(struct conn *c, unsigned char *buf, size_t cap)
{
	br_ssl_engine_context *eng = &c->tls->sc.eng;
	unsigned char *p;
	size_t len, got = 0;
	unsigned st;
	int r, err;

	for (;;) {
		st = br_ssl_engine_current_state(eng);
		if (st & BR_SSL_RECVAPP) {
			p = br_ssl_engine_recvapp_buf(eng, &len);
			len = MIN(len, cap - got);
			memcpy(buf + got, p, len);
			br_ssl_engine_recvapp_ack(eng, len);
			if ((got += len) == cap)
				return (ssize_t)got;
			continue;
		}
		if (got > 0)
			return (ssize_t)got;
		if (st & BR_SSL_CLOSED) {
			if ((err = br_ssl_engine_last_error(eng)) == 0)
				return 0;	/* close_notify */
			tls_why(c->tls, err);
			return -1;
		}
		if ((r = tls_pump(c)) < 0)
			return -1;
		if (r == 0)
			return -2;
	}
}

/* conn_flush() for TLS: queued bytes into the engine, records out. */
static int
tls_flush(struct conn *c)
{
	br_ssl_engine_context *eng = &c->tls->sc.eng;
	struct queue *q = &c->q;
	unsigned char *p;
	size_t len;
	int moved, r;

	do {
		for (moved = 0; q->n > 0 && (br_ssl_engine_current_state(eng) &
		    BR_SSL_SENDAPP); moved = 1) {
			p = br_ssl_engine_sendapp_buf(eng, &len);
			len = queue_peek(q, p, len);
			br_ssl_engine_sendapp_ack(eng, len);
			queue_consume(q, len);
		}
		if (moved)
			br_ssl_engine_flush(eng, 0);
		if ((r = tls_pump(c)) < 0)
			return -1;
	} while (moved || r > 0);
	if ((br_ssl_engine_current_state(eng) & BR_SSL_CLOSED) &&
	    br_ssl_engine_last_error(eng) != 0) {
		tls_why(c->tls, br_ssl_engine_last_error(eng));
		return -1;
	}
	return 0;
}

/* poll() events from the engine's state. */
static short
tls_events(struct conn *c)
{
	unsigned st = br_ssl_engine_current_state(&c->tls->sc.eng);

	return (short)((st & BR_SSL_SENDREC ? POLLOUT : 0) |
	    (st & BR_SSL_RECVREC ? POLLIN : 0));
}

/*
 * Plaintext waiting inside the engine, or an engine that closed while
 * the last read was being served: poll() can see neither.
 */
static int
tls_pending(struct conn *c)
{
	unsigned st;

	if (c->tls == NULL)
		return 0;
	st = br_ssl_engine_current_state(&c->tls->sc.eng);
	/* A paused upstream's plaintext waits; a closed engine never does. */
	if ((st & BR_SSL_CLOSED) != 0)
		return 1;
	return (st & BR_SSL_RECVAPP) != 0 && !(c->kind == CONN_UPSTREAM &&
	    c->state == CONN_OPEN && route_behind(c->route));
}

/* ==== Connections: the I/O seam ==== */

static struct conn *
conn_new(int fd, int kind)
{
	struct conn *c, **v;
	struct pollfd *p;
	size_t cap;

	/* Both grow here, so that the loop never allocates (or fails) later. */
	if (nconns == capconns) {
		cap = capconns ? capconns * 2 : 64;
		if ((v = realloc(conns, cap * sizeof *v)) == NULL)
			return NULL;
		conns = v;
		if ((p = realloc(pfds, (POLL_FIXED + cap) * sizeof *p)) == NULL)
			return NULL;
		pfds = p, capconns = cap;
	}
	if ((c = calloc(1, sizeof *c)) == NULL)
		return NULL;
	c->fd = fd;
	c->kind = (unsigned char)kind;
	c->id = ++next_id;
	c->last_rx = now;
	c->state = kind == CONN_CLIENT ? CONN_HANDSHAKE : CONN_CONNECTING;
	conns[nconns++] = c;
	if (kind == CONN_CLIENT)
		nclient_conns++;
	return c;
}

/* Close the socket and drop all state; the struct goes at the turn's end. */
static void
conn_kill(struct conn *c)
{
	if (c->state == CONN_DEAD)
		return;
	client_unlink(c);
	if (c->kind == CONN_CLIENT && c->route != NULL &&
	    c->route->tclient == c) {
		c->route->tclient = NULL;	/* a waiting tunnel client */
		c->route->linger_at = now;
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	queue_clear(&c->q, 0);
	free(c->hs);
	c->hs = NULL;
	msg_unref(c->d.msg);
	c->d.msg = NULL;
	free(c->tls);
	c->tls = NULL;
	if (c->zi != NULL)
		inflate_free(c->zi);
	free(c->zi);
	c->zi = NULL;
	if (c->up != NULL && c->up->c == c)
		c->up->c = NULL;
	if (c->kind == CONN_CLIENT)
		nclient_conns--;
	if (c->ip != NULL)
		ip_release(c->ip);
	c->ip = NULL;
	c->state = CONN_DEAD;
}

/*
 * Have conn_flush() run for c, in the order conns were marked: at the end
 * of this turn, or of the next if a flush is already under way.
 */
static void
conn_mark(struct conn *c)
{
	if (!c->dirty) {
		c->dirty = 1;
		c->dnext = NULL;
		if (dirty_tail != NULL)
			dirty_tail->dnext = c;
		else
			dirty = c;
		dirty_tail = c;
		ndirty++;
	}
}

/* Read up to cap bytes: n > 0, 0 at EOF, -1 on error, -2 when nothing is there. */
static ssize_t
conn_read(struct conn *c, unsigned char *buf, size_t cap)
{
	ssize_t n;

	if (c->tls != NULL)
		return tls_read(c, buf, cap);
	do
		n = recv(c->fd, buf, cap, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return -2;
	return n;
}

/*
 * Hand as much of the queue as the kernel takes to one sendmsg() per batch.
 * Returns -1 when the connection is broken.  In CONN_DRAIN an empty queue
 * is followed by our FIN.
 */
static int
conn_flush(struct conn *c)
{
	struct iovec iov[IOV_BATCH];
	struct msghdr mh;
	struct queue *q = &c->q;
	struct msg *m;
	size_t total;
	ssize_t n;
	unsigned k;

	if (c->tls != NULL && tls_flush(c) < 0)
		return -1;
	while (c->tls == NULL && q->n > 0) {
		total = 0;
		for (k = 0; k < q->n && k < IOV_BATCH; k++) {
			m = q->v[(q->head + k) & (q->cap - 1)];
			iov[k].iov_base = m->p + (k == 0 ? q->off : 0);
			iov[k].iov_len = m->len - (k == 0 ? q->off : 0);
			total += iov[k].iov_len;
		}
		memset(&mh, 0, sizeof mh);
		mh.msg_iov = iov;
		mh.msg_iovlen = k;
		n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
		queue_consume(q, (size_t)n);
		if ((size_t)n < total)
			return 0;	/* socket buffer full: wait for POLLOUT */
	}
	if (c->state == CONN_DRAIN && !c->shut && q->n == 0 &&
	    (c->tls == NULL || !(tls_events(c) & POLLOUT))) {
		shutdown(c->fd, SHUT_WR);
		c->shut = 1;
	}
	return 0;
}

/* Why the last I/O on c failed, in words. */
static const char *
conn_error(struct conn *c)
{
	return c->tls != NULL && c->tls->why[0] ? c->tls->why :
	    strerror(errno);
}

/* Queue m for c; a connection that cannot take it is lost. */
static int
conn_queue(struct conn *c, struct msg *m, int urgent)
{
	if (m == NULL || queue_push(&c->q, m, urgent) < 0) {
		msg_unref(m);
		if (c->kind == CONN_CLIENT && c->joined)
			client_oom(c);
		else
			conn_lost(c, "out of memory");
		return -1;
	}
	msg_unref(m);
	conn_mark(c);
	return 0;
}

/*
 * Send an HTTP head at once, queueing only what the socket does not take:
 * a client that is never sent a message never needs a queue array.
 */
static int
conn_send_head(struct conn *c, const char *p, size_t n)
{
	ssize_t k = 0;

	if (c->q.n == 0 && c->tls == NULL) {
		do
			k = send(c->fd, p, n, MSG_NOSIGNAL);
		while (k < 0 && errno == EINTR);
		if (k < 0)
			k = 0;	/* the flush will meet the error, or the room */
		if ((size_t)k == n)
			return 0;
	}
	if (conn_queue(c, msg_raw(p, n), 1) < 0)
		return -1;
	if (k > 0)	/* half sent, so that no close can cut it short */
		c->q.off = (size_t)k, c->q.bytes -= (size_t)k;
	return 0;
}

static void
conn_send_ctl(struct conn *c, int op, const void *p, size_t n)
{
	conn_queue(c, msg_frame(op, c->kind == CONN_UPSTREAM, p, n), 1);
}

/*
 * Send a close frame (code 0: empty body).  Urgent: the peer broke the
 * protocol or closed first, so pending data is dropped and we go straight
 * to draining; an upstream's close goes out at once, as the connection is
 * about to be dropped.  Otherwise the close follows the data and we wait
 * for the peer's answer.
 */
static void
conn_send_close(struct conn *c, unsigned code, int urgent)
{
	unsigned char body[2];

	body[0] = (unsigned char)(code >> 8);
	body[1] = (unsigned char)code;
	conn_close_body(c, body, code ? 2 : 0, urgent);
}

/* The same with a whole close body: a code and a reason, or nothing. */
static void
conn_close_body(struct conn *c, const unsigned char *body, size_t n,
    int urgent)
{
	if (urgent)
		queue_clear(&c->q, 1);
	if (conn_queue(c, msg_frame(WS_OP_CLOSE, c->kind == CONN_UPSTREAM,
	    body, n), 0) < 0)
		return;
	c->close_code = n >= 2 ? (unsigned)body[0] << 8 | body[1] : 0;
	c->state = urgent ? CONN_DRAIN : CONN_CLOSING;
	c->deadline = timer_at(now + CLOSE_TIMEOUT_MS);
	if (urgent && c->kind == CONN_UPSTREAM)
		conn_flush(c);		/* best effort */
}

/* Flush what is queued, send FIN, wait for the peer's FIN (bounded). */
static void
conn_drain(struct conn *c)
{
	c->state = CONN_DRAIN;
	c->deadline = timer_at(now + CLOSE_TIMEOUT_MS);
	conn_mark(c);
}

/* The connection broke (EOF, reset, timeout, out of memory). */
static void
conn_lost(struct conn *c, const char *why)
{
	if (c->kind == CONN_UPSTREAM && c->up != NULL &&
	    c->state != CONN_DRAIN) {
		upstream_fail(c->up, "%s", why);
		return;
	}
	client_leave(c, why);
	conn_kill(c);
}

/* The peer broke RFC 6455: answer with the close code it earned. */
static void
conn_fail(struct conn *c, int code)
{
	char why[64];

	snprintf(why, sizeof why, "protocol error, sent close %d", code);
	if (c->kind == CONN_UPSTREAM) {
		conn_send_close(c, (unsigned)code, 1);
		if (c->up != NULL)
			upstream_fail(c->up, "%s", why);
		return;
	}
	client_leave(c, why);
	logmsg(L_DEBUG, "[%u] %s: %s", c->id, c->peer, why);
	conn_send_close(c, (unsigned)code, 1);
}

/* Make a close reason safe for a log line. */
static const char *
log_clean(const unsigned char *p, size_t n)
{
	static char out[CTRL_MAX + 1];
	size_t i;

	for (i = 0; i < n && i < CTRL_MAX; i++)
		out[i] = p[i] < 0x20 || p[i] == 0x7f ? '?' : (char)p[i];
	out[i] = '\0';
	return out;
}

/* A valid close frame arrived (code 0: it had no body). */
static void
conn_closed_by_peer(struct conn *c, unsigned code)
{
	char why[192];
	const char *reason = log_clean(c->d.ctl + 2,
	    c->d.ctllen > 2 ? c->d.ctllen - 2 : 0);

	if (code)
		snprintf(why, sizeof why, "close %u%s%s", code,
		    *reason ? " " : "", reason);
	else
		snprintf(why, sizeof why, "close without code");
	if (c->state == CONN_CLOSING) {
		/* The answer to our close: the exchange is over. */
		conn_drain(c);
		return;
	}
	if (opt.tunnel)
		tunnel_close(c);	/* the other side gets the same */
	if (c->kind == CONN_CLIENT) {
		client_leave(c, why);
		conn_send_close(c, code, 1);
		return;
	}
	conn_send_close(c, code, 1);
	if (c->up == NULL || opt.tunnel)
		return;
	if (c->up->cat) {
		if (code != CLOSE_NORMAL)
			logmsg(L_ERR, "%s: server sent %s", c->up->url->text, why);
		cat_done = code == CLOSE_NORMAL ? 0 : 1;
		return;
	}
	upstream_fail(c->up, "%s", why);
}

/*
 * Bytes of an HTTP head arrived.  A head that came whole in one read is
 * parsed where it lies; only a head split over reads is gathered in c->hs,
 * so a client costs no head buffer unless it trickles.  What follows the
 * head in the same read is handed on with it.
 */
static void
conn_head(struct conn *c, unsigned char *buf, size_t n)
{
	size_t from = c->hslen, end = 0, k;
	char *h = (char *)buf;

	if (c->hs == NULL)
		end = http_head_end(h, n, 0);
	if (end == 0) {
		if (c->hs == NULL && (c->hs = malloc(HEADER_MAX + 1)) == NULL) {
			if (c->kind == CONN_CLIENT)
				refusing("out of memory");
			conn_lost(c, "out of memory");
			return;
		}
		k = MIN(n, HEADER_MAX - c->hslen);
		memcpy(c->hs + c->hslen, buf, k);
		c->hslen += k;
		h = c->hs;
		end = http_head_end(h, c->hslen, from >= 3 ? from - 3 : 0);
		if (end == 0 && c->hslen < HEADER_MAX)
			return;
		k = end > from ? end - from : n;	/* this read's head bytes */
	} else
		k = end;
	buf += k, n -= k;			/* what follows the head */
	if (end == 0 || end > HEADER_MAX) {
		if (c->kind == CONN_CLIENT)
			client_reject(c, 400, "request head too large");
		else
			upstream_fail(c->up, "handshake: response head too large");
		return;
	}
	if (c->kind == CONN_CLIENT)
		client_head(c, h, end, buf, n);
	else
		upstream_head(c, h, end, buf, n);
	if (c->state != CONN_DEAD && c->state != CONN_HANDSHAKE) {
		free(c->hs);
		c->hs = NULL;
		c->hslen = 0;
	}
}

/*
 * Bytes arrived.  A client gets one read a turn.  An upstream gets up to
 * an eighth of --max-queue a turn (at most READS_PER_EVENT reads), however
 * many times it is read (see sources_read()).  A client written early in
 * a turn is written next early in the next, so its queue grows by at most
 * two turns' reads in between: a client that was keeping up is still far
 * within --max-queue.
 */
static void
conn_readable(struct conn *c)
{
	unsigned char *buf = rbuf;
	size_t cap, got = 0, budget = sizeof rbuf;
	struct upstream *u = c->kind == CONN_UPSTREAM ? c->up : NULL;
	ssize_t n;

	if (u != NULL) {
		if (u->rturn != turn)
			u->rturn = turn, u->rgot = 0;
		budget = MIN(pace_bytes(),
		    (size_t)READS_PER_EVENT * sizeof rbuf);
		budget = budget > u->rgot ? budget - u->rgot : 0;
	}
	while (got < budget && c->state != CONN_DEAD) {
		cap = MIN(sizeof rbuf, budget - got);
		if ((n = conn_read(c, buf, cap)) == -2)
			return;
		if (n <= 0) {
			conn_lost(c, n == 0 ? "connection closed" :
			    conn_error(c));
			return;
		}
		c->last_rx = now;
		got += (size_t)n;
		if (u != NULL)
			u->rgot += (size_t)n;
		conn_input(c, buf, (size_t)n);
		if ((size_t)n < cap)
			return;
	}
}

/* n bytes that came in, to the parser of c's state. */
static void
conn_input(struct conn *c, unsigned char *buf, size_t n)
{
	int code;

	switch (c->state) {
	case CONN_HANDSHAKE:
		if (c->kind == CONN_CLIENT && opt.tunnel && c->route != NULL)
			tunnel_stash(c, buf, n);	/* waits for its 101 */
		else
			conn_head(c, buf, n);
		break;
	case CONN_OPEN:
	case CONN_CLOSING:
		if ((code = ws_feed(c, buf, n)) != 0)
			conn_fail(c, code);
		break;
	default:
		break;		/* draining: discard */
	}
}

/* poll() readiness for one connection. */
static void
conn_event(struct conn *c, short revents)
{
	int err = 0;
	socklen_t len = sizeof err;

	if (c->state == CONN_CONNECTING) {
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err == 0 && !(revents & (POLLOUT | POLLERR | POLLHUP)))
			return;
		upstream_connect_done(c, err);
		return;
	}
	/* Let the syscalls say what an error or hangup really is. */
	if (revents & (POLLERR | POLLHUP))
		revents |= POLLIN | POLLOUT;
	if ((revents & POLLOUT) && (c->q.n > 0 || c->tls) &&
	    conn_flush(c) < 0) {
		conn_lost(c, conn_error(c));
		return;
	}
	if (revents & POLLIN)
		conn_readable(c);
	/* A TLS handshake step may have opened the way for queued data. */
	if (c->tls != NULL && c->state != CONN_DEAD)
		conn_mark(c);
}

static short
conn_events(struct conn *c)
{
	short ev;

	if (c->state == CONN_CONNECTING)
		return POLLOUT;
	/* A conn to be flushed this turn anyway needs no POLLOUT. */
	ev = c->tls != NULL ? tls_events(c) :
	    (short)(POLLIN | (c->q.n > 0 && !c->dirty ? POLLOUT : 0));
	/* Every client is behind: let TCP push back on the origin. */
	if (c->kind == CONN_UPSTREAM && c->state == CONN_OPEN &&
	    route_behind(c->route))
		ev &= ~POLLIN;
	/* A tunnel's client waits for its 101, its rate, or its upstream. */
	if (c->kind == CONN_CLIENT && opt.tunnel && c->route != NULL &&
	    tunnel_behind(c))
		ev &= ~POLLIN;
	return ev;
}

/* Deadlines and keepalive; returns when c next needs the clock. */
static int64_t
conn_timers(struct conn *c)
{
	int64_t next = INT64_MAX;

	if (c->deadline != 0 && now >= c->deadline && c->kind == CONN_CLIENT &&
	    c->state == CONN_HANDSHAKE && c->route != NULL) {
		tunnel_fail(c->route, "handshake timed out");
		return INT64_MAX;
	}
	if (c->deadline != 0 && now >= c->deadline) {
		logmsg(L_DEBUG, "[%u] %s: %s timed out", c->id, c->peer,
		    c->state == CONN_HANDSHAKE ? "handshake" : "close");
		if (c->kind == CONN_UPSTREAM && c->state != CONN_DRAIN)
			conn_lost(c, "close timed out");
		else
			conn_kill(c);
		return INT64_MAX;
	}
	if (c->deadline != 0)
		next = c->deadline;
	if (opt.ping_ms == 0 || c->state != CONN_OPEN)
		return next;
	if (now - c->last_rx >= 2 * (int64_t)opt.ping_ms) {
		conn_lost(c, "ping timeout");
		return INT64_MAX;
	}
	if (now >= c->ping_at) {
		if (c->kind == CONN_UPSTREAM && opt.client_rate != 0)
			rate_queue(c, msg_frame(WS_OP_PING, 1, NULL, 0));
		else
			conn_send_ctl(c, WS_OP_PING, NULL, 0);
		c->pinged = 1;
		c->ping_at = ping_next();
	}
	next = MIN(next, c->ping_at);
	return MIN(next, c->last_rx + 2 * (int64_t)opt.ping_ms);
}

/* Free the dead; keep the array in poll order. */
static void
conn_reap(void)
{
	struct conn *c, *prev = NULL, *next;
	size_t i, j;

	for (i = 0; i < nconns && conns[i]->state != CONN_DEAD; i++)
		;
	if (i == nconns)
		return;
	/* The dead leave the flush list first: it outlives a turn. */
	for (c = dirty; c != NULL; c = next) {
		next = c->dnext;
		if (c->state != CONN_DEAD) {
			prev = c;
			continue;
		}
		if (prev != NULL)
			prev->dnext = next;
		else
			dirty = next;
		ndirty--;
	}
	dirty_tail = prev;
	for (j = i; i < nconns; i++) {
		if (conns[i]->state == CONN_DEAD)
			free(conns[i]);
		else
			conns[j++] = conns[i];
	}
	nconns = j;
}

/*
 * Flush the conns marked so far, in order; those marked meanwhile wait for
 * the next turn.  Writing to thousands of clients takes a while, so every
 * FLUSH_SLICE writes the sources are read again: what they sent meanwhile
 * joins, in the same write, the queues of the clients still to come, and
 * the others get it first thing next turn.  Each client is written once a
 * turn, and a message waits at most about one turn.
 */
static void
flush_dirty(void)
{
	struct conn *c;
	size_t n = ndirty, k = 0;

	while (n-- > 0 && (c = dirty) != NULL) {
		if ((dirty = c->dnext) == NULL)
			dirty_tail = NULL;
		ndirty--;
		c->dirty = 0;
		if (c->state == CONN_DEAD || c->state == CONN_CONNECTING)
			continue;
		if (conn_flush(c) < 0)
			conn_lost(c, conn_error(c));
		if (++k % FLUSH_SLICE == 0 && n > 0)
			sources_read();
	}
}

/* Read the upstreams of large routes partway through a flush. */
static void
sources_read(void)
{
	struct route *r;
	struct conn *c;

	for (r = feeds; nbig > 0 && r != NULL; r = r->lnext) {
		if (r->nclients < FLUSH_SLICE || r->up == NULL ||
		    (c = r->up->c) == NULL || c->state != CONN_OPEN ||
		    route_behind(r))
			continue;
		conn_event(c, POLLIN);
		batch_flush(r);
	}
}

/* Format a socket address as "1.2.3.4:80" or "[::1]:80". */
static void
addr_format(const struct sockaddr *sa, char *out, size_t n)
{
	char host[INET6_ADDRSTRLEN];
	const struct sockaddr_in6 *s6 = (const void *)sa;
	const struct sockaddr_in *s4 = (const void *)sa;
	struct in_addr v4;

	if (sa->sa_family == AF_INET6 &&
	    IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
		memcpy(&v4, s6->sin6_addr.s6_addr + 12, 4);
		inet_ntop(AF_INET, &v4, host, sizeof host);
		snprintf(out, n, "%s:%u", host, ntohs(s6->sin6_port));
	} else if (sa->sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
		snprintf(out, n, "[%s]:%u", host, ntohs(s6->sin6_port));
	} else if (sa->sa_family == AF_INET) {
		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
		snprintf(out, n, "%s:%u", host, ntohs(s4->sin_port));
	} else
		snprintf(out, n, "?");
}

static int
set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
	    fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
		return -1;
	return 0;
}

/* ==== Clients ==== */

/* Take c off its route's list, logging why it left. */
static void
client_leave(struct conn *c, const char *why)
{
	struct route *r = c->route;

	if (!c->joined)
		return;
	client_unlink(c);
	/* NOLINTBEGIN(clang-analyzer-core.NullDereference): joined: r set */
	logmsg(L_INFO, "[%u] %s disconnected from %s (%s), %u clients",
	    c->id, c->peer, r->path, why, r->nclients);
	/* NOLINTEND(clang-analyzer-core.NullDereference) */
}

/*
 * Memory ran out for an upgraded client: it leaves with close 1011, a
 * frame made at start queued into the array it already has, so that
 * saying goodbye allocates nothing; failing even that, it is closed.
 */
static void
client_oom(struct conn *c)
{
	client_leave(c, "out of memory");
	queue_clear(&c->q, 1);
	if (queue_push(&c->q, oom_close, 1) < 0) {
		conn_kill(c);
		return;
	}
	c->close_code = CLOSE_INTERNAL;
	conn_drain(c);
}

static void
client_unlink(struct conn *c)
{
	struct route *r = c->route;

	if (!c->joined)
		return;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		r->clients = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	c->next = c->prev = NULL;
	c->joined = 0;
	c->route = NULL;
	nbig -= r->nclients-- == FLUSH_SLICE;
	r->nz -= c->deflate;
	nclients_open--;
	if (r->tclient == c)
		r->tclient = NULL;
	if (r->nclients == 0 && r->parent != NULL)
		r->linger_at = now + (opt.tunnel ? 0 : opt.linger_ms);
}

/* Refuse an upgrade with an HTTP status, then close. */
static void
client_reject(struct conn *c, int status, const char *why)
{
	char buf[512];
	const char *text, *extra = "";
	int n;

	switch (status) {
	case 401:
		text = "Unauthorized";
		extra = "WWW-Authenticate: Bearer\r\n";
		break;
	case 403: text = "Forbidden"; break;
	case 404: text = "Not Found"; break;
	case 405: text = "Method Not Allowed"; extra = "Allow: GET\r\n"; break;
	case 426:
		text = "Upgrade Required";
		extra = "Sec-WebSocket-Version: 13\r\n";
		break;
	case 502: text = "Bad Gateway"; break;
	case 503: text = "Service Unavailable"; break;
	default: status = 400, text = "Bad Request"; break;
	}
	logmsg(L_DEBUG, "[%u] %s rejected: %d %s (%s)", c->id, c->peer,
	    status, text, why);
	n = snprintf(buf, sizeof buf, "HTTP/1.1 %d %s\r\n%s"
	    "Content-Type: text/plain\r\nContent-Length: %zu\r\n"
	    "Connection: close\r\n\r\n%s\n", status, text, extra,
	    strlen(why) + 1, why);
	free(c->hs);
	c->hs = NULL;
	if (conn_queue(c, msg_raw(buf, (size_t)n), 1) == 0)
		conn_drain(c);
}

/* Is the presented secret s[0..n) --token?  In time independent of where they differ. */
static int
token_eq(const char *s, size_t n)
{
	size_t k = strlen(opt.token), i;
	unsigned char d = n != k;

	for (i = 0; i < n; i++)
		d |= (unsigned char)(s[i] ^ opt.token[i % k]);
	return d == 0;
}

/*
 * Copy a request target to out without its token= parameters: the token
 * is never passed on.  *auth is set when one of them is --token.
 */
static void
target_strip(const char *t, char *out, int *auth)
{
	const char *p = strchr(t, '?'), *e;
	char *o = out, sep = '?';
	size_t n = p != NULL ? (size_t)(p - t) : strlen(t);

	memcpy(o, t, n);
	o += n;
	for (; p != NULL && *p != '\0'; p = e) {
		p++;
		e = p + strcspn(p, "&");
		if (e == p)
			continue;	/* "a&&b", "a?": nothing there */
		if (e - p >= 6 && memcmp(p, "token=", 6) == 0) {
			if (opt.token != NULL && token_eq(p + 6,
			    (size_t)(e - p - 6)))
				*auth = 1;
			continue;
		}
		*o++ = sep;
		sep = '&';
		memcpy(o, p, (size_t)(e - p));
		o += e - p;
	}
	*o = '\0';
}

/* --token: given in the query (auth), or as Authorization: Bearer? */
static int
token_ok(struct http *m, int auth)
{
	const char *v;
	int n;

	if (opt.token == NULL || auth)
		return 1;
	return (v = http_header(m, "Authorization", &n)) != NULL && n == 1 &&
	    strncasecmp(v, "Bearer ", 7) == 0 && token_eq(v + 7, strlen(v + 7));
}

/* A plain request for --stats?  Then it is answered here: 1. */
static int
client_stats(struct conn *c, struct http *m)
{
	char path[HEADER_MAX];
	size_t n = strcspn(m->target, "?");
	int auth = 0;

	if (strlen(opt.stats) != n || memcmp(opt.stats, m->target, n) != 0 ||
	    http_header(m, "Upgrade", NULL) != NULL ||
	    strlen(m->target) >= sizeof path)
		return 0;
	target_strip(m->target, path, &auth);
	if (strcmp(m->method, "GET") != 0)
		client_reject(c, 405, "not GET");
	else if (!token_ok(m, auth))
		client_reject(c, 401, "no valid token");
	else
		stats_reply(c, m);
	return 1;
}

/* Access control: --origin (403), --token (401), --max-per-ip (503). */
static int
client_allowed(struct conn *c, struct http *m, int auth, const char **why)
{
	const char *v;
	size_t i;
	int n;

	if (opt.norigins > 0) {
		*why = "Origin not allowed";
		if ((v = http_header(m, "Origin", &n)) == NULL || n != 1)
			return 403;
		for (i = 0; i < opt.norigins; i++)
			if (strcasecmp(v, opt.origins[i]) == 0)
				break;
		if (i == opt.norigins)
			return 403;
	}
	*why = "no valid token";
	if (!token_ok(m, auth))
		return 401;
	*why = "--max-per-ip reached";
	if (c->ip != NULL && c->ip->n > opt.max_per_ip)
		return 503;
	return 0;
}

/* Check an upgrade request (RFC 6455 4.2.1); returns 101 or an HTTP status. */
static int
client_check(struct conn *c, struct http *m, const char **key,
    const char **why)
{
	struct route *conf;
	const char *v;
	char path[HEADER_MAX];
	unsigned char raw[18];
	int n, auth = 0, status, sbits = 0;

	*why = "not GET";
	if (strcmp(m->method, "GET") != 0)
		return 405;
	*why = "not HTTP/1.1";
	if (strcmp(m->version, "HTTP/1.1") != 0 || m->target[0] != '/' ||
	    strlen(m->target) >= sizeof path)
		return 400;
	/* Who may ask comes first: strangers learn nothing of the routes. */
	target_strip(m->target, path, &auth);
	if ((status = client_allowed(c, m, auth, why)) != 0)
		return status;
	*why = "no such route";
	if ((conf = route_find(m->target, strcspn(m->target, "?"))) == NULL)
		return 404;
	*why = "bad Host";
	if ((v = http_header(m, "Host", &n)) == NULL || n != 1 || *v == '\0')
		return 400;
	*why = "no Upgrade: websocket";
	if (!http_has_token(http_header(m, "Upgrade", NULL), "websocket"))
		return 400;
	*why = "no Connection: upgrade";
	if (!http_has_token(http_header(m, "Connection", NULL), "upgrade"))
		return 400;
	*why = "bad Sec-WebSocket-Key";
	if ((*key = http_header(m, "Sec-WebSocket-Key", &n)) == NULL ||
	    n != 1 || b64_decode(raw, sizeof raw, *key, strlen(*key)) != 16)
		return 400;
	*why = "not version 13";
	if ((v = http_header(m, "Sec-WebSocket-Version", &n)) == NULL ||
	    n != 1 || strcmp(v, "13") != 0)
		return 426;
	*why = "--max-clients reached";
	if (opt.max_clients != 0 && nclients_open >= opt.max_clients)
		return 503;
	c->deflate = opt.deflate && pmd_offered(m, &sbits);
	c->deflate_sbits = c->deflate && sbits;
	if (!conf->prefix && !opt.tunnel) {
		c->route = conf;
		return 101;
	}
	if ((c->route = route_instance(conf, path, &status, why)) == NULL)
		return status;
	return opt.tunnel ? tunnel_begin(c, m, *key, why) : 101;
}

/* Accept the upgrade and put c on its route. */
static void
client_join(struct conn *c, const char *accept, const char *proto)
{
	struct route *r = c->route;
	char buf[1024];		/* ~130 + a 256-byte subprotocol + ~130 */
	int n;

	/*
	 * No context takeover either way: one compressed form of a message
	 * serves every client, and a client's messages need no window kept.
	 */
	n = snprintf(buf, sizeof buf, "HTTP/1.1 101 Switching Protocols\r\n"
	    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
	    "Sec-WebSocket-Accept: %s\r\n%s%s%s%s%s%s\r\n", accept,
	    proto ? "Sec-WebSocket-Protocol: " : "", proto ? proto : "",
	    proto ? "\r\n" : "", c->deflate ? "Sec-WebSocket-Extensions: "
	    "permessage-deflate; server_no_context_takeover; "
	    "client_no_context_takeover" : "",
	    /* 7.1.2.1: a server_max_window_bits offered is answered. */
	    c->deflate_sbits ? "; server_max_window_bits=15" : "",
	    c->deflate ? "\r\n" : "");
	if (n < 0 || (size_t)n >= sizeof buf) {
		conn_lost(c, "101 head too long");
		return;
	}
	if (conn_send_head(c, buf, (size_t)n) < 0)
		return;
	c->state = CONN_OPEN;
	c->deadline = 0;
	c->ping_at = timer_at(ping_next());
	if (r->ringn > 0)
		route_replay(r, c);
	r->linger_at = 0;
	c->next = r->clients;
	if (r->clients != NULL)
		r->clients->prev = c;
	r->clients = c;
	nbig += ++r->nclients == FLUSH_SLICE;
	r->nz += c->deflate;
	nclients_open++;
	c->joined = 1;
	logmsg(L_INFO, "[%u] %s connected to %s, %u clients", c->id, c->peer,
	    r->path, r->nclients);
}

/*
 * A whole request head h[0..end) arrived, then n more bytes at rest
 * (frames a client may pipeline behind its request).
 */
static void
client_head(struct conn *c, char *h, size_t end, unsigned char *rest,
    size_t n)
{
	struct http m;
	const char *key = NULL, *why;
	char accept[29];
	int status, code;

	if (http_parse(h, end, &m, 0) < 0) {
		client_reject(c, 400, "malformed request");
		return;
	}
	if (opt.stats != NULL && client_stats(c, &m))
		return;
	if ((status = client_check(c, &m, &key, &why)) != 101) {
		client_reject(c, status, why);
		return;
	}
	if (opt.tunnel) {		/* the upstream answers first */
		if (c->route != NULL)	/* tunnel_fail() may have run */
			tunnel_stash(c, rest, n);
		return;
	}
	/* 101 comes with the key. */
	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker) */
	ws_accept_key(accept, key, strlen(key));
	client_join(c, accept, NULL);
	if (c->state == CONN_OPEN && n > 0 && (code = ws_feed(c, rest, n)))
		conn_fail(c, code);
}

/*
 * Queue one shared message to every open client of r that took
 * permessage-deflate (z = 1), or to every other one (z = 0).
 */
static void
broadcast(struct route *r, struct msg *m, int z)
{
	struct conn *c, *next;

	for (c = r->clients; c != NULL; c = next) {
		next = c->next;
		if (c->deflate != z)
			continue;
		if (c->q.n > 0 && queue_behind(&c->q) + m->len > opt.max_queue) {
			logmsg(L_INFO, "[%u] %s slow client dropped: %zu bytes "
			    "unsent, over --max-queue %zu", c->id, c->peer,
			    c->q.bytes, opt.max_queue);
			client_leave(c, "slow client");
			conn_kill(c);
			r->dropped++;
			continue;
		}
		if (queue_push(&c->q, m, 0) < 0) {
			client_oom(c);
			continue;
		}
		if (c->q.bytes > r->qhwm)
			r->qhwm = c->q.bytes;
		conn_mark(c);
	}
}

/*
 * Room for n more bytes at the end of r's batch for class z (a new or
 * fresh one).  The small messages of one turn share that buffer, so each
 * client gets them in one piece and one sendmsg().
 */
static unsigned char *
batch_room(struct route *r, int z, size_t n)
{
	if (r->batch[z] != NULL && r->batch[z]->len + n > BATCH_CAP)
		batch_flush(r);
	if (r->batch[z] == NULL && (r->batch[z] = msg_new(BATCH_CAP)) == NULL)
		return NULL;
	return r->batch[z]->p + r->batch[z]->len;
}

/* Hand the batches to the clients, trimmed to what they hold. */
static void
batch_flush(struct route *r)
{
	struct msg *b, *v;
	int z;

	for (z = 0; z < 2; z++) {
		if ((b = r->batch[z]) == NULL)
			continue;
		r->batch[z] = NULL;
		if (b->len > 0) {
			if ((v = realloc(b, sizeof *b + FRAME_HEAD + 4 +
			    b->len)) != NULL)
				b = v, b->p = b->data + FRAME_HEAD;
			broadcast(r, b, z);
		}
		msg_unref(b);
	}
}

/* Frame m to the clients of class z: into the batch, or on its own. */
static void
route_put(struct route *r, int z, struct msg *m)
{
	unsigned char *dst;

	if (m->len > BATCH_SMALL || (dst = batch_room(r, z, m->len)) == NULL) {
		batch_flush(r);
		broadcast(r, m, z);
		return;
	}
	memcpy(dst, m->p, m->len);
	r->batch[z]->len += m->len;
}

/*
 * m compressed for the clients that took permessage-deflate: made once,
 * whatever their number.  NULL when not worth it: a payload under
 * --deflate-min, or one that does not shrink.
 */
static struct msg *
route_deflate(struct msg *m)
{
	unsigned char *pl = m->data + FRAME_HEAD;
	size_t plen = m->len - (size_t)(pl - m->p), n;
	struct msg *z;

	if (plen < opt.deflate_min || zdef_state < 0)
		return NULL;
	if (zdef_state == 0 && (zdef_state = deflate_init(&zdef) < 0 ? -1 :
	    1) < 0) {
		logmsg(L_ERR, "out of memory for the compressor; messages go "
		    "uncompressed");
		return NULL;
	}
	if ((z = msg_new(plen)) == NULL)
		return NULL;
	if ((n = deflate_msg(&zdef, pl, plen, 15, z->data + FRAME_HEAD,
	    plen)) == 0) {
		msg_unref(z);
		return NULL;
	}
	msg_seal(z, m->p[0] & 0x0F, n);
	z->p[0] |= 0x40;		/* RSV1: compressed (RFC 7692 6) */
	return z;
}

/* One whole frame for every client of r, in order with the rest. */
static void
route_send(struct route *r, struct msg *m)
{
	struct msg *z;
	unsigned nplain = r->nclients - r->nz;

	r->msgs_in++;
	r->bytes_in += m->len - (size_t)(m->data + FRAME_HEAD - m->p);
	if (opt.replay > 0)
		route_keep(r, m);
	if (r->nclients == 0)
		return;
	z = r->nz > 0 ? route_deflate(m) : NULL;
	r->msgs_out += r->nclients;
	r->bytes_out += (uint64_t)nplain * m->len +
	    (uint64_t)r->nz * (z != NULL ? z->len : m->len);
	if (nplain > 0)
		route_put(r, 0, m);
	if (r->nz > 0)
		route_put(r, 1, z != NULL ? z : m);
	msg_unref(z);
}

/* The bucket of an address (FNV-1a). */
static struct ipcount **
ip_bucket(const char *addr, size_t n)
{
	uint32_t h = 2166136261u;
	size_t i;

	for (i = 0; i < n; i++)
		h = (h ^ (unsigned char)addr[i]) * 16777619u;
	return &iptab[h % IPTAB_SIZE];
}

/* Count one more connection from the address of peer ("addr:port"). */
static struct ipcount *
ip_count(const char *peer)
{
	struct ipcount *e, **b;
	size_t n = (size_t)(strrchr(peer, ':') - peer);

	if (n >= sizeof e->addr)
		return NULL;
	b = ip_bucket(peer, n);
	for (e = *b; e != NULL; e = e->next)
		if (strncmp(e->addr, peer, n) == 0 && e->addr[n] == '\0')
			break;
	if (e == NULL) {
		if ((e = calloc(1, sizeof *e)) == NULL)
			return NULL;	/* uncounted: memory is short anyway */
		memcpy(e->addr, peer, n);
		e->next = *b;
		*b = e;
	}
	e->n++;
	return e;
}

/* One connection from e's address fewer; the last one frees it. */
static void
ip_release(struct ipcount *e)
{
	struct ipcount **b;

	if (--e->n > 0)
		return;
	for (b = ip_bucket(e->addr, strlen(e->addr)); *b != e;
	    b = &(*b)->next)
		;
	*b = e->next;
	free(e);
}

/* Say why clients are being refused, at most once a second. */
static void
refusing(const char *why)
{
	if (now - emfile_logged >= 1000) {
		logmsg(L_ERR, "accept: %s; refusing clients", why);
		emfile_logged = now;
	}
}

/* Accept one client; -1 when there is nobody left to accept. */
static int
accept_one(void)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	struct conn *c;
	int fd, one = 1, sndbuf;

	if ((fd = accept(listen_fd, (struct sockaddr *)&ss, &len)) < 0) {
		if (errno == EINTR || errno == ECONNABORTED)
			return 0;
		if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS &&
		    errno != ENOMEM)
			return -1;
		/* Out of descriptors: refuse one with the spare, or pause. */
		refusing(strerror(errno));
		if (spare_fd >= 0) {
			close(spare_fd);
			if ((fd = accept(listen_fd, NULL, NULL)) >= 0)
				close(fd);
			spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		}
		if (spare_fd < 0)
			listen_pause = now + 100;
		return -1;
	}
	if (set_nonblock(fd) < 0 || (c = conn_new(fd, CONN_CLIENT)) == NULL) {
		refusing("out of memory");
		close(fd);
		return 0;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	/*
	 * A kernel buffer that autotunes to megabytes would hide how far
	 * behind a client is; bounded by --max-queue, the queue tells.
	 */
	sndbuf = (int)MIN(pace_bytes(), (size_t)INT_MAX);
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
	addr_format((struct sockaddr *)&ss, c->peer, sizeof c->peer);
	if (opt.max_per_ip != 0)
		c->ip = ip_count(c->peer);
	c->deadline = timer_at(now + HANDSHAKE_TIMEOUT_MS);
	logmsg(L_DEBUG, "[%u] %s accepted", c->id, c->peer);
	return 0;
}

/* ==== Upstreams ==== */

/* Resolver thread: the one blocking call wsfwd makes, off the loop. */
static void *
dns_thread(void *arg)
{
	struct dnsreq *q = arg;
	struct addrinfo hints;
	ssize_t n;

	memset(&hints, 0, sizeof hints);
	hints.ai_socktype = SOCK_STREAM;
	q->err = getaddrinfo(q->host, q->port, &hints, &q->ai);
	do
		n = write(wake_pipe[1], &q, sizeof q);
	while (n < 0 && errno == EINTR);
	return NULL;
}

/* Answers from resolver threads (and wake-ups from signal handlers). */
static void
dns_done(void)
{
	struct dnsreq *q;
	struct upstream *u;

	while (read(wake_pipe[0], &q, sizeof q) == (ssize_t)sizeof q) {
		if (q == NULL)
			continue;	/* a signal */
		if ((u = q->u) == NULL) {
			if (q->err == 0)
				freeaddrinfo(q->ai);
			free(q);
			continue;
		}
		u->dq = NULL;
		if (q->err != 0) {
			upstream_fail(u, "lookup %s: %s", q->host,
			    gai_strerror(q->err));
			free(q);
			continue;
		}
		u->ai = u->next_ai = q->ai;
		free(q);
		upstream_try(u);
	}
}

/* The pacing record of url's host:port, shared by every route to it. */
static struct host *
host_get(const struct url *url)
{
	struct host *h;
	char name[sizeof h->name];

	snprintf(name, sizeof name, "%s:%s", url->host, url->port);
	for (h = hosts; h != NULL; h = h->next)
		if (strcmp(h->name, name) == 0)
			return h;
	if ((h = calloc(1, sizeof *h)) == NULL)
		die("out of memory");
	memcpy(h->name, name, sizeof name);
	h->next = hosts;
	hosts = h;
	return h;
}

/* May a connection to h be attempted now?  0, or the time when it may. */
static int64_t
host_wait(struct host *h)
{
	int64_t tat = MAX(h->tat, now), slack;

	slack = (int64_t)(HOST_BURST - 1) * HOST_INTERVAL_MS;
	if (tat - now > slack)
		return tat - slack;
	h->tat = tat + HOST_INTERVAL_MS;
	return 0;
}

/* Give r its upstream (not started yet). */
static int
upstream_new(struct route *r)
{
	struct upstream *u;

	if ((u = calloc(1, sizeof *u)) == NULL)
		return -1;
	u->route = r;
	u->url = &r->url;
	u->cat = opt.cat != NULL;
	r->up = u;
	return 0;
}

/*
 * Let go of an upstream: an open connection is closed politely (it ends
 * on its own, belonging to nobody), anything else is dropped.
 */
static void
upstream_free(struct upstream *u)
{
	struct conn *c;

	if (u == NULL)
		return;
	upstream_free(u->next);
	if ((c = u->c) != NULL) {
		c->up = NULL;
		c->route = NULL;
		if (c->state == CONN_OPEN)
			conn_send_close(c, CLOSE_NORMAL, 0);
		else if (c->state != CONN_CLOSING && c->state != CONN_DRAIN)
			conn_kill(c);
	}
	if (u->dq != NULL)
		u->dq->u = NULL;	/* the thread's answer is freed on arrival */
	if (u->ai != NULL)
		freeaddrinfo(u->ai);
	free(u);
}

/* Begin a connection attempt: resolve (numeric at once, names in a thread). */
static void
upstream_start(struct upstream *u)
{
	struct addrinfo hints, *res;
	struct dnsreq *q;
	pthread_attr_t attr;
	pthread_t t;
	sigset_t all, old;
	int64_t at;
	int e;

	u->retry_at = 0;
	if (u->route->host != NULL && (at = host_wait(u->route->host)) != 0) {
		logmsg(u->paced ? L_DEBUG : L_INFO, "upstream %s: too many "
		    "connection attempts to %s; next in %.1f s", u->route->path,
		    u->route->host->name, (at - now) / 1000.0);
		u->paced = 1;
		u->retry_at = at;
		return;
	}
	u->paced = 0;
	u->deadline = now + HANDSHAKE_TIMEOUT_MS;
	snprintf(u->why, sizeof u->why, "no address");
	logmsg(u->cat ? L_DEBUG : L_INFO, "upstream %s: connecting to %s",
	    u->route->path, u->url->text);
	memset(&hints, 0, sizeof hints);
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	if (getaddrinfo(u->url->host, u->url->port, &hints, &res) == 0) {
		u->ai = u->next_ai = res;
		upstream_try(u);
		return;
	}
	if ((q = calloc(1, sizeof *q)) == NULL) {
		upstream_fail(u, "out of memory");
		return;
	}
	q->u = u;
	snprintf(q->host, sizeof q->host, "%s", u->url->host);
	snprintf(q->port, sizeof q->port, "%s", u->url->port);
	/* Signals belong to the loop's thread, so that poll() sees EINTR. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	e = pthread_create(&t, &attr, dns_thread, q);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (e != 0) {
		free(q);
		upstream_fail(u, "cannot start resolver: %s", strerror(e));
		return;
	}
	u->dq = q;
}

/* Connect to the next address of the lookup; fail when none is left. */
static void
upstream_try(struct upstream *u)
{
	struct addrinfo *ai;
	struct conn *c;
	char peer[56];
	int fd, r;

	while ((ai = u->next_ai) != NULL) {
		u->next_ai = ai->ai_next;
		addr_format(ai->ai_addr, peer, sizeof peer);
		if ((fd = socket(ai->ai_family, SOCK_STREAM, 0)) < 0 ||
		    set_nonblock(fd) < 0) {
			snprintf(u->why, sizeof u->why, "socket: %s",
			    strerror(errno));
			if (fd >= 0)
				close(fd);
			continue;
		}
		do
			r = connect(fd, ai->ai_addr, ai->ai_addrlen);
		while (r < 0 && errno == EINTR);
		if (r < 0 && errno != EINPROGRESS) {
			snprintf(u->why, sizeof u->why, "connect %s: %s", peer,
			    strerror(errno));
			close(fd);
			continue;
		}
		if ((c = conn_new(fd, CONN_UPSTREAM)) == NULL) {
			snprintf(u->why, sizeof u->why, "out of memory");
			close(fd);
			break;
		}
		c->up = u;
		c->route = u->route;
		snprintf(c->peer, sizeof c->peer, "%s", peer);
		u->c = c;
		if (r == 0)
			upstream_connect_done(c, 0);
		return;
	}
	upstream_fail(u, "%s", u->why);
}

/* The non-blocking connect() finished; on success send the upgrade. */
static void
upstream_connect_done(struct conn *c, int err)
{
	struct upstream *u = c->up;
	unsigned char raw[16];
	const char *proto;
	char key[25], buf[HEADER_MAX];
	int n, one = 1;

	if (err != 0) {
		snprintf(u->why, sizeof u->why, "connect %s: %s", c->peer,
		    strerror(err));
		conn_kill(c);
		upstream_try(u);
		return;
	}
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (u->url->tls && tls_start(c, u->url) < 0) {
		upstream_fail(u, "TLS setup failed (no entropy or memory)");
		return;
	}
	/* 4.1: a fresh random 16-byte nonce, base64-encoded. */
	rand_bytes(raw, sizeof raw);
	b64_encode(key, raw, sizeof raw);
	ws_accept_key(u->accept, key, strlen(key));
	proto = u->route->proto;
	n = snprintf(buf, sizeof buf, "GET %s HTTP/1.1\r\nHost: %s\r\n"
	    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
	    "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s%s%s%s"
	    "User-Agent: wsfwd/" VERSION "\r\n\r\n", u->url->target,
	    u->url->hosthdr, key, proto ? "Sec-WebSocket-Protocol: " : "",
	    proto ? proto : "", proto ? "\r\n" : "", opt.upstream_deflate ?
	    "Sec-WebSocket-Extensions: permessage-deflate\r\n" : "");
	if (n < 0 || n >= (int)sizeof buf) {
		upstream_fail(u, "URL too long for a request");
		return;
	}
	c->state = CONN_HANDSHAKE;
	conn_queue(c, msg_raw(buf, (size_t)n), 1);
}

/* Check the server's answer to our upgrade (RFC 6455 4.1, 4.2.2). */
static const char *
upstream_check(struct upstream *u, struct http *m)
{
	static char why[96];
	const char *v;
	int n;

	if (m->status != 101) {
		snprintf(why, sizeof why, "handshake refused: HTTP %d %.60s",
		    m->status, log_clean((unsigned char *)m->reason,
		    strlen(m->reason)));
		return why;
	}
	if (!http_has_token(http_header(m, "Upgrade", NULL), "websocket"))
		return "handshake: no Upgrade: websocket";
	if (!http_has_token(http_header(m, "Connection", NULL), "upgrade"))
		return "handshake: no Connection: upgrade";
	if ((v = http_header(m, "Sec-WebSocket-Accept", NULL)) == NULL ||
	    strcmp(v, u->accept) != 0)
		return "handshake: wrong Sec-WebSocket-Accept";
	/* Only the extension we asked for; only a tunnel's subprotocols. */
	if ((v = http_header(m, "Sec-WebSocket-Extensions", &n)) != NULL &&
	    !opt.upstream_deflate)
		return "handshake: unrequested extension";
	if (v != NULL && (n != 1 || pmd_accepted(v) < 0))
		return "handshake: bad permessage-deflate answer";
	if ((v = http_header(m, "Sec-WebSocket-Protocol", NULL)) != NULL &&
	    (u->route->proto == NULL || !http_has_token(u->route->proto, v)))
		return "handshake: unrequested subprotocol";
	return NULL;
}

/* The server's whole response head h[0..end) arrived, then n bytes at rest. */
static void
upstream_head(struct conn *c, char *h, size_t end, unsigned char *rest,
    size_t n)
{
	struct upstream *u = c->up;
	struct route *conf;
	struct http m;
	const char *why, *v;
	unsigned long secs;
	size_t i;
	int code;

	if (http_parse(h, end, &m, 1) < 0) {
		upstream_fail(u, "handshake: malformed response");
		return;
	}
	if ((why = upstream_check(u, &m)) != NULL) {
		/* 408 and 429 say "later", not "no"; Retry-After says when. */
		if ((v = http_header(&m, "Retry-After", NULL)) != NULL &&
		    parse_uint(v, 3600, &secs) == 0)
			u->wait_ms = (int)secs * 1000;
		if (u->route->parent != NULL && u->prev == NULL &&
		    !opt.tunnel && m.status >= 400 && m.status < 500 &&
		    m.status != 408 && m.status != 429)
			route_refused(u->route, why);
		else
			upstream_fail(u, "%s", why);
		return;
	}
	c->state = CONN_OPEN;
	c->ping_at = timer_at(ping_next());
	u->up_since = now;
	u->deadline = 0;
	u->delivered = 0;
	u->connects++;
	/* A successor's own rotation starts when it takes over. */
	u->rotate_at = opt.rotate_ms != 0 && !u->cat && u->prev == NULL ?
	    now + opt.rotate_ms : 0;
	if ((v = http_header(&m, "Sec-WebSocket-Extensions", NULL)) != NULL) {
		c->deflate = 1;
		/* A server that keeps its window needs ours kept too. */
		if (pmd_accepted(v) == 1) {
			if ((c->zi = calloc(1, sizeof *c->zi)) == NULL) {
				upstream_fail(u, "out of memory");
				return;
			}
			inflate_init(c->zi, 15, 1);
		}
	}
	if (u->ai != NULL)
		freeaddrinfo(u->ai);
	u->ai = u->next_ai = NULL;
	logmsg(u->cat ? L_DEBUG : L_INFO, "upstream %s: connected to %s (%s)%s",
	    u->route->path, u->url->text, c->peer,
	    u->prev != NULL ? ", the successor" : "");
	conf = u->route->parent != NULL ? u->route->parent : u->route;
	for (i = 0; i < conf->nsend; i++)
		if (rate_queue(c, msg_frame(WS_OP_TEXT, 1, conf->send[i],
		    conf->sendlen[i])) < 0)
			return;
	if (opt.tunnel)
		tunnel_open(u->route, http_header(&m, "Sec-WebSocket-Protocol",
		    NULL));
	/* Frames that came in the same read as the 101 are the first data. */
	if (n > 0 && (code = ws_feed(c, rest, n)))
		conn_fail(c, code);
}

/*
 * Has u's open connection input it has not delivered yet: bytes in the
 * socket or the TLS engine, or a message half decoded?
 */
static int
upstream_backlog(struct upstream *u)
{
	struct conn *c = u->c;
	int n = 0;

	if (c == NULL || c->state != CONN_OPEN)
		return 0;
	if (c->d.stage != DEC_HEAD ||
	    c->d.hlen > 0 || c->d.msgop != 0)
		return 1;
	if (c->tls != NULL && (br_ssl_engine_current_state(&c->tls->sc.eng) &
	    BR_SSL_RECVAPP))
		return 1;
	return ioctl(c->fd, FIONREAD, &n) == 0 && n > 0;
}

/* A whole message came from upstream. */
static void
upstream_deliver(struct upstream *u, struct msg *m)
{
	if (u == NULL)
		return;		/* a retired feed's connection, closing */
	if (u->prev != NULL) {
		/* The old connection's backlog is older: it goes first. */
		if (upstream_backlog(u->prev))
			return;
		upstream_switch(u);
	}
	u->delivered = 1;
	if (u->cat)
		cat_deliver(m);
	else
		route_send(u->route, m);
}

/*
 * The upstream is gone or could not be reached: drop the connection and
 * schedule a retry.  Its clients stay.  Backoff: the first retry within a
 * second, doubling to RETRY_MAX_MS, jittered so that many routes do not
 * come back in step; fast again after a connection that proved healthy.
 */
static void
upstream_fail(struct upstream *u, const char *fmt, ...)
{
	char why[256];
	va_list ap;
	int d;

	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	if (u->c != NULL)
		conn_kill(u->c);
	if (u->dq != NULL)
		u->dq->u = NULL;	/* the thread's answer is freed on arrival */
	u->dq = NULL;
	if (u->ai != NULL)
		freeaddrinfo(u->ai);
	u->ai = u->next_ai = NULL;
	u->deadline = 0;
	u->rotate_at = 0;
	if (u->prev != NULL) {
		/* The predecessor's timers free it; that one carries on. */
		logmsg(L_INFO, "upstream %s: rotation failed: %s; keeping the "
		    "current connection", u->route->path, why);
		u->failed = 1;
		u->retry_at = 0;
		return;
	}
	if (opt.tunnel && u->route->parent != NULL) {
		tunnel_fail(u->route, why);	/* no retry: its client goes */
		return;
	}
	if (u->cat) {
		if (cat_done < 0) {
			logmsg(L_ERR, "%s: %s", u->url->text, why);
			cat_done = 1;
		}
		return;
	}
	if (exit_at != 0)
		return;
	if (u->up_since != 0 && (u->delivered ||
	    now - u->up_since >= HEALTHY_MS))
		u->backoff_ms = 0;
	u->up_since = 0;
	u->backoff_ms = u->backoff_ms == 0 ? RETRY_MIN_MS :
	    MIN(u->backoff_ms * 2, RETRY_MAX_MS);
	d = u->backoff_ms / 2 + (int)(rand_u32() % (unsigned)(u->backoff_ms / 2 + 1));
	d = MAX(d, u->wait_ms);
	u->wait_ms = 0;
	u->retry_at = now + d;
	logmsg(L_INFO, "upstream %s: lost: %s; retry in %.1f s",
	    u->route->path, why, d / 1000.0);
}

/* Retry and connect deadlines; returns when u next needs the clock. */
static int64_t
upstream_timers(struct upstream *u)
{
	const char *phase;

	int64_t next = INT64_MAX;

	if (exit_at != 0)
		return INT64_MAX;
	if (u->next != NULL && u->next->failed) {
		upstream_free(u->next);
		u->next = NULL;
		u->rotate_at = now + RETRY_MAX_MS;
	}
	if (u->next != NULL) {
		next = upstream_timers(u->next);
		if (u->next->failed)
			next = now;	/* free it next turn */
	} else if (u->prev == NULL && u->rotate_at != 0 && now >= u->rotate_at &&
	    u->c != NULL && u->c->state == CONN_OPEN)
		upstream_rotate(u);
	if (u->rotate_at != 0 && u->next == NULL)
		next = MIN(next, u->rotate_at);
	if (u->retry_at != 0 && now >= u->retry_at)
		upstream_start(u);
	if (u->deadline != 0 && now >= u->deadline) {
		phase = u->dq != NULL ? "name lookup" : u->c == NULL ||
		    u->c->state == CONN_CONNECTING ? "connect" :
		    u->c->tls != NULL && !(br_ssl_engine_current_state(
		    &u->c->tls->sc.eng) & BR_SSL_SENDAPP) ? "TLS handshake" :
		    "handshake";
		upstream_fail(u, "%s timed out", phase);
	}
	if (u->retry_at != 0)
		return MIN(next, u->retry_at);
	return MIN(next, u->deadline != 0 ? u->deadline : INT64_MAX);
}

/*
 * --rotate: before the origin cuts a long-lived connection, open a second
 * one.  Its first message switches the feed over (upstream_switch()).
 */
static void
upstream_rotate(struct upstream *u)
{
	struct upstream *n;

	u->rotate_at = 0;
	if ((n = calloc(1, sizeof *n)) == NULL) {
		u->rotate_at = now + RETRY_MAX_MS;
		return;
	}
	n->route = u->route;
	n->url = u->url;
	n->prev = u;
	u->next = n;
	logmsg(L_INFO, "upstream %s: rotating: opening a second connection",
	    u->route->path);
	upstream_start(n);
}

/*
 * The successor delivered: from this message on the feed is its.  The old
 * connection is closed; a message that came on both can repeat, none is
 * skipped while both were open.
 */
static void
upstream_switch(struct upstream *n)
{
	struct upstream *old = n->prev;

	old->next = NULL;
	n->prev = NULL;
	n->route->up = n;
	n->backoff_ms = old->backoff_ms;
	n->connects += old->connects;
	n->rotate_at = n->up_since + opt.rotate_ms;
	upstream_free(old);
	logmsg(L_INFO, "upstream %s: rotated to the second connection",
	    n->route->path);
}

/* --cat: one message, one line on stdout. */
static void
cat_deliver(struct msg *m)
{
	unsigned char *pl = m->data + FRAME_HEAD;
	struct iovec iov[2];
	struct pollfd pfd;
	ssize_t n;

	iov[0].iov_base = pl;
	iov[0].iov_len = m->len - (size_t)(pl - m->p);
	iov[1].iov_base = "\n";
	iov[1].iov_len = 1;
	while (iov[1].iov_len > 0) {
		n = writev(STDOUT_FILENO, iov[0].iov_len ? iov : iov + 1,
		    iov[0].iov_len ? 2 : 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			pfd.fd = STDOUT_FILENO;
			pfd.events = POLLOUT;
			poll(&pfd, 1, 1000);
			continue;
		}
		if (n < 0 && errno == EPIPE)
			exit(0);	/* the reader has had enough */
		if (n < 0)
			die("stdout:");
		if ((size_t)n >= iov[0].iov_len) {
			n -= (ssize_t)iov[0].iov_len;
			iov[0].iov_len = 0;
			iov[1].iov_len -= (size_t)n;
		} else {
			iov[0].iov_base = (char *)iov[0].iov_base + n;
			iov[0].iov_len -= (size_t)n;
		}
	}
}

/* ==== Tunnel (--tunnel): an upstream per client, both ways ==== */

/*
 * A tunnel's client is answered once its upstream has answered: keep what
 * its 101 will need (accept value, offered subprotocols) and connect.
 * Returns 101 or the HTTP status to refuse with.
 */
static int
tunnel_begin(struct conn *c, struct http *m, const char *key,
    const char **why)
{
	struct route *r = c->route;
	const char *v;
	size_t i;
	int n, status = 400;

	*why = "bad Sec-WebSocket-Protocol";
	if ((v = http_header(m, "Sec-WebSocket-Protocol", &n)) != NULL) {
		if (n != 1 || strlen(v) > 256)
			goto fail;
		for (i = 0; v[i] != '\0'; i++)
			if ((unsigned char)v[i] < 0x20 ||
			    (unsigned char)v[i] >= 0x7f)
				goto fail;
	}
	status = 503, *why = "out of memory";
	if ((v != NULL && (r->proto = strdup(v)) == NULL) ||
	    (opt.client_rate != 0 && (r->rate_ts = calloc(opt.client_rate,
	    sizeof *r->rate_ts)) == NULL))
		goto fail;
	r->tclient = c;
	ws_accept_key(r->accept, key, strlen(key));
	upstream_start(r->up);
	return 101;
fail:
	c->route = NULL;
	r->linger_at = now;	/* the feed is retired */
	return status;
}

/* Bytes a waiting client sent behind its request: kept for after its 101. */
static void
tunnel_stash(struct conn *c, const unsigned char *p, size_t n)
{
	struct route *r = c->route;
	unsigned char *v;

	if (n == 0)
		return;
	if (r->stashlen + n > RBUF_SIZE ||
	    (v = realloc(r->stash, r->stashlen + n)) == NULL) {
		conn_lost(c, "too much data before its 101");
		return;
	}
	memcpy(v + r->stashlen, p, n);
	r->stash = v;
	r->stashlen += n;
}

/* The upstream said 101: so do we, with its subprotocol, if any. */
static void
tunnel_open(struct route *r, const char *proto)
{
	struct conn *c = r->tclient;
	int code;

	if (c == NULL)
		return;		/* it left while we connected */
	free(c->hs);
	c->hs = NULL;
	c->hslen = 0;
	client_join(c, r->accept, proto);
	if (c->state == CONN_OPEN && r->stashlen > 0 &&
	    (code = ws_feed(c, r->stash, r->stashlen)) != 0)
		conn_fail(c, code);
	free(r->stash);
	r->stash = NULL;
	r->stashlen = 0;
}

/* The other end of c's tunnel, if it is open. */
static struct conn *
tunnel_peer(struct conn *c)
{
	struct route *r = c->route;
	struct conn *p;

	if (r == NULL)
		return NULL;
	if (c->kind == CONN_CLIENT)
		p = r->up != NULL ? r->up->c : NULL;
	else
		p = r->tclient;
	return p != NULL && p->state == CONN_OPEN ? p : NULL;
}

/* Should a tunnel's client wait before we read more of it? */
static int
tunnel_behind(struct conn *c)
{
	struct route *r = c->route;
	struct conn *u = r->up != NULL ? r->up->c : NULL;

	return c->state == CONN_HANDSHAKE || r->held.n > 0 ||
	    (u != NULL && u->q.bytes >= pace_bytes());
}

/* A client's frame (message, ping or pong) on to its upstream, masked. */
static void
tunnel_send(struct conn *c, int op, const void *p, size_t n)
{
	struct route *r = c->route;
	struct msg *m;

	if (tunnel_peer(c) == NULL)
		return;
	if ((m = msg_frame(op, 1, p, n)) == NULL ||
	    queue_push(&r->held, m, 0) < 0) {
		msg_unref(m);
		conn_lost(c, "out of memory");
		return;
	}
	msg_unref(m);
	tunnel_release(r);
}

/*
 * Hand the client's frames to the upstream as --client-rate allows: a
 * frame goes only when the one --client-rate before it is a second old,
 * so no one-second window ever sees more.  The rest wait, in order, and
 * the client is not read meanwhile.  Returns when the next may go.
 */
static int64_t
tunnel_release(struct route *r)
{
	struct conn *u = r->up != NULL ? r->up->c : NULL;
	struct msg *m;
	int64_t at;

	while (r->held.n > 0) {
		if (u == NULL || u->state != CONN_OPEN) {
			queue_clear(&r->held, 0);
			break;
		}
		if (opt.client_rate != 0) {
			at = r->rate_ts[r->rate_i];
			if (r->rate_n == opt.client_rate && now - at < 1000) {
				if (!r->rate_logged && (r->rate_logged = 1))
					logmsg(L_INFO, "route %s: client over "
					    "--client-rate %u/s; its messages are "
					    "delayed", r->path, opt.client_rate);
				return at + 1000;
			}
			r->rate_ts[r->rate_i] = now;
			r->rate_i = (r->rate_i + 1) % opt.client_rate;
			if (r->rate_n < opt.client_rate)
				r->rate_n++;
		}
		m = r->held.v[r->held.head];
		m->refs++;
		queue_consume(&r->held, m->len);
		if ((m->p[0] & 0x0F) == WS_OP_CLOSE) {
			u->state = CONN_CLOSING;	/* the client's close */
			u->deadline = timer_at(now + CLOSE_TIMEOUT_MS);
		}
		if (conn_queue(u, m, 0) < 0)
			break;
	}
	return INT64_MAX;
}

/*
 * A frame of our own for upstream c: under --client-rate it takes its
 * place in the tunnel's window like the client's own.
 */
static int
rate_queue(struct conn *c, struct msg *m)
{
	struct route *r = c->route;

	if (!opt.tunnel || opt.client_rate == 0 || r == NULL || r->up == NULL ||
	    r->up->c != c)
		return conn_queue(c, m, 0);
	if (m == NULL || queue_push(&r->held, m, 0) < 0) {
		msg_unref(m);
		conn_lost(c, "out of memory");
		return -1;
	}
	msg_unref(m);
	tunnel_release(r);
	return c->state == CONN_DEAD ? -1 : 0;
}

/* A ping or pong is the other side's to answer: relay it. */
static void
tunnel_ctl(struct conn *c, int op, const unsigned char *p, size_t n)
{
	struct conn *to = tunnel_peer(c);

	if (to == NULL || to->q.bytes >= opt.max_queue)
		return;
	if (c->kind == CONN_CLIENT)
		tunnel_send(c, op, p, n);	/* in order, at its rate */
	else
		conn_send_ctl(to, op, p, n);
}

/* A close from one side goes to the other: code and reason as they came. */
static void
tunnel_close(struct conn *c)
{
	struct conn *to = tunnel_peer(c);

	if (to == NULL)
		return;
	if (to->kind == CONN_CLIENT) {
		batch_flush(to->route);		/* what came before it */
		client_leave(to, "upstream closed");
	} else if (c->route->held.n > 0) {	/* after its delayed frames */
		rate_queue(to, msg_frame(WS_OP_CLOSE, 1, c->d.ctl, c->d.ctllen));
		return;
	}
	conn_close_body(to, c->d.ctl, c->d.ctllen, 0);
}

/*
 * A tunnel's upstream failed or refused: a waiting client gets 502 (why
 * goes to the log only), an open one close 1014.  No retry: the feed goes.
 */
static void
tunnel_fail(struct route *r, const char *why)
{
	struct conn *c = r->tclient;

	r->linger_at = now;
	if (c == NULL)
		return;
	r->tclient = NULL;
	logmsg(L_INFO, "[%u] %s: upstream %s: %s", c->id, c->peer, r->path,
	    why);
	if (c->joined) {
		batch_flush(r);
		client_leave(c, "upstream lost");
		conn_send_close(c, CLOSE_BAD_GATEWAY, 0);
	} else if (c->state == CONN_HANDSHAKE) {
		c->route = NULL;
		client_reject(c, 502, "the upstream is unavailable");
	}
}

/* ==== Routes and stdin ==== */

/* The configured route for a request path: exact, else the longest prefix. */
static struct route *
route_find(const char *path, size_t n)
{
	struct route *r, *best = NULL;
	size_t i, k;

	for (i = 0; i < nroutes; i++) {
		r = &routes[i];
		k = strlen(r->path);
		if (r->done)
			continue;
		if (!r->prefix && k == n && memcmp(r->path, path, n) == 0)
			return r;
		if (r->prefix && n >= k - 1 && memcmp(r->path, path, k - 1) == 0 &&
		    (best == NULL || k > strlen(best->path)))
			best = r;
	}
	return best;
}

/*
 * Is the part of a request a prefix route appends to its URL safe to send?
 * Printable ASCII without '#'; in the path no "." or ".." segment (also
 * %2e-encoded), no backslash and no %2f or %5c: a client must not climb
 * out of the prefix on the origin, however the origin decodes.
 */
static int
route_rest_ok(const char *s)
{
	const char *seg = s, *p;
	size_t dots;

	for (p = s; *p != '\0' && *p != '?'; p++)
		if (*p == '\\' || (p[0] == '%' && (strncasecmp(p, "%2f", 3) ==
		    0 || strncasecmp(p, "%5c", 3) == 0)))
			return 0;	/* slashes an origin may decode */
	for (p = s; *p != '\0'; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f ||
		    *p == '#')
			return 0;
	for (;;) {
		for (dots = 0, p = seg; *p != '/' && *p != '?' && *p != '\0';
		    dots++) {
			if (*p == '.')
				p++;
			else if (p[0] == '%' && p[1] == '2' &&
			    (p[2] == 'e' || p[2] == 'E'))
				p += 3;
			else
				break;
		}
		if ((dots == 1 || dots == 2) && (*p == '/' || *p == '?' ||
		    *p == '\0'))
			return 0;
		seg += strcspn(seg, "/?");
		if (*seg != '/')
			return 1;
		seg++;
	}
}

/* Put r on the list of feeds, or take it off. */
static void
feed_link(struct route *r)
{
	r->lprev = NULL;
	r->lnext = feeds;
	if (feeds != NULL)
		feeds->lprev = r;
	feeds = r;
}

static void
feed_unlink(struct route *r)
{
	if (r->lprev != NULL)
		r->lprev->lnext = r->lnext;
	else
		feeds = r->lnext;
	if (r->lnext != NULL)
		r->lnext->lprev = r->lprev;
	r->lnext = r->lprev = NULL;
}

/*
 * The feed of prefix route p for the full path key (path and query, any
 * token taken out): the one its clients share, or a new one, connecting.
 * NULL, with an HTTP status and why, when there is none to be had.
 */
static struct route *
route_instance(struct route *p, const char *key, int *status,
    const char **why)
{
	struct route *r;
	char *text = NULL, err[128];
	size_t pre = strlen(p->path) - 1, tl = strlen(p->url.text) - 1;

	for (r = opt.tunnel ? NULL : p->inst; r != NULL; r = r->inext)
		if (strcmp(r->path, key) == 0)
			return r;
	*status = 400, *why = "bad characters or dot segment in path";
	if (!p->prefix)
		pre = strlen(key), tl++;	/* the URL as it is */
	if (!route_rest_ok(p->prefix ? key + pre : key))
		return NULL;
	*status = 503, *why = "--max-upstreams reached";
	if (p->ninst >= opt.max_upstreams && !opt.tunnel) {
		/* A feed nobody uses any more makes room for this one. */
		for (r = p->inst; r != NULL && r->nclients > 0; r = r->inext)
			;
		if (r != NULL)
			route_retire(r);
	}
	if (p->ninst >= opt.max_upstreams)
		return NULL;
	*why = "out of memory";
	if ((r = calloc(1, sizeof *r)) == NULL ||
	    (r->path = strdup(key)) == NULL ||
	    (text = malloc(tl + strlen(key + pre) + 1)) == NULL)
		goto fail;
	memcpy(text, p->url.text, tl);
	strcpy(text + tl, key + pre);
	if (url_parse(&r->url, text, err, sizeof err) < 0) {
		*status = 400, *why = "path makes a bad URL";
		goto fail;
	}
	free(text);
	text = NULL;
	r->parent = p;
	r->host = p->host;
	r->linger_at = opt.tunnel ? 0 : now + opt.linger_ms;	/* until joined */
	if (upstream_new(r) < 0)
		goto fail;
	r->inext = p->inst;
	p->inst = r;
	p->ninst++;
	feed_link(r);
	logmsg(L_DEBUG, "route %s: new feed %s", p->path, r->path);
	if (!opt.tunnel)
		upstream_start(r->up);	/* a tunnel's, once its client is set */
	return r;
fail:
	free(text);
	if (r != NULL) {
		free(r->url.text);
		free(r->url.target);
		free(r->path);
		free(r);
	}
	return NULL;
}

/* An instance without clients: its upstream is let go, and it goes. */
static void
route_retire(struct route *r)
{
	struct route **pp;
	unsigned i;

	logmsg(L_DEBUG, "route %s: feed %s retired", r->parent->path, r->path);
	for (pp = &r->parent->inst; *pp != r; pp = &(*pp)->inext)
		;
	*pp = r->inext;
	r->parent->ninst--;
	feed_unlink(r);
	msg_unref(r->batch[0]);
	msg_unref(r->batch[1]);
	upstream_free(r->up);
	for (i = 0; i < r->ringn; i++)
		msg_unref(r->ring[(r->ringhead + i) % opt.replay]);
	free(r->ring);
	free(r->proto);
	free(r->stash);
	queue_clear(&r->held, 0);
	free(r->rate_ts);
	free(r->url.text);
	free(r->url.target);
	free(r->path);
	free(r);
}

/*
 * The upstream refused an instance's handshake (HTTP 4xx): a retry would
 * get the same, so its clients get close 1014 instead of waiting forever.
 */
static void
route_refused(struct route *r, const char *why)
{
	struct conn *c;

	logmsg(L_INFO, "upstream %s: %s; closing %u clients", r->path, why,
	    r->nclients);
	while ((c = r->clients) != NULL) {
		client_leave(c, "upstream refused");
		conn_send_close(c, CLOSE_BAD_GATEWAY, 0);
	}
	route_retire(r);
}

/* Keep m among the last --replay messages of r. */
static void
route_keep(struct route *r, struct msg *m)
{
	unsigned at;

	if (r->ring == NULL &&
	    (r->ring = calloc(opt.replay, sizeof *r->ring)) == NULL)
		return;
	at = (r->ringhead + r->ringn) % opt.replay;
	if (r->ringn == opt.replay) {
		msg_unref(r->ring[at]);
		r->ringhead = (r->ringhead + 1) % opt.replay;
	} else
		r->ringn++;
	r->ring[at] = m;
	m->refs++;
}

/*
 * A new client gets the kept messages first: as many of the newest as
 * half of --max-queue holds.  This turn's batch is flushed before it joins, so it
 * gets no message twice.
 */
static void
route_replay(struct route *r, struct conn *c)
{
	size_t bytes = 0;
	unsigned i, from = r->ringn;

	batch_flush(r);
	/* Half of --max-queue: the live stream needs room behind it. */
	while (from > 0 && bytes + r->ring[(r->ringhead + from - 1) %
	    opt.replay]->len <= opt.max_queue / 2) {
		from--;
		bytes += r->ring[(r->ringhead + from) % opt.replay]->len;
	}
	for (i = from; i < r->ringn; i++)
		if (queue_push(&c->q, r->ring[(r->ringhead + i) % opt.replay],
		    0) < 0)
			break;
	conn_mark(c);
}

/*
 * How many clients of each route are keeping up (less than an eighth of
 * --max-queue unsent)?  A source is read only while at least half of its
 * clients are: the pace is the median client's, so a stalled or slow
 * minority cannot hold the others back (it falls behind, and past
 * --max-queue it is dropped), while a flood, which outruns everybody,
 * is read no faster than most clients take it.  Pacing by the fastest
 * client alone would drop all the others in a flood, as soon as their
 * small differences in speed added up to --max-queue.
 */
static void
routes_ready(void)
{
	struct route *r;
	size_t i, high = pace_bytes();

	for (r = feeds; r != NULL; r = r->lnext)
		r->nready = 0;
	for (i = 0; i < nconns; i++)
		if (conns[i]->joined && conns[i]->q.bytes < high)
			conns[i]->route->nready++;
}

static int
route_behind(struct route *r)
{
	return 2 * r->nready < r->nclients;
}

/* A source ended: every client gets close 1000 after what it has queued. */
static void
route_end(struct route *r)
{
	struct conn *c;

	batch_flush(r);
	r->done = 1;
	logmsg(L_INFO, "route %s: end of input, closing %u clients", r->path,
	    r->nclients);
	while ((c = r->clients) != NULL) {
		client_leave(c, "end of input");
		conn_send_close(c, CLOSE_NORMAL, 0);
	}
}

/* One line of stdin becomes one text message. */
static void
stdin_line(struct route *r, const unsigned char *p, size_t n)
{
	uint32_t st = 0;
	struct msg *m;
	unsigned char *dst;
	size_t hl;

	r->lineno++;
	if (n > opt.max_message) {
		logmsg(L_ERR, "stdin line %lu: longer than --max-message, "
		    "skipped", r->lineno);
		return;
	}
	if (utf8_check(&st, p, n) < 0 || (st & 0xff) != 0) {
		logmsg(L_ERR, "stdin line %lu: not UTF-8, skipped", r->lineno);
		return;
	}
	if (r->nclients == 0 && opt.replay == 0)
		return;
	hl = ws_head_len(n);
	if (opt.replay == 0 && r->nz == 0 && hl + n <= BATCH_SMALL &&
	    (dst = batch_room(r, 0, hl + n)) != NULL) {
		r->msgs_in++;
		r->bytes_in += n;
		r->msgs_out += r->nclients;
		r->bytes_out += (uint64_t)r->nclients * (hl + n);
		ws_head_write(dst, WS_OP_TEXT, n);
		memcpy(dst + hl, p, n);
		r->batch[0]->len += hl + n;
		return;
	}
	if ((m = msg_new(n)) == NULL) {
		logmsg(L_ERR, "stdin line %lu: out of memory, skipped",
		    r->lineno);
		return;
	}
	memcpy(m->data + FRAME_HEAD, p, n);
	msg_seal(m, WS_OP_TEXT, n);
	route_send(r, m);
	msg_unref(m);
}

/* Keep a partial line for the next read; lines too long are dropped. */
static void
stdin_keep(struct route *r, const unsigned char *p, size_t n)
{
	size_t cap;
	unsigned char *v;

	if (r->linelen + n > opt.max_message) {
		r->linelen = opt.max_message + 1;	/* skip to newline */
		return;
	}
	if (r->linelen + n > r->linecap) {
		cap = MIN(MAX(r->linecap * 2, r->linelen + n), opt.max_message);
		if ((v = realloc(r->line, cap)) == NULL) {
			r->linelen = opt.max_message + 1;
			return;
		}
		r->line = v, r->linecap = cap;
	}
	memcpy(r->line + r->linelen, p, n);
	r->linelen += n;
}

/* stdin is readable: read once, never through stdio. */
static void
stdin_read(struct route *r)
{
	unsigned char *p, *nl, *end;
	ssize_t n;

	/* As for an upstream: no more than the clients may fall behind by. */
	n = read(STDIN_FILENO, rbuf, MIN(sizeof rbuf, pace_bytes()));
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n < 0)
		logmsg(L_ERR, "stdin: %s", strerror(errno));
	if (n <= 0) {
		if (r->linelen > 0)	/* a last line without newline */
			stdin_line(r, r->line, r->linelen);
		free(r->line);
		r->line = NULL;
		r->linelen = r->linecap = 0;
		route_end(r);
		return;
	}
	for (p = rbuf, end = rbuf + n; (nl = memchr(p, '\n',
	    (size_t)(end - p))) != NULL; p = nl + 1) {
		if (r->linelen == 0) {
			stdin_line(r, p, (size_t)(nl - p));
			continue;
		}
		stdin_keep(r, p, (size_t)(nl - p));
		stdin_line(r, r->line, r->linelen);
		r->linelen = 0;
	}
	if (p < end)
		stdin_keep(r, p, (size_t)(end - p));
}

/* ==== Stats (--stats, SIGUSR1) ==== */

static void
sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	size_t cap;
	char *v;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = b->oom ? 0 : vsnprintf(b->p ? b->p + b->len : NULL,
		    b->cap - b->len, fmt, ap);
		va_end(ap);
		if (b->oom || n < 0)
			return;
		if ((size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		cap = MAX(b->cap * 2, b->len + (size_t)n + 1024);
		if ((v = realloc(b->p, cap)) == NULL) {
			b->oom = 1;
			return;
		}
		b->p = v, b->cap = cap;
	}
}

/* s as a JSON string, or as a Prometheus label value: the same escapes. */
static void
sb_quote(struct sbuf *b, const char *s)
{
	sb_printf(b, "\"");
	for (; *s != '\0'; s++)
		if (*s == '"' || *s == '\\')
			sb_printf(b, "\\%c", *s);
		else if ((unsigned char)*s < 0x20 || *s == 0x7f)
			sb_printf(b, "\\u%04x", (unsigned char)*s);
		else
			sb_printf(b, "%c", *s);
	sb_printf(b, "\"");
}

/* Resident memory in KiB (Linux), 0 where unknown. */
static unsigned long
rss_kib(void)
{
	char buf[64], *p;
	unsigned long pages = 0;
	ssize_t n;
	int fd;

	if ((fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)) < 0)
		return 0;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* "size resident shared ...", in pages; no scanf: it is 10 KB static. */
	p = buf + strcspn(buf, " ");
	for (p += *p == ' '; *p >= '0' && *p <= '9'; p++)
		pages = pages * 10 + (unsigned long)(*p - '0');
	return pages * (unsigned long)getpagesize() / 1024;
}

/* A feed's source in one word. */
static const char *
feed_state(const struct route *r)
{
	const struct upstream *u = r->up;

	if (r->is_stdin)
		return r->done ? "ended" : "open";
	if (u == NULL)
		return "closed";
	if (u->dq != NULL)
		return "resolving";
	if (u->c == NULL)
		return u->retry_at != 0 ? "waiting" : "closed";
	return u->c->state == CONN_OPEN ? "open" :
	    u->c->state == CONN_CONNECTING ? "connecting" : "handshake";
}

/* The feeds of a configured route, one at a time: first, then next. */
static struct route *
feed_iter(struct route *conf, struct route *prev)
{
	if (!conf->prefix && !opt.tunnel)
		return prev == NULL ? conf : NULL;
	return prev == NULL ? conf->inst : prev->inext;
}

/* One feed as a JSON object. */
static void
stats_feed_json(struct sbuf *b, const struct route *r)
{
	char since[64] = "null";
	int f[6];

	if (r->up != NULL && r->up->up_since != 0 && r->up->c != NULL &&
	    r->up->c->state == CONN_OPEN) {
		utc_fields(time(NULL) - (now - r->up->up_since) / 1000, f);
		snprintf(since, sizeof since, "\"%04d-%02d-%02dT%02d:%02d:%02dZ\"",
		    f[0], f[1], f[2], f[3], f[4], f[5]);
	}
	sb_printf(b, "{\"path\":");
	sb_quote(b, r->path);
	sb_printf(b, ",\"state\":\"%s\",\"connected_since\":%s,"
	    "\"reconnects\":%u,\"messages_in\":%" PRIu64 ",\"bytes_in\":%"
	    PRIu64 ",\"messages_out\":%" PRIu64 ",\"bytes_out\":%" PRIu64
	    ",\"clients\":%u,\"slow_clients_dropped\":%" PRIu64
	    ",\"queue_high_water\":%zu}", feed_state(r), since,
	    r->up && r->up->connects ? r->up->connects - 1 : 0, r->msgs_in,
	    r->bytes_in, r->msgs_out, r->bytes_out, r->nclients, r->dropped,
	    r->qhwm);
}

static void
stats_json(struct sbuf *b)
{
	struct route *conf, *r;
	size_t i;

	sb_printf(b, "{\"version\":\"" VERSION "\",\"uptime_seconds\":%" PRId64
	    ",\"rss_kib\":%lu,\"clients\":%u,\"routes\":[",
	    (now - start_ms) / 1000, rss_kib(), nclients_open);
	for (i = 0; i < nroutes; i++) {
		conf = &routes[i];
		sb_printf(b, "%s{\"path\":", i ? "," : "");
		sb_quote(b, conf->path);
		sb_printf(b, ",\"url\":");
		sb_quote(b, conf->is_stdin ? "-" : conf->url.text);
		sb_printf(b, ",\"feeds\":[");
		for (r = feed_iter(conf, NULL); r != NULL; r = feed_iter(conf, r)) {
			stats_feed_json(b, r);
			if (feed_iter(conf, r) != NULL)
				sb_printf(b, ",");
		}
		sb_printf(b, "]}");
	}
	sb_printf(b, "]}\n");
}

/* The same, in Prometheus' text format: one family at a time. */
static void
stats_prom(struct sbuf *b)
{
	static const struct {
		const char *name, *type, *help;
	} fam[] = {
		{ "up", "gauge", "1 while the source is connected" },
		{ "reconnects_total", "counter", "upstream reconnections" },
		{ "messages_in_total", "counter", "messages from the source" },
		{ "bytes_in_total", "counter", "payload bytes from the source" },
		{ "messages_out_total", "counter", "messages queued to clients" },
		{ "bytes_out_total", "counter", "frame bytes queued to clients" },
		{ "clients", "gauge", "clients of the feed" },
		{ "slow_clients_dropped_total", "counter",
		    "clients dropped at --max-queue" },
		{ "queue_high_water_bytes", "gauge", "longest client queue" },
	};
	struct route *conf, *r;
	uint64_t v;
	size_t f, i;

	sb_printf(b, "# TYPE wsfwd_uptime_seconds gauge\nwsfwd_uptime_seconds "
	    "%" PRId64 "\n# TYPE wsfwd_resident_memory_bytes gauge\n"
	    "wsfwd_resident_memory_bytes %lu\n", (now - start_ms) / 1000,
	    rss_kib() * 1024);
	for (f = 0; f < LEN(fam); f++) {
		sb_printf(b, "# HELP wsfwd_feed_%s %s\n# TYPE wsfwd_feed_%s %s\n",
		    fam[f].name, fam[f].help, fam[f].name, fam[f].type);
		for (i = 0; i < nroutes; i++) {
			conf = &routes[i];
			for (r = feed_iter(conf, NULL); r != NULL;
			    r = feed_iter(conf, r)) {
				switch (f) {
				case 0: v = strcmp(feed_state(r), "open") == 0;
					break;
				case 1: v = r->up && r->up->connects ?
					    r->up->connects - 1 : 0;
					break;
				case 2: v = r->msgs_in; break;
				case 3: v = r->bytes_in; break;
				case 4: v = r->msgs_out; break;
				case 5: v = r->bytes_out; break;
				case 6: v = r->nclients; break;
				case 7: v = r->dropped; break;
				default: v = r->qhwm; break;
				}
				sb_printf(b, "wsfwd_feed_%s{route=", fam[f].name);
				sb_quote(b, conf->path);
				sb_printf(b, ",path=");
				sb_quote(b, r->path);
				sb_printf(b, "} %" PRIu64 "\n", v);
			}
		}
	}
}

/* SIGUSR1: the same figures, a line per feed, to the log. */
static void
stats_log(void)
{
	struct route *conf, *r;
	struct sbuf b;
	size_t i;

	memset(&b, 0, sizeof b);
	logmsg(L_ERR, "stats: up %" PRId64 " s, %lu KiB resident, %u clients",
	    (now - start_ms) / 1000, rss_kib(), nclients_open);
	for (i = 0; i < nroutes; i++) {
		conf = &routes[i];
		for (r = feed_iter(conf, NULL); r != NULL;
		    r = feed_iter(conf, r)) {
			b.len = 0;
			stats_feed_json(&b, r);
			if (!b.oom)
				logmsg(L_ERR, "stats %s: %.*s", conf->path,
				    (int)b.len, b.p);
		}
	}
	free(b.p);
}

/* A plain GET of --stats: JSON, or Prometheus text when asked for. */
static void
stats_reply(struct conn *c, struct http *m)
{
	struct sbuf b;
	struct msg *msg;
	const char *accept = http_header(m, "Accept", NULL), *q;
	char head[256];
	int prom, n;

	memset(&b, 0, sizeof b);
	q = strchr(m->target, '?');
	prom = (q != NULL && strstr(q, "format=prometheus") != NULL) ||
	    (accept != NULL && strstr(accept, "text/plain") != NULL);
	if (prom)
		stats_prom(&b);
	else
		stats_json(&b);
	if (b.oom) {
		free(b.p);
		client_reject(c, 503, "out of memory");
		return;
	}
	n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n"
	    "Content-Length: %zu\r\nCache-Control: no-store\r\n"
	    "Connection: close\r\n\r\n", prom ?
	    "text/plain; version=0.0.4" : "application/json", b.len);
	free(c->hs);
	c->hs = NULL;
	if ((msg = msg_new((size_t)n + b.len)) != NULL) {
		memcpy(msg->p, head, (size_t)n);
		memcpy(msg->p + n, b.p, b.len);
		msg->len = (size_t)n + b.len;
	}
	free(b.p);
	if (conn_queue(c, msg, 1) == 0)
		conn_drain(c);
}

/* ==== Event loop ==== */

static void
on_signal(int sig)
{
	int e = errno;
	void *wake = NULL;

	if (sig == SIGUSR1)
		dump = 1;
	else
		quit = 1;
	/* Wake poll() even if the signal landed just before it was entered. */
	if (write(wake_pipe[1], &wake, sizeof wake) < 0)
		(void)0;
	errno = e;
}

static void
signal_setup(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	/* The CA bundle is read once; a lost terminal must not stop us. */
	sigaction(SIGHUP, &sa, NULL);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
}

/* SIGTERM/SIGINT: clients get close 1001, upstreams are told, we leave. */
static void
shutdown_begin(void)
{
	struct route *r;
	struct conn *c;
	size_t i;

	exit_at = now + SHUTDOWN_MS;
	logmsg(L_INFO, "shutting down");
	for (r = feeds; r != NULL; r = r->lnext)
		batch_flush(r);
	if (listen_fd >= 0)
		close(listen_fd);
	listen_fd = -1;
	for (i = 0; i < nconns; i++) {
		c = conns[i];
		if (c->state == CONN_OPEN) {
			client_leave(c, "shutting down");
			conn_send_close(c, CLOSE_GOING_AWAY,
			    c->kind == CONN_UPSTREAM);
		} else if (c->state == CONN_HANDSHAKE ||
		    c->state == CONN_CONNECTING)
			conn_kill(c);
	}
}

/* Run every timer that is due; returns the nearest one still ahead. */
static int64_t
timers(void)
{
	int64_t next = exit_at ? exit_at : INT64_MAX, t;
	struct route *r, *rnext;
	size_t i;

	/*
	 * Connections first: a timeout there schedules an upstream retry.
	 * They are scanned only when one is due (deadlines are only ever
	 * moved later, or set through timer_at()), not on every turn.
	 */
	if (now >= timer_next) {
		timer_next = INT64_MAX;
		for (i = 0; i < nconns; i++)
			if (conns[i]->state != CONN_DEAD &&
			    (t = conn_timers(conns[i])) < timer_next)
				timer_next = t;
	}
	next = MIN(next, timer_next);
	for (r = feeds; r != NULL; r = rnext) {
		rnext = r->lnext;
		if (r->held.n > 0 && (t = tunnel_release(r)) < next)
			next = t;
		if (r->linger_at != 0 && r->nclients == 0 &&
		    r->tclient == NULL && r->held.n == 0 && exit_at == 0) {
			if (now >= r->linger_at) {
				route_retire(r);
				continue;
			}
			next = MIN(next, r->linger_at);
		}
		if (r->up != NULL && (t = upstream_timers(r->up)) < next)
			next = t;
	}
	if (listen_pause != 0 && listen_pause < next)
		next = listen_pause;
	return next;
}

/* Is there a reason to stay? */
static int
should_exit(void)
{
	size_t i;

	if (cat_done >= 0) {
		exit_status = cat_done;
		return 1;
	}
	if (exit_at != 0)
		return nclient_conns == 0 || now >= exit_at;
	if (opt.cat != NULL)
		return 0;
	for (i = 0; i < nroutes; i++)
		if (!routes[i].done)
			return 0;
	return nclient_conns == 0;
}

static void
loop(void)
{
	struct route *r;
	size_t n, i;
	int64_t wake;
	int timeout, k, pending;

	if (pfds == NULL && (pfds = calloc(POLL_FIXED, sizeof *pfds)) == NULL)
		die("out of memory");
	for (;;) {
		now = now_ms();
		if (quit && exit_at == 0)
			shutdown_begin();
		if (dump) {
			dump = 0;
			stats_log();
		}
		turn++;
		wake = timers();
		conn_reap();
		if (should_exit())
			break;
		if (listen_pause != 0 && now >= listen_pause)
			listen_pause = 0;
		pfds[POLL_LISTEN].fd = listen_pause ? -1 : listen_fd;
		pfds[POLL_DNS].fd = wake_pipe[0];
		routes_ready();
		pfds[POLL_STDIN].fd = stdin_route != NULL && !stdin_route->done &&
		    !route_behind(stdin_route) && exit_at == 0 ?
		    STDIN_FILENO : -1;
		for (i = 0; i < POLL_FIXED; i++)
			pfds[i].events = POLLIN;
		for (pending = 0, n = nconns, i = 0; i < n; i++) {
			pfds[POLL_FIXED + i].fd = conns[i]->fd;
			pfds[POLL_FIXED + i].events = conn_events(conns[i]);
			pending |= conns[i]->pending = tls_pending(conns[i]);
		}
		timeout = pending || dirty != NULL ? 0 : wake == INT64_MAX ? -1 :
		    (int)MIN(MAX(wake - now, 0), INT_MAX);
		if (poll(pfds, POLL_FIXED + n, timeout) < 0) {
			if (errno == EINTR)
				continue;
			die("poll:");
		}
		now = now_ms();
		if (pfds[POLL_DNS].revents)
			dns_done();
		if (pfds[POLL_STDIN].revents && stdin_route != NULL &&
		    !stdin_route->done)
			stdin_read(stdin_route);
		/* A conn closed by an earlier event in this turn is DEAD. */
		for (i = 0; i < n; i++) {
			if (conns[i]->pending)
				pfds[POLL_FIXED + i].revents |= POLLIN;
			if (pfds[POLL_FIXED + i].revents &&
			    conns[i]->state != CONN_DEAD)
				conn_event(conns[i], pfds[POLL_FIXED + i].revents);
		}
		if (pfds[POLL_LISTEN].revents && listen_fd >= 0)
			for (k = 0; k < ACCEPT_BATCH && accept_one() == 0; k++)
				;
		for (r = feeds; r != NULL; r = r->lnext)
			batch_flush(r);
		flush_dirty();
	}
	free(pfds);
	pfds = NULL;
}

/* ==== Setup ==== */

static void
listen_setup(void)
{
	struct addrinfo hints, *res = NULL;
	struct sockaddr_storage ss;
	struct sockaddr_in6 any6;
	struct sockaddr_in any4;
	socklen_t len = sizeof ss;
	const struct sockaddr *sa;
	socklen_t salen;
	char name[56];
	int fd = -1, one = 1, zero = 0, e;

	if (opt.listen_host != NULL) {
		memset(&hints, 0, sizeof hints);
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
		if ((e = getaddrinfo(opt.listen_host, opt.listen_port, &hints,
		    &res)) != 0)
			usage_error("listen address %s: %s", opt.listen_host,
			    gai_strerror(e));
		fd = socket(res->ai_family, SOCK_STREAM, 0);
		sa = res->ai_addr, salen = res->ai_addrlen;
	} else {
		/* Every interface: one dual-stack socket where IPv6 exists. */
		memset(&any6, 0, sizeof any6);
		any6.sin6_family = AF_INET6;
		any6.sin6_addr = in6addr_any;
		/* listen_parse() has checked it: 1..65535. */
		any6.sin6_port = htons((unsigned short)strtoul(opt.listen_port,
		    NULL, 10));
		memset(&any4, 0, sizeof any4);
		any4.sin_family = AF_INET;
		any4.sin_addr.s_addr = htonl(INADDR_ANY);
		any4.sin_port = any6.sin6_port;
		if ((fd = socket(AF_INET6, SOCK_STREAM, 0)) >= 0) {
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero,
			    sizeof zero);
			sa = (struct sockaddr *)&any6, salen = sizeof any6;
		} else {
			fd = socket(AF_INET, SOCK_STREAM, 0);
			sa = (struct sockaddr *)&any4, salen = sizeof any4;
		}
	}
	if (fd < 0)
		die("socket:");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, sa, salen) < 0 || listen(fd, SOMAXCONN) < 0 ||
	    set_nonblock(fd) < 0)
		die("listen on %s:%s:", opt.listen_host ? opt.listen_host : "*",
		    opt.listen_port);
	if (res != NULL)
		freeaddrinfo(res);
	getsockname(fd, (struct sockaddr *)&ss, &len);
	addr_format((struct sockaddr *)&ss, name, sizeof name);
	logmsg(L_INFO, "listening on %s", name);
	listen_fd = fd;
}

/* Parse ws://host[:port]/path?query; err gets a reason on failure. */
static int
url_parse(struct url *u, const char *s, char *err, size_t errlen)
{
	const char *p, *h, *he, *q;
	char num[8];
	size_t hl, pl;
	unsigned long port = 80;
	int dflt;

	memset(u, 0, sizeof *u);
	if (strncmp(s, "wss://", 6) == 0)
		u->tls = 1, port = 443;
	else if (strncmp(s, "ws://", 5) != 0) {
		snprintf(err, errlen, "URL must start with ws:// or wss://");
		return -1;
	}
	for (p = s; *p != '\0'; p++)
		if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '#') {
			snprintf(err, errlen, "URL has a space, control "
			    "character or fragment");
			return -1;
		}
	h = s + 5 + u->tls;
	he = h + strcspn(h, "/?");
	if (memchr(h, '@', (size_t)(he - h)) != NULL) {
		snprintf(err, errlen, "URL must not carry user:password@");
		return -1;
	}
	if (*h == '[') {
		if ((q = memchr(h, ']', (size_t)(he - h))) == NULL)
			goto bad;
		hl = (size_t)(q - h - 1);
		memcpy(u->host, h + 1, MIN(hl, sizeof u->host - 1));
		p = q + 1;
	} else {
		p = h + strcspn(h, ":/?");
		hl = (size_t)(p - h);
		memcpy(u->host, h, MIN(hl, sizeof u->host - 1));
	}
	if (hl == 0 || hl >= sizeof u->host)
		goto bad;
	if (*p == ':') {
		if ((pl = (size_t)(he - p - 1)) == 0 || pl >= sizeof num)
			goto bad;
		memcpy(num, p + 1, pl);
		num[pl] = '\0';
		if (parse_uint(num, 65535, &port) < 0 || port == 0)
			goto bad;
	} else if (p != he)
		goto bad;
	snprintf(u->port, sizeof u->port, "%lu", port);
	dflt = port == (u->tls ? 443 : 80);
	snprintf(u->hosthdr, sizeof u->hosthdr, "%s%s%s%s%s",
	    *h == '[' ? "[" : "", u->host, *h == '[' ? "]" : "",
	    dflt ? "" : ":", dflt ? "" : u->port);
	/* BearSSL matches certificates against names only (no iPAddress). */
	if (u->tls && !opt.insecure && host_is_ip(u->host)) {
		snprintf(err, errlen, "wss:// to an IP address cannot be "
		    "verified; use the host name, or -k");
		return -1;
	}
	/* "" and "?q" get the "/" a request line needs. */
	pl = strlen(he) + 2;
	if ((u->target = malloc(pl)) == NULL || (u->text = strdup(s)) == NULL) {
		free(u->target);
		u->target = NULL;
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	snprintf(u->target, pl, "%s%s", *he == '/' ? "" : "/", he);
	return 0;
bad:
	snprintf(err, errlen, "bad host or port in URL");
	return -1;
}

/* ==== Options ==== */

static void
usage(int fd)
{
	static const char text[] =
"usage: wsfwd [options] [--send TEXT|@FILE ...] ROUTE...\n"
"       wsfwd --cat URL\n"
"\n"
"Keep one upstream connection per feed and re-send its messages, unchanged,\n"
"to every WebSocket client of the route.  ROUTE is [PATH=]URL, with URL\n"
"ws[s]://HOST[:PORT][/PATH][?QUERY], or - for stdin (a message a line); PATH\n"
"defaults to the URL's path.  A PATH and URL ending in * make a prefix route:\n"
"an upstream per full path that clients ask for.\n"
"\n"
"  -l, --listen [ADDR:]PORT  listen there (127.0.0.1:19443; PORT alone: all)\n"
"      --max-message BYTES   largest message, K/M/G (16M; larger: close 1009)\n"
"      --max-queue BYTES     a client this far behind is dropped (1M)\n"
"      --max-clients N       more clients get 503 (default: no limit)\n"
"      --max-per-ip N        more connections from one address get 503\n"
"      --ping SECONDS        ping peers; drop one silent for twice that (30)\n"
"      --send TEXT|@FILE     a text for the next ROUTE's upstream, on connect\n"
"      --replay N            a new client first gets the last N messages (0)\n"
"      --linger SECONDS      keep an unused prefix route upstream open (10)\n"
"      --max-upstreams N     upstreams per prefix or tunnel route (256)\n"
"      --rotate SECONDS      replace upstream connections this old, no gap\n"
"      --tunnel              an upstream per client, messages both ways\n"
"      --client-rate N       --tunnel: at most N client frames a second\n"
"      --origin ORIGIN       admit only this Origin (repeatable)\n"
"      --token TOKEN         admit only ?token=TOKEN or Bearer TOKEN\n"
"      --stats PATH          GET PATH: JSON figures, or ?format=prometheus\n"
"      --deflate on|off      permessage-deflate with clients (on)\n"
"      --deflate-min BYTES   compress from this size on (64)\n"
"      --upstream-deflate    ask upstreams for permessage-deflate\n"
"      --cat URL             print URL's messages, one a line, then exit\n"
"      --ca FILE             CAs for wss:// (default: the system's)\n"
"  -k, --insecure            wss:// without checking certificates\n"
"      --syslog[=SOCKET]     log to syslog (/dev/log)\n"
"  -q, --quiet               log errors only\n"
"  -v, --verbose             log protocol detail too\n"
"  -h, --help                this text; --version: the version\n"
"\n"
"Exit status: 0 after SIGTERM/SIGINT or at the end of stdin, 1 on a failure,\n"
"2 on bad arguments.  All the details: wsfwd(1).  For example,\n"
"  wsfwd '/ws/*=wss://stream.binance.com:9443/ws/*'\n"
"and clients open ws://127.0.0.1:19443/ws/btcusdt@trade.\n";

	if (write(fd, text, sizeof text - 1) < 0)
		(void)0;
}

/* The value of --name: a decimal from min to max, or a usage error. */
static unsigned long
num(const char *name, const char *arg, unsigned long min, unsigned long max)
{
	unsigned long v;

	if (parse_uint(arg, max, &v) < 0 || v < min)
		usage_error("--%s: bad value '%s' (%lu to %lu)", name, arg, min,
		    max);
	return v;
}

/* A positive decimal no larger than max; -1 on anything else. */
static int
parse_uint(const char *s, unsigned long max, unsigned long *out)
{
	unsigned long v = 0;
	unsigned d;

	if (*s == '\0')
		return -1;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		d = (unsigned)(*s - '0');
		if (d > max || v > (max - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

/* BYTES with an optional K, M or G (powers of 1024); 1..SIZE_LIMIT. */
static int
parse_size(const char *s, size_t *out)
{
	char num[24];
	size_t n = strlen(s), shift = 0;
	unsigned long v;

	if (n > 0 && strchr("kKmMgG", s[n - 1]) != NULL) {
		shift = strchr("kK", s[n - 1]) ? 10 : strchr("mM", s[n - 1]) ?
		    20 : 30;
		n--;
	}
	if (n == 0 || n >= sizeof num)
		return -1;
	memcpy(num, s, n);
	num[n] = '\0';
	if (parse_uint(num, SIZE_LIMIT >> shift, &v) < 0 || v == 0)
		return -1;
	*out = (size_t)v << shift;
	return 0;
}

/*
 * Add a route from [PATH=]URL, with the --send texts given before it; any
 * mistake is a usage error.
 */
static void
route_add(char *arg, char **send, size_t *sendlen, size_t nsend)
{
	struct route *r;
	char err[128], *eq, *src = arg, *path = NULL, *star;
	size_t i, n;

	if ((r = realloc(routes, (nroutes + 1) * sizeof *r)) == NULL)
		die("out of memory");
	routes = r;
	r = &routes[nroutes];
	memset(r, 0, sizeof *r);
	if (arg[0] == '/') {
		if ((eq = strchr(arg, '=')) == NULL)
			usage_error("route %s: expected PATH=URL", arg);
		*eq = '\0';
		path = arg;
		src = eq + 1;
	}
	if (strcmp(src, "-") == 0) {
		for (i = 0; i < nroutes; i++)
			if (routes[i].is_stdin)
				usage_error("route %s: only one route can read "
				    "stdin", arg);
		if (opt.tunnel)
			usage_error("route %s: --tunnel needs a URL for every "
			    "route", arg);
		if (nsend > 0)
			usage_error("route %s: --send needs an upstream", arg);
		r->is_stdin = 1;
		r->path = strdup(path ? path : "/");
	} else {
		if (url_parse(&r->url, src, err, sizeof err) < 0)
			usage_error("route %s: %s", src, err);
		r->path = path ? strdup(path) :
		    strndup(r->url.target, strcspn(r->url.target, "?"));
	}
	if (r->path == NULL)
		die("out of memory");
	n = strlen(r->path);
	for (i = 0; i < n; i++)
		if ((unsigned char)r->path[i] <= 0x20 || r->path[i] == '?' ||
		    r->path[i] == 0x7f || (r->path[i] == '*' && i + 1 < n))
			usage_error("route path %s: no spaces, controls or ?, "
			    "and * only at the end", r->path);
	/* A prefix route: the rest of the client's path replaces URL's *. */
	if ((r->prefix = n > 0 && r->path[n - 1] == '*')) {
		star = r->url.target ? strchr(r->url.target, '*') : NULL;
		if (r->is_stdin || star == NULL || star[1] != '\0')
			usage_error("route %s: a PATH ending in * needs a URL "
			    "whose path or query ends in *", r->path);
	}
	for (i = 0; i < nroutes; i++)
		if (strcmp(routes[i].path, r->path) == 0)
			usage_error("route path %s given twice", r->path);
	if (opt.stats != NULL && strcmp(opt.stats, r->path) == 0)
		usage_error("route path %s is also the --stats path", r->path);
	r->send = send, r->sendlen = sendlen, r->nsend = nsend;
	nroutes++;
}

/* --send TEXT or @FILE: one UTF-8 text message (a file loses its last \n). */
static void
send_parse(const char *arg, char **text, size_t *len)
{
	uint32_t st = 0;
	unsigned char *p;

	if (arg[0] == '@') {
		if ((p = file_read(arg + 1, len)) == NULL)
			die("--send %s:", arg);
		if (*len > 0 && p[*len - 1] == '\n')
			(*len)--;
		if (*len > 0 && p[*len - 1] == '\r')
			(*len)--;
	} else {
		*len = strlen(arg);
		if ((p = malloc(*len + 1)) == NULL)
			die("out of memory");
		memcpy(p, arg, *len);
	}
	if (utf8_check(&st, p, *len) < 0 || (st & 0xff) != 0)
		usage_error("--send %s: not UTF-8 text", arg);
	*text = (char *)p;
}

/* [ADDR:]PORT, ADDR possibly [v6]. */
static void
listen_parse(char *s)
{
	char *colon = strrchr(s, ':'), *host = NULL, *port = s;
	unsigned long v;
	size_t n;

	if (colon != NULL) {
		*colon = '\0';
		host = s, port = colon + 1;
		n = strlen(host);
		if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
			host[n - 1] = '\0';
			host++;
		}
		if (*host == '\0' || strcmp(host, "*") == 0)
			host = NULL;
	}
	if (parse_uint(port, 65535, &v) < 0 || v == 0)
		usage_error("--listen: bad port '%s'", port);
	opt.listen_host = host;
	opt.listen_port = port;
}

static void
options_parse(int argc, char **argv)
{
	enum { O_MAXMSG = 256, O_MAXQ, O_MAXCL, O_PING, O_VERSION, O_CAT,
	    O_CA, O_SYSLOG, O_LINGER, O_MAXUP, O_SEND, O_REPLAY, O_ROTATE,
	    O_TUNNEL, O_RATE, O_ORIGIN, O_TOKEN, O_PERIP, O_STATS, O_DEFLATE,
	    O_DEFLATE_MIN, O_UPDEFLATE };
	static const struct option longopts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "max-message", required_argument, NULL, O_MAXMSG },
		{ "max-queue", required_argument, NULL, O_MAXQ },
		{ "max-clients", required_argument, NULL, O_MAXCL },
		{ "ping", required_argument, NULL, O_PING },
		{ "cat", required_argument, NULL, O_CAT },
		{ "ca", required_argument, NULL, O_CA },
		{ "insecure", no_argument, NULL, 'k' },
		{ "syslog", optional_argument, NULL, O_SYSLOG },
		{ "linger", required_argument, NULL, O_LINGER },
		{ "max-upstreams", required_argument, NULL, O_MAXUP },
		{ "send", required_argument, NULL, O_SEND },
		{ "replay", required_argument, NULL, O_REPLAY },
		{ "rotate", required_argument, NULL, O_ROTATE },
		{ "tunnel", no_argument, NULL, O_TUNNEL },
		{ "client-rate", required_argument, NULL, O_RATE },
		{ "origin", required_argument, NULL, O_ORIGIN },
		{ "token", required_argument, NULL, O_TOKEN },
		{ "max-per-ip", required_argument, NULL, O_PERIP },
		{ "stats", required_argument, NULL, O_STATS },
		{ "deflate", required_argument, NULL, O_DEFLATE },
		{ "deflate-min", required_argument, NULL, O_DEFLATE_MIN },
		{ "upstream-deflate", no_argument, NULL, O_UPDEFLATE },
		{ "quiet", no_argument, NULL, 'q' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, O_VERSION },
		{ NULL, 0, NULL, 0 }
	};
	static char dflt[] = DEFAULT_ADDR ":" DEFAULT_PORT;
	struct { char *arg, **send; size_t *sendlen, nsend; } *args = NULL;
	char **send = NULL, err[128];
	size_t *sendlen = NULL, nsend = 0, nargs = 0;
	int ch, quiet = 0, verbose = 0, i, li = 0, syslog_on = 0;
	void *p1, *p2;

	opt.max_message = LINE_MAX_DEFAULT;
	opt.max_queue = MAX_QUEUE_DEFAULT;
	opt.ping_ms = PING_DEFAULT_S * 1000;
	opt.linger_ms = LINGER_DEFAULT_S * 1000;
	opt.max_upstreams = MAX_UPSTREAMS_DEFAULT;
	opt.deflate = 1;
	opt.deflate_min = DEFLATE_MIN_DEFAULT;
	listen_parse(dflt);
	opterr = 0;
	/*
	 * Leading '-': routes come back in order, as option 1, so that each
	 * takes the --send texts given before it.  Routes are added once all
	 * options are known (--tunnel, --stats bear on them).
	 */
	while ((ch = getopt_long(argc, argv, "-:l:kqvh", longopts, &li)) != -1) {
		switch (ch) {
		case 1:
			if ((p1 = realloc(args, (nargs + 1) * sizeof *args)) ==
			    NULL)
				die("out of memory");
			args = p1;
			args[nargs].arg = optarg;
			args[nargs].send = send;
			args[nargs].sendlen = sendlen;
			args[nargs++].nsend = nsend;
			send = NULL, sendlen = NULL, nsend = 0;
			break;
		case O_SEND:
			p1 = realloc(send, (nsend + 1) * sizeof *send);
			p2 = realloc(sendlen, (nsend + 1) * sizeof *sendlen);
			if (p1 != NULL)
				send = p1;
			if (p2 != NULL)
				sendlen = p2;
			if (p1 == NULL || p2 == NULL)
				die("out of memory");
			send_parse(optarg, &send[nsend], &sendlen[nsend]);
			nsend++;
			break;
		case O_LINGER:
			opt.linger_ms = (int)num(longopts[li].name, optarg,
			    0, 86400) * 1000;
			break;
		case O_MAXUP:
			opt.max_upstreams = (unsigned)num(longopts[li].name, optarg,
			    1, 1000000);
			break;
		case O_REPLAY:
			opt.replay = (unsigned)num(longopts[li].name, optarg,
			    0, REPLAY_MAX);
			break;
		case O_ROTATE:
			opt.rotate_ms = (int64_t)num(longopts[li].name, optarg,
			    0, 30 * 86400) * 1000;
			break;
		case O_TUNNEL:
			opt.tunnel = 1;
			break;
		case O_RATE:
			opt.client_rate = (unsigned)num(longopts[li].name, optarg,
			    1, 100000);
			break;
		case O_ORIGIN:
			if ((p1 = realloc(opt.origins, (opt.norigins + 1) *
			    sizeof *opt.origins)) == NULL)
				die("out of memory");
			opt.origins = p1;
			opt.origins[opt.norigins++] = optarg;
			break;
		case O_TOKEN:
			if (*optarg == '\0' || strpbrk(optarg, " &#?") != NULL)
				usage_error("--token: empty, or has a space, "
				    "&, # or ?");
			opt.token = optarg;
			break;
		case O_PERIP:
			opt.max_per_ip = (unsigned)num(longopts[li].name, optarg,
			    1, 1000000);
			break;
		case O_DEFLATE:
			if (strcmp(optarg, "on") != 0 &&
			    strcmp(optarg, "off") != 0)
				usage_error("--deflate: on or off, not '%s'",
				    optarg);
			opt.deflate = strcmp(optarg, "on") == 0;
			break;
		case O_DEFLATE_MIN:
			opt.deflate_min = (size_t)num(longopts[li].name, optarg,
			    0, SIZE_LIMIT);
			break;
		case O_UPDEFLATE:
			opt.upstream_deflate = 1;
			break;
		case O_STATS:
			if (optarg[0] != '/' || strpbrk(optarg, " ?*") != NULL)
				usage_error("--stats: PATH must start with / and "
				    "have no space, ? or *");
			opt.stats = optarg;
			break;
		case 'l':
			listen_parse(optarg);
			break;
		case O_MAXMSG:
		case O_MAXQ:
			if (parse_size(optarg, ch == O_MAXMSG ? &opt.max_message :
			    &opt.max_queue) < 0)
				usage_error("--%s: bad size '%s' (1 to 1G, K/M/G "
				    "suffixes)", longopts[li].name, optarg);
			break;
		case O_MAXCL:
			opt.max_clients = (unsigned)num(longopts[li].name, optarg,
			    1, 1000000);
			break;
		case O_PING:
			opt.ping_ms = (int)num(longopts[li].name, optarg,
			    0, 86400) * 1000;
			break;
		case O_CAT:
			opt.cat = optarg;
			break;
		case O_CA:
			opt.ca = optarg;
			break;
		case 'k':
			opt.insecure = 1;
			break;
		case O_SYSLOG:
			/*
			 * The default is set after the loop: a test of optarg
			 * here makes clang's analyzer, which does not know
			 * that getopt_long() sets it, take it for NULL in
			 * every later case.
			 */
			opt.syslog = optarg;
			syslog_on = 1;
			break;
		case 'q':
			quiet = 1;
			break;
		case 'v':
			verbose++;
			break;
		case 'h':
			usage(STDOUT_FILENO);
			exit(0);
		case O_VERSION:
			if (write(STDOUT_FILENO, "wsfwd " VERSION "\n",
			    sizeof "wsfwd " VERSION) < 0)
				(void)0;
			exit(0);
		case ':':
			usage_error("option %s needs a value", argv[optind - 1]);
			break;
		default:
			if (optopt != 0)
				usage_error("unknown option -%c", optopt);
			usage_error("unknown option %s", argv[optind - 1]);
		}
	}
	/* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): it exits, no leak */
	if (nsend > 0)
		usage_error("--send must come before the route it is for");
	if (syslog_on && opt.syslog == NULL)
		opt.syslog = "/dev/log";
	/* --cat talks only about failures unless asked for more. */
	opt.verbosity = quiet ? L_ERR : (opt.cat ? L_ERR : L_INFO) + verbose;
	for (i = optind; i < argc; i++) {	/* after "--" */
		if ((p1 = realloc(args, (nargs + 1) * sizeof *args)) == NULL)
			die("out of memory");
		args = p1;
		memset(&args[nargs], 0, sizeof *args);
		args[nargs++].arg = argv[i];
	}
	if (opt.cat != NULL) {
		if (nargs > 0)
			usage_error("--cat takes no routes");
		if ((routes = calloc(1, sizeof *routes)) == NULL)
			die("out of memory");
		if (url_parse(&routes[0].url, opt.cat, err, sizeof err) < 0)
			usage_error("--cat %s: %s", opt.cat, err);
		routes[0].path = routes[0].url.text;
		nroutes = 1;
		return;
	}
	if (nargs == 0)
		usage_error("no route given");
	for (i = 0; i < (int)nargs; i++)
		route_add(args[i].arg, args[i].send, args[i].sendlen,
		    args[i].nsend);
	free(args);
	if (opt.tunnel && opt.rotate_ms != 0)
		usage_error("--rotate is for shared upstreams, not --tunnel");
	if (opt.tunnel && opt.replay != 0)
		usage_error("--replay is for shared upstreams, not --tunnel");
	if (opt.client_rate != 0 && !opt.tunnel)
		usage_error("--client-rate needs --tunnel (clients' messages "
		    "go nowhere otherwise)");
}

/* Every fixed route is a feed: give those with a URL an upstream, start it. */
static void
upstreams_start(void)
{
	struct route *r;
	size_t i;

	for (i = 0; i < nroutes; i++) {
		r = &routes[i];
		if (!r->is_stdin && opt.cat == NULL)
			r->host = host_get(&r->url);
		if (r->prefix || opt.tunnel)
			continue;	/* their feeds come with their clients */
		feed_link(r);
		if (r->is_stdin) {
			stdin_route = r;
			continue;
		}
		if (upstream_new(r) < 0)
			die("out of memory");
		upstream_start(r->up);
	}
}

static void
setup(void)
{
	struct rlimit rl;
	size_t i;

	signal_setup();
	/* Each client is a descriptor: take all the kernel allows. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (pipe(wake_pipe) < 0 || set_nonblock(wake_pipe[0]) < 0 ||
	    set_nonblock(wake_pipe[1]) < 0)
		die("pipe:");
	spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if ((oom_close = msg_frame(WS_OP_CLOSE, 0, "\x03\xf3", 2)) == NULL)
		die("out of memory");
	if (opt.syslog != NULL && syslog_open() < 0)
		die("--syslog: %s:", opt.syslog);
	start_ms = now = now_ms();
	inflate_init(&zinf, 15, 0);
	for (i = 0; i < nroutes; i++)
		if (routes[i].url.tls) {
			ca_setup();
			break;
		}
	if (opt.cat == NULL)
		listen_setup();
	upstreams_start();
}

#ifdef WSFWD_FORTIFY_SHIM
/*
 * Debian's libbearssl.a was compiled with _FORTIFY_SOURCE and calls these;
 * musl has none.  They keep the check: overflowing the object aborts.
 */
/* NOLINTBEGIN: reserved names, but the ones the archive calls */
void	*__memcpy_chk(void *, const void *, size_t, size_t);
void	*__memmove_chk(void *, const void *, size_t, size_t);
void	*__memset_chk(void *, int, size_t, size_t);
/* NOLINTEND */

void *
__memcpy_chk(void *d, const void *s, size_t n, size_t dn)
{
	if (n > dn)
		abort();
	return memcpy(d, s, n);
}

void *
__memmove_chk(void *d, const void *s, size_t n, size_t dn)
{
	if (n > dn)
		abort();
	return memmove(d, s, n);
}

void *
__memset_chk(void *d, int c, size_t n, size_t dn)
{
	if (n > dn)
		abort();
	return memset(d, c, n);
}
#endif

#ifdef WSFWD_TEST
static int	 test_main(void);
#endif

#ifndef WSFWD_FUZZ
int
main(int argc, char **argv)
{
#ifdef WSFWD_TEST
	(void)argc, (void)argv;
	return test_main();
#endif
	options_parse(argc, argv);
	setup();
	loop();
	return exit_status;
}
#endif /* !WSFWD_FUZZ */

/* ==== Fuzz targets (make fuzz) ==== */

#ifdef WSFWD_FUZZ
/*
 * libFuzzer entry point; WSFWD_FUZZ picks the target.  Stream targets
 * feed the input in chunks whose sizes come from its first byte, so the
 * incremental parsers meet every kind of split, through conn_input(), the
 * function a read hands its bytes to: no socket is involved (fd -1).
 */
enum {
	FUZZ_REQUEST = 1, FUZZ_RESPONSE, FUZZ_FRAME_SERVER, FUZZ_FRAME_CLIENT,
	FUZZ_UTF8, FUZZ_URL, FUZZ_PEM, FUZZ_INFLATE
};

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static struct route	 fuzz_route;
static struct upstream	 fuzz_up;
static struct url	 fuzz_url;

static struct conn *
fuzz_conn(int kind, int state)
{
	struct conn *c;

	if ((c = calloc(1, sizeof *c)) == NULL)
		abort();
	c->fd = -1, c->kind = (unsigned char)kind;
	c->state = (unsigned char)state;
	c->route = &fuzz_route;
	if (kind == CONN_UPSTREAM) {
		c->up = &fuzz_up;
		fuzz_up.c = c;
	} else
		nclient_conns++;
	return c;
}

static void
fuzz_free(struct conn *c)
{
	conn_kill(c);
	free(c);
}

/* Feed data to c in chunks sized by a generator seeded with its first byte. */
static void
fuzz_chunks(struct conn *c, const uint8_t *data, size_t size)
{
	uint32_t seed;
	size_t k;

	if (size == 0)
		return;
	seed = data[0], data++, size--;
	while (size > 0 && c->state != CONN_DEAD) {
		seed = seed * 1103515245u + 12345u;
		k = seed >> 31 ? size : 1 + (seed >> 16) % 97;
		k = MIN(MIN(k, size), sizeof rbuf);
		memcpy(rbuf, data, k);
		conn_input(c, rbuf, k);
		data += k, size -= k;
	}
}

/* An independent UTF-8 check, one code point at a time (RFC 3629). */
static int
fuzz_utf8_ref(const uint8_t *p, size_t n)
{
	size_t i = 0, len, j;
	uint32_t cp;

	while (i < n) {
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		if ((p[i] & 0xE0) == 0xC0)
			len = 2, cp = p[i] & 0x1F;
		else if ((p[i] & 0xF0) == 0xE0)
			len = 3, cp = p[i] & 0x0F;
		else if ((p[i] & 0xF8) == 0xF0)
			len = 4, cp = p[i] & 0x07;
		else
			return 0;
		if (i + len > n)
			return 0;
		for (j = 1; j < len; j++) {
			if ((p[i + j] & 0xC0) != 0x80)
				return 0;
			cp = cp << 6 | (p[i + j] & 0x3F);
		}
		if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
		    (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
		    (cp >= 0xD800 && cp <= 0xDFFF))
			return 0;
		i += len;
	}
	return 1;
}

/*
 * The first byte picks: bit 7 set, a round trip (deflate the rest with
 * window bits 8 + bits 0-2, inflate it back: the same bytes); clear,
 * inflate the rest as messages, each a 2-byte length and its bytes, with
 * window bits 8 + bits 0-2, bit 3 keeping the window, bits 4-5 the limit.
 */
static void
fuzz_inflate(const uint8_t *data, size_t size)
{
	static const size_t maxes[4] = { 64, 4096, 65536, 1 << 20 };
	struct inflate z;
	unsigned char *out, *back;
	size_t n, len, max;
	int mode;

	if (size == 0)
		return;
	mode = *data++, size--;
	inflate_init(&z, 8 + (mode & 7), mode & 8);
	if (mode & 0x80) {
		if (zdef_state == 0)
			zdef_state = deflate_init(&zdef) < 0 ? -1 : 1;
		if (zdef_state < 0 || (out = malloc(DEFL_BOUND(size))) == NULL)
			abort();
		len = deflate_msg(&zdef, data, size, 8 + (mode & 7), out,
		    DEFL_BOUND(size));
		if (len == 0 || inflate_msg(&z, out, len, &back, &n, size) !=
		    INFL_OK || n != size ||
		    (n > 0 && memcmp(back, data, n) != 0))
			abort();
		free(out), free(back);
		inflate_free(&z);
		return;
	}
	max = maxes[mode >> 4 & 3];
	while (size >= 2) {
		n = MIN((size_t)(data[0] | data[1] << 8), size - 2);
		data += 2, size -= 2;
		if (inflate_msg(&z, data, n, &out, &len, max) == INFL_OK ?
		    len > max : out != NULL)
			abort();
		free(out);
		data += n, size -= n;
	}
	inflate_free(&z);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char text[4096];
	struct conn *c, *cl;
	struct url u;
	uint32_t st = 0;
	char err[128];
	size_t cut;
	int ok;

	if (fuzz_route.path == NULL) {
		opt.verbosity = -1;	/* quiet */
		opt.max_message = 1 << 20, opt.max_queue = 1 << 20;
		opt.ping_ms = 30000;
		fuzz_route.path = "/a";
		fuzz_route.url.text = "ws://fuzz/a";
		fuzz_up.route = &fuzz_route, fuzz_up.url = &fuzz_url;
		fuzz_url.text = "ws://fuzz/a";
		routes = &fuzz_route, nroutes = 1;
		inflate_init(&zinf, 15, 0);
	}
	now = now_ms();
	switch (WSFWD_FUZZ) {
	case FUZZ_REQUEST:
	case FUZZ_FRAME_SERVER:
		c = fuzz_conn(CONN_CLIENT, WSFWD_FUZZ == FUZZ_REQUEST ?
		    CONN_HANDSHAKE : CONN_OPEN);
		c->deflate = size > 0 && data[0] >> 7;	/* RSV1 allowed */
		fuzz_chunks(c, data, size);
		fuzz_free(c);
		break;
	case FUZZ_RESPONSE:
	case FUZZ_FRAME_CLIENT:
		/* The accept value of the RFC 6455 sample key, for the seeds. */
		memcpy(fuzz_up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", 29);
		cl = fuzz_conn(CONN_CLIENT, CONN_OPEN);
		cl->joined = 1, fuzz_route.clients = cl, fuzz_route.nclients = 1;
		/* Bits of the first byte: a deflate client, a deflate upstream. */
		cl->deflate = size > 0 && data[0] >> 7;
		fuzz_route.nz = cl->deflate;
		nclients_open++;
		c = fuzz_conn(CONN_UPSTREAM, WSFWD_FUZZ == FUZZ_RESPONSE ?
		    CONN_HANDSHAKE : CONN_OPEN);
		if (size > 0 && data[0] & 0x40 &&
		    (c->zi = calloc(1, sizeof *c->zi)) != NULL) {
			c->deflate = 1;
			inflate_init(c->zi, 15, 1);
		}
		fuzz_chunks(c, data, size);
		batch_flush(&fuzz_route);
		fuzz_free(c);
		fuzz_free(cl);
		memset(&fuzz_up.c, 0, sizeof fuzz_up - offsetof(struct upstream,
		    c));
		break;
	case FUZZ_UTF8:
		ok = fuzz_utf8_ref(data, size);
		cut = size > 0 ? data[0] % (size + 1) : 0;
		if (utf8_check(&st, data, cut) < 0 ||
		    utf8_check(&st, data + cut, size - cut) < 0 ||
		    (st & 0xff) != 0)
			st = 1;
		else
			st = 0;
		if (ok != (st == 0))
			abort();	/* the two validators disagree */
		break;
	case FUZZ_URL:
		cut = MIN(size, sizeof text - 1);
		memcpy(text, data, cut);
		text[cut] = '\0';
		if (url_parse(&u, text, err, sizeof err) == 0) {
			if (strlen(u.target) == 0 || u.target[0] != '/')
				abort();
			free(u.target), free(u.text);
		}
		break;
	case FUZZ_PEM:
		ca_parse(data, size);
		while (nanchors > 0)
			free(anchors[--nanchors].dn.data);
		break;
	case FUZZ_INFLATE:
		fuzz_inflate(data, size);
		break;
	}
	dirty = dirty_tail = NULL;
	ndirty = 0;
	return 0;
}
#endif /* WSFWD_FUZZ */

/* ==== Known-answer tests (make unit) ==== */

#ifdef WSFWD_TEST
static int npass, nfail;

static void
check(int ok, const char *what)
{
	if (ok)
		npass++;
	else {
		nfail++;
		printf("FAIL - %s\n", what);
	}
}

/* SHA-1 of s repeated reps times, in hex. */
static const char *
test_sha1_hex(const char *s, long reps, char hex[41])
{
	struct sha1 h;
	unsigned char md[20];
	int i;

	sha1_init(&h);
	while (reps-- > 0)
		sha1_update(&h, s, strlen(s));
	sha1_final(&h, md);
	for (i = 0; i < 20; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	return hex;
}

static void
test_sha1_b64(void)
{
	static const char *b64[][2] = {
		{ "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
		{ "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" },
		{ "foobar", "Zm9vYmFy" }
	};
	static const char *bad[] = { "Zg=", "Zh==", "Zm9=", "Z===", "Zm9v!A==",
	    "=Zm9", "Zm=v", "Zm9vYg=\n" };
	unsigned char out[16];
	char hex[41], enc[16], acc[29];
	size_t i, n;

	check(strcmp(test_sha1_hex("abc", 1, hex),
	    "a9993e364706816aba3e25717850c26c9cd0d89d") == 0, "sha1(abc)");
	check(strcmp(test_sha1_hex("a", 1000000, hex),
	    "34aa973cd4c4daa4f61eeb2bdbad27316534016f") == 0, "sha1(a x 1e6)");
	for (i = 0; i < LEN(b64); i++) {
		b64_encode(enc, (const unsigned char *)b64[i][0],
		    strlen(b64[i][0]));
		check(strcmp(enc, b64[i][1]) == 0, "b64 encode");
		n = b64_decode(out, sizeof out, b64[i][1], strlen(b64[i][1]));
		check(i == 0 ? n == (size_t)-1 : n == strlen(b64[i][0]) &&
		    memcmp(out, b64[i][0], n) == 0, "b64 decode");
	}
	for (i = 0; i < LEN(bad); i++)
		check(b64_decode(out, sizeof out, bad[i], strlen(bad[i])) ==
		    (size_t)-1, bad[i]);
	check(b64_decode(out, 2, "Zm9v", 4) == (size_t)-1, "b64 overflow");
	ws_accept_key(acc, "dGhlIHNhbXBsZSBub25jZQ==", 24);
	check(strcmp(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0,
	    "RFC 6455 1.3 accept key");
}

static void
test_utf8(void)
{
	static const char *good[] = { "", "plain ascii text, long enough",
	    "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xed\x9f\xbf",
	    "\xee\x80\x80", "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf",
	    "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5" };
	static const char *badv[] = { "\xff", "\xc0\xaf", "\xc1\xbf", "\x80",
	    "\xe0\x9f\xbf", "\xed\xa0\x80", "\xf0\x8f\xbf\xbf",
	    "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "abc\xc2", "\xe1\x80",
	    "aaaaaaaaaaaaaaaa\xfe" };
	const char *s = "\xce\xba\xe1\xbd\xb9\xf0\x9f\x98\x80z";
	uint32_t st;
	size_t i, cut, n = strlen(s);
	int ok;

	for (i = 0; i < LEN(good); i++) {
		st = 0;
		check(utf8_check(&st, (const unsigned char *)good[i],
		    strlen(good[i])) == 0 && (st & 0xff) == 0, good[i]);
	}
	for (i = 0; i < LEN(badv); i++) {
		st = 0;
		check(utf8_check(&st, (const unsigned char *)badv[i],
		    strlen(badv[i])) < 0 || (st & 0xff) != 0, "bad utf8");
	}
	/* Split at every byte: the state carries across. */
	for (ok = 1, cut = 0; cut <= n; cut++) {
		st = 0;
		if (utf8_check(&st, (const unsigned char *)s, cut) < 0 ||
		    utf8_check(&st, (const unsigned char *)s + cut, n - cut) < 0
		    || (st & 0xff) != 0)
			ok = 0;
	}
	check(ok, "utf8 split everywhere");
}

static void
test_http(void)
{
	static const char *bad[] = {
		"GET\r\n\r\n", "GET / HTTP/1.1 x\r\n\r\n", " / HTTP/1.1\r\n\r\n",
		"GET / FTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
		"GET / HTTP/1.1\r\n: v\r\n\r\n",
		"GET / HTTP/1.1\r\nA : v\r\n\r\n",
		"GET / HTTP/1.1\r\nA: v\r\n folded\r\n\r\n",
		"GET / HTTP/1.1\r\nA: v\x01\r\n\r\n",
		"GET / HTTP/1.1\r\nA: v\rB: w\r\n\r\n",
	};
	char buf[512];
	struct http m;
	const char *req = "GET /a?x=1 HTTP/1.1\r\nHost: h\r\n"
	    "Connection: keep-alive, Upgrade\r\nUpgrade:  WebSocket \r\n\r\n";
	size_t i, n = strlen(req), end;
	int ok = 1;

	/* The end of the head is found whatever the split. */
	for (i = 1; i < n; i++)
		if (http_head_end(req, i, 0) != 0)
			ok = 0;
	check(ok && http_head_end(req, n, n - 3) == n, "head end");
	check(http_head_end("GET / HTTP/1.1\n\n", 16, 0) == 16, "bare LF");
	memcpy(buf, req, n + 1);
	check(http_parse(buf, n, &m, 0) == 0 && strcmp(m.method, "GET") == 0 &&
	    strcmp(m.target, "/a?x=1") == 0 && m.nh == 3, "parse request");
	check(http_has_token(http_header(&m, "connection", NULL), "upgrade") &&
	    http_has_token(http_header(&m, "UPGRADE", NULL), "websocket") &&
	    !http_has_token("upgrades", "upgrade"), "tokens");
	check(strcmp(http_header(&m, "upgrade", NULL), "WebSocket") == 0,
	    "value trimmed");
	for (i = 0; i < LEN(bad); i++) {
		n = strlen(bad[i]);
		memcpy(buf, bad[i], n + 1);
		end = http_head_end(buf, n, 0);
		check(end == 0 || http_parse(buf, end, &m, 0) < 0, bad[i]);
	}
	strcpy(buf, "HTTP/1.1 101 Switching Protocols\r\nA: b\r\n\r\n");
	check(http_parse(buf, strlen(buf), &m, 1) == 0 && m.status == 101,
	    "parse response");
	strcpy(buf, "HTTP/1.1 1x1 Nope\r\n\r\n");
	check(http_parse(buf, strlen(buf), &m, 1) < 0, "bad status");
}

static void
test_args(void)
{
	static const char *badurl[] = { "http://x/", "ws://", "ws://:80/",
	    "ws://h:0/", "ws://h:65536/", "ws://h:x/", "ws://u@h/",
	    "ws://h/a b", "ws://h/#f", "ws://[::1/", "wss://127.0.0.1/",
	    "wss://[::1]:9443/" };
	struct url u;
	char err[128];
	size_t sz, i;

	check(parse_size("16M", &sz) == 0 && sz == 16u << 20, "16M");
	check(parse_size("1k", &sz) == 0 && sz == 1024, "1k");
	check(parse_size("1G", &sz) == 0 && sz == 1u << 30, "1G");
	check(parse_size("2G", &sz) < 0 && parse_size("0", &sz) < 0 &&
	    parse_size("12Q", &sz) < 0 && parse_size("-1", &sz) < 0 &&
	    parse_size("", &sz) < 0 && parse_size("K", &sz) < 0 &&
	    parse_size("99999999999999999999999", &sz) < 0, "bad sizes");
	check(url_parse(&u, "ws://example.com/ws/!miniTicker@arr", err,
	    sizeof err) == 0 && strcmp(u.host, "example.com") == 0 &&
	    strcmp(u.port, "80") == 0 && strcmp(u.hosthdr, "example.com") == 0
	    && strcmp(u.target, "/ws/!miniTicker@arr") == 0, "url");
	free(u.target), free(u.text);
	check(url_parse(&u, "ws://[::1]:9443?a=b", err, sizeof err) == 0 &&
	    strcmp(u.host, "::1") == 0 && strcmp(u.hosthdr, "[::1]:9443") == 0
	    && strcmp(u.target, "/?a=b") == 0, "url v6 port query");
	free(u.target), free(u.text);
	check(url_parse(&u, "wss://stream.binance.com:9443/ws/!miniTicker@arr",
	    err, sizeof err) == 0 && u.tls && strcmp(u.port, "9443") == 0 &&
	    strcmp(u.hosthdr, "stream.binance.com:9443") == 0, "wss url");
	free(u.target), free(u.text);
	check(url_parse(&u, "wss://h:443", err, sizeof err) == 0 &&
	    strcmp(u.hosthdr, "h") == 0 && strcmp(u.target, "/") == 0,
	    "wss default port");
	free(u.target), free(u.text);
	for (i = 0; i < LEN(badurl); i++)
		check(url_parse(&u, badurl[i], err, sizeof err) < 0, badurl[i]);
}

/* Token removal, prefix-rest safety, route choice, host pacing. */
static void
test_routing(void)
{
	static const struct { const char *in, *out; int auth; } strip[] = {
		{ "/a", "/a", 0 },
		{ "/a?token=k", "/a", 1 },
		{ "/a?x=1&token=k&y=2", "/a?x=1&y=2", 1 },
		{ "/a?token=no&x=1", "/a?x=1", 0 },
		{ "/a?token=k&token=k2", "/a", 1 },
		{ "/a?tokens=k", "/a?tokens=k", 0 },
		{ "/a?x=&&y", "/a?x=&y", 0 },
		{ "/a?", "/a", 0 },
	};
	static const struct { const char *rest; int ok; } rest[] = {
		{ "btcusdt@trade", 1 }, { "a/b?c=../d", 1 }, { "..x/.y", 1 },
		{ "", 1 }, { "...", 1 }, { "..", 0 }, { ".", 0 }, { "a/../b", 0 },
		{ "a/./b", 0 }, { "%2e%2E/x", 0 }, { "%2e", 0 }, { "a/..?q", 0 },
		{ "a b", 0 }, { "a#b", 0 }, { "a\x7f", 0 }, { "a\x80", 0 },
		{ "..%2f..", 0 }, { "a%2Fb", 0 }, { "a\\..", 0 }, { "a%5cb", 0 },
		{ "a?x=%2f", 1 },
	};
	struct route rs[3];
	struct host h;
	char out[64];
	size_t i;
	int auth, n;

	opt.token = "k";
	for (i = 0; i < LEN(strip); i++) {
		auth = 0;
		target_strip(strip[i].in, out, &auth);
		check(strcmp(out, strip[i].out) == 0 && auth == strip[i].auth,
		    strip[i].in);
	}
	opt.token = NULL;
	for (i = 0; i < LEN(rest); i++)
		check(route_rest_ok(rest[i].rest) == rest[i].ok, rest[i].rest);
	memset(rs, 0, sizeof rs);
	rs[0].path = "/ws/*", rs[0].prefix = 1;
	rs[1].path = "/ws/x/*", rs[1].prefix = 1;
	rs[2].path = "/ws/fixed";
	routes = rs, nroutes = 3;
	check(route_find("/ws/fixed", 9) == &rs[2], "exact route first");
	check(route_find("/ws/x/1", 7) == &rs[1], "longest prefix");
	check(route_find("/ws/x/", 6) == &rs[1], "prefix, empty rest");
	check(route_find("/ws/y", 5) == &rs[0], "shorter prefix");
	check(route_find("/ws", 3) == NULL, "shorter than the prefix");
	check(route_find("/wsx", 4) == NULL, "not the prefix");
	routes = NULL, nroutes = 0;
	/* GCRA: HOST_BURST at once, then one per HOST_INTERVAL_MS. */
	memset(&h, 0, sizeof h);
	for (n = 0; n < 100 && host_wait(&h) == 0; n++)
		;
	check(n == HOST_BURST, "host burst");
	check(host_wait(&h) == now + HOST_INTERVAL_MS, "host: next slot");
	now += HOST_INTERVAL_MS;
	check(host_wait(&h) == 0 && host_wait(&h) != 0, "host: one per interval");
	now -= HOST_INTERVAL_MS;
}

/* Inflate p with z: 1 if that gives want, or with want NULL fails with r. */
static int
test_inflate_is(struct inflate *z, const char *p, size_t n, const char *want,
    size_t max, int r)
{
	unsigned char *out;
	size_t len;
	int got, ok;

	got = inflate_msg(z, (const unsigned char *)p, n, &out, &len, max);
	if (want == NULL)
		return got == r && out == NULL;
	ok = got == INFL_OK && len == strlen(want) &&
	    memcmp(out, want, len) == 0;
	free(out);
	return ok;
}

/* Code lengths for freq[0..n): the longest, and whether they are complete. */
static unsigned
test_lengths(const unsigned *freq, unsigned n, unsigned limit, int *complete)
{
	unsigned char lens[30];
	unsigned i, max = 0;
	uint32_t kraft = 0;

	huff_lengths(freq, n, limit, lens);
	for (i = 0; i < n; i++)
		if (lens[i] != 0)
			kraft += 32768u >> lens[i], max = MAX(max, lens[i]);
	*complete = kraft == 32768;
	return max;
}

static void
test_deflate(void)
{
	/* RFC 7692 7.2.3: "Hello" in each way a sender may send it. */
	static const struct {
		const char	*what, *p;
		size_t		 n;
	} hello[] = {
		{ "7.2.3.1 fixed", "\xf2\x48\xcd\xc9\xc9\x07\x00", 7 },
		{ "7.2.3.3 stored",
		    "\x00\x05\x00\xfa\xff\x48\x65\x6c\x6c\x6f\x00", 11 },
		{ "7.2.3.4 BFINAL", "\xf3\x48\xcd\xc9\xc9\x07\x00\x00", 8 },
		{ "7.2.3.4 BFINAL, no trailer", "\xf3\x48\xcd\xc9\xc9\x07\x00",
		    7 },
		{ "7.2.3.5 two blocks", "\xf2\x48\x05\x00\x00\x00\xff\xff"
		    "\xca\xc9\xc9\x07\x00", 13 },
	}, bad[] = {
		{ "BTYPE 11", "\x07", 1 },
		{ "stored NLEN",
		    "\x00\x05\x00\xfb\xff\x48\x65\x6c\x6c\x6f\x00", 11 },
		{ "stored, short", "\x00\x10\x00\xef\xff\x48\x65", 7 },
		{ "fixed, cut", "\xf2\x48\xcd", 3 },
		{ "distance 1 at 0", "\x02\x02\x00", 3 },
		{ "fixed symbol 286", "\x1b\x03", 2 },
		{ "fixed distance 30", "\x4b\x04\x3e", 3 },
		{ "HLIT 287", "\xf4\x00\x00", 3 },
		{ "HDIST 31", "\x04\x1e\x00", 3 },
		{ "code lengths over-subscribed",
		    "\x04\xe0\x93\x24\x49\x92\x24\x49\x92\x00", 10 },
	};
	static const char skewed[] = "abbcccddddeeeeeffffffggggggg";
	struct inflate z;
	struct deflate c;
	unsigned freq[30], k;
	unsigned char out[64], *big, *p, *back;
	uint32_t seed = 1;
	size_t i, n = 100000, len;
	int complete;

	inflate_init(&z, 15, 0);
	for (i = 0; i < LEN(hello); i++)
		check(test_inflate_is(&z, hello[i].p, hello[i].n, "Hello", 64,
		    0), hello[i].what);
	check(test_inflate_is(&z, "\x00", 1, "", 64, 0), "7.2.3.6 empty");
	check(test_inflate_is(&z, "", 0, "", 64, 0), "empty payload");
	for (i = 0; i < LEN(bad); i++)
		check(test_inflate_is(&z, bad[i].p, bad[i].n, NULL, 64,
		    INFL_BAD), bad[i].what);
	check(test_inflate_is(&z, hello[0].p, 7, NULL, 4, INFL_TOO_BIG),
	    "inflate: max");
	check(test_inflate_is(&z, hello[0].p, 7, "Hello", 5, 0),
	    "inflate: max, exactly");
	/* 7.2.3.2: the second "Hello" is a match into the first. */
	check(test_inflate_is(&z, "\xf2\x00\x11\x00\x00", 5, NULL, 64,
	    INFL_BAD), "7.2.3.2 without the window");
	inflate_free(&z);
	inflate_init(&z, 15, 1);
	check(test_inflate_is(&z, hello[0].p, 7, "Hello", 64, 0) &&
	    test_inflate_is(&z, "\xf2\x00\x11\x00\x00", 5, "Hello", 64, 0),
	    "7.2.3.2 sharing the window");
	inflate_free(&z);

	if (deflate_init(&c) != 0) {
		check(0, "deflate_init");
		return;
	}
	len = deflate_msg(&c, (const unsigned char *)"Hello", 5, 15, out,
	    sizeof out);
	check(len == 7 && memcmp(out, hello[0].p, 7) == 0, "deflate 7.2.3.1");
	len = deflate_msg(&c, (const unsigned char *)"", 0, 15, out, sizeof out);
	check(len == 1 && out[0] == 0, "deflate 7.2.3.6 empty");
	check(deflate_msg(&c, (const unsigned char *)"Hello", 5, 15, out, 6) ==
	    0, "deflate: no room");
	/* 100 KB of a random 3000-byte pattern: no match within 2^9. */
	if ((big = malloc(n)) == NULL || (p = malloc(DEFL_BOUND(n))) == NULL)
		abort();
	for (i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345;
		big[i] = i < 3000 ? (unsigned char)(seed >> 16) : big[i - 3000];
	}
	inflate_init(&z, 15, 0);
	for (k = 9; k <= 15; k += 6) {
		back = NULL;
		len = deflate_msg(&c, big, n, (int)k, p, DEFL_BOUND(n));
		check(len > 0 && (k == 9 ? len > n / 10 * 9 : len < n / 20),
		    "deflate: window bits");
		check(len > 0 && inflate_msg(&z, p, len, &back, &len, n) == 0 &&
		    len == n && memcmp(back, big, n) == 0,
		    "deflate: round trip");
		free(back);
	}
	inflate_free(&z);
	free(big), free(p);
	deflate_free(&c);

	/* Fibonacci weights want 29-bit codes: limited, still complete. */
	for (i = 0; i < 30; i++)
		freq[i] = i < 2 ? 1 : freq[i - 1] + freq[i - 2];
	check(test_lengths(freq, 30, 15, &complete) == 15 && complete,
	    "huff_lengths: 15-bit limit");
	check(test_lengths(freq, 19, 7, &complete) == 7 && complete,
	    "huff_lengths: 7-bit limit");
	memset(freq, 0, sizeof freq);
	for (i = 0; skewed[i] != '\0'; i++)
		freq[skewed[i] - 'a']++;
	huff_lengths(freq, 30, 15, out);
	/* Optimal for weights 1..7 is 4 4 3 3 3 2 2: 74 bits. */
	for (i = 0, k = 0; i < 7; i++)
		k += freq[i] * out[i];
	check(k == 74, "huff_lengths: optimal");
}

/* utc_fields() against libc's gmtime_r(), across eras and leap days. */
static void
test_utc(void)
{
	static const int64_t t[] = { 0, 59, 86399, 86400, 951782400,
	    951868800, 1700000000, 4107542399, 253402300799, -1, -86401,
	    -2208988800 };
	struct tm tm;
	time_t tt;
	size_t i;
	int f[6], bad = 0;

	for (i = 0; i < LEN(t); i++) {
		tt = (time_t)t[i];
		gmtime_r(&tt, &tm);
		utc_fields(t[i], f);
		bad += f[0] != tm.tm_year + 1900 || f[1] != tm.tm_mon + 1 ||
		    f[2] != tm.tm_mday || f[3] != tm.tm_hour ||
		    f[4] != tm.tm_min || f[5] != tm.tm_sec;
	}
	for (tt = 0; tt < (time_t)400 * 366 * 86400; tt += 86400 * 7 + 3601) {
		gmtime_r(&tt, &tm);
		utc_fields(tt, f);
		bad += f[0] != tm.tm_year + 1900 || f[1] != tm.tm_mon + 1 ||
		    f[2] != tm.tm_mday || f[3] != tm.tm_hour;
	}
	check(bad == 0, "utc_fields matches gmtime_r");
}

/* permessage-deflate offers (RFC 7692 7.1): accepted or declined. */
static void
test_pmd(void)
{
	static const struct { const char *v; int ok; } offers[] = {
		{ "permessage-deflate", 1 },
		{ "permessage-deflate; client_max_window_bits", 1 },
		{ "Permessage-Deflate;Client_Max_Window_Bits=10", 1 },
		{ "permessage-deflate; server_no_context_takeover; "
		    "client_no_context_takeover", 1 },
		{ "permessage-deflate; server_max_window_bits=15", 1 },
		{ "permessage-deflate; server_max_window_bits=\"15\"", 1 },
		{ "permessage-deflate; server_max_window_bits=10", 0 },
		{ "permessage-deflate; server_max_window_bits=10, "
		    "permessage-deflate", 1 },
		{ "x-webkit-deflate-frame, permessage-deflate", 1 },
		{ "foo; a=\"b,c\"; d, permessage-deflate", 1 },
		{ ", , permessage-deflate", 1 },
		{ "permessage-deflate; server_max_window_bits", 0 },
		{ "permessage-deflate; server_max_window_bits=16", 0 },
		{ "permessage-deflate; server_max_window_bits=015", 0 },
		{ "permessage-deflate; client_max_window_bits=7", 0 },
		{ "permessage-deflate; client_max_window_bits=", 0 },
		{ "permessage-deflate; server_no_context_takeover=1", 0 },
		{ "permessage-deflate; client_no_context_takeover; "
		    "client_no_context_takeover", 0 },
		{ "permessage-deflate; unknown", 0 },
		{ "permessage-deflate; a=\"unterminated", 0 },
		{ "permessage-deflate x", 0 },
		{ "deflate-stream", 0 },
		{ "", 0 },
		{ "; permessage-deflate", 0 },
	};
	struct http m;
	int sbits;
	size_t i;

	memset(&m, 0, sizeof m);
	m.nh = 2;
	m.h[0].name = "Host", m.h[0].value = "h";
	m.h[1].name = "sec-websocket-extensions";
	for (i = 0; i < LEN(offers); i++) {
		m.h[1].value = (char *)offers[i].v;
		check(pmd_offered(&m, &sbits) == offers[i].ok, offers[i].v);
	}
	/* Two headers: the second one's offer counts. */
	m.nh = 3;
	m.h[1].value = "permessage-deflate; bad";
	m.h[2].name = "Sec-WebSocket-Extensions";
	m.h[2].value = "permessage-deflate";
	check(pmd_offered(&m, &sbits) == 1, "an offer in a second header");
	check(pmd_accepted("permessage-deflate") == 1, "answer: takeover");
	check(pmd_accepted("permessage-deflate;server_no_context_takeover") ==
	    0, "answer: no takeover");
	check(pmd_accepted("permessage-deflate; client_max_window_bits=10; "
	    "server_max_window_bits=12") == 1, "answer: window bits");
	check(pmd_accepted("permessage-deflate; client_max_window_bits") < 0,
	    "answer: client_max_window_bits without a value");
	check(pmd_accepted("permessage-deflate, permessage-deflate") < 0 &&
	    pmd_accepted("x-foo") < 0 && pmd_accepted("") < 0 &&
	    pmd_accepted("permessage-deflate; x") < 0, "bad answers");
}

/* Append one frame to buf; mask it when key is not NULL. */
static size_t
test_frame(unsigned char *buf, int b0, const void *pl, size_t n,
    const unsigned char *key)
{
	size_t h = 2, i;

	buf[0] = (unsigned char)b0;
	if (n < 126)
		buf[1] = (unsigned char)n;
	else if (n < 65536) {
		buf[1] = 126, buf[2] = (unsigned char)(n >> 8);
		buf[3] = (unsigned char)n, h = 4;
	} else {
		buf[1] = 127;
		for (i = 0; i < 8; i++)
			buf[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
		h = 10;
	}
	if (key != NULL) {
		buf[1] |= 0x80;
		memcpy(buf + h, key, 4);
		h += 4;
	}
	for (i = 0; i < n; i++)
		buf[h + i] = ((const unsigned char *)pl)[i] ^
		    (key ? key[i & 3] : 0);
	return h + n;
}

/* Messages queued to the fake client of the decoder test, as one string. */
static int
test_queue_is(struct queue *q, const unsigned char *want, size_t n)
{
	size_t off = 0;
	unsigned i;
	struct msg *m;

	for (i = 0; i < q->n; i++) {
		m = q->v[(q->head + i) & (q->cap - 1)];
		if (off + m->len > n || memcmp(want + off, m->p, m->len) != 0)
			return 0;
		off += m->len;
	}
	return off == n;
}

/* Does q hold exactly the n messages of want, in that order? */
static int
test_queue_order(struct queue *q, struct msg **want, unsigned n)
{
	unsigned i;

	if (q->n != n)
		return 0;
	for (i = 0; i < n; i++)
		if (q->v[(q->head + i) & (q->cap - 1)] != want[i])
			return 0;
	return 1;
}

/* Urgent entries keep their order, behind a half-sent frame and each other. */
static void
test_queue(void)
{
	struct queue q;
	struct msg *d1, *d2, *u0, *u1, *u2;
	int ok;

	d1 = msg_raw("DD", 2), d2 = msg_raw("D", 1);
	u0 = msg_raw("U", 1), u1 = msg_raw("U", 1), u2 = msg_raw("U", 1);
	memset(&q, 0, sizeof q);
	queue_push(&q, d1, 0);
	queue_push(&q, u0, 1);		/* d1 is unsent: u0 goes first */
	queue_push(&q, u1, 1);
	queue_push(&q, d2, 0);
	ok = test_queue_order(&q, (struct msg *[]){ u0, u1, d1, d2 }, 4);
	queue_clear(&q, 0);
	check(ok && q.n == 0 && q.nurgent == 0 && q.bytes == 0,
	    "urgent ahead of unsent data, in order");
	queue_push(&q, d1, 0);
	queue_push(&q, d2, 0);
	queue_consume(&q, 1);		/* d1 half sent: it keeps its place */
	queue_push(&q, u0, 1);
	queue_push(&q, u1, 1);
	ok = test_queue_order(&q, (struct msg *[]){ d1, u0, u1, d2 }, 4) &&
	    q.nurgent == 2;
	queue_consume(&q, 1 + 1 + 1);	/* the rest of d1, u0, u1 */
	ok = ok && test_queue_order(&q, (struct msg *[]){ d2 }, 1) &&
	    q.nurgent == 0;
	queue_push(&q, u2, 1);
	ok = ok && test_queue_order(&q, (struct msg *[]){ u2, d2 }, 2);
	queue_clear(&q, 0);
	check(ok && q.bytes == 0, "urgent behind a half-sent frame, in order");
	msg_unref(d1), msg_unref(d2), msg_unref(u0), msg_unref(u1);
	msg_unref(u2);
}

/* Upstream stream split at every point reassembles to the same frames. */
static void
test_decoder_upstream(void)
{
	static unsigned char in[80000], want[80000], big[70000];
	struct route r;
	struct upstream u;
	struct conn up, cl;
	size_t n = 0, w = 0, cut, step;
	int ok = 1;

	memset(big, 'x', sizeof big);
	n += test_frame(in + n, 0x01, "Hel", 3, NULL);
	n += test_frame(in + n, 0x89, "pp", 2, NULL);
	n += test_frame(in + n, 0x00, "lo", 2, NULL);
	n += test_frame(in + n, 0x80, "!", 1, NULL);
	n += test_frame(in + n, 0x82, big, 300, NULL);
	n += test_frame(in + n, 0x82, big, sizeof big, NULL);
	n += test_frame(in + n, 0x81, "", 0, NULL);
	w += test_frame(want + w, 0x81, "Hello!", 6, NULL);
	w += test_frame(want + w, 0x82, big, 300, NULL);
	w += test_frame(want + w, 0x82, big, sizeof big, NULL);
	w += test_frame(want + w, 0x81, "", 0, NULL);
	for (step = 1; step <= 3; step++)
	for (cut = 0; cut <= n; cut += step == 2 ? 997 : 1) {
		static unsigned char copy[80000];

		if (step == 3 && cut > 0)
			break;
		memset(&r, 0, sizeof r), memset(&u, 0, sizeof u);
		memset(&up, 0, sizeof up), memset(&cl, 0, sizeof cl);
		r.path = "/t", u.route = &r, up.up = &u, up.route = &r;
		up.kind = CONN_UPSTREAM, up.state = CONN_OPEN, up.fd = -1;
		cl.kind = CONN_CLIENT, cl.state = CONN_OPEN, cl.fd = -1;
		cl.route = &r, cl.joined = 1, r.clients = &cl, r.nclients = 1;
		u.c = &up;
		memcpy(copy, in, n);
		if (step == 3) {
			for (cut = 0; cut < n && ok; cut++)
				ok = ws_feed(&up, copy + cut, 1) == 0;
		} else
			ok = ws_feed(&up, copy, cut) == 0 &&
			    ws_feed(&up, copy + cut, n - cut) == 0;
		batch_flush(&r);
		msg_unref(up.d.msg);
		/* Small messages share a batch; the big one goes alone. */
		ok = ok && test_queue_is(&cl.q, want, w) && cl.q.n == 3 &&
		    up.q.n == 1;
		/* The pong: masked, same payload. */
		if (ok) {
			struct msg *m = up.q.v[up.q.head];

			ok = m->len == 8 && m->p[0] == 0x8A && m->p[1] == 0x82 &&
			    (m->p[6] ^ m->p[2]) == 'p' &&
			    (m->p[7] ^ m->p[3]) == 'p';
		}
		queue_clear(&cl.q, 0), queue_clear(&up.q, 0);
		dirty = dirty_tail = NULL;
		ndirty = 0;
		if (!ok) {
			printf("FAIL - decoder split at %zu step %zu\n", cut, step);
			break;
		}
	}
	check(ok, "upstream decoder, every split");
}

/* Hostile client frames get the RFC 6455 close code. */
static void
test_decoder_client(void)
{
	/* NOLINTNEXTLINE(clang-analyzer-optin.performance.Padding): table */
	static const struct {
		const char *what;
		int b0;
		const char *pl;
		size_t n;
		int code;
	} t[] = {
		{ "text", 0x81, "hi", 2, 0 },
		{ "rsv1", 0xC1, "hi", 2, 1002 },
		{ "rsv3", 0x91, "hi", 2, 1002 },
		{ "opcode 3", 0x83, "", 0, 1002 },
		{ "opcode B", 0x8B, "", 0, 1002 },
		{ "continuation first", 0x80, "x", 1, 1002 },
		{ "fragmented ping", 0x09, "", 0, 1002 },
		{ "close 1 byte", 0x88, "\x03", 1, 1002 },
		{ "close 999", 0x88, "\x03\xe7", 2, 1002 },
		{ "close 1005", 0x88, "\x03\xed", 2, 1002 },
		{ "close 5000", 0x88, "\x13\x88", 2, 1002 },
		{ "close bad reason", 0x88, "\x03\xe8\xff", 3, 1007 },
		{ "close 1000", 0x88, "\x03\xe8ok", 4, 0 },
		{ "bad utf8", 0x81, "\xc0\xaf", 2, 1007 },
		{ "truncated utf8", 0x81, "\xe2\x82", 2, 1007 },
		{ "too big", 0x82, NULL, 2000, 1009 },
		{ "ping 126", 0x89, NULL, 126, 1002 },
	};
	static unsigned char buf[4096], zero[2000];
	const unsigned char key[4] = { 1, 2, 3, 4 };
	struct route r;
	struct conn c;
	size_t i, n;
	int code;

	opt.max_message = 1024;
	for (i = 0; i < LEN(t); i++) {
		memset(&r, 0, sizeof r), memset(&c, 0, sizeof c);
		r.path = "/t", c.route = &r, c.fd = -1;
		c.kind = CONN_CLIENT, c.state = CONN_OPEN;
		n = test_frame(buf, t[i].b0, t[i].pl ? t[i].pl : (char *)zero,
		    t[i].n, key);
		code = ws_feed(&c, buf, n);
		check(code == t[i].code, t[i].what);
		queue_clear(&c.q, 0);
		dirty = dirty_tail = NULL;
		ndirty = 0;
	}
	/* Unmasked from a client; masked 64-bit length with the top bit. */
	memset(&c, 0, sizeof c);
	c.kind = CONN_CLIENT, c.state = CONN_OPEN, c.route = &r, c.fd = -1;
	n = test_frame(buf, 0x81, "hi", 2, NULL);
	check(ws_feed(&c, buf, n) == 1002, "unmasked client frame");
	memset(&c, 0, sizeof c);
	c.kind = CONN_CLIENT, c.state = CONN_OPEN, c.route = &r, c.fd = -1;
	/* NOLINTNEXTLINE(bugprone-not-null-terminated-result): frame bytes */
	memcpy(buf, "\x82\xff\x80\0\0\0\0\0\0\0\1\2\3\4", 14);
	check(ws_feed(&c, buf, 14) == 1002, "64-bit length, top bit");
	opt.max_message = LINE_MAX_DEFAULT;
}

static int
test_main(void)
{
	now = now_ms();
	opt.max_message = LINE_MAX_DEFAULT;
	opt.max_queue = MAX_QUEUE_DEFAULT;
	test_sha1_b64();
	test_utf8();
	test_http();
	test_args();
	test_routing();
	test_utc();
	test_pmd();
	test_deflate();
	test_queue();
	test_decoder_upstream();
	test_decoder_client();
	printf("%d passed, %d failed\n", npass, nfail);
	return nfail != 0;
}
#endif /* WSFWD_TEST */
