/*
 * sched: coroutine tasks on the libuv loop. See sched.h for the protocol.
 *
 * Memory: a task is a full userdata (metatable "spgb.task") with two user values:
 * 1 = its thread, 2 = its result table once finished. While unfinished it is
 * anchored in the registry (t->ref), so a waiting task is never collected. The
 * per-task timer is malloc'd and freed in its close callback, never by __gc.
 */
#include "sched.h"

#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define TASK_MT "spgb.task"
#define SIGNAL_MT "spgb.signal"

enum { T_NEW, T_RUNNABLE, T_WAITING, T_RUNNING, T_DONE };
enum { WAKE_NONE, WAKE_DONE, WAKE_TIMEOUT, WAKE_CANCEL };
enum { OP_IDLE, OP_PENDING, OP_DONE, OP_CANCELLED };

typedef struct waiter waiter;

struct spgb_task {
    lua_State *co;
    int ref; /* registry anchor while unfinished, LUA_NOREF after */
    unsigned id;
    char name[64];
    int state;
    int wake;
    int nargs; /* values on co's stack for the next resume */
    bool cancelled;
    bool cancel_raise; /* raise "cancelled" at the next resume point */
    bool ok;           /* result, valid when state == T_DONE */
    bool root;
    bool observed;    /* its failure is reported by whoever spawned it (all, timeout) */
    int shield;       /* task.shield depth: a cancel is held while > 0 */
    bool cancel_held; /* a cancel arrived while shielded: applied when the shield ends */
    spgb_op *op;
    const char *op_name; /* copied at wait: the op may be freed by its cancel */
    uv_timer_t *timer;
    spgb_task *parent, *child, *sibling_next, *sibling_prev;
    spgb_task *run_next;              /* run queue */
    spgb_task *live_next, *live_prev; /* every unfinished task */
    waiter *waiters;
    int traceback_ref;
    int exit_code;
};

/* A task waiting for another to finish (t:wait, task.timeout). */
struct waiter {
    spgb_op op;
    spgb_task *target;
    waiter *next;
    bool linked;
};

static struct {
    uv_loop_t *loop;
    lua_State *L;
    uv_idle_t idle;
    bool idle_on;
    spgb_task *run_head, *run_tail;
    spgb_task *live;
    unsigned next_id;
    bool ready;
} S;

uv_loop_t *spgb_loop(void)
{
    return S.loop;
}

double spgb_now(void)
{
    return (double)uv_hrtime() / 1e9;
}

/* The task pointer lives in each task thread's LUA_EXTRASPACE. Threads made by
 * coroutine.create copy the main thread's extra space, which is NULL, so a
 * yielding primitive inside a script's own coroutine is detected. */
static spgb_task **extra(lua_State *L)
{
    return (spgb_task **)lua_getextraspace(L);
}

spgb_task *spgb_task_of(lua_State *L)
{
    return *extra(L);
}

spgb_task *spgb_task_current(lua_State *L, const char *what)
{
    spgb_task *t = spgb_task_of(L);
    if (!t || t->co != L)
        luaL_error(L, "%s needs a task (called outside a task, e.g. in a plain coroutine)", what);
    return t;
}

bool spgb_task_finished(spgb_task *t)
{
    return t->state == T_DONE;
}

/* ---- run queue ------------------------------------------------------------ */

static void sched_step(uv_idle_t *h);

static void enqueue(spgb_task *t)
{
    if (t->state == T_RUNNABLE || t->state == T_DONE)
        return;
    if (t->state != T_NEW)
        t->state = T_RUNNABLE;
    t->run_next = NULL;
    if (S.run_tail)
        S.run_tail->run_next = t;
    else
        S.run_head = t;
    S.run_tail = t;
    if (!S.idle_on) {
        /* An active idle handle makes the loop poll with a zero timeout, so the
         * queue is drained on the next iteration. Cannot fail on an initialised handle. */
        uv_idle_start(&S.idle, sched_step);
        S.idle_on = true;
    }
}

/* ---- ops ------------------------------------------------------------------ */

