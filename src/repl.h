/*
 * repl: the interactive Lua prompt (`stolon-pgbouncer repl`).
 * Uses: host, sched, libedit (line editing and history, only on a terminal).
 */
#ifndef SPGB_REPL_H
#define SPGB_REPL_H

#include <lua.h>

/* Read-eval-print until end of input. Each statement runs as a task, so async
 * primitives work at the prompt; Ctrl-C cancels the running statement. Returns the
 * process exit status (0). */
int spgb_repl(lua_State *L);

#endif
