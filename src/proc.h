/*
 * proc: child processes on the libuv loop (the supervised PgBouncer, test servers,
 * `with-lock` commands). Never through a shell: argv is passed as is.
 * Provides the Lua module `proc`. Uses: sched, libuv.
 */
#ifndef SPGB_PROC_H
#define SPGB_PROC_H

#include <lua.h>

/* The module's C core, preloaded as "proc.core"; its Lua half is lua/proc.lua. */
int luaopen_proc_core(lua_State *L);

#endif
