#include "log.h"

#include <lauxlib.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static int min_level = SPGB_LOG_INFO;
static const char *level_names[] = {"debug", "info", "warn", "error"};

void spgb_log_set_level(int level)
{
    min_level = level;
}

int spgb_log_level(void)
{
    return min_level;
}

int spgb_log_parse_level(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    if (strcmp(name, "warning") == 0)
        return SPGB_LOG_WARN;
    return -1;
}

/* A growable line buffer; on allocation failure the line is truncated, never lost
 * entirely (logging must not fail the caller). */
typedef struct {
    char small[1024];
    char *p;
    size_t len, cap;
} line;

static void put(line *b, const char *s, size_t n)
{
    if (b->len + n + 2 > b->cap) {
        size_t cap = b->cap * 2;
        while (cap < b->len + n + 2)
            cap *= 2;
        char *np = b->p == b->small ? malloc(cap) : realloc(b->p, cap);
        if (!np)
            return;
        if (b->p == b->small)
            memcpy(np, b->small, b->len);
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static bool needs_quotes(const char *v, size_t n)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c <= ' ' || c == '=' || c == '"' || c == '\\' || c == 0x7f)
            return true;
    }
    return false;
}

static void put_value(line *b, const char *v, size_t n)
{
    if (!needs_quotes(v, n)) {
        put(b, v, n);
        return;
    }
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(b, esc, 2);
        } else if (c == '\n') {
            put(b, "\\n", 2);
        } else if (c == '\t') {
            put(b, "\\t", 2);
        } else if (c < ' ' || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(b, esc, strlen(esc));
        } else {
            put(b, (const char *)&v[i], 1);
        }
    }
    put(b, "\"", 1);
}

static void put_pair(line *b, const char *k, const char *v, size_t n)
{
    put(b, " ", 1);
    put(b, k, strlen(k));
    put(b, "=", 1);
    put_value(b, v, n);
}

static void begin(line *b, int level)
{
    b->p = b->small;
    b->len = 0;
    b->cap = sizeof b->small;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char t[64];
    size_t n = strftime(t, sizeof t, "ts=%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(t + n, sizeof t - n, ".%06ldZ level=", ts.tv_nsec / 1000);
    put(b, t, n);
    put(b, level_names[level], strlen(level_names[level]));
}

static void end(line *b)
{
    put(b, "\n", 1);
    fwrite(b->p, 1, b->len, stderr);
    fflush(stderr);
    if (b->p != b->small)
        free(b->p);
}

void spgb_log_write(int level, const char *event, const char *msg, ...)
{
    if (level < min_level)
        return;
    line b;
    begin(&b, level);
    if (event)
        put_pair(&b, "event", event, strlen(event));
    if (msg)
        put_pair(&b, "msg", msg, strlen(msg));
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        put_pair(&b, k, v ? v : "", v ? strlen(v) : 0);
    }
    va_end(ap);
    end(&b);
}

/* ---- Lua module ------------------------------------------------------------ */

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* log.<level>(fields) | log.<level>(msg [, fields]). Any context; does not yield.
 * fields is a table: "event" and "msg" come first, then the other string keys in
 * sorted order; values go through tostring. Raises on a non-table fields. */
static int l_write(lua_State *L, int level)
{
    if (level < min_level)
        return 0;
    int fields = 0;
    const char *msg = NULL;
    size_t msglen = 0;
    if (lua_type(L, 1) == LUA_TTABLE) {
        fields = 1;
    } else {
        msg = luaL_checklstring(L, 1, &msglen);
        if (!lua_isnoneornil(L, 2)) {
            luaL_checktype(L, 2, LUA_TTABLE);
            fields = 2;
        }
    }
    line b;
    begin(&b, level);
    if (fields) {
        lua_getfield(L, fields, "event");
        if (!lua_isnil(L, -1)) {
            size_t n;
            const char *v = luaL_tolstring(L, -1, &n);
            put_pair(&b, "event", v, n);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    if (msg)
        put_pair(&b, "msg", msg, msglen);
    if (fields) {
        if (!msg) {
            lua_getfield(L, fields, "msg");
            if (!lua_isnil(L, -1)) {
                size_t n;
                const char *v = luaL_tolstring(L, -1, &n);
                put_pair(&b, "msg", v, n);
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        }
        const char *keys[64];
        int nk = 0;
        lua_pushnil(L);
        while (lua_next(L, fields) && nk < 64) {
            if (lua_type(L, -2) == LUA_TSTRING) {
                const char *k = lua_tostring(L, -2);
                if (strcmp(k, "event") && strcmp(k, "msg"))
                    keys[nk++] = k; /* anchored by the table */
            }
            lua_pop(L, 1);
        }
        qsort(keys, (size_t)nk, sizeof keys[0], cmp_keys);
        for (int i = 0; i < nk; i++) {
            lua_getfield(L, fields, keys[i]);
            size_t n;
            const char *v = luaL_tolstring(L, -1, &n);
            put_pair(&b, keys[i], v, n);
            lua_pop(L, 2);
        }
    }
    end(&b);
    return 0;
}

static int l_debug(lua_State *L)
{
    return l_write(L, SPGB_LOG_DEBUG);
}
static int l_info(lua_State *L)
{
    return l_write(L, SPGB_LOG_INFO);
}
static int l_warn(lua_State *L)
{
    return l_write(L, SPGB_LOG_WARN);
}
static int l_error(lua_State *L)
{
    return l_write(L, SPGB_LOG_ERROR);
}

/* log.set_level("debug"|"info"|"warn"|"error"). Raises on an unknown name. */
static int l_set_level(lua_State *L)
{
    int lv = spgb_log_parse_level(luaL_checkstring(L, 1));
    if (lv < 0)
        return luaL_argerror(L, 1, "expected debug, info, warn or error");
    min_level = lv;
    return 0;
}

/* log.level() -> the current minimum level's name. */
static int l_level(lua_State *L)
{
    lua_pushstring(L, level_names[min_level]);
    return 1;
}

/* The C core of the log module; lua/log.lua adds log.with. */
int luaopen_log_core(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"debug", l_debug},         {"info", l_info},   {"warn", l_warn}, {"error", l_error},
        {"set_level", l_set_level}, {"level", l_level}, {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
