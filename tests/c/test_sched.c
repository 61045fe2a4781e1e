/* The scheduler's run queue and pending-operation protocol, without any server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <lauxlib.h>
#include <string.h>

#include "host.h"
#include "sched.h"

typedef struct {
    spgb_op op;
    int pushed;
    int cancelled;
} test_op;

static test_op the_op;

/* Fault injection: this program's uv_timer_init and uv_timer_start replace libuv's
 * (the executable's definition wins) and fail once when asked, as an allocation or
 * libuv failure would. */
static int fail_timer_init, fail_timer_start;

int uv_timer_init(uv_loop_t *loop, uv_timer_t *h)
{
    if (fail_timer_init) {
        fail_timer_init = 0;
        return UV_ENOMEM;
    }
    int (*real)(uv_loop_t *, uv_timer_t *) =
        (int (*)(uv_loop_t *, uv_timer_t *))dlsym(RTLD_NEXT, "uv_timer_init");
    return real(loop, h);
}

int uv_timer_start(uv_timer_t *h, uv_timer_cb cb, uint64_t timeout, uint64_t repeat)
{
    if (fail_timer_start) {
        fail_timer_start = 0;
        return UV_EINVAL;
    }
    int (*real)(uv_timer_t *, uv_timer_cb, uint64_t, uint64_t) =
        (int (*)(uv_timer_t *, uv_timer_cb, uint64_t, uint64_t))dlsym(RTLD_NEXT, "uv_timer_start");
    return real(h, cb, timeout, repeat);
}

static int op_push(lua_State *L, spgb_op *op)
{
    test_op *t = (test_op *)op;
    t->pushed++;
    lua_pushliteral(L, "done");
    lua_pushinteger(L, 42);
    return 2;
}

static void op_cancel(spgb_op *op)
{
    ((test_op *)op)->cancelled++;
}

/* wait_op([timeout]): a primitive whose completion the test drives from C. */
static int l_wait_op(lua_State *L)
{
    double timeout = luaL_optnumber(L, 1, 0);
    memset(&the_op, 0, sizeof the_op);
    the_op.op.name = "wait_op";
    the_op.op.push = op_push;
    the_op.op.cancel = op_cancel;
    return spgb_op_wait(L, &the_op.op, timeout);
}

static int setup(void **state)
{
    lua_State *L = spgb_host_new();
    assert_non_null(L);
    lua_register(L, "wait_op", l_wait_op);
    *state = L;
    return 0;
}

static int teardown(void **state)
{
    lua_State *L = *state;
    spgb_host_close(L);
    /* spgb_host_close closed the loop: a closed default loop has nothing alive. */
    return 0;
}

/* Spawn the chunk as a task and return its handle's stack index. */
static int spawn_chunk(lua_State *L, const char *code)
{
    assert_int_equal(luaL_loadstring(L, code), LUA_OK);
    spgb_task_spawn(L, 0, "test");
    return lua_gettop(L);
}

static void run_loop_once(void)
{
    uv_run(spgb_loop(), UV_RUN_NOWAIT);
}

static void test_fifo_order(void **state)
{
    lua_State *L = *state;
    assert_int_equal(luaL_dostring(L, "order = {}"), LUA_OK);
    for (int i = 1; i <= 3; i++) {
        char code[64];
        snprintf(code, sizeof code, "order[#order + 1] = %d", i);
        spawn_chunk(L, code);
    }
    spgb_task *last = spgb_task_of(L); /* main state: no task */
    assert_null(last);
    int h = spawn_chunk(L, "order[#order + 1] = 4");
    spgb_task *t = luaL_checkudata(L, h, "spgb.task");
    assert_int_equal(spgb_sched_run_until(t), 0);
    assert_int_equal(luaL_dostring(L, "return table.concat(order, ',')"), LUA_OK);
    assert_string_equal(lua_tostring(L, -1), "1,2,3,4");
}

static void test_done_resumes_only_from_scheduler(void **state)
{
    lua_State *L = *state;
    assert_int_equal(luaL_dostring(L, "got = nil"), LUA_OK);
    int h = spawn_chunk(L, "got = table.pack(wait_op())");
    spgb_task *t = luaL_checkudata(L, h, "spgb.task");
    run_loop_once(); /* starts the task: it is now waiting */
    assert_false(spgb_task_finished(t));
    spgb_op_done(&the_op.op);           /* as a library callback would */
    spgb_op_done(&the_op.op);           /* a second completion is ignored */
    assert_int_equal(the_op.pushed, 0); /* nothing ran inside the "callback" */
    assert_false(spgb_task_finished(t));
    assert_int_equal(spgb_sched_run_until(t), 0);
    assert_int_equal(the_op.pushed, 1);
    assert_int_equal(the_op.cancelled, 0);
    assert_int_equal(luaL_dostring(L, "return got[1] .. ':' .. got[2] .. ':' .. got.n"), LUA_OK);
    assert_string_equal(lua_tostring(L, -1), "done:42:2");
}

