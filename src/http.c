/*
 * http: HTTP/1.1 server on libmicrohttpd, driven from the libuv loop. See http.h.
 *
 * Why libmicrohttpd: a small C library (LGPL 2.1+) that is maintained by GNU,
 * fuzzed continuously (OSS-Fuzz) and used in production embedded servers; it
 * handles HTTP/1.1 parsing, chunked bodies, keep-alive, pipelining, connection
 * limits, idle timeouts and TLS (GnuTLS), and it can run with no threads of its
 * own under an external event loop (MHD_USE_EPOLL exposes one epoll fd).
 *
 * Driving MHD: a uv_poll watches MHD's epoll fd and a uv_timer follows
 * MHD_get_timeout; both call pump(), which runs MHD_run, then spawns the tasks
 * of the requests that became complete, then re-arms the timer. A second timer
 * (once a second) shuts down the sockets of clients that take longer than
 * request_timeout to send a whole request: MHD's own timeout is an idle timeout,
 * which a client sending one byte a second never trips.
 *
 * Memory: the server state (srv) is malloc'd; the Lua userdata holds a pointer.
 * It is anchored in the registry while open, so a server keeps serving even when
 * the script drops its handle. srv is freed once closed and every uv handle's
 * close callback has run. A request (hreq) is malloc'd and reference counted:
 * one reference for the MHD connection (dropped in the completed callback) and
 * one for the Lua side (a "spgb.http.ref" userdata held by the request's task,
 * dropped when it responds or is collected).
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <lauxlib.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "sched.h"

#define SERVER_MT "spgb.http.server"
#define REF_MT "spgb.http.ref"

typedef struct srv srv;
typedef struct hreq hreq;
typedef struct hconn hconn;

struct hreq {
    srv *s;
    struct MHD_Connection *conn;
    hconn *hc;
    const char *method, *url, *version; /* MHD's, valid while the connection lives */
    char *body;
    size_t len, cap;
    size_t discarded;
    bool too_large; /* body over max_body: answer 413 once it has been read */
    bool early;     /* a response was queued on the first call */
    bool conn_gone; /* MHD completed the request: never touch conn or s again */
    bool lua_done;  /* the Lua side responded or was collected */
    bool suspended;
    struct MHD_Response *resp; /* set by the task, queued when MHD calls again */
    unsigned status;
    int task_ref;
    int refs;
    int list; /* L_NONE, L_READY (to spawn), L_PENDING (handler running) */
    hreq *prev, *next;
};

enum { L_NONE, L_READY, L_PENDING };

/* One per TCP connection, for the whole-request deadline. */
struct hconn {
    int fd;
    double deadline; /* 0: none (handler running or response being written) */
    hconn *prev, *next;
};

struct srv {
    struct MHD_Daemon *d;
    lua_State *L; /* the main thread: spawning happens there */
    uv_poll_t poll;
    uv_timer_t timer; /* MHD_get_timeout, and "run MHD soon" */
    uv_timer_t sweep; /* request_timeout */
    int handles;      /* uv handles not yet closed */
    bool closed;
    bool pumping;
    int handler_ref, runner_ref, self_ref;
    size_t max_body;
    double request_timeout;
    int port;
    hreq *ready_head, *ready_tail;
    hreq *pending;
    hconn *conns;
    char start_err[256];
    bool starting;
};

/* ---- request lists and lifetime ----------------------------------------- */

static void list_remove(srv *s, hreq *r)
{
    if (r->list == L_NONE)
        return;
    if (r->prev)
        r->prev->next = r->next;
    else if (r->list == L_READY)
        s->ready_head = r->next;
    else
        s->pending = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else if (r->list == L_READY)
        s->ready_tail = r->prev;
    r->prev = r->next = NULL;
    r->list = L_NONE;
}

static void push_ready(srv *s, hreq *r)
{
    r->list = L_READY;
    r->next = NULL;
    r->prev = s->ready_tail;
    if (s->ready_tail)
        s->ready_tail->next = r;
    else
        s->ready_head = r;
    s->ready_tail = r;
}

static void push_pending(srv *s, hreq *r)
{
    r->list = L_PENDING;
    r->prev = NULL;
    r->next = s->pending;
    if (s->pending)
        s->pending->prev = r;
    s->pending = r;
}

