/*
 * curlm: the shared libcurl multi handle on the libuv loop. See curlm.h.
 *
 * Memory: socket contexts (uv_poll) and the timer are malloc'd and freed in their
 * libuv close callbacks, never in __gc. Transfers are owned by their creators; the
 * multi only links the running ones so shutdown can detach them.
 */
#include "curlm.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CURLM_MT "spgb.curlm"
#define DEFAULT_MAX_BODY ((size_t)64 << 20)

/* One uv_poll per socket curl uses. A kept-alive connection's socket is handed to
 * us again for every request on it, and curl drops it (CURL_POLL_REMOVE) after each:
 * the handle is then stopped and parked rather than closed, so a request on a reused
 * connection costs no calloc and no ioctl, only libuv's epoll DEL and ADD. A parked
 * handle never stays in epoll: curl 7.88 to 8.1 (Debian 12 has 7.88) closes a socket
 * whose connect had not completed before it sends the REMOVE, and without the
 * close-socket callback (curl#11439), so the number may already be closed or be
 * another file; an epoll_ctl MOD there makes libuv abort(). A parked handle is
 * closed before curl closes its socket (close_cb), and one found for a socket curl
 * calls new is started afresh. */
typedef struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    bool parked; /* stopped, not assigned in the multi: between transfers */
    int events;  /* the UV_ mask last started, while active */
    struct sock_ctx *next, *prev;
} sock_ctx;

/* Easy handles of finished transfers, reset and kept for the next ones: a failover
 * makes three requests per pauser, and curl_easy_init + curl_easy_cleanup (a few KB
 * of handle set up and torn down) were a large part of each. */
#define EASY_POOL_MAX 64

static struct {
    CURLM *multi;
    uv_timer_t *timer;
    spgb_xfer *xfers; /* running transfers */
    sock_ctx *socks;  /* live poll handles */
    bool global_done;
    CURL *easy_pool[EASY_POOL_MAX];
    int easy_pooled;
} M;

/* ---- buffers -------------------------------------------------------------- */

bool spgb_buf_append(spgb_buf *b, const void *data, size_t n)
{
    if (b->cap - b->len < n + 1) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap - b->len < n + 1) {
            if (cap > SIZE_MAX / 2)
                return false;
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (!p)
            return false;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
    return true;
}

void spgb_buf_consume(spgb_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
    if (b->p)
        b->p[b->len] = 0;
}

