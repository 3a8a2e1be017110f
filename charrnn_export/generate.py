"""Generator: a runtime's step plus the shared sampler; the Python API for generating text.

    g = Generator.load("model.onnx", runtime="onnx")
    g.generate("ROMEO: ", 500, temperature=0.8, seed=1) -> str (the generated characters)
    g.stream("ROMEO: ", 500, seed=1)  -> yields characters as they are made
    g.generate_batch(["ROMEO: ", "JULIET: "], 500, seed=1) -> list of str

The start string is fed through the model once (priming), then each sampled character is fed
back. The returned text excludes the start string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import DataError
from .sampling import SamplingConfig, choose

SHIPPED = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def shipped_model_path(which: str = "fp32") -> Path:
    """The model that `pip install` carries as package data."""
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
        return str(shipped_model_path(model or "fp32"))
    if model is None:
        from .errors import ConfigError

        raise ConfigError(f"--runtime {runtime} needs --model (an export directory or checkpoint)")
    return model


class Generator:
    def __init__(self, runtime):
        self.runtime = runtime
        self.vocab = runtime.vocab

    @classmethod
    def load(cls, path: str | None = None, runtime: str = "onnx", threads: int | None = None,
             device: str = "cpu", vocab_path: str | None = None) -> "Generator":
        from .runtimes import load_runtime

        return cls(load_runtime(resolve_model_path(path, runtime), runtime, threads=threads, device=device,
                                vocab_path=vocab_path))

    def encode_start(self, start: str, unknown: str = "error") -> np.ndarray:
        if unknown == "skip":
            missing = set(self.vocab.unknown(start))
            start = "".join(c for c in start if c not in missing)
        if not start:
            raise DataError("the start string is empty (after dropping unknown characters); give at least "
                            "one character of the model's vocabulary")
        return self.vocab.encode(start)

    def prime(self, start_ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Feed each start string through the model; return the last logits and the states."""
        lengths = {len(ids) for ids in start_ids}
        if len(lengths) == 1:
            tokens = np.stack(start_ids)  # (batch, length): prime all together
            state = self.runtime.zero_state(len(start_ids))
            for t in range(tokens.shape[1]):
                logits, state = self.runtime.step(tokens[:, t], state)
            return logits, state
        parts = [self.prime([ids]) for ids in start_ids]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def generate_ids(self, starts: Sequence[str], length: int, sampling: SamplingConfig, seed: int | None,
                     unknown: str = "error") -> Iterator[np.ndarray]:
        """Yield (batch,) ids, one array per generated position."""
        if length < 0:
            raise DataError(f"--length must be >= 0, got {length}")
        sampling.validate()
        start_ids = [self.encode_start(s, unknown) for s in starts]
        rng = np.random.default_rng(seed)
        if length == 0:
            return
        logits, state = self.prime(start_ids)
        for position in range(length):
            ids = choose(logits, sampling, rng)
            yield ids
            if position + 1 < length:
                logits, state = self.runtime.step(ids, state)

    def stream(self, start: str, length: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, greedy: bool = False, seed: int | None = None,
               unknown: str = "error") -> Iterator[str]:
        sampling = SamplingConfig(temperature, top_k, top_p, greedy)
        chars = self.vocab.chars
        for ids in self.generate_ids([start], length, sampling, seed, unknown):
            yield chars[ids[0]]

    def generate(self, start: str, length: int, **options) -> str:
        return "".join(self.stream(start, length, **options))

    def generate_batch(self, starts: Sequence[str], length: int, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
                       seed: int | None = None, unknown: str = "error") -> list[str]:
        sampling = SamplingConfig(temperature, top_k, top_p, greedy)
        columns = list(self.generate_ids(list(starts), length, sampling, seed, unknown))
        if not columns:
            return ["" for _ in starts]
        return [self.vocab.decode(row) for row in np.stack(columns, axis=1)]
