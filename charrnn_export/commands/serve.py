"""`charrnn-export serve`: flags -> create_app (charrnn_export/serve/) -> uvicorn, with a clean stop
on SIGINT/SIGTERM.

The only part of serving that parses flags or writes to stderr. fastapi and uvicorn
(the `serve` extra) are imported when the command runs, so the rest of the CLI works without them.

A stop signal ends every running request at the engine's next step (streams get a last event
with finish_reason "abort" and [DONE]), lets uvicorn close the connections, and exits 0. uvicorn
on its own would raise the captured signal again after its clean stop, so the process would end
with 128 + the signal number; the server class below does not record it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ..errors import ConfigError, ModelError
from .common import stderr_logger

API_KEY_ENV = "CHARRNN_EXPORT_API_KEY"  # the key without putting it on the command line (ps shows that)
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_serve_parser(sub) -> None:
    from ..serve.schema import Limits

    limits = Limits()
    p = sub.add_parser("serve", help="serve models over HTTP: OpenAI's completions API, continuous batching",
                       description="An OpenAI-compatible completions server (POST /v1/completions, streaming or "
                       "not; GET /v1/models, /health, /metrics; a page at /). Every request joins one batch.")
    p.add_argument("--model", nargs="+", default=["int8"], metavar="int8|fp32|PATH|NAME=PATH",
                   help="models to serve: the shipped int8 or fp32 model, an exported .onnx file or export "
                   "directory; NAME=PATH names it (default: int8). Requests choose among these by name only")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine "
                   "only; 0.0.0.0 for every interface, with --api-key)")
    p.add_argument("--port", type=int, default=8000, help="(default %(default)s; 0: any free port, logged)")
    p.add_argument("--slots", type=int, default=256, help="requests generated together per model, in one batch "
                   "(default %(default)s)")
    p.add_argument("--queue", type=int, default=1024, help="choices that may wait for a slot; beyond them, 429 "
                   "with Retry-After (default %(default)s)")
    p.add_argument("--max-length", type=int, default=limits.max_length,
                   help="largest max_tokens (characters per choice) a request may ask for (default %(default)s)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV}, else none)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: its own choice)")
    p.add_argument("--sampler", choices=("auto", "graph", "host"), default="auto",
                   help="where sampling runs: 'graph' in onnxruntime with the decode model beside the step "
                   "model, 'host' in numpy; the text is the same (default %(default)s: host on the CPU)")
    p.add_argument("--flush-ms", type=float, default=15.0,
                   help="how often a stream's new characters are sent as one event (default %(default)s)")
    p.add_argument("--max-event-rate", type=float, default=2000.0,
                   help="events per second across all open streams; with many streams each event carries more "
                   "characters instead of more events competing for the CPU (default %(default)s)")
    p.set_defaults(func=run_serve)


def model_sources(values: list[str]) -> dict[str, str]:
    """{name: path or 'int8'/'fp32'}, checked to exist now rather than after the server starts."""
    from ..generate import SHIPPED, resolve_model_path

    sources: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = _default_name(value), value
        if not name:
            raise ConfigError(f"--model {value!r}: the name before '=' is empty")
        if name in sources:
            raise ConfigError(f"--model: two models are named {name!r}; name them with NAME=PATH")
        if path in SHIPPED:
            resolve_model_path(path, "onnx")  # raises ModelError when the package has no such model
        elif not Path(path).exists():
            raise ModelError(f"--model {value!r}: no file or folder at {path}")
        sources[name] = path
    return sources


def _default_name(value: str) -> str:
    path = Path(value)
    if value in ("int8", "fp32") or path.is_dir():
        return path.name
    name = path.name.removesuffix(".onnx")
    return f"{path.parent.name}-{name}" if path.parent.name else name


def run_serve(args) -> int:
    try:
        import uvicorn

        from ..serve.app import ServeOptions, create_app
        from ..serve.schema import Limits
    except ImportError as e:
        raise ConfigError(f"serving needs the serve extra ({e.name} is missing): pip install \"charrnn-export[serve]\"")
    from ..generate import Generator

    for flag, value, minimum in (("--slots", args.slots, 1), ("--queue", args.queue, 0),
                                 ("--max-length", args.max_length, 1), ("--port", args.port, 0)):
        if value < minimum or (flag == "--port" and value > 65535):
            raise ConfigError(f"{flag} must be {'in 0..65535' if flag == '--port' else f'>= {minimum}'}, got {value}")
    if not args.flush_ms > 0 or not args.max_event_rate > 0:
        raise ConfigError("--flush-ms and --max-event-rate must be > 0")
    if args.threads is not None:
        from ..checks import check_threads

        check_threads(args.threads, "--threads")
    sources = model_sources(args.model)
    log = stderr_logger("charrnn_export.serve", "%(asctime)s %(message)s")
    if args.host not in LOOPBACK and not args.api_key:
        log.warning("listening on %s without --api-key: anyone who can reach it can use it", args.host)

    loaders = {name: (lambda path=path: Generator.load(path, threads=args.threads, sampler=args.sampler))
               for name, path in sources.items()}
    failure: list[Exception] = []
    options = ServeOptions(slots=args.slots, queue=args.queue, limits=Limits(max_length=args.max_length),
                           api_key=args.api_key, flush_interval=args.flush_ms / 1000, max_event_rate=args.max_event_rate,
                           on_load_failure=lambda e: (failure.append(e), setattr(server, "should_exit", True)))
    app = create_app(loaders, options)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=10)
    server = _Server(config, app.state.serve.stop, log, ", ".join(f"{n} ({p})" for n, p in sources.items()))
    server.run()
    if failure:
        raise ModelError(f"could not load the model: {failure[0]}")
    log.info("stopped")
    return 0


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        def __init__(self, config, on_stop, log, described):
            super().__init__(config)
            self.on_stop, self.log, self.described = on_stop, log, described

        def handle_exit(self, sig, frame):
            # As uvicorn's, except that the signal is not recorded to be raised again (exit 0).
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True
            self.on_stop()

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and self.servers:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                self.log.info("listening on http://%s:%d serving %s", shown, port, self.described)

    return Server


def _Server(*args):
    return _server_class()(*args)
