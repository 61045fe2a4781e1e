/*
 * hc: plain HTTP/1.1 requests on kept-alive connections (see hc.h).
 *
 * A request (hcall, in a userdata on the task's stack) takes an idle connection to
 * its address or opens one, writes its bytes (uv_try_write; uv_write for what the
 * socket did not take) and parses what the connection reads until the response is
 * whole: a Content-Length body, a chunked one, or one that ends with the connection.
 * A whole response that lets the connection live puts it back in the idle pool. A
 * reused connection that fails before any byte of the response came (the server
 * closed it while idle) is replaced by a new one once, the request sent again:
 * nothing of it was read.
 */
#include "hc.h"

#include <lauxlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "curlm.h"
#include "httpc.h"
#include "sched.h"

#define IDLE_MAX 256         /* idle connections kept, all addresses */
#define IDLE_SECONDS 30.0    /* an idle connection older than this is not reused */
#define HEAD_MAX (64 * 1024) /* a response head larger than this is an error */
#define IDLE_BUCKETS 64      /* idle connections by a hash of their address */

typedef struct hcall hcall;

typedef struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* the connect timeout */
    uv_connect_t creq;
    hcall *call;              /* the request it carries; NULL when idle or abandoned */
    struct conn *next, *prev; /* in its idle bucket */
    char key[64];
    unsigned bucket;
    double idle_since;
    int open_handles;
    bool connected, closing, idle;
} conn;

enum { P_HEAD, P_BODY };
enum { B_NONE, B_LENGTH, B_CHUNKED, B_CLOSE };

struct hcall {
    spgb_op op;
    conn *c;
    spgb_hc_url u;
    spgb_buf req;    /* the request's bytes, kept for one resend */
    spgb_buf in;     /* what was read; the head at its start once whole */
    spgb_buf body;   /* a chunked body, decoded */
    size_t head_len; /* bytes of the head in `in`, with its blank line */
    size_t pos;      /* parse position in `in` (after the head) */
    size_t clen;
    size_t max_body;
    double ctimeout;
    int phase, mode, status;
    bool head_method, keep, reused, resent, got_bytes, finished;
    const char *code; /* NULL: success */
    char err[240];
};

static conn *idle_buckets[IDLE_BUCKETS];
static int idle_n;
static bool at_close_registered;
static char read_buf[64 * 1024];

int spgb_hc_idle_count(void)
{
    return idle_n;
}

/* ---- URLs ------------------------------------------------------------------ */

