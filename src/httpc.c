/*
 * httpc: httpc.request, one HTTP request per call on the shared multi (curlm.c).
 */
#include "httpc.h"

#include <ctype.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "curlm.h"
#include "hc.h"
#include "sched.h"

#define DEFAULT_TIMEOUT 30.0

void spgb_httpc_push_headers(lua_State *L, const char *raw, size_t len)
{
    lua_newtable(L);
    const char *p = raw, *end = raw + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (colon && colon > p && !(le - p >= 5 && memcmp(p, "HTTP/", 5) == 0)) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (const char *q = p; q < colon; q++)
                luaL_addchar(&b, (char)tolower((unsigned char)*q));
            luaL_pushresult(&b);
            const char *v = colon + 1, *ve = le;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            lua_pushvalue(L, -1);
            lua_rawget(L, -3);
            if (lua_isstring(L, -1)) {
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, v, (size_t)(ve - v));
                lua_concat(L, 3);
            } else {
                lua_pop(L, 1);
                lua_pushlstring(L, v, (size_t)(ve - v));
            }
            lua_rawset(L, -3);
        }
        p = eol ? eol + 1 : end;
    }
}

static int push_response(lua_State *L, spgb_xfer *x, void *ud)
{
    (void)ud;
    if (x->result != CURLE_OK || x->oom)
        return spgb_xfer_push_error(L, x, "httpc.request");
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, x->status);
    lua_setfield(L, -2, "status");
    spgb_httpc_push_headers(L, x->head.p ? x->head.p : "", x->head.len);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, x->body.p ? x->body.p : "", x->body.len);
    lua_setfield(L, -2, "body");
    return 1;
}

static const char *opt_field(lua_State *L, int t, const char *k)
{
    lua_getfield(L, t, k);
    const char *s = NULL;
    if (!lua_isnil(L, -1)) {
        if (!lua_isstring(L, -1))
            luaL_error(L, "httpc.request: %s must be a string", k);
        s = lua_tostring(L, -1);
    }
    lua_pop(L, 1); /* anchored by the options table */
    return s;
}

static double opt_seconds(lua_State *L, int t, const char *k, double def)
{
    lua_getfield(L, t, k);
    double v = def;
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1))
            luaL_error(L, "httpc.request: %s must be a number of seconds", k);
        v = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

static long to_ms(double s)
{
    if (!(s > 0))
        return 0;
    if (s > 1e6)
        s = 1e6;
    return (long)ceil(s * 1000.0);
}

static bool force_curl; /* httpc.set_client("curl"): benches compare the two */

/* Push the headers table of the options at index 1 as "Name: value\r\n" lines (one
 * string; "" without headers); *has_ctype tells whether one is Content-Type. Raises
 * on a bad table or a header with a line break. Both clients send these lines. */
static const char *header_lines(lua_State *L, size_t *len, bool *has_ctype)
{
    *has_ctype = false;
    lua_getfield(L, 1, "headers");
    int ht = lua_gettop(L);
    lua_pushliteral(L, ""); /* the lines, at ht + 1 (few: concatenated as they come) */
    if (lua_istable(L, ht)) {
        lua_pushnil(L);
        while (lua_next(L, ht)) {
            if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
                luaL_error(L, "httpc.request: headers must map names to strings");
            const char *line =
                lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
            if (strpbrk(line, "\r\n"))
                luaL_error(L, "httpc.request: header contains a line break");
            if (strcasecmp(lua_tostring(L, -3), "content-type") == 0)
                *has_ctype = true;
            lua_pushvalue(L, ht + 1);
            lua_insert(L, -2);
            lua_pushliteral(L, "\r\n");
            lua_concat(L, 3);
            lua_replace(L, ht + 1);
            lua_pop(L, 1);
        }
    } else if (!lua_isnil(L, ht)) {
        luaL_error(L, "httpc.request: headers must be a table");
    }
    lua_remove(L, ht);
    return lua_tolstring(L, -1, len);
}

/* httpc.request{url=, method=, headers={name=value}, body=, timeout=,
 *               connect_timeout=, ca_file=, cert_file=, key_file=,
 *               skip_tls_verify=, max_body=}
 *   -> {status=, headers={lowercased name=value}, body=} | nil, err, code
 * Task only; yields until the response is complete. method defaults to "POST"
 * with a body, "GET" without. timeout (seconds, default 30) bounds the whole
 * request, connect_timeout (default: timeout) the connection set-up. Redirects are
 * not followed. Any HTTP status is a response; transport failures return
 * nil, message, code with code "timeout", "connect", "resolve", "tls", "io",
 * "too_large" or "curl". Raises on bad arguments or outside a task. */
