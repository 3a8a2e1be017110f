"""Choosing the next character from logits: temperature, top-k, top-p, greedy. numpy only.

    SamplingConfig(temperature, top_k, top_p, greedy).validate()
    choose(logits (batch, vocab) float32, config, rng) -> ids (batch,) int32

Every runtime's logits go through this one function with one numpy Generator, so the same
weights and seed give the same text whichever runtime computed the step.

The arithmetic is float32 throughout (the logits are float32 already) and the draw is an
inverse-CDF draw with exactly one uniform number per row. Batch 1, the common case and the one
where Python overhead shows next to the model's step, has its own short path that does the same
float32 operations on the single row, so it picks the same id as the general path would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False  # argmax; ignores temperature, top-k and top-p

    def validate(self) -> "SamplingConfig":
        if not self.temperature > 0 or math.isinf(self.temperature):  # `not >` also rejects NaN
            raise ConfigError(f"--temperature must be a positive number, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        return self


def choose(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """One id per row of `logits` (batch, vocab). Draws exactly one uniform number per row
    (none when greedy)."""
    if config.greedy:
        return np.argmax(logits, axis=1).astype(np.int32)  # ties go to the lowest id
    if len(logits) == 1:
        return choose_one(logits[0], config, rng)
    return choose_rows(logits, config, rng)


def choose_rows(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """The general path: any batch size, top-k and top-p."""
    scaled = scale(logits, config.temperature)  # (batch, vocab) float32
    vocab_size = scaled.shape[1]
    if config.top_k is not None and config.top_k < vocab_size:
        kth = np.partition(scaled, -config.top_k, axis=1)[:, -config.top_k, None]  # (batch, 1)
        scaled = np.where(scaled < kth, -np.inf, scaled)  # ties with the k-th are kept
    weights = np.exp(scaled - scaled.max(axis=1, keepdims=True))  # unnormalised probabilities, max 1
    if config.top_p is not None and config.top_p < 1.0:
        weights = nucleus(weights, config.top_p)
    return draw(weights, rng)


def choose_one(row: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """choose_rows for a batch of one, on the row itself: the same float32 operations in the
    same order and the same float64 comparison, so the same id for the same rng state, in a
    third to a half of the time (no axis bookkeeping, no take/put_along_axis). At batch 1 this
    runs once per character, so it is the sampler's share of the per-character cost."""
    scaled = scale(row, config.temperature)  # (vocab,)
    if config.top_k is not None and config.top_k < len(scaled):
        kth = np.partition(scaled, -config.top_k)[-config.top_k]
        scaled = np.where(scaled < kth, np.float32(-np.inf), scaled)
    # Method forms: np.max / np.cumsum cost about a microsecond more per call in dispatch.
    weights = np.exp(scaled - scaled.max())
    if config.top_p is not None and config.top_p < 1.0:
        probs = weights / weights.sum()
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        keep = np.empty(len(probs), dtype=bool)
        keep[order] = np.add.accumulate(sorted_probs) - sorted_probs < config.top_p
        weights = np.where(keep, weights, np.float32(0.0))
    cdf = np.add.accumulate(weights)  # float32, non-decreasing (what np.cumsum computes)
    u = rng.random() * cdf.item(-1)  # a Python float: float64, as in `draw` (see there)
    # np.float64 makes searchsorted compare in float64 as `draw` does (a Python float would be
    # rounded to float32 first); side="right" counts the entries <= u, as `draw` does.
    return np.array([cdf.searchsorted(np.float64(u), side="right")], dtype=np.int32)


def scale(logits: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float32)
    if temperature == 1.0:
        return logits  # x / 1 is exact: skip the pass
    return logits / np.float32(temperature)


def nucleus(weights: np.ndarray, top_p: float) -> np.ndarray:
    """Keep, per row, the most probable ids whose probability adds up to at least top_p."""
    probs = weights / weights.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=1)
    before = np.cumsum(sorted_probs, axis=1) - sorted_probs  # mass of the more probable ids
    keep_sorted = before < top_p  # the first id is always kept
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return np.where(keep, weights, np.float32(0.0))


def draw(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inverse-CDF draw per row from unnormalised weights: one uniform number per row."""
    cdf = np.cumsum(weights, axis=1)  # (batch, vocab) float32, non-decreasing
    # u < total strictly, so the id found has positive weight: cdf[id] > u >= cdf[id - 1], never
    # an id that top-k or top-p removed. In float64 a uniform below 1 times total stays below
    # total; in float32 it would not (the uniform would round to 1.0), hence the cast.
    u = rng.random(len(weights)) * cdf[:, -1].astype(np.float64)  # (batch,)
    ids = np.sum(cdf <= u[:, None], axis=1)  # compared in float64
    return ids.astype(np.int32)
