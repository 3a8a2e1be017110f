"""The two answers to POST /v1/completions, as ASGI callables that run one scheduler Job.

    CompletionStream(job, scheduler, head, completion, info)  text/event-stream: `data: {json}`
        chunks (one per choice that has new text), a last chunk per choice with its finish
        reason, an optional usage chunk, then `data: [DONE]`
    CompletionBody(job, scheduler, head, completion, info)     one JSON object once every choice ended

A choice whose generation failed (finish_reason "error": the backend raised, or the model's
logits were not finite) is named in an error object in OpenAI's shape: the answer's "error"
field, or, in a stream, an event `data: {"error": {...}}` just before [DONE] (the official
client raises APIError on it, after yielding the text made before the failure). The status
stays 200: it was sent with the first event, and a failure of the server's own model is not
something the client could have sent differently.

Both watch the connection while they wait: a client that goes away cancels the job at once
(its slots are free at the engine's next step) instead of when the next write would fail. The
event stream is written by hand, because FastAPI's SSE helper JSON-encodes the closing [DONE]
(and the official client then fails on it). `info` is the request's log record (app.py logs it).
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.responses import Response


class _JobAnswer(Response):
    """A Response so that FastAPI passes it through untouched; it writes its own ASGI messages."""

    def __init__(self, job, scheduler, head: dict, completion, info: dict, headers: dict):
        self.background = None  # FastAPI may attach background tasks; there are none
        self.job, self.scheduler, self.head, self.completion, self.info = job, scheduler, head, completion, info
        self.extra_headers = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]
        self.finished = False
        self.made = 0
        self.began = time.perf_counter()

    async def __call__(self, scope, receive, send) -> None:
        answer = asyncio.ensure_future(self.answer(send))
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait({answer, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            answer.cancel()
            watch.cancel()
            if not self.finished:  # the client left (or we were cancelled): free the slots now
                self.scheduler.cancel(self.job)
                self.info["finish"] = "disconnected"
            self.info["chars"] = self.made
        if answer in done and not answer.cancelled():
            error = answer.exception()
            if error is not None and not isinstance(error, OSError):  # OSError: the socket closed under us
                raise error

    def _note(self, items) -> None:
        if self.made == 0 and any(text for _, text, _ in items):
            self.info["first_char_ms"] = round((time.perf_counter() - self.began) * 1000, 1)
        self.made += sum(len(text) for _, text, _ in items)

    def error(self, finishes) -> dict | None:
        """OpenAI's error object naming each failed choice's cause, or None when none failed."""
        failed = [(index, self.job.choices[index].cause or "generation failed")
                  for index, finish in sorted(finishes.items()) if finish == "error"]
        if not failed:
            return None
        self.info["error"] = "generation_failed"
        message = "; ".join(f"choice {index}: {cause}" for index, cause in failed)
        return {"message": message, "type": "server_error", "param": None, "code": "generation_failed"}

    def usage(self) -> dict:
        prompt = sum(map(len, self.completion.prompts))
        return {"prompt_tokens": prompt, "completion_tokens": self.made, "total_tokens": prompt + self.made}


class CompletionStream(_JobAnswer):
    media_type = b"text/event-stream; charset=utf-8"

    async def answer(self, send) -> None:
        head = json.dumps(self.head)[:-1]  # '{"id": ..., "model": ...' : each chunk appends its choices
        headers = [(b"content-type", self.media_type), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no"), *self.extra_headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        finishes = {}
        async for items in self.job.updates():
            self._note(items)
            parts = []
            for index, text, finish in items:
                parts.append(f'data: {head}, "choices": [{{"text": {json.dumps(text)}, "index": {index}, '
                             f'"logprobs": null, "finish_reason": {json.dumps(finish)}}}]}}\n\n')
                if finish:
                    finishes[index] = finish
            await send({"type": "http.response.body", "body": "".join(parts).encode(), "more_body": True})
        tail = ""
        if self.completion.include_usage:
            tail = f'data: {head}, "choices": [], "usage": {json.dumps(self.usage())}}}\n\n'
        error = self.error(finishes)
        if error is not None:
            tail += f'data: {json.dumps({"error": error})}\n\n'
        self.finished = True
        self.info["finish"] = ",".join(sorted(set(finishes.values())))
        await send({"type": "http.response.body", "body": (tail + "data: [DONE]\n\n").encode(), "more_body": False})


class CompletionBody(_JobAnswer):
    async def answer(self, send) -> None:
        texts: list[list[str]] = [[] for _ in self.job.choices]
        finishes: list[str | None] = [None] * len(texts)
        async for items in self.job.updates():
            self._note(items)
            for index, text, finish in items:
                texts[index].append(text)
                finishes[index] = finish or finishes[index]
        self.finished = True
        self.info["finish"] = ",".join(sorted(set(map(str, finishes))))
        choices = [{"text": "".join(t), "index": i, "logprobs": None, "finish_reason": f}
                   for i, (t, f) in enumerate(zip(texts, finishes))]
        answer = {**self.head, "choices": choices, "usage": self.usage()}
        error = self.error(dict(enumerate(finishes)))
        if error is not None:
            answer["error"] = error
        body = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   *self.extra_headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _disconnected(receive) -> None:
    """Return when the client closes the connection (the request body has been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
