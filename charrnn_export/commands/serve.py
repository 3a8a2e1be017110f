"""`charrnn-export serve`: flags -> create_app (charrnn_export/serve/) -> uvicorn, with a drain
on SIGINT/SIGTERM.

The only part of serving that parses flags or writes to stderr. fastapi and uvicorn
(the `serve` extra) are imported when the command runs, so the rest of the CLI works without them.

Start-up, in an order that lets every mistake end in one line and exit 2 before anything says
"listening": the flags (each bounded), the socket bound here (a port in use or a host that is
not this machine's), every model loaded, --slots/--queue/--max-length sized against the memory
this machine has for those models, the engines started; only then is the bound socket handed to
uvicorn, which listens and logs "listening on ...".

A stop signal drains: new requests get 503 (and /health "stopping") while the running ones go
on, for up to --grace-period seconds; then whatever still runs ends at its engine's next step
(streams get a last event with finish_reason "abort" and [DONE]), uvicorn closes the
connections, and the command exits 0. A second signal stops at once. uvicorn on its own would
raise the captured signal again after its clean stop (exit 128 + the signal); the server class
below does not record it.
"""

from __future__ import annotations

import errno
import gc
import math
import os
import signal
import socket
import time
from pathlib import Path

from .. import checks
from ..errors import ConfigError, ModelError
from .common import stderr_logger

API_KEY_ENV = "CHARRNN_EXPORT_API_KEY"  # the key without putting it on the command line (ps shows that)
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# Bounds checked before anything loads (memory decides the real top, once the models are known).
MAX_SLOTS, MAX_QUEUE, MAX_LENGTH, MAX_SECONDS = 1_000_000, 1_000_000, 1_000_000_000, 3600.0
MEMORY_SHARE = 0.75  # of the memory available at start-up, what the engines may plan to use


def add_serve_parser(sub) -> None:
    """The flags; every default is ServeOptions' (the server's) or SampleOptions' (the models')."""
    from ..generate import DEFAULTS as MODEL_DEFAULTS
    from ..generate import SAMPLERS
    from ..serve.options import ServeOptions

    d = ServeOptions()
    p = sub.add_parser("serve", help="serve models over HTTP: OpenAI's completions API, continuous batching",
                       description="An OpenAI-compatible completions server (POST /v1/completions, streaming or "
                       "not; GET /v1/models, /health, /metrics; a page at /). Every request joins one batch.")
    p.add_argument("--model", nargs="+", default=["int8"], metavar="int8|fp32|PATH|NAME=PATH",
                   help="models to serve: the shipped int8 or fp32 model, an exported .onnx file or export "
                   "directory; NAME=PATH names it (default: int8). Requests choose among these by name only")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine "
                   "only; 0.0.0.0 for every interface, with --api-key)")
    p.add_argument("--port", type=int, default=8000, help="(default %(default)s; 0: any free port, logged)")
    p.add_argument("--slots", type=int, default=d.slots, help="requests generated together per model, in one batch "
                   "(default %(default)s)")
    p.add_argument("--queue", type=int, default=d.queue, help="choices that may wait for a slot; beyond them, 429 "
                   "with Retry-After (default %(default)s)")
    p.add_argument("--max-length", type=int, default=d.limits.max_length,
                   help="largest max_tokens (characters per choice) a request may ask for (default %(default)s)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV}, else none)")
    p.add_argument("--threads", type=int, default=MODEL_DEFAULTS.threads,
                   help="onnxruntime threads, for one step and for the lanes of a large batch "
                   "(default: its own choice; every usable CPU)")
    p.add_argument("--sampler", choices=SAMPLERS, default=MODEL_DEFAULTS.sampler,
                   help="where sampling runs: 'graph' in onnxruntime with the decode model beside the step "
                   "model, 'host' in numpy; the text is the same (default %(default)s: host on the CPU)")
    p.add_argument("--flush-ms", type=float, default=d.flush_interval * 1000,
                   help="how often a stream's new characters are sent as one event (default %(default)s)")
    p.add_argument("--max-event-rate", type=float, default=d.max_event_rate,
                   help="events per second across all open streams; with many streams each event carries more "
                   "characters instead of more events competing for the CPU (default %(default)s)")
    p.add_argument("--timeout", type=float, default=d.request_timeout,
                   help="seconds a connection may take to send a request's headers, then its body, or stay "
                   "idle between requests; beyond them, 408 or closed (default %(default)s)")
    p.add_argument("--grace-period", type=float, default=10.0,
                   help="on SIGTERM/SIGINT, seconds the running requests may take to finish while new ones get "
                   "503; then they end with finish_reason 'abort' (default %(default)s; a second signal: now)")
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
    from ..generate import SHIPPED

    path = Path(value)
    if value in SHIPPED or path.is_dir():
        return path.name
    name = path.name.removesuffix(".onnx")
    return f"{path.parent.name}-{name}" if path.parent.name else name


