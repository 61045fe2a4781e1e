#include "notify.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int spgb_notify_send(const char *socket_name, const char *msg, size_t len, int *errnum, char *err,
                     size_t errlen)
{
    *errnum = 0;
    if (errlen)
        err[0] = 0;
    if (!socket_name || !socket_name[0])
        return 0;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t nlen = strlen(socket_name);
    if (socket_name[0] != '/' && socket_name[0] != '@') {
        snprintf(err, errlen, "NOTIFY_SOCKET %s: not an absolute path nor an @abstract name",
                 socket_name);
        return -1;
    }
    /* A path needs its terminating NUL inside sun_path; an abstract name does not
     * (its length is the address length), but gets its leading NUL instead of '@'. */
    if (nlen >= sizeof sa.sun_path) {
        snprintf(err, errlen, "NOTIFY_SOCKET: name longer than %zu bytes", sizeof sa.sun_path - 1);
        return -1;
    }
    memcpy(sa.sun_path, socket_name, nlen);
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + nlen);
    if (socket_name[0] == '@')
        sa.sun_path[0] = 0;
    else
        salen++; /* the NUL, as sd_notify counts it */

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *errnum = errno;
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    ssize_t n = sendto(fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&sa, salen);
    int saved = errno;
    if (close(fd) != 0 && n >= 0) {
        saved = errno;
        n = -1;
    }
    if (n < 0) {
        *errnum = saved;
        snprintf(err, errlen, "send to %s: %s", socket_name, strerror(saved));
        return -1;
    }
    if ((size_t)n != len) {
        snprintf(err, errlen, "send to %s: short datagram (%zd of %zu bytes)", socket_name, n, len);
        return -1;
    }
    return 1;
}

/* $NOTIFY_SOCKET as spgb_notify_init found it; the environment no longer
 * holds it. Process-wide, as the environment is. */
static char socket_name[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
static bool socket_read;
static bool socket_too_long;

void spgb_notify_init(void)
{
    if (socket_read)
        return;
    socket_read = true;
    const char *v = getenv("NOTIFY_SOCKET");
    if (v) {
        if (strlen(v) >= sizeof socket_name)
            socket_too_long = true;
        else
            snprintf(socket_name, sizeof socket_name, "%s", v);
        /* Only fails on an invalid name; "NOTIFY_SOCKET" is valid. */
        (void)unsetenv("NOTIFY_SOCKET");
    }
}

/* notify.send(message) -> true | false | nil, err, code. Any context (task or not);
 * never yields, never blocks. message: NAME=value lines, e.g. "READY=1" or
 * "STOPPING=1\nSTATUS=draining". true: sent; false: no $NOTIFY_SOCKET (not run by a
 * service manager that wants it: nothing to do). nil, err, code on a failed send;
 * code is the errno name ("ECONNREFUSED", "EAGAIN", ...) or "EINVAL" for an unusable
 * $NOTIFY_SOCKET. Raises when message is not a non-empty string. */
static int l_send(lua_State *L)
{
    size_t len;
    const char *msg = luaL_checklstring(L, 1, &len);
    luaL_argcheck(L, len > 0, 1, "empty message");
    if (socket_too_long) {
        lua_pushnil(L);
        lua_pushliteral(L, "notify.send: NOTIFY_SOCKET is too long for a unix socket address");
        lua_pushliteral(L, "EINVAL");
        return 3;
    }
    int errnum;
    char err[256];
    int rc = spgb_notify_send(socket_name, msg, len, &errnum, err, sizeof err);
    if (rc >= 0) {
        lua_pushboolean(L, rc == 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushfstring(L, "notify.send: %s", err);
    const char *code = errnum ? strerrorname_np(errnum) : "EINVAL";
    lua_pushstring(L, code ? code : "errno");
    return 3;
}

/* notify.socket() -> the $NOTIFY_SOCKET this process was started with, or nil. Any
 * context; does not yield. */
static int l_socket(lua_State *L)
{
    if (socket_name[0])
        lua_pushstring(L, socket_name);
    else
        lua_pushnil(L);
    return 1;
}

int luaopen_notify(lua_State *L)
{
    spgb_notify_init();
    static const luaL_Reg fns[] = {{"send", l_send}, {"socket", l_socket}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
