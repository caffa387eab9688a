// A hostile guest's network load generator, built statically on the host and copied into
// the sandbox by the hostile network tests (the default busybox image has no UDP client
// and one process per connection would not fit a small guest).
//
//   flood tcp <addr> <port> <count> <hold_ms>
//       open <count> non-blocking TCP connections at once, wait up to 20 s until each one
//       is connected or refused, keep them open <hold_ms>, close them all. Prints
//       "connected=N refused=N reset=N timeout=N other=N".
//   flood udp <addr> <port> <count> <sockets>
//       send <count> datagrams from <sockets> sockets, in turn: a valid DNS query for
//       host.microsandbox.internal, random bytes of random length (1-1400), a 5-byte
//       stub, an empty datagram. Prints "sent=N dropped=N answered=N formerr=N other=N":
//       the replies read back while sending and for 2 s after (answered: NOERROR with
//       one answer, for one of the queries; formerr: FORMERR, for random bytes that
//       happened to carry a query-like header).
//   flood dnstcp <addr> <port> <name>
//       one A query for <name> over TCP (RFC 1035 length framing). Prints
//       "rcode=N answers=N a=IP[,IP...]".
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

static struct sockaddr_in target(const char *addr, const char *port) {
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)atoi(port));
  if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
    fprintf(stderr, "bad address %s\n", addr);
    exit(2);
  }
  return sa;
}

// A DNS query (A, IN, recursion desired) for `name` into `buf`; returns its length.
static int dns_query(unsigned char *buf, uint16_t id, const char *name) {
  int n = 0;
  buf[n++] = id >> 8;
  buf[n++] = id & 0xff;
  buf[n++] = 0x01; // RD
  buf[n++] = 0x00;
  buf[n++] = 0; buf[n++] = 1; // QDCOUNT
  buf[n++] = 0; buf[n++] = 0; buf[n++] = 0; buf[n++] = 0; buf[n++] = 0; buf[n++] = 0;
  const char *p = name;
  while (*p) {
    const char *dot = strchr(p, '.');
    int len = dot ? (int)(dot - p) : (int)strlen(p);
    buf[n++] = (unsigned char)len;
    memcpy(buf + n, p, len);
    n += len;
    p += len;
    if (*p == '.') p++;
  }
  buf[n++] = 0;
  buf[n++] = 0; buf[n++] = 1; // A
  buf[n++] = 0; buf[n++] = 1; // IN
  return n;
}

static int tcp_flood(int argc, char **argv) {
  if (argc != 6) return 2;
  struct sockaddr_in sa = target(argv[2], argv[3]);
  int count = atoi(argv[4]);
  int hold = atoi(argv[5]);
  struct pollfd *pf = calloc(count, sizeof *pf);
  int *state = calloc(count, sizeof *state); // 0 pending, 1 connected, 2 refused, 3 reset, 4 other
  int connected = 0, refused = 0, reset = 0, other = 0, pending = 0;
  for (int i = 0; i < count; i++) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s < 0) {
      fprintf(stderr, "socket %d: %s\n", i, strerror(errno));
      return 1;
    }
    pf[i].fd = s;
    pf[i].events = POLLOUT;
    int r = connect(s, (struct sockaddr *)&sa, sizeof sa);
    if (r == 0) {
      state[i] = 1;
      connected++;
      pf[i].fd = -s - 1;
    } else if (errno == EINPROGRESS) {
      pending++;
    } else {
      state[i] = errno == ECONNREFUSED ? 2 : 4;
      if (errno == ECONNREFUSED) refused++; else other++;
      pf[i].fd = -s - 1;
    }
  }
  long deadline = now_ms() + 20000;
  while (pending > 0 && now_ms() < deadline) {
    int r = poll(pf, count, 200);
    if (r < 0 && errno != EINTR) break;
    for (int i = 0; i < count && r > 0; i++) {
      if (pf[i].fd < 0 || !pf[i].revents) continue;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(pf[i].fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0) { state[i] = 1; connected++; }
      else if (err == ECONNREFUSED) { state[i] = 2; refused++; }
      else if (err == ECONNRESET) { state[i] = 3; reset++; }
      else { state[i] = 4; other++; }
      pending--;
      pf[i].fd = -pf[i].fd - 1;
    }
  }
  printf("connected=%d refused=%d reset=%d timeout=%d other=%d\n", connected, refused, reset, pending, other);
  fflush(stdout);
  usleep((useconds_t)hold * 1000);
  for (int i = 0; i < count; i++) close(pf[i].fd < 0 ? -pf[i].fd - 1 : pf[i].fd);
  return 0;
}