def run_serve(args) -> int:
    try:
        import uvicorn

        from ..serve.app import ServeOptions, create_app
        from ..serve.protocol import HeaderDeadline
        from ..serve.remote import ModelSpec
        from ..serve.schema import Limits
    except ImportError as e:
        raise ConfigError(f"serving needs the serve extra ({e.name} is missing): pip install \"charrnn-export[serve]\"")

    check_flags(args)
    sources = model_sources(args.model)
    log = stderr_logger("charrnn_export.serve", "%(asctime)s %(message)s")
    sock = bind(args.host, args.port)
    try:
        generators = load_models(sources, args)
        check_memory(generators, args)
        options = ServeOptions(slots=args.slots, queue=args.queue, limits=Limits(max_length=args.max_length),
                               api_key=args.api_key, flush_interval=args.flush_ms / 1000,
                               max_event_rate=args.max_event_rate, request_timeout=args.timeout,
                               engine_process=True)
        failure: list[Exception] = []
        options.on_load_failure = failure.append
        # Each engine in a process of its own (serve/remote.py), which loads its model again:
        # loading it here first checked it and sized the memory before anything was started.
        app = create_app({name: ModelSpec(str(path), args.threads, args.sampler) for name, path in sources.items()},
                         options)
        del generators
        app.state.serve.load()  # starts the engine processes
        if failure:
            raise ModelError(f"could not start the engine: {failure[0]}")
        if args.host not in LOOPBACK and not args.api_key:
            log.warning("%s is reachable from other machines and there is no --api-key: anyone who can reach "
                        "it can use it", args.host)
        config = uvicorn.Config(app, http=HeaderDeadline, log_level="warning", access_log=False, lifespan="on",
                                timeout_keep_alive=args.timeout, timeout_graceful_shutdown=5)
        server = _Server(config, app.state.serve, args.grace_period, log,
                         ", ".join(f"{n} ({p})" for n, p in sources.items()))
        gc.freeze()  # what is loaded now lives as long as the server: a full collection need not walk it
        server.run(sockets=[sock])
    finally:
        sock.close()
    log.info("stopped")
    return 0


def check_flags(args) -> None:
    """Every number bounded before anything is loaded: one line naming the flag and its range."""
    for flag, value, low, high in (("--slots", args.slots, 1, MAX_SLOTS), ("--queue", args.queue, 0, MAX_QUEUE),
                                   ("--max-length", args.max_length, 1, MAX_LENGTH), ("--port", args.port, 0, 65535)):
        if not low <= value <= high:
            raise ConfigError(f"{flag} must be in {low}..{high:,}, got {value}")
    for flag, value, low, high, open_low in (("--flush-ms", args.flush_ms, 0.0, 10_000.0, True),
                                             ("--max-event-rate", args.max_event_rate, 0.0, 1e9, True),
                                             ("--timeout", args.timeout, 0.0, MAX_SECONDS, True),
                                             ("--grace-period", args.grace_period, 0.0, MAX_SECONDS, False)):
        if not (math.isfinite(value) and (value > low if open_low else value >= low) and value <= high):
            raise ConfigError(f"{flag} must be {'>' if open_low else '>='} {low:g} and <= {high:g}, got {value}")
    if args.threads is not None:
        checks.check_threads(args.threads, "--threads")


