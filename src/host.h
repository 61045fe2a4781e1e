/*
 * host: the Lua state, module preloading, where the Lua files live, running a
 * script as the root task, and reporting its failure with a traceback.
 * Uses: sched, modules, log, Lua 5.4.
 */
#ifndef SPGB_HOST_H
#define SPGB_HOST_H

#include <lua.h>

/* New Lua state with the standard libraries, the scheduler, every module in
 * package.preload and package.path pointing at <luadir>/lua. NULL on failure
 * (message printed). */
lua_State *spgb_host_new(void);
/* Cancel what runs, close the state and the loop. */
void spgb_host_close(lua_State *L);
/* The folder holding lua/ and policies/: $SPGB_LUA_DIR, else <exe>/../share/
 * stolon-pgbouncer, else the compiled-in data dir, else the executable's folder. */
const char *spgb_host_luadir(void);
/* Run path as the root task with arg = {[0]=path, argv...}. Returns the exit
 * status: 0 when it returns (or the integer it returns), 1 with a message and
 * traceback on stderr when it raises or cannot be loaded. */
int spgb_host_run_file(lua_State *L, const char *path, int argc, char **argv);
/* Print the error value at the top of L (with traceback) prefixed by the program
 * name, to stderr. */
void spgb_host_report(lua_State *L, const char *msg, const char *traceback);

#endif
