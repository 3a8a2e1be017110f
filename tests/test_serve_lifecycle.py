"""`charrnn-export serve` under pressure: a client that leaves frees its slot, requests beyond
the queue get 429, SIGTERM/SIGINT drain (running requests finish, new ones get 503) and past
--grace-period end every stream with a last event, then exit 0; a model that cannot be loaded
stops the command with a one-line error before it listens."""

from __future__ import annotations

import json
import re
import signal
import time

import httpx
import pytest
from serve_helpers import ServerProcess

from conftest import assert_one_line_error, run_cli

MODEL = "tiny"
LONG = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 1_000_000, "stream": True, "seed": 3}


@pytest.fixture(scope="module")
def one_slot(tiny_export, tmp_path_factory):
    """One slot and room for one waiting request, and lengths that take minutes to generate."""
    log = tmp_path_factory.mktemp("serve-one") / "server.log"
    with ServerProcess(["--model", f"{MODEL}={tiny_export}", "--slots", "1", "--queue", "1",
                        "--max-length", "1000000"], log) as server:
        yield server


def metric(server, name: str) -> float:
    found = re.search(rf'^charrnn_{name}{{model="{MODEL}"}} (\S+)$', httpx.get(f"{server.url}/metrics").text, re.M)
    return float(found.group(1))


def wait_for(condition, timeout: float = 60) -> None:
    """Poll until condition() holds; a deadline only so that a broken server fails the test, not hangs it."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def first_event(response) -> dict:
    """The stream's first event. The line iterator is kept on the response: closing it (as leaving
    a for loop over it does) would make httpx close the connection."""
    response.lines = getattr(response, "lines", None) or response.iter_lines()
    for line in response.lines:
        if line.startswith("data: "):
            return json.loads(line[len("data: "):])
    raise AssertionError("no event")


def test_a_client_that_disconnects_frees_its_slot(one_slot):
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{one_slot.url}/v1/completions", json=LONG) as response:
            assert first_event(response)["choices"][0]["text"]
            assert metric(one_slot, "busy_slots") == 1
        # leaving the `with` closed the connection mid-stream
    wait_for(lambda: metric(one_slot, "busy_slots") == 0)
    made = metric(one_slot, "characters_total")
    assert made < LONG["max_tokens"]  # it was cut short, not finished
    answer = httpx.post(f"{one_slot.url}/v1/completions", json={**LONG, "stream": False, "max_tokens": 20}, timeout=60)
    assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"] == "length"
    wait_for(lambda: "finish=disconnected" in one_slot.log())


def test_a_non_streaming_client_that_disconnects_frees_its_slot(one_slot):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{one_slot.url}/v1/completions", json={**LONG, "stream": False}, timeout=1.5)
    wait_for(lambda: metric(one_slot, "busy_slots") == 0)


def test_requests_beyond_the_queue_get_429_with_retry_after(one_slot):
    with httpx.Client(timeout=60) as first, httpx.Client(timeout=60) as second:
        with first.stream("POST", f"{one_slot.url}/v1/completions", json=LONG) as running:
            first_event(running)
            with second.stream("POST", f"{one_slot.url}/v1/completions", json=LONG) as waiting:
                assert waiting.status_code == 200  # accepted: it waits in the queue for the slot
                wait_for(lambda: metric(one_slot, "queue_depth") == 1)
                refused = httpx.post(f"{one_slot.url}/v1/completions", json=LONG, timeout=60)
                assert refused.status_code == 429
                assert int(refused.headers["retry-after"]) >= 1
                assert refused.json()["error"]["type"] == "rate_limit_error"
    wait_for(lambda: metric(one_slot, "busy_slots") == 0 and metric(one_slot, "queue_depth") == 0)
    assert httpx.post(f"{one_slot.url}/v1/completions", json={**LONG, "max_tokens": 5}, timeout=60).status_code == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_drains_running_requests_finish_and_new_ones_get_503(tiny_export, tmp_path, sig):
    server = ServerProcess(["--model", f"{MODEL}={tiny_export}", "--slots", "4", "--max-length", "1000000",
                            "--grace-period", "600"], tmp_path / "log")
    try:
        with httpx.Client(timeout=60) as a:
            # Long enough to be still running through the checks below (the server exits once it
            # has drained, and a tiny model makes 3000 characters in a fraction of a second).
            with a.stream("POST", f"{server.url}/v1/completions", json={**LONG, "max_tokens": 100_000}) as running:
                first_event(running)
                server.process.send_signal(sig)
                wait_for(lambda: "stopping" in server.log())
                refused = httpx.post(f"{server.url}/v1/completions", json={**LONG, "stream": False}, timeout=60)
                assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
                assert refused.headers["connection"] == "close" and refused.headers["retry-after"] == "1"
                assert httpx.get(f"{server.url}/health").json()["status"] == "stopping"
                payloads = [line[len("data: "):] for line in running.lines if line.startswith("data: ")]
        assert payloads[-1] == "[DONE]"
        assert json.loads(payloads[-2])["choices"][0]["finish_reason"] == "length"  # finished, not aborted
        assert server.process.wait(60) == 0
    finally:
        status = server.stop(signal.SIGKILL)
    assert status == 0 and "Traceback" not in server.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_past_the_grace_period_ends_every_stream_with_a_last_event_and_exits_0(tiny_export, tmp_path, sig):
    server = ServerProcess(["--model", f"{MODEL}={tiny_export}", "--slots", "4", "--max-length", "1000000",
                            "--grace-period", "0.5"], tmp_path / "log")
    try:
        with httpx.Client(timeout=60) as a, httpx.Client(timeout=60) as b:
            with a.stream("POST", f"{server.url}/v1/completions", json=LONG) as one, \
                    b.stream("POST", f"{server.url}/v1/completions", json={**LONG, "n": 2}) as two:
                first_event(one)
                first_event(two)
                server.process.send_signal(sig)
                bodies = [list(one.lines), list(two.lines)]
        for lines in bodies:
            assert all(line.startswith("data: ") for line in lines if line)
            payloads = [line[len("data: "):] for line in lines if line]
            assert payloads[-1] == "[DONE]"
            finishes = [c["choices"][0]["finish_reason"] for c in map(json.loads, payloads[:-1])]
            assert finishes.count("abort") >= 1 and all(f in (None, "abort") for f in finishes)
        assert server.process.wait(60) == 0
    finally:
        status = server.stop(signal.SIGKILL)
    assert status == 0
    assert "stopped" in server.log()


def test_a_model_that_cannot_be_loaded_stops_the_command_before_it_listens(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    result = run_cli("serve", "--model", str(broken), "--port", "0", timeout=120)
    line = assert_one_line_error(result, str(broken))
    assert "listening" not in result.stderr and "load" in line
    missing = run_cli("serve", "--model", str(tmp_path / "nothing.onnx"), "--port", "0", timeout=60)
    assert_one_line_error(missing, "no file or folder")