static void unref_req(hreq *r)
{
    if (--r->refs > 0)
        return;
    if (r->resp)
        MHD_destroy_response(r->resp);
    free(r->body);
    free(r);
}

static void kick(srv *s);

/* Give r's suspended connection back to MHD with resp (NULL: MHD closes it).
 * Not inside an MHD callback. */
static void resume_with(srv *s, hreq *r, struct MHD_Response *resp, unsigned status)
{
    list_remove(s, r);
    if (r->resp)
        MHD_destroy_response(r->resp);
    r->resp = resp;
    r->status = status;
    if (r->suspended) {
        r->suspended = false;
        MHD_resume_connection(r->conn);
    }
    kick(s);
}

static struct MHD_Response *text_response(const char *body, const char *ctype)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (resp && MHD_add_response_header(resp, "Content-Type", ctype) != MHD_YES) {
        MHD_destroy_response(resp);
        resp = NULL;
    }
    return resp;
}

static struct MHD_Response *json_error(const char *msg)
{
    char body[256];
    snprintf(body, sizeof body, "{\"error\":\"%s\"}", msg);
    return text_response(body, "application/json");
}

/* ---- MHD callbacks: copy data, suspend, never touch Lua ------------------ */

static double now(void)
{
    return spgb_now();
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    srv *s = cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = 0;
    if (s->starting) {
        size_t k = n < sizeof s->start_err - 1 ? n : sizeof s->start_err - 1;
        memcpy(s->start_err, msg, k);
        s->start_err[k] = 0;
    }
    spgb_log_write(SPGB_LOG_DEBUG, "http_mhd", msg, (const char *)NULL);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    srv *s = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        hconn *hc = calloc(1, sizeof *hc);
        if (!hc) {
            *socket_context = NULL; /* no deadline for this one; MHD's idle timeout stays */
            return;
        }
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        hc->fd = ci ? ci->connect_fd : -1;
        hc->deadline = s->request_timeout > 0 ? now() + s->request_timeout : 0;
        hc->next = s->conns;
        if (s->conns)
            s->conns->prev = hc;
        s->conns = hc;
        *socket_context = hc;
        return;
    }
    hconn *hc = *socket_context;
    if (!hc)
        return;
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        s->conns = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    free(hc);
    *socket_context = NULL;
}

static hconn *conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static enum MHD_Result queue_and_free(struct MHD_Connection *conn, unsigned status,
                                      struct MHD_Response *resp)
{
    if (!resp)
        return MHD_NO;
    enum MHD_Result rc = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    srv *s = cls;
    hreq *r = *con_cls;
    if (!r) {
        /* First call: the request head is complete. */
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        r->s = s;
        r->conn = conn;
        r->hc = conn_of(conn);
        r->method = method;
        r->url = url;
        r->version = version;
        r->refs = 1;
        r->task_ref = LUA_NOREF;
        *con_cls = r;
        const char *cl =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->max_body) {
            /* Refuse before reading the body (and before any 100 Continue). */
            r->early = true;
            return queue_and_free(conn, MHD_HTTP_CONTENT_TOO_LARGE,
                                  json_error("request body too large"));
        }
        return MHD_YES;
    }
    if (r->resp) {
        /* Called again after resume: the handler's response is ready. */
        struct MHD_Response *resp = r->resp;
        r->resp = NULL;
        return queue_and_free(conn, r->status, resp);
    }
    if (r->early) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->too_large || n > s->max_body - r->len) {
            r->too_large = true;
            r->discarded += n;
            /* Drain a little to answer 413; a client that keeps sending is cut off. */
            return r->discarded > 4 * s->max_body + 65536 ? MHD_NO : MHD_YES;
        }
        if (r->cap - r->len < n) {
            size_t cap = r->cap ? r->cap : 4096;
            while (cap - r->len < n)
                cap *= 2;
            if (cap > s->max_body)
                cap = s->max_body;
            char *nb = realloc(r->body, cap);
            if (!nb)
                return MHD_NO;
            r->body = nb;
            r->cap = cap;
        }
        memcpy(r->body + r->len, upload_data, n);
        r->len += n;
        return MHD_YES;
    }
    /* Final call: the whole request is here. */
    if (r->too_large)
        return queue_and_free(conn, MHD_HTTP_CONTENT_TOO_LARGE,
                              json_error("request body too large"));
    if (r->list != L_NONE || r->lua_done || s->closed)
        return MHD_NO; /* resumed without a response: close */
    if (r->hc)
        r->hc->deadline = 0;
    push_ready(s, r);
    r->suspended = true;
    MHD_suspend_connection(conn);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    srv *s = cls;
    hreq *r = *con_cls;
    (void)toe;
    hconn *hc = conn_of(conn);
    if (hc && s->request_timeout > 0)
        hc->deadline = now() + s->request_timeout; /* the next keep-alive request */
    if (!r)
        return;
    *con_cls = NULL;
    list_remove(s, r);
    r->conn_gone = true;
    r->conn = NULL;
    r->suspended = false;
    unref_req(r);
}

