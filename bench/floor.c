/*
 * floor.c - what one send() on a loopback TCP socket costs (issue 4).
 *
 *   bench/floor -n SOCKETS -s BYTES -t SECONDS [-w WARMUP] [-c SENDER_CPU]
 *               [-C READER_CPU] [-N]
 *
 * The process forks.  The reader (the child, pinned to READER_CPU, default 1)
 * opens SOCKETS TCP connections to a listener the sender made on 127.0.0.1,
 * and drains them all with epoll into one discarded buffer.  The sender (the
 * parent, pinned to SENDER_CPU, default 0) accepts them, and for the warm-up
 * and then SECONDS does nothing but send(fd, buf, BYTES, MSG_NOSIGNAL |
 * MSG_DONTWAIT) to each socket in turn, skipping (and counting) one that says
 * EAGAIN, and waiting in epoll for room only when none took anything.  Its
 * own CPU time over the measured window divided by the sends is the least a
 * relay can spend per send with that many sockets and that much per send: a
 * relay does the same system call and more.  On loopback that time includes
 * the receiving side's TCP work, done in the sender's softirq.  The sockets
 * are set up as wsfwd sets up its clients' (TCP_NODELAY; -N keeps Nagle), and
 * the two ends sit on the CPUs bench/run.py gives the relay and the load tool.
 *
 * The result is one JSON line on stdout; errors and notes go to stderr.
 * C99 plus POSIX and Linux (epoll, sched_setaffinity).
 *
 *   cc -O2 -Wall -Wextra -std=c99 -D_GNU_SOURCE -o bench/floor bench/floor.c
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE	(256 * 1024)	/* the reader's one buffer */
#define MAX_EVENTS	1024
#define MAX_BYTES	(4 * 1024 * 1024)
#define CHECK_EVERY	64		/* sends between clock reads */
#define SETUP_S		30		/* bound on connecting them all */

static pid_t	child = -1;		/* the reader, in the sender */
static int	lifeline = -1;		/* its end of the pipe, in the sender */
static int	nsock = 100, size = 100, nagle;
static double	seconds = 2, warmup = 0.5;

static void
die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "floor%s: ", child == 0 ? " (reader)" : "");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static double
clock_s(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double
tv_s(struct timeval tv)
{
	return tv.tv_sec + tv.tv_usec / 1e6;
}

/* Leave no reader behind, whichever way the sender exits. */
static void
reap(void)
{
	int i, st;

	if (child <= 0)
		return;
	/* it leaves at the pipe's EOF */
	if (lifeline >= 0) {
		close(lifeline);
		lifeline = -1;
	}
	for (i = 0; i < 300; i++) {
		if (waitpid(child, &st, WNOHANG) != 0) {
			child = -1;
			return;
		}
		usleep(10000);
	}
	kill(child, SIGKILL);
	waitpid(child, &st, 0);
	child = -1;
}

/* Pin to cpu; the CPU, or -1 if not pinned. */
static int
pin(int cpu, const char *who)
{
	cpu_set_t set;

	if (cpu < 0)
		return -1;
	if (cpu >= CPU_SETSIZE)
		die("CPU %d out of range", cpu);
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set) < 0) {
		fprintf(stderr, "floor: cannot pin the %s to CPU %d: %s; "
		    "running unpinned\n", who, cpu, strerror(errno));
		return -1;
	}
	return cpu;
}

static long
number(const char *s, long lo, long hi, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		die("%s must be %ld..%ld: %s", what, lo, hi, s);
	return v;
}

static double
seconds_arg(const char *s, const char *what)
{
	char *end;
	double v;

	v = strtod(s, &end);
	if (end == s || *end || !(v >= 0 && v <= 3600))
		die("%s must be 0..3600 seconds: %s", what, s);
	return v;
}

