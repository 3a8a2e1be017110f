"""Nothing a client sends reaches a 5xx, a traceback or a stuck connection, against the real
`charrnn-export serve` (a subprocess, raw sockets and httpx): integers of thousands of digits,
lone surrogates, trailing slashes, wrong methods, hang-ups (counted as 499), stalled headers and
bodies (408, closed after --timeout), and property tests over extreme floats and odd bodies.
Start-up mistakes (port in use, unknown host, unbounded flags) are one line and exit 2 before
anything says "listening".

CI runs a few dozen hypothesis examples; CHARRNN_EXPORT_FUZZ_EXAMPLES (e.g. 500) runs more.
"""

from __future__ import annotations

import json
import os
import re
import socket

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import ServerProcess, events

from conftest import assert_one_line_error, run_cli

MODEL = "tiny"
TIMEOUT = 1.0  # the server's --timeout here, seconds
SCALE = int(os.environ.get("CHARRNN_EXPORT_FUZZ_EXAMPLES", "0"))
GOOD = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 8}


def examples(ci: int) -> settings:
    return settings(max_examples=SCALE or ci, deadline=None, derandomize=not SCALE, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(tiny_export, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-robust") / "server.log"
    with ServerProcess(["--model", f"{MODEL}={tiny_export}", "--slots", "2", "--queue", "4", "--max-length", "2000",
                        "--timeout", str(TIMEOUT)], log) as server:
        yield server


def post(server, content: bytes, path="/v1/completions"):
    return httpx.post(f"{server.url}{path}", content=content, headers={"content-type": "application/json"}, timeout=60)


def assert_error(response, status, param=None, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def requests_by_status(server) -> dict[str, int]:
    text = httpx.get(f"{server.url}/metrics").text
    return {s: int(n) for s, n in re.findall(r'^charrnn_requests_total\{status="(\d+)"\} (\d+)$', text, re.M)}


def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(30)  # only so that a server that never closes fails the test instead of hanging it
    return sock


def read_until_closed(sock) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# ---------------------------------------------------------------- bodies


@pytest.mark.parametrize("body", [
    '{"prompt": "ROMEO:", "max_tokens": 3, "unknown": ' + "7" * 5000 + "}",
    '{"prompt": "ROMEO:", "max_tokens": ' + "9" * 5000 + "}",
    '{"prompt": "ROMEO:", "max_tokens": 3, "user": [' + "-" + "1" * 4301 + "]}",
    '{"prompt": "ROMEO:", "max_tokens": 9223372036854775808}',
    '{"prompt": "ROMEO:", "seed": 18446744073709551616}',
    '{"prompt": "ROMEO:", "top_k": 100000000000000000000}',
    '{"prompt": "ROMEO:", "n": 9223372036854775807}',
], ids=["unknown-5000-digits", "max_tokens-5000-digits", "nested-4302-digits", "max_tokens-2**63", "seed-2**64",
        "top_k-1e20", "n-2**63-1"])
def test_huge_integers_anywhere_are_a_400(server, body):
    error = assert_error(post(server, body.encode()), 400)
    assert len(error["message"]) < 400


@pytest.mark.parametrize("body,status", [
    ('{"prompt": "ROMEO:", "\\ud800": 1}', 400), ('{"prompt": "\\udfff"}', 400), ('{"prompt": ["A", "\\ud800"]}', 400),
    ('{"prompt": "ROMEO:", "model": "\\ud800"}', 404), ('{"prompt": "ROMEO:", "stop": "\\ud800", "max_tokens": 3}', 200),
    ('{"prompt": "ROMEO:", "user": "\\udc00\\ud800", "max_tokens": 3}', 200), ('{"prompt": "ROMEO:", "n": "\\ud800"}', 400),
])
def test_lone_surrogates_anywhere_are_answered_in_json(server, body, status):
    response = post(server, body.encode())
    assert response.status_code == status, response.text
    response.json()  # valid JSON: a surrogate echoed back is escaped, never a failed encode (a 500)


def test_more_prompts_than_slots_wait_for_them_and_too_many_name_the_prompts(server):
    answer = post(server, json.dumps({**GOOD, "prompt": ["A", "B", "C"]}).encode())  # 2 slots: one waits
    assert answer.status_code == 200 and len(answer.json()["choices"]) == 3
    assert_error(post(server, json.dumps({**GOOD, "prompt": ["A"] * 7}).encode()), 400, "prompt")
    assert_error(post(server, json.dumps({**GOOD, "n": 7}).encode()), 400, "n")
    assert_error(post(server, json.dumps({**GOOD, "prompt": ["A"] * 65}).encode()), 400, "prompt")


# ---------------------------------------------------------------- routes and methods


@pytest.mark.parametrize("method,path,status", [
    ("POST", "/v1/completions/", 404), ("GET", "/v1/models/", 404), ("GET", "/health/", 404),
    ("GET", "/v1/completions", 405), ("PUT", "/v1/completions", 405), ("DELETE", "/v1/models", 405),
    ("PATCH", "/health", 405), ("POST", "/metrics", 405), ("POST", "/nothing", 404),
])
def test_trailing_slashes_and_wrong_methods_are_error_objects_never_redirects(server, method, path, status):
    response = httpx.request(method, f"{server.url}{path}", json=GOOD, timeout=60, follow_redirects=False)
    assert_error(response, status)
    if path == "/v1/completions/":
        assert "/v1/completions (no trailing slash)" in response.json()["error"]["message"]


@pytest.mark.parametrize("raw", [b"GARBAGE\r\n\r\n", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                                 b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"])
def test_bytes_that_are_not_http_are_a_400_error_object(server, raw):
    sock = connect(server)
    sock.sendall(raw)
    head, _, body = read_until_closed(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["code"] == "invalid_http"


# ---------------------------------------------------------------- hang-ups and stalls


def test_hang_ups_are_counted_as_499_without_a_traceback(server):
    before = requests_by_status(server).get("499", 0)
    head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    sock = connect(server)  # half a body, then gone
    sock.sendall(f"{head}Content-Length: 100\r\n\r\n{{\"prompt\"".encode())
    sock.close()
    body = json.dumps({**GOOD, "max_tokens": 2000}).encode()
    sock = connect(server)  # a whole request, gone before its answer
    sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    sock.close()
    body = json.dumps({**GOOD, "max_tokens": 2000, "stream": True}).encode()
    sock = connect(server)  # gone during a stream
    sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    sock.close()
    deadline_checks = 0
    while requests_by_status(server).get("499", 0) < before + 3:
        deadline_checks += 1
        assert deadline_checks < 600, requests_by_status(server)
        httpx.get(f"{server.url}/health")
    assert "Traceback" not in server.log() and " 500 " not in server.log()
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


@pytest.mark.parametrize("sent,answer", [
    (b"", None),  # idle from the start
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n", b"HTTP/1.1 408"),  # half the headers
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\"", b"HTTP/1.1 408"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200"),  # idle after an answer (keep-alive)
    (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /hea", b"HTTP/1.1 200"),  # then half a request
], ids=["idle", "half-headers", "half-body", "keep-alive-idle", "keep-alive-half"])
def test_idle_and_stalled_connections_are_closed_after_the_timeout(server, sent, answer):
    sock = connect(server)
    sock.sendall(sent)
    data = read_until_closed(sock)  # returns once the server closes the connection
    if answer is None:
        assert data == b""
    else:
        assert data.startswith(answer), data[:200]
        if sent.endswith(b"GET /hea"):
            assert b"HTTP/1.1 408" in data and b'"code": "request_timeout"' in data


def test_a_hundred_stalled_connections_are_all_closed(server):
    half = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{"
    socks = [connect(server) for _ in range(100)]
    for i, sock in enumerate(socks):
        sock.sendall(half if i % 2 else half[:20])
    for sock in socks:
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")
        sock.close()
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


# ---------------------------------------------------------------- property tests

EXTREME_FLOATS = st.sampled_from([5e-324, 2.2250738585072014e-308, 1e-46, 1e-40, 1e-38, 1e-300, 1 - 1e-16,
                                  1 + 1e-16, 1e300, 1.7976931348623157e308, -0.0, 0.0, -1e-46]) | st.floats()
HUGE = st.integers(4000, 6000).map(lambda digits: "__HUGE%d__" % digits)
LONE = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "a\ud800b"])
LEAVES = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | EXTREME_FLOATS | HUGE | LONE
          | st.text(max_size=12))
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | LONE,
                                                                                       inner, max_size=3),
                      max_leaves=8)
FIELDS = ["prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "n", "stop", "stream", "stream_options",
          "best_of", "user", "model", "echo", "logprobs"]


def body_text(fields: dict) -> bytes:
    """JSON text for `fields`: surrogates escaped (as ensure_ascii writes them), and each __HUGEn__
    placeholder replaced by an integer literal of n digits (json.dumps refuses to write those)."""
    text = json.dumps(fields, allow_nan=True)
    return re.sub(r'"__HUGE(\d+)__"', lambda m: "1" * int(m.group(1)), text).encode()


@examples(60)
@given(changes=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5) | LONE, VALUES, max_size=4),
       sampling=st.fixed_dictionaries({}, optional={"temperature": EXTREME_FLOATS, "top_p": EXTREME_FLOATS,
                                                    "top_k": st.integers(-2, 2**40) | HUGE}))
def test_random_bodies_with_huge_integers_surrogates_and_extreme_floats_never_give_a_5xx(server, changes, sampling):
    response = post(server, body_text({**GOOD, **sampling, **changes}))
    assert response.status_code < 500, response.text
    answer = response.json()
    if response.status_code != 200:
        assert set(answer["error"]) == {"message", "type", "param", "code"}


@examples(40)
@given(sampling=st.fixed_dictionaries({"temperature": EXTREME_FLOATS, "top_p": EXTREME_FLOATS}),
       stream=st.booleans())
def test_extreme_sampling_settings_are_refused_or_make_text_of_the_vocabulary(server, sampling, stream):
    response = post(server, body_text({**GOOD, **sampling, "stream": stream, "seed": 1}))
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["param"] in ("temperature", "top_p")
        return
    payloads = events(response.text)[:-1] if stream else [response.text]
    assert payloads and not any("error" in json.loads(p) for p in payloads), response.text
    choices = [c for p in payloads for c in json.loads(p)["choices"]]
    assert choices[-1]["finish_reason"] == "length"
    assert len("".join(c["text"] for c in choices)) == GOOD["max_tokens"]


@examples(30)
@given(cut=st.floats(0, 1), stream=st.booleans(), read=st.integers(0, 300))
def test_hang_ups_at_any_point_never_give_a_5xx_or_a_traceback(server, cut, stream, read):
    body = json.dumps({**GOOD, "max_tokens": 500, "stream": stream}).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    sock = connect(server)
    sock.sendall(request[:int(len(request) * cut)])
    if cut == 1 and read:
        sock.recv(read)
    sock.close()
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_after_everything_the_server_is_healthy_and_logged_no_5xx(server):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert post(server, json.dumps(GOOD).encode()).status_code == 200
    assert not [s for s in requests_by_status(server) if s.startswith("5")]
    assert "Traceback" not in server.log()


# ---------------------------------------------------------------- start-up


def test_a_port_in_use_is_one_line_before_listening(tiny_export):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--model", f"{MODEL}={tiny_export}", "--port", port, timeout=120)
    assert_one_line_error(result, f"--port {port}", "in use")
    assert "listening" not in result.stderr


@pytest.mark.parametrize("host,fragment", [("no-such-host.invalid", "--host"), ("10.255.255.1", "--host"),
                                           ("999.1.1.1", "--host")])
def test_an_unknown_host_is_one_line_before_listening(tiny_export, host, fragment):
    result = run_cli("serve", "--model", f"{MODEL}={tiny_export}", "--host", host, "--port", "0", timeout=120)
    assert_one_line_error(result, fragment, host)
    assert "listening" not in result.stderr


@pytest.mark.parametrize("flags,fragment", [
    (["--max-length", "99999999999999999999"], "--max-length must be in 1..1,000,000,000"),
    (["--slots", "100000000"], "--slots must be in 1..1,000,000"),
    (["--slots", "0"], "--slots must be in 1..1,000,000"),
    (["--queue", "-1"], "--queue must be in 0..1,000,000"),
    (["--slots", "1000", "--max-length", "1000000000"], "--max-length 1,000,000,000"),
    (["--timeout", "0"], "--timeout must be > 0"), (["--timeout", "nan"], "--timeout"),
    (["--timeout", "inf"], "--timeout"), (["--grace-period", "-1"], "--grace-period must be >= 0"),
    (["--flush-ms", "0"], "--flush-ms"), (["--port", "70000"], "--port must be in 0..65,535"),
])
def test_unbounded_flags_are_one_line_naming_the_flag_and_its_range(tiny_export, flags, fragment):
    result = run_cli("serve", "--model", f"{MODEL}={tiny_export}", "--port", "0", *flags, timeout=120)
    line = assert_one_line_error(result, fragment)
    assert "listening" not in result.stderr
    if "needs up to" in line:
        assert re.search(r"use --max-length 1 to [\d,]+$", line), line
