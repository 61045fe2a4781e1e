/*
 * main: the command line. Every command but `repl` runs a Lua script as the root
 * task: `run FILE`, or the shipped policy policies/<command>.lua (overridable with
 * --policy FILE).
 */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "log.h"
#include "repl.h"

#ifndef SPGB_VERSION
#define SPGB_VERSION "0.0.0"
#endif

static const char *policies[] = {"supervise", "pauser", "failover", "status", "with-lock", NULL};

static void usage(FILE *f)
{
    fprintf(f, "usage: stolon-pgbouncer [--debug] COMMAND [ARGS...]\n"
               "\n"
               "PgBouncer integration and zero-downtime failover for stolon clusters.\n"
               "\n"
               "Commands:\n"
               "  supervise    manage a PgBouncer pointed at the current stolon primary\n"
               "  pauser       serve the HTTP API that pauses/resumes the local PgBouncer\n"
               "  failover     run a zero-downtime failover of the primary\n"
               "  status       show every keeper's pauser health\n"
               "  with-lock    run a command while holding the failover lock\n"
               "  run FILE     run a Lua script with every primitive available\n"
               "  repl         interactive Lua prompt with every primitive loaded\n"
               "\n"
               "Each of the first five is a Lua policy; `--policy FILE` runs an edited copy.\n"
               "`stolon-pgbouncer COMMAND --help` lists a command's flags.\n"
               "Options: --debug (debug logging), --version, --help\n");
}

static int run_policy(lua_State *L, const char *cmd, int argc, char **argv)
{
    char path[PATH_MAX];
    const char *file = NULL;
    /* --policy FILE / --policy=FILE is consumed here; everything else goes to the
     * script, which parses its own flags. */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) {
        fprintf(stderr, "stolon-pgbouncer: out of memory\n");
        return 1;
    }
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--policy") == 0 && i + 1 < argc) {
            file = argv[++i];
        } else if (strncmp(argv[i], "--policy=", 9) == 0) {
            file = argv[i] + 9;
        } else {
            rest[n++] = argv[i];
        }
    }
    if (!file) {
        snprintf(path, sizeof path, "%s/policies/%s.lua", spgb_host_luadir(), cmd);
        file = path;
    }
    int code = spgb_host_run_file(L, file, n, rest);
    free(rest);
    return code;
}

int main(int argc, char **argv)
{
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-v") == 0) {
            printf("stolon-pgbouncer %s (%s)\n", SPGB_VERSION, LUA_RELEASE);
            return 0;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--debug") == 0) {
            spgb_log_set_level(SPGB_LOG_DEBUG);
        } else {
            fprintf(stderr, "stolon-pgbouncer: unknown option %s\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i++];
    int is_policy = 0;
    for (const char **p = policies; *p; p++)
        if (strcmp(*p, cmd) == 0)
            is_policy = 1;
    if (strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (!is_policy && strcmp(cmd, "run") != 0 && strcmp(cmd, "repl") != 0) {
        fprintf(stderr, "stolon-pgbouncer: unknown command \"%s\"\n\n", cmd);
        usage(stderr);
        return 2;
    }
    if (strcmp(cmd, "run") == 0 && i >= argc) {
        fprintf(stderr, "stolon-pgbouncer: run needs a script: run FILE [ARGS...]\n");
        return 2;
    }

    /* A write to a pipe or socket whose reader is gone (a child that exits without
     * reading its stdin, a closed stderr, a peer that hung up) fails with EPIPE where
     * it is made instead of killing us. Children still start with the default: libuv
     * resets every signal's disposition in the child before exec. */
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    if (sigaction(SIGPIPE, &ign, NULL) != 0) {
        perror("stolon-pgbouncer: sigaction(SIGPIPE)");
        return 1;
    }

    lua_State *L = spgb_host_new();
    if (!L)
        return 1;
    int code;
    if (strcmp(cmd, "run") == 0)
        code = spgb_host_run_file(L, argv[i], argc - i - 1, argv + i + 1);
    else if (strcmp(cmd, "repl") == 0)
        code = spgb_repl(L);
    else
        code = run_policy(L, cmd, argc - i, argv + i);
    spgb_host_close(L);
    return code;
}
