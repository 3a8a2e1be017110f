"""The runtime interface, written once: what every step runtime (onnx, savedmodel, keras) offers.

The engine's HostSampler, the export's parity check and the benchmarks see runtimes only
through this. `typing.Protocol`: a runtime need not inherit from it, only have these members
(tests/test_runtimes_agree.py checks each runtime with isinstance).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..vocab import Vocab


@runtime_checkable
class Runtime(Protocol):
    name: str  # "onnx", "savedmodel" or "keras"
    vocab: Vocab  # the characters in id order
    config: dict  # vocab_size, embedding_dim, rnn_units (+ unk_id: 0 for a current-tutorial model)
    rnn_units: int
    vocab_size: int

    def zero_state(self, batch: int) -> np.ndarray:
        """float32 (batch, rnn_units) zeros: the state that starts a sequence."""

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int32 (batch,) ids and float32 (batch, rnn_units) state -> logits (batch, vocab), new state."""
