"""The HTTP server: OpenAI's completions API over one continuously batched engine per model.

    app = create_app({"int8": lambda: Generator.load("int8")}, ServeOptions(slots=256, queue=1024))
    app.state.serve.load()                               optional: load now (else in a thread at start-up)
    uvicorn.run(app, host="127.0.0.1", port=8000)        (commands/serve.py does this, with clean stops)
    app.state.serve.drain()                              new requests get 503; running ones go on
    app.state.serve.stop()                               every running request ends with "abort"

Routes: POST /v1/completions, GET /v1/models (and /v1/models/{id}), GET /health, GET /metrics,
GET / (page.html). The command loads every model before it listens; an app started without
load() loads them in a thread, and /health answers 503 ("loading") until they are ready.
Every error answer, including unknown routes, trailing slashes and wrong methods, is OpenAI's
error shape (never a redirect), and nothing a client sends reaches a 500. Every request is
counted by status for /metrics (499: the client hung up before its answer was complete) and
logged as one line on the "charrnn_export.serve" logger when it ends. A request whose body has
not arrived `request_timeout` seconds after its headers gets 408.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..rng import random_seed, row_seed
from . import metrics
from .options import ServeOptions
from .responses import CompletionBody, CompletionStream
from .remote import RemoteScheduler
from .scheduler import Busy, Job, Scheduler, Stopping
from .schema import ApiError, parse_completion

log = logging.getLogger("charrnn_export.serve")
PAGE = Path(__file__).with_name("page.html")


class ErrorJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: a lone surrogate a client sent (in a field
    name echoed as `param`, say) is written as \\udXXX instead of failing to encode (a 500)."""

    def render(self, content) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


class ClientGone(Exception):
    """The client hung up before its request was read: nobody to answer (counted as 499)."""


class BodyTimeout(Exception):
    """The request's body did not arrive in time (answered 408)."""


class ServeState:
    def __init__(self, loaders: dict, options: ServeOptions):
        self.loaders, self.options = loaders, options
        self.schedulers: dict[str, Scheduler | None] = {name: None for name in loaders}
        self.vocabularies: dict = {}
        self.ready = False
        self.stopping = False
        self.load_error: str | None = None
        self.by_status: dict[int, int] = {}
        self.created = int(time.time())

    def load(self) -> None:
        """Load every model and start its engine thread (the command calls it before listening;
        otherwise the app calls it in a thread at start-up). Failures go to on_load_failure."""
        if self.ready or self.load_error:
            return
        try:
            for name, loader in self.loaders.items():
                if self.options.engine_process:
                    scheduler = RemoteScheduler(loader, self.options)
                    self.vocabularies[name] = scheduler.vocab
                else:
                    generator = loader()
                    scheduler = Scheduler(generator, self.options.slots, self.options.queue,
                                          self.options.flush_interval, self.options.max_event_rate)
                    scheduler.start()
                    self.vocabularies[name] = generator.vocab
                self.schedulers[name] = scheduler
                if self.stopping:
                    scheduler.stop()
            self.ready = True
            log.info("ready: %s", ", ".join(self.schedulers))
        except Exception as e:  # noqa: BLE001 - reported on /health and to the command, which exits
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("could not load the model: %s", self.load_error)
            if self.options.on_load_failure:
                self.options.on_load_failure(e)

    def drain(self) -> None:
        """New requests get 503 and /health says "stopping"; running ones go on. Signal-safe."""
        self.stopping = True

    @property
    def engine_failure(self) -> str | None:
        """Why an engine process is gone, if one is (a request can end itself, never its engine)."""
        return next((s.failure for s in self.schedulers.values() if s is not None and s.failure), None)

    @property
    def idle(self) -> bool:
        """Nothing running or waiting in any engine (a draining server may stop now)."""
        return all(s is None or s.idle for s in self.schedulers.values())

    def stop(self) -> None:
        """Drain, and end every running request at its engine's next step ("abort"). Signal-safe."""
        self.stopping = True
        for scheduler in list(self.schedulers.values()):
            if scheduler is not None:
                scheduler.stop()

    def close(self) -> None:
        for scheduler in self.schedulers.values():
            if scheduler is not None:
                scheduler.close()


