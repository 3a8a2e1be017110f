"""The engine survives every request. A backend wrapper that fails on a chosen call (raises, or
gives an id outside the vocabulary) runs inside the real engine, the real scheduler and the real
app under a real uvicorn (in a thread of this process, on a bound socket): the request it hits
ends with finish_reason "error" and an error object naming the cause, the others carry on with
their own text, /health stays ok, and the next requests are served."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from serve_helpers import events

from charrnn_export import Generator
from charrnn_export.engine import FAILED, LENGTH, BackendFault, Engine
from charrnn_export.sampling import SamplingConfig

uvicorn = pytest.importorskip("uvicorn")
from charrnn_export.serve.app import ServeOptions, create_app  # noqa: E402
from charrnn_export.serve.protocol import HeaderDeadline  # noqa: E402

MODEL = "tiny"
SAMPLING = SamplingConfig(temperature=0.8)


class FailingBackend:
    """A real backend whose decode fails on chosen calls: mode "raise" raises there, "bad id"
    returns an id one past the vocabulary for row `row`. Calls are counted from 1."""

    def __init__(self, backend, fail_on=(), mode="raise", row=0):
        self.backend, self.fail_on, self.mode, self.row = backend, set(fail_on), mode, row
        self.capacity, self.steps, self.vocab, self.config = backend.capacity, backend.steps, backend.vocab, backend.config
        self.calls = 0

    def decode(self, rows, forced, last, settings, uniforms, reset):
        self.calls += 1
        if self.calls in self.fail_on and self.mode == "raise":
            raise RuntimeError(f"injected failure on call {self.calls}")
        ids = self.backend.decode(rows, forced, last, settings, uniforms, reset)
        if self.calls in self.fail_on and self.mode == "bad id" and self.row < rows:
            ids = ids.copy()
            ids[self.row] = len(self.vocab)
        return ids


class FailingGenerator:
    """What the scheduler needs of a Generator (its vocabulary and a backend), with the backend wrapped."""

    def __init__(self, generator, **failing):
        self.generator, self.failing, self.vocab = generator, failing, generator.vocab
        self.backend_made = None

    def backend(self, capacity):
        self.backend_made = FailingBackend(self.generator.backend(capacity), **self.failing)
        return self.backend_made


@pytest.fixture(scope="module")
def generator(tiny_export):
    return Generator.load(str(tiny_export))


class InProcessServer:
    """create_app + uvicorn (with the command's protocol) in a thread, on a socket bound here."""

    def __init__(self, loader, **options):
        self.app = create_app({MODEL: loader}, ServeOptions(**{"slots": 4, "queue": 8, **options}))
        self.app.state.serve.load()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        config = uvicorn.Config(self.app, http=HeaderDeadline, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def complete(url, **body):
    return httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "ROMEO:", "max_tokens": 40,
                                                     "seed": 5, **body}, timeout=60)


def assert_served_normally(url, generator):
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    answer = complete(url, temperature=0.8)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["text"] == generator.generate("ROMEO:", 40, temperature=0.8, seed=5)


# ---------------------------------------------------------------- the engine alone


def test_the_isolating_engine_ends_only_the_requests_of_a_failing_call(generator):
    backend = FailingBackend(generator.backend(4), fail_on={3})
    engine = Engine(backend, 2, isolate_failures=True)
    first = engine.submit(generator.vocab.encode("AB"), 10, SAMPLING, 1)
    second = engine.submit(generator.vocab.encode("CD"), 10, SAMPLING, 2)
    waiting = engine.submit(generator.vocab.encode("EF"), 10, SAMPLING, 3)  # no slot yet: not in the call
    ended = {}
    while engine.has_work():
        ended.update((rid, reason) for rid, _, reason in engine.step() if reason)
    assert ended == {first: FAILED, second: FAILED, waiting: LENGTH}
    assert "RuntimeError: injected failure on call 3" in engine.causes[first]
    assert engine.busy_count == 0 and engine.high == 0


def test_the_isolating_engine_ends_only_the_row_with_an_impossible_id(generator):
    engine = Engine(FailingBackend(generator.backend(4), fail_on={4}, mode="bad id", row=0), 2, isolate_failures=True)
    bad = engine.submit(generator.vocab.encode("A"), 10, SAMPLING, 1)
    good = engine.submit(generator.vocab.encode("A"), 10, SAMPLING, 2)
    made, ended = {bad: [], good: []}, {}
    while engine.has_work():
        for rid, token, reason in engine.step():
            made[rid].append(token) if reason is None else ended.setdefault(rid, reason)
    assert ended == {bad: FAILED, good: LENGTH}
    assert "outside the vocabulary" in engine.causes[bad]
    alone = generator.generate("A", 10, temperature=0.8, seed=2)
    assert generator.vocab.decode(made[good]) == alone


def test_without_isolation_the_backends_errors_reach_the_caller(generator):
    engine = Engine(FailingBackend(generator.backend(2), fail_on={1}), 1)
    engine.submit(generator.vocab.encode("A"), 5, SAMPLING, 1)
    with pytest.raises(RuntimeError, match="injected"):
        engine.step()
    engine = Engine(FailingBackend(generator.backend(2), fail_on={1}, mode="bad id"), 1)
    engine.submit(generator.vocab.encode("A"), 5, SAMPLING, 1)
    with pytest.raises(BackendFault, match="outside the vocabulary"):
        engine.step()


# ---------------------------------------------------------------- through the server


