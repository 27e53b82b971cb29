"""Real HTTP servers on a loopback address (a free port), each serving in its own daemon thread.

``LocalServer`` is the server itself; ``recording_server`` the context manager the
fixtures use; ``QuietHandler`` a request handler base with the few helpers every
test server needs; ``Recorder`` and ``recording_handler`` the common case: record
every request, answer with the recorder's status, content type and body.
"""

import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class LocalServer:
    """A ``ThreadingHTTPServer`` on ``host`` (a free port); ``start()`` serves it, ``close()`` stops it.

    ``url`` is ``http://host:port`` (brackets around an IPv6 host).
    """

    def __init__(self, handler_class, host="127.0.0.1", *, poll_interval=0.5):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
        self.server = server_class((host, 0), handler_class)
        self.port = self.server.server_address[1]
        self.url = f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{self.port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True
        )

    def start(self):
        self.thread.start()
        return self

    def close(self):
        if self.thread.is_alive():  # shutdown() would wait forever for a loop that never ran
            self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


@contextmanager
def recording_server(handler_class, host="127.0.0.1"):
    """Serve ``handler_class`` on ``host`` for the ``with`` block; yields the :class:`LocalServer`."""
    with LocalServer(handler_class, host, poll_interval=0.05) as server:
        yield server


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing, with helpers to read the body and send an answer."""

    def log_message(self, format, *args):
        pass

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def received(self, body):
        """The request as the recording servers keep it."""
        return {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}

    def answer(self, status, body, headers=None):
        """``status`` with ``headers`` (in order), then Content-Length and ``body``."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Recorder:
    """Requests a test server received, and the answer it gives next (change the attributes to change it)."""

    def __init__(self, *, status=200, body=b"", content_type="application/json"):
        self.requests = []
        self.status = status
        self.body = body
        self.content_type = content_type


def recording_handler(recorder, methods=ALL_METHODS):
    """A handler class recording each request of ``methods`` in ``recorder.requests`` and answering as it says."""

    class Handler(QuietHandler):
        def _handle(self):
            recorder.requests.append(self.received(self.read_body()))
            self.answer(recorder.status, recorder.body, {"Content-Type": recorder.content_type})

    for method in methods:
        setattr(Handler, f"do_{method}", Handler._handle)
    return Handler
