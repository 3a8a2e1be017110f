"""Choosing the next character from logits: temperature, top-k, top-p, greedy. numpy only.

    SamplingConfig(temperature, top_k, top_p, greedy).validate()
    choose(logits (batch, vocab), config, rng) -> ids (batch,)

Every runtime's logits go through this one function with one numpy Generator, so the same
weights and seed give the same text whichever runtime computed the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False

    def validate(self) -> "SamplingConfig":
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        return self

    @property
    def plain(self) -> bool:
        """Only temperature: the fast path."""
        return not self.greedy and self.top_k is None and (self.top_p is None or self.top_p >= 1.0)


def choose(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """One id per row of `logits` (batch, vocab). Draws exactly one uniform number per row."""
    if config.greedy:
        return np.argmax(logits, axis=1).astype(np.int32)
    scaled = logits.astype(np.float64) / config.temperature  # (batch, vocab)
    if config.top_k is not None and config.top_k < scaled.shape[1]:
        kth = np.partition(scaled, -config.top_k, axis=1)[:, -config.top_k, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    weights = np.exp(scaled - scaled.max(axis=1, keepdims=True))  # unnormalised probabilities
    if config.top_p is not None and config.top_p < 1.0:
        weights = nucleus(weights, config.top_p)
    return draw(weights, rng)


def nucleus(weights: np.ndarray, top_p: float) -> np.ndarray:
    """Keep, per row, the most probable ids whose probability adds up to at least top_p."""
    probs = weights / weights.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=1)
    before = np.cumsum(sorted_probs, axis=1) - sorted_probs  # mass of the more probable ids
    keep_sorted = before < top_p  # the first id is always kept
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return np.where(keep, weights, 0.0)


def draw(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inverse-CDF draw per row from unnormalised weights: one uniform number per row."""
    cdf = np.cumsum(weights, axis=1)  # (batch, vocab)
    u = rng.random(len(weights))[:, None] * cdf[:, -1:]
    ids = np.sum(cdf <= u, axis=1)
    return np.minimum(ids, weights.shape[1] - 1).astype(np.int32)