bool spgb_hc_parse_url(const char *url, spgb_hc_url *u)
{
    if (strncmp(url, "http://", 7) != 0)
        return false;
    const char *a = url + 7, *e = a;
    while (*e && *e != '/' && *e != '?' && *e != '#')
        e++;
    if (memchr(a, '@', (size_t)(e - a)))
        return false;
    char ip[48];
    const char *hp, *he, *port = NULL;
    bool v6 = *a == '[';
    if (v6) {
        hp = a + 1;
        he = memchr(hp, ']', (size_t)(e - hp));
        if (!he)
            return false;
        if (he + 1 < e) {
            if (he[1] != ':')
                return false;
            port = he + 2;
        }
    } else {
        hp = a;
        he = memchr(a, ':', (size_t)(e - a));
        if (he)
            port = he + 1;
        else
            he = e;
    }
    size_t hl = (size_t)(he - hp);
    if (hl == 0 || hl >= sizeof ip)
        return false;
    memcpy(ip, hp, hl);
    ip[hl] = '\0';
    long pn = 80;
    if (port) {
        if (port == e)
            return false;
        pn = 0;
        for (const char *p = port; p < e; p++) {
            if (*p < '0' || *p > '9' || pn > 65535)
                return false;
            pn = pn * 10 + (*p - '0');
        }
        if (pn < 1 || pn > 65535)
            return false;
    }
    memset(&u->addr, 0, sizeof u->addr);
    if (v6) {
        if (uv_ip6_addr(ip, (int)pn, (struct sockaddr_in6 *)&u->addr) != 0)
            return false;
    } else {
        /* uv_ip4_addr accepts what inet_pton does: four decimal parts only. */
        if (uv_ip4_addr(ip, (int)pn, (struct sockaddr_in *)&u->addr) != 0)
            return false;
    }
    const char *pe = e + strcspn(e, "#");
    for (const char *p = e; p < pe; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return false;
    snprintf(u->key, sizeof u->key, v6 ? "[%s]:%ld" : "%s:%ld", ip, pn);
    if (port)
        snprintf(u->host, sizeof u->host, "%s", u->key);
    else
        snprintf(u->host, sizeof u->host, v6 ? "[%s]" : "%s", ip);
    u->path = e;
    u->path_len = (size_t)(pe - e);
    return true;
}

/* ---- connections ----------------------------------------------------------- */

static void conn_closed(uv_handle_t *h)
{
    conn *c = h->data;
    if (--c->open_handles == 0)
        free(c);
}

static unsigned key_bucket(const char *key)
{
    unsigned h = 2166136261u; /* FNV-1a */
    for (; *key; key++)
        h = (h ^ (unsigned char)*key) * 16777619u;
    return h % IDLE_BUCKETS;
}

static void idle_remove(conn *c)
{
    if (!c->idle)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        idle_buckets[c->bucket] = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->idle = false;
    c->next = c->prev = NULL;
    idle_n--;
}

static void conn_close(conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->call = NULL;
    idle_remove(c);
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
    uv_close((uv_handle_t *)&c->timer, conn_closed);
}

static void close_idle_all(void)
{
    for (int i = 0; i < IDLE_BUCKETS; i++)
        while (idle_buckets[i])
            conn_close(idle_buckets[i]);
}

/* An idle connection reused for key, or NULL. */
static conn *idle_take(const char *key)
{
    double now = spgb_now();
    conn *c = idle_buckets[key_bucket(key)];
    while (c) {
        conn *next = c->next;
        if (strcmp(c->key, key) == 0) {
            idle_remove(c);
            if (now - c->idle_since <= IDLE_SECONDS)
                return c;
            conn_close(c);
        }
        c = next;
    }
    return NULL;
}

static void idle_put(conn *c)
{
    c->call = NULL;
    if (idle_n >= IDLE_MAX) {
        conn_close(c);
        return;
    }
    c->idle = true;
    c->idle_since = spgb_now();
    c->prev = NULL;
    c->next = idle_buckets[c->bucket];
    if (c->next)
        c->next->prev = c;
    idle_buckets[c->bucket] = c;
    idle_n++;
}

/* ---- finishing ------------------------------------------------------------- */

static void finish(hcall *h, const char *code, const char *fmt, ...)
{
    if (h->finished)
        return;
    conn *c = h->c;
    h->c = NULL;
    if (c) {
        if (!code && h->keep)
            idle_put(c);
        else
            conn_close(c);
    }
    h->code = code;
    h->finished = true;
    if (code) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(h->err, sizeof h->err, fmt, ap);
        va_end(ap);
    }
    spgb_op_done(&h->op);
}

static int start(hcall *h);

/* The connection failed (uverr) before the response was whole: send again on a
 * new connection if it was a reused one and nothing came back, else fail. */
static void broken(hcall *h, const char *what, int uverr)
{
    if (h->reused && !h->got_bytes && !h->resent) {
        conn_close(h->c);
        h->c = NULL;
        h->resent = true;
        h->reused = false;
        int rc = start(h);
        if (rc == 0)
            return;
        finish(h, "connect", "cannot connect to %s: %s", h->u.key, uv_strerror(rc));
        return;
    }
    finish(h, "io", "%s %s: %s", what, h->u.key, uv_strerror(uverr));
}