void spgb_buf_free(spgb_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- libuv <-> libcurl ---------------------------------------------------- */

static void check_info(void)
{
    CURLMsg *msg;
    int left;
    while (M.multi && (msg = curl_multi_info_read(M.multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result;
        spgb_xfer *x = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
        /* msg is invalid after this call: everything needed was copied above. */
        curl_multi_remove_handle(M.multi, easy);
        if (!x)
            continue;
        if (x->prev)
            x->prev->next = x->next;
        else if (M.xfers == x)
            M.xfers = x->next;
        if (x->next)
            x->next->prev = x->prev;
        x->next = x->prev = NULL;
        x->active = false;
        x->result = rc;
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &x->status);
        x->finished = true;
        if (x->on_done)
            x->on_done(x);
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_ctx *s = h->data;
    if (s->parked) {
        /* stopped at REMOVE: an event from the same epoll batch is not curl's */
        (void)uv_poll_stop(h);
        return;
    }
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    int running;
    if (M.multi) {
        curl_multi_socket_action(M.multi, s->fd, flags, &running);
        check_info();
    }
}

static void on_timer(uv_timer_t *h)
{
    (void)h;
    int running;
    if (M.multi) {
        curl_multi_socket_action(M.multi, CURL_SOCKET_TIMEOUT, 0, &running);
        check_info();
    }
}

static void sock_closed(uv_handle_t *h)
{
    free(h->data);
}

static void sock_release(sock_ctx *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else if (M.socks == s)
        M.socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->next = s->prev = NULL;
    uv_close((uv_handle_t *)&s->poll, sock_closed);
}

/* Start watching ev unless that is already watched: libuv's uv_poll_start takes
 * the fd out of epoll and puts it back (two epoll_ctl) even for the same mask.
 * 0 | a libuv error. */
static int sock_watch(sock_ctx *s, int ev)
{
    if (uv_is_active((uv_handle_t *)&s->poll) && s->events == ev)
        return 0;
    int rc = uv_poll_start(&s->poll, ev, on_poll);
    if (rc == 0)
        s->events = ev;
    return rc;
}

static sock_ctx *sock_find(curl_socket_t fd)
{
    for (sock_ctx *s = M.socks; s; s = s->next)
        if (s->fd == fd)
            return s;
    return NULL;
}

/* CURLMOPT_SOCKETFUNCTION: only (un)registers interest with libuv. */
static int sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *sockp)
{
    (void)easy;
    (void)userp;
    sock_ctx *s = sockp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            if (M.multi)
                (void)curl_multi_assign(M.multi, fd, NULL); /* fails only for unknown fds */
            /* uv_poll_stop takes the fd out of epoll at once and ignores an fd that
             * is already closed; it cannot fail */
            (void)uv_poll_stop(&s->poll);
            s->parked = true;
        }
        return 0;
    }
    if (!s) {
        /* new to the multi: parked since the last transfer on this connection, or a
         * handle whose socket curl closed behind our back (its watch is stale) */
        s = sock_find(fd);
        if (s && !s->parked)
            (void)uv_poll_stop(&s->poll);
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return -1;
        s->fd = fd;
        if (uv_poll_init_socket(spgb_loop(), &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        s->next = M.socks;
        if (M.socks)
            M.socks->prev = s;
        M.socks = s;
    }
    if (sockp == NULL) {
        if (curl_multi_assign(M.multi, fd, s) != CURLM_OK) {
            sock_release(s);
            return -1;
        }
        s->parked = false;
    }
    int ev = 0;
    if (what & CURL_POLL_IN)
        ev |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        ev |= UV_WRITABLE;
    return sock_watch(s, ev) == 0 ? 0 : -1;
}

/* CURLMOPT_TIMERFUNCTION: one uv timer; a 0 ms timeout fires on the next loop
 * iteration, so socket_action is never called from inside libcurl. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    (void)userp;
    if (!M.timer)
        return -1;
    if (timeout_ms < 0)
        return uv_timer_stop(M.timer) == 0 ? 0 : -1;
    return uv_timer_start(M.timer, on_timer, (uint64_t)timeout_ms, 0) == 0 ? 0 : -1;
}

/* CURLOPT_CLOSESOCKETFUNCTION, on every transfer (a connection keeps the one of
 * the transfer that opened it): the socket's poll handle, parked or not, is closed
 * while the fd still is this socket, then the socket. 0 | 1 (close failed). */
static int close_cb(void *clientp, curl_socket_t fd)
{
    (void)clientp;
    sock_ctx *s = sock_find(fd);
    if (s)
        sock_release(s);
    return close(fd) == 0 ? 0 : 1;
}

static void timer_closed(uv_handle_t *h)
{
    free(h);
}

/* __gc of the registry anchor, run by lua_close: detach every running transfer
 * (owners still free them), drop the multi and close our libuv handles. */
static int l_curlm_gc(lua_State *L)
{
    (void)L;
    if (!M.multi)
        return 0;
    while (M.xfers) {
        spgb_xfer *x = M.xfers;
        M.xfers = x->next;
        curl_multi_remove_handle(M.multi, x->easy);
        x->active = false;
        x->next = x->prev = NULL;
    }
    while (M.easy_pooled > 0)
        curl_easy_cleanup(M.easy_pool[--M.easy_pooled]);
    curl_multi_cleanup(M.multi);
    M.multi = NULL;
    while (M.socks)
        sock_release(M.socks);
    if (M.timer) {
        uv_timer_stop(M.timer);
        uv_close((uv_handle_t *)M.timer, timer_closed);
        M.timer = NULL;
    }
    return 0;
}

/* curl (and with it OpenSSL) starts at the first transfer, not when a module is
 * loaded: a pauser that never makes an HTTP call stays smaller. 0 | -1. */
static int ensure_global(void)
{
    if (!M.global_done) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            return -1;
        M.global_done = true;
    }
    return 0;
}

static int ensure_multi(void)
{
    if (M.multi)
        return 0;
    if (ensure_global() != 0)
        return -1;
    uv_timer_t *t = malloc(sizeof *t);
    if (!t)
        return -1;
    if (uv_timer_init(spgb_loop(), t) != 0) {
        free(t);
        return -1;
    }
    CURLM *m = curl_multi_init();
    if (!m) {
        uv_close((uv_handle_t *)t, timer_closed);
        return -1;
    }
    M.timer = t;
    M.multi = m;
    if (curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, sock_cb) != CURLM_OK ||
        curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, timer_cb) != CURLM_OK) {
        l_curlm_gc(NULL);
        return -1;
    }
    /* Reuse connections; a watch stream holds its own connection for its life.
     * Failing to set the cap only keeps curl's default. */
    (void)curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, 64L);
    return 0;
}

