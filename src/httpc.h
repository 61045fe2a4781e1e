/*
 * httpc: the plain HTTP client for Lua scripts (module `httpc`, re-exported by the
 * `http` module as http.request).
 *
 * Provides: luaopen_httpc (httpc.request), a yielding request on the shared
 * libcurl multi. Uses: curlm (transfers on the libuv loop), sched (tasks).
 */
#ifndef SPGB_HTTPC_H
#define SPGB_HTTPC_H

#include <lua.h>

int luaopen_httpc(lua_State *L);

/* Push the response header lines in raw (as collected by curlm) as a table of
 * lowercased names to values (repeated headers joined with ", "). */
void spgb_httpc_push_headers(lua_State *L, const char *raw, size_t len);

#endif
