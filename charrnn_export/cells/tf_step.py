"""The whole model's step as flat TensorFlow ops, layer after layer: what step_model.py exports.

    step_constants(weights) -> {name: float32 array}   the step's weights, named as the ONNX file
                                                       will name them
    flat_step(tf, architecture, tensors) -> step(token, state) -> (logits, new state)

The first layer's Embedding and input projection fold into one table, "input_table"
(vocab, gates * units): a Gather. A later layer's input projection is a MatMul of the previous
layer's h with "layer{i}_kernel" plus "layer{i}_input_bias". Each layer's other constants are
"layer{i}_<name>" for the names its kind's step_arrays gives; then "dense_kernel", "dense_bias".
The state is sliced per layer and the new slices concatenated, so the graph stays flat (no
Loop, no Scan) and tf2onnx turns it into plain ops.
"""

from __future__ import annotations

import numpy as np

from .architecture import Architecture
from .kind import f32
from .weights import ModelWeights


def step_constants(weights: ModelWeights) -> dict[str, np.ndarray]:
    constants = {}
    for i, layer in enumerate(weights.layers):
        arrays = layer.spec.cell.step_arrays(layer.spec, layer)
        kernel, input_bias = arrays.pop("kernel"), arrays.pop("input_bias")
        if i == 0:
            # Embedding then the input kernel is a fixed map from id to gate inputs: one lookup.
            table = np.asarray(weights.embedding, np.float64) @ kernel + input_bias
            constants["input_table"] = f32(table)  # (vocab, gates * units)
        else:
            constants[f"layer{i}_kernel"], constants[f"layer{i}_input_bias"] = kernel, input_bias
        constants.update({f"layer{i}_{name}": array for name, array in arrays.items()})
    constants["dense_kernel"], constants["dense_bias"] = f32(weights.dense_kernel), f32(weights.dense_bias)
    return constants


def layer_constants(tensors: dict, i: int) -> dict:
    """Layer i's own constants, without their "layer{i}_" prefix (what its kind's tf_cell reads)."""
    prefix = f"layer{i}_"
    return {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}


def flat_step(tf, architecture: Architecture, tensors: dict):
    """A Python function of (token (batch,) int32, state (batch, state_size) float32) ->
    (logits (batch, vocab), new state (batch, state_size)), over `tensors`: step_constants' names
    mapped to tensors or variables. Wrap it in a tf.function with the step's signature."""
    widths = [slot.width for slot in architecture.state_layout()]

    def step(token, state):
        slices = tf.split(state, widths, axis=1) if len(widths) > 1 else [state]
        new_slices = []
        x = tf.gather(tensors["input_table"], token)  # (batch, gates * units) of layer 0
        h = None
        for i, (spec, state_slice) in enumerate(zip(architecture.layers, slices)):
            arrays = layer_constants(tensors, i)
            if i > 0:
                x = tf.matmul(h, arrays["kernel"]) + arrays["input_bias"]  # (batch, gates * units)
            h, new_slice = spec.cell.tf_cell(tf, spec, x, state_slice, arrays)
            new_slices.append(new_slice)
        logits = tf.matmul(h, tensors["dense_kernel"]) + tensors["dense_bias"]  # (batch, vocab)
        new_state = tf.concat(new_slices, axis=1) if len(new_slices) > 1 else new_slices[0]
        return logits, new_state

    return step
