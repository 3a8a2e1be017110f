"""Generator: the Python API for generating text, a thin layer over the decode engine.

    g = Generator.load("model.onnx", runtime="onnx")
    g.generate("ROMEO: ", 500, temperature=0.8, seed=1) -> str (the generated characters)
    g.stream("ROMEO: ", 500, seed=1)  -> yields characters as they are made
    g.generate_batch(["ROMEO: ", "JULIET: "], 500, seed=1) -> list of str, one per start

Each call runs engine.Engine with one slot per start string; the engine is the codebase's one
decode loop. The returned text excludes the start string. Arguments are checked when the call
is made (not when a stream is first read), and bad ones raise the project's errors naming the
argument. Row i of generate_batch is seeded with rng.row_seed(seed, i). The defaults (here, in
Generator.load and in the sample command's flags) are SampleOptions' fields. With a decode model beside
an ONNX step model (decode.onnx, decode.int8.onnx) the sampling runs inside onnxruntime;
otherwise on the host with sampling.choose: the text is the same.

numpy only: the runtime chosen at load time brings its own heavy imports, if any.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import checks
from .contract import MODEL_FILES, TUTORIAL_START, model_file
from .engine import FINISH_ERROR, SAMPLERS, Engine, backend_factory, drive, drive_tokens, submit_rows
from .errors import ConfigError, DataError, ModelError
from .rng import random_seed
from .sampling import SamplingConfig

SHIPPED = MODEL_FILES  # the precisions shipped: model.onnx, model.int8.onnx
# Where the shipped models are looked for instead of the package's artifacts/ (a folder holding
# model.onnx / model.int8.onnx); lets a test or a deployment point at its own copy.
ARTIFACTS_ENV = "CHARRNN_EXPORT_ARTIFACTS"
UNKNOWN_MODES = checks.UNKNOWN_MODES
GPU_PRECISIONS = ("fp16", "fp32")
POOL_SIZE = 4  # backends kept between calls
ONNX_FILE_RUNTIMES = ("onnx", "openvino", "auto")  # the runtimes that can take the shipped .onnx files


@dataclass(frozen=True)
class SampleOptions:
    """What generating text starts from unless told otherwise: the one home of the defaults of
    Generator.load, generate / stream / generate_batch and the `sample` command's flags."""

    runtime: str = "onnx"  # onnxruntime alone, no TensorFlow
    model: str | None = None  # the shipped fp32 model
    vocab: str | None = None
    device: str = "cpu"
    threads: int | None = None  # the runtime's own choice
    sampler: str = "auto"
    gpu_precision: str = "fp16"
    start: str = TUTORIAL_START
    unknown: str = "error"
    length: int = 1000
    temperature: float = SamplingConfig.temperature  # the sampling settings' defaults are SamplingConfig's
    top_k: int | None = SamplingConfig.top_k
    top_p: float | None = SamplingConfig.top_p
    greedy: bool = SamplingConfig.greedy
    seed: int | None = None  # a random one, reported
    num_samples: int = 1


DEFAULTS = SampleOptions()


def shipped_model_path(which: str = "fp32") -> Path:
    """The model that `pip install` carries as package data."""
    if os.environ.get(ARTIFACTS_ENV):
        return model_file(os.environ[ARTIFACTS_ENV], which)
    from importlib.resources import files

    try:
        folder = Path(str(files("charrnn_export.artifacts")))
    except ModuleNotFoundError:
        # Run from a source checkout (e.g. `python -m` in the repo root shadows the installed
        # package): the files are in the top-level artifacts/ folder that the wheel maps there.
        folder = Path(__file__).resolve().parent.parent / "artifacts"
    return model_file(folder, which)


def resolve_model_path(model: str | None, runtime: str) -> str:
    """None -> the shipped fp32 model; 'int8'/'fp32' -> the shipped ones (the ONNX runtimes:
    onnx, openvino, and auto, which picks one of them for an ONNX file)."""
    if runtime in ONNX_FILE_RUNTIMES and (model is None or model in SHIPPED):
        path = shipped_model_path(model or "fp32")
        if not path.is_file():
            raise ModelError(
                f"no shipped model at {path} (it is built by training and `to-onnx`); "
                "pass --model PATH (in Python: path=) with an exported model.onnx or export directory"
            )
        return str(path)
    if model is None:
        raise ConfigError(f"runtime {runtime!r} needs a model path (an export directory or checkpoint)")
    return model


