"""The training forward pass, the one train.py and distribute.py both run:

    ids -> Embedding -> dropout -> each recurrent layer -> dropout -> ... -> Dense -> logits

    model_parts(model, architecture) -> ModelParts   the Keras model's layers, in the pass's order
    forward(tf, parts, x, ...) -> logits             (batch, time) ids -> (batch, time, vocab)
    dropout(tf, h, rate, seed, rows)                 one site's mask, a function of (seed, step)

Dropout sits after the embedding (site 0) and after every recurrent layer (site k after layer k),
so between stacked layers too; site k is seeded by (seed, step) + [0, k], so a resumed run
draws the masks an uninterrupted one does. Under tf.distribute a replica passes `rows`: the mask
is drawn for the whole global batch, as one process draws it, and the replica takes its rows of
it, so the split batch trains exactly as one process does. TensorFlow and the model are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cells.keras_model import layer_names


@dataclass(frozen=True)
class ModelParts:
    embedding: object
    recurrent: tuple  # the recurrent layers, first to last
    dense: object


@dataclass(frozen=True)
class Rows:
    """A replica's share of the global batch: rows [offset, offset + count) of `total`."""

    offset: object  # int, or a scalar tensor (the replica's id times its batch)
    count: int
    total: int


def model_parts(model, architecture) -> ModelParts:
    """The layers of cells.keras_model.build_keras_model(architecture), found by the names it gives."""
    recurrent = tuple(model.get_layer(name) for name in layer_names(architecture))
    return ModelParts(model.get_layer("embedding"), recurrent, model.get_layer("dense"))


def forward(tf, parts: ModelParts, x, training: bool, rate: float = 0.0, seed_pair=None, rows: Rows | None = None):
    """Logits (batch, time, vocab) for ids x (batch, time); dropout at `rate` only when training."""
    drop = training and rate > 0

    def site(h, k: int):
        return dropout(tf, h, rate, seed_pair + tf.constant([0, k], tf.int64), rows) if drop else h

    h = site(parts.embedding(x), 0)  # (batch, time, embedding_dim)
    for k, layer in enumerate(parts.recurrent, start=1):
        h = site(layer(h, training=training), k)  # (batch, time, units)
    return parts.dense(h)  # (batch, time, vocab)


def dropout(tf, h, rate: float, seed, rows: Rows | None = None):
    """Zero each value with probability `rate`, scale the rest by 1 / (1 - rate); the mask is
    stateless (a function of `seed`). With `rows`, the global batch's mask, cut to these rows."""
    if rows is None:
        noise = tf.random.stateless_uniform(tf.shape(h), seed=seed, dtype=h.dtype)
    else:
        shape = tf.concat([[rows.total], tf.shape(h)[1:]], 0)
        noise = tf.random.stateless_uniform(shape, seed=seed, dtype=h.dtype)[rows.offset : rows.offset + rows.count]
    scaled = h * tf.constant(1 / (1 - rate), dtype=h.dtype)
    return tf.where(noise >= rate, scaled, tf.zeros([], h.dtype))
