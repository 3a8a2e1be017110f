"""The whole model's step in numpy, float64, from the Keras weights themselves: the reference that
tests and parity hold every other implementation to.

    reference_step(weights, tokens, state) -> (logits (batch, vocab), new state (batch, state_size))
    zero_state(architecture, batch) -> float32 zeros (batch, state_size)
"""

from __future__ import annotations

import numpy as np

from .architecture import Architecture
from .weights import ModelWeights


def zero_state(architecture: Architecture, batch: int) -> np.ndarray:
    return np.zeros((batch, architecture.state_size), np.float32)


def reference_step(weights: ModelWeights, tokens, state) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.asarray(tokens)
    state = np.asarray(state, np.float64)  # (batch, state_size)
    x = np.asarray(weights.embedding, np.float64)[tokens]  # (batch, embedding_dim)
    slices = []
    for layer, slot in zip(weights.layers, weights.architecture().state_layout()):
        state_slice = state[:, slot.offset: slot.offset + slot.width]
        x, new_slice = layer.spec.cell.reference_cell(layer.spec, layer, x, state_slice)
        slices.append(new_slice)
    logits = x @ np.asarray(weights.dense_kernel, np.float64) + np.asarray(weights.dense_bias, np.float64)
    return logits, np.concatenate(slices, axis=1)