static void
usage(void)
{
	fputs(
"usage: floor [-N] [-n SOCKETS] [-s BYTES] [-r ROUNDS] [-t SECONDS]\n"
"             [-w SECONDS] [-c SENDER_CPU] [-C READER_CPU]\n"
"  -n SOCKETS     loopback TCP connections (default 100)\n"
"  -s BYTES       bytes per send() (default 100)\n"
"  -r ROUNDS      rounds (one send to each socket) per second, paced as a\n"
"                 relay with a paced source is (default: as fast as it can)\n"
"  -t SECONDS     measured window (default 2)\n"
"  -w SECONDS     warm-up before it, sending the same way (default 0.5)\n"
"  -c CPU         the sender's CPU (default 0; -1: not pinned)\n"
"  -C CPU         the reader's CPU (default 1; -1: not pinned)\n"
"  -N             keep Nagle on (default TCP_NODELAY, as wsfwd's clients)\n"
"The sender's CPU time per send() goes to stdout as one JSON line.\n",
	    stderr);
}

/*
 * The child: connect them all (blocking, one at a time; the sender accepts
 * meanwhile), then read and discard until the sender is gone.  The pipe's
 * EOF says so even if the sender was killed; alarm() bounds the rest.
 */
static void
reader(int cpu, const struct sockaddr_in *sin, int life)
{
	static unsigned char rbuf[RBUF_SIZE];
	struct epoll_event ev, evs[MAX_EVENTS];
	int ep, fd, i, n, nopen;
	ssize_t r;

	alarm((unsigned)(SETUP_S + warmup + seconds + 30));
	pin(cpu, "reader");
	if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
		die("epoll_create1: %s", strerror(errno));
	memset(&ev, 0, sizeof ev);
	ev.events = EPOLLIN;
	ev.data.fd = life;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, life, &ev) < 0)
		die("epoll_ctl: %s", strerror(errno));
	for (nopen = 0; nopen < nsock; nopen++) {
		if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
			die("cannot open socket %d of %d: %s", nopen + 1, nsock,
			    strerror(errno));
		if (connect(fd, (const struct sockaddr *)sin, sizeof *sin) < 0)
			die("cannot connect socket %d of %d: %s", nopen + 1,
			    nsock, strerror(errno));
		if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0)
			die("fcntl: %s", strerror(errno));
		ev.data.fd = fd;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
			die("epoll_ctl: %s", strerror(errno));
	}
	while (nopen > 0) {
		if ((n = epoll_wait(ep, evs, MAX_EVENTS, -1)) < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait: %s", strerror(errno));
		}
		for (i = 0; i < n; i++) {
			fd = evs[i].data.fd;
			if (fd == life)
				_exit(0);	/* the sender is done */
			/* one read per wake-up, as a relay's client would */
			r = recv(fd, rbuf, sizeof rbuf, 0);
			if (r > 0 || (r < 0 && (errno == EAGAIN ||
			    errno == EINTR)))
				continue;
			epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
			close(fd);
			nopen--;
		}
	}
	_exit(0);
}

/* Accept nsock connections into fds, within SETUP_S. */
static void
accept_all(int lfd, int *fds)
{
	struct pollfd pfd;
	double deadline;
	int fd, got, one = 1, st;

	deadline = clock_s(CLOCK_MONOTONIC) + SETUP_S;
	pfd.fd = lfd;
	pfd.events = POLLIN;
	for (got = 0; got < nsock; ) {
		if (clock_s(CLOCK_MONOTONIC) > deadline)
			die("only %d of %d sockets connected within %d s", got,
			    nsock, SETUP_S);
		if (waitpid(child, &st, WNOHANG) == child) {
			child = -1;
			die("the reader exited after %d of %d connections (see "
			    "its message above)", got, nsock);
		}
		if (poll(&pfd, 1, 100) <= 0)
			continue;
		while (got < nsock) {
			fd = accept4(lfd, NULL, NULL,
			    SOCK_NONBLOCK | SOCK_CLOEXEC);
			if (fd < 0) {
				if (errno == EAGAIN || errno == EINTR ||
				    errno == ECONNABORTED)
					break;
				die("cannot accept socket %d of %d: %s",
				    got + 1, nsock, strerror(errno));
			}
			if (!nagle)
				setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
				    sizeof one);
			fds[got++] = fd;
		}
	}
}