/* ---- driving MHD from the loop ------------------------------------------ */

static void spawn_ready(srv *s);

static void on_timer(uv_timer_t *t);

static void arm_timer(srv *s)
{
    if (s->closed)
        return;
    MHD_UNSIGNED_LONG_LONG ms = 0;
    int rc;
    if (MHD_get_timeout(s->d, &ms) == MHD_YES)
        rc = uv_timer_start(&s->timer, on_timer, ms > 3600000 ? 3600000 : ms, 0);
    else
        rc = uv_timer_start(&s->timer, on_timer, 1000, 0); /* a cheap safety net */
    if (rc != 0)
        spgb_log_write(SPGB_LOG_ERROR, "http_timer", uv_strerror(rc), (const char *)NULL);
}

static void pump(srv *s)
{
    if (s->closed || s->pumping)
        return;
    s->pumping = true;
    if (MHD_run(s->d) != MHD_YES)
        spgb_log_write(SPGB_LOG_DEBUG, "http_mhd", "MHD_run failed", (const char *)NULL);
    s->pumping = false;
    spawn_ready(s);
    arm_timer(s);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    pump(h->data);
}

static void on_timer(uv_timer_t *t)
{
    pump(t->data);
}

static void kick(srv *s)
{
    if (!s->closed)
        uv_timer_start(&s->timer, on_timer, 0, 0); /* cannot fail on an open timer */
}

/* Cut off clients that have not sent a whole request within request_timeout:
 * shutting the socket down makes MHD see the end of the stream and close it. */
static void on_sweep(uv_timer_t *t)
{
    srv *s = t->data;
    double tnow = now();
    bool any = false;
    for (hconn *hc = s->conns; hc; hc = hc->next) {
        if (hc->deadline > 0 && tnow > hc->deadline && hc->fd >= 0) {
            hc->deadline = 0;
            shutdown(hc->fd, SHUT_RDWR);
            any = true;
        }
    }
    if (any)
        pump(s);
}

/* ---- spawning request tasks (after MHD_run, on the main thread) --------- */

typedef struct {
    const char *k, *v;
} kv;

typedef struct {
    kv *a;
    size_t n, cap;
    bool oom;
} kvlist;

static enum MHD_Result collect(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *value)
{
    kvlist *l = cls;
    (void)kind;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        kv *na = realloc(l->a, cap * sizeof *na);
        if (!na) {
            l->oom = true;
            return MHD_NO;
        }
        l->a = na;
        l->cap = cap;
    }
    l->a[l->n].k = key;
    l->a[l->n].v = value ? value : "";
    l->n++;
    return MHD_YES;
}

/* Push a table of r's values of kind; header names lowercased, repeated headers
 * joined with ", ". The kv list is freed by the caller's userdata anchor. */
static void push_values(lua_State *L, hreq *r, enum MHD_ValueKind kind, bool lower)
{
    kvlist l = {0};
    MHD_get_connection_values(r->conn, kind, collect, &l);
    if (l.oom) {
        free(l.a);
        luaL_error(L, "http: out of memory");
    }
    /* Lua errors below would leak l.a: move it into a userdata first. */
    kv *a = lua_newuserdatauv(L, (l.n ? l.n : 1) * sizeof *a, 0);
    if (l.n)
        memcpy(a, l.a, l.n * sizeof *a);
    free(l.a);
    lua_createtable(L, 0, (int)l.n);
    for (size_t i = 0; i < l.n; i++) {
        if (lower) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (const char *p = a[i].k; *p; p++)
                luaL_addchar(&b, (*p >= 'A' && *p <= 'Z') ? (char)(*p + 32) : *p);
            luaL_pushresult(&b);
        } else {
            lua_pushstring(L, a[i].k);
        }
        lua_pushvalue(L, -1);
        if (lua_rawget(L, -3) == LUA_TSTRING) {
            lua_pushliteral(L, ", ");
            lua_pushstring(L, a[i].v);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushstring(L, a[i].v);
        }
        lua_rawset(L, -3);
    }
    lua_remove(L, -2);
}

