/* Tests for the parts of pg that need no server: conninfo building and the
 * conversion of a PGresult into Lua values. The busted specs (tests/lua/pg_spec.lua,
 * pgbouncer_spec.lua) cover the rest against real servers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

#include "pg.h"

static int setup(void **state)
{
    lua_State *L = luaL_newstate();
    if (!L)
        return -1;
    luaL_openlibs(L);
    *state = L;
    return 0;
}

static int teardown(void **state)
{
    lua_close(*state);
    return 0;
}

static const char *lookup(const char **keys, const char **vals, const char *k)
{
    for (int i = 0; keys[i]; i++)
        if (strcmp(keys[i], k) == 0)
            return vals[i];
    return NULL;
}

static void test_conninfo_string(void **state)
{
    lua_State *L = *state;
    lua_pushliteral(L, "host=127.0.0.1 port=5432");
    const char **keys, **vals;
    int expand = spgb_pg_conninfo(L, 1, "t", &keys, &vals);
    assert_int_equal(expand, 1);
    assert_string_equal(keys[0], "dbname");
    assert_string_equal(vals[0], "host=127.0.0.1 port=5432");
    assert_null(keys[1]);
    assert_null(vals[1]);
    assert_int_equal(lua_gettop(L), 2);
    lua_settop(L, 0);
}

static void test_conninfo_table(void **state)
{
    lua_State *L = *state;
    assert_int_equal(luaL_dostring(L, "return {host='127.0.0.1', port=6432, "
                                      "user='pgbouncer', dbname='pgbouncer'}"),
                     LUA_OK);
    const char **keys, **vals;
    int expand = spgb_pg_conninfo(L, 1, "t", &keys, &vals);
    assert_int_equal(expand, 0);
    int n = 0;
    while (keys[n])
        n++;
    assert_int_equal(n, 4);
    assert_null(vals[4]);
    assert_string_equal(lookup(keys, vals, "host"), "127.0.0.1");
    assert_string_equal(lookup(keys, vals, "port"), "6432"); /* numbers become strings */
    assert_string_equal(lookup(keys, vals, "user"), "pgbouncer");
    /* The table itself is unchanged: the number stayed a number. */
    lua_getfield(L, 1, "port");
    assert_true(lua_isinteger(L, -1));
    /* The strings survive a full collection while the userdata is on the stack. */
    lua_pushnil(L);
    lua_setfield(L, 1, "host");
    lua_gc(L, LUA_GCCOLLECT);
    assert_string_equal(lookup(keys, vals, "host"), "127.0.0.1");
    lua_settop(L, 0);
}

static int conninfo_bad(lua_State *L)
{
    const char **keys, **vals;
    spgb_pg_conninfo(L, 1, "pg.connect", &keys, &vals);
    return 0;
}

static void expect_raise(lua_State *L, const char *code, const char *fragment)
{
    lua_pushcfunction(L, conninfo_bad);
    assert_int_equal(luaL_dostring(L, code), LUA_OK);
    assert_int_not_equal(lua_pcall(L, 1, 0, 0), LUA_OK);
    assert_non_null(strstr(lua_tostring(L, -1), fragment));
    lua_settop(L, 0);
}

static void test_conninfo_errors(void **state)
{
    lua_State *L = *state;
    expect_raise(L, "return 42", "pg.connect: conninfo must be a string or a table");
    expect_raise(L, "return {host={}}", "conninfo.host must be a string or a number");
    expect_raise(L, "return {'x'}", "conninfo keys must be strings");
}

/* A result with columns a (text) and b, rows given as strings (NULL: SQL NULL). */
static PGresult *make_rows(int nrows, const char *const *cells)
{
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    assert_non_null(r);
    PGresAttDesc attrs[2];
    memset(attrs, 0, sizeof attrs);
    attrs[0].name = "a";
    attrs[0].typid = 25;
    attrs[0].typlen = -1;
    attrs[0].atttypmod = -1;
    attrs[1] = attrs[0];
    attrs[1].name = "b";
    assert_int_equal(PQsetResultAttrs(r, 2, attrs), 1);
    for (int i = 0; i < nrows; i++)
        for (int j = 0; j < 2; j++) {
            const char *v = cells[i * 2 + j];
            assert_int_equal(PQsetvalue(r, i, j, (char *)v, v ? (int)strlen(v) : -1), 1);
        }
    return r;
}

static void test_push_rows(void **state)
{
    lua_State *L = *state;
    const char *cells[] = {"1", "x", "2", NULL, "", "y"};
    PGresult *r = make_rows(3, cells);
    assert_int_equal(spgb_pg_push_result(L, r, "t"), 1);
    PQclear(r);
    lua_setglobal(L, "rows");
    assert_int_equal(luaL_dostring(L, "return #rows, rows[1].a, rows[1].b, rows[2].b == nil, "
                                      "rows[3].a, table.concat(rows.fields, ','), rows.affected"),
                     LUA_OK);
    assert_int_equal(lua_tointeger(L, 1), 3);
    assert_string_equal(lua_tostring(L, 2), "1");
    assert_string_equal(lua_tostring(L, 3), "x");
    assert_true(lua_toboolean(L, 4));
    assert_string_equal(lua_tostring(L, 5), "");
    assert_string_equal(lua_tostring(L, 6), "a,b");
    assert_true(lua_isnil(L, 7)); /* a made result has no command tag */
    lua_settop(L, 0);
}

static void test_push_binary_safe(void **state)
{
    lua_State *L = *state;
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    PGresAttDesc a;
    memset(&a, 0, sizeof a);
    a.name = "v";
    a.typlen = -1;
    a.atttypmod = -1;
    assert_int_equal(PQsetResultAttrs(r, 1, &a), 1);
    assert_int_equal(PQsetvalue(r, 0, 0, "a\0b", 3), 1);
    assert_int_equal(spgb_pg_push_result(L, r, "t"), 1);
    PQclear(r);
    lua_rawgeti(L, -1, 1);
    lua_getfield(L, -1, "v");
    size_t len;
    lua_tolstring(L, -1, &len);
    assert_int_equal(len, 3);
    lua_settop(L, 0);
}

static void test_push_empty_and_null(void **state)
{
    lua_State *L = *state;
    assert_int_equal(spgb_pg_push_result(L, NULL, "t"), 1);
    assert_int_equal(lua_rawlen(L, -1), 0);
    lua_getfield(L, -1, "command");
    assert_string_equal(lua_tostring(L, -1), "");
    lua_settop(L, 0);
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_COMMAND_OK);
    assert_int_equal(spgb_pg_push_result(L, r, "t"), 1);
    PQclear(r);
    lua_getfield(L, -1, "fields");
    assert_int_equal(lua_rawlen(L, -1), 0);
    lua_settop(L, 0);
}

static void test_push_error(void **state)
{
    lua_State *L = *state;
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
    assert_int_equal(spgb_pg_push_result(L, r, "pg.query"), 3);
    PQclear(r);
    assert_true(lua_isnil(L, 1));
    assert_string_equal(lua_tostring(L, 2), "pg.query: unknown error");
    assert_string_equal(lua_tostring(L, 3), "error"); /* no SQLSTATE in a made result */
    lua_settop(L, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_conninfo_string, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conninfo_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conninfo_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_binary_safe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_empty_and_null, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_error, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