int
main(int argc, char **argv)
{
	struct sockaddr_in sin;
	struct rlimit rl;
	struct rusage ru0, ru1;
	socklen_t sl;
	unsigned char *buf;
	unsigned long long sends = 0, eagain = 0, bytes = 0;
	unsigned long long waits = 0, s0 = 0, e0 = 0, b0 = 0, w0 = 0;
	struct epoll_event ev, evs[MAX_EVENTS];
	double now, t0 = 0, t1, end, c0 = 0, c1, cpu, user, sys, next;
	long rate = 0;
	struct timespec ts;
	int ccpu = 0, rcpu = 1, lfd, ep, o, i, k, measuring = 0;
	int round_ok = 1;
	int pfd[2], *fds;
	rlim_t need;
	ssize_t r;

	while ((o = getopt(argc, argv, "n:s:r:t:w:c:C:Nh")) != -1) {
		switch (o) {
		case 'n': nsock = (int)number(optarg, 1, 1000000, "-n"); break;
		case 's': size = (int)number(optarg, 1, MAX_BYTES, "-s"); break;
		case 'r': rate = number(optarg, 1, 10000000, "-r"); break;
		case 't': seconds = seconds_arg(optarg, "-t"); break;
		case 'w': warmup = seconds_arg(optarg, "-w"); break;
		case 'c': ccpu = (int)number(optarg, -1, 1 << 20, "-c"); break;
		case 'C': rcpu = (int)number(optarg, -1, 1 << 20, "-C"); break;
		case 'N': nagle = 1; break;
		case 'h': usage(); return 0;
		default: usage(); return 2;
		}
	}
	if (optind != argc) {
		usage();
		return 2;
	}
	if (seconds <= 0)
		die("-t must be more than 0");

	/* each process holds one descriptor per socket, plus a few */
	need = (rlim_t)nsock + 16;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		die("getrlimit: %s", strerror(errno));
	if (rl.rlim_cur < need) {
		rl.rlim_cur = rl.rlim_max;
		if (rl.rlim_max < need || setrlimit(RLIMIT_NOFILE, &rl) < 0)
			die("cannot open %d sockets: %llu descriptors needed per "
			    "process, the hard limit (ulimit -Hn) is %llu", nsock,
			    (unsigned long long)need,
			    (unsigned long long)rl.rlim_max);
	}
	if ((fds = calloc((size_t)nsock, sizeof *fds)) == NULL ||
	    (buf = malloc((size_t)size)) == NULL)
		die("out of memory");
	memset(buf, 'x', (size_t)size);
	signal(SIGPIPE, SIG_IGN);

	/* the listener before the fork: the reader inherits its address */
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		die("socket: %s", strerror(errno));
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sl = sizeof sin;
	if (bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
	    listen(lfd, nsock < 65535 ? nsock : 65535) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sin, &sl) < 0)
		die("listen on 127.0.0.1: %s", strerror(errno));
	if (pipe(pfd) < 0)
		die("pipe: %s", strerror(errno));
	fflush(NULL);
	if ((child = fork()) < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		close(lfd);
		close(pfd[1]);
		reader(rcpu, &sin, pfd[0]);
	}
	close(pfd[0]);
	lifeline = pfd[1];
	atexit(reap);
	ccpu = pin(ccpu, "sender");
	if (ccpu >= 0 && ccpu == rcpu)
		fprintf(stderr, "floor: sender and reader share CPU %d: the "
		    "figure includes the reader's work\n", ccpu);
	accept_all(lfd, fds);
	close(lfd);
	/* edge-triggered: costs nothing until a socket has been full */
	if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
		die("epoll_create1: %s", strerror(errno));
	memset(&ev, 0, sizeof ev);
	ev.events = EPOLLOUT | EPOLLET;
	for (i = 0; i < nsock; i++) {
		ev.data.fd = fds[i];
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0)
			die("epoll_ctl: %s", strerror(errno));
	}

	/*
	 * Round robin until the end of the warm-up, then for SECONDS.  A
	 * partial send counts as a send: it was one system call.
	 */
	now = next = clock_s(CLOCK_MONOTONIC);
	end = now + warmup;
	for (k = 0;; ) {
		/*
		 * When the reader is the slower (large writes), a whole round
		 * of EAGAIN would spin and bill the spinning to the sends:
		 * wait for room instead, as a relay waits for EPOLLOUT.
		 */
		if (round_ok == 0) {
			if (epoll_wait(ep, evs, MAX_EVENTS, 100) < 0 &&
			    errno != EINTR)
				die("epoll_wait: %s", strerror(errno));
			waits++;
			k = CHECK_EVERY - 1;	/* and read the clock */
		}
		round_ok = 0;
		for (i = 0; i < nsock; i++) {
			r = send(fds[i], buf, (size_t)size,
			    MSG_NOSIGNAL | MSG_DONTWAIT);
			if (r >= 0) {
				sends++;
				round_ok++;
				bytes += (unsigned long long)r;
			} else if (errno == EAGAIN || errno == EWOULDBLOCK)
				eagain++;
			else if (errno != EINTR)
				die("send on socket %d of %d: %s", i + 1, nsock,
				    strerror(errno));
			if (++k < CHECK_EVERY)
				continue;
			k = 0;
			if ((now = clock_s(CLOCK_MONOTONIC)) < end)
				continue;
			if (measuring)
				goto done;
			/* the warm-up is over: start counting */
			measuring = 1;
			s0 = sends, e0 = eagain, b0 = bytes, w0 = waits;
			getrusage(RUSAGE_SELF, &ru0);
			c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
			t0 = clock_s(CLOCK_MONOTONIC);
			end = t0 + seconds;
		}
		/* -r: sleep until the next round is due; never catch up */
		if (rate > 0) {
			next += 1.0 / rate;
			if ((now = clock_s(CLOCK_MONOTONIC)) >= next)
				next = now;
			else {
				ts.tv_sec = (time_t)(next - now);
				ts.tv_nsec = (long)((next - now - ts.tv_sec) * 1e9);
				nanosleep(&ts, NULL);
			}
		}
	}
