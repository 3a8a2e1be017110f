"""The tutorial's model and its weights, whatever wrote them.

    GRUWeights                      the six arrays of Embedding -> GRU(reset_after) -> Dense, numpy
    build_model(...)                the tutorial's Keras 3 model: Embedding -> GRU -> Dense (logits)
    weights_from_model / set_model_weights
    save_checkpoint / read_checkpoint   this project's .npz checkpoints (weights + optimizer + meta)
    load_any_checkpoint(path)       a run directory, a tutorial TF checkpoint, or a .weights.h5

TensorFlow is imported inside the functions that need it, so `GRUWeights` and the .npz
reader stay usable from numpy-only code.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Vocab, atomic_write_bytes
from .errors import ModelError

WEIGHT_NAMES = ("embedding", "kernel", "recurrent_kernel", "bias", "dense_kernel", "dense_bias")


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


# ---------------------------------------------------------------- this project's checkpoints


def save_checkpoint(path, weights: GRUWeights, meta: dict, optimizer_state: list[np.ndarray] | None = None) -> None:
    """One .npz holding the weights, optionally the optimizer's variables, and a JSON meta; atomic."""
    arrays = {f"weights/{n}": a for n, a in zip(WEIGHT_NAMES, weights.arrays())}
    for i, a in enumerate(optimizer_state or []):
        arrays[f"optimizer/{i:04d}"] = np.asarray(a)
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass
class Checkpoint:
    weights: GRUWeights
    meta: dict
    optimizer_state: list[np.ndarray] = field(default_factory=list)


def read_checkpoint(path) -> Checkpoint:
    try:
        with np.load(path, allow_pickle=False) as npz:
            weights = GRUWeights(*(npz[f"weights/{n}"] for n in WEIGHT_NAMES))
            meta = json.loads(str(npz["meta"]))
            optimizer = [npz[k] for k in sorted(k for k in npz.files if k.startswith("optimizer/"))]
    except FileNotFoundError:
        raise ModelError(f"checkpoint not found: {path}") from None
    except (OSError, KeyError, ValueError, EOFError) as e:
        raise ModelError(f"checkpoint {path} is corrupt or not a charrnn-export checkpoint ({e})") from None
    return Checkpoint(weights.check(str(path)), meta, optimizer)


# ---------------------------------------------------------------- any checkpoint kind


@dataclass
class LoadedWeights:
    weights: GRUWeights
    kind: str  # "run", "tutorial-tf", "keras-h5"
    vocab: Vocab | None
    meta: dict
    source: str


