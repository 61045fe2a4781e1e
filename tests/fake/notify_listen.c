/* A service manager's end of the readiness protocol, for tests/lua/notify_spec.lua:
 * binds a unix datagram socket as systemd does ($NOTIFY_SOCKET), with SO_PASSCRED so
 * each datagram carries its sender's pid, and prints one line per datagram:
 *
 *   pid=<sender> api=<up|down> <message, newlines as ';'>
 *
 * api: whether a TCP connect to 127.0.0.1:PORT succeeded the moment the datagram
 * arrived (READY=1 must mean "accepting"). Exits 0 after a STOPPING=1 datagram, 1 after
 * TIMEOUT seconds without one.
 *
 *   notify_listen SOCKET_PATH PORT TIMEOUT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int api_up(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0;
    close(fd);
    return ok;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: notify_listen SOCKET_PATH PORT TIMEOUT\n");
        return 2;
    }
    int port = atoi(argv[2]);
    time_t deadline = time(NULL) + atoi(argv[3]);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", argv[1]);
    int one = 1;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
        perror("notify_listen: socket");
        return 2;
    }
    printf("bound\n");
    fflush(stdout);
    while (time(NULL) < deadline) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 200) <= 0)
            continue;
        char buf[4096];
        char ctl[CMSG_SPACE(sizeof(struct ucred))];
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf - 1};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
        ssize_t n = recvmsg(fd, &mh, 0);
        if (n < 0) {
            perror("notify_listen: recvmsg");
            return 2;
        }
        int up = api_up(port);
        buf[n] = 0;
        long pid = -1;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
                struct ucred cred;
                memcpy(&cred, CMSG_DATA(c), sizeof cred);
                pid = (long)cred.pid;
            }
        for (char *p = buf; *p; p++)
            if (*p == '\n')
                *p = ';';
        printf("pid=%ld api=%s %s\n", pid, up ? "up" : "down", buf);
        fflush(stdout);
        if (strncmp(buf, "STOPPING=1", 10) == 0 || strstr(buf, ";STOPPING=1"))
            return 0;
    }
    return 1;
}
