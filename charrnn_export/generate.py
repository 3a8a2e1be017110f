"""Generator: a runtime's step plus the shared sampler; the Python API for generating text.

    g = Generator.load("model.onnx", runtime="onnx")
    g.generate("ROMEO: ", 500, temperature=0.8, seed=1) -> str (the generated characters)
    g.stream("ROMEO: ", 500, seed=1)  -> yields characters as they are made
    g.generate_batch(["ROMEO: ", "JULIET: "], 500, seed=1) -> list of str, one per start

The start string is fed through the model once (priming), then each sampled character is fed
back. The returned text excludes the start string. Arguments are checked when the call is
made (not when a stream is first read), and bad ones raise the project's errors.

numpy only: the runtime chosen at load time brings its own heavy imports, if any.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import ConfigError, DataError, ModelError
from .sampling import SamplingConfig, choose

SHIPPED = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
# Where the shipped models are looked for instead of the package's artifacts/ (a folder holding
# model.onnx / model.int8.onnx); lets a test or a deployment point at its own copy.
ARTIFACTS_ENV = "CHARRNN_EXPORT_ARTIFACTS"
UNKNOWN_MODES = ("error", "skip")


def shipped_model_path(which: str = "fp32") -> Path:
    """The model that `pip install` carries as package data."""
    if os.environ.get(ARTIFACTS_ENV):
        return Path(os.environ[ARTIFACTS_ENV]) / SHIPPED[which]
    from importlib.resources import files

    try:
        folder = Path(str(files("charrnn_export.artifacts")))
    except ModuleNotFoundError:
        # Run from a source checkout (e.g. `python -m` in the repo root shadows the installed
        # package): the files are in the top-level artifacts/ folder that the wheel maps there.
        folder = Path(__file__).resolve().parent.parent / "artifacts"
    return folder / SHIPPED[which]


def resolve_model_path(model: str | None, runtime: str) -> str:
    """None -> the shipped fp32 model; 'int8'/'fp32' -> the shipped ones (onnx runtime only)."""
    if runtime == "onnx" and (model is None or model in SHIPPED):
        path = shipped_model_path(model or "fp32")
        if not path.is_file():
            raise ModelError(
                f"no shipped model at {path} (it is built by training and `to-onnx`); "
                "pass --model with an exported model.onnx or export directory"
            )
        return str(path)
    if model is None:
        raise ConfigError(f"--runtime {runtime} needs --model (an export directory or checkpoint)")
    return model


def check_length(length: int) -> int:
    if length < 0:
        raise ConfigError(f"--length must be >= 0, got {length}")
    return length


class Generator:
    def __init__(self, runtime):
        self.runtime = runtime
        self.vocab = runtime.vocab

    @classmethod
    def load(cls, path: str | None = None, runtime: str = "onnx", threads: int | None = None,
             device: str = "cpu", vocab_path: str | None = None) -> "Generator":
        """path: for onnx a .onnx file or export directory (None, 'fp32', 'int8': the shipped
        model); for savedmodel an export directory or its saved_model/; for keras a run
        directory or checkpoint (vocab_path for checkpoints that hold no vocabulary)."""
        from .runtimes import load_runtime

        return cls(load_runtime(resolve_model_path(path, runtime), runtime, threads=threads, device=device,
                                vocab_path=vocab_path))

    # ------------------------------------------------------------ start strings

    def clean_start(self, start: str, unknown: str = "error") -> str:
        """The start string as the model will see it: unknown characters raise DataError
        (listing them), or are dropped with unknown="skip"."""
        if unknown not in UNKNOWN_MODES:
            raise ConfigError(f"--unknown must be one of {', '.join(UNKNOWN_MODES)}, got {unknown!r}")
        if unknown == "skip":
            missing = set(self.vocab.unknown(start))
            start = "".join(c for c in start if c not in missing)
        if not start:
            raise DataError("the start string is empty (after dropping unknown characters); give at least "
                            "one character of the model's vocabulary")
        self.vocab.encode(start)  # raises DataError listing the unknown characters
        return start

    def prime(self, start_ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Feed each start string through the model, all rows together; return the logits after
        each string's last character and the states. (batch, vocab), (batch, units)."""
        lengths = np.array([len(ids) for ids in start_ids])
        longest = int(lengths.max())
        # Right-align the strings so that they all end on the last step; a row whose string has
        # not begun keeps its zero state (its step output is discarded), so each row's state is
        # exactly that of priming it alone, in max(length) steps instead of sum(length).
        offsets = longest - lengths  # (batch,)
        tokens = np.zeros((len(start_ids), longest), dtype=np.int32)
        for row, ids in enumerate(start_ids):
            tokens[row, offsets[row]:] = ids
        state = self.runtime.zero_state(len(start_ids))  # (batch, units)
        for t in range(longest):
            logits, new_state = self.runtime.step(tokens[:, t], state)
            waiting = offsets > t  # (batch,) rows whose string starts later
            state = np.where(waiting[:, None], state, new_state) if waiting.any() else new_state
        return logits, state

    # ------------------------------------------------------------ the loop

    def generate_ids(self, starts: Sequence[str], length: int, sampling: SamplingConfig, seed: int | None,
                     unknown: str = "error") -> Iterator[np.ndarray]:
        """Check everything now, then return an iterator of (batch,) int32 ids, one array per
        generated position."""
        check_length(length)
        sampling.validate()
        if isinstance(starts, str) or len(starts) == 0:
            raise ConfigError("starts must be a non-empty list of start strings")
        start_ids = [self.vocab.encode(self.clean_start(s, unknown)) for s in starts]
        return self._ids(start_ids, length, sampling, np.random.default_rng(seed))

    def _ids(self, start_ids, length: int, sampling: SamplingConfig, rng) -> Iterator[np.ndarray]:
        if length == 0:
            return
        logits, state = self.prime(start_ids)
        step = self.runtime.step  # the hot loop: one step and one choose per character
        unk_id = self.runtime.config.get("unk_id")
        if unk_id is not None:
            # A model from the current tutorial has an [UNK] row; never emit it, as its mask does.
            def step(ids, state, _step=step):
                logits, state = _step(ids, state)
                logits[:, unk_id] = -np.inf
                return logits, state

            logits[:, unk_id] = -np.inf
        for _ in range(length - 1):
            ids = choose(logits, sampling, rng)
            yield ids
            logits, state = step(ids, state)
        yield choose(logits, sampling, rng)  # the last character needs no step after it

    # ------------------------------------------------------------ public API

    def stream(self, start: str, length: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, greedy: bool = False, seed: int | None = None,
               unknown: str = "error") -> Iterator[str]:
        """Yield the generated characters one by one as they are made."""
        ids = self.generate_ids([start], length, SamplingConfig(temperature, top_k, top_p, greedy), seed, unknown)
        chars = self.vocab.chars
        return (chars[column[0]] for column in ids)

    def generate(self, start: str, length: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, greedy: bool = False, seed: int | None = None,
                 unknown: str = "error") -> str:
        """The `length` characters that follow `start` (which is not included)."""
        return "".join(self.stream(start, length, temperature, top_k, top_p, greedy, seed, unknown))

    def generate_batch(self, starts: Sequence[str], length: int, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
                       seed: int | None = None, unknown: str = "error") -> list[str]:
        """One continuation per start string, all generated together as one batch. Starts may
        differ in length. With one start it gives the same text as generate()."""
        sampling = SamplingConfig(temperature, top_k, top_p, greedy)
        columns = list(self.generate_ids(starts, length, sampling, seed, unknown))
        if not columns:
            return ["" for _ in starts]
        table = np.array(self.vocab.chars, dtype=object)  # id -> character, decoded in one gather (7x faster than per id)
        return ["".join(row) for row in table[np.stack(columns, axis=1)].tolist()]  # (batch, length)
