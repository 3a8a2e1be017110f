"""`charrnn-export serve`: the real server (uvicorn, a free port on 127.0.0.1) on the tiny model,
driven by the official openai client and by httpx; every seeded answer is Generator's text."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serve_helpers import ServerProcess, cut_at_stop, events

from charrnn_export import Generator

openai = pytest.importorskip("openai")
MODEL = "tiny"


@pytest.fixture(scope="module")
def generator(tiny_export):
    return Generator.load(str(tiny_export))


@pytest.fixture(scope="module")
def server(tiny_export, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with ServerProcess(["--model", f"{MODEL}={tiny_export}", "--slots", "64", "--queue", "256",
                        "--max-length", "5000"], log) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="dummy", max_retries=0, timeout=120)


def test_completion_with_the_openai_client_is_generators_text(client, generator):
    answer = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=300, temperature=0.8, seed=11)
    choice = answer.choices[0]
    assert choice.text == generator.generate("ROMEO:", 300, temperature=0.8, seed=11)
    assert (choice.index, choice.finish_reason) == (0, "length")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (6, 300, 306)
    assert answer.model == MODEL and answer.object == "text_completion"


def test_stream_with_the_openai_client_is_generators_text_in_several_events(client, generator):
    chunks = list(client.completions.create(model=MODEL, prompt="JULIET:", max_tokens=3000, top_p=0.9, seed=5,
                                            stream=True, extra_body={"top_k": 12}))
    text = "".join(c.choices[0].text for c in chunks)
    assert text == generator.generate("JULIET:", 3000, top_k=12, top_p=0.9, seed=5)
    assert len(chunks) > 1 and all(len(c.choices) == 1 for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]


def test_raw_event_stream_ends_with_the_finish_reason_then_done(server, generator):
    body = {"model": MODEL, "prompt": "MENENIUS:", "max_tokens": 500, "seed": 2, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        seed = response.headers["x-seed"]
        raw = response.read().decode()
    payloads = events(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    usage = chunks.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 500
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["text"] for c in chunks) == generator.generate("MENENIUS:", 500, seed=2)
    assert seed == "2" and all(c["seed"] == 2 for c in chunks)


def test_n_choices_and_prompt_lists_use_seed_plus_choice_index(client, generator):
    prompts = ["ROMEO:", "First Citizen:"]
    answer = client.completions.create(model=MODEL, prompt=prompts, n=3, max_tokens=120, temperature=1.1, seed=40)
    expected = generator.generate_batch([p for p in prompts for _ in range(3)], 120, temperature=1.1, seed=40)
    assert [c.index for c in answer.choices] == list(range(6))
    assert [c.text for c in answer.choices] == expected
    assert expected[4] == generator.generate(prompts[1], 120, temperature=1.1, seed=44)
    assert answer.usage.prompt_tokens == sum(map(len, prompts)) and answer.usage.completion_tokens == 720


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_cuts_the_text_before_it(client, generator, stream):
    full = generator.generate("ROMEO:", 400, seed=9)
    stop = full[150:153]  # a string the text certainly holds; it may occur earlier too
    expected, finish = cut_at_stop(full, [stop, "#never#"])
    assert finish == "stop" and len(expected) <= 150
    answer = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=400, seed=9,
                                       stop=[stop, "#never#"], stream=stream)
    if stream:
        chunks = list(answer)
        text, reason = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
    else:
        text, reason = answer.choices[0].text, answer.choices[0].finish_reason
    assert (text, reason) == (expected, "stop")


def test_a_request_without_a_seed_reports_the_seed_that_makes_it_again(server, generator):
    answer = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "ROMEO:", "max_tokens": 80},
                        timeout=60).json()
    seed = answer["seed"]
    assert answer["choices"][0]["text"] == generator.generate("ROMEO:", 80, seed=seed)


MIXED = [dict(temperature=1.0), dict(temperature=0.6), dict(temperature=1.4, top_k=3), dict(top_p=0.8),
         dict(temperature=0.9, top_k=10, top_p=0.95)]


def test_40_concurrent_mixed_requests_each_give_generators_text(server, client, generator):
    prompts = ["ROMEO:", "JULIET:\nO", "MENENIUS:", "A", "First Citizen:\nBefore we proceed"]

    def settings(i: int):
        chosen = MIXED[(i // 5) % 5]
        return (prompts[i % 5], 50 + 37 * i, chosen.get("top_k"),
                dict(temperature=chosen.get("temperature", 1.0), top_p=chosen.get("top_p")))

    # Generator.generate is not thread-safe (it reuses one backend), so the expectations come first.
    expectations = []
    for i in range(40):
        prompt, length, top_k, sampling = settings(i)
        expectations.append(generator.generate(prompt, length, top_k=top_k, seed=1000 + i, **sampling))

    def one(i: int):
        prompt, length, top_k, sampling = settings(i)
        expected = expectations[i]
        kind = i % 4
        if kind == 0:  # the openai client, whole answer
            answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=length, seed=1000 + i,
                                               extra_body={"top_k": top_k}, **sampling)
            return answer.choices[0].text, expected
        if kind == 1:  # the openai client, streamed
            chunks = client.completions.create(model=MODEL, prompt=prompt, max_tokens=length, seed=1000 + i,
                                               stream=True, extra_body={"top_k": top_k}, **sampling)
            return "".join(c.choices[0].text for c in chunks), expected
        body = {"model": MODEL, "prompt": prompt, "max_tokens": length, "seed": 1000 + i, "top_k": top_k,
                "stream": kind == 3, **sampling}
        response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        if kind == 3:
            chunks = [json.loads(p) for p in events(response.text)[:-1]]
            return "".join(c["choices"][0]["text"] for c in chunks), expected
        return response.json()["choices"][0]["text"], expected

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(one, range(40)))
    for i, (text, expected) in enumerate(results):
        assert text == expected, f"request {i}"
    busy_seen = re.findall(r'charrnn_steps_total\{model="tiny"\} (\d+)', httpx.get(f"{server.url}/metrics").text)
    assert busy_seen and int(busy_seen[0]) > 0


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    before = httpx.get(f"{server.url}/metrics").text
    client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=77, seed=1)
    httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "ROMEO:", "temperature": 0})
    after = httpx.get(f"{server.url}/metrics").text

    def value(text, name):
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    assert value(after, 'charrnn_characters_total{model="tiny"}') - value(before, 'charrnn_characters_total{model="tiny"}') == 77
    assert value(after, 'charrnn_requests_total{status="400"}') == value(before, 'charrnn_requests_total{status="400"}') + 1
    assert value(after, 'charrnn_busy_slots{model="tiny"}') == 0
    assert value(after, 'charrnn_slots{model="tiny"}') == 64
    assert value(after, 'charrnn_step_seconds_count{model="tiny"}') > value(before, 'charrnn_step_seconds_count{model="tiny"}')
    assert "# TYPE charrnn_step_seconds histogram" in after and "charrnn_queue_depth" in after


def test_each_request_is_one_log_line(server):
    lines = server.log().count('"POST /v1/completions"')
    for body in ({"model": MODEL, "prompt": "A", "max_tokens": 5}, {"model": MODEL, "prompt": 5},
                 {"model": MODEL, "prompt": "A", "max_tokens": 5, "stream": True}):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    httpx.get(f"{server.url}/health")
    deadline = time.monotonic() + 30  # the line is written once the answer is sent, so it may trail it
    while server.log().count('"POST /v1/completions"') < lines + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    log = server.log()
    assert log.count('"POST /v1/completions"') == lines + 3
    assert re.search(r'"POST /v1/completions" 400 .*error=invalid_value', log)
