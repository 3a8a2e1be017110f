"""The trained Keras model itself, one step at a time: cells.keras_model's layers in a tf.function.

This is the reference the exports are checked against; it reads any checkpoint kind that
`to-onnx` reads (run directory, tutorial TF checkpoint, .weights.h5, .keras), of any
architecture. Each recurrent layer runs one time step from its slice of the packed state
(initial_state) and returns its new states (return_state), which are packed back in the same
layout: float32 [batch, S], S = cells' state_size, layer by layer.
"""

from __future__ import annotations

import numpy as np

from ..cells.architecture import state_size_of
from ..cells.keras_model import build_keras_model, layer_names, set_keras_weights
from ..checkpoints import load_any_checkpoint, resolve_vocab
from ..errors import ConfigError, ModelError
from ..tfsetup import tensorflow_for


class KerasRuntime:
    name = "keras"

    def __init__(self, path, threads: int | None = None, device: str = "cpu", vocab_path=None):
        tf, self.device = tensorflow_for(threads, device)
        import keras

        loaded = load_any_checkpoint(path)
        if vocab_path is None and loaded.vocab is None:
            raise ConfigError(f"{path} holds no vocabulary; pass --vocab vocab.json")
        self.vocab, _, unk = resolve_vocab(loaded, None, vocab_path)  # checked against the embedding
        architecture = self.architecture = loaded.architecture
        self.config = {**architecture.to_config(), **({"unk_id": 0} if unk else {})}
        # rnn_units is the Runtime protocol's name for the packed state's width S.
        self.rnn_units = self.state_size = state_size_of(self.config, f"{path}")
        self.vocab_size = architecture.vocab_size
        self.tf = tf
        slots = architecture.state_layout()
        with tf.device(self.device):
            sequence_model = build_keras_model(architecture)
            set_keras_weights(sequence_model, loaded.weights)
            # The same layers again, each returning its state: weights copied layer by layer.
            embedding = sequence_model.get_layer("embedding")
            dense = sequence_model.get_layer("dense")
            recurrent = []
            for spec, name in zip(architecture.layers, layer_names(architecture)):
                layer = spec.cell.keras_layer(spec, keras, name=f"{name}_step", return_state=True)
                layer.build((None, 1, sequence_model.get_layer(name).input.shape[-1]))
                layer.set_weights(sequence_model.get_layer(name).get_weights())
                recurrent.append(layer)
        if sum(slot.width for slot in slots) != self.state_size:
            raise ModelError(f"{path}: the layers' states add up to {sum(s.width for s in slots)}, not {self.state_size}")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, self.state_size], tf.float32)])
        def step(tokens, state):
            x = embedding(tokens[:, None])  # (batch, 1, embedding_dim)
            new_slices = []
            for layer, slot in zip(recurrent, slots):
                layer_state = state[:, slot.offset: slot.offset + slot.width]
                # A kind's state is `width // units` tensors of `units` columns (LSTM: h then c),
                # Keras' own order of initial_state and of the returned states.
                parts = tf.split(layer_state, slot.width // slot.units, axis=1)
                x, *new_parts = layer(x, initial_state=parts)
                new_slices.extend(new_parts)
            logits = dense(x[:, 0])  # (batch, vocab)
            return logits, tf.concat(new_slices, axis=1)

        self._step = step

    def zero_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.rnn_units), dtype=np.float32)

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.tf.device(self.device):
            logits, new_state = self._step(self.tf.constant(tokens, self.tf.int32), self.tf.constant(state))
        return logits.numpy(), new_state.numpy()
