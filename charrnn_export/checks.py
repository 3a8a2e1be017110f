"""Checks of arguments and model outputs, raising the project's errors. Pure functions, numpy only.

Each check takes the value and the name to report, and returns the value (normalised: a numpy
integer becomes an int). The Python API passes the argument's name ("length", "top_k"); the
command line passes the flag ("--length", "--top-k"), so each says what its user typed:

    check_length(value, name="length") -> int          an int in [0, LENGTH_LIMIT]
    check_seed(value, name="seed") -> int | None       None or an int in [0, 2**32)
    check_temperature(value, name="temperature") -> float   a number in [MIN_TEMPERATURE, MAX_TEMPERATURE]
    check_top_k(value, name="top_k") -> int | None     None or an int in [1, TOP_K_LIMIT]
    check_top_p(value, name="top_p") -> float | None   None or a number in (0, 1]
    check_count(value, name, maximum) -> int           an int in [1, maximum] (samples, batch sizes)
    check_fits_memory(rows, bytes_per_row, name) -> int   rows whose buffers fit in half the free memory
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
ValueError); both are ConfigError, so the CLI prints them as one line with exit status 2. Each
carries the name it reports as `.param` (the server names the request field with it).

Every number is bounded here, where it enters, so that nothing downstream (numpy's int64 and
float32 arrays, the engine's buffers, the JavaScript page's int32 top-k) meets a value it cannot
hold: a bound names the argument and its range.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

from .errors import ArgumentTypeError, ArgumentValueError, ModelError
from .contract import DEVICES, RUNTIMES

SEED_LIMIT = 2**32  # seeds are 32-bit, as rng.py's generator and the web page (sampling.js) take them
# Characters one request may ask for: far beyond any real use (days of generation), and well
# inside the engine's int64 counters.
LENGTH_LIMIT = 2**40
# Any k at or above the vocabulary's size is the same as no cut; the bound keeps k inside int32,
# which the web page's `topK | 0` and every decode graph's int64 input hold exactly.
TOP_K_LIMIT = 2**31 - 1
# Below MIN_TEMPERATURE the temperature magnifies logit differences finer than float32 resolves
# in logits of ordinary size (about 1e-6 at 10), so the choice is greedy in all but name: such a
# temperature is refused, naming greedy. Above MAX_TEMPERATURE every character is equally likely
# long before; the bound keeps the temperature finite in float32 (sampling.py divides by it).
MIN_TEMPERATURE = 1e-6
MAX_TEMPERATURE = 1e30
UNKNOWN_MODES = ("error", "skip")


def shown(value) -> str:
    """The value and its type, short: `'10' (str)`."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def type_error(name: str, message: str) -> ArgumentTypeError:
    """ArgumentTypeError naming `name` in its message and in `.param`."""
    error = ArgumentTypeError(message)
    error.param = name
    return error


def value_error(name: str, message: str) -> ArgumentValueError:
    """ArgumentValueError naming `name` in its message and in `.param`."""
    error = ArgumentValueError(message)
    error.param = name
    return error


