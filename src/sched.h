/*
 * sched: coroutine tasks on the libuv loop.
 *
 * Provides: the scheduler (one per process, one libuv loop, one Lua state), tasks
 * (one lua_newthread each, anchored in the registry until they finish), the
 * pending-operation protocol every yielding primitive uses, and the Lua module
 * `task` (spawn, detached, all, sleep, timeout, shield, cancel, on_signal, now, yield).
 * Uses: libuv, Lua 5.4.
 *
 * The protocol for a yielding primitive (see DESIGN.md, "The async model"):
 *
 *   1. The Lua C function calls spgb_task_current(L, "etcd.get") which raises
 *      "etcd.get needs a task" when L is not a task's thread.
 *   2. It embeds a spgb_op in its own request state, sets op->cancel (stop the I/O,
 *      free what the I/O owns; the op will never complete after this) and op->push
 *      (push the results onto the task's stack; returns how many), starts the I/O,
 *      and returns spgb_op_wait(L, op, timeout_seconds).
 *   3. The I/O callback (libuv/libcurl/libpq/HTTP library) only records the result
 *      in its state and calls spgb_op_done(op). It never touches Lua.
 *   4. The scheduler later resumes the task from its own step: op->push runs on the
 *      task's stack and its values are what the primitive returns to the script.
 *      If the deadline passes first, op->cancel runs and the primitive returns
 *      nil, "<name>: timeout", "timeout". If the task is cancelled, op->cancel runs
 *      and the error "cancelled" is raised at the yield point (pcall and the
 *      pipeline's defers see it; cleanup code may still do I/O).
 *
 * Ownership: the op's memory belongs to the primitive. It must stay valid until
 * push or cancel has been called (exactly one of them is called, exactly once, also
 * when spgb_op_wait raises instead of waiting: not a task, not yieldable (inside a
 * metamethod or a C function's callback), no timer, cancelled).
 * A primitive whose request lives in a userdata keeps that userdata on the task's
 * stack (a pending task is never collected), or owns malloc'd state and frees it in
 * push/cancel (or in a libuv close callback started there).
 */
#ifndef SPGB_SCHED_H
#define SPGB_SCHED_H

#include <lua.h>
#include <stdbool.h>
#include <uv.h>

typedef struct spgb_task spgb_task;
typedef struct spgb_op spgb_op;

struct spgb_op {
    /* Set by the primitive before spgb_op_wait. */
    int (*push)(lua_State *L, spgb_op *op); /* results onto the task's stack */
    void (*cancel)(spgb_op *op);            /* abandon: stop I/O, release */
    const char *name;                       /* for "<name>: timeout" */
    bool deadline_completes;                /* the timeout is success (sleep) */
    /* Private to the scheduler. */
    spgb_task *task;
    uv_timer_t *timer;
    int state;
};

/* The scheduler's loop. Valid after spgb_sched_init. */
uv_loop_t *spgb_loop(void);

/* Create the scheduler on L's main state (registers the `task` module preload). */
int spgb_sched_init(lua_State *L);
/* Close every handle, cancel every task, run the loop until it is empty. */
void spgb_sched_shutdown(lua_State *L);

/* The task whose thread is L; raises "<what> needs a task" if L is not one. */
spgb_task *spgb_task_current(lua_State *L, const char *what);
/* Same, but returns NULL instead of raising. */
spgb_task *spgb_task_of(lua_State *L);

/* Yield the current task until op completes, the timeout (seconds; <= 0: none)
 * passes, or the task is cancelled. Must be the C function's return expression:
 *     return spgb_op_wait(L, &req->op, timeout);                                 */
int spgb_op_wait(lua_State *L, spgb_op *op, double timeout);
/* As spgb_op_wait with the primitive's own continuation k (which must call
 * spgb_op_resumed(L) first; it finds the op's pushed results on top of its
 * frame). */
int spgb_op_waitk(lua_State *L, spgb_op *op, double timeout, lua_KFunction k, lua_KContext ctx);
/* Raise "cancelled" if the task was cancelled while waiting. */
void spgb_op_resumed(lua_State *L);
/* Mark op complete from an I/O callback. Safe to call once; never resumes Lua. */
void spgb_op_done(spgb_op *op);

/* Spawn a task: L's stack holds the function then nargs arguments (all popped).
 * The new task is a child of L's task (if any) and starts on the next scheduler
 * step. name may be NULL. Pushes the task's handle. */
spgb_task *spgb_task_spawn(lua_State *L, int nargs, const char *name);

/* Mark t as observed: its caller reports its failure (the REPL prints the error), so
 * the scheduler does not also log it as task_failed. Call before it finishes. */
void spgb_task_observe(spgb_task *t);

/* Run the loop until `t` finishes; returns its exit status (0 ok, 1 error, or the
 * integer the root function returned). Used by the CLI for the root task and the REPL. */
int spgb_sched_run_until(spgb_task *t);
/* Cancel a task (and the tasks it spawned). Safe from any context. */
void spgb_task_cancel(spgb_task *t);
bool spgb_task_finished(spgb_task *t);
/* Push the result table {ok=, n=, traceback=, ...} of the finished task whose
 * handle is at idx (nil while it runs). */
void spgb_task_push_result(lua_State *L, int idx);
/* The root task's failure is reported by the host, not logged. */
void spgb_task_set_root(spgb_task *t);

/* After lua_close: close handles units still own, run the loop empty, close it. */
void spgb_sched_close_loop(void);
/* Register fn to run at spgb_sched_close_loop, before the remaining handles are
 * closed, so a unit closes its own handles with callbacks that free its memory. */
void spgb_sched_at_close(void (*fn)(void));

/* "TERM" / "SIGTERM" -> SIGTERM (0 when unknown); the reverse. */
int spgb_signal_number(const char *name);
const char *spgb_signal_name(int num);

/* Monotonic time in seconds (from uv_hrtime). */
double spgb_now(void);

/* The module's C core, preloaded as "task.core"; its Lua half is lua/task.lua. */
int luaopen_task_core(lua_State *L);

#endif
