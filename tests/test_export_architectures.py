"""`to-onnx` for every architecture: each cell kind and stack, from every checkpoint kind.

* each of conftest's ARCH_SPECS (random weights in a run folder) exports with parity passing:
  the metadata records the layout (kind, units, offset, width of each layer, state_size), the
  graph's state is that wide, the step is flat (no Loop or Scan), every MatMul of the int8 model
  is int8 (one per recurrent and dense matrix) and its input table the fp32 model's float32
  table, and the keras, savedmodel and onnx runtimes step the same numbers as the numpy reference;
* after onnxruntime's own fusions the step computes a GRU's z and r with one Sigmoid, an LSTM's
  gates with three, and dequantizes nothing before the table's Gather;
* checkpoints the tutorial's own code writes, read with no flags: a tf_keras stateful Sequential
  with an LSTM (ModelCheckpoint), two GRUs (save_weights), a GRU with reset_after=False, the
  current tutorial's subclassed model with an LSTM (.weights.h5), and a Keras 3 `.keras` archive
  of a Sequential with two LSTMs;
* a Bidirectional layer is refused in one line naming it, for a TF checkpoint and a `.keras`.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import ARCH_SPECS, assert_one_line_error, run_cli

from charrnn_export import contract
from charrnn_export.cells import Architecture
from charrnn_export.cells.reference import reference_step
from charrnn_export.export import export

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")]


def config_of(model_path) -> dict:
    meta = {p.key: p.value for p in onnx.load(str(model_path)).metadata_props}
    return json.loads(meta[contract.META_CONFIG])


def int8_table(int8_model) -> np.ndarray:
    """The first layer's input table as the int8 model holds it: whole, or in column pieces
    ("input_table_cols{start}_{end}", int8.split_at_consumers), put back together."""
    pieces = [i for i in int8_model.graph.initializer if i.name.startswith("input_table")]
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in pieces)
    start = lambda i: int(i.name.split("_cols")[1].split("_")[0]) if "_cols" in i.name else 0  # noqa: E731
    return np.concatenate([onnx.numpy_helper.to_array(i) for i in sorted(pieces, key=start)], axis=1)


def matrices(weights) -> int:
    """The float matrices a MatMul multiplies by: each layer's recurrent kernel(s), a later layer's
    input kernel, the Dense kernel (the first layer's input kernel is folded into the table)."""
    from charrnn_export.cells.tf_step import step_constants

    return sum(1 for name, a in step_constants(weights).items() if a.ndim == 2 and name != "input_table")


@pytest.mark.parametrize("spec", list(ARCH_SPECS))
def test_every_architecture_exports_with_parity_and_records_its_layout(spec, arch_export, arch_weights):
    folder = arch_export(spec)
    weights, vocab = arch_weights(spec)
    architecture = weights.architecture()
    report = json.loads((folder / "export_report.json").read_text())
    assert report["architecture"] == architecture.describe()
    for pair in ("keras_vs_savedmodel", "keras_vs_onnx"):
        for quantity in ("logits", "state"):
            assert report["parity"][pair][quantity] <= contract.DEFAULT_ATOL, (pair, quantity)
    assert report["parity"]["reference_vs_onnx"]["state"] <= contract.DEFAULT_ATOL
    assert set(report["decode"]) == {"decode.onnx", "decode.int8.onnx"}
    assert all(figures["mismatched_ids"] == 0 for figures in report["decode"].values())

    config = config_of(folder / "model.onnx")
    layout = config["architecture"]["layers"]
    offset = 0
    for entry, (kind, units, options) in zip(layout, ARCH_SPECS[spec]):
        width = 2 * units if kind == "lstm" else units  # the contract's widths, written out here
        assert (entry["kind"], entry["units"], entry["state_offset"], entry["state_width"]) == (kind, units, offset, width)
        offset += width
    assert len(layout) == len(ARCH_SPECS[spec]) and config["state_size"] == offset == architecture.state_size
    assert ("rnn_units" in config) == (len(layout) == 1)
    assert Architecture.from_config(config) == architecture

    model = onnx.load(str(folder / "model.onnx"))
    state_input = next(i for i in model.graph.input if i.name == contract.STATE)
    assert state_input.type.tensor_type.shape.dim[1].dim_value == architecture.state_size
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Loop", "Scan", "GRU", "LSTM", "RNN"}, ops  # flat

    int8 = onnx.load(str(folder / "model.int8.onnx"))
    int8_ops = [n.op_type for n in int8.graph.node]
    # Every product int8; one cut into pieces where a Split read it (int8.split_at_consumers) counts each.
    assert "MatMul" not in int8_ops and int8_ops.count("MatMulIntegerToFloat") >= matrices(weights), int8_ops
    products = {out for n in int8.graph.node if n.op_type == "MatMulIntegerToFloat" for out in n.output}
    assert not [n for n in int8.graph.node if n.op_type == "Split" and n.input[0] in products]  # no copy of a product
    assert np.array_equal(int8_table(int8), onnx.numpy_helper.to_array(
        next(i for i in model.graph.initializer if i.name == "input_table")))  # float32, as fp32 has it
    assert report["int8"]["matmuls"]["MatMulIntegerToFloat"] == int8_ops.count("MatMulIntegerToFloat")
    assert all(name.startswith("input_table") for name in report["int8"]["matmuls"]["float_tables"])
    assert report["int8"]["matmuls"]["float_matrices"] == []
    assert report["int8"]["relative_logit_error_random"] <= 0.1  # these weights give logits a spread
    assert report["int8"]["top1_agreement_random"] >= 0.9


def optimized_ops(model_path, tmp_path) -> list[str]:
    """The op of every node onnxruntime runs for the model, after all of its graph optimizations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / f"optimized.{model_path.name}")
    options.log_severity_level = 3  # its warning that the file is for this machine only
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("spec", ["gru", "gru_reset_before", "mixed"])
def test_the_optimized_step_runs_one_sigmoid_per_gru_and_no_table_dequantization(spec, arch_export, tmp_path):
    folder = arch_export(spec)
    kinds = [kind for kind, _units, _options in ARCH_SPECS[spec]]
    sigmoids = kinds.count("gru") + 3 * kinds.count("lstm")  # a GRU's z and r together; an LSTM's i, f, o
    for name in ("model.onnx", "model.int8.onnx"):
        ops = optimized_ops(folder / name, tmp_path)
        assert ops.count("Sigmoid") == sigmoids, (name, ops)
        assert ops.count("Tanh") == len(kinds) + kinds.count("lstm"), (name, ops)  # candidate (+ an LSTM's c)
        # The float table, read as it is (in int8, a GRU's in its z-r and h pieces: int8.split_at_consumers).
        gathers = 1 if name == "model.onnx" or kinds[0] != "gru" else 2
        assert "Cast" not in ops and ops.count("Gather") == gathers, (name, ops)


@pytest.mark.parametrize("spec", ["lstm", "mixed"])
def test_the_runtimes_step_the_numpy_reference(spec, arch_export, arch_weights):
    from charrnn_export.runtimes.keras import KerasRuntime
    from charrnn_export.runtimes.onnx import OnnxRuntime
    from charrnn_export.runtimes.savedmodel import SavedModelRuntime

    folder = arch_export(spec)
    weights, vocab = arch_weights(spec)
    source = json.loads((folder / "export_report.json").read_text())["source"]
    runtimes = [OnnxRuntime(folder), SavedModelRuntime(folder), KerasRuntime(source)]
    tokens = np.random.default_rng(3).integers(0, len(vocab), size=(3, 20)).astype(np.int32)
    expected = np.zeros((3, weights.architecture().state_size))
    states = [r.zero_state(3) for r in runtimes]
    for t in range(tokens.shape[1]):
        reference_logits, expected = reference_step(weights, tokens[:, t], expected)
        for i, runtime in enumerate(runtimes):
            logits, states[i] = runtime.step(tokens[:, t], states[i])
            np.testing.assert_allclose(logits, reference_logits, atol=1e-4, err_msg=runtime.name)
            np.testing.assert_allclose(states[i], expected, atol=1e-5, err_msg=runtime.name)
    assert {r.rnn_units for r in runtimes} == {weights.architecture().state_size}


# ---------------------------------------------------------------- the tutorial's own checkpoints

VOCAB = tuple("abcdefghij ")


def tutorial_sequential(layers, batch: int = 4):
    """The original tutorial's build_model (tf_keras, stateful) with `layers` for its one GRU."""
    import tf_keras

    return tf_keras.Sequential([tf_keras.layers.Embedding(len(VOCAB), 8, batch_input_shape=[batch, None]),
                                *layers, tf_keras.layers.Dense(len(VOCAB))])


def fit_briefly(model) -> None:
    """A few steps of the tutorial's training, so no bias is left at its zero initial value."""
    import tf_keras

    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(VOCAB), size=(8, 21))
    model.compile(optimizer="adam", loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ids[:, :-1], ids[:, 1:], batch_size=4, epochs=2, verbose=0)