static void timer_fire(uv_timer_t *h)
{
    spgb_task *t = h->data;
    spgb_op *op = t->op;
    if (!op || op->state != OP_PENDING)
        return;
    if (op->deadline_completes) {
        /* A plain sleep: the deadline is its completion. */
        op->state = OP_DONE;
        t->wake = WAKE_DONE;
    } else {
        op->state = OP_CANCELLED;
        t->wake = WAKE_TIMEOUT;
        t->op = NULL; /* cancel may free it */
        if (op->cancel)
            op->cancel(op);
    }
    enqueue(t);
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

static int op_k(lua_State *L, int status, lua_KContext ctx);

int spgb_op_wait(lua_State *L, spgb_op *op, double timeout)
{
    return spgb_op_waitk(L, op, timeout, op_k, 0);
}

/* Give op up without waiting for it: its I/O has started (or even finished), and
 * the error about to be raised means nobody will. Releases what push or cancel
 * releases; the op may be freed afterwards and a late completion is ignored. */
static void abandon_op(lua_State *L, spgb_op *op)
{
    bool was_done = op->state == OP_DONE;
    op->state = OP_CANCELLED; /* before cancel/push, which may free it */
    if (!was_done && op->cancel) {
        op->cancel(op);
    } else if (was_done && op->push) {
        int n = op->push(L, op);
        lua_pop(L, n);
    }
}

int spgb_op_waitk(lua_State *L, spgb_op *op, double timeout, lua_KFunction k, lua_KContext ctx)
{
    /* Every raise below abandons op first (raising cannot fail then); op may be
     * freed by that, so its name is copied. */
    char name[64];
    snprintf(name, sizeof name, "%s", op->name ? op->name : "task.sleep");
    spgb_task *t = spgb_task_of(L);
    if (!t || t->co != L) {
        abandon_op(L, op);
        return luaL_error(L, "%s needs a task (called outside a task, e.g. in a plain coroutine)",
                          name);
    }
    if (t->op) {
        abandon_op(L, op);
        return luaL_error(L, "%s: task %s is already waiting", name, t->name);
    }
    if (t->cancel_raise) {
        /* Cancelled while running: do not start waiting, abandon the I/O. */
        t->cancel_raise = false;
        abandon_op(L, op);
        lua_pushliteral(L, "cancelled");
        return lua_error(L);
    }
    if (!lua_isyieldable(L)) {
        /* lua_yieldk would raise with the op registered and its timer running. */
        abandon_op(L, op);
        return luaL_error(
            L, "%s cannot yield here (inside a metamethod or a C function's callback)", name);
    }
    if (timeout > 0 && op->state != OP_DONE) {
        if (!t->timer) {
            t->timer = malloc(sizeof *t->timer);
            if (!t->timer || uv_timer_init(S.loop, t->timer) != 0) {
                free(t->timer);
                t->timer = NULL;
                abandon_op(L, op);
                return luaL_error(L, "%s: out of memory (timer)", name);
            }
            t->timer->data = t;
        }
        double ms = ceil(timeout * 1000.0);
        if (ms > 1e12)
            ms = 1e12;
        /* Started before the op is registered: timer_fire finds no op if it fails. */
        int rc = uv_timer_start(t->timer, timer_fire, (uint64_t)ms, 0);
        if (rc != 0) {
            abandon_op(L, op);
            return luaL_error(L, "%s: uv_timer_start: %s", name, uv_strerror(rc));
        }
    }
    /* An op completed synchronously by the primitive still goes through the queue,
     * so every resume happens from the scheduler. */
    if (op->state != OP_DONE)
        op->state = OP_PENDING;
    op->task = t;
    t->op = op;
    t->op_name = op->name ? op->name : "operation";
    t->wake = op->state == OP_DONE ? WAKE_DONE : WAKE_NONE;
    t->state = T_WAITING;
    if (op->state == OP_DONE)
        enqueue(t);
    return lua_yieldk(L, 0, ctx, k);
}

void spgb_op_resumed(lua_State *L)
{
    spgb_task *t = spgb_task_of(L);
    if (t && t->cancel_raise) {
        t->cancel_raise = false;
        lua_pushliteral(L, "cancelled");
        lua_error(L);
    }
}

/* Continuation of every yielding primitive: the scheduler has pushed t->nargs
 * values (the op's results) or asked for the cancellation error. */
static int op_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    spgb_op_resumed(L);
    return spgb_task_of(L)->nargs;
}

void spgb_op_done(spgb_op *op)
{
    if (op->state != OP_PENDING)
        return;
    op->state = OP_DONE;
    spgb_task *t = op->task;
    t->wake = WAKE_DONE;
    if (t->timer)
        uv_timer_stop(t->timer);
    enqueue(t);
}

/* ---- task lifecycle ------------------------------------------------------- */

static void unlink_child(spgb_task *t)
{
    if (!t->parent)
        return;
    if (t->sibling_prev)
        t->sibling_prev->sibling_next = t->sibling_next;
    else
        t->parent->child = t->sibling_next;
    if (t->sibling_next)
        t->sibling_next->sibling_prev = t->sibling_prev;
    t->parent = NULL;
    t->sibling_next = t->sibling_prev = NULL;
}

static void unlink_live(spgb_task *t)
{
    if (t->live_prev)
        t->live_prev->live_next = t->live_next;
    else if (S.live == t)
        S.live = t->live_next;
    if (t->live_next)
        t->live_next->live_prev = t->live_prev;
    t->live_next = t->live_prev = NULL;
}

static void push_task(lua_State *L, spgb_task *t)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
}

