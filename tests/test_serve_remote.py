"""`charrnn-export serve` runs each model's engine in a process of its own (serve/remote.py): the
process ends with the server, however the server ends, and an engine process that dies ends its
streams with an error event naming it, after which the server answers 503 (never a 500) and
still stops cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import ServerProcess

MODEL = "tiny"
LONG = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 1_000_000, "stream": True, "seed": 3}


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").glob("*/children") for c in task.read_text().split()]


def engine_processes(pid: int) -> list[int]:
    """The server's children that multiprocessing spawned to run a Scheduler (not its resource tracker)."""
    return [child for child in children(pid) if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; only its parent's wait is missing


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def server_args(export) -> list[str]:
    return ["--model", f"{MODEL}={export}", "--slots", "4", "--max-length", "1000000"]


def test_the_engine_runs_in_a_process_of_its_own_that_ends_with_the_server(tiny_export, tmp_path):
    server = ServerProcess(server_args(tiny_export), tmp_path / "server.log")
    try:
        engines = engine_processes(server.process.pid)
        assert len(engines) == 1
        answer = httpx.post(f"{server.url}/v1/completions", json={**LONG, "max_tokens": 40, "stream": False},
                            timeout=60).json()
        assert len(answer["choices"][0]["text"]) == 40
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert f'charrnn_characters_total{{model="{MODEL}"}} 40' in metrics  # counted in the engine process
    finally:
        assert server.stop(signal.SIGTERM) == 0
    wait_until(lambda: not any(alive(pid) for pid in engines))


def test_a_server_killed_outright_leaves_no_engine_process_behind(tiny_export, tmp_path):
    server = ServerProcess(server_args(tiny_export), tmp_path / "server.log")
    engines = engine_processes(server.process.pid)
    assert engines
    server.stop(signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in engines))  # its end of the pipe closed: it ends itself


def test_an_engine_process_that_dies_ends_its_streams_with_an_error_and_the_server_answers_503(tiny_export, tmp_path):
    server = ServerProcess(server_args(tiny_export), tmp_path / "server.log")
    try:
        [engine] = engine_processes(server.process.pid)
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", f"{server.url}/v1/completions", json=LONG) as response:
                lines = response.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))
                os.kill(engine, signal.SIGKILL)
                events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            error = json.loads(events[-2])["error"]
            assert error["code"] == "generation_failed" and "engine process exited" in error["message"]
            health = client.get(f"{server.url}/health")
            assert health.status_code == 503 and "engine process exited" in health.json()["error"]
            refused = client.post(f"{server.url}/v1/completions", json={**LONG, "stream": False})
            assert refused.status_code == 503 and "engine process exited" in refused.json()["error"]["message"]
            assert client.get(f"{server.url}/metrics").status_code == 200
    finally:
        assert server.stop(signal.SIGTERM) == 0
    assert "Traceback" not in server.log()


def test_an_engine_process_that_cannot_load_its_model_says_why(tmp_path):
    from charrnn_export.errors import ModelError
    from charrnn_export.serve.options import ServeOptions
    from charrnn_export.serve.remote import ModelSpec, RemoteScheduler

    with pytest.raises(ModelError, match=r"the engine process could not start: .*nothing\.onnx"):
        RemoteScheduler(ModelSpec(str(tmp_path / "nothing.onnx")), ServeOptions(slots=2))



def test_a_job_taken_just_after_a_cancel_is_served_though_the_engine_has_not_freed_its_slot(tiny_export):
    """One slot, room for one waiting: a job runs, a short one waits, the first is cancelled and a
    third comes at once. This process counts the cancelled job gone at once and takes the third;
    the engine process frees the slot only at its next step, and takes the third meanwhile too
    (the two messages reach it back to back) rather than end it with an error."""
    from charrnn_export.sampling import SamplingConfig
    from charrnn_export.serve.options import ServeOptions
    from charrnn_export.serve.remote import ModelSpec, RemoteScheduler
    from charrnn_export.serve.scheduler import Job

    scheduler = RemoteScheduler(ModelSpec(str(tiny_export)), ServeOptions(slots=1, queue=1))

    async def run() -> None:
        ids = scheduler.vocab.encode("A")
        running, waiting, third = (Job([(ids, seed)], length, SamplingConfig.checked(0.8))
                                   for seed, length in ((1, 1_000_000), (2, 5), (3, 5)))
        scheduler.submit(running)
        scheduler.submit(waiting)
        async for _ in running.updates():  # it runs
            break
        scheduler.cancel(running)
        scheduler.submit(third)
        for job in (waiting, third):
            items = [item async for batch in job.updates() for item in batch]
            assert items[-1][2] == "length" and len("".join(text for _, text, _ in items)) == 5, items

    try:
        asyncio.run(asyncio.wait_for(run(), 60))
    finally:
        scheduler.close()