# ---------------------------------------------------------------- numbers


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (Python or numpy, never a bool: `length=True` is a mistake, not 1) in range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise type_error(name, f"{name} must be an integer, got {shown(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise value_error(name, f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise value_error(name, f"{name} must be <= {maximum}, got {value}")
    return value


def check_number(value, name: str) -> float:
    """A real number (int, float or numpy), never a bool or a string; NaN and inf pass (ranges decide)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise type_error(name, f"{name} must be a number, got {shown(value)}")
    return float(value)


def check_tolerance(value, name: str = "atol") -> float:
    """A parity tolerance: a positive finite number (`not >` also refuses NaN)."""
    value = check_number(value, name)
    if not (value > 0 and math.isfinite(value)):
        raise value_error(name, f"{name} must be a positive finite number, got {value}")
    return value


def check_length(value, name: str = "length") -> int:
    length = check_int(value, name, minimum=0)
    if length > LENGTH_LIMIT:
        raise value_error(name, f"{name} must be <= 2**40 (in [0, 2**40]), got {length}")
    return length


def check_seed(value, name: str = "seed") -> int | None:
    if value is None:
        return None
    seed = check_int(value, name)
    if not 0 <= seed < SEED_LIMIT:
        raise value_error(name, f"{name} must be in [0, 2**32), got {seed}")
    return seed


def check_temperature(value, name: str = "temperature") -> float:
    """A number in [MIN_TEMPERATURE, MAX_TEMPERATURE]. A smaller positive temperature is refused,
    not quietly turned into greedy decoding: below 1e-6 it only magnifies differences finer than
    the logits' own float32 resolution, so the user is told to ask for greedy instead."""
    temperature = check_number(value, name)
    if not temperature > 0 or math.isinf(temperature):  # `not >` also rejects NaN
        raise value_error(name, f"{name} must be a positive number, got {value}")
    if temperature < MIN_TEMPERATURE:
        raise value_error(name, f"{name} must be in [1e-06, 1e+30], got {value}: below 1e-06 sampling is "
                          "greedy in all but name; ask for greedy decoding instead")
    if temperature > MAX_TEMPERATURE:
        raise value_error(name, f"{name} must be in [1e-06, 1e+30], got {value} (far above 1, every "
                          "character is already equally likely)")
    return temperature


def check_top_k(value, name: str = "top_k") -> int | None:
    """None or an int in [1, TOP_K_LIMIT]; a k at or above the vocabulary's size cuts nothing."""
    if value is None:
        return None
    top_k = check_int(value, name, minimum=1)
    if top_k > TOP_K_LIMIT:
        raise value_error(name, f"{name} must be <= 2**31 - 1 (in [1, 2**31 - 1]), got {top_k} (any k at or "
                          "above the vocabulary's size already means no cut)")
    return top_k


def check_top_p(value, name: str = "top_p") -> float | None:
    """None or a number in (0, 1]. A top_p below the smallest float32 probability (about 1.4e-45)
    rounds to 0 where the sampler sees it and is greedy (sampling.py, rule 1); one that rounds to 1
    (1 - 1e-16) is no cut."""
    if value is None:
        return None
    top_p = check_number(value, name)
    if not 0.0 < top_p <= 1.0:
        raise value_error(name, f"{name} must be in (0, 1], got {value}")
    return top_p


def check_count(value, name: str, maximum: int) -> int:
    """An int in [1, maximum]: a number of samples, a batch size."""
    count = check_int(value, name)
    if not 1 <= count <= maximum:
        raise value_error(name, f"{name} must be in [1, {maximum:,}], got {count:,}")
    return count


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_memory(rows: int, bytes_per_row: int, name: str) -> int:
    """`rows` of `bytes_per_row` each must fit in half the memory free now: refused before any
    work, naming the largest that fits, rather than a MemoryError or the kernel's OOM killer later."""
    free = available_memory()
    if free is None or rows * bytes_per_row <= free // 2:
        return rows
    largest = max(1, free // 2 // max(1, bytes_per_row))
    raise value_error(name, f"{name} {rows:,} needs about {rows * bytes_per_row / 2**30:,.1f} GiB, more than half "
                      f"the {free / 2**30:,.1f} GiB free; use at most {largest:,}")


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise type_error(name, f"{name} must be True or False, got {shown(value)}")
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
        raise value_error(name, f"{name} {threads} is more than the {cpus} CPU(s) this machine gives the process; "
                                 f"use 1 to {cpus} (more threads than CPUs only makes them wait for each other)")
    return threads


# ---------------------------------------------------------------- strings and choices


def check_start(value, name: str = "start") -> str:
    if not isinstance(value, str):
        raise type_error(name, f"{name} must be a string, got {shown(value)}")
    return value


def check_starts(value, name: str = "starts") -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise type_error(name, f"{name} must be a list of strings, got {shown(value)}")
    if not value:
        raise value_error(name, f"{name} must hold at least one start string, got an empty {type(value).__name__}")
    return [check_start(s, f"{name}[{i}]") for i, s in enumerate(value)]


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise type_error(name, f"{name} must be one of {', '.join(choices)}, got {shown(value)}")
    if value not in choices:
        raise value_error(name, f"{name} must be one of {', '.join(choices)}, got {value!r}")
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
        raise type_error(name, f"{name} must be a path (str or os.PathLike) or None, got {shown(value)}")
    return os.fspath(value)


# ---------------------------------------------------------------- model outputs


def check_finite_logits(logits: np.ndarray) -> None:
    """Raise ModelError when a step's logits (batch, vocab) hold NaN or +-inf.

    Call it on the runtime's output *before* masking ids with -inf (the [UNK] row): a model
    with broken weights (a diverged run, a damaged file) would otherwise make the sampler pick
    garbage or fail on an index, and greedy decoding would repeat id 0 without a word."""
    if np.isfinite(logits).all():  # one pass: the common case is cheap
        return
    nan = int(np.isnan(logits).sum())
    inf = int(np.isinf(logits).sum())
    raise ModelError(f"the model produced invalid logits ({nan} NaN, {inf} infinite of {logits.size}); "
                     "its weights are broken (did training diverge?), so generation stopped: re-export "
                     "it from a good checkpoint")