/* Store the result in the task's user value 2 as {n=, ok=, traceback=, ...},
 * release the thread, wake waiters, detach from the family and drop the anchor. */
static void finish(spgb_task *t, bool ok, int traceback_idx)
{
    lua_State *L = S.L;
    lua_State *co = t->co;
    const char *tb = NULL;
    int n = lua_gettop(co);
    if (traceback_idx > 0) {
        tb = lua_tostring(co, traceback_idx);
        n = traceback_idx - 1;
    }
    t->ok = ok;
    t->state = T_DONE;
    luaL_checkstack(L, n + 4, "task results");
    push_task(L, t);
    lua_createtable(L, n, 3);
    if (tb) {
        lua_pushstring(L, tb);
        lua_setfield(L, -2, "traceback");
    }
    lua_settop(co, n);
    lua_xmove(co, L, n);
    for (int i = n; i >= 1; i--)
        lua_rawseti(L, -(i + 1), i);
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    lua_pushboolean(L, ok);
    lua_setfield(L, -2, "ok");
    if (!ok && !t->root && !t->observed && !t->waiters && !t->cancelled) {
        lua_rawgeti(L, -1, 1);
        const char *msg = luaL_tolstring(L, -1, NULL);
        spgb_log_write(SPGB_LOG_ERROR, "task_failed", msg, "task", t->name, "traceback",
                       tb ? tb : "", (const char *)NULL);
        lua_pop(L, 2);
    }
    lua_setiuservalue(L, -2, 2);
    lua_pushnil(L);
    lua_setiuservalue(L, -2, 1); /* the thread may be collected now */
    lua_pop(L, 1);
    t->co = NULL;

    for (waiter *w = t->waiters; w;) {
        waiter *next = w->next;
        w->linked = false;
        w->next = NULL;
        spgb_op_done(&w->op);
        w = next;
    }
    t->waiters = NULL;
    for (spgb_task *c = t->child; c;) {
        spgb_task *next = c->sibling_next;
        c->parent = NULL;
        c->sibling_next = c->sibling_prev = NULL;
        c = next;
    }
    t->child = NULL;
    unlink_child(t);
    unlink_live(t);
    if (t->timer) {
        uv_close((uv_handle_t *)t->timer, free_handle);
        t->timer = NULL;
    }
    luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
    t->ref = LUA_NOREF;
}

/* Message handler of every task: keeps the error value as it is (so callers that
 * re-raise it see the script's message) and adds the traceback beside it. */
static int task_msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    /* pcall keeps only one value from a handler; task_entry_k runs right after
     * this handler in the same resume, so a fixed registry slot is enough. */
    lua_rawsetp(L, LUA_REGISTRYINDEX, (void *)task_msgh);
    lua_settop(L, 1);
    return 1;
}

static int task_entry_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)ctx;
    if (status == LUA_OK || status == LUA_YIELD) {
        lua_pushboolean(L, 1);
        lua_replace(L, 1);
        return lua_gettop(L);
    }
    /* [msgh, err]: task_msgh left the traceback in its registry slot. */
    lua_pushboolean(L, 0);
    lua_replace(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, (void *)task_msgh);
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, (void *)task_msgh);
    return 3; /* false, err, traceback|nil */
}

/* Body of every task thread: [fn, args...] -> false, err, tb | true, results... */
static int task_entry(lua_State *L)
{
    int nargs = lua_gettop(L) - 1;
    lua_pushcfunction(L, task_msgh);
    lua_insert(L, 1);
    int st = lua_pcallk(L, nargs, LUA_MULTRET, 1, 0, task_entry_k);
    return task_entry_k(L, st, 0);
}

static void run_task(spgb_task *t)
{
    lua_State *co = t->co;
    int nargs = 0;
    if (t->state == T_NEW) {
        nargs = t->nargs;
        if (t->cancelled) {
            lua_settop(co, 0);
            lua_pushboolean(co, 0);
            lua_pushliteral(co, "cancelled");
            lua_remove(co, 1);
            finish(t, false, 0);
            return;
        }
    } else {
        spgb_op *op = t->op;
        t->op = NULL;
        switch (t->wake) {
        case WAKE_DONE:
            if (op) {
                op->state = OP_IDLE; /* before push, which may free it */
                nargs = op->push ? op->push(co, op) : 0;
            }
            break;
        case WAKE_TIMEOUT:
            lua_pushnil(co);
            lua_pushfstring(co, "%s: timeout", t->op_name ? t->op_name : "operation");
            lua_pushliteral(co, "timeout");
            nargs = 3;
            break;
        case WAKE_CANCEL:
        default:
            t->cancel_raise = true;
            nargs = 0;
            break;
        }
    }
    t->nargs = nargs;
    t->state = T_RUNNING;
    int nres = 0;
    int st = lua_resume(co, S.L, nargs, &nres);
    if (st == LUA_YIELD) {
        if (t->state == T_RUNNING) {
            /* coroutine.yield straight out of a task: treat as task.yield(). */
            lua_pop(co, nres);
            t->nargs = 0;
            t->state = T_WAITING;
            t->wake = WAKE_DONE;
            enqueue(t);
        }
        return;
    }
    if (st == LUA_OK) {
        bool ok = lua_toboolean(co, 1);
        lua_remove(co, 1);
        finish(t, ok, ok ? 0 : 2);
        return;
    }
    /* An error outside task_entry's pcall (memory, error in the handler). */
    lua_insert(co, 1);
    lua_settop(co, 1);
    finish(t, false, 0);
}

