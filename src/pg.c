#include "pg.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "sched.h"

#define CONN_MT "spgb.pg.conn"
#define DEFAULT_CONNECT_TIMEOUT 10.0
#define DEFAULT_QUERY_TIMEOUT 60.0

enum { C_CONNECTING, C_READY, C_BUSY, C_BROKEN, C_CLOSED };
static const char *const state_names[] = {"connecting", "ok", "busy", "broken", "closed"};

/*
 * One connection. C owns it; the Lua userdata holds a pointer and frees it in __gc.
 * A task waiting on it keeps the userdata on its stack, so the struct (and the op
 * embedded in it) outlives every pending wait. The uv_poll handle is malloc'd on
 * its own and freed by its close callback, so the struct never waits for libuv.
 */
typedef struct pgconn {
    PGconn *pg;
    uv_poll_t *poll; /* NULL when not watching */
    int fd;          /* the socket poll was made for */
    int st;
    bool waiting;    /* op is pending */
    bool flushing;   /* libpq has unsent output (PQflush returned 1) */
    int poll_errors; /* consecutive error statuses from uv_poll */
    spgb_op op;
    PGresult *res; /* the result to report: the last one of the query */
    char err[512]; /* connection-level failure of the pending op ("" when none) */
    const char *errcode;
    char broken[512]; /* why the connection is unusable */
    double query_timeout;
} pgconn;

/* ---- helpers shared with the C tests -------------------------------------- */

int spgb_pg_conninfo(lua_State *L, int idx, const char *what, const char ***keys,
                     const char ***vals)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char **v = lua_newuserdatauv(L, sizeof(char *) * 4, 1);
        v[0] = "dbname";
        v[1] = NULL;
        v[2] = lua_tostring(L, idx);
        v[3] = NULL;
        lua_pushvalue(L, idx);
        lua_setiuservalue(L, -2, 1);
        *keys = v;
        *vals = v + 2;
        return 1;
    }
    if (!lua_istable(L, idx))
        return luaL_error(L, "%s: conninfo must be a string or a table", what);
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        n++;
        lua_pop(L, 1);
    }
    const char **v = lua_newuserdatauv(L, sizeof(char *) * (size_t)(2 * n + 2), 1);
    lua_createtable(L, 2 * n, 0); /* anchors the strings */
    int anchor = lua_gettop(L);
    int k = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            return luaL_error(L, "%s: conninfo keys must be strings", what);
        int t = lua_type(L, -1);
        if (t != LUA_TSTRING && t != LUA_TNUMBER)
            return luaL_error(L, "%s: conninfo.%s must be a string or a number", what,
                              lua_tostring(L, -2));
        lua_pushvalue(L, -2);
        v[k] = lua_tostring(L, -1);
        lua_rawseti(L, anchor, 2 * k + 1);
        lua_pushvalue(L, -1);
        v[n + 1 + k] = lua_tostring(L, -1); /* converts the copy, not the table's */
        lua_rawseti(L, anchor, 2 * k + 2);
        k++;
        lua_pop(L, 1);
    }
    v[k] = NULL;
    v[n + 1 + k] = NULL;
    lua_setiuservalue(L, -2, 1);
    *keys = v;
    *vals = v + n + 1;
    return 0;
}

/* Copy s into dst without the trailing newlines libpq adds. */
static void copy_msg(char *dst, size_t cap, const char *s)
{
    if (!s || !*s)
        s = "unknown error";
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' '))
        n--;
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