static void test_timeout_cancels_op(void **state)
{
    lua_State *L = *state;
    int h = spawn_chunk(L, "got = table.pack(wait_op(0.02))");
    spgb_task *t = luaL_checkudata(L, h, "spgb.task");
    assert_int_equal(spgb_sched_run_until(t), 0);
    assert_int_equal(the_op.cancelled, 1);
    assert_int_equal(the_op.pushed, 0);
    assert_int_equal(luaL_dostring(L, "return tostring(got[1]) .. '|' .. got[2] .. '|' .. got[3]"),
                     LUA_OK);
    assert_string_equal(lua_tostring(L, -1), "nil|wait_op: timeout|timeout");
}

static void test_cancel_raises_at_yield_point(void **state)
{
    lua_State *L = *state;
    int h = spawn_chunk(L, "local ok, err = pcall(wait_op) caught = err");
    spgb_task *t = luaL_checkudata(L, h, "spgb.task");
    run_loop_once();
    spgb_task_cancel(t);
    assert_int_equal(the_op.cancelled, 1);
    assert_int_equal(spgb_sched_run_until(t), 0);
    assert_int_equal(the_op.pushed, 0);
    lua_getglobal(L, "caught");
    assert_string_equal(lua_tostring(L, -1), "cancelled");
}

static void test_error_has_traceback(void **state)
{
    lua_State *L = *state;
    const char *code = "local x\nerror('bad thing')";
    assert_int_equal(luaL_loadbuffer(L, code, strlen(code), "@chunk.lua"), LUA_OK);
    spgb_task *t = spgb_task_spawn(L, 0, "t");
    int h = lua_gettop(L);
    assert_int_equal(spgb_sched_run_until(t), 0);
    spgb_task_push_result(L, h);
    lua_getfield(L, -1, "ok");
    assert_false(lua_toboolean(L, -1));
    lua_rawgeti(L, -2, 1);
    assert_string_equal(lua_tostring(L, -1), "chunk.lua:2: bad thing");
    lua_getfield(L, -3, "traceback");
    assert_non_null(strstr(lua_tostring(L, -1), "stack traceback:"));
}

static void test_deadlock_is_reported(void **state)
{
    lua_State *L = *state;
    /* A wait with no timeout that nothing completes: the loop has nothing to do. */
    int h = spawn_chunk(L, "wait_op()");
    spgb_task *t = luaL_checkudata(L, h, "spgb.task");
    assert_int_equal(spgb_sched_run_until(t), 1);
}

/* When spgb_op_wait cannot wait (no timer, timer not started, not a task), the
 * primitive's I/O has already started: the op must be cancelled before the error is
 * raised, so a later completion finds it abandoned instead of a task gone. */
static void check_raised_op_was_cancelled(lua_State *L, const char *want)
{
    int h = spawn_chunk(L, want ? "local ok, err = pcall(wait_op, 5) caught = err"
                                : "local ok, err = pcall(string.gsub, 'a', 'a', "
                                  "function() wait_op(5) end) caught = err");
    spgb_task *t = luaL_checkudata(L, h, "spgb.task");
    assert_int_equal(spgb_sched_run_until(t), 0);
    assert_int_equal(the_op.cancelled, 1);
    lua_getglobal(L, "caught");
    if (want)
        assert_string_equal(lua_tostring(L, -1), want);
    else
        assert_non_null(strstr(lua_tostring(L, -1), "wait_op cannot yield here"));
    spgb_op_done(&the_op.op); /* the I/O completing late is ignored */
    run_loop_once();
    assert_int_equal(the_op.pushed, 0);
    lua_pop(L, 2);
}

static void test_failed_wait_cancels_op(void **state)
{
    lua_State *L = *state;
    fail_timer_init = 1;
    check_raised_op_was_cancelled(L, "wait_op: out of memory (timer)");
    fail_timer_start = 1;
    check_raised_op_was_cancelled(L, "wait_op: uv_timer_start: invalid argument");
    /* inside a C function that cannot yield (a gsub callback) */
    check_raised_op_was_cancelled(L, NULL);
    /* outside a task */
    assert_int_equal(luaL_dostring(L, "local ok, err = pcall(wait_op, 5) return err"), LUA_OK);
    assert_int_equal(the_op.cancelled, 1);
    assert_string_equal(lua_tostring(L, -1),
                        "wait_op needs a task (called outside a task, e.g. in a plain coroutine)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fifo_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_done_resumes_only_from_scheduler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_cancels_op, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_raises_at_yield_point, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_has_traceback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadlock_is_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_wait_cancels_op, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