static void push_remote(lua_State *L, hreq *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    char ip[INET6_ADDRSTRLEN] = "";
    int port = 0;
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
            inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
            port = ntohs(in->sin_port);
        } else if (sa->sa_family == AF_INET6) {
            const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
            inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
            port = ntohs(in6->sin6_port);
        }
    }
    lua_pushstring(L, ip);
    lua_setfield(L, -2, "remote");
    lua_pushinteger(L, port);
    lua_setfield(L, -2, "remote_port");
}

/* Protected: [lightuserdata srv]. Spawns a task for every ready request. A
 * request leaves the ready list only once its task exists. */
static int spawn_all(lua_State *L)
{
    srv *s = lua_touserdata(L, 1);
    while (s->ready_head) {
        hreq *r = s->ready_head;
        lua_settop(L, 1);
        lua_rawgeti(L, LUA_REGISTRYINDEX, s->runner_ref);
        lua_rawgeti(L, LUA_REGISTRYINDEX, s->handler_ref);
        lua_createtable(L, 0, 9);
        lua_pushstring(L, r->method);
        lua_setfield(L, -2, "method");
        lua_pushstring(L, r->url);
        lua_setfield(L, -2, "path");
        lua_pushstring(L, r->version);
        lua_setfield(L, -2, "version");
        lua_pushlstring(L, r->body ? r->body : "", r->len);
        lua_setfield(L, -2, "body");
        push_values(L, r, MHD_HEADER_KIND, true);
        lua_setfield(L, -2, "headers");
        push_values(L, r, MHD_GET_ARGUMENT_KIND, false);
        lua_setfield(L, -2, "query");
        push_remote(L, r);
        hreq **ud = lua_newuserdatauv(L, sizeof *ud, 0);
        *ud = NULL;
        luaL_setmetatable(L, REF_MT);
        spgb_task_spawn(L, 3, "http_request"); /* only queues the task */
        int tref = luaL_ref(L, LUA_REGISTRYINDEX);
        /* Nothing below raises: the request is now the task's. */
        *ud = r;
        r->refs++;
        r->task_ref = tref;
        list_remove(s, r);
        push_pending(s, r);
        free(r->body); /* copied into the request table */
        r->body = NULL;
        r->len = r->cap = 0;
    }
    return 0;
}

static void spawn_ready(srv *s)
{
    if (!s->ready_head)
        return;
    lua_State *L = s->L;
    int top = lua_gettop(L);
    if (!lua_checkstack(L, 8)) {
        /* Fall through to the failure path below. */
    } else {
        lua_pushcfunction(L, spawn_all);
        lua_pushlightuserdata(L, s);
        if (lua_pcall(L, 1, 0, 0) == LUA_OK) {
            lua_settop(L, top);
            return;
        }
        spgb_log_write(SPGB_LOG_ERROR, "http_spawn_failed", lua_tostring(L, -1),
                       (const char *)NULL);
    }
    lua_settop(L, top);
    while (s->ready_head) { /* out of memory: answer 503 rather than hang */
        hreq *r = s->ready_head;
        resume_with(s, r, json_error("server out of memory"), MHD_HTTP_SERVICE_UNAVAILABLE);
    }
}

/* ---- the Lua side of a request ------------------------------------------ */

/* Drop the Lua side's reference (once). */
static void release_lua(lua_State *L, hreq *r)
{
    r->lua_done = true;
    luaL_unref(L, LUA_REGISTRYINDEX, r->task_ref);
    r->task_ref = LUA_NOREF;
    unref_req(r);
}

/* ref:respond(status, body, headers). Called once by the request task's runner
 * (Lua, below) when the handler has returned; never yields. status an integer
 * 100..599, body a string, headers a table name -> string. A response MHD
 * refuses (bad header bytes) becomes a 500 and is logged. */
