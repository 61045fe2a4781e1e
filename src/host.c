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

#include "embedded.h"
#include "log.h"
#include "modules.h"
#include "notify.h"
#include "sched.h"

static char luadir[PATH_MAX];
static char exedir[PATH_MAX];

const char *spgb_host_luadir(void)
{
    if (luadir[0])
        return luadir;
    const char *env = getenv("SPGB_LUA_DIR");
    if (!env || !*env)
        return NULL;
    int n = snprintf(luadir, sizeof luadir, "%s", env);
    if (n < 0 || (size_t)n >= sizeof luadir) {
        luadir[0] = 0;
        return NULL;
    }
    return luadir;
}

/* The folder of our own executable (for scripts that start it again), "" when
 * /proc/self/exe cannot be read. */
static const char *exe_dir(void)
{
    if (exedir[0])
        return exedir;
    ssize_t n = readlink("/proc/self/exe", exedir, sizeof exedir - 1);
    if (n <= 0) {
        exedir[0] = 0;
        return exedir;
    }
    exedir[n] = 0;
    char *slash = strrchr(exedir, '/');
    if (slash)
        *slash = 0;
    return exedir;
}

const spgb_embedded_file *spgb_embedded_find(const char *path)
{
    for (const spgb_embedded_file *f = spgb_embedded_files; f->path; f++)
        if (strcmp(f->path, path) == 0)
            return f;
    return NULL;
}

const char *spgb_host_dir_file(const char *rel, char *buf, size_t size)
{
    const char *dir = spgb_host_luadir();
    if (!dir)
        return NULL;
    int n = snprintf(buf, size, "%s/%s", dir, rel);
    if (n <= 0 || (size_t)n >= size || access(buf, F_OK) != 0)
        return NULL;
    return buf;
}

int spgb_host_load(lua_State *L, const char *rel)
{
    char buf[PATH_MAX * 2];
    const char *path = spgb_host_dir_file(rel, buf, sizeof buf);
    if (path) {
        int st = luaL_loadfilex(L, path, "t");
        return st == LUA_OK ? 1 : -1;
    }
    const spgb_embedded_file *f = spgb_embedded_find(rel);
    if (!f)
        return 0;
    lua_pushfstring(L, "@%s", rel);
    int st = luaL_loadbufferx(L, f->data, f->len, lua_tostring(L, -1), "t");
    lua_remove(L, -2);
    return st == LUA_OK ? 1 : -1;
}

/* package.searchers entry, right after preload: module a.b is lua/a/b.lua or
 * lua/a/b/init.lua, from $SPGB_LUA_DIR when set and the file is there, else from
 * the embedded copy. Anything else (busted, cjson) falls through to Lua's own
 * path searchers. */
static int searcher(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (const char *p = name; *p; p++)
        luaL_addchar(&b, *p == '.' ? '/' : *p);
    luaL_pushresult(&b);
    const char *mod = lua_tostring(L, -1);
    static const char *forms[] = {"lua/%s.lua", "lua/%s/init.lua", NULL};
    for (const char **fmt = forms; *fmt; fmt++) {
        lua_pushfstring(L, *fmt, mod);
        const char *rel = lua_tostring(L, -1);
        int rc = spgb_host_load(L, rel);
        if (rc < 0)
            return luaL_error(L, "error loading module '%s':\n\t%s", name, lua_tostring(L, -1));
        if (rc > 0) {
            lua_insert(L, -2); /* chunk, rel: the loader and its extra value */
            return 2;
        }
        lua_pop(L, 1);
    }
    lua_pushfstring(L, "no file 'lua/%s.lua' in %s the embedded copy", mod,
                    spgb_host_luadir() ? "$SPGB_LUA_DIR or" : "");
    return 1;
}

static void install_searcher(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "searchers");
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = n; i >= 2; i--) { /* make room at 2 */
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushcfunction(L, searcher);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 1);
    /* package.spgb_dir: the checkout in development, else our executable's folder
     * (scripts that start our binary again look for it there). */
    const char *dir = spgb_host_luadir();
    lua_pushstring(L, dir ? dir : exe_dir());
    lua_setfield(L, -2, "spgb_dir");
    lua_pop(L, 1);
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
    install_searcher(L);
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

/* Run the chunk on top of L as the root task with arg = {[0]=name, argv...}. */
static int run_chunk(lua_State *L, const char *name, int argc, char **argv)
{
    /* arg as lua(1) builds it: arg[0] the script, arg[1..] its arguments. */
    lua_createtable(L, argc, 1);
    lua_pushstring(L, name);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");

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

int spgb_host_run_file(lua_State *L, const char *path, int argc, char **argv)
{
    if (luaL_loadfilex(L, path, "t") != LUA_OK) {
        spgb_host_report(L, lua_tostring(L, -1), NULL);
        lua_pop(L, 1);
        return 1;
    }
    return run_chunk(L, path, argc, argv);
}

int spgb_host_run_policy(lua_State *L, const char *name, int argc, char **argv)
{
    char rel[256];
    int n = snprintf(rel, sizeof rel, "policies/%s.lua", name);
    if (n < 0 || (size_t)n >= sizeof rel) {
        fprintf(stderr, "stolon-pgbouncer: policy name too long: %s\n", name);
        return 1;
    }
    int rc = spgb_host_load(L, rel);
    if (rc <= 0) {
        spgb_host_report(L, rc < 0 ? lua_tostring(L, -1) : "no such policy", NULL);
        if (rc < 0)
            lua_pop(L, 1);
        return 1;
    }
    return run_chunk(L, rel, argc, argv);
}