static void sched_step(uv_idle_t *h)
{
    (void)h;
    /* Run only what is queued now, so tasks that keep yielding cannot starve I/O. */
    spgb_task *last = S.run_tail;
    while (S.run_head) {
        spgb_task *t = S.run_head;
        S.run_head = t->run_next;
        if (!S.run_head)
            S.run_tail = NULL;
        t->run_next = NULL;
        run_task(t);
        if (t == last)
            break;
    }
    if (!S.run_head && S.idle_on) {
        uv_idle_stop(&S.idle);
        S.idle_on = false;
    }
}

/* ---- spawning and cancelling ---------------------------------------------- */

spgb_task *spgb_task_spawn(lua_State *L, int nargs, const char *name)
{
    luaL_checkstack(L, 4, "task.spawn");
    spgb_task *t = lua_newuserdatauv(L, sizeof *t, 2);
    memset(t, 0, sizeof *t);
    luaL_setmetatable(L, TASK_MT);
    t->id = ++S.next_id;
    if (name)
        snprintf(t->name, sizeof t->name, "%s", name);
    else
        snprintf(t->name, sizeof t->name, "task#%u", t->id);
    lua_State *co = lua_newthread(L);
    lua_setiuservalue(L, -2, 1);
    t->co = co;
    *extra(co) = t;
    lua_pushvalue(L, -1);
    t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    /* [fn, args..., ud]: fn and args move to the new thread, behind its entry. */
    lua_insert(L, -(nargs + 2));
    lua_pushcfunction(co, task_entry);
    lua_xmove(L, co, nargs + 1);
    t->nargs = nargs + 1;
    t->state = T_NEW;
    spgb_task *parent = spgb_task_of(L);
    if (parent && parent->state != T_DONE) {
        t->parent = parent;
        t->sibling_next = parent->child;
        if (parent->child)
            parent->child->sibling_prev = t;
        parent->child = t;
    }
    t->live_next = S.live;
    if (S.live)
        S.live->live_prev = t;
    S.live = t;
    enqueue(t);
    return t;
}

void spgb_task_cancel(spgb_task *t)
{
    if (t->state == T_DONE || t->cancelled)
        return;
    if (t->shield > 0) {
        /* Held whole, children included: they do the shielded work (task.all,
         * task.timeout) and would otherwise be cancelled under it. */
        t->cancel_held = true;
        return;
    }
    t->cancelled = true;
    for (spgb_task *c = t->child; c; c = c->sibling_next)
        spgb_task_cancel(c);
    switch (t->state) {
    case T_NEW:
        break; /* run_task finishes it without running it */
    case T_WAITING:
        if (t->op && t->op->state == OP_PENDING) {
            spgb_op *op = t->op;
            op->state = OP_CANCELLED;
            if (t->timer)
                uv_timer_stop(t->timer);
            t->wake = WAKE_CANCEL;
            t->op = NULL; /* cancel may free it */
            if (op->cancel)
                op->cancel(op);
            enqueue(t);
        } else {
            t->cancel_raise = true; /* completed, queued: raise after its push */
        }
        break;
    default: /* runnable or running: raise at the next resume point */
        t->cancel_raise = true;
        break;
    }
}

void spgb_task_push_result(lua_State *L, int idx)
{
    lua_getiuservalue(L, idx, 2);
}

void spgb_task_set_root(spgb_task *t)
{
    t->root = true;
}

int spgb_sched_run_until(spgb_task *t)
{
    while (t->state != T_DONE) {
        int alive = uv_run(S.loop, UV_RUN_ONCE);
        if (!alive && t->state != T_DONE && !S.run_head) {
            fprintf(stderr,
                    "stolon-pgbouncer: task %s waits for something that can never "
                    "happen (nothing left to run)\n",
                    t->name);
            return 1;
        }
    }
    return 0;
}

/* ---- Lua API -------------------------------------------------------------- */

static spgb_task *check_task(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, TASK_MT);
}

/* task.spawn(fn, ...) -> handle. Any context (a task or the main state); does not
 * yield. The task starts on the next scheduler step and is a child of the caller's
 * task: cancelling the caller cancels it. */