def bind(host: str, port: int) -> socket.socket:
    """The listening address bound now (not listened on: connections are refused until the models
    are loaded), so that a port in use or a foreign host is one line, not uvicorn's."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--host {host!r} is not a name or address this machine can listen on "
                          f"({getattr(e, 'strerror', None) or e}); use 127.0.0.1, 0.0.0.0 or one of its addresses")
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port} is already in use on {host} (another server?); choose another "
                              "port, or --port 0 for any free one")
        if e.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"--host {host} is not an address of this machine; use 127.0.0.1, 0.0.0.0 or one "
                              "of its addresses")
        if e.errno == errno.EACCES:
            raise ConfigError(f"--port {port}: permission denied (ports below 1024 need privileges); use a port "
                              "from 1024 up")
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}")
    return sock


def load_models(sources: dict[str, str], args) -> dict:
    from ..errors import CharRNNError
    from ..generate import Generator

    generators = {}
    for name, path in sources.items():
        try:
            generators[name] = Generator.load(path, threads=args.threads, sampler=args.sampler)
        except CharRNNError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime's own errors for a file it cannot read
            raise ModelError(f"could not load the model {name!r} ({path}): {type(e).__name__}: {e}") from None
    return generators


def check_memory(generators: dict, args) -> None:
    """--slots, --queue and --max-length against the memory this machine has now, for these models.
    One line naming the flag to lower and the range it may have."""
    from ..serve.scheduler import memory_needed

    available = checks.available_memory()
    if available is None:
        return
    budget = int(available * MEMORY_SHARE)
    shapes = [(g.runtime.rnn_units, len(g.vocab)) for g in generators.values()]

    def needed(slots, queue, max_length) -> int:
        return sum(sum(memory_needed(slots, queue, max_length, w, v).values()) for w, v in shapes)

    def fits(slots, queue, max_length) -> bool:
        return needed(slots, queue, max_length) <= budget

    total = needed(args.slots, args.queue, args.max_length)
    if total <= budget:
        return

    flag, value, top = _flag_to_lower(args, fits)
    others = ", ".join(f"{f} {v:,}" for f, v in (("--slots", args.slots), ("--queue", args.queue),
                                                   ("--max-length", args.max_length)) if f != flag)
    have = f"{_gib(available)} available" + ("" if len(shapes) == 1 else f", for {len(shapes)} models")
    raise ConfigError(f"{flag} {value:,} (with {others}) needs up to {_gib(total)} of memory and this machine has "
                      f"{have}: use {flag} {0 if flag == '--queue' else 1} to {top:,}")


FLAGS = {"slots": "--slots", "queue": "--queue", "max_length": "--max-length"}


def _flag_to_lower(args, fits) -> tuple[str, int, int]:
    """The flag turned up furthest beyond its default whose lowering alone fits, and its largest
    value that fits (by bisection): (flag, its value, the largest that fits)."""
    from ..serve.options import ServeOptions

    d = ServeOptions()
    defaults = {"slots": d.slots, "queue": d.queue, "max_length": d.limits.max_length}
    given = {attr: getattr(args, attr) for attr in defaults}
    order = sorted(defaults, key=lambda attr: given[attr] / defaults[attr], reverse=True)
    for attr in order + ["slots"]:
        low, high = 0, given[attr]
        while low < high:
            middle = (low + high + 1) // 2
            if fits(**{**given, attr: middle}):
                low = middle
            else:
                high = middle - 1
        if low >= (0 if attr == "queue" else 1) or attr == "slots":
            return FLAGS[attr], given[attr], max(low, 1 if attr != "queue" else 0)
    raise AssertionError("unreachable")


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB"


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        def __init__(self, config, state, grace_period, log, described):
            super().__init__(config)
            self.state, self.grace_period, self.log, self.described = state, grace_period, log, described
            self.drain_until = None  # set by the first stop signal
            self.drain_logged = False

        def handle_exit(self, sig, frame):
            # Not uvicorn's: the signal is not recorded to be raised again (exit 0), and the first
            # one drains instead of stopping. Flags only: this runs in a signal handler.
            if self.drain_until is None:
                self.drain_until = time.monotonic() + self.grace_period
                self.state.drain()
                return
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            self.state.stop()

        async def on_tick(self, counter) -> bool:
            should_exit = await super().on_tick(counter)
            if self.drain_until is not None and not self.should_exit:
                if not self.drain_logged:
                    self.drain_logged = True
                    self.log.info("stopping: new requests get 503; running ones may take up to %g s "
                                  "(--grace-period)", self.grace_period)
                if self.state.idle or time.monotonic() >= self.drain_until:
                    self.state.stop()  # what still runs ends with "abort" at its engine's next step
                    self.should_exit = True
            return should_exit or self.should_exit

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and self.servers:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                self.log.info("listening on http://%s:%d serving %s", shown, port, self.described)

    return Server


def _Server(*args):
    return _server_class()(*args)