/* ---- parsing --------------------------------------------------------------- */

static bool has_token(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok);
    for (size_t i = 0; i + tl <= n; i++)
        if (strncasecmp(v + i, tok, tl) == 0)
            return true;
    return false;
}

/* Parse the head in h->in[0, h->head_len); false (and finished) on a bad one. */
static bool parse_head(hcall *h)
{
    const char *p = h->in.p, *end = p + h->head_len;
    if (h->head_len < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') ||
        p[8] != ' ' || p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' ||
        p[11] > '9') {
        finish(h, "io", "%s sent a malformed status line", h->u.key);
        return false;
    }
    bool http11 = p[7] == '1';
    h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    h->keep = http11;
    bool chunked = false, have_len = false;
    size_t clen = 0;
    const char *line = memchr(p, '\n', (size_t)(end - p));
    while (line && ++line < end) {
        const char *le = memchr(line, '\n', (size_t)(end - line));
        if (!le)
            break;
        const char *colon = memchr(line, ':', (size_t)(le - line));
        if (colon) {
            size_t nl = (size_t)(colon - line);
            const char *v = colon + 1;
            size_t vl = (size_t)(le - v);
            if (nl == 14 && strncasecmp(line, "content-length", 14) == 0) {
                while (vl && (*v == ' ' || *v == '\t'))
                    v++, vl--;
                size_t n = 0;
                size_t digits = 0;
                while (vl && *v >= '0' && *v <= '9') {
                    if (n > ((size_t)-1) / 10 - 10) {
                        finish(h, "io", "%s sent a Content-Length too large", h->u.key);
                        return false;
                    }
                    n = n * 10 + (size_t)(*v - '0');
                    v++, vl--, digits++;
                }
                while (vl && (*v == ' ' || *v == '\t' || *v == '\r'))
                    v++, vl--;
                if (digits == 0 || vl != 0 || (have_len && n != clen)) {
                    finish(h, "io", "%s sent a bad Content-Length", h->u.key);
                    return false;
                }
                clen = n;
                have_len = true;
            } else if (nl == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                chunked = chunked || has_token(v, vl, "chunked");
            } else if (nl == 10 && strncasecmp(line, "connection", 10) == 0) {
                if (has_token(v, vl, "close"))
                    h->keep = false;
                else if (has_token(v, vl, "keep-alive"))
                    h->keep = true;
            }
        }
        line = le;
    }
    if (h->head_method || h->status == 204 || h->status == 304) {
        h->mode = B_NONE;
    } else if (chunked) {
        h->mode = B_CHUNKED;
    } else if (have_len) {
        h->mode = B_LENGTH;
        h->clen = clen;
    } else {
        h->mode = B_CLOSE;
        h->keep = false;
    }
    if (h->max_body && h->mode == B_LENGTH && clen > h->max_body) {
        finish(h, "too_large", "response too large (%zu bytes, the limit is %zu)", clen,
               h->max_body);
        return false;
    }
    return true;
}

static bool too_large(hcall *h, size_t n)
{
    if (!h->max_body || n <= h->max_body)
        return false;
    finish(h, "too_large", "response too large (over %zu bytes)", h->max_body);
    return true;
}

/* Decode what chunks `in` holds from h->pos. 1: whole, 0: wants more, -1: finished
 * (bad chunk or too large). */
