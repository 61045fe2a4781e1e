#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <lauxlib.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sched.h"

#define PROC_MT "spgb.proc"

extern char **environ;

typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} buf;

/* C owns this; the Lua userdata holds a pointer. Freed when the userdata is gone
 * and every libuv handle has closed (refs counts both). */
typedef struct proc {
    uv_process_t h;
    uv_pipe_t pipes[3]; /* stdin, stdout, stderr when piped */
    bool piped[3];
    buf out[3];
    char *input;
    size_t input_len;
    uv_write_t wreq;
    int refs;
    int open_pipes;
    struct proc *next, *prev; /* every proc with open handles, for shutdown */
    bool exited;
    int64_t status;
    int termsig;
    int pid;
    spgb_op op; /* one task may wait at a time */
    bool waiting;
} proc;

static proc *procs;

static void unlink_proc(proc *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else if (procs == p)
        procs = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->next = p->prev = NULL;
}

static void unref(proc *p)
{
    if (--p->refs > 0)
        return;
    unlink_proc(p);
    for (int i = 0; i < 3; i++)
        free(p->out[i].p);
    free(p->input);
    free(p);
}

static void maybe_done(proc *p)
{
    if (p->exited && p->open_pipes == 0 && p->waiting) {
        p->waiting = false;
        spgb_op_done(&p->op);
    }
}

static void handle_closed(uv_handle_t *h)
{
    unref(h->data);
}

/* Undo a spawn that failed before uv_spawn: close the files opened for the child and
 * the pipes made so far. The pipes live inside p, so p is freed by the last pipe's
 * close callback (at once when there is none), never before. */
static void discard(proc *p, const int files[3])
{
    p->refs = 1;
    for (int j = 0; j < 3; j++) {
        if (files[j] >= 0)
            close(files[j]);
        if (p->piped[j]) {
            p->refs++;
            uv_close((uv_handle_t *)&p->pipes[j], handle_closed);
        }
    }
    unref(p);
}

static void on_exit_cb(uv_process_t *h, int64_t status, int termsig)
{
    proc *p = h->data;
    p->exited = true;
    p->status = status;
    p->termsig = termsig;
    uv_close((uv_handle_t *)h, handle_closed);
    maybe_done(p);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    proc *p = h->data;
    int i = (uv_pipe_t *)h == &p->pipes[1] ? 1 : 2;
    buf *o = &p->out[i];
    if (o->cap - o->len < 16384) {
        size_t cap = o->cap ? o->cap * 2 : 16384 * 2;
        char *np = realloc(o->p, cap);
        if (!np) {
            o->oom = true;
            b->base = NULL;
            b->len = 0;
            return;
        }
        o->p = np;
        o->cap = cap;
    }
    (void)suggested;
    b->base = o->p + o->len;
    b->len = o->cap - o->len;
}

static void pipe_closed(uv_handle_t *h)
{
    proc *p = h->data;
    p->open_pipes--;
    maybe_done(p);
    unref(p);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    proc *p = s->data;
    int i = (uv_pipe_t *)s == &p->pipes[1] ? 1 : 2;
    (void)b;
    if (n > 0) {
        p->out[i].len += (size_t)n;
        return;
    }
    if (n < 0) { /* EOF or error: either way this stream is finished */
        uv_read_stop(s);
        if (!uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, pipe_closed);
    }
}

static void write_cb(uv_write_t *req, int status)
{
    proc *p = req->data;
    (void)status;
    if (!uv_is_closing((uv_handle_t *)&p->pipes[0]))
        uv_close((uv_handle_t *)&p->pipes[0], pipe_closed);
}

static int push_status(lua_State *L, proc *p)
{
    if (p->termsig) {
        lua_pushnil(L);
        lua_pushstring(L, spgb_signal_name(p->termsig));
        return 2;
    }
    lua_pushinteger(L, p->status);
    return 1;
}

static int wait_push(lua_State *L, spgb_op *op)
{
    proc *p = (proc *)((char *)op - offsetof(proc, op));
    return push_status(L, p);
}

static void wait_cancel(spgb_op *op)
{
    proc *p = (proc *)((char *)op - offsetof(proc, op));
    p->waiting = false; /* the process goes on; only the wait is abandoned */
}

static proc *check_proc(lua_State *L)
{
    proc **ud = luaL_checkudata(L, 1, PROC_MT);
    return *ud;
}

