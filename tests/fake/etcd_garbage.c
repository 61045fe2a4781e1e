/*
 * etcd_garbage: a tiny HTTP server that answers etcd gateway requests with
 * garbage, for tests/lua/etcd_spec.lua. Usage: etcd_garbage PORT (listens on
 * 127.0.0.1). The first path segment picks the misbehaviour; every connection is
 * handled by a forked child and closed after one response.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void out(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void respond(int fd, const char *status, const char *body)
{
    char head[256];
    snprintf(head, sizeof head,
             "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n",
             status, strlen(body));
    out(fd, head);
    out(fd, body);
}

static void stream_head(int fd)
{
    out(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n");
}

static const char created[] = "{\"result\":{\"header\":{\"revision\":\"1\"},\"created\":true}}\n";

static void serve(int fd)
{
    char req[65536];
    size_t len = 0;
    while (len < sizeof req - 1) {
        ssize_t r = read(fd, req + len, sizeof req - 1 - len);
        if (r <= 0)
            return;
        len += (size_t)r;
        req[len] = 0;
        char *end = strstr(req, "\r\n\r\n");
        if (end) {
            char *cl = strcasestr(req, "Content-Length:");
            size_t want = cl ? strtoul(cl + 15, NULL, 10) : 0;
            if (len >= (size_t)(end + 4 - req) + want)
                break;
        }
    }
    char path[256] = "";
    sscanf(req, "%*s %255s", path);
    if (strncmp(path, "/nonjson/", 9) == 0)
        respond(fd, "200 OK", "hello, this is not JSON");
    else if (strncmp(path, "/html500/", 9) == 0)
        respond(fd, "500 Internal Server Error", "<html><body>oops</body></html>");
    else if (strncmp(path, "/etcderr/", 9) == 0)
        respond(fd, "404 Not Found",
                "{\"error\":\"etcdserver: requested lease not found\",\"message\":"
                "\"etcdserver: requested lease not found\",\"code\":5}");
    else if (strncmp(path, "/shape/", 7) == 0)
        respond(fd, "200 OK", "{\"header\":{\"revision\":\"oops\"},\"kvs\":5}");
    else if (strncmp(path, "/badb64/", 8) == 0)
        respond(fd, "200 OK", "{\"header\":{\"revision\":\"3\"},\"kvs\":[{\"key\":\"!!!*\"}]}");
    else if (strncmp(path, "/null/", 6) == 0)
        respond(fd, "200 OK", "null");
    else if (strncmp(path, "/truncated/", 11) == 0) {
        out(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n"
                "Connection: close\r\n\r\n{\"header\":{\"rev");
    } else if (strncmp(path, "/hang/", 6) == 0) {
        sleep(10);
    } else if (strncmp(path, "/watchgarbage/", 14) == 0) {
        stream_head(fd);
        out(fd, created);
        usleep(100000);
        out(fd, "garbage!!\n");
        usleep(100000);
    } else if (strncmp(path, "/watchtrunc/", 12) == 0) {
        stream_head(fd);
        out(fd, created);
        usleep(100000);
        out(fd, "{\"result\":{\"events\":[{\"kv\":");
        usleep(100000);
    } else if (strncmp(path, "/watchbadevent/", 15) == 0) {
        stream_head(fd);
        out(fd, created);
        out(fd, "{\"result\":{\"header\":{\"revision\":\"2\"},\"events\":[{\"type\":\"WEIRD\","
                "\"kv\":{\"key\":\"YQ==\"}}]}}\n");
        usleep(200000);
    } else {
        respond(fd, "404 Not Found", "{}");
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    signal(SIGCHLD, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 64) != 0) {
        perror("etcd_garbage");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        int fd = accept(s, NULL, NULL);
        if (fd < 0)
            continue;
        pid_t pid = fork();
        if (pid == 0) {
            close(s);
            serve(fd);
            close(fd);
            _exit(0);
        }
        close(fd);
    }
}