def load_any_checkpoint(path: str | os.PathLike) -> LoadedWeights:
    """Weights from a run directory, a tutorial TF checkpoint (dir or prefix), or a .weights.h5."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").exists():
        return load_run_dir(path)
    if path.is_file() and path.suffix == ".npz":
        ckpt = read_checkpoint(path)
        vocab_file = path.parent.parent / "vocab.json" if path.parent.name == "checkpoints" else path.parent / "vocab.json"
        vocab = Vocab.load(vocab_file) if vocab_file.exists() else None
        return LoadedWeights(ckpt.weights, "run", vocab, ckpt.meta, str(path))
    if path.is_file() and (path.name.endswith(".h5") or path.name.endswith(".keras")):
        return LoadedWeights(read_keras_h5(path), "keras-h5", None, {}, str(path))
    prefix = tf_checkpoint_prefix(path)
    if prefix is not None:
        return LoadedWeights(read_tutorial_checkpoint(prefix), "tutorial-tf", None, {}, prefix)
    raise ModelError(
        f"{path} is not a checkpoint: pass a run directory from `charrnn-export train`, a tutorial "
        "training_checkpoints directory or prefix (e.g. training_checkpoints/ckpt_10), or a .weights.h5 file"
    )


def load_run_dir(run_dir: Path) -> LoadedWeights:
    best = run_dir / "best.npz"
    if not best.exists():
        raise ModelError(f"run directory {run_dir} has no best.npz yet; train at least one epoch first")
    ckpt = read_checkpoint(best)
    vocab = Vocab.load(run_dir / "vocab.json")
    meta = dict(ckpt.meta)
    try:
        meta["run_config"] = json.loads((run_dir / "config.json").read_text())
    except ValueError:
        raise ModelError(f"{run_dir / 'config.json'} is corrupt; re-create the run") from None
    return LoadedWeights(ckpt.weights, "run", vocab, meta, str(best))


def tf_checkpoint_prefix(path: Path) -> str | None:
    """The prefix of a TF checkpoint given its directory (with a `checkpoint` file) or its prefix."""
    if path.is_dir() and (path / "checkpoint").exists():
        import tensorflow as tf

        return tf.train.latest_checkpoint(str(path))
    if Path(str(path) + ".index").exists():
        return str(path)
    return None


def read_tutorial_checkpoint(prefix: str) -> GRUWeights:
    """Weights saved by the tutorial's `model.save_weights(prefix)` (TF checkpoint format).

    The tutorial's Sequential model stores its layers as layer_with_weights-0/1/2; the newer
    subclassed tutorial model stores them by attribute (embedding, gru, dense). Both are read by
    matching variable paths, and shapes are checked afterwards.
    """
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # TF raises several types for unreadable files
        raise ModelError(f"cannot read TF checkpoint {prefix}: {str(e).splitlines()[0]}") from None
    names = [n for n in reader.get_variable_to_shape_map() if n.endswith("/.ATTRIBUTES/VARIABLE_VALUE")]
    names = [n for n in names if "optimizer" not in n.split("/")[0] and "/.OPTIMIZER_SLOT/" not in n]

    def find(*suffixes: str) -> np.ndarray:
        for suffix in suffixes:
            hits = sorted(n for n in names if n.endswith(suffix + "/.ATTRIBUTES/VARIABLE_VALUE"))
            if len(hits) == 1:
                return reader.get_tensor(hits[0])
        raise ModelError(
            f"TF checkpoint {prefix} does not look like the tutorial's model: no single variable "
            f"ending in {suffixes[0]} among {len(names)} variables"
        )

    weights = GRUWeights(
        embedding=find("layer_with_weights-0/embeddings", "embedding/embeddings"),
        kernel=find("layer_with_weights-1/cell/kernel", "gru/cell/kernel"),
        recurrent_kernel=find("layer_with_weights-1/cell/recurrent_kernel", "gru/cell/recurrent_kernel"),
        bias=find("layer_with_weights-1/cell/bias", "gru/cell/bias"),
        dense_kernel=find("layer_with_weights-2/kernel", "dense/kernel"),
        dense_bias=find("layer_with_weights-2/bias", "dense/bias"),
    )
    return weights.check(prefix)


def read_keras_h5(path: Path) -> GRUWeights:
    """Weights from a Keras 3 `.weights.h5` of the tutorial's model (Sequential or subclassed).

    Keras 3 stores each layer's variables as vars/0, vars/1, ... under the layer's path; the
    embedding, GRU cell and dense layer are found by path and the six shapes are checked.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            datasets: list[tuple[str, np.ndarray]] = []
            f.visititems(lambda name, obj: datasets.append((name, obj[()])) if isinstance(obj, h5py.Dataset) else None)
    except OSError as e:
        raise ModelError(f"cannot read {path} as a Keras weights file ({e})") from None

    def layer_vars(word: str) -> list[np.ndarray]:
        hits = [(n, a) for n, a in datasets if word in n.lower().split("/")[-3 if "/cell/" not in n else -4]]
        return [a for _, a in sorted(hits, key=lambda item: item[0])]

    emb, gru, dense = layer_vars("embedding"), layer_vars("gru"), layer_vars("dense")
    if len(emb) != 1 or len(gru) != 3 or len(dense) != 2:
        raise ModelError(
            f"{path} does not hold the tutorial's model (found {len(emb)} embedding, {len(gru)} GRU and "
            f"{len(dense)} dense variables; expected 1, 3, 2)"
        )
    return GRUWeights(emb[0], gru[0], gru[1], gru[2], dense[0], dense[1]).check(str(path))