done:
	c1 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
	getrusage(RUSAGE_SELF, &ru1);
	t1 = clock_s(CLOCK_MONOTONIC);
	sends -= s0, eagain -= e0, bytes -= b0, waits -= w0;
	cpu = c1 - c0;
	user = tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime);
	sys = tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime);

	for (i = 0; i < nsock; i++)
		close(fds[i]);
	reap();

	printf("{\"sockets\":%d,\"bytes\":%d,\"sends\":%llu,\"eagain\":%llu,"
	    "\"waits\":%llu,\"sent_bytes\":%llu,\"seconds\":%.4f,\"cpu_s\":%.4f,"
	    "\"user_s\":%.4f,\"sys_s\":%.4f,\"us_per_send\":%.4f,"
	    "\"sends_per_s\":%.0f,\"rate\":%ld,\"nodelay\":%s}\n",
	    nsock, size, sends, eagain, waits, bytes, t1 - t0, cpu, user, sys,
	    sends ? cpu * 1e6 / sends : 0.0, sends / (t1 - t0), rate,
	    nagle ? "false" : "true");
	/*
	 * A reader that falls behind (another process on its CPU, or large
	 * writes) makes sends cheaper: they are appended to data still queued
	 * and leave far fewer segments.  Say so: that is below the floor.
	 */
	if (eagain > sends / 10)
		fprintf(stderr, "floor: %llu sends said EAGAIN (%llu went "
		    "through, %llu waits for room): the reader was the slower "
		    "end, so sends were partly appended to queued data\n",
		    eagain, sends, waits);
	/* the CPU time per send holds, but sends/s does not */
	if (rate == 0 && waits == 0 && cpu < 0.9 * (t1 - t0))
		fprintf(stderr, "floor: the sender had only %.0f%% of its CPU: "
		    "something else ran there\n", 100 * cpu / (t1 - t0));
	return 0;
}
