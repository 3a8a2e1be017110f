"""Checks of arguments and model outputs, raising the project's errors. Pure functions, numpy only.

Each check takes the value and the name to report, and returns the value (normalised: a numpy
integer becomes an int). The Python API passes the argument's name ("length", "top_k"); the
command line passes the flag ("--length", "--top-k"), so each says what its user typed:

    check_length(value, name="length") -> int          an int >= 0 (not a bool)
    check_seed(value, name="seed") -> int | None       None or an int in [0, 2**32)
    check_temperature(value, name="temperature") -> float   a finite number > 0
    check_top_k(value, name="top_k") -> int | None     None or an int >= 1
    check_top_p(value, name="top_p") -> float | None   None or a number in (0, 1]
    check_bool(value, name) -> bool                    True or False (not 1, not "yes")
    check_threads(value, name="threads") -> int | None None or an int in [1, available_cpus()]
    check_start(value, name="start") -> str            a string (emptiness is the vocabulary's call)
    check_starts(value, name="starts") -> list[str]    a non-empty list or tuple of strings
    check_unknown(value, name="unknown") -> str        "error" or "skip"
    check_runtime(value, name="runtime") -> str        one of RUNTIMES, listing them
    check_device(value, name="device") -> str          one of DEVICES, listing them
    check_model_path(value, name="path") -> str | None None, or a str / os.PathLike (as str)
    check_finite_logits(logits) -> None                ModelError on NaN or infinite logits

Wrong types raise ArgumentTypeError (a TypeError), wrong values ArgumentValueError (a
ValueError); both are ConfigError, so the CLI prints them as one line with exit status 2.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

from .errors import ArgumentTypeError, ArgumentValueError, ModelError
from .contract import DEVICES, RUNTIMES

SEED_LIMIT = 2**32  # seeds are 32-bit, as rng.py's generator and the web page take them
UNKNOWN_MODES = ("error", "skip")


def shown(value) -> str:
    """The value and its type, short: `'10' (str)`."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


# ---------------------------------------------------------------- numbers


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (Python or numpy, never a bool: `length=True` is a mistake, not 1) in range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer, got {shown(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ArgumentValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ArgumentValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_number(value, name: str) -> float:
    """A real number (int, float or numpy), never a bool or a string; NaN and inf pass (ranges decide)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number, got {shown(value)}")
    return float(value)


def check_length(value, name: str = "length") -> int:
    return check_int(value, name, minimum=0)


def check_seed(value, name: str = "seed") -> int | None:
    if value is None:
        return None
    seed = check_int(value, name)
    if not 0 <= seed < SEED_LIMIT:
        raise ArgumentValueError(f"{name} must be in [0, 2**32), got {seed}")
    return seed


def check_temperature(value, name: str = "temperature") -> float:
    temperature = check_number(value, name)
    if not temperature > 0 or math.isinf(temperature):  # `not >` also rejects NaN
        raise ArgumentValueError(f"{name} must be a positive number, got {value}")
    return temperature


def check_top_k(value, name: str = "top_k") -> int | None:
    return None if value is None else check_int(value, name, minimum=1)


def check_top_p(value, name: str = "top_p") -> float | None:
    if value is None:
        return None
    top_p = check_number(value, name)
    if not 0.0 < top_p <= 1.0:
        raise ArgumentValueError(f"{name} must be in (0, 1], got {value}")
    return top_p


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False, got {shown(value)}")
    return bool(value)


# ---------------------------------------------------------------- the machine


def available_cpus() -> int:
    """CPUs this process may run on (a container or taskset may allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def check_threads(value, name: str = "threads") -> int | None:
    """None (the runtime's own choice) or 1..available_cpus(). More intra-op threads than CPUs only
    makes them wait for each other (many times slower), and a huge number exhausts
    memory before the first step, so both are refused with the number this machine has."""
    if value is None:
        return None
    threads = check_int(value, name, minimum=1)
    cpus = available_cpus()
    if threads > cpus:
        raise ArgumentValueError(f"{name} {threads} is more than the {cpus} CPU(s) this machine gives the process; "
                                 f"use 1 to {cpus} (more threads than CPUs only makes them wait for each other)")
    return threads


# ---------------------------------------------------------------- strings and choices


def check_start(value, name: str = "start") -> str:
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a string, got {shown(value)}")
    return value


def check_starts(value, name: str = "starts") -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ArgumentTypeError(f"{name} must be a list of strings, got {shown(value)}")
    if not value:
        raise ArgumentValueError(f"{name} must hold at least one start string, got an empty {type(value).__name__}")
    return [check_start(s, f"{name}[{i}]") for i, s in enumerate(value)]


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be one of {', '.join(choices)}, got {shown(value)}")
    if value not in choices:
        raise ArgumentValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_unknown(value, name: str = "unknown") -> str:
    return check_choice(value, name, UNKNOWN_MODES)


def check_runtime(value, name: str = "runtime") -> str:
    return check_choice(value, name, RUNTIMES)


def check_device(value, name: str = "device") -> str:
    return check_choice(value, name, DEVICES)


def check_model_path(value, name: str = "path") -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name} must be a path (str or os.PathLike) or None, got {shown(value)}")
    return os.fspath(value)


# ---------------------------------------------------------------- model outputs


def check_finite_logits(logits: np.ndarray) -> None:
    """Raise ModelError when a step's logits (batch, vocab) hold NaN or +-inf.

    Call it on the runtime's output *before* masking ids with -inf (the [UNK] row): a model
    with broken weights (a diverged run, a damaged file) would otherwise make the sampler pick
    garbage or fail on an index, and greedy decoding would repeat id 0 without a word."""
    if np.isfinite(logits).all():  # one pass; the common case costs about a microsecond
        return
    nan = int(np.isnan(logits).sum())
    inf = int(np.isinf(logits).sum())
    raise ModelError(f"the model produced invalid logits ({nan} NaN, {inf} infinite of {logits.size}); "
                     "its weights are broken (did training diverge?), so generation stopped: re-export "
                     "it from a good checkpoint")