int spgb_pg_push_result(lua_State *L, const PGresult *r, const char *what)
{
    ExecStatusType s = r ? PQresultStatus(r) : PGRES_EMPTY_QUERY;
    if (s == PGRES_FATAL_ERROR || s == PGRES_NONFATAL_ERROR || s == PGRES_BAD_RESPONSE) {
        const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
        char buf[1024];
        copy_msg(buf, sizeof buf, msg ? msg : PQresultErrorMessage(r));
        const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", what, buf);
        lua_pushstring(L, code && *code ? code : "error");
        return 3;
    }
    int nt = r ? PQntuples(r) : 0;
    int nf = r ? PQnfields(r) : 0;
    lua_createtable(L, nt, 3);
    lua_createtable(L, nf, 0);
    for (int j = 0; j < nf; j++) {
        lua_pushstring(L, PQfname(r, j));
        lua_rawseti(L, -2, j + 1);
    }
    lua_setfield(L, -2, "fields");
    lua_pushstring(L, r ? PQcmdStatus((PGresult *)r) : "");
    lua_setfield(L, -2, "command");
    const char *aff = r ? PQcmdTuples((PGresult *)r) : "";
    if (aff && *aff) {
        lua_pushinteger(L, strtoll(aff, NULL, 10));
        lua_setfield(L, -2, "affected");
    }
    for (int i = 0; i < nt; i++) {
        lua_createtable(L, 0, nf);
        for (int j = 0; j < nf; j++) {
            if (PQgetisnull(r, i, j))
                continue;
            lua_pushlstring(L, PQgetvalue(r, i, j), (size_t)PQgetlength(r, i, j));
            lua_setfield(L, -2, PQfname(r, j));
        }
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* ---- the poll handle ------------------------------------------------------ */

static void poll_freed(uv_handle_t *h)
{
    free(h);
}

/* Stop watching and release the handle. Must run before libpq closes the socket
 * (PQfinish) or right after it did (a lost connection), before anything else can
 * reuse the descriptor number. */
static void poll_close(pgconn *c)
{
    if (c->poll) {
        c->poll->data = NULL;
        uv_close((uv_handle_t *)c->poll, poll_freed);
        c->poll = NULL;
    }
    c->fd = -1;
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watch libpq's current socket for events. The socket can change during connect
 * (libpq tries the next address): a new number gets a new handle. The caller has
 * stopped the handle before the libpq call that could change it (a stopped uv_poll
 * is removed from epoll while its socket is still open, so a reused number is
 * added afresh). Returns 0 or a message. */
static const char *poll_watch(pgconn *c, int events)
{
    int fd = PQsocket(c->pg);
    if (fd < 0)
        return "no socket";
    if (c->poll && fd != c->fd)
        poll_close(c);
    if (!c->poll) {
        uv_poll_t *p = malloc(sizeof *p);
        if (!p)
            return "out of memory";
        int rc = uv_poll_init_socket(spgb_loop(), p, fd);
        if (rc != 0) {
            free(p);
            return uv_strerror(rc);
        }
        p->data = c;
        c->poll = p;
        c->fd = fd;
    }
    int rc = uv_poll_start(c->poll, events, on_poll);
    return rc == 0 ? NULL : uv_strerror(rc);
}

static void poll_stop(pgconn *c)
{
    if (c->poll)
        uv_poll_stop(c->poll); /* cannot fail on an initialised handle */
}

static void conn_finish(pgconn *c)
{
    poll_close(c);
    if (c->pg) {
        PQfinish(c->pg); /* nonblocking after connect: never waits on the socket */
        c->pg = NULL;
    }
}

/* The connection is unusable: release it, remember why. */
static void conn_break(pgconn *c, const char *why)
{
    if (c->st != C_CLOSED) {
        c->st = C_BROKEN;
        copy_msg(c->broken, sizeof c->broken, why); /* before why (libpq's) is freed */
    }
    conn_finish(c);
}

/* Fail the pending op with a connection-level error and wake its task. */
static void op_fail(pgconn *c, const char *msg, const char *code)
{
    copy_msg(c->err, sizeof c->err, msg);
    c->errcode = code;
    conn_break(c, msg);
    if (c->waiting) {
        c->waiting = false;
        spgb_op_done(&c->op);
    }
}

static void no_notices(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* ---- connect -------------------------------------------------------------- */

static void connect_step(pgconn *c)
{
    poll_stop(c);
    PostgresPollingStatusType s = PQconnectPoll(c->pg);
    const char *err;
    switch (s) {
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(c->pg, 1) != 0) {
            op_fail(c, PQerrorMessage(c->pg), "connect");
            return;
        }
        c->st = C_READY;
        c->waiting = false;
        spgb_op_done(&c->op);
        return;
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        err = poll_watch(c, s == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE);
        if (err)
            op_fail(c, err, "connect");
        return;
    case PGRES_POLLING_FAILED:
    default:
        op_fail(c, PQerrorMessage(c->pg), "connect");
        return;
    }
}

/* ---- query ---------------------------------------------------------------- */

static bool conn_lost(pgconn *c)
{
    return PQstatus(c->pg) == CONNECTION_BAD;
}

static bool is_error(const PGresult *r)
{
    ExecStatusType s = PQresultStatus(r);
    return s == PGRES_FATAL_ERROR || s == PGRES_NONFATAL_ERROR || s == PGRES_BAD_RESPONSE;
}

/* Readable/writable while a query is in flight: read, flush, collect results. Runs
 * in the libuv callback: touches only c and libpq, finishes with spgb_op_done. */
static void query_step(pgconn *c, int status, int events)
{
    if (status < 0) {
        /* libuv reports POLLERR (a reset socket) as an error status: keep reading
         * so libpq collects what the server sent before the reset (a FATAL with its
         * SQLSTATE) and then meets the error itself. Each read drains data or hits
         * the error; a few in a row without an end means something else: give up. */
        if (++c->poll_errors > 8) {
            op_fail(c, uv_strerror(status), "connection");
            return;
        }
        events = UV_READABLE;
    } else {
        c->poll_errors = 0;
    }
    /* A failed read (EOF) may still leave the server's last messages buffered, such
     * as the FATAL error with its SQLSTATE: collect them before giving up. */
    bool read_failed = (events & UV_READABLE) && !PQconsumeInput(c->pg);
    if (!read_failed && c->flushing) {
        int r = PQflush(c->pg);
        if (r < 0) {
            op_fail(c, PQerrorMessage(c->pg), "connection");
            return;
        }
        c->flushing = r == 1;
    }
    /* Bounded: each PQgetResult consumes buffered input; PQisBusy is false once the
     * connection is bad, and PQgetResult then ends with NULL. */
    while (!PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            c->st = C_READY;
            if (conn_lost(c))
                conn_break(c, PQerrorMessage(c->pg));
            else
                poll_stop(c);
            c->waiting = false;
            spgb_op_done(&c->op);
            return;
        }
        ExecStatusType s = PQresultStatus(r);
        if (s == PGRES_COPY_IN || s == PGRES_COPY_OUT || s == PGRES_COPY_BOTH) {
            PQclear(r);
            op_fail(c, "COPY is not supported", "error");
            return;
        }
        /* Keep the last result, but the first error: the server skips the rest of
         * the statements after it, and libpq may add its own "connection lost". */
        if (c->res && is_error(c->res)) {
            PQclear(r);
        } else {
            PQclear(c->res);
            c->res = r;
        }
    }
    if (read_failed || conn_lost(c)) {
        op_fail(c, PQerrorMessage(c->pg), "connection");
        return;
    }
    const char *err = poll_watch(c, UV_READABLE | (c->flushing ? UV_WRITABLE : 0));
    if (err)
        op_fail(c, err, "connection");
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    pgconn *c = h->data;
    if (!c || !c->waiting)
        return;
    if (c->st == C_CONNECTING)
        connect_step(c);
    else if (c->st == C_BUSY)
        query_step(c, status, events);
}

/* ---- Lua: pg -------------------------------------------------------------- */

static pgconn *check_conn(lua_State *L, const char *what)
{
    pgconn **ud = luaL_checkudata(L, 1, CONN_MT);
    if (!*ud || (*ud)->st == C_CLOSED)
        luaL_error(L, "%s: closed", what);
    return *ud;
}

static int connect_push(lua_State *L, spgb_op *op)
{
    pgconn *c = (pgconn *)((char *)op - offsetof(pgconn, op));
    if (c->st == C_READY) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushfstring(L, "pg.connect: %s", c->err[0] ? c->err : "failed");
    lua_pushstring(L, c->errcode ? c->errcode : "connect");
    c->err[0] = '\0';
    return 3;
}

static void connect_cancel(spgb_op *op)
{
    pgconn *c = (pgconn *)((char *)op - offsetof(pgconn, op));
    c->waiting = false;
    conn_break(c, "connect abandoned (timeout or cancelled)");
}

/* Continuation of pg.connect: the userdata is at index 3, the op's results above. */
static int connect_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    spgb_op_resumed(L);
    if (lua_toboolean(L, 4)) {
        lua_pushvalue(L, 3);
        return 1;
    }
    return lua_gettop(L) - 3;
}

static double opt_number(lua_State *L, int t, const char *k, double def)
{
    if (!lua_istable(L, t))
        return def;
    lua_getfield(L, t, k);
    double v = lua_isnil(L, -1) ? def : (double)luaL_checknumber(L, -1);
    lua_pop(L, 1);
    return v;
}

/*
 * pg.connect(conninfo [, {timeout=10, query_timeout=60}]) -> conn | nil, err, code
 * Task only; yields until connected. conninfo: a libpq connection string or URI, or
 * a table of libpq keywords ({host=, port=, user=, password=, dbname=, ...}).
 * code is the SQLSTATE the server sent, "connect" otherwise, or "timeout".
 * Host names are resolved by libpq synchronously: use addresses (or a socket
 * directory) where a slow resolver matters. Raises on a bad argument.
 */
static int l_connect(lua_State *L)
{
    spgb_task_current(L, "pg.connect");
    double timeout = opt_number(L, 2, "timeout", DEFAULT_CONNECT_TIMEOUT);
    double qtimeout = opt_number(L, 2, "query_timeout", DEFAULT_QUERY_TIMEOUT);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    pgconn **ud = lua_newuserdatauv(L, sizeof *ud, 0); /* index 3 */
    *ud = NULL;
    luaL_setmetatable(L, CONN_MT);
    const char **keys, **vals;
    int expand = spgb_pg_conninfo(L, 1, "pg.connect", &keys, &vals); /* index 4 */
    pgconn *c = calloc(1, sizeof *c);
    if (!c)
        return luaL_error(L, "pg.connect: out of memory");
    *ud = c;
    c->fd = -1;
    c->st = C_CONNECTING;
    c->query_timeout = qtimeout;
    c->pg = PQconnectStartParams(keys, vals, expand);
    lua_settop(L, 3);
    if (!c->pg) {
        c->st = C_BROKEN;
        lua_pushnil(L);
        lua_pushliteral(L, "pg.connect: out of memory");
        lua_pushliteral(L, "connect");
        return 3;
    }
    PQsetNoticeProcessor(c->pg, no_notices, NULL);
    const char *err =
        PQstatus(c->pg) == CONNECTION_BAD ? PQerrorMessage(c->pg) : poll_watch(c, UV_WRITABLE);
    if (err) {
        lua_pushnil(L);
        lua_pushfstring(L, "pg.connect: %s", err);
        lua_pushliteral(L, "connect");
        conn_break(c, lua_tostring(L, -2)); /* err may live in c->pg */
        return 3;
    }
    memset(&c->op, 0, sizeof c->op);
    c->op.name = "pg.connect";
    c->op.push = connect_push;
    c->op.cancel = connect_cancel;
    c->waiting = true;
    return spgb_op_waitk(L, &c->op, timeout, connect_k, 0);
}

static int query_push(lua_State *L, spgb_op *op)
{
    pgconn *c = (pgconn *)((char *)op - offsetof(pgconn, op));
    if (c->err[0]) {
        PQclear(c->res);
        c->res = NULL;
        lua_pushnil(L);
        lua_pushfstring(L, "pg.query: %s", c->err);
        lua_pushstring(L, c->errcode ? c->errcode : "connection");
        c->err[0] = '\0';
        return 3;
    }
    /* c keeps r until converted: a memory error here leaks nothing. */
    int n = spgb_pg_push_result(L, c->res, "pg.query");
    PQclear(c->res);
    c->res = NULL;
    if (n == 3 && c->st == C_BROKEN && strcmp(lua_tostring(L, -1), "error") == 0) {
        lua_pop(L, 1);
        lua_pushliteral(L, "connection");
    }
    return n;
}

static void query_cancel(spgb_op *op)
{
    pgconn *c = (pgconn *)((char *)op - offsetof(pgconn, op));
    c->waiting = false;
    PQclear(c->res);
    c->res = NULL;
    /* PQcancel would block: drop the connection instead (the server sees the client
     * go; PgBouncer in particular forgets a PAUSE its admin client waited on). */
    conn_break(c, "query abandoned (timeout or cancelled)");
}

/* Send sql with the params at stack indexes [pfirst, pfirst+np) (np < 0: simple
 * protocol) and yield. */
static int start_query(lua_State *L, pgconn *c, const char *sql, int pfirst, int np, double timeout)
{
    spgb_task_current(L, "pg.query");
    if (c->st == C_BUSY || c->waiting)
        return luaL_error(L, "pg.query: connection busy (another task is querying it)");
    if (c->st != C_READY) {
        lua_pushnil(L);
        lua_pushfstring(L, "pg.query: connection broken: %s", c->broken);
        lua_pushliteral(L, "connection");
        return 3;
    }
    int ok;
    if (np < 0) {
        ok = PQsendQuery(c->pg, sql);
    } else {
        const char **vals = lua_newuserdatauv(L, sizeof(char *) * (size_t)(np + 1), 0);
        for (int i = 0; i < np; i++) {
            int idx = pfirst + i;
            switch (lua_type(L, idx)) {
            case LUA_TNIL:
                vals[i] = NULL;
                break;
            case LUA_TBOOLEAN:
                vals[i] = lua_toboolean(L, idx) ? "true" : "false";
                break;
            case LUA_TSTRING:
            case LUA_TNUMBER:
                vals[i] = lua_tostring(L, idx); /* converts in place: stays anchored */
                break;
            default:
                return luaL_error(L,
                                  "pg.query: parameter %d must be a string, number, "
                                  "boolean or nil",
                                  i + 1);
            }
        }
        ok = PQsendQueryParams(c->pg, sql, np, NULL, vals, NULL, NULL, 0);
    }
    int fl = ok ? PQflush(c->pg) : -1;
    if (fl < 0) {
        char msg[512];
        copy_msg(msg, sizeof msg, PQerrorMessage(c->pg));
        if (conn_lost(c))
            conn_break(c, msg);
        lua_pushnil(L);
        lua_pushfstring(L, "pg.query: %s", msg);
        lua_pushliteral(L, "connection");
        return 3;
    }
    c->flushing = fl == 1;
    c->poll_errors = 0;
    const char *err = poll_watch(c, UV_READABLE | (c->flushing ? UV_WRITABLE : 0));
    if (err) {
        conn_break(c, err);
        lua_pushnil(L);
        lua_pushfstring(L, "pg.query: %s", err);
        lua_pushliteral(L, "connection");
        return 3;
    }
    c->st = C_BUSY;
    memset(&c->op, 0, sizeof c->op);
    c->op.name = "pg.query";
    c->op.push = query_push;
    c->op.cancel = query_cancel;
    c->waiting = true;
    c->err[0] = '\0';
    return spgb_op_wait(L, &c->op, timeout);
}

/*
 * conn:query(sql, ...) -> rows | nil, err, code
 * Task only; yields until the whole result has arrived. Without extra arguments sql
 * goes as a simple query (several statements allowed; the last result is returned).
 * With arguments they are $1, $2, ... text parameters (string, number, boolean;
 * nil is SQL NULL) in one extended-protocol statement. rows = {row, ...} with each
 * row keyed by column name (strings; SQL NULL leaves the key absent), rows.fields
 * (names in order), rows.command (the command tag), rows.affected (when the tag
 * has a count). Errors: code is the SQLSTATE; "connection" when the connection is
 * lost or broken; "timeout" after the connection's query timeout, which also
 * closes the connection (libpq's cancel would block) and leaves it broken.
 * Raises on a closed connection or while another task uses it.
 */
static int l_query(lua_State *L)
{
    pgconn *c = check_conn(L, "pg.query");
    const char *sql = luaL_checkstring(L, 2);
    int np = lua_gettop(L) - 2;
    return start_query(L, c, sql, 3, np > 0 ? np : -1, c->query_timeout);
}

/*
 * conn:query_opts{sql=, params={...}, timeout=} -> as conn:query
 * Task only; yields. params (optional; params.n counts trailing nils) selects the
 * extended protocol as in conn:query; timeout (seconds, default the connection's
 * query_timeout; <= 0 means none) bounds this query only.
 */
static int l_query_opts(lua_State *L)
{
    pgconn *c = check_conn(L, "pg.query");
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_getfield(L, 2, "sql");
    const char *sql = lua_tostring(L, 3);
    if (!sql)
        return luaL_argerror(L, 2, "sql must be a string");
    double timeout = opt_number(L, 2, "timeout", c->query_timeout);
    lua_getfield(L, 2, "params"); /* index 4 */
    int np = -1;
    if (!lua_isnil(L, 4)) {
        luaL_argcheck(L, lua_istable(L, 4), 2, "params must be a table");
        lua_getfield(L, 4, "n");
        np = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : (int)lua_rawlen(L, 4);
        lua_pop(L, 1);
        luaL_argcheck(L, np >= 0 && np <= 65535, 2, "params.n out of range");
        luaL_checkstack(L, np, "pg.query: too many parameters");
        for (int i = 1; i <= np; i++)
            lua_rawgeti(L, 4, i);
    }
    return start_query(L, c, sql, 5, np, timeout);
}

/* Close now; a task waiting on the connection gets nil, "pg.query: closed". */
static void conn_close(pgconn *c)
{
    if (c->waiting) {
        copy_msg(c->err, sizeof c->err, "closed");
        c->errcode = "connection";
        c->waiting = false;
        spgb_op_done(&c->op);
    }
    PQclear(c->res);
    c->res = NULL;
    conn_finish(c);
    c->st = C_CLOSED;
}

/* conn:close(). Any context; does not yield; idempotent. Later use raises "closed". */
static int l_close(lua_State *L)
{
    pgconn **ud = luaL_checkudata(L, 1, CONN_MT);
    if (*ud)
        conn_close(*ud);
    return 0;
}

static int l_gc(lua_State *L)
{
    pgconn **ud = luaL_checkudata(L, 1, CONN_MT);
    if (*ud) {
        pgconn *c = *ud;
        *ud = NULL;
        c->waiting = false; /* only at shutdown: a waiting task anchors its conn */
        conn_close(c);
        free(c);
    }
    return 0;
}

/* conn:status() -> "connecting" | "ok" | "busy" | "broken" | "closed" [, why]. */
static int l_status(lua_State *L)
{
    pgconn **ud = luaL_checkudata(L, 1, CONN_MT);
    int st = *ud ? (*ud)->st : C_CLOSED;
    lua_pushstring(L, state_names[st]);
    if (st == C_BROKEN) {
        lua_pushstring(L, (*ud)->broken);
        return 2;
    }
    return 1;
}

/* conn:backend_pid() -> the server process id (PgBouncer: its own id), or nil. */
static int l_backend_pid(lua_State *L)
{
    pgconn *c = check_conn(L, "pg.backend_pid");
    if (!c->pg)
        return 0;
    lua_pushinteger(L, PQbackendPID(c->pg));
    return 1;
}

static int l_tostring(lua_State *L)
{
    pgconn **ud = luaL_checkudata(L, 1, CONN_MT);
    int st = *ud ? (*ud)->st : C_CLOSED;
    if (*ud && (*ud)->pg)
        lua_pushfstring(L, "pg.conn: %s:%s (%s)", PQhost((*ud)->pg), PQport((*ud)->pg),
                        state_names[st]);
    else
        lua_pushfstring(L, "pg.conn (%s)", state_names[st]);
    return 1;
}

/* pg.escape_identifier(s) -> "s" quoted as an SQL identifier. pg.escape_literal(s)
 * -> 's' quoted as an SQL string literal (standard_conforming_strings). Pure. */
static int l_quote(lua_State *L, char q)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addchar(&b, q);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\0')
            return luaL_argerror(L, 1, "contains a NUL byte");
        if (s[i] == q)
            luaL_addchar(&b, q);
        luaL_addchar(&b, s[i]);
    }
    luaL_addchar(&b, q);
    luaL_pushresult(&b);
    return 1;
}

static int l_escape_identifier(lua_State *L)
{
    return l_quote(L, '"');
}

static int l_escape_literal(lua_State *L)
{
    return l_quote(L, '\'');
}

int luaopen_pg(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"query", l_query},   {"query_opts", l_query_opts},   {"close", l_close},
        {"status", l_status}, {"backend_pid", l_backend_pid}, {NULL, NULL},
    };
    if (luaL_newmetatable(L, CONN_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {
        {"connect", l_connect},
        {"escape_identifier", l_escape_identifier},
        {"escape_literal", l_escape_literal},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}

/* ---- Lua: pgbouncer ------------------------------------------------------- */