/* Collect a string-array field or the array part of t into a NULL-terminated
 * vector whose strings stay anchored in t. */
static const char **strings(lua_State *L, int t, int from, const char *what)
{
    int n = (int)lua_rawlen(L, t);
    const char **v = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 2), 0);
    int k = 0;
    for (int i = from; i <= n; i++) {
        lua_rawgeti(L, t, i);
        if (!lua_isstring(L, -1))
            luaL_error(L, "proc.spawn: %s[%d] must be a string", what, i);
        v[k++] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    v[k] = NULL;
    return v;
}

static const char *opt_string(lua_State *L, int t, const char *k, const char *def)
{
    lua_getfield(L, t, k);
    const char *s = lua_isnil(L, -1) ? def : luaL_checkstring(L, -1);
    lua_pop(L, 1); /* strings from t's fields stay anchored by t */
    return s;
}

/* proc.spawn{argv..., env=, clear_env=, cwd=, user=, stdin=, stdout=, stderr=} -> p
 * Any context; does not yield. argv[1] is looked up in PATH; no shell is used.
 * env: table of extra NAME=value (merged with ours unless clear_env). user: run as
 * that user (only when we are root). stdin: "inherit" (default), "null", or a
 * string written to the child. stdout/stderr: "inherit" (default), "null",
 * "capture" (read with p:output()) or "file:PATH" (appended to PATH, created 0600
 * and owned by us, the child writing through our descriptor). Returns nil, err when the
 * program cannot be started (for example not found). */
