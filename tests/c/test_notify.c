/* Unit tests of the sd_notify protocol (src/notify.c) against datagram sockets the
 * test binds itself, as systemd does: a file path and an abstract name; and of the
 * Lua binding's handling of $NOTIFY_SOCKET. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "notify.h"

typedef struct {
    int fd;
    char name[108]; /* as $NOTIFY_SOCKET spells it */
    char dir[64];
} listener;

/* Bind a datagram socket: a file in a fresh temporary folder, or an abstract name. */
static int setup_listener(void **state, int abstract)
{
    listener *l = calloc(1, sizeof *l);
    assert_non_null(l);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    socklen_t salen;
    if (abstract) {
        snprintf(l->name, sizeof l->name, "@spgb-test-notify-%ld", (long)getpid());
        memcpy(sa.sun_path + 1, l->name + 1, strlen(l->name) - 1);
        salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(l->name));
    } else {
        snprintf(l->dir, sizeof l->dir, "/tmp/spgb-notify-XXXXXX");
        assert_non_null(mkdtemp(l->dir));
        snprintf(l->name, sizeof l->name, "%s/notify", l->dir);
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", l->name);
        salen = sizeof sa;
    }
    l->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(l->fd >= 0);
    assert_int_equal(0, bind(l->fd, (struct sockaddr *)&sa, salen));
    *state = l;
    return 0;
}

static int setup_path(void **state)
{
    return setup_listener(state, 0);
}

static int setup_abstract(void **state)
{
    return setup_listener(state, 1);
}

static int teardown_listener(void **state)
{
    listener *l = *state;
    assert_int_equal(0, close(l->fd));
    if (l->dir[0]) {
        assert_int_equal(0, unlink(l->name));
        assert_int_equal(0, rmdir(l->dir));
    }
    free(l);
    return 0;
}

/* The next datagram, NUL-terminated, or fail when none is queued. */
static void receive(listener *l, char *buf, size_t size)
{
    ssize_t n = recv(l->fd, buf, size - 1, MSG_DONTWAIT);
    assert_true(n >= 0);
    buf[n] = 0;
}

static void assert_queue_empty(listener *l)
{
    char c;
    assert_int_equal(-1, recv(l->fd, &c, 1, MSG_DONTWAIT));
    assert_int_equal(EAGAIN, errno);
}

static void test_send(void **state)
{
    listener *l = *state;
    int errnum;
    char err[128], buf[256];
    const char *msg = "READY=1\nSTATUS=serving";
    assert_int_equal(1, spgb_notify_send(l->name, msg, strlen(msg), &errnum, err, sizeof err));
    receive(l, buf, sizeof buf);
    assert_string_equal(msg, buf);
    assert_int_equal(1, spgb_notify_send(l->name, "STOPPING=1", 10, &errnum, err, sizeof err));
    receive(l, buf, sizeof buf);
    assert_string_equal("STOPPING=1", buf);
    assert_queue_empty(l);
}

static void test_unset(void **state)
{
    (void)state;
    int errnum = -1;
    char err[64] = "x";
    assert_int_equal(0, spgb_notify_send(NULL, "READY=1", 7, &errnum, err, sizeof err));
    assert_int_equal(0, spgb_notify_send("", "READY=1", 7, &errnum, err, sizeof err));
    assert_int_equal(0, errnum);
    assert_string_equal("", err);
}

static void test_errors(void **state)
{
    (void)state;
    int errnum;
    char err[160];
    assert_int_equal(-1, spgb_notify_send("relative/sock", "READY=1", 7, &errnum, err, sizeof err));
    assert_int_equal(0, errnum);
    assert_non_null(strstr(err, "not an absolute path"));
    char long_name[200];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[0] = '/';
    long_name[sizeof long_name - 1] = 0;
    assert_int_equal(-1, spgb_notify_send(long_name, "READY=1", 7, &errnum, err, sizeof err));
    assert_non_null(strstr(err, "longer than"));
    /* Nobody bound there: the errno comes back for the caller's code. */
    assert_int_equal(
        -1, spgb_notify_send("/nonexistent/spgb/notify", "READY=1", 7, &errnum, err, sizeof err));
    assert_int_equal(ENOENT, errnum);
    assert_non_null(strstr(err, "/nonexistent/spgb/notify"));
}

/* The Lua module: takes $NOTIFY_SOCKET out of the environment at its first open and
 * sends to it; the message arrives unchanged. */
static void test_lua(void **state)
{
    listener *l = *state;
    assert_int_equal(0, setenv("NOTIFY_SOCKET", l->name, 1));
    lua_State *L = luaL_newstate();
    assert_non_null(L);
    luaL_openlibs(L);
    luaL_requiref(L, "notify", luaopen_notify, 0);
    lua_setglobal(L, "notify");
    assert_null(getenv("NOTIFY_SOCKET"));
    const char *chunk = "local ok, err, code = notify.send('READY=1')\n"
                        "assert(ok == true, err)\n"
                        "assert(notify.socket() == ...)\n"
                        "assert(not pcall(notify.send, ''))\n"
                        "assert(not pcall(notify.send))\n";
    assert_int_equal(LUA_OK, luaL_loadstring(L, chunk));
    lua_pushstring(L, l->name);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    char buf[64];
    receive(l, buf, sizeof buf);
    assert_string_equal("READY=1", buf);
    assert_queue_empty(l);
    lua_close(L);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_send, setup_path, teardown_listener),
        cmocka_unit_test_setup_teardown(test_send, setup_abstract, teardown_listener),
        cmocka_unit_test(test_unset),
        cmocka_unit_test(test_errors),
        cmocka_unit_test_setup_teardown(test_lua, setup_path, teardown_listener),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