static int parse_chunks(hcall *h)
{
    for (;;) {
        const char *p = h->in.p + h->pos, *end = h->in.p + h->in.len;
        const char *le = memchr(p, '\n', (size_t)(end - p));
        if (!le)
            return (size_t)(end - p) > 1024 ? (finish(h, "io", "%s sent a bad chunk", h->u.key), -1)
                                            : 0;
        size_t n = 0, digits = 0;
        for (; p < le; p++, digits++) {
            int d = *p >= '0' && *p <= '9'   ? *p - '0'
                    : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10
                    : *p >= 'A' && *p <= 'F' ? *p - 'A' + 10
                                             : -1;
            if (d < 0)
                break;
            if (n > ((size_t)-1) >> 5) {
                finish(h, "io", "%s sent a chunk too large", h->u.key);
                return -1;
            }
            n = n * 16 + (size_t)d;
        }
        if (digits == 0 || (p < le && *p != ';' && *p != '\r' && *p != ' ')) {
            finish(h, "io", "%s sent a bad chunk", h->u.key);
            return -1;
        }
        const char *data = le + 1;
        if (n == 0) {
            /* trailers, then a blank line */
            const char *q = data;
            for (;;) {
                const char *te = memchr(q, '\n', (size_t)(end - q));
                if (!te)
                    return 0;
                if (te == q || (te == q + 1 && *q == '\r')) {
                    if (te + 1 != end)
                        h->keep = false; /* bytes after the response: not ours to guess */
                    return 1;
                }
                q = te + 1;
            }
        }
        if ((size_t)(end - data) < n + 2)
            return 0;
        if (too_large(h, h->body.len + n))
            return -1;
        if (!spgb_buf_append(&h->body, data, n)) {
            finish(h, "too_large", "out of memory for the response");
            return -1;
        }
        const char *after = data + n;
        if (after[0] == '\r' && after[1] == '\n')
            after += 2;
        else if (after[0] == '\n')
            after += 1;
        else {
            finish(h, "io", "%s sent a bad chunk", h->u.key);
            return -1;
        }
        h->pos = (size_t)(after - h->in.p);
    }
}

/* Advance on what `in` holds; finishes the call when the response is whole. */
static void parse(hcall *h)
{
    while (h->phase == P_HEAD) {
        const char *p = h->in.p, *hend = NULL;
        for (size_t i = 0; i + 1 < h->in.len; i++) {
            if (p[i] == '\n' &&
                (p[i + 1] == '\n' || (i + 2 < h->in.len && p[i + 1] == '\r' && p[i + 2] == '\n'))) {
                hend = p + i + (p[i + 1] == '\n' ? 2 : 3);
                break;
            }
        }
        if (!hend) {
            if (h->in.len > HEAD_MAX)
                finish(h, "io", "%s sent a response head over %d bytes", h->u.key, HEAD_MAX);
            return;
        }
        h->head_len = (size_t)(hend - p);
        if (!parse_head(h))
            return;
        if (h->status >= 100 && h->status < 200) {
            /* an interim response (100 Continue): drop it, the real one follows */
            spgb_buf_consume(&h->in, h->head_len);
            h->head_len = 0;
            continue;
        }
        h->phase = P_BODY;
        h->pos = h->head_len;
    }
    size_t have = h->in.len - h->pos;
    switch (h->mode) {
    case B_NONE:
        if (have)
            h->keep = false;
        finish(h, NULL, NULL);
        return;
    case B_LENGTH:
        if (have < h->clen)
            return;
        if (have > h->clen)
            h->keep = false;
        finish(h, NULL, NULL);
        return;
    case B_CHUNKED:
        if (parse_chunks(h) == 1)
            finish(h, NULL, NULL);
        return;
    case B_CLOSE:
        too_large(h, have);
        return;
    }
}

/* ---- I/O ------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *b)
{
    (void)hd;
    (void)suggested;
    *b = uv_buf_init(read_buf, sizeof read_buf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    conn *c = s->data;
    if (n == 0 || c->closing)
        return;
    hcall *h = c->call;
    if (!h) {
        conn_close(c); /* the server closed an idle connection, or spoke unasked */
        return;
    }
    if (n < 0) {
        if (n == UV_EOF && h->phase == P_BODY && h->mode == B_CLOSE) {
            finish(h, NULL, NULL);
            return;
        }
        if (n == UV_EOF && (h->got_bytes || !h->reused))
            finish(h, "io", "%s closed the connection before the response was whole", h->u.key);
        else
            broken(h, "reading from", (int)n);
        return;
    }
    h->got_bytes = true;
    if (!spgb_buf_append(&h->in, b->base, (size_t)n)) {
        finish(h, "too_large", "out of memory for the response");
        return;
    }
    parse(h);
}

