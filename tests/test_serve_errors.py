"""Bad input to `charrnn-export serve`: every mistake is a 4xx in OpenAI's error shape naming the
field, never a 500, and the server keeps answering. Raw requests with httpx against the real server."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import ServerProcess

MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tiny_export, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-errors") / "server.log"
    with ServerProcess(["--model", f"{MODEL}={tiny_export}", "--slots", "8", "--max-length", "300"], log) as server:
        yield server


def post(server, body=None, content=None, headers=None):
    return httpx.post(f"{server.url}/v1/completions", json=body, content=content, headers=headers, timeout=60)


def assert_error(response, status, param=None, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


GOOD = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 10}
BAD = [
    ({"temperature": 0}, "temperature"), ({"temperature": -1}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": 2.5}, "top_k"), ({"top_k": -3}, "top_k"),
    ({"max_tokens": 301}, "max_tokens"), ({"max_tokens": -1}, "max_tokens"), ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": "10"}, "max_tokens"), ({"n": 0}, "n"), ({"n": 100}, "n"), ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"), ({"seed": 1.5}, "seed"), ({"stream": "yes"}, "stream"), ({"prompt": ""}, "prompt"),
    ({"prompt": None}, "prompt"), ({"prompt": []}, "prompt"), ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": ["A", ""]}, "prompt[1]"), ({"prompt": "A" * 9000}, "prompt"), ({"stop": 5}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": [""]}, "stop"), ({"stream_options": {"x": 1}}, "stream_options"),
    ({"stream_options": {"include_usage": True}}, "stream_options"), ({"echo": True}, "echo"),
    ({"logprobs": 2}, "logprobs"), ({"best_of": 3}, "best_of"), ({"max_token": 5}, "max_token"),
]


@pytest.mark.parametrize("change,param", BAD, ids=[f"{p}={json.dumps(c)[:30]}" for c, p in BAD])
def test_a_bad_field_is_a_400_naming_it(server, change, param):
    assert_error(post(server, {**GOOD, **change}), 400, param=param)


def test_unknown_characters_in_the_prompt_are_named(server):
    error = assert_error(post(server, {**GOOD, "prompt": "ROMEO: caf\u00e9 #1 \u20ac"}), 400, "prompt", "unknown_characters")
    assert all(repr(c) in error["message"] for c in "\u00e9#\u20ac")
    error = assert_error(post(server, {**GOOD, "prompt": ["ROMEO:", "\u00e9"]}), 400, "prompt[1]", "unknown_characters")


@pytest.mark.parametrize("model", ["gpt-4", "int8", "../artifacts/model.onnx", "/etc/passwd", 7, ""])
def test_the_model_field_names_a_loaded_model_never_a_path(server, model):
    assert_error(post(server, {**GOOD, "model": model}), 404, "model", "model_not_found")


@pytest.mark.parametrize("content", [b"{", b"not json", b'{"prompt": "A",}', b"\xff\xfe{}", b"[" * 100_000,
                                     b'"a string"', b"[1, 2]", b"null", b""])
def test_a_body_that_is_not_a_json_object_is_a_400(server, content):
    assert_error(post(server, content=content, headers={"content-type": "application/json"}), 400,
                 code="invalid_json")


def test_a_body_over_the_size_limit_is_a_413(server):
    big = json.dumps({**GOOD, "prompt": "A" * (2 << 20)}).encode()
    assert_error(post(server, content=big), 413, code="body_too_large")

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(40):
            yield b" " * 65536

    assert_error(post(server, content=chunks()), 413, code="body_too_large")


def test_unknown_routes_and_methods_answer_in_the_error_shape(server):
    assert_error(httpx.get(f"{server.url}/v1/nothing"), 404)
    assert_error(httpx.get(f"{server.url}/v1/completions"), 405)
    assert_error(httpx.get(f"{server.url}/v1/models/nope"), 404, "model")


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=12)
FIELDS = ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "n", "stop", "stream",
          "stream_options", "echo", "best_of", "user"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4))
def test_random_field_values_never_give_a_500(server, changes):
    body = json.dumps({**GOOD, **changes}, allow_nan=True)
    response = post(server, content=body.encode())
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_the_server_still_answers_after_the_bad_requests(server):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert post(server, GOOD).json()["choices"][0]["finish_reason"] == "length"
    assert " 500 " not in server.log()


def test_an_api_key_is_required_when_set(tiny_export, tmp_path):
    openai = pytest.importorskip("openai")
    with ServerProcess(["--model", f"{MODEL}={tiny_export}", "--slots", "4"], tmp_path / "log",
                       env={"CHARRNN_EXPORT_API_KEY": "s3cret"}) as server:
        assert_error(post(server, GOOD), 401, code="missing_api_key")
        assert_error(post(server, GOOD, headers={"Authorization": "Bearer wrong"}), 401, code="invalid_api_key")
        assert_error(httpx.get(f"{server.url}/v1/models"), 401)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0)
        assert client.completions.create(model=MODEL, prompt="A", max_tokens=3).usage.completion_tokens == 3
        assert httpx.get(f"{server.url}/health").status_code == 200  # for load balancers: no key
        assert "s3cret" not in server.log()
