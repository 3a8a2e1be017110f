"""Request validation for the server: raw body bytes -> a checked Completion, or an ApiError.

    parse_completion(body: bytes, vocabularies: {model name: Vocab}, limits, default_model) -> Completion
    ApiError(status, message, param=None, code=None, type=..., headers=None).body() -> OpenAI's error shape

The body is parsed here by hand rather than by a pydantic model so that every mistake becomes one
400 in OpenAI's shape ({"error": {"message", "type", "param", "code"}}) naming the field, never a
422 in FastAPI's shape or a 500. Numbers and ranges are checked by checks.py, the same checks the
Python API uses, so the server and `Generator.generate` accept the same settings. The `model`
field is only ever looked up among the loaded models: it is never read as a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .. import checks
from ..checks import type_error, value_error
from ..errors import ArgumentTypeError, ArgumentValueError
from ..sampling import SamplingConfig

INVALID = "invalid_request_error"
MAX_INT_DIGITS = 40  # no field takes a number this long; Python refuses to read 4,300 digits (a ValueError)
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

# Fields of OpenAI's completions request that change nothing here at their neutral value; any
# other value is refused rather than silently ignored (a client asking for echo must not get
# text without its prompt and think it has it).
NEUTRAL = {"echo": (None, False), "logprobs": (None, 0), "suffix": (None, ""), "logit_bias": (None, {}),
           "presence_penalty": (None, 0), "frequency_penalty": (None, 0)}
IGNORED = {"user"}  # accepted and ignored, as OpenAI itself does for the server's purposes
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "n", "stop", "stream",
         "stream_options", "best_of", *NEUTRAL, *IGNORED}


@dataclass(frozen=True)
class Limits:
    max_length: int = 4096  # max_tokens, characters per choice (--max-length)
    max_prompt_chars: int = 8192  # each prompt is fed one character per step
    max_choices: int = 64  # prompts x n in one request (and never more than the slots)
    max_stops: int = 4  # as OpenAI
    max_stop_chars: int = 64
    max_body_bytes: int = 1 << 20


class ApiError(Exception):
    """An error answer: HTTP status, OpenAI's error object, extra headers (Retry-After)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = INVALID, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Completion:
    model: str
    prompts: list[str]
    prompt_ids: list[np.ndarray]  # one (chars,) int32 array per prompt
    max_tokens: int
    sampling: SamplingConfig
    seed: int | None
    n: int
    stops: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    choices: int = field(init=False)

    def __post_init__(self):
        self.choices = len(self.prompts) * self.n


def _read_int(text: str) -> int:
    """json's integer reader, refusing an integer too long for any field before int() does."""
    if len(text) > MAX_INT_DIGITS:
        raise ApiError(400, f"the request body holds an integer of {len(text.lstrip('-'))} digits; no field "
                       f"takes more than {MAX_INT_DIGITS}", code="invalid_json")
    return int(text)


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body.decode("utf-8"), parse_int=_read_int)
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    except RecursionError:  # a body of nested brackets: json gives up before our size limit does
        raise ApiError(400, "the request body nests too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    return data


def parse_completion(body: bytes, vocabularies: dict, limits: Limits, default_model: str | None = None) -> Completion:
    data = parse_json(body)
    unknown = sorted(set(data) - KNOWN)
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; this server takes "
                       f"{', '.join(sorted(KNOWN - IGNORED - set(NEUTRAL)))}", param=unknown[0],
                       code="unknown_parameter")
    for name, neutral in NEUTRAL.items():
        if data.get(name) not in neutral:
            raise ApiError(400, f"{name} is not supported by this server; leave it out", param=name,
                           code="unsupported_parameter")
    model = _model(data.get("model", default_model), vocabularies)
    with _as_api_error():
        prompts = _prompts(data.get("prompt"), limits)
        max_tokens = DEFAULT_MAX_TOKENS if data.get("max_tokens") is None else checks.check_length(
            data["max_tokens"], "max_tokens")
        if max_tokens > limits.max_length:
            raise value_error("max_tokens", f"max_tokens must be <= {limits.max_length} (this server's "
                              f"--max-length), got {max_tokens}")
        n = 1 if data.get("n") is None else checks.check_int(data["n"], "n", minimum=1, maximum=limits.max_choices)
        best_of = data.get("best_of")
        if best_of is not None and checks.check_int(best_of, "best_of") != n:
            raise value_error("best_of", f"best_of must equal n ({n}) here: every choice made is returned")
        if len(prompts) * n > limits.max_choices:  # the field to change: the prompts when n is 1
            field = "prompt" if n == 1 else "n"
            raise value_error(field, f"{field}: {len(prompts)} prompt(s) x n={n} make {len(prompts) * n} choices; "
                              f"one request makes at most {limits.max_choices}")
        sampling = _sampling(data)
        seed = checks.check_seed(data.get("seed"), "seed")
        stops = _stops(data.get("stop"), limits)
        stream = False if data.get("stream") is None else checks.check_bool(data["stream"], "stream")
        include_usage = _include_usage(data.get("stream_options"), stream)
    vocab = vocabularies[model]
    prompt_ids = []
    for i, prompt in enumerate(prompts):
        missing = vocab.unknown(prompt)
        if missing:
            param = "prompt" if isinstance(data["prompt"], str) else f"prompt[{i}]"
            raise ApiError(400, f"{param} holds {len(missing)} character(s) that model {model!r} does not know: "
                           f"{' '.join(repr(c) for c in missing[:20])}; remove them (GET /v1/models lists each "
                           "model's characters)", param=param, code="unknown_characters")
        prompt_ids.append(vocab.encode(prompt))
    return Completion(model, prompts, prompt_ids, max_tokens, sampling, seed, n, stops, stream, include_usage)


