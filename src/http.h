/*
 * http: the HTTP/1.1 server whose handlers are Lua functions.
 *
 * Provides: the Lua module `http` (serve, json, and request re-exported from the
 * `httpc` client module when it is linked).
 * Uses: libmicrohttpd (parsing, keep-alive, limits, timeouts, TLS) in external-poll
 * epoll mode driven from the scheduler's libuv loop, the scheduler (one task per
 * request), lua-cjson (JSON bodies), log.
 *
 * How a request flows: MHD's callbacks only copy the body and suspend the
 * connection once the request is complete; after MHD_run returns, the server
 * spawns a task per completed request. The task runs the handler and hands the
 * response back (C), which resumes the connection and wakes MHD on the next loop
 * iteration. No Lua runs inside an MHD callback.
 */
#ifndef SPGB_HTTP_H
#define SPGB_HTTP_H

#include <lua.h>

/* The module's C core, preloaded as "http.core"; its Lua half is lua/http.lua. */
int luaopen_http_core(lua_State *L);

#endif