typedef struct wreq {
    uv_write_t w;
    char data[];
} wreq;

static void on_written(uv_write_t *w, int status)
{
    conn *c = w->handle->data;
    free(w);
    if (status < 0 && status != UV_ECANCELED && !c->closing && c->call)
        broken(c->call, "writing to", status);
}

/* The request goes out with uv_try_write, which a request's few hundred bytes on
 * an idle connection always fit; only what the socket did not take is queued with
 * uv_write (whose completion re-arms the socket in epoll: a system call more). */
static void send_request(hcall *h)
{
    conn *c = h->c;
    uv_buf_t b = uv_buf_init(h->req.p, (unsigned)h->req.len);
    int rc = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    size_t sent = 0;
    if (rc >= 0)
        sent = (size_t)rc;
    else if (rc != UV_EAGAIN) {
        broken(h, "writing to", rc);
        return;
    }
    if (sent == h->req.len)
        return;
    size_t left = h->req.len - sent;
    wreq *w = malloc(sizeof *w + left);
    if (!w) {
        finish(h, "io", "out of memory for the request");
        return;
    }
    memcpy(w->data, h->req.p + sent, left);
    b = uv_buf_init(w->data, (unsigned)left);
    rc = uv_write(&w->w, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc != 0) {
        free(w);
        broken(h, "writing to", rc);
    }
}

static void on_connect(uv_connect_t *r, int status)
{
    conn *c = r->handle->data;
    if (status == UV_ECANCELED || c->closing)
        return;
    int rc = uv_timer_stop(&c->timer);
    hcall *h = c->call;
    if (!h) {
        conn_close(c);
        return;
    }
    if (status < 0) {
        finish(h, "connect", "cannot connect to %s: %s", h->u.key, uv_strerror(status));
        return;
    }
    c->connected = true;
    if (rc == 0)
        rc = uv_tcp_nodelay(&c->tcp, 1);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc != 0) {
        finish(h, "io", "cannot use the connection to %s: %s", h->u.key, uv_strerror(rc));
        return;
    }
    send_request(h);
}

static void on_connect_timeout(uv_timer_t *t)
{
    conn *c = t->data;
    if (c->call && !c->connected)
        finish(c->call, "timeout", "connecting to %s timed out after %.3g s", c->call->u.key,
               c->call->ctimeout);
}

/* Attach a connection (an idle one or a new one) and send; 0 or a libuv error. */
static int start(hcall *h)
{
    conn *c = h->resent ? NULL : idle_take(h->u.key);
    if (c) {
        c->call = h;
        h->c = c;
        h->reused = true;
        send_request(h);
        return 0;
    }
    c = calloc(1, sizeof *c);
    if (!c)
        return UV_ENOMEM;
    snprintf(c->key, sizeof c->key, "%s", h->u.key);
    c->bucket = key_bucket(c->key);
    int rc = uv_timer_init(spgb_loop(), &c->timer);
    if (rc != 0) {
        free(c);
        return rc;
    }
    c->timer.data = c;
    c->open_handles = 1;
    rc = uv_tcp_init(spgb_loop(), &c->tcp);
    if (rc != 0) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->timer, conn_closed);
        return rc;
    }
    c->tcp.data = c;
    c->open_handles = 2;
    rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&h->u.addr, on_connect);
    if (rc == 0 && h->ctimeout > 0) {
        uint64_t ms = (uint64_t)(h->ctimeout * 1000.0 + 0.999);
        rc = uv_timer_start(&c->timer, on_connect_timeout, ms ? ms : 1, 0);
    }
    if (rc != 0) {
        conn_close(c);
        return rc;
    }
    c->call = h;
    h->c = c;
    return 0;
}