class _as_api_error:
    """checks.py's ArgumentTypeError/ArgumentValueError -> a 400 naming the field they name (`.param`)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, (ArgumentTypeError, ArgumentValueError)):
            raise ApiError(400, str(error), param=getattr(error, "param", None), code="invalid_value") from None
        return False


def _model(value, vocabularies: dict) -> str:
    if value is None:
        raise ApiError(400, f"model is required; this server has {', '.join(map(repr, vocabularies))}",
                       param="model", code="missing_parameter")
    if not isinstance(value, str) or value not in vocabularies:
        shown = checks.shown(value)
        raise ApiError(404, f"model {shown} is not served here; choose one of {', '.join(map(repr, vocabularies))} "
                       "(GET /v1/models)", param="model", code="model_not_found")
    return value


def _prompts(value, limits: Limits) -> list[str]:
    if value is None:
        raise type_error("prompt", "prompt is required: a string or a list of strings")
    if isinstance(value, str):
        prompts, names = [value], ["prompt"]
    elif isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        prompts, names = value, [f"prompt[{i}]" for i in range(len(value))]
    else:
        raise type_error("prompt", f"prompt must be a string or a non-empty list of strings (token ids are not "
                         f"taken: send text), got {checks.shown(value)}")
    for name, prompt in zip(names, prompts):
        if not prompt:
            raise value_error(name, f"{name} is empty; give at least one character to continue from")
        if len(prompt) > limits.max_prompt_chars:
            raise value_error(name, f"{name} has {len(prompt)} characters; at most {limits.max_prompt_chars}")
    return prompts


def _sampling(data: dict) -> SamplingConfig:
    """The request's settings, checked by SamplingConfig.checked (checks.py), as the Python API's."""
    temperature, top_k = data.get("temperature"), data.get("top_k")
    if type(top_k) is int and top_k in (0, -1):  # 0 and -1 mean off, as vLLM's top_k
        top_k = None
    return SamplingConfig.checked(SamplingConfig.temperature if temperature is None else temperature, top_k,
                                  data.get("top_p"))


def _stops(value, limits: Limits) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise type_error("stop", f"stop must be a string or a list of strings, got {checks.shown(value)}")
    if len(stops) > limits.max_stops:
        raise value_error("stop", f"stop must hold at most {limits.max_stops} strings, got {len(stops)}")
    for stop in stops:
        if not stop or len(stop) > limits.max_stop_chars:
            raise value_error("stop", f"stop strings must have 1 to {limits.max_stop_chars} characters, got {stop!r}")
    return tuple(dict.fromkeys(stops))


def _include_usage(value, stream: bool) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict) or set(value) - {"include_usage"}:
        raise type_error("stream_options", f"stream_options must be an object like {{\"include_usage\": true}}, "
                         f"got {checks.shown(value)}")
    if not stream:
        raise value_error("stream_options", "stream_options is only for stream: true")
    return checks.check_bool(value.get("include_usage", False), "stream_options.include_usage")