static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    spgb_task_spawn(L, lua_gettop(L) - 1, NULL);
    return 1;
}

void spgb_task_observe(spgb_task *t)
{
    t->observed = true;
}

/* task.observed(fn, ...) -> handle: as spawn, for helpers that report the task's
 * failure themselves (all, timeout), so it is not also logged as task_failed. */
static int l_observed(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    spgb_task *t = spgb_task_spawn(L, lua_gettop(L) - 1, NULL);
    t->observed = true;
    return 1;
}

/* task.named(name, fn, ...) -> handle: spawn with a name used in logs. */
static int l_named(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_remove(L, 1);
    int nargs = lua_gettop(L) - 1;
    /* name is still referenced by nothing once removed: copy it first. */
    char buf[64];
    snprintf(buf, sizeof buf, "%s", name);
    spgb_task_spawn(L, nargs, buf);
    return 1;
}

/* task.detached(name, fn, ...) -> handle: spawn (name may be nil) as a child of no
 * task, so cancelling the caller does not cancel it. For work that must outlive the
 * task that starts it (a lease's keep-alive); whoever starts it stops it. */
static int l_detached(lua_State *L)
{
    const char *name = luaL_optstring(L, 1, NULL);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    char buf[64];
    if (name)
        snprintf(buf, sizeof buf, "%s", name);
    lua_remove(L, 1);
    spgb_task *t = spgb_task_spawn(L, lua_gettop(L) - 1, name ? buf : NULL);
    unlink_child(t);
    return 1;
}

/* Leave a shield: a cancel held meanwhile takes effect now, at the task's next
 * yield point (the shielded function's results are still returned). */
static void shield_leave(spgb_task *t)
{
    if (--t->shield > 0 || !t->cancel_held)
        return;
    t->cancel_held = false;
    if (t->cancelled)
        t->cancel_raise = true; /* it was pending when the shield began */
    else
        spgb_task_cancel(t);
}

static int shield_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)ctx;
    shield_leave(spgb_task_of(L));
    if (status != LUA_OK && status != LUA_YIELD)
        return lua_error(L);
    return lua_gettop(L);
}

/* task.shield(fn, ...) -> fn's results. Task only; yields when fn does. Runs fn(...)
 * in the calling task with cancellation held off: a cancel of this task (or of one
 * that spawned it: a signal, an enclosing task.timeout) that arrives meanwhile
 * reaches neither fn nor the tasks this task spawned until fn returns, then raises
 * "cancelled" at the next yield point. fn's own timeouts still work. Re-raises fn's
 * error. For clean-up that must run to completion (the pipeline's defers). */
static int l_shield(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    spgb_task *t = spgb_task_current(L, "task.shield");
    t->shield++;
    if (t->cancel_raise) {
        /* Cancelled while running, not yet raised: hold that one too. */
        t->cancel_raise = false;
        t->cancel_held = true;
    }
    int st = lua_pcallk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, 0, shield_k);
    return shield_k(L, st, 0);
}

/* sleep: the op completes at its deadline. */
static int push_nothing(lua_State *L, spgb_op *op)
{
    (void)L;
    free(op);
    return 0;
}

static void free_op(spgb_op *op)
{
    free(op);
}

/* task.sleep(seconds). Task only; yields. Returns nothing; raises "cancelled" when
 * the task is cancelled meanwhile. task.sleep(0) lets every other runnable task run. */
static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    spgb_task_current(L, "task.sleep");
    spgb_op *op = calloc(1, sizeof *op);
    if (!op)
        return luaL_error(L, "task.sleep: out of memory");
    op->push = push_nothing;
    op->cancel = free_op;
    op->name = "task.sleep";
    op->deadline_completes = true;
    if (s <= 0) {
        op->state = OP_DONE; /* just go round the run queue */
        return spgb_op_wait(L, op, 0);
    }
    return spgb_op_wait(L, op, s < 0.001 ? 0.001 : s);
}

/* The waiter is freed by whichever of push (target finished) or cancel (timeout,
 * cancellation) runs; wait_k then reads the results from the handle. */
static int waiter_push(lua_State *L, spgb_op *op)
{
    (void)L;
    free(op);
    return 0;
}

static void waiter_cancel(spgb_op *op)
{
    waiter *w = (waiter *)op;
    if (w->linked) {
        waiter **pp = &w->target->waiters;
        while (*pp && *pp != w)
            pp = &(*pp)->next;
        if (*pp)
            *pp = w->next;
    }
    free(w);
}

