"""`to-onnx` from a `charrnn-export train` run: the files, the step contract, the metadata, the
SavedModel signature, parity with an independently built Keras model, and an int8 model whose
weights really are int8. Built on the session's tiny run and export (tests/tiny.py, shared
through conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from charrnn_export import contract

PRIME = "ROMEO:\nWhat light through yonder window breaks? "


def onnx_session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def step_onnx(session, ids: np.ndarray, units: int) -> tuple[np.ndarray, np.ndarray]:
    """ids (batch, time) one step at a time from a zero state -> logits (batch, time, vocab), last state."""
    state = np.zeros((ids.shape[0], units), np.float32)
    logits_seq = []
    for t in range(ids.shape[1]):
        logits, state = session.run([contract.LOGITS, contract.STATE_OUT],
                                    {contract.TOKEN: ids[:, t].astype(np.int32), contract.STATE: state})
        logits_seq.append(logits)
    return np.stack(logits_seq, axis=1), state


def run_weights(run_dir) -> dict[str, np.ndarray]:
    """best.npz of a single-layer run read with numpy alone, not with the project's reader:
    embedding, kernel, recurrent_kernel, bias, dense_kernel, dense_bias (the layer's arrays are
    stored as weights/layers/0/NAME, an older checkpoint's as weights/NAME)."""
    with np.load(run_dir / "best.npz") as npz:
        return {k.split("/")[-1]: npz[k] for k in npz.files if k.startswith("weights/")}


def test_export_dir_holds_the_artifacts_and_nothing_else(tiny_export):
    names = {p.name for p in tiny_export.iterdir()}
    assert {"export_report.json", "model.int8.onnx", "model.onnx", "saved_model", "vocab.json"} <= names
    # ... and nothing that its manifest (what --force may later remove) does not list.
    listed = json.loads((tiny_export / ".charrnn-export.json").read_text())
    assert names - {".charrnn-export.json"} == {name.split("/")[0] for name in listed["files"]}
    assert {p.relative_to(tiny_export).as_posix() for p in tiny_export.rglob("*") if p.is_file()} == (
        set(listed["files"]) | {".charrnn-export.json"})
    assert (tiny_export / "saved_model" / "saved_model.pb").is_file()
    leftovers = [p.name for p in tiny_export.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"staging or probe files left beside the export: {leftovers}"


@pytest.mark.parametrize("name", ["model.onnx", "model.int8.onnx"])
def test_onnx_graph_has_no_loop_or_scan(tiny_export, name):
    model = onnx.load(str(tiny_export / name))
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"Loop", "Scan", "If"}, ops
    # No control flow hidden in a subgraph either: no node carries a graph attribute.
    assert not [n.name for n in model.graph.node for a in n.attribute if a.type in (
        onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)]
    assert {"Gather", "Sigmoid", "Tanh"} <= ops  # one flat GRU step


def test_onnx_inputs_and_outputs_follow_the_contract_with_a_dynamic_batch(tiny_export, tiny_run):
    model = onnx.load(str(tiny_export / "model.onnx"))
    config = json.loads((tiny_run / "config.json").read_text())
    units, vocab = config["rnn_units"], config["vocab_size"]
    T = onnx.TensorProto

    def spec(values):
        return {v.name: (v.type.tensor_type.elem_type,
                         [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim])
                for v in values}

    assert spec(model.graph.input) == {contract.TOKEN: (T.INT32, [None]), contract.STATE: (T.FLOAT, [None, units])}
    assert spec(model.graph.output) == {contract.LOGITS: (T.FLOAT, [None, vocab]),
                                        contract.STATE_OUT: (T.FLOAT, [None, units])}
    session = onnx_session(tiny_export / "model.onnx")
    for batch in (1, 7):
        logits, state = session.run(None, {contract.TOKEN: np.zeros(batch, np.int32),
                                           contract.STATE: np.zeros((batch, units), np.float32)})
        assert logits.shape == (batch, vocab) and state.shape == (batch, units)


def test_onnx_metadata_holds_vocab_config_data_hash_and_val_loss(tiny_export, tiny_run, tiny_text):
    meta = {p.key: p.value for p in onnx.load(str(tiny_export / "model.onnx")).metadata_props}
    text = tiny_text.read_text(encoding="utf-8")
    assert json.loads(meta[contract.META_VOCAB]) == sorted(set(text))
    assert json.loads(meta[contract.META_VOCAB]) == json.loads((tiny_export / "vocab.json").read_text())
    config = json.loads(meta[contract.META_CONFIG])
    assert {k: config[k] for k in ("embedding_dim", "rnn_units", "vocab_size", "rnn_type")} == {
        "embedding_dim": 16, "rnn_units": 32, "vocab_size": len(set(text)), "rnn_type": "gru"}
    assert meta[contract.META_DATA_SHA256] == hashlib.sha256(tiny_text.read_bytes()).hexdigest()
    metrics = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert float(meta[contract.META_VAL_LOSS]) == pytest.approx(min(m["val_loss"] for m in metrics), abs=1e-6)
    int8_meta = {p.key: p.value for p in onnx.load(str(tiny_export / "model.int8.onnx")).metadata_props}
    assert int8_meta[contract.META_VOCAB] == meta[contract.META_VOCAB]


def test_savedmodel_serving_signature_and_stored_vocabulary(tiny_export, tiny_run):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tiny_export / "saved_model"))
    signature = loaded.signatures[contract.SIGNATURE]
    args, kwargs = signature.structured_input_signature
    assert args == ()
    assert {k: (v.dtype, v.shape.as_list()) for k, v in kwargs.items()} == {
        contract.TOKEN: (tf.int32, [None]), contract.STATE: (tf.float32, [None, 32])}
    vocab_size = json.loads((tiny_run / "config.json").read_text())["vocab_size"]
    assert {k: v.shape.as_list() for k, v in signature.structured_outputs.items()} == {
        contract.LOGITS: [None, vocab_size], contract.STATE_OUT: [None, 32]}
    out = signature(token=tf.constant([1, 2, 3]), state=tf.zeros([3, 32]))
    assert out[contract.LOGITS].shape == (3, vocab_size)
    run_vocab = json.loads((tiny_run / "vocab.json").read_text())
    assert json.loads((tiny_export / "saved_model" / "assets" / "vocab.json").read_text()) == run_vocab
    assert json.loads(loaded.vocab_json.numpy().decode()) == run_vocab
    assert json.loads(loaded.config_json.numpy().decode())["rnn_units"] == 32


