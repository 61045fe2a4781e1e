/*
 * pause_baseline: the baseline for bench/pgbouncer_pause.lua. PAUSE+RESUME round
 * trips on one PgBouncer admin connection with plain blocking libpq (PQexec), the
 * least any client can do.
 *
 * usage: pause_baseline CONNINFO N
 * Prints N lines, each one round trip's time in microseconds. Exit 1 on any error.
 */
#define _POSIX_C_SOURCE 200809L
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "pause_baseline: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    return ok;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: pause_baseline CONNINFO N\n");
        return 2;
    }
    long n = strtol(argv[2], NULL, 10);
    if (n <= 0 || n > 10000000) {
        fprintf(stderr, "pause_baseline: bad N\n");
        return 2;
    }
    PGconn *c = PQconnectdb(argv[1]);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "pause_baseline: connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return 1;
    }
    double *t = malloc(sizeof *t * (size_t)n);
    if (!t) {
        PQfinish(c);
        return 1;
    }
    for (long i = 0; i < n; i++) {
        double t0 = now_us();
        if (!exec_ok(c, "PAUSE") || !exec_ok(c, "RESUME")) {
            free(t);
            PQfinish(c);
            return 1;
        }
        t[i] = now_us() - t0;
    }
    for (long i = 0; i < n; i++)
        printf("%.1f\n", t[i]);
    free(t);
    PQfinish(c);
    return 0;
}