/* Push ok, results... of finished task t whose handle is at idx. */
static int push_results(lua_State *L, spgb_task *t, int idx)
{
    lua_getiuservalue(L, idx, 2);
    lua_getfield(L, -1, "n");
    int n = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    luaL_checkstack(L, n + 2, "task results");
    lua_pushboolean(L, t->ok);
    for (int i = 1; i <= n; i++)
        lua_rawgeti(L, -1 - i, i);
    lua_remove(L, -(n + 2));
    return n + 1;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    spgb_op_resumed(L);
    spgb_task *t = check_task(L, 1);
    if (t->state == T_DONE) {
        lua_settop(L, 1);
        return push_results(L, t, 1);
    }
    return lua_gettop(L) - 1; /* nil, "task.wait: timeout", "timeout" */
}

/* t:wait([timeout]) -> true, results... | false, err | nil, "task.wait: timeout",
 * "timeout". Task only; yields unless t has finished. Waiting does not cancel t
 * on timeout (task.timeout does). */
static int l_wait(lua_State *L)
{
    spgb_task *t = check_task(L, 1);
    lua_Number timeout = luaL_optnumber(L, 2, 0);
    lua_settop(L, 1);
    if (t->state == T_DONE)
        return push_results(L, t, 1);
    spgb_task *self = spgb_task_current(L, "task.wait");
    if (self == t)
        return luaL_error(L, "task.wait: a task cannot wait for itself");
    waiter *w = calloc(1, sizeof *w);
    if (!w)
        return luaL_error(L, "task.wait: out of memory");
    w->target = t;
    w->op.name = "task.wait";
    w->op.cancel = waiter_cancel;
    w->op.push = waiter_push;
    w->next = t->waiters;
    w->linked = true;
    t->waiters = w;
    return spgb_op_waitk(L, &w->op, timeout, wait_k, 0);
}

/* t:cancel(). Any context; does not yield. A waiting t has its pending operation
 * abandoned at once and "cancelled" raised at its yield point on the next step;
 * tasks t spawned are cancelled too. Cancelling a finished task does nothing. */
static int l_cancel(lua_State *L)
{
    spgb_task_cancel(check_task(L, 1));
    return 0;
}

/* t:status() -> "new" | "runnable" | "waiting" | "running" | "done" | "failed" |
 * "cancelled". */
static int l_status(lua_State *L)
{
    spgb_task *t = check_task(L, 1);
    static const char *names[] = {"new", "runnable", "waiting", "running", "done"};
    if (t->state == T_DONE && !t->ok)
        lua_pushstring(L, t->cancelled ? "cancelled" : "failed");
    else
        lua_pushstring(L, names[t->state]);
    return 1;
}

/* t:name() -> the name given to task.named, or "task#<id>". */
static int l_name(lua_State *L)
{
    lua_pushstring(L, check_task(L, 1)->name);
    return 1;
}

static int l_task_tostring(lua_State *L)
{
    spgb_task *t = check_task(L, 1);
    lua_pushfstring(L, "task: %s (%s)", t->name, t->state == T_DONE ? "done" : "live");
    return 1;
}

/* task.current() -> handle of the running task, or nil outside a task. */
static int l_current(lua_State *L)
{
    spgb_task *t = spgb_task_of(L);
    if (!t || t->co != L || t->ref == LUA_NOREF) {
        lua_pushnil(L);
        return 1;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
    return 1;
}

/* task.cancelled() -> true once the running task has been cancelled (cleanup code
 * can check it after catching "cancelled"), or a cancel is held by task.shield. */
static int l_cancelled(lua_State *L)
{
    spgb_task *t = spgb_task_of(L);
    lua_pushboolean(L, t && (t->cancelled || t->cancel_held));
    return 1;
}

/* task.stats() -> {live=, waiting=, runnable=}: unfinished tasks, those with a
 * pending operation, and those queued to run. For tests and the REPL. */
static int l_stats(lua_State *L)
{
    int live = 0, waiting = 0, runnable = 0;
    for (spgb_task *t = S.live; t; t = t->live_next) {
        live++;
        if (t->op && t->op->state == OP_PENDING)
            waiting++;
    }
    for (spgb_task *t = S.run_head; t; t = t->run_next)
        runnable++;
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, live);
    lua_setfield(L, -2, "live");
    lua_pushinteger(L, waiting);
    lua_setfield(L, -2, "waiting");
    lua_pushinteger(L, runnable);
    lua_setfield(L, -2, "runnable");
    return 1;
}

/* task.now() -> monotonic seconds (float). */
static int l_now(lua_State *L)
{
    lua_pushnumber(L, spgb_now());
    return 1;
}

/* ---- events ----------------------------------------------------------------- */

#define EVENT_MT "spgb.event"

typedef struct ev_waiter {
    spgb_op op;
    struct ev_waiter *next, *prev;
    struct event *ev;
} ev_waiter;

typedef struct event {
    bool set;
    ev_waiter *waiters;
} event;

static void ev_unlink(ev_waiter *w)
{
    if (!w->ev)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        w->ev->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->ev = NULL;
}

