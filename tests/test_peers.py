"""The peer benchmark's conversions give the export's step, and its worker mode runs end to end.

Each peer (benchmarks/peer_models.py) is checked against onnxruntime's fp32 step on the same
tokens and states, on the tiny export: PyTorch fp32, OpenVINO f32 and LiteRT fp32 within 1e-5;
the int8 and bf16 variants within a loose bound (they round the weights or the math). A peer whose
package is missing is skipped. LiteRT runs through ai_edge_litert, else TensorFlow's tf.lite, so
it runs wherever the tests' TensorFlow is. Nothing here times anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn_export.errors import ConfigError, ModelError
from charrnn_export.runtimes.base import Runtime
from charrnn_export.runtimes.onnx import OnnxRuntime

REPO = Path(__file__).resolve().parent.parent
EXACT = 1e-5  # fp32 against fp32: the same arithmetic in another order
LOOSE = 0.25  # int8 weights or bf16 math on a tiny model's logits (they are of order 1)


@pytest.fixture(scope="module")
def reference(tiny_export):
    """Tokens and states along a real sequence, and onnxruntime fp32's logits and state for them."""
    runtime = OnnxRuntime(tiny_export / "model.onnx")
    tokens = runtime.vocab.encode("ROMEO: the lord of my\nJULIET:")
    state, states = runtime.zero_state(1), []
    for token in tokens:
        states.append(state[0])
        _, state = runtime.step(np.array([token], np.int32), state)
    states = np.array(states, np.float32)  # (steps, units): one batch of every state on the way
    logits, state_out = runtime.step(tokens.astype(np.int32), states)
    return tokens.astype(np.int32), states, logits, state_out


def assert_close(step, reference, atol: float) -> None:
    tokens, states, logits, state_out = reference
    got_logits, got_state = step(tokens, states)
    assert got_logits.dtype == np.float32 and got_logits.shape == logits.shape
    np.testing.assert_allclose(got_logits, logits, atol=atol, rtol=0)
    np.testing.assert_allclose(got_state, state_out, atol=atol, rtol=0)


def assert_loop_matches_step(peer, reference) -> None:
    """begin/advance (the timed loop, the peer's own state) computes what step computes."""
    tokens = reference[0][:5]
    peer.begin(1)
    state = np.zeros((1, peer.rnn_units), np.float32)
    for token in tokens:
        logits = peer.logits_numpy(peer.advance(np.array([token], np.int32)))
        expected, state = peer.step(np.array([token], np.int32), state)
        np.testing.assert_allclose(logits, expected, atol=1e-2, rtol=0)


def peer(name, tiny_export, litert_dir=None):
    from benchmarks.peer_models import PEERS, load_peer, missing_package

    reason = missing_package(PEERS[name][0])
    if reason:
        pytest.skip(reason)
    return load_peer(name, tiny_export, litert_dir)


# ---------------------------------------------------------------- PyTorch


def test_torch_fp32_is_the_exported_step(tiny_export, reference):
    torch_peer = peer("torch-fp32", tiny_export)
    assert_close(torch_peer.step, reference, EXACT)
    assert_loop_matches_step(torch_peer, reference)


@pytest.mark.parametrize("name", ["torch-int8", "torch-bf16"])
def test_torch_int8_and_bf16_are_near_it(tiny_export, reference, name):
    torch_peer = peer(name, tiny_export)
    assert_close(torch_peer.step, reference, LOOSE)
    assert_loop_matches_step(torch_peer, reference)


def test_the_gate_order_matters(tiny_export, reference):
    """The check can fail: the same peer with its r and z gates swapped back is far off."""
    torch_peer = peer("torch-fp32", tiny_export)
    import torch

    gru, units = torch_peer.module.gru, torch_peer.rnn_units
    with torch.no_grad():
        for weights in (gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_hh_l0):
            weights.copy_(torch.cat([weights[units:2 * units], weights[:units], weights[2 * units:]]))
    with pytest.raises(AssertionError):
        assert_close(torch_peer.step, reference, LOOSE)


# ---------------------------------------------------------------- OpenVINO


def test_openvino_f32_is_the_exported_step(tiny_export, reference):
    openvino_peer = peer("openvino-f32", tiny_export)
    assert "float32" in openvino_peer.precision or "f32" in openvino_peer.precision
    assert_close(openvino_peer.step, reference, EXACT)
    assert_loop_matches_step(openvino_peer, reference)


