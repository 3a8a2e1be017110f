"""A model's weights, any architecture: numpy arrays in Keras' own layout.

    LayerWeights(spec, kernel, recurrent_kernel, bias)   one recurrent layer
    ModelWeights(embedding, layers, dense_kernel, dense_bias)
        .architecture() / .check(source)                  the description; one-line ModelError
        .named_arrays() / from_named_arrays(...)          flat {name: array} for .npz checkpoints
    random_weights(architecture, draw)                    every array's shape, drawn by the caller
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelError
from .architecture import Architecture, LayerSpec


@dataclass
class LayerWeights:
    spec: LayerSpec
    kernel: np.ndarray  # (input_dim, gates * units)
    recurrent_kernel: np.ndarray  # (units, gates * units)
    bias: np.ndarray  # (gates * units,); a reset_after GRU's is (2, 3 * units): input, recurrent

    def arrays(self) -> list[np.ndarray]:
        return [self.kernel, self.recurrent_kernel, self.bias]


LAYER_ARRAYS = ("kernel", "recurrent_kernel", "bias")


@dataclass
class ModelWeights:
    embedding: np.ndarray  # (vocab, embedding_dim)
    layers: tuple[LayerWeights, ...]
    dense_kernel: np.ndarray  # (last layer's units, vocab)
    dense_bias: np.ndarray  # (vocab,)

    def __post_init__(self):
        self.layers = tuple(self.layers)

    @property
    def vocab_size(self) -> int:
        return int(self.embedding.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.embedding.shape[1])

    def architecture(self) -> Architecture:
        return Architecture(self.vocab_size, self.embedding_dim, tuple(layer.spec for layer in self.layers))

    def check(self, source: str = "checkpoint") -> "ModelWeights":
        """Raise ModelError (one line, naming the array) unless every shape fits the description."""
        if self.embedding.ndim != 2 or 0 in self.embedding.shape:
            raise ModelError(f"{source}: the embedding has shape {tuple(self.embedding.shape)}, "
                             "expected (vocab_size, embedding_dim)")
        if not self.layers:
            raise ModelError(f"{source}: the model has no recurrent layer")
        input_dim = self.embedding_dim
        for i, layer in enumerate(self.layers):
            expected = layer.spec.cell.weight_shapes(layer.spec, input_dim)
            for name, shape in expected.items():
                actual = tuple(getattr(layer, name).shape)
                if actual != shape:
                    raise ModelError(f"{source}: layer {i} ({layer.spec.describe()}) {name} has shape {actual}, "
                                     f"expected {shape}")
            input_dim = layer.spec.units
        for name, shape in (("dense_kernel", (input_dim, self.vocab_size)), ("dense_bias", (self.vocab_size,))):
            actual = tuple(getattr(self, name).shape)
            if actual != shape:
                raise ModelError(f"{source}: {name} has shape {actual}, expected {shape}")
        return self

    # ---------------------------------------------------------------- flat forms

    def named_arrays(self) -> dict[str, np.ndarray]:
        """{"embedding", "layers/0/kernel", ..., "dense_kernel", "dense_bias"}: a checkpoint's arrays;
        the architecture (its JSON) travels beside them."""
        arrays = {"embedding": self.embedding}
        for i, layer in enumerate(self.layers):
            arrays.update({f"layers/{i}/{name}": getattr(layer, name) for name in LAYER_ARRAYS})
        arrays.update(dense_kernel=self.dense_kernel, dense_bias=self.dense_bias)
        return arrays

    @classmethod
    def from_named_arrays(cls, architecture: Architecture, arrays: dict, source: str = "checkpoint") -> "ModelWeights":
        try:
            layers = tuple(LayerWeights(spec, *(np.asarray(arrays[f"layers/{i}/{n}"]) for n in LAYER_ARRAYS))
                           for i, spec in enumerate(architecture.layers))
            weights = cls(np.asarray(arrays["embedding"]), layers, np.asarray(arrays["dense_kernel"]),
                          np.asarray(arrays["dense_bias"]))
        except KeyError as e:
            raise ModelError(f"{source}: weight {e.args[0]} is missing") from None
        weights.check(source)
        if weights.architecture() != architecture:
            raise ModelError(f"{source}: the weights are {weights.architecture().describe()}, "
                             f"the description says {architecture.describe()}")
        return weights


def random_weights(architecture: Architecture, draw) -> ModelWeights:
    """Weights of every array's shape for `architecture`, each made by `draw(shape, role, fan_in)`
    (role: "embedding", "kernel", "recurrent_kernel", "bias", "dense_kernel" or "dense_bias";
    fan_in: the width the array multiplies). The one walk over the kinds' shapes for test models
    and bench's untrained one; the caller chooses the distribution."""
    layers, input_dim = [], architecture.embedding_dim
    for spec in architecture.layers:
        shapes = spec.cell.weight_shapes(spec, input_dim)
        fan_ins = {"kernel": input_dim, "recurrent_kernel": spec.units, "bias": 1}
        layers.append(LayerWeights(spec, *(np.asarray(draw(shapes[name], name, fan_ins[name]), np.float32)
                                           for name in LAYER_ARRAYS)))
        input_dim = spec.units
    vocab = architecture.vocab_size
    return ModelWeights(np.asarray(draw((vocab, architecture.embedding_dim), "embedding", 1), np.float32),
                        tuple(layers), np.asarray(draw((input_dim, vocab), "dense_kernel", input_dim), np.float32),
                        np.asarray(draw((vocab,), "dense_bias", 1), np.float32)).check("random weights")
