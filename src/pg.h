/*
 * pg: PostgreSQL and PgBouncer admin-console clients on libpq's asynchronous API,
 * driven by the scheduler's libuv loop (no blocking libpq call anywhere, the connect
 * included).
 *
 * Provides: the Lua modules `pg` (connect, conn:query, conn:query_opts, conn:close)
 * and `pgbouncer` (connect, admin:pause/resume/reload/disable/enable/reconnect/kill/
 * show; written in Lua on top of `pg`), plus the two helpers below, public so the C
 * tests can check them without a server.
 * Uses: sched (pending-operation protocol), libuv (uv_poll on the libpq socket),
 * libpq, Lua 5.4.
 */
#ifndef SPGB_PG_H
#define SPGB_PG_H

#include <libpq-fe.h>
#include <lua.h>

/*
 * Build libpq keyword/value arrays from the conninfo at idx: a string (passed as
 * "dbname" with expand_dbname, so a URI or "key=value ..." both work) or a table of
 * keyword = string|number. Pushes one userdata that owns the arrays and anchors
 * their strings: they stay valid while it is on the stack. *keys and *vals are
 * NULL-terminated. Returns the expand_dbname flag (1 for a string, else 0).
 * Raises (naming `what`) on a bad type or a non-string keyword. Does not yield.
 */
int spgb_pg_conninfo(lua_State *L, int idx, const char *what, const char ***keys,
                     const char ***vals);

/*
 * Push the Lua value of result r (not freed: the caller keeps ownership, so a
 * memory error raised here leaks nothing as long as the caller still holds r):
 * for rows/commands a table {row, ...; command=, fields=, affected=} where each row
 * is keyed by column name (values are strings; SQL NULL leaves the key absent) and
 * returns 1; for an error, nil, "<what>: <message>", SQLSTATE (or "error") and
 * returns 3. r == NULL counts as an empty command.
 */
int spgb_pg_push_result(lua_State *L, const PGresult *r, const char *what);

int luaopen_pg(lua_State *L);

#endif