static int l_request(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    spgb_task_current(L, "httpc.request");
    const char *url = opt_field(L, 1, "url");
    if (!url)
        return luaL_argerror(L, 1, "url is required");
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return luaL_argerror(L, 1, "url must start with http:// or https://");
    lua_getfield(L, 1, "body");
    size_t blen = 0;
    const char *body = NULL;
    if (!lua_isnil(L, -1)) {
        if (!lua_isstring(L, -1))
            return luaL_error(L, "httpc.request: body must be a string");
        body = lua_tolstring(L, -1, &blen);
    }
    lua_pop(L, 1);
    const char *method = opt_field(L, 1, "method");
    if (!method)
        method = body ? "POST" : "GET";
    double timeout = opt_seconds(L, 1, "timeout", DEFAULT_TIMEOUT);
    double ctimeout = opt_seconds(L, 1, "connect_timeout", timeout);
    double max_body = opt_seconds(L, 1, "max_body", 0);
    const char *ca = opt_field(L, 1, "ca_file");
    const char *cert = opt_field(L, 1, "cert_file");
    const char *key = opt_field(L, 1, "key_file");
    lua_getfield(L, 1, "skip_tls_verify");
    bool skip = lua_toboolean(L, -1);
    lua_pop(L, 1);
    for (const char *m = method; *m; m++)
        if (!isupper((unsigned char)*m))
            return luaL_argerror(L, 1, "method must be an upper-case HTTP method");

    size_t hlen;
    bool has_ctype;
    const char *hs = header_lines(L, &hlen, &has_ctype);
    spgb_hc_url u;
    if (!force_curl && !ca && !cert && !key && spgb_hc_parse_url(url, &u)) {
        if (body && !has_ctype) { /* what libcurl sends for a body without one */
            lua_pushliteral(L, "Content-Type: application/x-www-form-urlencoded\r\n");
            lua_concat(L, 2);
            hs = lua_tolstring(L, -1, &hlen);
        }
        return spgb_hc_request(L, &u, method, hs, hlen, body, blen, timeout, ctimeout,
                               max_body > 0 ? (size_t)max_body : 0);
    }

    spgb_xfer *x = spgb_xfer_new(url);
    if (!x)
        return luaL_error(L, "httpc.request: out of memory (or bad url)");
    bool ok = true;
    for (const char *p = hs, *e; ok && (e = strstr(p, "\r\n")); p = e + 2) {
        ok = spgb_xfer_header(x, lua_pushlstring(L, p, (size_t)(e - p)));
        lua_pop(L, 1);
    }
    if (ok && body)
        ok = spgb_xfer_body(x, body, blen);
    if (ok) {
        if (strcmp(method, "HEAD") == 0)
            ok = curl_easy_setopt(x->easy, CURLOPT_NOBODY, 1L) == CURLE_OK;
        else if (strcmp(method, "GET") != 0 || body)
            ok = curl_easy_setopt(x->easy, CURLOPT_CUSTOMREQUEST, method) == CURLE_OK;
    }
    if (!ok) {
        spgb_xfer_free(x);
        return luaL_error(L, "httpc.request: out of memory");
    }
    spgb_xfer_tls(x, ca, cert, key, skip);
    curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, to_ms(timeout));
    curl_easy_setopt(x->easy, CURLOPT_CONNECTTIMEOUT_MS, to_ms(ctimeout));
    if (max_body > 0)
        x->max_body = (size_t)max_body;
    /* curl's own timeout reports first; the scheduler's is a backstop. */
    return spgb_curlm_call(L, x, "httpc.request", timeout > 0 ? timeout + 1.0 : 0, push_response,
                           NULL);
}

/* httpc.set_client(which): "auto" (the default: our own client for plain http:// to a
 * numeric address, libcurl for the rest) or "curl" (libcurl for every request).
 * For benchmarks and comparisons; returns the previous setting. */
static int l_set_client(lua_State *L)
{
    static const char *const names[] = {"auto", "curl", NULL};
    int which = luaL_checkoption(L, 1, NULL, names);
    lua_pushstring(L, force_curl ? "curl" : "auto");
    force_curl = which == 1;
    return 1;
}

/* httpc.idle_connections() -> n: connections our own client keeps open for reuse. */
static int l_idle_connections(lua_State *L)
{
    lua_pushinteger(L, spgb_hc_idle_count());
    return 1;
}

int luaopen_httpc(lua_State *L)
{
    spgb_curlm_open(L);
    static const luaL_Reg fns[] = {{"request", l_request},
                                   {"set_client", l_set_client},
                                   {"idle_connections", l_idle_connections},
                                   {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