def test_openvino_default_hints_are_near_it(tiny_export, reference):
    openvino_peer = peer("openvino-default", tiny_export)  # bf16 on a CPU with AMX or AVX512-BF16
    assert_close(openvino_peer.step, reference, LOOSE)


# ---------------------------------------------------------------- LiteRT


@pytest.fixture(scope="module")
def litert_dir(tiny_export, tmp_path_factory):
    """model.tflite and model.int8.tflite converted from the export's SavedModel."""
    pytest.importorskip("tensorflow")
    from charrnn_export.litert_step import LITERT_FILES, write_litert_model

    out = tmp_path_factory.mktemp("litert")
    for precision, file in LITERT_FILES.items():
        write_litert_model(tiny_export / "saved_model", out / file, precision)
    (out / "vocab.json").write_bytes((tiny_export / "vocab.json").read_bytes())
    return out


def test_litert_fp32_is_the_exported_step(tiny_export, litert_dir, reference):
    from charrnn_export.runtimes.litert import LiteRTRuntime

    runtime = LiteRTRuntime(litert_dir / "model.tflite")
    assert isinstance(runtime, Runtime)
    assert (runtime.rnn_units, runtime.vocab_size) == (reference[1].shape[1], reference[2].shape[1])
    assert_close(runtime.step, reference, EXACT)


def test_litert_int8_is_near_it_and_smaller(tiny_export, litert_dir, reference):
    from charrnn_export.runtimes.litert import LiteRTRuntime

    runtime = LiteRTRuntime(litert_dir / "model.int8.tflite")
    assert_close(runtime.step, reference, LOOSE)
    assert (litert_dir / "model.int8.tflite").stat().st_size < (litert_dir / "model.tflite").stat().st_size


def test_litert_resizes_per_batch(litert_dir, reference):
    """Batch 1, then the whole batch, then batch 1 again: each call gives the rows' own results."""
    from charrnn_export.runtimes.litert import LiteRTRuntime

    runtime = LiteRTRuntime(litert_dir / "model.tflite")
    tokens, states, logits, _ = reference
    for rows in (slice(0, 1), slice(None), slice(2, 3), slice(1, 4)):
        got, _ = runtime.step(tokens[rows], states[rows])
        np.testing.assert_allclose(got, logits[rows], atol=EXACT, rtol=0)


def test_litert_from_a_model_onnx_without_saved_model(tiny_export, tmp_path, reference):
    """The shipped artifacts/ have no SavedModel: one rebuilt from model.onnx converts to the same step."""
    pytest.importorskip("tensorflow")
    from charrnn_export.litert_step import saved_model_from_onnx, write_litert_model
    from charrnn_export.runtimes.litert import LiteRTRuntime
    from charrnn_export.runtimes.savedmodel import SavedModelRuntime

    saved_model = saved_model_from_onnx(tiny_export / "model.onnx", tmp_path / "saved_model")
    assert_close(SavedModelRuntime(saved_model).step, reference, EXACT)
    write_litert_model(saved_model, tmp_path / "model.tflite")
    runtime = LiteRTRuntime(tmp_path / "model.tflite", vocab_path=tiny_export / "vocab.json")
    assert_close(runtime.step, reference, EXACT)


@pytest.mark.parametrize("spec", ["lstm2", "mixed", "gru_reset_before"])
def test_a_saved_model_from_model_onnx_of_any_architecture_steps_as_model_onnx(arch_export, tmp_path, spec):
    """saved_model_from_onnx rebuilds the step from the flat step's constants, whatever the layers."""
    pytest.importorskip("tensorflow")
    from charrnn_export.litert_step import saved_model_from_onnx
    from charrnn_export.runtimes.savedmodel import SavedModelRuntime

    export_dir = arch_export(spec)
    onnx_runtime = OnnxRuntime(export_dir / "model.onnx")
    rebuilt = SavedModelRuntime(saved_model_from_onnx(export_dir / "model.onnx", tmp_path / "saved_model"))
    assert rebuilt.rnn_units == onnx_runtime.rnn_units and rebuilt.config["architecture"] == \
        onnx_runtime.config["architecture"]
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, onnx_runtime.vocab_size, 5).astype(np.int32)
    states = rng.uniform(-1, 1, (5, onnx_runtime.rnn_units)).astype(np.float32)
    for got, expected in zip(rebuilt.step(tokens, states), onnx_runtime.step(tokens, states)):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_the_torch_peers_refuse_another_architecture_in_one_line(arch_export):
    from benchmarks.peer_models import step_arrays

    assert {"input_table", "layer0_recurrent_kernel"} <= set(step_arrays(arch_export("gru") / "model.onnx"))
    with pytest.raises(ModelError, match=r"lstm\(.*the PyTorch peers are nn.GRU"):
        step_arrays(arch_export("lstm2") / "model.onnx")


