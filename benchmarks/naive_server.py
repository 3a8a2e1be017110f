"""The naive server that benchmarks/serving.py compares `charrnn-export serve` with.

    python -m benchmarks.naive_server --model int8 --port 0     (logs "listening on http://...")

POST /v1/completions (prompt, max_tokens, temperature, seed, stream) answered the obvious way:
a thread per request running what `Generator.generate` runs for one call (an Engine with one slot
over the shared onnxruntime session), streaming its text as events every 15 ms like the real
server. No batching across requests: that is the difference being measured. Not for use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from charrnn_export import Generator
from charrnn_export.engine import Engine, HostSampler, drive
from charrnn_export.sampling import SamplingConfig

FLUSH = 0.015


def create_app(generator: Generator) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    runtime, chars = generator.runtime, generator.vocab.chars

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        ids = generator.vocab.encode(body["prompt"])
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def run():  # Generator.generate's work for one start string: a one-slot engine
            engine = Engine(HostSampler(runtime, 1), 1)
            engine.submit(ids, body.get("max_tokens", 16), SamplingConfig(body.get("temperature", 1.0)),
                          body.get("seed", 0))
            made, last = [], time.perf_counter()
            for _, tokens, _ in drive(engine):
                made.extend(chars[t] for t in tokens.tolist())
                if made and time.perf_counter() - last >= FLUSH:
                    loop.call_soon_threadsafe(queue.put_nowait, ("".join(made), None))
                    made, last = [], time.perf_counter()
            loop.call_soon_threadsafe(queue.put_nowait, ("".join(made), "length"))

        threading.Thread(target=run, daemon=True).start()

        async def events():
            while True:
                text, finish = await queue.get()
                choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
                yield f"data: {json.dumps({'object': 'text_completion', 'choices': [choice]})}\n\n"
                if finish:
                    yield "data: [DONE]\n\n"
                    return

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="int8")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    app = create_app(Generator.load(args.model))

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)

    Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning")).run()


if __name__ == "__main__":
    main()