class Generator:
    def __init__(self, runtime, make_backend=None, device: str = "cpu"):
        """make_backend: capacity -> a backend (engine.backend_factory's; default the host sampler's)."""
        self.runtime = runtime
        self.vocab = runtime.vocab
        self.device = device
        self._make_backend = make_backend or backend_factory(runtime)
        self._pool: list = []  # backends from finished calls, for the next ones
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | None = DEFAULTS.model, runtime: str = DEFAULTS.runtime,
             threads: int | None = DEFAULTS.threads, device: str = DEFAULTS.device,
             vocab_path: str | None = DEFAULTS.vocab, sampler: str = DEFAULTS.sampler,
             gpu_precision: str = DEFAULTS.gpu_precision) -> "Generator":
        """path: for onnx a .onnx file or export directory (None, 'fp32', 'int8': the shipped
        model); for savedmodel an export directory or its saved_model/; for keras a run
        directory or checkpoint (vocab_path for checkpoints that hold no vocabulary).
        sampler: 'graph' samples inside onnxruntime with the decode model written beside the
        step model, 'host' with numpy, 'auto' the graph on CUDA and the host on the CPU (the
        faster of the two there; the text is the same). gpu_precision: the GPU graph's arithmetic;
        fp16 is twice as fast at large batches, fp32 gives the CPU's text character for character
        (fp16 rounds differently, so a sampled text can part from the CPU's after a while)."""
        from .runtimes import load_runtime, resolve_runtime

        runtime = checks.check_runtime(runtime)
        device = checks.check_device(device)
        threads = checks.check_threads(threads)
        sampler = checks.check_choice(sampler, "sampler", SAMPLERS)
        path = checks.check_model_path(path)
        gpu_precision = checks.check_choice(gpu_precision, "gpu_precision", GPU_PRECISIONS)
        model_path = resolve_model_path(path, runtime)
        runtime = resolve_runtime(runtime, model_path, device)
        step = load_runtime(model_path, runtime, threads=threads, device=device, vocab_path=vocab_path)
        return cls(step, backend_factory(step, runtime, sampler, device, threads, gpu_precision), device)

    # ------------------------------------------------------------ start strings

    def clean_start(self, start: str, unknown: str = DEFAULTS.unknown) -> str:
        """The start string as the model will see it: unknown characters raise DataError
        (listing them), or are dropped with unknown="skip"."""
        start = checks.check_start(start)
        unknown = checks.check_unknown(unknown)
        if unknown == "skip":
            missing = set(self.vocab.unknown(start))
            start = "".join(c for c in start if c not in missing)
        if not start:
            raise DataError("the start string is empty (after dropping unknown characters); give at least "
                            "one character of the model's vocabulary")
        self.vocab.encode(start)  # raises DataError listing the unknown characters
        return start

    # ------------------------------------------------------------ the engine

    def backend(self, capacity: int):
        """A backend with at least `capacity` rows that the caller owns until it gives it back:
        one kept from an earlier call when there is one (on CUDA it holds captured graphs worth
        reusing), so that calls from several threads never share a backend's state."""
        with self._lock:
            for index, backend in enumerate(self._pool):
                if backend.capacity >= capacity:
                    return self._pool.pop(index)
        return self._make_backend(capacity)

    def give_back(self, backend) -> None:
        with self._lock:
            if len(self._pool) < POOL_SIZE:
                self._pool.append(backend)

    def engine_for(self, starts: Sequence[str], length: int, sampling: SamplingConfig, seed: int | None,
                   unknown: str) -> tuple[Engine, list[int]]:
        """Check everything now; return an engine with one request per start (row order)."""
        length = checks.check_length(length)
        seed = checks.check_seed(seed)
        start_ids = [self.vocab.encode(self.clean_start(s, unknown)) for s in starts]
        seed = random_seed() if seed is None else seed
        engine = Engine(self.backend(len(start_ids)), capacity=len(start_ids))
        return engine, submit_rows(engine, start_ids, length, sampling, seed)

    def generate_ids(self, starts: Sequence[str], length: int, sampling: SamplingConfig, seed: int | None,
                     unknown: str = DEFAULTS.unknown) -> Iterator[tuple[int, int]]:
        """(row, token id) for each character as the engine makes it. `sampling` is checked
        here unless it came from SamplingConfig.checked (then its checks already ran)."""
        engine, rids = self.engine_for(checks.check_starts(starts), length, sampling.validate(), seed, unknown)
        row_of = {rid: row for row, rid in enumerate(rids)}
        return _run(engine, row_of, self.give_back)

    # ------------------------------------------------------------ public API

    def stream(self, start: str, length: int,
               temperature: float = DEFAULTS.temperature, top_k: int | None = DEFAULTS.top_k,
               top_p: float | None = DEFAULTS.top_p, greedy: bool = DEFAULTS.greedy,
               seed: int | None = DEFAULTS.seed, unknown: str = DEFAULTS.unknown) -> Iterator[str]:
        """Yield the generated characters one by one as they are made."""
        sampling = SamplingConfig.checked(temperature, top_k, top_p, greedy)
        ids = self.generate_ids([checks.check_start(start)], length, sampling, seed, unknown)
        chars = self.vocab.chars
        return (chars[token] for _, token in ids)

    def generate(self, start: str, length: int,
                 temperature: float = DEFAULTS.temperature, top_k: int | None = DEFAULTS.top_k,
                 top_p: float | None = DEFAULTS.top_p, greedy: bool = DEFAULTS.greedy,
                 seed: int | None = DEFAULTS.seed, unknown: str = DEFAULTS.unknown) -> str:
        """The `length` characters that follow `start` (which is not included)."""
        return "".join(self.stream(start, length, temperature, top_k, top_p, greedy, seed, unknown))

    def generate_batch(self, starts: Sequence[str], length: int,
                       temperature: float = DEFAULTS.temperature, top_k: int | None = DEFAULTS.top_k,
                       top_p: float | None = DEFAULTS.top_p, greedy: bool = DEFAULTS.greedy,
                       seed: int | None = DEFAULTS.seed, unknown: str = DEFAULTS.unknown) -> list[str]:
        """One continuation per start string, all generated together as one batch. Starts may
        differ in length. Row i gives the text generate() gives with seed + i."""
        sampling = SamplingConfig.checked(temperature, top_k, top_p, greedy)
        engine, rids = self.engine_for(checks.check_starts(starts), length, sampling, seed, unknown)
        row_of = np.full(max(rids) + 1, -1, np.int64)  # request id -> row
        row_of[rids] = np.arange(len(rids))
        rows, tokens = _run_arrays(engine, self.give_back)
        # Kept whole and sorted once: a Python step per character would cost as much as the
        # model at large batches. A stable sort keeps each row's characters in the order made.
        rows = row_of[rows]
        order = np.argsort(rows, kind="stable")
        chars = np.array(self.vocab.chars, dtype=object)[tokens[order]]
        counts = np.bincount(rows, minlength=len(rids))
        ends = np.cumsum(counts)
        return ["".join(chars[end - count:end]) for end, count in zip(ends.tolist(), counts.tolist())]


def _check_endings(endings) -> None:
    for end in endings:  # nothing cancels these requests: an end is "length" or the model's fault
        if end.finish == FINISH_ERROR:
            raise ModelError(f"{end.cause}: export it again from a good checkpoint")


def _run(engine: Engine, row_of: dict[int, int], give_back) -> Iterator[tuple[int, int]]:
    try:
        for rid, token in drive_tokens(engine, _check_endings):
            yield row_of[rid], token
    finally:  # also when a stream is dropped half read: a new request resets the rows it takes
        give_back(engine.backend)


def _run_arrays(engine: Engine, give_back) -> tuple[np.ndarray, np.ndarray]:
    """Every character the engine makes, as (request ids, token ids) in the order made."""
    made_rids, made_tokens = [], []
    try:
        for rids, tokens, endings in drive(engine):
            made_rids.append(rids)
            made_tokens.append(tokens)
            _check_endings(endings)
    finally:
        give_back(engine.backend)
    if not made_rids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(made_rids).astype(np.int64), np.concatenate(made_tokens).astype(np.int64)