static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    const char **argv = strings(L, 1, 1, "argv");
    if (!argv[0])
        return luaL_argerror(L, 1, "argv is empty");
    const char *cwd = opt_string(L, 1, "cwd", NULL);
    const char *user = opt_string(L, 1, "user", NULL);
    const char *modes[3] = {opt_string(L, 1, "stdin", "inherit"),
                            opt_string(L, 1, "stdout", "inherit"),
                            opt_string(L, 1, "stderr", "inherit")};
    lua_getfield(L, 1, "clear_env");
    bool clear_env = lua_toboolean(L, -1);
    lua_pop(L, 1);

    /* Environment: ours (unless clear_env) with env's entries replacing or adding. */
    const char **envp = NULL;
    lua_getfield(L, 1, "env");
    int envt = lua_gettop(L);
    if (!lua_isnil(L, envt) || clear_env) {
        int n = 0;
        if (!clear_env)
            while (environ[n])
                n++;
        int extra = 0;
        if (lua_istable(L, envt)) {
            lua_pushnil(L);
            while (lua_next(L, envt)) {
                extra++;
                lua_pop(L, 1);
            }
        }
        envp = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + extra + 1), 0);
        /* NAME=value strings are anchored in their own table: adding keys to env
         * while lua_next walks it would be undefined. */
        lua_createtable(L, extra, 0);
        int anchor = lua_gettop(L);
        int k = 0;
        if (lua_istable(L, envt)) {
            lua_pushnil(L);
            while (lua_next(L, envt) && k < extra) {
                if (lua_type(L, -2) != LUA_TSTRING)
                    return luaL_error(L, "proc.spawn: env keys must be strings");
                const char *name = lua_tostring(L, -2);
                const char *val = luaL_tolstring(L, -1, NULL);
                const char *kv = lua_pushfstring(L, "%s=%s", name, val);
                envp[k++] = kv;
                lua_rawseti(L, anchor, k); /* pops kv */
                lua_pop(L, 2);             /* tolstring result, value */
            }
        }
        for (int i = 0; i < n; i++) {
            const char *eq = strchr(environ[i], '=');
            bool replaced = false;
            for (int j = 0; eq && j < k && !replaced; j++)
                replaced = strncmp(envp[j], environ[i], (size_t)(eq - environ[i] + 1)) == 0;
            if (!replaced)
                envp[k++] = environ[i];
        }
        envp[k] = NULL;
    }

    proc *p = calloc(1, sizeof *p);
    if (!p)
        return luaL_error(L, "proc.spawn: out of memory");
    p->h.data = p;
    uv_stdio_container_t stdio[3];
    int files[3] = {-1, -1, -1};
    for (int i = 0; i < 3; i++) {
        if (i > 0 && strncmp(modes[i], "file:", 5) == 0) {
            /* Append to a file (daemon logs); the child gets its own copy of the fd.
             * A new one is 0600 (umask applies): logs can carry connection details. */
            files[i] = open(modes[i] + 5, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
            if (files[i] < 0) {
                int e = errno;
                discard(p, files);
                lua_pushnil(L);
                lua_pushfstring(L, "proc.spawn: %s: %s", modes[i] + 5, strerror(e));
                return 2;
            }
            stdio[i].flags = UV_INHERIT_FD;
            stdio[i].data.fd = files[i];
        } else if (strcmp(modes[i], "inherit") == 0) {
            stdio[i].flags = UV_INHERIT_FD;
            stdio[i].data.fd = i;
        } else if (strcmp(modes[i], "null") == 0) {
            stdio[i].flags = UV_IGNORE;
        } else if ((i > 0 && strcmp(modes[i], "capture") == 0) || i == 0) {
            if (i == 0) {
                lua_getfield(L, 1, "stdin");
                size_t len;
                const char *s = lua_tolstring(L, -1, &len);
                p->input = malloc(len ? len : 1);
                if (!p->input) {
                    discard(p, files);
                    return luaL_error(L, "proc.spawn: out of memory");
                }
                memcpy(p->input, s, len);
                p->input_len = len;
                lua_pop(L, 1);
            }
            int rc = uv_pipe_init(spgb_loop(), &p->pipes[i], 0);
            if (rc != 0) {
                discard(p, files);
                return luaL_error(L, "proc.spawn: %s", uv_strerror(rc));
            }
            p->pipes[i].data = p;
            p->piped[i] = true;
            stdio[i].flags = UV_CREATE_PIPE | (i == 0 ? UV_READABLE_PIPE : UV_WRITABLE_PIPE);
            stdio[i].data.stream = (uv_stream_t *)&p->pipes[i];
        } else {
            discard(p, files);
            return luaL_error(L, "proc.spawn: bad %s mode '%s'", i == 1 ? "stdout" : "stderr",
                              modes[i]);
        }
    }
    uv_process_options_t o;
    memset(&o, 0, sizeof o);
    o.file = argv[0];
    o.args = (char **)argv;
    o.env = (char **)envp;
    o.cwd = cwd;
    o.exit_cb = on_exit_cb;
    o.stdio = stdio;
    o.stdio_count = 3;
    if (user && geteuid() == 0) {
        struct passwd *pw = getpwnam(user);
        if (!pw) {
            discard(p, files);
            lua_pushnil(L);
            lua_pushfstring(L, "proc.spawn: no user %s", user);
            return 2;
        }
        o.uid = pw->pw_uid;
        o.gid = pw->pw_gid;
        o.flags |= UV_PROCESS_SETUID | UV_PROCESS_SETGID;
    }
    int rc = uv_spawn(spgb_loop(), &p->h, &o);
    for (int i = 0; i < 3; i++)
        if (files[i] >= 0)
            close(files[i]);
    if (rc != 0) {
        /* libuv requires closing the process handle even when spawn failed. */
        p->refs = 1;
        for (int j = 0; j < 3; j++)
            if (p->piped[j]) {
                p->refs++;
                uv_close((uv_handle_t *)&p->pipes[j], handle_closed);
            }
        uv_close((uv_handle_t *)&p->h, handle_closed);
        lua_pushnil(L);
        lua_pushfstring(L, "proc.spawn: %s: %s", argv[0], uv_strerror(rc));
        lua_pushstring(L, uv_err_name(rc));
        return 3;
    }
    p->pid = p->h.pid;
    p->refs = 2; /* the userdata and the process handle */
    p->next = procs;
    if (procs)
        procs->prev = p;
    procs = p;
    for (int i = 0; i < 3; i++) {
        if (!p->piped[i])
            continue;
        p->refs++;
        p->open_pipes++;
        if (i == 0) {
            uv_buf_t b = uv_buf_init(p->input, (unsigned)p->input_len);
            p->wreq.data = p;
            if (uv_write(&p->wreq, (uv_stream_t *)&p->pipes[0], &b, 1, write_cb) != 0)
                uv_close((uv_handle_t *)&p->pipes[0], pipe_closed);
        } else if (uv_read_start((uv_stream_t *)&p->pipes[i], alloc_cb, read_cb) != 0) {
            uv_close((uv_handle_t *)&p->pipes[i], pipe_closed);
        }
    }
    proc **ud = lua_newuserdatauv(L, sizeof *ud, 0);
    *ud = p;
    luaL_setmetatable(L, PROC_MT);
    return 1;
}

