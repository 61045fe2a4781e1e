/*
 * modules: the table of Lua modules the host preloads (package.preload[name]).
 * Uses: every unit that provides a luaopen_<name> function.
 *
 * Units that are optional at link time are declared weak here, so a module list
 * entry does not break the build while that unit is being written; a missing unit
 * simply is not preloaded.
 */
#ifndef SPGB_MODULES_H
#define SPGB_MODULES_H

#include <lua.h>

typedef struct {
    const char *name;
    lua_CFunction open;
} spgb_module;

/* NULL-terminated; entries whose open is NULL are skipped. */
const spgb_module *spgb_modules(void);
/* Put every module into package.preload. */
void spgb_modules_preload(lua_State *L);

#endif