static int ev_push(lua_State *L, spgb_op *op)
{
    free(op);
    lua_pushboolean(L, 1);
    return 1;
}

static void ev_cancel(spgb_op *op)
{
    ev_unlink((ev_waiter *)op);
    free(op);
}

/* task.event() -> ev: a wake-up flag for tasks. ev:set() wakes every task waiting
 * on it, or, when none waits, lets the next ev:wait() return at once (auto-reset).
 * Any context; does not yield. */
static int l_event(lua_State *L)
{
    event *e = lua_newuserdatauv(L, sizeof *e, 0);
    memset(e, 0, sizeof *e);
    luaL_setmetatable(L, EVENT_MT);
    return 1;
}

/* ev:wait([timeout]) -> true | nil, "event.wait: timeout", "timeout". Task only;
 * yields unless the event is already set (then it is reset and true returned). */
static int l_event_wait(lua_State *L)
{
    event *e = luaL_checkudata(L, 1, EVENT_MT);
    lua_Number timeout = luaL_optnumber(L, 2, 0);
    spgb_task_current(L, "event.wait");
    if (e->set) {
        e->set = false;
        lua_pushboolean(L, 1);
        return 1;
    }
    ev_waiter *w = calloc(1, sizeof *w);
    if (!w)
        return luaL_error(L, "event.wait: out of memory");
    w->op.name = "event.wait";
    w->op.push = ev_push;
    w->op.cancel = ev_cancel;
    w->ev = e;
    w->next = e->waiters;
    if (e->waiters)
        e->waiters->prev = w;
    e->waiters = w;
    lua_settop(L, 1); /* the event stays on the waiting task's stack: not collected */
    return spgb_op_wait(L, &w->op, timeout);
}

/* ev:set(). Any context; does not yield. */
static int l_event_set(lua_State *L)
{
    event *e = luaL_checkudata(L, 1, EVENT_MT);
    if (!e->waiters) {
        e->set = true;
        return 0;
    }
    while (e->waiters) {
        ev_waiter *w = e->waiters;
        ev_unlink(w);
        spgb_op_done(&w->op);
    }
    return 0;
}

/* ---- signals -------------------------------------------------------------- */

typedef struct sig_reg {
    uv_signal_t h;
    int fn_ref;
    int signum;
    struct sig_reg *next;
    bool closing;
} sig_reg;

static sig_reg *sigs;

static const struct {
    const char *name;
    int num;
} signames[] = {{"TERM", SIGTERM}, {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"HUP", SIGHUP},
                {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {NULL, 0}};

int spgb_signal_number(const char *name)
{
    if (strncmp(name, "SIG", 3) == 0)
        name += 3;
    for (int i = 0; signames[i].name; i++)
        if (strcmp(signames[i].name, name) == 0)
            return signames[i].num;
    return 0;
}

const char *spgb_signal_name(int num)
{
    for (int i = 0; signames[i].name; i++)
        if (signames[i].num == num)
            return signames[i].name;
    /* Signals a child can die of but we never handle. */
    static const struct {
        const char *name;
        int num;
    } more[] = {{"KILL", SIGKILL}, {"SEGV", SIGSEGV}, {"ABRT", SIGABRT}, {"BUS", SIGBUS},
                {"FPE", SIGFPE},   {"ILL", SIGILL},   {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},
                {"STOP", SIGSTOP}, {"CONT", SIGCONT}, {"TRAP", SIGTRAP}, {NULL, 0}};
    for (int i = 0; more[i].name; i++)
        if (more[i].num == num)
            return more[i].name;
    return "?";
}

static void on_sig(uv_signal_t *h, int signum)
{
    sig_reg *r = h->data;
    lua_State *L = S.L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->fn_ref);
    lua_pushstring(L, spgb_signal_name(signum));
    char name[32];
    snprintf(name, sizeof name, "signal:%s", spgb_signal_name(signum));
    spgb_task_spawn(L, 1, name); /* only queues it: nothing runs inside this callback */
    lua_pop(L, 1);
}

static void sig_closed(uv_handle_t *h)
{
    free(h->data);
}

