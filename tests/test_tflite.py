"""`charrnn-export to-tflite`: LiteRT files with the export's contract, parity-checked, and `sample --runtime litert`.

On the tiny export: the files' signature, metadata (vocabulary and config inside the .tflite),
parity report and manifest; the CLI end to end, with greedy text equal to onnxruntime's; an
export holding only model.onnx (as the shipped artifacts/ do), through --model fp32; a parity
failure writes nothing; bad input is one line and exit 2, before TensorFlow is loaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from charrnn_export import contract
from charrnn_export.errors import ConfigError, LinkOutside, ModelError, ParityError
from charrnn_export.generate import ARTIFACTS_ENV
from conftest import REPO, assert_one_line_error, cli_env, run_cli

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def converted(tiny_export, tmp_path_factory):
    """to_tflite on the tiny export, both precisions: (folder, report)."""
    from charrnn_export.tflite_export import to_tflite

    out = tmp_path_factory.mktemp("litert") / "litert"
    return out, to_tflite(str(tiny_export), out)


def sample(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "charrnn_export.sample", "--quiet", *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, encoding="utf-8", env=cli_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --quiet: not even the interpreter's native INFO line
    return result.stdout


# ---------------------------------------------------------------- the files


def test_the_folder_holds_both_models_their_vocabulary_and_report(converted, tiny_export):
    out, report = converted
    assert sorted(p.name for p in out.iterdir()) == [".charrnn-export-litert.json", "litert_report.json",
                                                     "model.int8.tflite", "model.tflite", "vocab.json"]
    assert (out / "vocab.json").read_text() == (tiny_export / "vocab.json").read_text()
    assert json.loads((out / "litert_report.json").read_text())["fp32"] == report["fp32"]
    manifest = json.loads((out / ".charrnn-export-litert.json").read_text())
    assert manifest["kind"] == "litert" and set(manifest["files"]) == {"model.tflite", "model.int8.tflite",
                                                                       "vocab.json", "litert_report.json"}
    assert report["converted_from"] == "saved_model" and report["reference"] == "onnx"
    assert (out / "model.int8.tflite").stat().st_size < (out / "model.tflite").stat().st_size / 2


def test_the_signature_is_the_step_contract(converted, tiny_export):
    """What an Android or iOS app sees: one signature, its inputs and outputs by name, S from the export."""
    from charrnn_export.runtimes.litert import interpreter_class
    from charrnn_export.runtimes.onnx import OnnxRuntime

    units = OnnxRuntime(tiny_export / "model.onnx").rnn_units
    for file in ("model.tflite", "model.int8.tflite"):
        interpreter = interpreter_class()(model_path=str(converted[0] / file))
        assert interpreter.get_signature_list() == {
            contract.SIGNATURE: {"inputs": [contract.STATE, contract.TOKEN],
                                 "outputs": [contract.LOGITS, contract.STATE_OUT]}}
        runner = interpreter.get_signature_runner(contract.SIGNATURE)
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        assert inputs[contract.TOKEN]["dtype"] == np.int32 and list(inputs[contract.TOKEN]["shape_signature"]) == [-1]
        assert inputs[contract.STATE]["dtype"] == np.float32
        assert list(inputs[contract.STATE]["shape_signature"]) == [-1, units]
        assert list(outputs[contract.STATE_OUT]["shape_signature"]) == [-1, units]
        assert outputs[contract.LOGITS]["dtype"] == np.float32
        # By index, as the Swift snippet in README.md uses them: inputs state, token; outputs logits, state_out.
        assert [d["name"] for d in interpreter.get_input_details()] == ["serving_default_state:0",
                                                                         "serving_default_token:0"]
        by_index = [d["index"] for d in interpreter.get_output_details()]
        assert [outputs[contract.LOGITS]["index"], outputs[contract.STATE_OUT]["index"]] == by_index
        # README's Python line: the signature runner resizes the batch itself.
        result = runner(token=np.array([1, 2, 3], np.int32), state=np.zeros((3, units), np.float32))
        assert result[contract.LOGITS].shape[0] == 3 and result[contract.STATE_OUT].shape == (3, units)


def test_the_file_carries_its_vocabulary_and_config(converted, tiny_export, tmp_path):
    from charrnn_export.runtimes.litert import LiteRTRuntime, read_metadata
    from charrnn_export.runtimes.onnx import OnnxRuntime

    onnx = OnnxRuntime(tiny_export / "model.onnx")
    metadata = read_metadata(converted[0] / "model.int8.tflite")
    assert json.loads(metadata[contract.META_VOCAB]) == list(onnx.vocab.chars)
    assert json.loads(metadata[contract.META_CONFIG]) == onnx.config
    alone = tmp_path / "model.tflite"  # no vocab.json beside it
    shutil.copy(converted[0] / "model.tflite", alone)
    runtime = LiteRTRuntime(alone)
    assert runtime.vocab.chars == onnx.vocab.chars and runtime.config == onnx.config
    assert runtime.rnn_units == onnx.rnn_units


def test_parity_figures_and_the_int8_gate(converted, tiny_export):
    """The report's figures are measured again here on a real text, stepped through both runtimes."""
    from charrnn_export.runtimes.litert import LiteRTRuntime
    from charrnn_export.runtimes.onnx import OnnxRuntime

    report = converted[1]
    assert report["fp32"]["max_logits_diff"] <= contract.DEFAULT_ATOL >= report["fp32"]["max_state_diff"]
    assert report["fp32"]["greedy_agreement"] == report["cases"]["greedy_chars"] == 200
    assert report["int8"]["top1_agreement"] >= contract.INT8_MIN_TOP1_AGREEMENT
    assert 0 < report["int8"]["max_logits_diff_sequences"] < 0.5  # what tests/test_export.py holds ONNX int8 to
    assert "top1_agreement" in report["int8"]["model.int8.onnx"]

    onnx, litert = OnnxRuntime(tiny_export / "model.onnx"), LiteRTRuntime(converted[0] / "model.tflite")
    tokens = onnx.vocab.encode("ROMEO:\nThe lord of my heart, and thou shall not be")
    states = [onnx.zero_state(2), litert.zero_state(2)]
    for token in tokens:
        batch = np.array([token, tokens[0]], np.int32)
        (expected, states[0]), (got, states[1]) = onnx.step(batch, states[0]), litert.step(batch, states[1])
        np.testing.assert_allclose(got, expected, atol=contract.DEFAULT_ATOL, rtol=0)
    np.testing.assert_allclose(states[1], states[0], atol=contract.DEFAULT_ATOL, rtol=0)