static int l_respond(lua_State *L)
{
    hreq **ud = luaL_checkudata(L, 1, REF_MT);
    hreq *r = *ud;
    if (!r || r->lua_done)
        return luaL_error(L, "http: response already sent");
    lua_Integer status = luaL_checkinteger(L, 2);
    size_t len;
    const char *body = luaL_checklstring(L, 3, &len);
    if (!lua_isnoneornil(L, 4))
        luaL_checktype(L, 4, LUA_TTABLE);
    *ud = NULL;
    if (r->conn_gone || r->s->closed) {
        release_lua(L, r);
        return 0;
    }
    srv *s = r->s;
    const char *problem = NULL;
    struct MHD_Response *resp = NULL;
    if (status < 100 || status > 599) {
        problem = "handler returned an invalid status";
    } else {
        resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
        if (!resp)
            problem = "out of memory";
    }
    bool has_ctype = false;
    if (resp && lua_istable(L, 4)) {
        lua_pushnil(L);
        while (lua_next(L, 4)) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            const char *v = lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER
                                ? lua_tostring(L, -1)
                                : NULL;
            if (!k || !v || MHD_add_response_header(resp, k, v) != MHD_YES) {
                problem = "handler returned an invalid header";
                lua_pop(L, 2);
                break;
            }
            if (strcasecmp(k, "content-type") == 0)
                has_ctype = true;
            lua_pop(L, 1);
        }
    }
    if (resp && !problem && !has_ctype &&
        MHD_add_response_header(resp, "Content-Type", "text/plain; charset=utf-8") != MHD_YES)
        problem = "out of memory";
    if (problem) {
        if (resp)
            MHD_destroy_response(resp);
        spgb_log_write(SPGB_LOG_ERROR, "http_handler_error", problem, "method", r->method, "path",
                       r->url, (const char *)NULL);
        resp = json_error("internal server error");
        status = 500;
    }
    resume_with(s, r, resp, (unsigned)status);
    release_lua(L, r);
    return 0;
}

/* A request task that ended without responding (cancelled before it ran, or
 * collected at shutdown): close the connection instead of leaving it suspended. */
static int l_ref_gc(lua_State *L)
{
    hreq **ud = luaL_checkudata(L, 1, REF_MT);
    hreq *r = *ud;
    if (!r)
        return 0;
    *ud = NULL;
    if (!r->conn_gone && !r->s->closed)
        resume_with(r->s, r, NULL, 0);
    release_lua(L, r);
    return 0;
}

/* ---- server lifetime ---------------------------------------------------- */

static void handle_closed(uv_handle_t *h)
{
    srv *s = h->data;
    if (--s->handles == 0)
        free(s);
}

/* Stop serving: pending handlers are cancelled (from Lua only: at_gc is true
 * inside lua_close, where tasks are already gone), connections closed, the
 * daemon stopped. srv is freed by the last handle close callback. */
static void close_server(lua_State *L, srv *s, bool at_gc)
{
    if (s->closed)
        return;
    for (hreq *r = s->pending; r; r = r->next) {
        if (!at_gc && r->task_ref != LUA_NOREF) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, r->task_ref);
            spgb_task *t = lua_touserdata(L, -1);
            if (t)
                spgb_task_cancel(t);
            lua_pop(L, 1);
        }
    }
    /* MHD refuses to stop with suspended connections: give them all back. */
    while (s->pending)
        resume_with(s, s->pending, NULL, 0);
    while (s->ready_head)
        resume_with(s, s->ready_head, NULL, 0);
    s->closed = true;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, handle_closed);
    uv_close((uv_handle_t *)&s->timer, handle_closed);
    uv_close((uv_handle_t *)&s->sweep, handle_closed);
    MHD_stop_daemon(s->d); /* runs on_completed for every connection */
    s->d = NULL;
    if (!at_gc) {
        luaL_unref(L, LUA_REGISTRYINDEX, s->handler_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, s->runner_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, s->self_ref);
        s->handler_ref = s->runner_ref = s->self_ref = LUA_NOREF;
    }
}

static srv **check_server(lua_State *L)
{
    return luaL_checkudata(L, 1, SERVER_MT);
}

/* s:close(). Any context; does not yield. Stops listening, closes every
 * connection and cancels running handlers (their responses are dropped).
 * Closing twice does nothing. */
static int l_close(lua_State *L)
{
    srv **ud = check_server(L);
    if (*ud) {
        close_server(L, *ud, false);
        *ud = NULL;
    }
    return 0;
}

