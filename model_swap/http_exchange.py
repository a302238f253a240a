"""One request served on a pool thread of the front server (model_swap/http_front.py).

The loop hands a thread a connection whose request head is parsed; the
thread reads the body straight from the socket (``http_body``: sized or
chunked, cut when it arrives slower than ``min_upload_rate``), runs the WSGI
app (``http_request``), and sends its answer (``http_send``: cut when read
slower than ``min_download_rate``). What follows in the buffer (a pipelined
request) stays on the connection for the loop.
"""

from __future__ import annotations

from model_swap.http_body import ChunkedBody, SizedBody
from model_swap.http_conn import Conn, FrontLimits
from model_swap.http_request import build_environ, run_wsgi
from model_swap.http_send import Sender


def serve_exchange(conn: Conn, app, limits: FrontLimits, address, accepting: bool) -> bool:
    """Serve the request whose head ``conn`` holds, on this (pool) thread: read its body
    from the socket, run ``app``, send the answer. True if the connection may serve
    another request (``accepting``: the server is not draining)."""
    head, sock, parser = conn.head, conn.sock, conn.parser
    sock.setblocking(True)
    sock.settimeout(limits.io_timeout)
    held = bytes(conn.buffer[conn.head_end :])
    conn.buffer.clear()
    conn.head, conn.parser, conn.fed = None, None, 0
    send_continue = None
    if head.expect_continue and not conn.continued:

        def send_continue():
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    conn.continued = False
    rate, window = limits.min_upload_rate, limits.upload_rate_window
    if head.chunked:
        body = ChunkedBody(sock, held, rate, send_continue, parser=parser, window=window)
    else:
        length = head.content_length or 0
        body = SizedBody(sock, held[:length], length, rate, send_continue, window=window)
        conn.buffer += held[length:]  # a pipelined request that followed a sized body
    environ = build_environ(head, body, address, conn.peer)
    keep_alive = head.keep_alive and accepting
    sender = Sender(sock, limits.io_timeout, limits.min_download_rate, limits.download_rate_window)
    keep = run_wsgi(app, sender, head, body, environ, keep_alive)
    if head.chunked and keep:
        conn.buffer += body.leftover()
    return keep and body.done
