"""Upload floor: a bare socket reader that writes each request body to disk, fsyncs, answers 200.

Usage: python3 sink.py HOST PORT DIRECTORY. One connection at a time, no HTTP parsing beyond
Content-Length: the least work a server can do to store an upload as durably as webassets does
(it also fsyncs before answering).
"""

import os
import socket
import sys

BUFFER = 1024 * 1024
MAX_HEAD = 64 * 1024
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nOk."


def _content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def receive(conn, directory):
    """Read one request; stream its body to a file in `directory`, fsync it, remove it."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(65536)
        if not chunk or len(head) > MAX_HEAD:
            return
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    remaining = _content_length(head) - len(rest)
    path = os.path.join(directory, ".sink-%d.tmp" % os.getpid())
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    with open(path, "wb", buffering=0) as f:
        f.write(rest)
        while remaining > 0:
            count = conn.recv_into(view[:min(remaining, BUFFER)])
            if not count:
                break
            f.write(view[:count])
            remaining -= count
        os.fsync(f.fileno())
    os.unlink(path)
    conn.sendall(OK)


def main(argv):
    host, port, directory = argv[1], int(argv[2]), argv[3]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        try:
            receive(conn, directory)
        except OSError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main(sys.argv)
