"""What every cell kind provides: the CellKind base class, one subclass per kind.

    CellKind    shapes and checks, state width, recogniser, Keras layer, TF step, native ONNX op,
                numpy reference; a subclass sets the class attributes and overrides what differs
    OnnxCell    one layer's native ONNX nodes and weights for one time step

numpy only; TensorFlow and onnx are passed in or imported by the methods that need them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError
from .architecture import LayerSpec
from .weights import LayerWeights


@dataclass
class OnnxCell:
    """One layer's native ONNX op for one time step: its nodes, its weights, and the names of its
    two outputs: h (batch, units), the next layer's input, and the layer's new state slice."""

    nodes: list = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    h: str = ""
    state_out: str = ""


class CellKind:
    """A recurrent cell kind. Subclasses set the class attributes and override what differs.

    The weights are Keras' own: kernel (input_dim, gates * units), recurrent_kernel
    (units, gates * units), bias (gates * units,), each split into gate blocks in Keras' order.
    """

    name: str = ""  # the kind as config.json and the ONNX metadata spell it: "gru"
    keras_class: str = ""  # the Keras (and tf_keras) layer class: "GRU"
    keras_name: str = ""  # Keras' default name for such a layer: "gru", then "gru_1", ...
    gates: int = 1
    options: dict = {}  # option -> default; a value must have the default's type

    # ---------------------------------------------------------------- shapes

    def state_width(self, units: int) -> int:
        """Columns of the packed state this layer owns."""
        return units

    def bias_shape(self, spec) -> tuple[int, ...]:
        return (self.gates * spec.units,)

    def weight_shapes(self, spec, input_dim: int) -> dict[str, tuple[int, ...]]:
        width = self.gates * spec.units
        return {"kernel": (input_dim, width), "recurrent_kernel": (spec.units, width), "bias": self.bias_shape(spec)}

    def options_from_bias(self, units: int, bias_shape: tuple[int, ...]) -> dict | None:
        """The options a bias of this shape implies, or None when no layer of this kind has it."""
        return {} if bias_shape == (self.gates * units,) else None

    def recognise(self, items: list[tuple[str, np.ndarray]]):
        """One layer's variables as (name, array) pairs -> its LayerWeights if they are this kind's,
        else None. Names are the leaves a checkpoint gives: kernel / recurrent_kernel / bias (tf_keras,
        with or without ':0'), or 0 / 1 / 2 (Keras 3's vars/N)."""
        arrays = ordered_cell_arrays(items)
        if arrays is None:
            return None
        kernel, recurrent_kernel, bias = arrays
        if kernel.ndim != 2 or recurrent_kernel.ndim != 2:
            return None
        units = recurrent_kernel.shape[0]
        if units == 0 or recurrent_kernel.shape[1] != self.gates * units or kernel.shape[1] != self.gates * units:
            return None
        options = self.options_from_bias(units, tuple(bias.shape))
        if options is None:
            return None
        return LayerWeights(LayerSpec(self.name, int(units), options), kernel, recurrent_kernel, bias)

    # ---------------------------------------------------------------- Keras

    def keras_options(self, spec) -> dict:
        """The layer's constructor arguments that the options set."""
        return dict(spec.options)

    def keras_layer(self, spec, keras, name: str | None = None, **kwargs):
        """The Keras layer for `spec` (keras may be `keras` or `tf_keras`); kwargs go to it unchanged
        (stateful, recurrent_initializer, ...). It returns sequences: a char model predicts at each step."""
        layer_class = getattr(keras.layers, self.keras_class)
        return layer_class(spec.units, return_sequences=True, name=name, **self.keras_options(spec), **kwargs)

    def spec_from_keras_layer(self, layer):
        """The LayerSpec of a built Keras layer of this kind, None if it is another kind; ModelError
        for a setting the step does not compute (another activation, no bias, backwards)."""
        if type(layer).__name__ != self.keras_class:
            return None
        config = layer.get_config()
        expected = {"activation": "tanh", "use_bias": True, "go_backwards": False}
        if self.gates > 1:
            expected["recurrent_activation"] = "sigmoid"
        for key, value in expected.items():
            if key in config and config[key] != value:
                raise ModelError(f"the {self.keras_class} layer {layer.name!r} has {key}={config[key]!r}; "
                                 f"only {key}={value!r} is supported")
        return LayerSpec(self.name, int(config["units"]), {k: config[k] for k in self.options})

    # ---------------------------------------------------------------- the flat step

    def step_arrays(self, spec, layer) -> dict[str, np.ndarray]:
        """The constants of the flat step for this layer, float32. "kernel" and "input_bias" make the
        input projection x = input @ kernel + input_bias (the stack folds the first layer's into a
        (vocab, gates * units) table); the others are what tf_cell and onnx_cell read."""
        return {"kernel": f32(layer.kernel), "input_bias": f32(layer.bias),
                "recurrent_kernel": f32(layer.recurrent_kernel)}

    def tf_cell(self, tf, spec, x, state, arrays):
        """One step on tensors: x (batch, gates * units) the input projection, state (batch, width)
        this layer's slice -> (h (batch, units), new state slice (batch, width))."""
        raise NotImplementedError

    def onnx_cell(self, spec, prefix: str, x: str, state: str, input_kernel: np.ndarray, input_bias: np.ndarray,
                  arrays: dict[str, np.ndarray]) -> OnnxCell:
        """One step as this kind's native ONNX op: x (batch, input_dim) the layer's input,
        input_kernel (input_dim, gates * units) and input_bias in Keras' gate order, state the name of
        this layer's slice (batch, width). Names it creates start with `prefix`."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the numpy reference

    def reference_cell(self, spec, layer, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step in float64 from the Keras weights themselves (nothing folded):
        x (batch, input_dim), state (batch, width) -> (h (batch, units), new state)."""
        raise NotImplementedError

# ---------------------------------------------------------------- helpers for the kinds

CELL_LEAVES = {"kernel": 0, "recurrent_kernel": 1, "bias": 2, "0": 0, "1": 1, "2": 2}


def ordered_cell_arrays(items: list[tuple[str, np.ndarray]]) -> list[np.ndarray] | None:
    """kernel, recurrent_kernel, bias from one layer's (leaf name, array) pairs, or None when the
    names are not exactly those three (tf_keras' names, or Keras 3's 0, 1, 2)."""
    positions = [CELL_LEAVES.get(name.split(":")[0]) for name, _ in items]
    if sorted(p for p in positions if p is not None) != [0, 1, 2] or len(items) != 3:
        return None
    return [np.asarray(a) for _, a in sorted(zip(positions, (a for _, a in items)), key=lambda pair: pair[0])]


def f32(array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def onnx_sequence_of_one(prefix: str, name: str) -> tuple[object, str]:
    """Unsqueeze (batch, n) to (1, batch, n): the native ops take a sequence; this is one step.
    "axis0" is the graph's [0] initializer (onnx_step.py adds it)."""
    from onnx import helper

    out = f"{name}_seq" if name.startswith(prefix) else f"{prefix}{name}_seq"
    return helper.make_node("Unsqueeze", [name, "axis0"], [out]), out
