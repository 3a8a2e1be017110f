"""The Keras model of an architecture, and its weights read back.

    layer_names(architecture)                      "gru", "gru_1", "lstm", ...: the names Keras itself
                                                   gives a fresh model's layers, so the paths in a
                                                   saved .weights.h5 are those of the user's model
    build_keras_model(architecture, keras=None, batch_size=None, **layer_kwargs)
                                                   Sequential: Input ids -> Embedding -> layers -> Dense
                                                   (logits); keras is `keras` (default) or `tf_keras`;
                                                   a fixed batch_size for stateful layers
    set_keras_weights(model, weights)
    weights_from_keras_model(model) -> ModelWeights  any Keras model whose weighted layers are, in order,
                                                   an Embedding, registered recurrent layers, a Dense

Keras is imported inside the functions.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .architecture import Architecture
from .registry import KINDS, kind_of_keras_class
from .weights import LayerWeights, ModelWeights


def layer_names(architecture: Architecture) -> list[str]:
    names, seen = [], {}
    for spec in architecture.layers:
        base = spec.cell.keras_name
        names.append(base if base not in seen else f"{base}_{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return names


def build_keras_model(architecture: Architecture, keras=None, batch_size: int | None = None, **layer_kwargs):
    """ids (batch, time) -> logits (batch, time, vocab); layer_kwargs go to every recurrent layer
    (stateful=True needs a fixed batch_size)."""
    if keras is None:
        import keras
    layers = [keras.layers.Input(shape=(None,), batch_size=batch_size, dtype="int32"),
              keras.layers.Embedding(architecture.vocab_size, architecture.embedding_dim, name="embedding")]
    for spec, name in zip(architecture.layers, layer_names(architecture)):
        layers.append(spec.cell.keras_layer(spec, keras, name=name, **layer_kwargs))
    layers.append(keras.layers.Dense(architecture.vocab_size, name="dense"))
    return keras.Sequential(layers, name="charrnn")


def weighted_layers(model) -> list:
    return [layer for layer in model.layers if layer.get_weights()]


def set_keras_weights(model, weights: ModelWeights) -> None:
    embedding, *recurrent, dense = weighted_layers(model)
    if len(recurrent) != len(weights.layers):
        raise ModelError(f"the Keras model has {len(recurrent)} recurrent layers, the weights {len(weights.layers)}")
    embedding.set_weights([weights.embedding])
    for layer, layer_weights in zip(recurrent, weights.layers):
        layer.set_weights(layer_weights.arrays())
    dense.set_weights([weights.dense_kernel, weights.dense_bias])


def weights_from_keras_model(model, source: str = "the Keras model") -> ModelWeights:
    layers = weighted_layers(model)
    found = ", ".join(f"{type(layer).__name__} {layer.name!r}" for layer in layers)
    if len(layers) < 3 or type(layers[0]).__name__ != "Embedding" or type(layers[-1]).__name__ != "Dense":
        raise ModelError(f"{source} is not Embedding -> recurrent layers -> Dense (found: {found})")
    recurrent = []
    for layer in layers[1:-1]:
        kind = kind_of_keras_class(type(layer).__name__)
        if kind is None:
            raise ModelError(f"{source}: layer {layer.name!r} is a {type(layer).__name__}, not one of "
                             f"{', '.join(k.keras_class for k in KINDS.values())} (found: {found})")
        spec = kind.spec_from_keras_layer(layer)
        recurrent.append(LayerWeights(spec, *(np.asarray(w) for w in layer.get_weights())))
    embedding, = layers[0].get_weights()
    dense_kernel, dense_bias = layers[-1].get_weights()
    return ModelWeights(np.asarray(embedding), tuple(recurrent), np.asarray(dense_kernel),
                        np.asarray(dense_bias)).check(source)
