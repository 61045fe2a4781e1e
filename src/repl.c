#include "repl.h"

#include <editline/readline.h>
#include <errno.h>
#include <lauxlib.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host.h"
#include "sched.h"

static spgb_task *running;
static volatile sig_atomic_t interrupted;

static void on_sigint(uv_signal_t *h, int signum)
{
    (void)h;
    (void)signum;
    if (running)
        spgb_task_cancel(running);
}

/* While the prompt waits for a line, Ctrl-C only abandons that line. */
static void prompt_sigint(int signum)
{
    (void)signum;
    interrupted = 1;
}

static char *read_line(bool tty, const char *prompt)
{
    if (tty) {
        struct sigaction sa, old;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = prompt_sigint;
        sigaction(SIGINT, &sa, &old);
        char *line = readline(prompt);
        sigaction(SIGINT, &old, NULL);
        return line;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return NULL;
    }
    if (n > 0 && line[n - 1] == '\n')
        line[n - 1] = 0;
    return line;
}

/* Incomplete input (as lua.c decides): the syntax error is at <eof>. */
static bool incomplete(lua_State *L, int status)
{
    if (status != LUA_ERRSYNTAX)
        return false;
    size_t lmsg;
    const char *msg = lua_tolstring(L, -1, &lmsg);
    return lmsg >= 5 && strcmp(msg + lmsg - 5, "<eof>") == 0;
}

/* Compile buf as an expression ("return buf") first, then as a statement. Leaves
 * the chunk or the error message on the stack. */
static int compile(lua_State *L, const char *buf)
{
    lua_pushfstring(L, "return %s;", buf);
    int st = luaL_loadbuffer(L, lua_tostring(L, -1), lua_rawlen(L, -1), "=stdin");
    lua_remove(L, -2);
    if (st == LUA_OK)
        return st;
    lua_pop(L, 1);
    return luaL_loadbuffer(L, buf, strlen(buf), "=stdin");
}

/* The pretty printer lives in lua/pretty.lua; fall back to tostring. A string result
 * prints as its text, as lua.c's print does (a multi-line error message stays
 * readable); strings inside tables are quoted by the printer. */
static void print_results(lua_State *L, int base, int n)
{
    if (n <= 0)
        return;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "pretty");
    int have = lua_pcall(L, 1, 1, 0) == LUA_OK;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, base, i);
        bool is_string = lua_type(L, -1) == LUA_TSTRING;
        lua_pop(L, 1);
        if (is_string) {
            lua_rawgeti(L, base, i);
        } else if (have) {
            lua_getfield(L, -1, "format");
            lua_rawgeti(L, base, i);
            if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
                lua_pop(L, 1);
                lua_rawgeti(L, base, i);
                luaL_tolstring(L, -1, NULL);
                lua_remove(L, -2);
            }
        } else {
            lua_rawgeti(L, base, i);
            luaL_tolstring(L, -1, NULL);
            lua_remove(L, -2);
        }
        fputs(lua_tostring(L, -1), stdout);
        fputs(i < n ? "\t" : "\n", stdout);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    fflush(stdout);
}

static void run_statement(lua_State *L)
{
    spgb_task *t = spgb_task_spawn(L, 0, "repl");
    spgb_task_observe(t); /* its error is printed below, once */
    int hidx = lua_gettop(L);
    running = t;
    if (spgb_sched_run_until(t) != 0) {
        running = NULL;
        lua_settop(L, hidx - 1);
        return;
    }
    running = NULL;
    spgb_task_push_result(L, hidx);
    int res = lua_gettop(L);
    lua_getfield(L, res, "ok");
    bool ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (ok) {
        lua_getfield(L, res, "n");
        int n = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        print_results(L, res, n);
    } else {
        lua_rawgeti(L, res, 1);
        const char *msg = luaL_tolstring(L, -1, NULL);
        if (strcmp(msg, "cancelled") == 0) {
            fprintf(stderr, "(interrupted)\n");
        } else {
            lua_getfield(L, res, "traceback");
            fprintf(stderr, "%s\n", lua_isstring(L, -1) ? lua_tostring(L, -1) : msg);
            lua_pop(L, 1);
        }
        lua_pop(L, 2);
    }
    lua_settop(L, hidx - 1);
}

static void load_globals(lua_State *L)
{
    static const char *mods[] = {"task", "log",       "proc", "template", "fs",   "etcd",
                                 "pg",   "pgbouncer", "http", "metrics",  "json", NULL};
    for (const char **m = mods; *m; m++) {
        lua_getglobal(L, "require");
        lua_pushstring(L, strcmp(*m, "json") == 0 ? "cjson" : *m);
        if (lua_pcall(L, 1, 1, 0) == LUA_OK)
            lua_setglobal(L, *m);
        else
            lua_pop(L, 1);
    }
}

int spgb_repl(lua_State *L)
{
    bool tty = isatty(0) && isatty(1);
    char hist[4096] = "";
    const char *home = getenv("HOME");
    const char *hf = getenv("STOLON_PGBOUNCER_HISTORY");
    if (hf)
        snprintf(hist, sizeof hist, "%s", hf);
    else if (home)
        snprintf(hist, sizeof hist, "%s/.stolon-pgbouncer_history", home);
    if (tty) {
        using_history();
        if (hist[0])
            read_history(hist);
        printf("stolon-pgbouncer repl (%s): every primitive is loaded; Ctrl-C cancels a "
               "statement, Ctrl-D exits\n",
               LUA_RELEASE);
    }
    load_globals(L);

    uv_signal_t sig;
    int rc = uv_signal_init(spgb_loop(), &sig);
    if (rc != 0) {
        fprintf(stderr, "stolon-pgbouncer: repl: %s\n", uv_strerror(rc));
        return 1;
    }

    char *buf = NULL;
    for (;;) {
        interrupted = 0;
        char *line = read_line(tty, buf ? ">> " : "> ");
        if (!line) {
            if (tty && interrupted) {
                free(buf);
                buf = NULL;
                printf("\n");
                continue;
            }
            break;
        }
        if (interrupted) { /* Ctrl-C at the prompt: drop the pending input */
            free(line);
            free(buf);
            buf = NULL;
            continue;
        }
        char *joined;
        if (buf) {
            size_t n = strlen(buf) + strlen(line) + 2;
            joined = malloc(n);
            if (joined)
                snprintf(joined, n, "%s\n%s", buf, line);
            free(buf);
        } else {
            joined = strdup(line);
        }
        free(line);
        buf = NULL;
        if (!joined) {
            fprintf(stderr, "stolon-pgbouncer: out of memory\n");
            break;
        }
        if (joined[strspn(joined, " \t")] == 0) {
            free(joined);
            continue;
        }
        int st = compile(L, joined);
        if (incomplete(L, st)) {
            lua_pop(L, 1);
            buf = joined;
            continue;
        }
        if (tty)
            add_history(joined);
        free(joined);
        if (st != LUA_OK) {
            fprintf(stderr, "%s\n", lua_tostring(L, -1));
            lua_pop(L, 1);
            continue;
        }
        rc = uv_signal_start(&sig, on_sigint, SIGINT);
        if (rc != 0)
            fprintf(stderr, "stolon-pgbouncer: repl: %s\n", uv_strerror(rc));
        run_statement(L);
        uv_signal_stop(&sig);
    }
    free(buf);
    if (tty) {
        printf("\n");
        if (hist[0])
            write_history(hist);
    }
    uv_close((uv_handle_t *)&sig, NULL);
    return 0;
}