def test_report_records_parity_over_several_batches_and_lengths(tiny_export):
    report = json.loads((tiny_export / "export_report.json").read_text())
    assert report["source_kind"] == "run" and report["opset"] == 18 and report["atol"] == contract.DEFAULT_ATOL
    cases = report["parity"]["cases"]
    assert len({b for b, _ in cases}) >= 2 and len({n for _, n in cases}) >= 2
    for pair in ("keras_vs_savedmodel", "keras_vs_onnx"):
        for quantity in ("logits", "state"):
            assert 0 <= report["parity"][pair][quantity] <= contract.DEFAULT_ATOL, (pair, quantity)


def test_onnx_and_savedmodel_match_an_independent_keras_model_on_a_prime(tiny_export, tiny_run):
    """The reference is built here from best.npz with plain Keras, sharing no code with the exporter."""
    import keras
    import tensorflow as tf

    w = run_weights(tiny_run)
    vocab = json.loads((tiny_run / "vocab.json").read_text())
    model = keras.Sequential([keras.layers.Input((None,), dtype="int32"),
                              keras.layers.Embedding(*w["embedding"].shape),
                              keras.layers.GRU(w["recurrent_kernel"].shape[0], return_sequences=True),
                              keras.layers.Dense(w["dense_bias"].shape[0])])
    model.set_weights([w[k] for k in ("embedding", "kernel", "recurrent_kernel", "bias", "dense_kernel", "dense_bias")])
    ids = np.array([[vocab.index(c) for c in PRIME]], np.int32)  # (1, time)
    expected = np.asarray(model(ids))  # (1, time, vocab)

    got, _ = step_onnx(onnx_session(tiny_export / "model.onnx"), ids, 32)
    np.testing.assert_allclose(got, expected, atol=contract.DEFAULT_ATOL)
    signature = tf.saved_model.load(str(tiny_export / "saved_model")).signatures[contract.SIGNATURE]
    state, saved = tf.zeros([1, 32]), []
    for t in range(ids.shape[1]):
        out = signature(token=tf.constant(ids[:, t]), state=state)
        saved.append(out[contract.LOGITS].numpy())
        state = out[contract.STATE_OUT]
    np.testing.assert_allclose(np.stack(saved, axis=1), expected, atol=contract.DEFAULT_ATOL)