@pytest.mark.parametrize("mode", ["raise", "bad id"])
def test_a_failing_backend_call_ends_that_request_with_an_error_object_and_the_server_goes_on(generator, mode):
    failing = FailingGenerator(generator, fail_on={9}, mode=mode)  # past the prompt
    with InProcessServer(lambda: failing) as server:
        answer = complete(server.url)
        assert answer.status_code == 200
        body = answer.json()
        assert body["choices"][0]["finish_reason"] == "error"
        error = body["error"]
        assert error["type"] == "server_error" and error["code"] == "generation_failed"
        assert ("injected failure on call 9" if mode == "raise" else "outside the vocabulary") in error["message"]
        assert_served_normally(server.url, generator)


def test_a_failure_in_a_stream_is_a_last_event_naming_it_and_the_openai_client_raises(generator):
    openai = pytest.importorskip("openai")
    failing = FailingGenerator(generator, fail_on={12})
    with InProcessServer(lambda: failing) as server:
        raw = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "ROMEO:", "max_tokens": 40,
                                                               "stream": True}, timeout=60)
        payloads = events(raw.text)
        assert payloads[-1] == "[DONE]"
        assert json.loads(payloads[-2])["error"]["message"].startswith("choice 0: generation failed: RuntimeError")
        finishes = [json.loads(p)["choices"][0]["finish_reason"] for p in payloads[:-2]]
        assert finishes[-1] == "error" and all(f is None for f in finishes[:-1])

        failing.backend_made.fail_on = {failing.backend_made.calls + 12}
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        texts = []
        with pytest.raises(openai.APIError, match="injected failure"):
            for chunk in client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=40, stream=True):
                texts.append(chunk.choices[0].text)
        assert "".join(texts)  # the text made before the failure arrived first
        assert_served_normally(server.url, generator)


def test_one_request_with_an_impossible_id_does_not_touch_the_others(generator):
    failing = FailingGenerator(generator, fail_on={30}, mode="bad id", row=0)
    with InProcessServer(lambda: failing) as server:
        # One request of 3 choices: rows 0, 1, 2 in order; only row 0 gets the impossible id.
        answer = complete(server.url, prompt=["ROMEO:", "JULIET:", "MENENIUS:"], max_tokens=60, temperature=0.8).json()
        assert "choices" in answer, answer
        finishes = [c["finish_reason"] for c in answer["choices"]]
        assert finishes == ["error", "length", "length"]
        assert answer["error"]["message"].startswith("choice 0:")
        for i, start in ((1, "JULIET:"), (2, "MENENIUS:")):
            assert answer["choices"][i]["text"] == generator.generate(start, 60, temperature=0.8, seed=5 + i)
        assert_served_normally(server.url, generator)


def test_a_request_waiting_for_a_slot_is_not_hurt_by_a_failure_before_it(generator):
    failing = FailingGenerator(generator, fail_on={3})
    with InProcessServer(lambda: failing, slots=1, queue=1) as server:
        answer = complete(server.url, prompt=["ROMEO:", "JULIET:"], temperature=0.8).json()
        assert [c["finish_reason"] for c in answer["choices"]] == ["error", "length"]
        assert answer["choices"][1]["text"] == generator.generate("JULIET:", 40, temperature=0.8, seed=6)
        assert_served_normally(server.url, generator)


def test_health_reports_failed_only_for_a_model_that_did_not_load():
    def broken():
        raise OSError("no such model file")

    app = create_app({MODEL: broken}, ServeOptions(slots=2, queue=2))
    app.state.serve.load()
    state = app.state.serve
    assert state.load_error == "OSError: no such model file" and not state.ready


def test_many_failures_in_a_row_never_stop_the_engine_thread(generator):
    failing = FailingGenerator(generator, fail_on=set(range(1, 400, 3)))
    with InProcessServer(lambda: failing) as server:
        finishes = [complete(server.url, max_tokens=10).json()["choices"][0]["finish_reason"] for _ in range(20)]
        assert set(finishes) <= {"error", "length"} and "error" in finishes
        scheduler = server.app.state.serve.schedulers[MODEL]
        assert scheduler.thread.is_alive() and scheduler.idle and scheduler.internal_errors == 0
        failed = re.search(r'^charrnn_failed_choices_total\{model="tiny"\} (\d+)$', httpx.get(f"{server.url}/metrics").text,
                           re.M)
        assert int(failed.group(1)) == finishes.count("error")
        failing.backend_made.fail_on = set()
        assert_served_normally(server.url, generator)
        assert np.all(scheduler.engine.request == -1)


class FailingChars(tuple):
    """A vocabulary's characters whose lookup raises once, on the chosen lookup: a failure in the
    engine thread's own code (outside the engine), which the thread must survive too."""

    def __new__(cls, chars, fail_at):
        made = super().__new__(cls, chars)
        made.lookups, made.fail_at = 0, fail_at
        return made

    def __getitem__(self, index):
        self.lookups += 1
        if self.lookups == self.fail_at:
            raise LookupError("injected failure in the engine thread")
        return super().__getitem__(index)


def test_a_failure_in_the_engine_threads_own_code_ends_the_requests_it_held_and_the_thread_goes_on(generator):
    wrapper = FailingGenerator(generator)
    with InProcessServer(lambda: wrapper) as server:
        scheduler = server.app.state.serve.schedulers[MODEL]
        scheduler.chars = FailingChars(scheduler.chars, fail_at=5)
        answer = complete(server.url).json()
        assert answer["choices"][0]["finish_reason"] == "error"
        assert "internal error in the engine thread: LookupError" in answer["error"]["message"]
        assert scheduler.thread.is_alive() and scheduler.internal_errors == 1
        assert_served_normally(server.url, generator)
        assert scheduler.idle
