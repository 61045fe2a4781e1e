#include "modules.h"

#include <lauxlib.h>
#include <stddef.h>

/* Weak: a unit not yet linked leaves its pointer NULL. */
#define SPGB_MOD(n) int luaopen_##n(lua_State *L) __attribute__((weak));
SPGB_MOD(task_core)
SPGB_MOD(log_core)
SPGB_MOD(proc_core)
SPGB_MOD(template)
SPGB_MOD(fs)
SPGB_MOD(etcd_core)
SPGB_MOD(pg)
SPGB_MOD(http_core)
SPGB_MOD(metrics_core)
SPGB_MOD(httpc)
SPGB_MOD(secure)
SPGB_MOD(notify)
#undef SPGB_MOD

const spgb_module *spgb_modules(void)
{
    static const spgb_module mods[] = {
        {"task.core", luaopen_task_core},
        {"log.core", luaopen_log_core},
        {"proc.core", luaopen_proc_core},
        {"template", luaopen_template},
        {"fs", luaopen_fs},
        {"etcd.core", luaopen_etcd_core},
        {"pg", luaopen_pg},
        {"http.core", luaopen_http_core},
        {"metrics.core", luaopen_metrics_core},
        {"httpc", luaopen_httpc},
        {"secure", luaopen_secure},
        {"notify", luaopen_notify},
        {NULL, NULL},
    };
    return mods;
}

void spgb_modules_preload(lua_State *L)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const spgb_module *m = spgb_modules(); m->name; m++) {
        if (!m->open)
            continue;
        lua_pushcfunction(L, m->open);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 1);
}
