"""A static file server for a to-web site, on 127.0.0.1, with the headers that make the page
cross-origin isolated (COOP same-origin + COEP require-corp): only then may onnxruntime-web's
WebAssembly use threads (SharedArrayBuffer). Standard library only.

    with running(folder, port=0) as url: ...    a server in a background thread (tests, benchmarks)
    serve(folder, port, log)                    until Ctrl-C or SIGTERM (exit 0)
    bind(folder, port) -> server; serve_site(server, folder, log)   the same in two steps, so that
                                                `to-web --serve` takes its port before it builds the site
"""

from __future__ import annotations

import contextlib
import errno
import functools
import signal
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConfigError

HOST = "127.0.0.1"  # never all interfaces: the site is for this machine's browser
DEFAULT_PORT = 8000
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class SiteHandler(SimpleHTTPRequestHandler):
    # ES modules must be served as JavaScript, and .wasm as application/wasm for streaming compiles.
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
                      ".json": "application/json"}

    def end_headers(self):
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")  # a rebuilt site is seen at once
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass  # one line per request would drown the command's own output


def make_server(folder: str | Path, port: int = 0) -> ThreadingHTTPServer:
    """A server for a built site bound to 127.0.0.1:port (0: a free port, read it from server.server_port)."""
    check_site(folder)
    return bind(folder, port)


def check_site(folder: str | Path) -> None:
    if not (Path(folder) / "index.html").is_file():
        raise ConfigError(f"{folder} has no index.html; build the site first with `charrnn-export to-web --out`")


def bind(folder: str | Path, port: int = 0) -> ThreadingHTTPServer:
    """Take the port now; the site in `folder` is read only when a request comes (it may not be built yet)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")
    handler = functools.partial(SiteHandler, directory=str(folder))
    try:
        server = ThreadingHTTPServer((HOST, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {HOST} is in use; pass another --port (0 picks a free one)") from None
        raise ConfigError(f"cannot listen on {HOST}:{port} ({e.strerror or e})") from None
    server.daemon_threads = True  # a browser's open keep-alive connection must not block shutdown
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://{HOST}:{server.server_port}/"


@contextlib.contextmanager
def running(folder: str | Path, port: int = 0) -> Iterator[str]:
    """Serve `folder` in a background thread; yields the URL; stops the server on exit."""
    server = make_server(folder, port)
    thread = threading.Thread(target=server.serve_forever, name="to-web server", daemon=True)
    thread.start()
    try:
        yield url_of(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Stopped(Exception):
    """SIGTERM arrived: stop serving as Ctrl-C does (a service manager's stop is not a failure)."""


def raise_stopped(signum, frame):
    raise Stopped


def serve(folder: str | Path, port: int = DEFAULT_PORT, log: Callable[[str], None] = print) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM), then close the socket."""
    serve_site(make_server(folder, port), folder, log)


def serve_site(server: ThreadingHTTPServer, folder: str | Path, log: Callable[[str], None] = print) -> None:
    """Serve with a server from bind() until Ctrl-C or SIGTERM, then close it; returns normally."""
    try:
        check_site(folder)
        log(f"serving {folder} at {url_of(server)} (cross-origin isolated: threads allowed); Ctrl-C stops")
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, raise_stopped) if in_main else None
        try:
            server.serve_forever()
        except (KeyboardInterrupt, Stopped):
            log("stopped")
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)
    finally:
        server.server_close()
