"""Keras' SimpleRNN with its default tanh: h = tanh(x @ kernel + h @ recurrent_kernel + bias).

State: h, units wide. ONNX's RNN op with its default Tanh activation computes the same.
"""

from __future__ import annotations

import numpy as np

from .kind import CellKind, OnnxCell, f32, onnx_sequence_of_one
from .registry import register


class SimpleRNN(CellKind):
    name = "rnn"
    keras_class = "SimpleRNN"
    keras_name = "simple_rnn"
    gates = 1

    def tf_cell(self, tf, spec, x, state, arrays):
        h = tf.tanh(x + tf.matmul(state, arrays["recurrent_kernel"]))  # (batch, units)
        return h, h

    def onnx_cell(self, spec, prefix, x, state, input_kernel, input_bias, arrays):
        from onnx import helper

        cell = OnnxCell(initializers={
            f"{prefix}W": f32(input_kernel.T[None]),  # (1, units, input_dim)
            f"{prefix}R": f32(arrays["recurrent_kernel"].T[None]),  # (1, units, units)
            f"{prefix}B": f32(np.concatenate([input_bias, np.zeros(spec.units)])[None]),  # (1, 2u)
        })
        x_node, x_seq = onnx_sequence_of_one(prefix, x)
        h_node, h_seq = onnx_sequence_of_one(prefix, state)
        cell.nodes = [
            x_node, h_node,
            helper.make_node("RNN", [x_seq, f"{prefix}W", f"{prefix}R", f"{prefix}B", "", h_seq], ["", f"{prefix}h1"],
                             hidden_size=spec.units, activations=["Tanh"]),
            helper.make_node("Squeeze", [f"{prefix}h1", "axis0"], [f"{prefix}h"]),
        ]
        cell.h = cell.state_out = f"{prefix}h"
        return cell

    def reference_cell(self, spec, layer, x, state):
        kernel, recurrent_kernel, bias = (np.asarray(a, np.float64) for a in layer.arrays())
        h = np.tanh(x @ kernel + state @ recurrent_kernel + bias)
        return h, h


register(SimpleRNN())