void spgb_curlm_open(lua_State *L)
{
    /* Only the anchor whose __gc tears everything down at lua_close. */
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, (void *)&M) != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    lua_newuserdatauv(L, 1, 0);
    if (luaL_newmetatable(L, CURLM_MT)) {
        lua_pushcfunction(L, l_curlm_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, (void *)&M);
}

/* ---- transfers ------------------------------------------------------------ */

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    spgb_xfer *x = userdata;
    size_t n = size * nmemb;
    size_t max = x->max_body ? x->max_body : DEFAULT_MAX_BODY;
    if (x->body.len + n > max || !spgb_buf_append(&x->body, ptr, n)) {
        x->oom = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (x->on_data)
        x->on_data(x);
    return n;
}

static size_t header_cb(char *ptr, size_t size, size_t nitems, void *userdata)
{
    spgb_xfer *x = userdata;
    size_t n = size * nitems;
    if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0)
        x->head.len = 0; /* a new response (after 100 Continue): keep the last */
    if (x->head.len + n > 256 * 1024 || !spgb_buf_append(&x->head, ptr, n)) {
        x->oom = true;
        return 0;
    }
    return n;
}

spgb_xfer *spgb_xfer_new(const char *url)
{
    if (ensure_global() != 0)
        return NULL;
    spgb_xfer *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->easy = M.easy_pooled > 0 ? M.easy_pool[--M.easy_pooled] : curl_easy_init();
    if (!x->easy) {
        free(x);
        return NULL;
    }
    CURL *e = x->easy;
    if (curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK) {
        curl_easy_cleanup(e);
        free(x);
        return NULL;
    }
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->err);
    if (curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_cb) != CURLE_OK) {
        /* without it a parked poll handle could outlive its socket */
        curl_easy_cleanup(e);
        free(x);
        return NULL;
    }
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 10L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 5L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    return x;
}

bool spgb_xfer_header(spgb_xfer *x, const char *line)
{
    struct curl_slist *l = curl_slist_append(x->headers, line);
    if (!l)
        return false;
    x->headers = l;
    return curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers) == CURLE_OK;
}

bool spgb_xfer_body(spgb_xfer *x, const char *data, size_t len)
{
    /* No "Expect: 100-continue" round trip for larger bodies. */
    if (!spgb_xfer_header(x, "Expect:"))
        return false;
    if (curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len) != CURLE_OK)
        return false;
    return curl_easy_setopt(x->easy, CURLOPT_COPYPOSTFIELDS, data) == CURLE_OK;
}