def test_a_parity_failure_writes_nothing(tiny_export, tmp_path):
    """fp32 within 1e-12 is stricter than float arithmetic in another order: every failure is listed."""
    from charrnn_export.tflite_export import to_tflite

    out = tmp_path / "out"
    with pytest.raises(ParityError) as error:
        to_tflite(str(tiny_export), out, precisions=["fp32"], atol=1e-12)
    assert "model.tflite logits" in str(error.value) and "model.tflite state" in str(error.value)
    assert not out.exists()


# ---------------------------------------------------------------- the CLI and sample --runtime litert


def test_cli_then_sample_greedy_is_the_onnx_text(tiny_export, tmp_path):
    out = tmp_path / "litert"
    result = run_cli("to-tflite", "--model", tiny_export, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "model.tflite" in result.stdout and "model.int8.tflite" in result.stdout
    args = ("--greedy", "--length", 200, "--start", "ROMEO:")
    onnx_text = sample("--runtime", "onnx", "--model", tiny_export, *args)
    assert sample("--runtime", "litert", "--model", out, *args) == onnx_text
    int8_text = sample("--runtime", "litert", "--model", out / "model.int8.tflite", *args)
    assert int8_text.startswith("ROMEO:") and len(int8_text) == len(onnx_text)
    # Sampled (not greedy) with a seed: the same rule and random numbers as the onnx runtime.
    seeded = ("--length", 100, "--seed", 3, "--temperature", 0.8, "--start", "ROMEO:")
    assert sample("--runtime", "litert", "--model", out, *seeded) == sample("--model", tiny_export / "model.onnx",
                                                                            *seeded)


def test_an_export_without_saved_model_through_the_shipped_name(tiny_export, tmp_path):
    """The shipped artifacts/ hold model.onnx files only: --model fp32 rebuilds a SavedModel from model.onnx."""
    shipped = tmp_path / "artifacts"
    shipped.mkdir()
    for name in ("model.onnx", "model.int8.onnx", "vocab.json"):
        shutil.copy(tiny_export / name, shipped / name)
    out = tmp_path / "litert"
    result = run_cli("to-tflite", "--model", "int8", "--out", out, "--precision", "fp32",
                     env={ARTIFACTS_ENV: str(shipped)})
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "litert_report.json").read_text())
    assert report["converted_from"] == "model.onnx" and report["fp32"]["max_logits_diff"] <= contract.DEFAULT_ATOL
    assert not (out / "model.int8.tflite").exists()
    assert sorted(p.name for p in shipped.iterdir()) == ["model.int8.onnx", "model.onnx", "vocab.json"]


def test_force_replaces_exactly_what_it_wrote(converted, tmp_path):
    """An earlier folder needs --force; --precision fp32 then removes the earlier model.int8.tflite."""
    from charrnn_export.tflite_export import to_tflite

    out = tmp_path / "litert"
    shutil.copytree(converted[0], out)
    source = json.loads((converted[0] / "litert_report.json").read_text())["source"]
    with pytest.raises(ConfigError, match="--force"):
        to_tflite(source, out, precisions="fp32")
    to_tflite(source, out, precisions="fp32", force=True)
    assert sorted(p.name for p in out.iterdir()) == [".charrnn-export-litert.json", "litert_report.json",
                                                     "model.tflite", "vocab.json"]


# ---------------------------------------------------------------- bad input