def test_litert_bad_inputs_raise_the_projects_errors(tiny_export, litert_dir, tmp_path):
    from charrnn_export.litert_step import convert_saved_model
    from charrnn_export.runtimes.litert import LiteRTRuntime

    with pytest.raises(ModelError, match="not found"):
        LiteRTRuntime(tmp_path / "missing.tflite")
    (tmp_path / "model.tflite").write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ModelError, match="cannot load"):
        LiteRTRuntime(tmp_path / "model.tflite", vocab_path=tiny_export / "vocab.json")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "model.tflite").write_bytes((litert_dir / "model.tflite").read_bytes())
    with pytest.raises(ModelError, match="vocab.json"):
        LiteRTRuntime(lonely)
    with pytest.raises(ConfigError, match="precision"):
        convert_saved_model(tiny_export / "saved_model", "fp16")
    with pytest.raises(ModelError, match="no SavedModel"):
        convert_saved_model(tmp_path)


def test_litert_peer_agrees_with_the_runtime(tiny_export, litert_dir, reference):
    litert_peer = peer("litert-fp32", tiny_export, litert_dir)
    assert_close(litert_peer.step, reference, EXACT)
    assert_loop_matches_step(litert_peer, reference)


# ---------------------------------------------------------------- the benchmark, end to end


def run_peers(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.peers", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_one_tiny_measurement_end_to_end(tiny_export, tmp_path):
    """Parent and workers: a project contestant, the bare loop, a LiteRT peer (converted from the
    export), one round, tiny lengths; JSON, markdown and the table's checks as written."""
    contestants = ["generator-fp32", "ort-fp32", "ort-int8", "litert-int8", "torch-fp32"]
    result = run_peers("--model", str(tiny_export), "--contestants", *contestants, "--repeats", "1",
                       "--batch-sizes", "1", "3", "--length", "12", "--check-chars", "30", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "peers-latest.json").read_text())
    rows = {row["key"]: row for row in results["rows"]}
    assert set(rows) == {"generator-fp32", "ort-fp32 + sampling", "ort-fp32 step alone", "ort-int8 + sampling",
                         "ort-int8 step alone", "litert-int8 + sampling", "litert-int8 step alone",
                         "torch-fp32 + sampling", "torch-fp32 step alone"}
    measured = [row for row in rows.values() if "chars_per_s" in row]
    for row in measured:
        assert set(row["chars_per_s"]) == {"1", "3"}
        assert all(figures["median"] > 0 and len(figures["runs"]) == 1 for figures in row["chars_per_s"].values())
    # The bare fp32 loop is the reference's own step and its greedy loop is the Generator's.
    check = rows["ort-fp32 + sampling"]["check"]
    assert check["max_logit_diff"] == 0 and check["greedy_agreement"] == 30 == check["greedy_chars"]
    assert rows["generator-fp32"]["check"]["greedy_agreement"] == 30
    assert 0 < rows["ort-int8 + sampling"]["check"]["max_logit_diff"] < LOOSE
    for row in rows.values():  # a peer whose package is missing is skipped with the reason, not failed
        assert "failed" not in row, row
        assert "chars_per_s" in row or "install" in row["skipped"]
    markdown = (tmp_path / "peers-latest.md").read_text()
    assert "| ort-fp32 + sampling |" in markdown and "= fp32 for 30" in markdown
    assert result.stdout.startswith("## Peers")


def test_bad_flags_are_one_line_errors(tmp_path):
    result = run_peers("--contestants", "tensorflow-js", "--out", str(tmp_path), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown contestant(s) tensorflow-js" in result.stderr
    result = run_peers("--model", str(tmp_path / "nowhere"), "--out", str(tmp_path), timeout=120)
    assert result.returncode == 2 and "not a directory" in result.stderr