static int l_server_gc(lua_State *L)
{
    srv **ud = check_server(L);
    if (*ud) {
        close_server(L, *ud, true);
        *ud = NULL;
    }
    return 0;
}

/* s:port() -> the port the server listens on (the chosen one when port=0).
 * Raises on a closed server. */
static int l_port(lua_State *L)
{
    srv **ud = check_server(L);
    if (!*ud)
        return luaL_error(L, "http server: closed");
    lua_pushinteger(L, (*ud)->port);
    return 1;
}

/* s:connections() -> number of open connections (for tests and metrics). */
static int l_connections(lua_State *L)
{
    srv **ud = check_server(L);
    if (!*ud)
        return luaL_error(L, "http server: closed");
    const union MHD_DaemonInfo *di =
        MHD_get_daemon_info((*ud)->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    lua_pushinteger(L, di ? (lua_Integer)di->num_connections : 0);
    return 1;
}

static int l_server_tostring(lua_State *L)
{
    srv **ud = check_server(L);
    if (*ud)
        lua_pushfstring(L, "http server: port %d", (*ud)->port);
    else
        lua_pushliteral(L, "http server: closed");
    return 1;
}

static lua_Integer opt_int(lua_State *L, const char *k, lua_Integer def, lua_Integer min,
                           lua_Integer max)
{
    lua_getfield(L, 1, k);
    lua_Integer v = def;
    if (!lua_isnil(L, -1)) {
        int isnum;
        v = lua_tointegerx(L, -1, &isnum);
        if (!isnum || v < min || v > max)
            luaL_error(L, "http.serve: %s must be an integer from %d to %d", k, (int)min, (int)max);
    }
    lua_pop(L, 1);
    return v;
}

/* Read a whole small file (certificate, key) into a Lua string on the stack. */
static const char *slurp(lua_State *L, const char *path, const char *what)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        luaL_error(L, "http.serve: cannot read %s %s: %s", what, path, strerror(errno));
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        luaL_addlstring(&b, tmp, n);
    int bad = ferror(f);
    fclose(f);
    if (bad)
        luaL_error(L, "http.serve: cannot read %s %s", what, path);
    luaL_pushresult(&b);
    return lua_tostring(L, -1);
}

/* http.serve{address=, port=, handler=, max_body=, max_header=, connection_limit=,
 *            connection_timeout=, request_timeout=, tls_cert=, tls_key=} -> server
 * Any context; does not yield. Starts listening at once; every complete request
 * runs handler(req) in its own task. Raises on bad options, unreadable TLS files
 * or TLS unsupported by the linked libmicrohttpd; returns nil, err when the
 * server cannot start (address in use, cannot bind). See docs/http.md. */
