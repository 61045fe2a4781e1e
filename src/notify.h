/*
 * notify: the service manager's readiness protocol (sd_notify(3)), without
 * libsystemd: one datagram of NAME=value lines ("READY=1", "STOPPING=1",
 * "STATUS=...") sent to the AF_UNIX datagram socket named by $NOTIFY_SOCKET, a file
 * path or an abstract name written with a leading '@'. Provides the Lua module
 * `notify`. Uses: POSIX sockets, Lua 5.4.
 *
 * systemd learns the sender from the socket's credentials (SO_PASSCRED on its side),
 * so the message carries nothing but the text. Sending never blocks and never
 * yields: a full receive queue is an error (EAGAIN), not a wait.
 */
#ifndef SPGB_NOTIFY_H
#define SPGB_NOTIFY_H

#include <lua.h>
#include <stddef.h>

/* Send msg (len bytes, need not be NUL-terminated) to the socket named socket_name
 * (the value of $NOTIFY_SOCKET). Returns 1 when sent, 0 when socket_name is NULL or
 * empty (no service manager listening: nothing to do), -1 on failure with a message
 * in err (errlen bytes, always NUL-terminated) and the errno value in *errnum (0 when
 * the address itself is invalid). Opens and closes its own socket; any thread. */
int spgb_notify_send(const char *socket_name, const char *msg, size_t len, int *errnum, char *err,
                     size_t errlen);

/* Take $NOTIFY_SOCKET out of the environment and keep it for notify.send, as
 * sd_notify(unset_environment=1) does: children (PgBouncer speaks this protocol too)
 * must not report readiness in our name. Idempotent; the host calls it before any
 * script runs, so no child ever inherits the variable. Not thread-safe (setenv). */
void spgb_notify_init(void);

/* The Lua module (calls spgb_notify_init). */
int luaopen_notify(lua_State *L);

#endif
