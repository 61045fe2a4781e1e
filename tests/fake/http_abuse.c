/*
 * http_abuse: a tiny raw-socket client that misbehaves, for tests/lua/http_abuse_spec.lua.
 * Compiled by the spec with cc. Loopback only (the host must be 127.x.x.x).
 *
 *   http_abuse raw PORT TIMEOUT          send stdin as is, print what comes back until
 *                                        the server closes or TIMEOUT seconds pass;
 *                                        last line "END closed|timeout"
 *   http_abuse slow PORT INTERVAL MAX    send a request one byte every INTERVAL seconds;
 *                                        prints "closed after=<s> sent=<n>" when the
 *                                        server cuts us off, "survived" after MAX seconds
 *   http_abuse flood PORT N TIMEOUT      open N connections at once, send a GET on each,
 *                                        print "ok=.. status4xx=.. status5xx=.. closed=..
 *                                        refused=.. pending=.."
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int dial(int port, int nonblock)
{
    int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static int do_raw(int port, double timeout)
{
    static char in[1 << 20];
    size_t n = fread(in, 1, sizeof in, stdin);
    int fd = dial(port, 0);
    if (fd < 0) {
        perror("connect");
        return 2;
    }
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(fd, in + off, n - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    double end = now() + timeout;
    char buf[65536];
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        int ms = (int)((end - now()) * 1000);
        if (ms <= 0 || poll(&p, 1, ms) == 0) {
            printf("\nEND timeout\n");
            break;
        }
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r <= 0) {
            printf("\nEND closed\n");
            break;
        }
        fwrite(buf, 1, (size_t)r, stdout);
    }
    close(fd);
    return 0;
}

static int do_slow(int port, double interval, double max)
{
    const char *req = "GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: "
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                      "\r\n\r\n";
    int fd = dial(port, 0);
    if (fd < 0) {
        perror("connect");
        return 2;
    }
    double t0 = now();
    size_t sent = 0, len = strlen(req);
    while (now() - t0 < max) {
        if (sent < len) {
            if (send(fd, req + sent, 1, MSG_NOSIGNAL) != 1) {
                printf("closed after=%.1f sent=%zu\n", now() - t0, sent);
                return 0;
            }
            sent++;
        }
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, (int)(interval * 1000)) > 0) {
            char b[4096];
            ssize_t r = recv(fd, b, sizeof b, 0);
            if (r <= 0) {
                printf("closed after=%.1f sent=%zu\n", now() - t0, sent);
                return 0;
            }
            printf("response after=%.1f sent=%zu: %.*s\n", now() - t0, sent, (int)(r > 40 ? 40 : r), b);
            return 0;
        }
    }
    printf("survived sent=%zu\n", sent);
    return 0;
}

enum { C_CONNECTING, C_SENT, C_DONE };

static int do_flood(int port, int n, double timeout)
{
    const char *req = "GET /flood HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    struct pollfd *p = calloc((size_t)n, sizeof *p);
    int *state = calloc((size_t)n, sizeof *state);
    if (!p || !state)
        return 2;
    int ok = 0, s4 = 0, s5 = 0, closed = 0, refused = 0, pending = 0;
    for (int i = 0; i < n; i++) {
        p[i].fd = dial(port, 1);
        if (p[i].fd < 0) {
            refused++;
            state[i] = C_DONE;
            p[i].fd = -1;
            continue;
        }
        p[i].events = POLLOUT;
    }
    double end = now() + timeout;
    int left = n - refused;
    while (left > 0 && now() < end) {
        int rc = poll(p, (nfds_t)n, 100);
        if (rc <= 0)
            continue;
        for (int i = 0; i < n; i++) {
            if (p[i].fd < 0 || !p[i].revents)
                continue;
            if (state[i] == C_CONNECTING) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(p[i].fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err || send(p[i].fd, req, strlen(req), MSG_NOSIGNAL) < 0) {
                    if (err == ECONNREFUSED)
                        refused++;
                    else
                        closed++;
                    close(p[i].fd);
                    p[i].fd = -1;
                    state[i] = C_DONE;
                    left--;
                    continue;
                }
                state[i] = C_SENT;
                p[i].events = POLLIN;
                continue;
            }
            char b[4096];
            ssize_t r = recv(p[i].fd, b, sizeof b - 1, 0);
            if (r > 0) {
                b[r] = 0;
                int code = 0;
                if (sscanf(b, "HTTP/1.%*d %d", &code) == 1) {
                    if (code >= 200 && code < 300)
                        ok++;
                    else if (code >= 400 && code < 500)
                        s4++;
                    else
                        s5++;
                } else {
                    closed++;
                }
            } else {
                closed++;
            }
            close(p[i].fd);
            p[i].fd = -1;
            state[i] = C_DONE;
            left--;
        }
    }
    for (int i = 0; i < n; i++)
        if (p[i].fd >= 0) {
            pending++;
            close(p[i].fd);
        }
    printf("ok=%d status4xx=%d status5xx=%d closed=%d refused=%d pending=%d\n", ok, s4, s5,
           closed, refused, pending);
    free(p);
    free(state);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "raw") == 0)
        return do_raw(atoi(argv[2]), atof(argv[3]));
    if (argc >= 5 && strcmp(argv[1], "slow") == 0)
        return do_slow(atoi(argv[2]), atof(argv[3]), atof(argv[4]));
    if (argc >= 5 && strcmp(argv[1], "flood") == 0)
        return do_flood(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: http_abuse raw PORT TIMEOUT | slow PORT INTERVAL MAX | "
                    "flood PORT N TIMEOUT\n");
    return 2;
}