/* p:wait([timeout]) -> exit code | nil, signal name | nil, "proc.wait: timeout",
 * "timeout". Task only; yields until the child exits and its captured output is
 * read. One task may wait on p at a time. A timeout or cancel abandons the wait
 * only: the child is the caller's to stop (proc.run does; supervise drains first). */
static int l_wait(lua_State *L)
{
    proc *p = check_proc(L);
    lua_Number timeout = luaL_optnumber(L, 2, 0);
    spgb_task_current(L, "proc.wait");
    if (p->exited && p->open_pipes == 0)
        return push_status(L, p);
    if (p->waiting)
        return luaL_error(L, "proc.wait: another task is already waiting for pid %d", p->pid);
    memset(&p->op, 0, sizeof p->op);
    p->op.name = "proc.wait";
    p->op.push = wait_push;
    p->op.cancel = wait_cancel;
    p->waiting = true;
    return spgb_op_wait(L, &p->op, timeout);
}

/* p:signal(name|number) -> true | nil, err. Any context; does not yield. Sending to
 * an exited child returns nil, "process has exited". */
static int l_signal(lua_State *L)
{
    proc *p = check_proc(L);
    int sig =
        lua_isinteger(L, 2) ? (int)lua_tointeger(L, 2) : spgb_signal_number(luaL_checkstring(L, 2));
    if (!sig && !lua_isinteger(L, 2)) {
        const char *n = lua_tostring(L, 2);
        if (strcmp(n, "KILL") == 0 || strcmp(n, "SIGKILL") == 0)
            sig = SIGKILL;
        else if (strcmp(n, "STOP") == 0 || strcmp(n, "SIGSTOP") == 0)
            sig = SIGSTOP;
        else if (strcmp(n, "CONT") == 0 || strcmp(n, "SIGCONT") == 0)
            sig = SIGCONT;
        else
            return luaL_argerror(L, 2, "unknown signal");
    }
    if (p->exited) {
        lua_pushnil(L);
        lua_pushliteral(L, "process has exited");
        return 2;
    }
    int rc = uv_process_kill(&p->h, sig);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushstring(L, uv_strerror(rc));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* p:pid() -> the child's process id. */
static int l_pid(lua_State *L)
{
    lua_pushinteger(L, check_proc(L)->pid);
    return 1;
}

/* p:running() -> false once the child has exited. */
static int l_running(lua_State *L)
{
    lua_pushboolean(L, !check_proc(L)->exited);
    return 1;
}

/* p:output() -> stdout, stderr captured so far ("" when not captured). */
static int l_output(lua_State *L)
{
    proc *p = check_proc(L);
    lua_pushlstring(L, p->out[1].p ? p->out[1].p : "", p->out[1].len);
    lua_pushlstring(L, p->out[2].p ? p->out[2].p : "", p->out[2].len);
    return 2;
}

static int l_gc(lua_State *L)
{
    proc **ud = luaL_checkudata(L, 1, PROC_MT);
    if (*ud) {
        proc *p = *ud;
        *ud = NULL;
        if (p->waiting) /* only at shutdown: a waiting task anchors its proc */
            p->waiting = false;
        unref(p);
    }
    return 0;
}

static int l_tostring(lua_State *L)
{
    proc *p = check_proc(L);
    lua_pushfstring(L, "proc: pid %d (%s)", p->pid, p->exited ? "exited" : "running");
    return 1;
}

/* At shutdown: close our handles with the callbacks that free each proc (children
 * keep running; only our handles on them go). */
static void close_all(void)
{
    for (proc *p = procs; p; p = p->next) {
        if (!uv_is_closing((uv_handle_t *)&p->h))
            uv_close((uv_handle_t *)&p->h, handle_closed);
        for (int i = 0; i < 3; i++)
            if (p->piped[i] && !uv_is_closing((uv_handle_t *)&p->pipes[i]))
                uv_close((uv_handle_t *)&p->pipes[i], pipe_closed);
    }
}

/* The C core of the proc module; lua/proc.lua adds proc.run. */
int luaopen_proc_core(lua_State *L)
{
    spgb_sched_at_close(close_all);
    static const luaL_Reg methods[] = {
        {"wait", l_wait},       {"signal", l_signal}, {"pid", l_pid},
        {"running", l_running}, {"output", l_output}, {NULL, NULL},
    };
    if (luaL_newmetatable(L, PROC_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"spawn", l_spawn}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
