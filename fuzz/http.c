/*
 * fuzz/http.c: libFuzzer target for the HTTP request path (src/http.c: our
 * libmicrohttpd glue, request tables, handler tasks, responses), end to end.
 *
 * Once per process: a host state (spgb_host_new) and a Lua server from
 * http.serve on 127.0.0.1, port 0, whose handler echoes the request table as
 * JSON (and, by path: decodes the body with http.json, sleeps, raises, or
 * returns odd statuses, headers and bodies). Per input: a fresh loopback TCP
 * connection; the input is written as the raw request stream (any number of
 * pipelined requests), the write side is shut down, and the scheduler's libuv
 * loop runs until the server closes the connection. Checked besides the
 * sanitizers: the server always closes within DEADLINE seconds (it has a 2 s
 * request timeout and sees our EOF), and whatever it answers starts with
 * "HTTP/1." (or is empty).
 * Uses: host, sched (the loop), http, log, libuv.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "luaharness.h"
#include "sched.h"

#define DEADLINE 5.0
#ifndef SHUT_MS
#define SHUT_MS 5
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int port;
static uv_timer_t deadline_timer;
static uv_poll_t poll_h;

typedef struct client {
    int fd;
    const uint8_t *data;
    size_t size, sent;
    bool shut, done, timed_out;
    char head[8];
    size_t headlen, received;
} client;

static uv_timer_t shut_timer;

static void on_shut(uv_timer_t *t)
{
    client *c = t->data;
    shutdown(c->fd, SHUT_WR);
}

static void setup(void)
{
    lua_State *L = fz_host();
    if (!getenv("FUZZ_LOG"))
        spgb_log_set_level(SPGB_LOG_ERROR + 1); /* silence: handler errors are expected */
    if (spgb_host_load(L, "fuzz/http.lua") != 1 || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        fprintf(stderr, "fuzz_http: server: %s\n", lua_tostring(L, -1));
        abort();
    }
    port = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (port <= 0 || uv_timer_init(spgb_loop(), &deadline_timer) != 0 ||
        uv_timer_init(spgb_loop(), &shut_timer) != 0)
        abort();
}

static bool poll_closed;

static void on_poll_closed(uv_handle_t *h)
{
    poll_closed = true;
}

static void on_deadline(uv_timer_t *t)
{
    client *c = t->data;
    c->timed_out = true;
    c->done = true;
}

static void on_io(uv_poll_t *h, int status, int events)
{
    client *c = h->data;
    if (status < 0) {
        c->done = true;
        return;
    }
    if ((events & UV_WRITABLE) && !c->shut) {
        while (c->sent < c->size) {
            ssize_t n = send(c->fd, c->data + c->sent, c->size - c->sent, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                c->done = true; /* reset by the server: it closed first */
                return;
            }
            c->sent += (size_t)n;
        }
        if (c->sent == c->size) {
            /* Half-close only once the server has read what we sent: an EOF that
             * arrives together with the data is missed by MHD's edge-triggered
             * epoll (see README), and the connection would wait for the
             * request timeout. */
            c->shut = true;
            uv_poll_start(h, UV_READABLE, on_io);
            uv_timer_start(&shut_timer, on_shut, SHUT_MS, 0);
        }
    }
    if (events & UV_READABLE) {
        char buf[16384];
        for (;;) {
            ssize_t n = recv(c->fd, buf, sizeof buf, 0);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                c->done = true;
                return;
            }
            if (n < 0)
                return;
            if (c->headlen < sizeof c->head) {
                size_t k = sizeof c->head - c->headlen;
                if (k > (size_t)n)
                    k = (size_t)n;
                memcpy(c->head + c->headlen, buf, k);
                c->headlen += k;
            }
            c->received += (size_t)n;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!port)
        setup();
    client c = {.data = data, .size = size};
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0)
        abort();
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c.fd, (struct sockaddr *)&sin, sizeof sin) != 0 && errno != EINPROGRESS) {
        fprintf(stderr, "fuzz_http: connect: %s\n", strerror(errno));
        abort();
    }
    uv_loop_t *loop = spgb_loop();
    if (uv_poll_init(loop, &poll_h, c.fd) != 0)
        abort();
    poll_h.data = &c;
    deadline_timer.data = shut_timer.data = &c;
    uv_poll_start(&poll_h, UV_READABLE | UV_WRITABLE, on_io);
    uv_timer_start(&deadline_timer, on_deadline, (uint64_t)(DEADLINE * 1000), 0);
    while (!c.done)
        uv_run(loop, UV_RUN_ONCE);
    uv_timer_stop(&deadline_timer);
    uv_timer_stop(&shut_timer);
    poll_closed = false;
    uv_close((uv_handle_t *)&poll_h, on_poll_closed);
    while (!poll_closed) /* poll_h is reused: wait for its close callback */
        uv_run(loop, UV_RUN_NOWAIT);
    close(c.fd);
    if (c.timed_out) {
        fprintf(stderr, "fuzz_http: the server neither answered nor closed in %.0f s "
                        "(sent %zu of %zu bytes, received %zu)\n",
                DEADLINE, c.sent, c.size, c.received);
        abort();
    }
    if (c.headlen > 0 && (c.headlen < 7 || memcmp(c.head, "HTTP/1.", 7) != 0)) {
        fprintf(stderr, "fuzz_http: the answer is not HTTP: %.*s\n", (int)c.headlen, c.head);
        abort();
    }
    return 0;
}
