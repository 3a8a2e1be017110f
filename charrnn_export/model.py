"""The tutorial's model and its weights, whatever wrote them.

    GRUWeights                      the six arrays of Embedding -> GRU(reset_after) -> Dense, numpy
    build_model(...)                the tutorial's Keras 3 model: Embedding -> GRU -> Dense (logits)
    weights_from_model / set_model_weights / model_from_weights

Reading and writing checkpoints (every kind) is checkpoints.py. Keras is imported inside the
functions that need it, so `GRUWeights` stays usable from numpy-only code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ModelError

WEIGHT_NAMES = ("embedding", "kernel", "recurrent_kernel", "bias", "dense_kernel", "dense_bias")
# The same six as layer/variable, for messages.
LAYER_NAMES = ("embedding/embeddings", "gru/kernel", "gru/recurrent_kernel", "gru/bias", "dense/kernel", "dense/bias")


@dataclass
class GRUWeights:
    """Keras GRU weights with reset_after=True; gate order z, r, h as Keras stores them."""

    embedding: np.ndarray  # (vocab, embedding_dim)
    kernel: np.ndarray  # (embedding_dim, 3 * units)
    recurrent_kernel: np.ndarray  # (units, 3 * units)
    bias: np.ndarray  # (2, 3 * units): input bias, recurrent bias
    dense_kernel: np.ndarray  # (units, vocab)
    dense_bias: np.ndarray  # (vocab,)

    @property
    def vocab_size(self) -> int:
        return int(self.embedding.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def rnn_units(self) -> int:
        return int(self.recurrent_kernel.shape[0])

    def arrays(self) -> list[np.ndarray]:
        return [getattr(self, n) for n in WEIGHT_NAMES]

    def check(self, source: str = "checkpoint") -> "GRUWeights":
        """Raise ModelError unless the six shapes fit together."""
        v, e = self.embedding.shape if self.embedding.ndim == 2 else (None, None)
        u = self.recurrent_kernel.shape[0] if self.recurrent_kernel.ndim == 2 else None
        expected = {
            "embedding": (v, e),
            "kernel": (e, None if u is None else 3 * u),
            "recurrent_kernel": (u, None if u is None else 3 * u),
            "bias": (2, None if u is None else 3 * u),
            "dense_kernel": (u, v),
            "dense_bias": (v,),
        }
        for name, shape in expected.items():
            actual = getattr(self, name).shape
            if None in shape or tuple(actual) != shape:
                if name == "bias" and actual == (3 * u,):
                    raise ModelError(
                        f"{source}: the GRU was built with reset_after=False, which is not supported; "
                        "train it with Keras' default GRU (reset_after=True)"
                    )
                raise ModelError(f"{source}: weight {name} has shape {tuple(actual)}, expected {shape}")
        return self

    def non_finite(self) -> list[str]:
        """The variables holding NaN or Inf, as "NaN in gru/kernel (3 of 1536 values)"; empty when none."""
        found = []
        for name, layer_name in zip(WEIGHT_NAMES, LAYER_NAMES):
            array = np.asarray(getattr(self, name))
            if array.dtype.kind != "f":
                continue
            bad = ~np.isfinite(array)
            if bad.any():
                kinds = " and ".join(k for k, hit in (("NaN", np.isnan(array).any()), ("Inf", np.isinf(array).any())) if hit)
                found.append(f"{kinds} in {layer_name} ({int(bad.sum())} of {array.size} values)")
        return found

    def config(self) -> dict:
        return {"vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim, "rnn_units": self.rnn_units}


# ---------------------------------------------------------------- Keras model


def build_model(vocab_size: int, embedding_dim: int, rnn_units: int):
    """The tutorial's model (Keras 3): ids (batch, time) -> logits (batch, time, vocab)."""
    import keras

    return keras.Sequential(
        [
            keras.layers.Input(shape=(None,), dtype="int32"),
            keras.layers.Embedding(vocab_size, embedding_dim, name="embedding"),
            keras.layers.GRU(
                rnn_units, return_sequences=True, recurrent_initializer="glorot_uniform", name="gru"
            ),
            keras.layers.Dense(vocab_size, name="dense"),
        ],
        name="charrnn",
    )


def weights_from_model(model) -> GRUWeights:
    embedding, gru, dense = (model.get_layer(n) for n in ("embedding", "gru", "dense"))
    kernel, recurrent_kernel, bias = (np.asarray(w) for w in gru.get_weights())
    return GRUWeights(
        np.asarray(embedding.get_weights()[0]), kernel, recurrent_kernel, bias, *map(np.asarray, dense.get_weights())
    )


def set_model_weights(model, weights: GRUWeights) -> None:
    model.get_layer("embedding").set_weights([weights.embedding])
    model.get_layer("gru").set_weights([weights.kernel, weights.recurrent_kernel, weights.bias])
    model.get_layer("dense").set_weights([weights.dense_kernel, weights.dense_bias])


def model_from_weights(weights: GRUWeights):
    model = build_model(weights.vocab_size, weights.embedding_dim, weights.rnn_units)
    set_model_weights(model, weights)
    return model