def test_bad_input_is_one_line(tiny_export, tmp_path):
    result = run_cli("to-tflite", "--model", tmp_path / "missing", "--out", tmp_path / "out")
    assert_one_line_error(result, "--model", "no such export")
    (tmp_path / "empty").mkdir()
    result = run_cli("to-tflite", "--model", tmp_path / "empty", "--out", tmp_path / "out")
    assert_one_line_error(result, "neither saved_model/ nor model.onnx")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "diary.txt").write_text("mine")
    result = run_cli("to-tflite", "--model", tiny_export, "--out", foreign)
    assert_one_line_error(result, "did not write", "diary.txt")
    assert_one_line_error(run_cli("to-tflite", "--model", tiny_export, "--out", tmp_path / "o", "--atol", "0"),
                          "--atol")
    result = run_cli("to-tflite", "--model", tiny_export, "--out", tmp_path / "o", "--precision", "fp16")
    assert result.returncode == 2 and "fp16" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
    assert (foreign / "diary.txt").read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == ["diary.txt"]


def test_a_link_out_of_out_is_refused(converted, tmp_path):
    from charrnn_export.tflite_export import to_tflite

    out, elsewhere = tmp_path / "litert", tmp_path / "elsewhere.json"
    shutil.copytree(converted[0], out)
    elsewhere.write_text("the user's")
    (out / "vocab.json").unlink()
    (out / "vocab.json").symlink_to(elsewhere)
    with pytest.raises(LinkOutside):
        to_tflite(converted[1]["source"], out, force=True)
    assert elsewhere.read_text() == "the user's" and (out / "vocab.json").is_symlink()


def test_the_runtime_refuses_what_it_cannot_run(converted, tiny_export, tmp_path):
    from charrnn_export import Generator
    from charrnn_export.runtimes.litert import LiteRTRuntime, read_metadata

    with pytest.raises(ConfigError, match="CPU only"):
        Generator.load(str(converted[0]), runtime="litert", device="cuda")
    with pytest.raises(ModelError, match="not a LiteRT"):
        read_metadata(tiny_export / "model.onnx")
    other = tmp_path / "vocab.json"
    other.write_text(json.dumps(list("abc")))
    with pytest.raises(ModelError, match="logits"):
        LiteRTRuntime(converted[0] / "model.tflite", vocab_path=other)
    result = subprocess.run([sys.executable, "-m", "charrnn_export.sample", "--runtime", "litert", "--model",
                             tiny_export, "--length", "5"], cwd=REPO, capture_output=True, text=True,
                            env=cli_env(), timeout=300)
    assert_one_line_error(result, "model.tflite", "to-tflite")


# ---------------------------------------------------------------- every cell kind


@pytest.mark.parametrize("layers", [
    (("lstm", 12),), (("rnn", 12),), (("gru", 12, {"reset_after": False}),), (("lstm", 24), ("gru", 16), ("rnn", 8)),
], ids=["lstm", "rnn", "gru-reset-before", "lstm-gru-rnn"])
def test_every_cell_kind_converts_with_its_state_width(layers, tmp_path):
    """The conversion reads S from the signature: a step SavedModel of any stack (cells/tf_step.py's
    flat step, under the export's signature) converts, and LiteRT computes the numpy reference."""
    import tensorflow as tf

    from charrnn_export.cells import Architecture, LayerSpec
    from charrnn_export.cells.reference import reference_step
    from charrnn_export.cells.tf_step import flat_step, step_constants
    from charrnn_export.litert_step import write_litert_model
    from charrnn_export.runtimes.litert import LiteRTRuntime
    from charrnn_export.vocab import Vocab
    from test_cells import random_weights

    arch = Architecture(11, 8, tuple(LayerSpec(*layer) for layer in layers))
    weights = random_weights(arch, seed=len(layers))
    tensors = {name: tf.constant(array) for name, array in step_constants(weights).items()}
    step = flat_step(tf, arch, tensors)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name=contract.TOKEN),
                                  tf.TensorSpec([None, arch.state_size], tf.float32, name=contract.STATE)])
    def serve(token, state):
        logits, state_out = step(token, state)
        return {contract.LOGITS: logits, contract.STATE_OUT: state_out}

    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures={contract.SIGNATURE: serve})
    vocab = Vocab(tuple("abcdefghijk"))
    write_litert_model(tmp_path / "saved_model", tmp_path / "model.tflite", "fp32",
                       {contract.META_VOCAB: vocab.to_json()})
    runtime = LiteRTRuntime(tmp_path / "model.tflite")
    assert runtime.rnn_units == arch.state_size and runtime.vocab.chars == vocab.chars

    rng = np.random.default_rng(0)
    state = expected_state = np.zeros((3, arch.state_size), np.float32)
    for _ in range(6):
        tokens = rng.integers(0, 11, size=3, dtype=np.int32)
        logits, state = runtime.step(tokens, state)
        expected, expected_state = reference_step(weights, tokens, expected_state)
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(state, expected_state, atol=1e-4, rtol=0)