def vocab_file(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(list(VOCAB)))
    return path


def exported_architecture(checkpoint, tmp_path) -> tuple[dict, dict]:
    out = tmp_path / "export"
    result = run_cli("to-onnx", "--checkpoint", checkpoint, "--vocab", vocab_file(tmp_path), "--out", out,
                     "--quantize", "int8")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "export_report.json").read_text())
    return report, config_of(out / "model.onnx")


def test_a_tutorial_lstm_from_model_checkpoint(tmp_path):
    """The tutorial's 'you could use an LSTM layer here', trained with its ModelCheckpoint callback."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tutorial_sequential([tf_keras.layers.LSTM(16, return_sequences=True, stateful=True,
                                                      recurrent_initializer="glorot_uniform")])
    callback = tf_keras.callbacks.ModelCheckpoint(str(tmp_path / "training_checkpoints" / "ckpt_{epoch}"),
                                                  save_weights_only=True)
    model.compile(optimizer="adam", loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = np.random.default_rng(0).integers(0, len(VOCAB), size=(8, 21))
    model.fit(ids[:, :-1], ids[:, 1:], batch_size=4, epochs=2, verbose=0, callbacks=[callback])
    report, config = exported_architecture(tmp_path / "training_checkpoints", tmp_path)
    assert report["architecture"] == "lstm(16) x1" and config["state_size"] == 32
    # The tutorial's own stateful model, loaded with its own load_weights, is among the references.
    assert report["parity"]["tutorial_vs_onnx"]["logits"] <= contract.DEFAULT_ATOL


@pytest.mark.parametrize("reset_after, layers, described", [
    (True, 2, "gru(16) x2"),  # "try adding another RNN layer"
    (False, 1, "gru(16, reset_after=False) x1"),  # Keras' old default
])
def test_tutorial_grus_from_save_weights(tmp_path, reset_after, layers, described):
    import tf_keras

    tf_keras.utils.set_random_seed(1)
    model = tutorial_sequential([tf_keras.layers.GRU(16, return_sequences=True, stateful=True, reset_after=reset_after)
                                 for _ in range(layers)])
    fit_briefly(model)
    model.save_weights(str(tmp_path / "ckpt" / "weights"))
    report, config = exported_architecture(tmp_path / "ckpt" / "weights", tmp_path)
    assert report["architecture"] == described and config["state_size"] == 16 * layers
    assert report["parity"]["tutorial_vs_onnx"]["logits"] <= contract.DEFAULT_ATOL


def test_the_current_tutorials_subclassed_model_with_an_lstm(tmp_path):
    """The current tutorial's MyModel (Keras 3) with its GRU swapped for an LSTM, .weights.h5."""
    import keras

    class MyModel(keras.Model):
        def __init__(self, vocab_size, embedding_dim, rnn_units):
            super().__init__()
            self.embedding = keras.layers.Embedding(vocab_size, embedding_dim)
            self.lstm = keras.layers.LSTM(rnn_units, return_sequences=True)
            self.dense = keras.layers.Dense(vocab_size)

        def call(self, inputs):
            return self.dense(self.lstm(self.embedding(inputs)))

    keras.utils.set_random_seed(2)
    model = MyModel(len(VOCAB), 8, 12)
    ids = np.random.default_rng(0).integers(0, len(VOCAB), size=(4, 10))
    reference = np.asarray(model(ids))
    model.save_weights(str(tmp_path / "tutorial.weights.h5"))
    report, config = exported_architecture(tmp_path / "tutorial.weights.h5", tmp_path)
    assert report["architecture"] == "lstm(12) x1"
    from charrnn_export.runtimes.onnx import OnnxRuntime

    runtime = OnnxRuntime(tmp_path / "export")
    state, got = runtime.zero_state(4), []
    for t in range(ids.shape[1]):
        logits, state = runtime.step(ids[:, t].astype(np.int32), state)
        got.append(logits)
    np.testing.assert_allclose(np.stack(got, axis=1), reference, atol=contract.DEFAULT_ATOL)


