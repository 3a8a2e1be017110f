"""The LSTM, as Keras computes it: gates i, f, c, o in that order, one bias (4 * units,).

State: 2 * units wide, h then c; the layer's output is h. ONNX's LSTM op orders its gates
i, o, f, c, so the native op's weights are the Keras blocks reordered.
"""

from __future__ import annotations

import numpy as np

from .kind import CellKind, OnnxCell, f32, onnx_sequence_of_one, sigmoid
from .registry import register

KERAS_TO_ONNX_GATES = (0, 3, 1, 2)  # ONNX's i, o, f, c are Keras' blocks 0, 3, 1, 2


def onnx_gate_order(matrix: np.ndarray, units: int) -> np.ndarray:
    """Reorder the last axis's four gate blocks from Keras' i, f, c, o to ONNX's i, o, f, c."""
    blocks = [matrix[..., g * units: (g + 1) * units] for g in KERAS_TO_ONNX_GATES]
    return np.concatenate(blocks, axis=-1)


class LSTM(CellKind):
    name = "lstm"
    keras_class = "LSTM"
    keras_name = "lstm"
    gates = 4

    def state_width(self, units):
        return 2 * units

    def tf_cell(self, tf, spec, x, state, arrays):
        h, c = tf.split(state, 2, axis=1)  # (batch, units) each
        gates = x + tf.matmul(h, arrays["recurrent_kernel"])  # (batch, 4u)
        i, f, candidate, o = tf.split(gates, 4, axis=1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(candidate)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, tf.concat([h, c], axis=1)

    def onnx_cell(self, spec, prefix, x, state, input_kernel, input_bias, arrays):
        from onnx import helper

        units = spec.units
        cell = OnnxCell(initializers={
            f"{prefix}W": f32(onnx_gate_order(input_kernel, units).T[None]),  # (1, 4u, input_dim)
            f"{prefix}R": f32(onnx_gate_order(arrays["recurrent_kernel"], units).T[None]),  # (1, 4u, units)
            f"{prefix}B": f32(np.concatenate([onnx_gate_order(input_bias, units), np.zeros(4 * units)])[None]),
            f"{prefix}split": np.array([units, units], np.int64),
        })
        x_node, x_seq = onnx_sequence_of_one(prefix, x)
        h0_node, h0_seq = onnx_sequence_of_one(prefix, f"{prefix}h0")
        c0_node, c0_seq = onnx_sequence_of_one(prefix, f"{prefix}c0")
        cell.nodes = [
            helper.make_node("Split", [state, f"{prefix}split"], [f"{prefix}h0", f"{prefix}c0"], axis=1),
            x_node, h0_node, c0_node,
            helper.make_node("LSTM", [x_seq, f"{prefix}W", f"{prefix}R", f"{prefix}B", "", h0_seq, c0_seq],
                             ["", f"{prefix}h1", f"{prefix}c1"], hidden_size=units),
            helper.make_node("Squeeze", [f"{prefix}h1", "axis0"], [f"{prefix}h"]),
            helper.make_node("Squeeze", [f"{prefix}c1", "axis0"], [f"{prefix}c"]),
            helper.make_node("Concat", [f"{prefix}h", f"{prefix}c"], [f"{prefix}state_out"], axis=1),
        ]
        cell.h, cell.state_out = f"{prefix}h", f"{prefix}state_out"
        return cell

    def reference_cell(self, spec, layer, x, state):
        units = spec.units
        kernel, recurrent_kernel, bias = (np.asarray(a, np.float64) for a in layer.arrays())
        h, c = state[:, :units], state[:, units:]
        gates = x @ kernel + h @ recurrent_kernel + bias
        i, f, candidate, o = (gates[:, g * units: (g + 1) * units] for g in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(candidate)
        h = sigmoid(o) * np.tanh(c)
        return h, np.concatenate([h, c], axis=1)


register(LSTM())