def create_app(loaders: dict[str, Callable], options: ServeOptions | None = None) -> FastAPI:
    """loaders: model name -> a function returning a Generator (called once, in a thread)."""
    state = ServeState(loaders, options or ServeOptions())

    @asynccontextmanager
    async def lifespan(app):
        if not (state.ready or state.load_error):
            threading.Thread(target=state.load, name="charrnn-load", daemon=True).start()
        yield
        state.stop()
        state.close()

    # redirect_slashes=False: `POST /v1/completions/` is a 404 naming the route, not a 307 that
    # a client may follow with a GET (or not at all).
    app = FastAPI(title="charrnn-export", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)
    app.state.serve = state
    app.add_middleware(RequestLog, state=state, body_timeout=state.options.request_timeout)

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        request.scope.setdefault("state", {}).setdefault("log", {})["error"] = error.code or error.type
        return ErrorJSON(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error: StarletteHTTPException):  # unknown route or method
        kind = "not_found" if error.status_code == 404 else "method_not_allowed" if error.status_code == 405 else None
        message = f"{request.method} {request.url.path}: {error.detail}"
        if error.status_code == 404 and request.url.path.endswith("/") and request.url.path.rstrip("/"):
            message += f"; the route is {request.url.path.rstrip('/')} (no trailing slash)"
        body = ApiError(error.status_code, message, code=kind).body()
        return ErrorJSON(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request, error: Exception):  # a bug: still OpenAI's shape, and logged
        log.exception("error answering %s %s", request.method, request.url.path)
        body = ApiError(500, f"internal error: {type(error).__name__}", type="server_error").body()
        return ErrorJSON(body, status_code=500)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"x-content-type-options": "nosniff"})

    @app.get("/health")
    async def health():
        failure = state.load_error or state.engine_failure  # a request can end itself, never its engine
        if failure:
            return JSONResponse({"status": "failed", "error": failure}, status_code=503)
        if state.stopping:
            return JSONResponse({"status": "stopping"}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "models": list(state.schedulers)}

    @app.get("/metrics")
    async def prometheus():
        await asyncio.gather(*(s.refresh() for s in state.schedulers.values() if s is not None))
        return PlainTextResponse(metrics.render(state.by_status, state.schedulers),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request, state.options)
        return {"object": "list", "data": [model_card(name) for name in state.schedulers]}

    @app.get("/v1/models/{name:path}")
    async def model(request: Request, name: str):
        authorize(request, state.options)
        if name not in state.schedulers:
            raise ApiError(404, f"model {name!r} is not served here", param="model", code="model_not_found")
        return model_card(name)

    def model_card(name: str) -> dict:
        vocab = state.vocabularies.get(name)
        return {"id": name, "object": "model", "created": state.created, "owned_by": "charrnn-export",
                "ready": state.schedulers[name] is not None, "max_tokens": state.options.limits.max_length,
                "characters": None if vocab is None else "".join(vocab.chars)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request, state.options)
        limits = state.options.limits
        body = await read_body(request, limits.max_body_bytes)
        if state.stopping:
            raise unavailable("the server is shutting down; retry on another replica", close=True)
        if not state.ready:
            raise unavailable(state.load_error or "the model is still loading")
        default = next(iter(state.schedulers)) if len(state.schedulers) == 1 else None
        request_ = parse_completion(body, state.vocabularies, limits, default)
        check_fits(request_, state.options)
        seed = random_seed() if request_.seed is None else request_.seed
        choices = [(ids, row_seed(seed, p * request_.n + i))  # choice j: seeded as row j of generate_batch
                   for p, ids in enumerate(request_.prompt_ids) for i in range(request_.n)]
        job = Job(choices, request_.max_tokens, request_.sampling, request_.stops)
        scheduler = state.schedulers[request_.model]
        try:
            scheduler.submit(job)
        except Busy:
            raise ApiError(429, f"every slot is busy and {state.options.queue} choices are already waiting; "
                           f"retry in {state.options.retry_after} s", type="rate_limit_error",
                           code="server_busy", headers={"Retry-After": str(state.options.retry_after)}) from None
        except Stopping as e:
            raise unavailable(str(e)) from None
        info = request.scope.setdefault("state", {}).setdefault("log", {})
        info.update(model=request_.model, choices=request_.choices, max_tokens=request_.max_tokens,
                    seed=seed, stream=request_.stream)
        head = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
                "model": request_.model, "system_fingerprint": None, "seed": seed}
        answer = CompletionStream if request_.stream else CompletionBody
        return answer(job, scheduler, head, request_, info, {"X-Seed": seed})

    return app


