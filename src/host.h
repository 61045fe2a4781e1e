/*
 * host: the Lua state, module preloading, where the Lua files live, running a
 * script as the root task, and reporting its failure with a traceback.
 * Uses: sched, modules, log, Lua 5.4.
 */
#ifndef SPGB_HOST_H
#define SPGB_HOST_H

#include <lua.h>

/* New Lua state with the standard libraries, the scheduler, every C module in
 * package.preload and a searcher for our Lua modules (see spgb_host_load). NULL on
 * failure (message printed). */
lua_State *spgb_host_new(void);
/* Cancel what runs, close the state and the loop. */
void spgb_host_close(lua_State *L);
/* $SPGB_LUA_DIR (a checkout's lua/ and policies/, for development), or NULL: the
 * embedded copy is used. */
const char *spgb_host_luadir(void);
/* Load a project file, rel being "lua/etcd.lua" or "policies/failover.lua": from
 * $SPGB_LUA_DIR when set and the file is there (chunk name: its path), else from
 * the embedded copy (chunk name: rel, so tracebacks read lua/etcd.lua:123). Returns
 * 1 with the chunk pushed, 0 (nothing pushed) when there is no such file, -1 with
 * the error message pushed when it does not compile. Does not yield. */
int spgb_host_load(lua_State *L, const char *rel);
/* The path of rel in $SPGB_LUA_DIR (written into buf) when that is set and the file
 * exists there, else NULL: the embedded copy applies. The one place that decides
 * which copy of a project file is used (spgb_host_load, `policy show`). */
const char *spgb_host_dir_file(const char *rel, char *buf, size_t size);
/* Run policies/<name>.lua (found by spgb_host_load) as spgb_host_run_file does,
 * with arg[0] = "policies/<name>.lua". */
int spgb_host_run_policy(lua_State *L, const char *name, int argc, char **argv);
/* Run path as the root task with arg = {[0]=path, argv...}. Returns the exit
 * status: 0 when it returns (or the integer it returns), 1 with a message and
 * traceback on stderr when it raises or cannot be loaded. */
int spgb_host_run_file(lua_State *L, const char *path, int argc, char **argv);
/* Print the error value at the top of L (with traceback) prefixed by the program
 * name, to stderr. */
void spgb_host_report(lua_State *L, const char *msg, const char *traceback);

#endif