static int l_serve(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_getfield(L, 1, "handler");
    if (!lua_isfunction(L, -1))
        return luaL_error(L, "http.serve: handler must be a function");
    int handler_idx = lua_gettop(L);
    lua_getfield(L, 1, "address");
    const char *address = lua_isnil(L, -1) ? "127.0.0.1" : luaL_checkstring(L, -1);
    lua_getfield(L, 1, "port");
    if (!lua_isinteger(L, -1))
        return luaL_error(L, "http.serve: port must be an integer (0: any free port)");
    lua_Integer port = lua_tointeger(L, -1);
    if (port < 0 || port > 65535)
        return luaL_error(L, "http.serve: port out of range");
    lua_Integer max_body = opt_int(L, "max_body", 1 << 20, 0, (lua_Integer)1 << 40);
    lua_Integer max_header = opt_int(L, "max_header", 16384, 1024, 1 << 24);
    lua_Integer limit = opt_int(L, "connection_limit", 1024, 1, 1 << 20);
    lua_Integer idle = opt_int(L, "connection_timeout", 30, 0, 86400);
    lua_getfield(L, 1, "request_timeout");
    double req_timeout = lua_isnil(L, -1) ? 30.0 : luaL_checknumber(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 1, "tls_cert");
    const char *cert_path = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
    lua_getfield(L, 1, "tls_key");
    const char *key_path = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
    if (!cert_path != !key_path)
        return luaL_error(L, "http.serve: tls_cert and tls_key go together");
    const char *cert = NULL, *key = NULL;
    if (cert_path) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
            return luaL_error(L, "http.serve: this libmicrohttpd was built without TLS");
        cert = slurp(L, cert_path, "certificate");
        key = slurp(L, key_path, "key");
    }

    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } addr;
    memset(&addr, 0, sizeof addr);
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (strchr(address, ':')) {
        if (uv_ip6_addr(address, (int)port, &addr.in6) != 0)
            return luaL_error(L, "http.serve: bad address '%s'", address);
        flags |= MHD_USE_IPv6;
    } else if (uv_ip4_addr(address, (int)port, &addr.in) != 0) {
        return luaL_error(L, "http.serve: bad address '%s'", address);
    }
    if (cert)
        flags |= MHD_USE_TLS;

    srv *s = calloc(1, sizeof *s);
    if (!s)
        return luaL_error(L, "http.serve: out of memory");
    s->handler_ref = s->runner_ref = s->self_ref = LUA_NOREF;
    s->max_body = (size_t)max_body;
    s->request_timeout = req_timeout;
    s->starting = true;
    /* The userdata first, so every later failure is collected through it. */
    srv **ud = lua_newuserdatauv(L, sizeof *ud, 0);
    *ud = NULL;
    luaL_setmetatable(L, SERVER_MT);
    int ud_idx = lua_gettop(L);

    struct MHD_OptionItem tls_opts[] = {
        {cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, (void *)cert},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)key},
        {MHD_OPTION_END, 0, NULL},
    };
    s->d = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_access, s, MHD_OPTION_SOCK_ADDR, &addr.sa,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)limit, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)idle,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)max_header + 8192, MHD_OPTION_STRICT_FOR_CLIENT,
        1, MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
    s->starting = false;
    if (!s->d) {
        char msg[300];
        snprintf(msg, sizeof msg, "%s", s->start_err[0] ? s->start_err : "cannot start");
        free(s);
        lua_pushnil(L);
        lua_pushfstring(L, "http.serve: %s:%d: %s", address, (int)port, msg);
        lua_pushliteral(L, "listen");
        return 3;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : (int)port;
    di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_EPOLL_FD);
    int epfd = di ? di->epoll_fd : -1;
    int rc = epfd < 0 ? UV_EINVAL : uv_poll_init(spgb_loop(), &s->poll, epfd);
    if (rc != 0) {
        MHD_stop_daemon(s->d);
        free(s);
        return luaL_error(L, "http.serve: uv_poll_init: %s", uv_strerror(rc));
    }
    /* From here srv is freed by handle_closed, through close_server. */
    s->poll.data = s;
    s->handles = 1;
    uv_timer_init(spgb_loop(), &s->timer); /* uv_timer_init cannot fail */
    s->timer.data = s;
    s->handles++;
    uv_timer_init(spgb_loop(), &s->sweep);
    s->sweep.data = s;
    s->handles++;
    lua_rawgetp(L, LUA_REGISTRYINDEX, (void *)l_serve); /* the runner */
    s->runner_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, handler_idx);
    s->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    s->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    *ud = s;
    lua_pushvalue(L, ud_idx);
    s->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    rc = uv_poll_start(&s->poll, UV_READABLE, on_poll);
    if (rc == 0 && req_timeout > 0)
        rc = uv_timer_start(&s->sweep, on_sweep, 1000, 1000);
    if (rc != 0) {
        close_server(L, s, false);
        *ud = NULL;
        return luaL_error(L, "http.serve: %s", uv_strerror(rc));
    }
    kick(s);
    lua_settop(L, ud_idx);
    return 1;
}

/* http.core._set_runner(fn): the Lua function every request runs through (lua/http.lua
 * sets it once when it loads). */
static int l_set_runner(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_settop(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, (void *)l_serve);
    return 0;
}

/* The C core of the http module; lua/http.lua holds the request runner and helpers. */
int luaopen_http_core(lua_State *L)
{
    static const luaL_Reg server_methods[] = {
        {"close", l_close},
        {"port", l_port},
        {"connections", l_connections},
        {NULL, NULL},
    };
    if (luaL_newmetatable(L, SERVER_MT)) {
        luaL_newlib(L, server_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_server_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, l_server_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, REF_MT)) {
        lua_pushcfunction(L, l_ref_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {
        {"serve", l_serve}, {"_respond", l_respond}, {"_set_runner", l_set_runner}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