static void sig_stop(lua_State *L, sig_reg *r)
{
    if (r->closing)
        return;
    r->closing = true;
    for (sig_reg **pp = &sigs; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    luaL_unref(L, LUA_REGISTRYINDEX, r->fn_ref);
    uv_close((uv_handle_t *)&r->h, sig_closed);
}

/* task.on_signal(name, fn) -> handle. Any context; does not yield. Each delivery of
 * signal name ("TERM", "INT", "QUIT", "HUP", "USR1", "USR2") runs fn(name) in a new
 * task. While registered the signal no longer has its default effect.
 * handle:stop() restores it. */
static int l_on_signal(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    int num = spgb_signal_number(name);
    if (!num)
        return luaL_argerror(L, 1, "unknown signal (TERM, INT, QUIT, HUP, USR1, USR2)");
    sig_reg *r = calloc(1, sizeof *r);
    if (!r)
        return luaL_error(L, "task.on_signal: out of memory");
    int rc = uv_signal_init(S.loop, &r->h);
    if (rc == 0) {
        r->h.data = r;
        rc = uv_signal_start(&r->h, on_sig, num);
        if (rc != 0) {
            r->closing = true;
            r->fn_ref = LUA_NOREF;
            uv_close((uv_handle_t *)&r->h, sig_closed);
            return luaL_error(L, "task.on_signal: %s", uv_strerror(rc));
        }
    } else {
        free(r);
        return luaL_error(L, "task.on_signal: %s", uv_strerror(rc));
    }
    r->signum = num;
    lua_pushvalue(L, 2);
    r->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    r->next = sigs;
    sigs = r;
    sig_reg **ud = lua_newuserdatauv(L, sizeof *ud, 0);
    *ud = r;
    luaL_setmetatable(L, SIGNAL_MT);
    return 1;
}

static int l_sig_stop(lua_State *L)
{
    sig_reg **ud = luaL_checkudata(L, 1, SIGNAL_MT);
    if (*ud) {
        /* The registration may already be gone (shutdown): look it up. */
        for (sig_reg *r = sigs; r; r = r->next)
            if (r == *ud) {
                sig_stop(L, r);
                break;
            }
        *ud = NULL;
    }
    return 0;
}

/* The C core of the task module; lua/task.lua adds timeout, all, mutex and the rest
 * written in Lua. */
int luaopen_task_core(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"spawn", l_spawn},
        {"named", l_named},
        {"sleep", l_sleep},
        {"current", l_current},
        {"now", l_now},
        {"on_signal", l_on_signal},
        {"cancelled", l_cancelled},
        {"observed", l_observed},
        {"detached", l_detached},
        {"shield", l_shield},
        {"stats", l_stats},
        {"event", l_event},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}

static void define_metatables(lua_State *L)
{
    static const luaL_Reg task_methods[] = {
        {"wait", l_wait}, {"cancel", l_cancel}, {"status", l_status},
        {"name", l_name}, {NULL, NULL},
    };
    luaL_newmetatable(L, TASK_MT);
    luaL_newlib(L, task_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_task_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    luaL_newmetatable(L, EVENT_MT);
    lua_newtable(L);
    lua_pushcfunction(L, l_event_wait);
    lua_setfield(L, -2, "wait");
    lua_pushcfunction(L, l_event_set);
    lua_setfield(L, -2, "set");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, SIGNAL_MT);
    lua_pushcfunction(L, l_sig_stop);
    lua_setfield(L, -2, "__close");
    lua_newtable(L);
    lua_pushcfunction(L, l_sig_stop);
    lua_setfield(L, -2, "stop");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

int spgb_sched_init(lua_State *L)
{
    memset(&S, 0, sizeof S);
    S.loop = uv_default_loop();
    S.L = L;
    *extra(L) = NULL;
    int rc = uv_idle_init(S.loop, &S.idle);
    if (rc != 0)
        return rc;
    define_metatables(L);
    S.ready = true;
    return 0;
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void spgb_sched_shutdown(lua_State *L)
{
    if (!S.ready)
        return;
    /* Abandon what is still pending without running any more Lua. */
    for (spgb_task *t = S.live; t; t = t->live_next) {
        if (t->op && t->op->state == OP_PENDING) {
            t->op->state = OP_CANCELLED;
            if (t->op->cancel)
                t->op->cancel(t->op);
        } else if (t->op && t->op->state == OP_DONE && t->op->push) {
            lua_State *co = t->co;
            int n = t->op->push(co, t->op);
            lua_pop(co, n);
        }
        t->op = NULL;
        if (t->timer) {
            uv_close((uv_handle_t *)t->timer, free_handle);
            t->timer = NULL;
        }
    }
    while (sigs)
        sig_stop(L, sigs);
    S.run_head = S.run_tail = NULL;
    uv_close((uv_handle_t *)&S.idle, NULL);
    S.ready = false;
}

static void (*at_close[16])(void);
static int n_at_close;

void spgb_sched_at_close(void (*fn)(void))
{
    for (int i = 0; i < n_at_close; i++)
        if (at_close[i] == fn)
            return;
    if (n_at_close < (int)(sizeof at_close / sizeof at_close[0]))
        at_close[n_at_close++] = fn;
}

/* After lua_close: close whatever handles units still own and empty the loop. */
void spgb_sched_close_loop(void)
{
    for (int i = 0; i < n_at_close; i++)
        at_close[i]();
    uv_walk(S.loop, close_any, NULL);
    uv_run(S.loop, UV_RUN_DEFAULT);
    uv_loop_close(S.loop);
}