// Read every datagram waiting on `s` and sort them by what they answer.
static void drain(int s, long *answered, long *formerr, long *other) {
  unsigned char in[2048];
  ssize_t n;
  while ((n = recv(s, in, sizeof in, 0)) > 0) {
    int rcode = n >= 12 ? in[3] & 0x0f : -1, an = n >= 12 ? (in[6] << 8) | in[7] : 0;
    uint16_t id = n >= 2 ? (uint16_t)((in[0] << 8) | in[1]) : 1;
    if (rcode == 0 && an == 1 && id % 4 == 0) (*answered)++;
    else if (rcode == 1) (*formerr)++;
    else (*other)++;
  }
}

static int udp_flood(int argc, char **argv) {
  if (argc != 6) return 2;
  struct sockaddr_in sa = target(argv[2], argv[3]);
  int count = atoi(argv[4]);
  int nsock = atoi(argv[5]);
  int *socks = calloc(nsock, sizeof *socks);
  for (int i = 0; i < nsock; i++) {
    socks[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (socks[i] < 0) {
      fprintf(stderr, "socket: %s\n", strerror(errno));
      return 1;
    }
  }
  srand(12345);
  unsigned char buf[1500];
  long sent = 0, dropped = 0, answered = 0, formerr = 0, other = 0;
  for (int i = 0; i < count; i++) {
    int s = socks[i % nsock];
    int len;
    switch (i % 4) {
      case 0: len = dns_query(buf, (uint16_t)i, "host.microsandbox.internal"); break;
      case 1:
        len = 1 + rand() % 1400;
        for (int j = 0; j < len; j++) buf[j] = (unsigned char)rand();
        break;
      case 2: len = 5; memset(buf, 0xff, 5); break;
      default: len = 0; break;
    }
    for (int tries = 0;; tries++) {
      if (sendto(s, buf, len, 0, (struct sockaddr *)&sa, sizeof sa) >= 0) { sent++; break; }
      if ((errno != EAGAIN && errno != ENOBUFS) || tries == 100) { dropped++; break; }
      usleep(1000);
    }
    drain(s, &answered, &formerr, &other);
  }
  long deadline = now_ms() + 2000;
  while (now_ms() < deadline) {
    for (int i = 0; i < nsock; i++) drain(socks[i], &answered, &formerr, &other);
    usleep(20000);
  }
  printf("sent=%ld dropped=%ld answered=%ld formerr=%ld other=%ld\n", sent, dropped, answered, formerr, other);
  return 0;
}

static int dns_tcp(int argc, char **argv) {
  if (argc != 5) return 2;
  struct sockaddr_in sa = target(argv[2], argv[3]);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct timeval tv = {10, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0) {
    printf("connect: %s\n", strerror(errno));
    return 1;
  }
  unsigned char q[600], a[4096];
  int n = dns_query(q + 2, 0x4242, argv[4]);
  q[0] = n >> 8;
  q[1] = n & 0xff;
  if (write(s, q, n + 2) != n + 2) {
    printf("write: %s\n", strerror(errno));
    return 1;
  }
  int got = 0;
  while (got < 2 || got < 2 + ((a[0] << 8) | a[1])) {
    int r = read(s, a + got, sizeof a - got);
    if (r <= 0) {
      printf("read: %s after %d bytes\n", r == 0 ? "EOF" : strerror(errno), got);
      return 1;
    }
    got += r;
  }
  unsigned char *m = a + 2;
  int mlen = (a[0] << 8) | a[1];
  int rcode = m[3] & 0x0f, an = (m[6] << 8) | m[7];
  // Skip the question, then read A records (names are compressed pointers or labels).
  int p = 12;
  while (p < mlen && m[p]) p += m[p] + 1;
  p += 5;
  printf("rcode=%d answers=%d a=", rcode, an);
  for (int i = 0; i < an && p < mlen; i++) {
    if ((m[p] & 0xc0) == 0xc0) p += 2; else { while (p < mlen && m[p]) p += m[p] + 1; p++; }
    int type = (m[p] << 8) | m[p + 1], rdlen = (m[p + 8] << 8) | m[p + 9];
    p += 10;
    if (type == 1 && rdlen == 4) printf("%s%d.%d.%d.%d", i ? "," : "", m[p], m[p + 1], m[p + 2], m[p + 3]);
    p += rdlen;
  }
  printf("\n");
  return 0;
}

int main(int argc, char **argv) {
  int r = 2;
  if (argc > 1 && !strcmp(argv[1], "tcp")) r = tcp_flood(argc, argv);
  else if (argc > 1 && !strcmp(argv[1], "udp")) r = udp_flood(argc, argv);
  else if (argc > 1 && !strcmp(argv[1], "dnstcp")) r = dns_tcp(argc, argv);
  if (r == 2) fprintf(stderr, "usage: flood tcp|udp|dnstcp ...\n");
  return r;
}