void spgb_xfer_tls(spgb_xfer *x, const char *ca_file, const char *cert_file, const char *key_file,
                   bool skip_verify)
{
    CURL *e = x->easy;
    if (ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
    if (cert_file)
        curl_easy_setopt(e, CURLOPT_SSLCERT, cert_file);
    if (key_file)
        curl_easy_setopt(e, CURLOPT_SSLKEY, key_file);
    if (skip_verify) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
}

int spgb_curlm_start(spgb_xfer *x)
{
    if (ensure_multi() != 0)
        return CURLM_OUT_OF_MEMORY;
    if (x->active)
        return CURLM_ADDED_ALREADY;
    CURLMcode rc = curl_multi_add_handle(M.multi, x->easy);
    if (rc != CURLM_OK)
        return rc;
    x->active = true;
    x->finished = false;
    x->prev = NULL;
    x->next = M.xfers;
    if (M.xfers)
        M.xfers->prev = x;
    M.xfers = x;
    return 0;
}

void spgb_curlm_stop(spgb_xfer *x)
{
    if (!x->active)
        return;
    x->active = false;
    if (x->prev)
        x->prev->next = x->next;
    else if (M.xfers == x)
        M.xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->next = x->prev = NULL;
    if (M.multi)
        curl_multi_remove_handle(M.multi, x->easy);
}

void spgb_xfer_free(spgb_xfer *x)
{
    if (!x)
        return;
    spgb_curlm_stop(x);
    /* Pooled only while the multi lives (its __gc empties the pool); reset drops
     * every option, this transfer's included, and keeps the handle's memory. */
    if (M.multi && M.easy_pooled < EASY_POOL_MAX) {
        curl_easy_reset(x->easy);
        M.easy_pool[M.easy_pooled++] = x->easy;
    } else {
        curl_easy_cleanup(x->easy);
    }
    curl_slist_free_all(x->headers);
    spgb_buf_free(&x->body);
    spgb_buf_free(&x->head);
    free(x);
}

const char *spgb_xfer_code(const spgb_xfer *x)
{
    if (x->oom)
        return "too_large";
    switch (x->result) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_CONNECT:
        return "connect";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "resolve";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_USE_SSL_FAILED:
        return "tls";
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_BAD_CONTENT_ENCODING:
        return "io";
    default:
        return "curl";
    }
}

bool spgb_xfer_unsent(const spgb_xfer *x)
{
    long sent = 0;
    if (x->result == CURLE_COULDNT_CONNECT || x->result == CURLE_COULDNT_RESOLVE_HOST)
        return true;
    if (curl_easy_getinfo(x->easy, CURLINFO_REQUEST_SIZE, &sent) != CURLE_OK)
        return false;
    return sent == 0;
}

int spgb_xfer_push_error(lua_State *L, const spgb_xfer *x, const char *what)
{
    lua_pushnil(L);
    if (x->oom)
        lua_pushfstring(L, "%s: response too large or out of memory", what);
    else
        lua_pushfstring(L, "%s: %s", what, x->err[0] ? x->err : curl_easy_strerror(x->result));
    lua_pushstring(L, spgb_xfer_code(x));
    return 3;
}

/* ---- the yielding helper --------------------------------------------------- */

typedef struct call {
    spgb_op op;
    spgb_xfer *x;
    spgb_xfer_push push;
    void *ud;
} call;

static void call_done(spgb_xfer *x)
{
    call *c = x->data;
    spgb_op_done(&c->op);
}

static int call_push(lua_State *L, spgb_op *op)
{
    call *c = (call *)op;
    int n = c->push(L, c->x, c->ud);
    spgb_xfer_free(c->x);
    c->x = NULL;
    return n;
}

static void call_cancel(spgb_op *op)
{
    call *c = (call *)op;
    spgb_xfer_free(c->x); /* removes it from the multi: nothing completes later */
    c->x = NULL;
}

int spgb_curlm_call(lua_State *L, spgb_xfer *x, const char *name, double timeout,
                    spgb_xfer_push push, void *ud)
{
    spgb_task *t = spgb_task_of(L);
    if (!t) {
        spgb_xfer_free(x);
        spgb_task_current(L, name); /* raises "<name> needs a task" */
    }
    /* The op lives in a userdata on the task's stack, not in malloc'd memory: the
     * scheduler may still touch the op after push/cancel, and the GC frees it
     * only once the primitive has returned. */
    call *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    c->x = x;
    c->push = push;
    c->ud = ud;
    c->op.name = name;
    c->op.push = call_push;
    c->op.cancel = call_cancel;
    x->data = c;
    x->on_done = call_done;
    int rc = spgb_curlm_start(x);
    if (rc != 0) {
        spgb_xfer_free(x);
        lua_pushnil(L);
        lua_pushfstring(L, "%s: cannot start transfer: %s", name,
                        curl_multi_strerror((CURLMcode)rc));
        lua_pushliteral(L, "curl");
        return 3;
    }
    return spgb_op_wait(L, &c->op, timeout);
}