def test_int8_model_stores_its_matmul_weights_as_int8_and_the_input_table_as_fp32(tiny_export, tiny_run):
    w = run_weights(tiny_run)
    vocab, units = w["embedding"].shape[0], w["recurrent_kernel"].shape[0]
    model = onnx.load(str(tiny_export / "model.int8.onnx"))
    by_type: dict[int, list] = {}
    for init in model.graph.initializer:
        by_type.setdefault(init.data_type, []).append(onnx.numpy_helper.to_array(init))
    int8_shapes = {a.shape for a in by_type[onnx.TensorProto.INT8]}
    # The recurrent kernel in its z-r and h pieces (int8.split_at_consumers), the output kernel.
    assert {(units, 2 * units), (units, units), (units, vocab)} <= int8_shapes
    # The input table (embedding folded into the input kernel) is only gathered: kept exactly as fp32 has it.
    fp32 = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tiny_export / "model.onnx")).graph.initializer}
    tables = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name.startswith("input_table")}
    assert np.array_equal(np.concatenate([tables[f"input_table_cols0_{2 * units}"],
                                          tables[f"input_table_cols{2 * units}_{3 * units}"]], axis=1), fp32["input_table"])
    floats = [a for a in by_type[onnx.TensorProto.FLOAT] if not (a.ndim == 2 and a.shape[0] == vocab)]
    assert max(a.size for a in floats) <= max(vocab, 3 * units), [a.shape for a in floats]  # biases and scales only
    assert not any(a.shape == w["recurrent_kernel"].shape for a in floats), "a float recurrent kernel is left"
    assert not [a for a in by_type.get(onnx.TensorProto.UINT8, []) if a.size > 1]
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulIntegerToFloat" in ops, ops
    assert "MatMul" not in ops  # no float matmul left


def test_int8_agrees_with_fp32_on_the_validation_text(tiny_export, tiny_text, tiny_run):
    report = json.loads((tiny_export / "export_report.json").read_text())
    q = report["int8"]
    assert report["validation"]["held_out"] is True and report["validation"]["chars"] > 1000
    assert report["validation"]["fp32"]["loss"] == q["val_loss_fp32"]
    assert q["top1_agreement"] >= 0.95
    assert abs(q["val_loss_int8"] - q["val_loss_fp32"]) < 0.05
    assert 0 < q["max_logit_diff_random"] < 0.5

    # The same figure measured here: teacher-forced over the held-out text, 8 streams.
    config = json.loads((tiny_run / "config.json").read_text())
    vocab = json.loads((tiny_run / "vocab.json").read_text())
    text = tiny_text.read_text(encoding="utf-8")
    held_out = text[len(text) - int(round(len(text) * config["val_fraction"])):]
    ids = np.array([vocab.index(c) for c in held_out], np.int32)
    ids = ids[: len(ids) // 8 * 8].reshape(8, -1)[:, :200]
    fp32, _ = step_onnx(onnx_session(tiny_export / "model.onnx"), ids, 32)
    int8, _ = step_onnx(onnx_session(tiny_export / "model.int8.onnx"), ids, 32)
    assert np.mean(fp32.argmax(-1) == int8.argmax(-1)) >= 0.95


def test_cli_exports_a_run_with_opset_and_force(tiny_run, tiny_export, tmp_path):
    import shutil

    out = tmp_path / "export"
    shutil.copytree(tiny_export, out)  # an earlier export (with int8), its manifest listing what it wrote
    (out / "notes.txt").write_text("the user's, beside the export")
    (out / "saved_model" / "README").write_text("the user's, inside a folder of the export")
    result = subprocess.run([sys.executable, "-m", "charrnn_export.cli", "to-onnx", "--checkpoint", str(tiny_run),
                             "--out", str(out), "--opset", "17", "--force"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"},
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # TensorFlow's start-up lines are silenced
    assert result.stdout.startswith("exported ")
    # The earlier export's files are replaced (model.int8.onnx, not made this time, is gone); the
    # user's files, which its manifest does not list, are kept where they were.
    names = {p.name for p in out.iterdir()}
    assert "model.int8.onnx" not in names and {"notes.txt", "model.onnx", "saved_model"} <= names
    listed = json.loads((out / ".charrnn-export.json").read_text())["files"]
    assert names - {".charrnn-export.json", "notes.txt"} == {name.split("/")[0] for name in listed}
    assert (out / "notes.txt").read_text() == "the user's, beside the export"
    assert (out / "saved_model" / "README").read_text() == "the user's, inside a folder of the export"
    model = onnx.load(str(out / "model.onnx"))
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    assert json.loads((out / "export_report.json").read_text())["opset"] == 17
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # old export and staging gone


def test_force_never_replaces_a_directory_that_is_not_an_export(tiny_run, tmp_path):
    out = tmp_path / "work"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = subprocess.run([sys.executable, "-m", "charrnn_export.cli", "to-onnx", "--checkpoint", str(tiny_run),
                             "--out", str(out), "--force"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"},
                            timeout=300)
    assert result.returncode == 2
    assert "did not write (notes.txt)" in result.stderr and "Traceback" not in result.stderr
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
