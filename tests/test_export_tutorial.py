"""`to-onnx` from checkpoints written by the TensorFlow tutorial's own code, not by ours:

* the original tutorial (TF 2.0 era): a stateful tf_keras Sequential model trained with
  `model.fit(..., callbacks=[ModelCheckpoint(filepath=checkpoint_prefix, save_weights_only=True)])`,
  read as the `training_checkpoints` directory and as a `training_checkpoints/ckpt_N` prefix;
* the current tutorial: the subclassed `MyModel` in Keras 3, `model.save_weights('x.weights.h5')`,
  whose ids come from StringLookup (id 0 is "[UNK]").

Each export is then checked against the tutorial's own model loaded with the tutorial's own
load_weights and called on a prime string: a wrong variable mapping cannot pass that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from charrnn_export import contract
from charrnn_export.export import export

# Keras warns about its own internals (numpy 2 copy semantics) and about fit() on a Dataset.
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")]

PRIME = "ROMEO:\nWhat light through yonder window breaks? "
EMBEDDING_DIM, RNN_UNITS = 16, 32


def onnx_logits(model_path, ids: list[int], units: int) -> tuple[np.ndarray, np.ndarray]:
    """Our ONNX step, one character at a time from a zero state: (time, vocab) logits, last state."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    state, out = np.zeros((1, units), np.float32), []
    for token in ids:
        logits, state = session.run([contract.LOGITS, contract.STATE_OUT],
                                    {contract.TOKEN: np.array([token], np.int32), contract.STATE: state})
        out.append(logits[0])
    return np.stack(out), state[0]


# ---------------------------------------------------------------- the original tutorial (tf_keras)


def tutorial_build_model(vocab_size, embedding_dim, rnn_units, batch_size):
    """The tutorial's build_model, with tf_keras in place of TF 2.0's tf.keras."""
    import tf_keras

    model = tf_keras.Sequential([
        tf_keras.layers.Embedding(vocab_size, embedding_dim, batch_input_shape=[batch_size, None]),
        tf_keras.layers.GRU(rnn_units, return_sequences=True, stateful=True, recurrent_initializer='glorot_uniform'),
        tf_keras.layers.Dense(vocab_size),
    ])
    return model


@pytest.fixture(scope="module")
def tutorial_run(tmp_path_factory, tiny_text):
    """The tutorial's data pipeline, model, loss and checkpointing, trained 2 epochs of 3 steps."""
    import tensorflow as tf
    import tf_keras

    workdir = tmp_path_factory.mktemp("tutorial")
    text = open(tiny_text, 'rb').read().decode(encoding='utf-8')
    vocab = sorted(set(text))
    char2idx = {u: i for i, u in enumerate(vocab)}
    text_as_int = np.array([char2idx[c] for c in text])
    seq_length = 100
    char_dataset = tf.data.Dataset.from_tensor_slices(text_as_int)
    sequences = char_dataset.batch(seq_length + 1, drop_remainder=True)

    def split_input_target(chunk):
        input_text = chunk[:-1]
        target_text = chunk[1:]
        return input_text, target_text

    dataset = sequences.map(split_input_target)
    BATCH_SIZE = 8
    BUFFER_SIZE = 10000
    dataset = dataset.shuffle(BUFFER_SIZE, seed=0).batch(BATCH_SIZE, drop_remainder=True)
    vocab_size = len(vocab)
    tf_keras.utils.set_random_seed(0)
    model = tutorial_build_model(vocab_size=vocab_size, embedding_dim=EMBEDDING_DIM, rnn_units=RNN_UNITS,
                                 batch_size=BATCH_SIZE)

    def loss(labels, logits):
        return tf_keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    model.compile(optimizer='adam', loss=loss)
    checkpoint_dir = str(workdir / 'training_checkpoints')
    checkpoint_prefix = os.path.join(checkpoint_dir, "ckpt_{epoch}")
    checkpoint_callback = tf_keras.callbacks.ModelCheckpoint(filepath=checkpoint_prefix, save_weights_only=True)
    EPOCHS = 2
    model.fit(dataset.take(3), epochs=EPOCHS, callbacks=[checkpoint_callback], verbose=0)
    assert tf.train.latest_checkpoint(checkpoint_dir).endswith("ckpt_2")
    (workdir / "vocab.json").write_text(json.dumps(vocab))
    return {"dir": workdir / "training_checkpoints", "vocab": vocab, "vocab_file": workdir / "vocab.json",
            "text": tiny_text}