def test_a_keras3_archive_with_two_lstms(tmp_path):
    """A `.keras` file (model.save) of a Sequential with two LSTMs: config.json names the layers."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.layers.Input((None,), dtype="int32"), keras.layers.Embedding(len(VOCAB), 8),
                              keras.layers.LSTM(12, return_sequences=True), keras.layers.Dropout(0.1),
                              keras.layers.LSTM(10, return_sequences=True), keras.layers.Dense(len(VOCAB))])
    model.save(str(tmp_path / "model.keras"))
    report, config = exported_architecture(tmp_path / "model.keras", tmp_path)
    assert report["architecture"] == "lstm(12) -> lstm(10)"
    assert [(e["kind"], e["units"], e["state_offset"]) for e in config["architecture"]["layers"]] == [
        ("lstm", 12, 0), ("lstm", 10, 24)]
    assert config["state_size"] == 44 and "rnn_units" not in config


def test_a_bidirectional_layer_is_refused_in_one_line(tmp_path):
    import keras
    import tf_keras

    model = tutorial_sequential([tf_keras.layers.Bidirectional(tf_keras.layers.GRU(8, return_sequences=True))])
    model.save_weights(str(tmp_path / "ckpt" / "weights"))
    result = run_cli("to-onnx", "--checkpoint", tmp_path / "ckpt" / "weights", "--vocab", vocab_file(tmp_path),
                     "--out", tmp_path / "out")
    assert_one_line_error(result, "Bidirectional")
    assert not (tmp_path / "out").exists()

    archive = keras.Sequential([keras.layers.Input((None,), dtype="int32"), keras.layers.Embedding(len(VOCAB), 8),
                                keras.layers.Bidirectional(keras.layers.LSTM(8, return_sequences=True)),
                                keras.layers.Dense(len(VOCAB))])
    archive.save(str(tmp_path / "bi.keras"))
    result = run_cli("to-onnx", "--checkpoint", tmp_path / "bi.keras", "--vocab", vocab_file(tmp_path),
                     "--out", tmp_path / "out")
    assert_one_line_error(result, "Bidirectional(LSTM)")


def test_an_old_single_gru_checkpoint_still_exports(tmp_path, arch_weights):
    """A run checkpoint written before architectures (weights/embedding, weights/kernel, ...) reads as gru x1."""
    from charrnn_export.checkpoints import OLD_GRU_ARRAYS

    weights, vocab = arch_weights("gru")
    (layer,) = weights.layers
    old = (weights.embedding, *layer.arrays(), weights.dense_kernel, weights.dense_bias)
    run = tmp_path / "run"
    run.mkdir()
    vocab.save(run / "vocab.json")
    (run / "config.json").write_text(json.dumps({"val_fraction": 0.1}))
    np.savez(run / "best.npz", **{f"weights/{n}": a for n, a in zip(OLD_GRU_ARRAYS, old)},
             meta=np.array(json.dumps({"metrics": {}})))
    report = export(str(run), str(tmp_path / "export"))
    assert report["architecture"] == "gru(32) x1" and report["config"]["rnn_units"] == 32
