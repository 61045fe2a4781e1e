#include "host.h"

#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "modules.h"
#include "notify.h"
#include "sched.h"

#ifndef SPGB_DATADIR
#define SPGB_DATADIR "/usr/local/share/stolon-pgbouncer"
#endif

static char luadir[PATH_MAX];

static int has_lua_dir(const char *dir)
{
    char p[PATH_MAX * 2 + 16];
    struct stat st;
    snprintf(p, sizeof p, "%s/lua", dir);
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *spgb_host_luadir(void)
{
    if (luadir[0])
        return luadir;
    const char *env = getenv("SPGB_LUA_DIR");
    if (env && *env) {
        snprintf(luadir, sizeof luadir, "%s", env);
        return luadir;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            char cand[PATH_MAX * 2];
            snprintf(cand, sizeof cand, "%s/../share/stolon-pgbouncer", exe);
            if (has_lua_dir(cand) && realpath(cand, luadir))
                return luadir;
            if (has_lua_dir(SPGB_DATADIR)) {
                snprintf(luadir, sizeof luadir, "%s", SPGB_DATADIR);
                return luadir;
            }
            if (has_lua_dir(exe)) {
                snprintf(luadir, sizeof luadir, "%s", exe);
                return luadir;
            }
        }
    }
    snprintf(luadir, sizeof luadir, "%s", SPGB_DATADIR);
    return luadir;
}

/* Daemons hold a socket per client (the pauser's HTTP server, supervise's etcd
 * watch, child pipes): raise the soft descriptor limit to the hard one (capped),
 * as servers do, instead of failing at 1024 under a connection flood. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = rl.rlim_max == RLIM_INFINITY ? 65536 : rl.rlim_max;
    if (want > 65536)
        want = 65536;
    if (rl.rlim_cur >= want)
        return;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        fprintf(stderr, "stolon-pgbouncer: cannot raise the descriptor limit (keeping the "
                        "current one)\n");
}

lua_State *spgb_host_new(void)
{
    raise_fd_limit();
    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "stolon-pgbouncer: cannot create the Lua state (out of memory)\n");
        return NULL;
    }
    spgb_notify_init(); /* before any script can start a child */
    luaL_openlibs(L);
    int rc = spgb_sched_init(L);
    if (rc != 0) {
        fprintf(stderr, "stolon-pgbouncer: scheduler: %s\n", uv_strerror(rc));
        lua_close(L);
        return NULL;
    }
    spgb_modules_preload(L);
    const char *dir = spgb_host_luadir();
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 1);
    lua_pushstring(L, dir);
    lua_setfield(L, -2, "spgb_dir"); /* package.spgb_dir: where lua/ and policies/ are */
    lua_pop(L, 1);
    return L;
}

void spgb_host_close(lua_State *L)
{
    spgb_sched_shutdown(L);
    lua_close(L);
    spgb_sched_close_loop();
}

void spgb_host_report(lua_State *L, const char *msg, const char *traceback)
{
    (void)L;
    fflush(stdout);
    if (traceback && *traceback)
        fprintf(stderr, "stolon-pgbouncer: %s\n", traceback);
    else
        fprintf(stderr, "stolon-pgbouncer: %s\n", msg ? msg : "(error)");
    fflush(stderr);
}

int spgb_host_run_file(lua_State *L, const char *path, int argc, char **argv)
{
    /* arg as lua(1) builds it: arg[0] the script, arg[1..] its arguments. */
    lua_createtable(L, argc, 1);
    lua_pushstring(L, path);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");

    int st = luaL_loadfilex(L, path, "t");
    if (st != LUA_OK) {
        spgb_host_report(L, lua_tostring(L, -1), NULL);
        lua_pop(L, 1);
        return 1;
    }
    luaL_checkstack(L, argc + 2, "arguments");
    for (int i = 0; i < argc; i++)
        lua_pushstring(L, argv[i]);
    spgb_task *t = spgb_task_spawn(L, argc, "main");
    spgb_task_set_root(t);
    int hidx = lua_gettop(L);
    if (spgb_sched_run_until(t) != 0) {
        lua_settop(L, hidx - 1);
        return 1;
    }
    spgb_task_push_result(L, hidx);
    int code = 0;
    lua_getfield(L, -1, "ok");
    int ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_rawgeti(L, -1, 1);
    if (ok) {
        if (lua_isinteger(L, -1))
            code = (int)lua_tointeger(L, -1);
        else if (lua_isboolean(L, -1))
            code = lua_toboolean(L, -1) ? 0 : 1;
    } else {
        const char *msg = luaL_tolstring(L, -1, NULL);
        lua_getfield(L, -3, "traceback");
        spgb_host_report(L, msg, lua_tostring(L, -1));
        lua_pop(L, 2);
        code = 1;
    }
    lua_settop(L, hidx - 1);
    return code;
}
