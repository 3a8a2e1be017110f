"""The GRU, as Keras computes it: gates z, r, h in that order, with either reset_after.

reset_after=True (Keras' default, the tutorial's) applies the reset gate after the recurrent
matmul and keeps two biases, input and recurrent: bias (2, 3 * units). reset_after=False (Keras'
old default) applies it to the state before the matmul, with one bias: bias (3 * units,). ONNX's
GRU op computes the first with linear_before_reset=1 and the second with 0, in the same gate order.
State: h, units wide.
"""

from __future__ import annotations

import numpy as np

from .kind import CellKind, OnnxCell, f32, onnx_sequence_of_one, sigmoid
from .registry import register


class GRU(CellKind):
    name = "gru"
    keras_class = "GRU"
    keras_name = "gru"
    gates = 3
    options = {"reset_after": True}

    def bias_shape(self, spec) -> tuple[int, ...]:
        width = 3 * spec.units
        return (2, width) if spec.options["reset_after"] else (width,)

    def options_from_bias(self, units, bias_shape):
        width = 3 * units
        return {(2, width): {"reset_after": True}, (width,): {"reset_after": False}}.get(tuple(bias_shape))

    def step_arrays(self, spec, layer):
        units = spec.units
        if spec.options["reset_after"]:
            return {"kernel": f32(layer.kernel), "input_bias": f32(layer.bias[0]),
                    "recurrent_kernel": f32(layer.recurrent_kernel), "recurrent_bias": f32(layer.bias[1])}
        # reset_after=False multiplies r into the state before the candidate's matmul, so the
        # candidate's recurrent kernel is kept apart from the gates'.
        return {"kernel": f32(layer.kernel), "input_bias": f32(layer.bias),
                "recurrent_kernel_zr": f32(layer.recurrent_kernel[:, : 2 * units]),
                "recurrent_kernel_h": f32(layer.recurrent_kernel[:, 2 * units:])}

    def tf_cell(self, tf, spec, x, state, arrays):
        # Written for the fewest ONNX kernels per step, not as the textbook formula (reference_cell
        # is that, and the parity checks compare the two): z and r are adjacent in Keras' order, so
        # one Add and one Sigmoid compute both before a Split, and the update z*h + (1-z)*c is
        # c + z*(h - c), one Mul fewer. The split sizes are Python ints, so tf2onnx writes Split ops
        # with constant sizes that onnxruntime keeps as they are.
        units = spec.units
        x_zr, x_h = tf.split(x, [2 * units, units], axis=1)  # (batch, 2u), (batch, u)
        if spec.options["reset_after"]:
            recurrent = tf.matmul(state, arrays["recurrent_kernel"]) + arrays["recurrent_bias"]  # (batch, 3u)
            h_zr, h_h = tf.split(recurrent, [2 * units, units], axis=1)
            z, r = tf.split(tf.sigmoid(x_zr + h_zr), 2, axis=1)  # (batch, u) each
            candidate = tf.tanh(x_h + r * h_h)
        else:
            z, r = tf.split(tf.sigmoid(x_zr + tf.matmul(state, arrays["recurrent_kernel_zr"])), 2, axis=1)
            candidate = tf.tanh(x_h + tf.matmul(r * state, arrays["recurrent_kernel_h"]))
        new_state = candidate + z * (state - candidate)  # = z * state + (1 - z) * candidate, (batch, units)
        return new_state, new_state

    def onnx_cell(self, spec, prefix, x, state, input_kernel, input_bias, arrays):
        from onnx import helper

        reset_after = spec.options["reset_after"]
        if reset_after:
            recurrent_kernel, recurrent_bias = arrays["recurrent_kernel"], arrays["recurrent_bias"]
        else:  # all of the bias is on the input side
            recurrent_kernel = np.concatenate([arrays["recurrent_kernel_zr"], arrays["recurrent_kernel_h"]], axis=1)
            recurrent_bias = np.zeros_like(input_bias)
        cell = OnnxCell(initializers={
            f"{prefix}W": f32(input_kernel.T[None]),  # (1, 3u, input_dim); z, r, h as in Keras
            f"{prefix}R": f32(recurrent_kernel.T[None]),  # (1, 3u, units)
            f"{prefix}B": f32(np.concatenate([input_bias, recurrent_bias])[None]),  # (1, 6u): Wb, Rb
        })
        x_node, x_seq = onnx_sequence_of_one(prefix, x)
        h_node, h_seq = onnx_sequence_of_one(prefix, state)
        cell.nodes = [
            x_node, h_node,
            helper.make_node("GRU", [x_seq, f"{prefix}W", f"{prefix}R", f"{prefix}B", "", h_seq], ["", f"{prefix}h1"],
                             hidden_size=spec.units, linear_before_reset=int(reset_after)),
            helper.make_node("Squeeze", [f"{prefix}h1", "axis0"], [f"{prefix}h"]),
        ]
        cell.h = cell.state_out = f"{prefix}h"
        return cell

    def reference_cell(self, spec, layer, x, state):
        units = spec.units
        kernel, recurrent_kernel, bias = (np.asarray(a, np.float64) for a in layer.arrays())
        if spec.options["reset_after"]:
            projected = x @ kernel + bias[0]
            recurrent = state @ recurrent_kernel + bias[1]
            z = sigmoid(projected[:, :units] + recurrent[:, :units])
            r = sigmoid(projected[:, units: 2 * units] + recurrent[:, units: 2 * units])
            candidate = np.tanh(projected[:, 2 * units:] + r * recurrent[:, 2 * units:])
        else:
            projected = x @ kernel + bias
            recurrent = state @ recurrent_kernel[:, : 2 * units]
            z = sigmoid(projected[:, :units] + recurrent[:, :units])
            r = sigmoid(projected[:, units: 2 * units] + recurrent[:, units:])
            candidate = np.tanh(projected[:, 2 * units:] + (r * state) @ recurrent_kernel[:, 2 * units:])
        new_state = z * state + (1.0 - z) * candidate
        return new_state, new_state


register(GRU())
