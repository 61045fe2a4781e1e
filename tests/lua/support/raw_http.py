#!/usr/bin/env python3
"""A scripted HTTP/1.1 server for hc_spec: answers each path with bytes written by
hand (chunked bodies, bodies ended by close, interim 100 responses, malformed
heads, a server that closes an idle kept-alive connection) that a real server
will not send on demand. Usage: raw_http.py HOST PORT. Prints "ready" once it
listens; serves until killed. Every response carries X-Conn: the number of the
connection it came on (1, 2, ...), so a spec can tell a reused connection."""
import socket
import sys
import threading
import time

HOST, PORT = sys.argv[1], int(sys.argv[2])
counter = [0]
lock = threading.Lock()


def read_request(f):
    line = f.readline()
    if not line:
        return None, None
    length = 0
    while True:
        h = f.readline()
        if not h or h in (b"\r\n", b"\n"):
            break
        name, _, value = h.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    path = line.split()[1].decode()
    if path == "/late-read":
        # a slow reader: the client's socket fills, and the rest of its request must wait
        time.sleep(0.5)
    body = f.read(length) if length else b""
    return path, body


def serve(conn, n):
    f = conn.makefile("rb")
    while True:
        path, body = read_request(f)
        if path is None:
            break
        x = b"X-Conn: %d\r\n" % n
        if path == "/chunked":
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + x + b"Transfer-Encoding: chunked\r\n\r\n"
                         b"6\r\nhello \r\n5;ext=1\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")
        elif path == "/close":
            conn.sendall(b"HTTP/1.0 200 OK\r\n" + x + b"\r\nuntil the end")
            break
        elif path == "/continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n" + x +
                         b"Content-Length: 2\r\n\r\nok")
        elif path == "/bad":
            conn.sendall(b"garbage\r\n\r\n")
            break
        elif path == "/big":
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + x + b"Content-Length: 5000\r\n\r\n" + b"x" * 5000)
        elif path == "/late-read":
            got = b"%d" % len(body)
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + x + b"Content-Length: %d\r\n\r\n" % len(got) + got)
        elif path == "/drop":
            break
        elif path == "/slow":
            time.sleep(3)
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + x + b"Content-Length: 0\r\n\r\n")
        elif path == "/then-close":
            # answers as kept alive, then closes the idle connection soon after
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + x + b"Content-Length: 0\r\n\r\n")
            time.sleep(0.2)
            break
        else:
            echo = body or path.encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + x + b"Content-Length: %d\r\n\r\n" % len(echo) + echo)
    conn.close()


s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((HOST, PORT))
s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    with lock:
        counter[0] += 1
        n = counter[0]
    threading.Thread(target=serve, args=(c, n), daemon=True).start()
