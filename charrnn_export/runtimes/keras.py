"""The trained Keras model itself, one step at a time: Embedding -> GRUCell -> Dense in a tf.function.

This is the reference the exports are checked against; it reads any checkpoint kind that
`to-onnx` reads (run directory, tutorial TF checkpoint, .weights.h5).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..checkpoints import load_any_checkpoint, resolve_vocab
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
        w = loaded.weights
        self.rnn_units, self.vocab_size = w.rnn_units, w.vocab_size
        self.config = {**w.config(), **({"unk_id": 0} if unk else {})}
        self.tf = tf
        with tf.device(self.device):
            self.embedding = keras.layers.Embedding(w.vocab_size, w.embedding_dim)
            self.cell = keras.layers.GRUCell(w.rnn_units)
            self.dense = keras.layers.Dense(w.vocab_size)
            self.embedding.build((None,))
            self.cell.build((None, w.embedding_dim))
            self.dense.build((None, w.rnn_units))
            self.embedding.set_weights([w.embedding])
            self.cell.set_weights([w.kernel, w.recurrent_kernel, w.bias])
            self.dense.set_weights([w.dense_kernel, w.dense_bias])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, w.rnn_units], tf.float32)])
        def step(tokens, state):
            output, new_state = self.cell(self.embedding(tokens), [state])
            return self.dense(output), new_state[0]

        self._step = step

    def zero_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.rnn_units), dtype=np.float32)

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.tf.device(self.device):
            logits, new_state = self._step(self.tf.constant(tokens, self.tf.int32), self.tf.constant(state))
        return logits.numpy(), new_state.numpy()
