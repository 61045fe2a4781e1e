/*
 * log: logfmt lines on stderr ("ts=... level=... event=... msg=... k=v").
 * Provides the C API used by the core and the Lua module `log`.
 * Uses: Lua 5.4 for the module only.
 */
#ifndef SPGB_LOG_H
#define SPGB_LOG_H

#include <lua.h>

enum { SPGB_LOG_DEBUG, SPGB_LOG_INFO, SPGB_LOG_WARN, SPGB_LOG_ERROR };

void spgb_log_set_level(int level);
int spgb_log_level(void);
/* "debug" | "info" | "warn" | "error" -> level, or -1. */
int spgb_log_parse_level(const char *name);
/* Write one line: event and msg may be NULL; then key, value string pairs ending
 * with NULL. Values are quoted and escaped as logfmt requires. */
void spgb_log_write(int level, const char *event, const char *msg, ...);

/* The module's C core, preloaded as "log.core"; its Lua half is lua/log.lua. */
int luaopen_log_core(lua_State *L);

#endif