/* ---- the op ---------------------------------------------------------------- */

static void hcall_release(hcall *h)
{
    spgb_buf_free(&h->req);
    spgb_buf_free(&h->in);
    spgb_buf_free(&h->body);
}

static int hc_push(lua_State *L, spgb_op *op)
{
    hcall *h = (hcall *)op;
    int n;
    if (h->code) {
        lua_pushnil(L);
        lua_pushfstring(L, "httpc.request: %s", h->err);
        lua_pushstring(L, h->code);
        n = 3;
    } else {
        lua_createtable(L, 0, 3);
        lua_pushinteger(L, h->status);
        lua_setfield(L, -2, "status");
        spgb_httpc_push_headers(L, h->in.p, h->head_len);
        lua_setfield(L, -2, "headers");
        if (h->mode == B_CHUNKED)
            lua_pushlstring(L, h->body.p ? h->body.p : "", h->body.len);
        else if (h->mode == B_NONE)
            lua_pushliteral(L, "");
        else
            lua_pushlstring(L, h->in.p + h->pos,
                            h->mode == B_LENGTH ? h->clen : h->in.len - h->pos);
        lua_setfield(L, -2, "body");
        n = 1;
    }
    hcall_release(h);
    return n;
}

static void hc_cancel(spgb_op *op)
{
    hcall *h = (hcall *)op;
    if (h->c) {
        conn_close(h->c);
        h->c = NULL;
    }
    hcall_release(h);
}

int spgb_hc_request(lua_State *L, const spgb_hc_url *u, const char *method, const char *headers,
                    size_t hlen, const char *body, size_t blen, double timeout, double ctimeout,
                    size_t max_body)
{
    if (!at_close_registered) {
        spgb_sched_at_close(close_idle_all);
        at_close_registered = true;
    }
    hcall *h = lua_newuserdatauv(L, sizeof *h, 0);
    memset(h, 0, sizeof *h);
    h->u = *u;
    h->op.name = "httpc.request";
    h->op.push = hc_push;
    h->op.cancel = hc_cancel;
    h->max_body = max_body;
    h->head_method = strcmp(method, "HEAD") == 0;
    h->ctimeout = ctimeout > 0 && (timeout <= 0 || ctimeout < timeout) ? ctimeout : 0;
    char line[160];
    int ll = snprintf(line, sizeof line, " HTTP/1.1\r\nHost: %s\r\nAccept: */*\r\n", u->host);
    bool ok = spgb_buf_append(&h->req, method, strlen(method)) &&
              spgb_buf_append(&h->req, " ", 1) &&
              (u->path_len ? spgb_buf_append(&h->req, u->path, u->path_len)
                           : spgb_buf_append(&h->req, "/", 1)) &&
              spgb_buf_append(&h->req, line, (size_t)ll) && spgb_buf_append(&h->req, headers, hlen);
    if (ok && body) {
        ll = snprintf(line, sizeof line, "Content-Length: %zu\r\n", blen);
        ok = spgb_buf_append(&h->req, line, (size_t)ll);
    }
    ok = ok && spgb_buf_append(&h->req, "\r\n", 2) &&
         (!blen || spgb_buf_append(&h->req, body, blen));
    if (!ok) {
        hcall_release(h);
        return luaL_error(L, "httpc.request: out of memory");
    }
    int rc = start(h);
    if (rc == 0 && h->code) /* failed at once (spgb_op_done is a no-op before the wait) */
        return hc_push(L, &h->op);
    if (rc != 0) {
        hcall_release(h);
        lua_pushnil(L);
        lua_pushfstring(L, "httpc.request: cannot connect to %s: %s", u->key, uv_strerror(rc));
        lua_pushliteral(L, "connect");
        return 3;
    }
    return spgb_op_wait(L, &h->op, timeout);
}
