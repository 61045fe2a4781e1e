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

#include "embedded.h"
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
               "  policy       list the shipped policies, or show one to start a site policy\n"
               "\n"
               "Each of the first five is a Lua policy; `--policy FILE` runs an edited copy\n"
               "(`stolon-pgbouncer policy show failover > site.lua` starts one).\n"
               "`stolon-pgbouncer COMMAND --help` lists a command's flags.\n"
               "Options: --debug (debug logging), --version, --help\n");
}

static int run_policy(lua_State *L, const char *cmd, int argc, char **argv)
{
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
    int code = file ? spgb_host_run_file(L, file, n, rest) : spgb_host_run_policy(L, cmd, n, rest);
    free(rest);
    return code;
}

/* policy list | policy show NAME: the shipped policies, to start a site policy from
 * (`stolon-pgbouncer policy show failover > site-failover.lua`). NAME is a command
 * (failover) or an example (examples/refuse-long-transactions). Shows the copy the
 * commands would run: $SPGB_LUA_DIR's when set, else the embedded one. */
static int policy_cmd(int argc, char **argv)
{
    if (argc == 1 && strcmp(argv[0], "list") == 0) {
        for (const spgb_embedded_file *f = spgb_embedded_files; f->path; f++) {
            size_t len = strlen(f->path);
            if (strncmp(f->path, "policies/", 9) == 0 && len > 13 &&
                strcmp(f->path + len - 4, ".lua") == 0)
                printf("%.*s\n", (int)(len - 13), f->path + 9);
        }
        return 0;
    }
    if (argc != 2 || strcmp(argv[0], "show") != 0) {
        fprintf(stderr, "usage: stolon-pgbouncer policy list | policy show NAME\n");
        return 2;
    }
    char rel[PATH_MAX];
    int n = snprintf(rel, sizeof rel, "policies/%s.lua", argv[1]);
    if (n < 0 || (size_t)n >= sizeof rel || strstr(argv[1], "..")) {
        fprintf(stderr, "stolon-pgbouncer: policy show: bad name %s\n", argv[1]);
        return 2;
    }
    char pathbuf[PATH_MAX * 2];
    const char *path = spgb_host_dir_file(rel, pathbuf, sizeof pathbuf);
    if (path) {
        FILE *f = fopen(path, "rb");
        if (!f) {
            fprintf(stderr, "stolon-pgbouncer: policy show: cannot open %s\n", path);
            return 1;
        }
        char buf[8192];
        size_t got;
        while ((got = fread(buf, 1, sizeof buf, f)) > 0)
            fwrite(buf, 1, got, stdout);
        int bad = ferror(f);
        fclose(f);
        if (bad) {
            fprintf(stderr, "stolon-pgbouncer: policy show: cannot read %s\n", path);
            return 1;
        }
        return fflush(stdout) == 0 ? 0 : 1;
    }
    const spgb_embedded_file *e = spgb_embedded_find(rel);
    if (!e) {
        fprintf(stderr, "stolon-pgbouncer: no policy %s (see `stolon-pgbouncer policy list`)\n",
                argv[1]);
        return 1;
    }
    fwrite(e->data, 1, e->len, stdout);
    return fflush(stdout) == 0 ? 0 : 1;
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
    if (strcmp(cmd, "policy") == 0)
        return policy_cmd(argc - i, argv + i);
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