def check_fits(completion, options: ServeOptions) -> None:
    """A request with more choices than the slots runs them in turn (the rest wait in the queue);
    one with more than slots + queue could never be taken whole, so it is refused, naming the
    field that makes it too big: the prompts when n is 1, else n."""
    room = options.slots + options.queue
    if completion.choices <= room:
        return
    prompts = len(completion.prompts)
    param, fix = ("prompt", f"send at most {room} prompts") if completion.n == 1 else \
        ("n", f"ask for n <= {max(1, room // prompts)}" + (" or send fewer prompts" if prompts > 1 else ""))
    raise ApiError(400, f"this request makes {completion.choices} choices ({prompts} prompt(s) x n={completion.n}); "
                   f"this server takes at most {room} at once ({options.slots} --slots + {options.queue} --queue): "
                   f"{fix}", param=param, code="invalid_value")


def authorize(request: Request, options: ServeOptions) -> None:
    if options.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if not header:
        raise ApiError(401, "this server needs an API key: send the header 'Authorization: Bearer KEY'",
                       code="missing_api_key")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), options.api_key.encode()):
        raise ApiError(401, "the API key is wrong", code="invalid_api_key")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (declared or sent)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes; at most {limit}", code="body_too_large")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"the request body is over {limit} bytes", code="body_too_large")
    except ClientDisconnect:
        raise ClientGone() from None
    except BodyTimeout as e:
        raise ApiError(408, str(e), code="request_timeout", headers={"Connection": "close"}) from None
    return bytes(body)


def unavailable(message: str, close: bool = False) -> ApiError:
    """503; `close` while draining, so that a keep-alive client's next request goes to a new connection
    (which a load balancer sends to another replica)."""
    headers = {"Retry-After": "1", **({"Connection": "close"} if close else {})}
    return ApiError(503, message, type="server_error", code="unavailable", headers=headers)


GONE = 499  # nginx's "client closed request": counted and logged, never sent


class RequestLog:
    """ASGI middleware: the body's deadline, and each request counted by status and logged as one
    line when it ends: its status once its answer is complete (counted just before the last
    part is sent, so /metrics never lags an answer a client has), 499 when the client hung up
    first (before or during the answer), 500 only for a bug."""

    def __init__(self, app, state: ServeState, body_timeout: float = 30.0):
        self.app, self.state, self.body_timeout = app, state, body_timeout

    def count(self, status: int) -> None:
        self.state.by_status[status] = self.state.by_status.get(status, 0) + 1

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began = time.perf_counter()
        status, complete, code = None, False, GONE

        async def send_status(message):
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
                self.count(status)
            await send(message)

        try:
            await self.app(scope, self._receive_in_time(receive), send_status)
        except ClientGone:
            pass  # hung up while its body was read: nobody to answer
        except Exception:
            code = 500  # a bug; the exception handler answers it (if nothing was sent yet)
            raise
        finally:
            if complete:
                code = status
            else:
                self.count(code)
            client = scope.get("client") or ("-", 0)
            details = " ".join(f"{k}={v}" for k, v in scope.get("state", {}).get("log", {}).items())
            if code == GONE:
                details = f"{details} client hung up".strip()
            log.info('%s:%s "%s %s" %s %.1fms %s', client[0], client[1], scope["method"], scope["path"], code,
                     (time.perf_counter() - began) * 1000, details)

    def _receive_in_time(self, receive):
        """receive(), but the body must be complete within body_timeout seconds of the headers
        (a client that sends half a body would hold its connection and its task forever)."""
        deadline = asyncio.get_running_loop().time() + self.body_timeout
        body_done = False

        async def receive_in_time():
            nonlocal body_done
            if body_done:
                return await receive()
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except asyncio.TimeoutError:
                raise BodyTimeout(f"the request body did not arrive within {self.body_timeout:g} s of its "
                                  "headers (--timeout)") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        return receive_in_time
