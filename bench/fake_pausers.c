/*
 * bench/fake_pausers.c HOST BASE_PORT N: N cheap fake pausers for bench/fanout.lua in
 * one process: a listening socket on each of HOST:BASE_PORT .. BASE_PORT+N-1, one
 * epoll loop, kept-alive connections, and a canned 200 for GET /health, POST /pause
 * and POST /resume (no PgBouncer behind, so no "own PAUSE"). They stand in for
 * pausers on other machines: on the bench's 2 shared cores they must cost little
 * beside the failover's fan-out, which is what is measured (a Lua http.serve for
 * all 48 cost about as much CPU as the client it served). Prints "ready N" once
 * every port listens; serves until TERM.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXN 1024
#define BUF 16384

typedef struct cn {
    int fd;
    int listening;
    size_t len;
    char in[BUF];
} cn;

static volatile sig_atomic_t stop;

static void on_term(int s)
{
    (void)s;
    stop = 1;
}

static const char *answer(const char *path, size_t n)
{
    if (n == 7 && memcmp(path, "/health", 7) == 0)
        return "{\"status\":\"healthy\",\"config\":{\"pool_mode\":\"transaction\"}}";
    if (n == 6 && memcmp(path, "/pause", 6) == 0)
        return "{\"created_at\":\"\",\"expires_at\":\"\"}";
    return "{}";
}

/* Answer every whole request in c->in; -1 to close. */
static int serve(cn *c)
{
    for (;;) {
        char *end = memmem(c->in, c->len, "\r\n\r\n", 4);
        if (!end)
            return c->len == BUF ? -1 : 0;
        size_t head = (size_t)(end - c->in) + 4, body = 0;
        char *cl = memmem(c->in, head, "Content-Length:", 15);
        if (!cl)
            cl = memmem(c->in, head, "content-length:", 15);
        if (cl)
            body = strtoul(cl + 15, NULL, 10);
        if (head + body > BUF)
            return -1;
        if (c->len < head + body)
            return 0;
        char *sp = memchr(c->in, ' ', head);
        char *sp2 = sp ? memchr(sp + 1, ' ', head - (size_t)(sp + 1 - c->in)) : NULL;
        if (!sp2)
            return -1;
        const char *a = answer(sp + 1, (size_t)(sp2 - sp - 1));
        char out[512];
        int n = snprintf(out, sizeof out,
                         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\n\r\n%s",
                         strlen(a), a);
        if (write(c->fd, out, (size_t)n) != n)
            return -1;
        memmove(c->in, c->in + head + body, c->len - head - body);
        c->len -= head + body;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: fake_pausers HOST BASE_PORT N\n");
        return 2;
    }
    int base = atoi(argv[2]), n = atoi(argv[3]);
    if (n < 1 || n > MAXN || base < 1 || base + n > 65536) {
        fprintf(stderr, "fake_pausers: bad BASE_PORT or N\n");
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int ep = epoll_create1(0);
    if (ep < 0) {
        perror("fake_pausers: epoll_create1");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(base + i))};
        if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
            fprintf(stderr, "fake_pausers: bad HOST %s\n", argv[1]);
            return 2;
        }
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
            bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 128) != 0) {
            fprintf(stderr, "fake_pausers: %s:%d: %s\n", argv[1], base + i, strerror(errno));
            return 1;
        }
        cn *c = calloc(1, sizeof *c);
        if (!c)
            return 1;
        c->fd = fd;
        c->listening = 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            perror("fake_pausers: epoll_ctl");
            return 1;
        }
    }
    printf("ready %d\n", n);
    fflush(stdout);
    struct epoll_event evs[64];
    while (!stop) {
        int k = epoll_wait(ep, evs, 64, 200);
        if (k < 0 && errno != EINTR) {
            perror("fake_pausers: epoll_wait");
            return 1;
        }
        for (int i = 0; i < k; i++) {
            cn *c = evs[i].data.ptr;
            if (c->listening) {
                int fd = accept4(c->fd, NULL, NULL, SOCK_NONBLOCK), one = 1;
                if (fd < 0)
                    continue;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                cn *d = calloc(1, sizeof *d);
                if (d)
                    d->fd = fd;
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = d};
                if (!d || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
                    close(fd);
                    free(d);
                }
                continue;
            }
            ssize_t r = read(c->fd, c->in + c->len, BUF - c->len);
            if (r > 0)
                c->len += (size_t)r;
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR) || serve(c) < 0) {
                close(c->fd); /* also leaves the epoll set */
                free(c);
            }
        }
    }
    return 0;
}