def tutorial_prime_logits(prefix, vocab) -> np.ndarray:
    """What the tutorial's generate_text sees: its batch-1 model, load_weights, reset_states, the prime."""
    import tensorflow as tf

    model = tutorial_build_model(len(vocab), EMBEDDING_DIM, RNN_UNITS, batch_size=1)
    model.load_weights(str(prefix)).expect_partial()
    model.build(tf.TensorShape([1, None]))
    model.reset_states()
    char2idx = {u: i for i, u in enumerate(vocab)}
    input_eval = tf.expand_dims([char2idx[s] for s in PRIME], 0)
    return np.asarray(model(input_eval))[0]  # (time, vocab)


def test_cli_exports_the_tutorial_checkpoint_directory(tutorial_run, tmp_path):
    out = tmp_path / "export"
    result = subprocess.run([sys.executable, "-m", "charrnn_export.cli", "to-onnx", "--checkpoint",
                             str(tutorial_run["dir"]), "--out", str(out), "--text", str(tutorial_run["text"]),
                             "--quantize", "int8"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"},
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = json.loads((out / "export_report.json").read_text())
    assert report["source_kind"] == "tutorial-tf" and report["source"].endswith("ckpt_2")  # the newest
    assert report["config"]["vocab_size"] == len(tutorial_run["vocab"])
    assert report["config"]["embedding_dim"] == EMBEDDING_DIM and report["config"]["rnn_units"] == RNN_UNITS
    assert json.loads((out / "vocab.json").read_text()) == tutorial_run["vocab"]
    # The exporter's own reference includes the tutorial's stateful model on the whole strings.
    for pair in ("keras_vs_onnx", "keras_vs_savedmodel", "tutorial_vs_onnx", "tutorial_vs_keras"):
        assert report["parity"][pair]["logits"] <= contract.DEFAULT_ATOL, pair
    assert report["validation"]["held_out"] is False  # the tutorial trains on all of its text
    assert report["int8"]["top1_agreement"] >= 0.95

    # Independently: the tutorial's generation model vs our ONNX step on a prime string.
    expected = tutorial_prime_logits(tutorial_run["dir"] / "ckpt_2", tutorial_run["vocab"])
    ids = [tutorial_run["vocab"].index(c) for c in PRIME]
    got, _ = onnx_logits(out / "model.onnx", ids, RNN_UNITS)
    np.testing.assert_allclose(got, expected, atol=contract.DEFAULT_ATOL)
    int8, _ = onnx_logits(out / "model.int8.onnx", ids, RNN_UNITS)
    assert np.mean(int8.argmax(-1) == expected.argmax(-1)) >= 0.9


def test_exports_a_tutorial_checkpoint_prefix_with_a_vocab_file(tutorial_run, tmp_path):
    prefix = tutorial_run["dir"] / "ckpt_1"
    report = export(str(prefix), str(tmp_path / "export"), vocab_path=str(tutorial_run["vocab_file"]))
    assert report["source"] == str(prefix) and report["source_kind"] == "tutorial-tf"
    assert report["parity"]["tutorial_vs_onnx"]["logits"] <= contract.DEFAULT_ATOL
    expected = tutorial_prime_logits(prefix, tutorial_run["vocab"])
    got, _ = onnx_logits(tmp_path / "export" / "model.onnx", [tutorial_run["vocab"].index(c) for c in PRIME],
                         RNN_UNITS)
    np.testing.assert_allclose(got, expected, atol=contract.DEFAULT_ATOL)
    # ckpt_1 is really what was read: the newest checkpoint gives other logits.
    assert np.max(np.abs(tutorial_prime_logits(tutorial_run["dir"] / "ckpt_2", tutorial_run["vocab"]) - got)) > 1e-3


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_a_tutorial_checkpoint_cut_short_is_one_line(tutorial_run, tmp_path, keep):
    """Cut past the weights, only the optimizer's slots are lost: found when the checkpoint is read,
    not later inside tf_keras' load_weights (a 35-line traceback)."""
    import shutil

    from conftest import assert_one_line_error, run_cli

    folder = shutil.copytree(tutorial_run["dir"], tmp_path / "training_checkpoints")
    data = folder / "ckpt_2.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: int(data.stat().st_size * keep)])
    out = tmp_path / "export"
    result = run_cli("to-onnx", "--checkpoint", folder, "--text", tutorial_run["text"], "--out", out)
    assert_one_line_error(result, f"cannot read TF checkpoint {folder / 'ckpt_2'}: it is corrupt or truncated")
    assert not out.exists()


def test_a_checkpoint_file_names_its_prefix(tutorial_run):
    from charrnn_export.checkpoints import load_any_checkpoint

    for name in ("ckpt_1.index", "ckpt_1.data-00000-of-00001"):
        assert load_any_checkpoint(tutorial_run["dir"] / name).source == str(tutorial_run["dir"] / "ckpt_1")


def test_tutorial_legacy_h5_weights_read_the_same(tutorial_run, tmp_path):
    """The tutorial's model.save_weights('x.h5') (tf_keras' h5 format) gives the checkpoint's weights."""
    from charrnn_export.checkpoints import load_any_checkpoint

    model = tutorial_build_model(len(tutorial_run["vocab"]), EMBEDDING_DIM, RNN_UNITS, batch_size=1)
    model.load_weights(str(tutorial_run["dir"] / "ckpt_2")).expect_partial()
    model.save_weights(str(tmp_path / "tutorial.h5"))
    from_h5 = load_any_checkpoint(tmp_path / "tutorial.h5").weights
    from_ckpt = load_any_checkpoint(tutorial_run["dir"]).weights
    assert from_h5.architecture() == from_ckpt.architecture()
    for name, array in from_ckpt.named_arrays().items():
        np.testing.assert_array_equal(from_h5.named_arrays()[name], array, err_msg=name)


# ---------------------------------------------------------------- the current tutorial (Keras 3)


def current_tutorial_model_class():
    """The current tutorial's MyModel. Two lines differ for Keras 3, where the tutorial's own
    code raises: `super().__init__(self)` -> `super().__init__()`, and get_initial_state takes the
    batch size rather than the inputs."""
    import tensorflow as tf

    class MyModel(tf.keras.Model):
        def __init__(self, vocab_size, embedding_dim, rnn_units):
            super().__init__()
            self.embedding = tf.keras.layers.Embedding(vocab_size, embedding_dim)
            self.gru = tf.keras.layers.GRU(rnn_units,
                                           return_sequences=True,
                                           return_state=True)
            self.dense = tf.keras.layers.Dense(vocab_size)

        def call(self, inputs, states=None, return_state=False, training=False):
            x = inputs
            x = self.embedding(x, training=training)
            if states is None:
                states = self.gru.get_initial_state(tf.shape(x)[0])
            x, states = self.gru(x, initial_state=states, training=training)
            x = self.dense(x, training=training)

            if return_state:
                return x, states
            else:
                return x

    return MyModel


# embedding_dim == rnn_units: the GRU's kernel and recurrent kernel have the same shape, so
# a reader that told them apart by shape alone would swap them unnoticed by any shape check.
H5_EMBEDDING_DIM = H5_RNN_UNITS = 24


@pytest.fixture(scope="module")
def current_tutorial(tmp_path_factory, tiny_text):
    """The current tutorial's data pipeline and MyModel, fitted 3 steps, saved as .weights.h5."""
    import tensorflow as tf

    workdir = tmp_path_factory.mktemp("current_tutorial")
    text = open(tiny_text, 'rb').read().decode(encoding='utf-8')
    vocab = sorted(set(text))
    ids_from_chars = tf.keras.layers.StringLookup(vocabulary=list(vocab), mask_token=None)
    all_ids = ids_from_chars(tf.strings.unicode_split(text, 'UTF-8'))
    ids_dataset = tf.data.Dataset.from_tensor_slices(all_ids)
    seq_length = 100
    sequences = ids_dataset.batch(seq_length + 1, drop_remainder=True)

    def split_input_target(sequence):
        input_text = sequence[:-1]
        target_text = sequence[1:]
        return input_text, target_text

    dataset = sequences.map(split_input_target)
    BATCH_SIZE = 8
    BUFFER_SIZE = 10000
    dataset = (dataset.shuffle(BUFFER_SIZE, seed=0).batch(BATCH_SIZE, drop_remainder=True)
               .prefetch(tf.data.experimental.AUTOTUNE))
    vocab_size = len(ids_from_chars.get_vocabulary())
    tf.keras.utils.set_random_seed(0)
    MyModel = current_tutorial_model_class()
    model = MyModel(vocab_size=vocab_size, embedding_dim=H5_EMBEDDING_DIM, rnn_units=H5_RNN_UNITS)
    loss = tf.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer='adam', loss=loss)
    model.fit(dataset.take(3), epochs=1, verbose=0)
    model.save_weights(str(workdir / 'tutorial.weights.h5'))
    return {"h5": workdir / "tutorial.weights.h5", "ids_from_chars": ids_from_chars, "vocab": vocab,
            "vocab_size": vocab_size, "text": tiny_text, "model_class": MyModel}


def test_exports_the_current_tutorials_weights_h5(current_tutorial, tmp_path):
    import tensorflow as tf

    out = tmp_path / "export"
    report = export(str(current_tutorial["h5"]), str(out), text=str(current_tutorial["text"]))
    assert report["source_kind"] == "keras-h5" and report["source_layout"] == "subclassed"
    assert report["config"]["vocab_size"] == current_tutorial["vocab_size"] == len(current_tutorial["vocab"]) + 1
    assert report["config"]["unk_id"] == 0
    assert report["parity"]["keras_vs_onnx"]["logits"] <= contract.DEFAULT_ATOL
    exported_vocab = json.loads((out / "vocab.json").read_text())
    assert exported_vocab[1:] == current_tutorial["vocab"]  # id 0 is the tutorial's [UNK]

    # The tutorial's MyModel, loaded with the tutorial's load_weights, vs our ONNX step.
    model = current_tutorial["model_class"](current_tutorial["vocab_size"], H5_EMBEDDING_DIM, H5_RNN_UNITS)
    model(tf.zeros([1, 1], tf.int64))  # build, as the tutorial does by calling it on a batch
    model.load_weights(str(current_tutorial["h5"]))
    input_ids = current_tutorial["ids_from_chars"](tf.strings.unicode_split(PRIME, 'UTF-8'))
    ours = [exported_vocab.index(c) for c in PRIME]
    assert input_ids.numpy().tolist() == ours  # the same ids as the tutorial's StringLookup
    expected, states = model(tf.expand_dims(input_ids, 0), return_state=True)
    got, state = onnx_logits(out / "model.onnx", ours, H5_RNN_UNITS)
    np.testing.assert_allclose(got, np.asarray(expected)[0], atol=contract.DEFAULT_ATOL)
    np.testing.assert_allclose(state, np.asarray(states)[0], atol=contract.DEFAULT_ATOL)
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(meta[contract.META_CONFIG])["unk_id"] == 0


def test_keras3_sequential_weights_h5_reads_the_same(tmp_path):
    """A Keras 3 Sequential (cells.keras_model's) saved by Keras 3 (layers/... paths) reads back exactly."""
    from charrnn_export.cells import Architecture, LayerSpec
    from charrnn_export.cells.keras_model import build_keras_model, weights_from_keras_model
    from charrnn_export.checkpoints import load_any_checkpoint

    model = build_keras_model(Architecture(11, 8, (LayerSpec("gru", 12),)))
    model.save_weights(str(tmp_path / "seq.weights.h5"))
    loaded = load_any_checkpoint(tmp_path / "seq.weights.h5")
    assert loaded.layout == "sequential"
    for name, array in weights_from_keras_model(model).named_arrays().items():
        np.testing.assert_array_equal(loaded.weights.named_arrays()[name], array, err_msg=name)
