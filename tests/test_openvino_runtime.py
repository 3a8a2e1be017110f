"""The openvino runtime (runtimes/openvino.py) against onnxruntime on the same model.onnx, and the
rule of --runtime auto (runtimes.resolve_runtime). Tests that run OpenVINO skip without it; the
rule's onnx fallback is tested with and without it."""

from __future__ import annotations

import logging
import sys
import threading

import numpy as np
import pytest

from charrnn_export import contract
from charrnn_export.errors import ArgumentValueError, ConfigError, ModelError, RuntimeUnavailable
from charrnn_export.runtimes import bf16_matrix_units, cpu_flags, is_quantized, load_runtime, resolve_runtime

from conftest import assert_one_line_error, run_cli

STEPS = 20
BATCH = 4


def fake_cpuinfo(tmp_path, *flags: str):
    """A /proc/cpuinfo of two cores with these flags beside the common ones."""
    path = tmp_path / f"cpuinfo-{'-'.join(flags) or 'plain'}"
    line = " ".join(("fpu", "sse2", "avx2", "avx512f", *flags))
    path.write_text("".join(f"processor\t: {i}\nmodel name\t: a CPU\nflags\t\t: {line}\n\n" for i in range(2)))
    return path


def fed_back(runtime, tokens: np.ndarray) -> tuple[list, list]:
    """The logits and states of `runtime` stepped through tokens (steps, batch), its state fed back."""
    state, all_logits, all_states = runtime.zero_state(tokens.shape[1]), [], []
    for row in tokens:
        logits, state = runtime.step(row, state)
        all_logits.append(logits)
        all_states.append(state)
    return all_logits, all_states


def random_tokens(vocab_size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, (STEPS, BATCH)).astype(np.int32)


@pytest.fixture(scope="module")
def openvino_f32(tiny_export):
    pytest.importorskip("openvino")
    from charrnn_export.runtimes.openvino import OpenVinoRuntime

    return OpenVinoRuntime(tiny_export, precision="f32")


@pytest.fixture(scope="module")
def onnx_runtime(tiny_export):
    from charrnn_export.runtimes.onnx import OnnxRuntime

    return OnnxRuntime(tiny_export)


# ---------------------------------------------------------------- the runtime


def test_f32_gives_onnxruntimes_logits_over_fed_back_steps(openvino_f32, onnx_runtime):
    from charrnn_export.runtimes.base import Runtime

    assert isinstance(openvino_f32, Runtime) and openvino_f32.name == "openvino"
    assert openvino_f32.precision == "f32"
    assert (openvino_f32.vocab, openvino_f32.config) == (onnx_runtime.vocab, onnx_runtime.config)
    assert (openvino_f32.rnn_units, openvino_f32.state_size, openvino_f32.vocab_size) == \
        (onnx_runtime.rnn_units, onnx_runtime.state_size, onnx_runtime.vocab_size)
    tokens = random_tokens(onnx_runtime.vocab_size)
    (ov_logits, ov_states), (ort_logits, ort_states) = fed_back(openvino_f32, tokens), fed_back(onnx_runtime, tokens)
    np.testing.assert_allclose(np.stack(ov_logits), np.stack(ort_logits), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.stack(ov_states), np.stack(ort_states), atol=1e-5, rtol=0)


def test_the_state_handed_back_is_not_overwritten_by_the_next_step(openvino_f32):
    tokens = np.arange(BATCH, dtype=np.int32)
    _, first = openvino_f32.step(tokens, openvino_f32.zero_state(BATCH))
    kept = first.copy()
    openvino_f32.step(tokens[::-1].copy(), first)
    np.testing.assert_array_equal(first, kept)


def test_default_precision_runs_reports_its_precision_and_says_bf16_in_one_line(tiny_export, onnx_runtime, caplog):
    pytest.importorskip("openvino")
    from charrnn_export.runtimes.openvino import OpenVinoRuntime

    with caplog.at_level(logging.WARNING, logger="charrnn_export"):
        runtime = OpenVinoRuntime(tiny_export, threads=1)
    assert runtime.precision == runtime.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    assert runtime.precision in ("bf16", "f16", "f32")
    warnings = [r.getMessage() for r in caplog.records if r.name == "charrnn_export"]
    if runtime.precision == "f32":
        assert warnings == []
    else:
        assert len(warnings) == 1 and runtime.precision in warnings[0] and "--runtime onnx" in warnings[0]
    tokens = random_tokens(runtime.vocab_size, seed=1)
    ov_logits, _ = fed_back(runtime, tokens)
    ort_logits, _ = fed_back(onnx_runtime, tokens)
    # bf16 keeps 8 bits of mantissa: close to onnxruntime's logits, not equal to them.
    spread = np.ptp(np.stack(ort_logits))
    assert np.abs(np.stack(ov_logits) - np.stack(ort_logits)).max() < 0.1 * spread


def test_generator_gives_the_onnx_runtimes_text(openvino_f32, onnx_runtime):
    from charrnn_export.generate import Generator

    start = contract.TUTORIAL_START
    on_openvino, on_onnx = Generator(openvino_f32), Generator(onnx_runtime)
    assert on_openvino.generate(start, 200, seed=3) == on_onnx.generate(start, 200, seed=3)
    starts = [start, start[:3], "\n"]
    assert on_openvino.generate_batch(starts, 80, temperature=0.8, top_k=10, seed=5) == \
        on_onnx.generate_batch(starts, 80, temperature=0.8, top_k=10, seed=5)


def test_two_threads_step_one_runtime_each_with_its_own_request(openvino_f32):
    """A Generator may step one runtime from several threads (concurrent calls): each gets the
    result it would alone (one OpenVINO infer request per thread)."""
    tokens = [random_tokens(openvino_f32.vocab_size, seed=s) for s in (2, 3)]
    alone = [fed_back(openvino_f32, t)[0][-1] for t in tokens]
    together = [None, None]

    def run(i):
        for _ in range(3):
            together[i] = fed_back(openvino_f32, tokens[i])[0][-1]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(2):
        np.testing.assert_array_equal(together[i], alone[i])


def test_an_int8_model_runs_and_picks_onnxruntimes_characters(tiny_export):
    pytest.importorskip("openvino")
    from charrnn_export.runtimes.onnx import OnnxRuntime
    from charrnn_export.runtimes.openvino import OpenVinoRuntime

    int8 = contract.model_file(tiny_export, "int8")
    runtime, reference = OpenVinoRuntime(int8, precision="f32"), OnnxRuntime(int8)
    tokens = random_tokens(reference.vocab_size, seed=4)
    ov_logits, _ = fed_back(runtime, tokens)
    ort_logits, _ = fed_back(reference, tokens)
    agree = np.mean(np.stack(ov_logits).argmax(-1) == np.stack(ort_logits).argmax(-1))
    assert agree >= 0.9, agree


def test_load_runtime_builds_it_and_refuses_the_gpu(tiny_export):
    pytest.importorskip("openvino")
    runtime = load_runtime(tiny_export, "openvino", threads=1)
    assert runtime.name == "openvino"
    with pytest.raises(ConfigError, match="CPU only"):
        load_runtime(tiny_export, "openvino", device="cuda")


def test_bad_models_and_arguments_are_the_projects_errors(tiny_export, tmp_path):
    pytest.importorskip("openvino")
    from charrnn_export.runtimes.openvino import OpenVinoRuntime

    with pytest.raises(ModelError, match="not found"):
        OpenVinoRuntime(tmp_path / "absent.onnx")
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"this is not a protobuf \x00\xff" * 20)
    with pytest.raises(ModelError, match="cannot load .* with OpenVINO"):
        OpenVinoRuntime(garbage)
    with pytest.raises(ModelError, match="not a charrnn-export step model"):
        OpenVinoRuntime(tiny_export / contract.DECODE_FILES[contract.MODEL_FILES["fp32"]])
    with pytest.raises(ArgumentValueError, match="precision must be one of default, f32"):
        OpenVinoRuntime(tiny_export, precision="bf16")


def test_without_openvino_it_says_how_to_install_it(tiny_export, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    from charrnn_export.runtimes.openvino import OpenVinoRuntime

    with pytest.raises(RuntimeUnavailable, match=r'pip install "charrnn-export\[openvino\]".*--runtime onnx'):
        OpenVinoRuntime(tiny_export)


def test_the_cli_refuses_openvino_on_the_gpu_in_one_line(tiny_export):
    pytest.importorskip("openvino")
    result = run_cli("sample", "--runtime", "openvino", "--device", "cuda", "--model", tiny_export, "--length", "5")
    assert_one_line_error(result, "openvino", "CPU only")


# ---------------------------------------------------------------- --runtime auto


def test_cpu_flags_are_read_from_a_cpuinfo_file(tmp_path):
    assert {"avx512f", "amx_bf16"} <= cpu_flags(fake_cpuinfo(tmp_path, "amx_bf16"))
    assert bf16_matrix_units(fake_cpuinfo(tmp_path, "amx_bf16"))
    assert bf16_matrix_units(fake_cpuinfo(tmp_path, "avx512_bf16"))
    assert not bf16_matrix_units(fake_cpuinfo(tmp_path))
    assert cpu_flags(tmp_path / "no-such-file") == set()  # not Linux: no flags, so no openvino by auto


def test_auto_is_litert_for_a_tflite_model(tmp_path, tiny_export):
    litert_dir = tmp_path / "litert"
    litert_dir.mkdir()
    (litert_dir / "model.tflite").write_bytes(b"")
    bf16 = fake_cpuinfo(tmp_path, "amx_bf16")
    assert resolve_runtime("auto", litert_dir / "model.int8.tflite", cpuinfo=bf16) == "litert"
    assert resolve_runtime("auto", litert_dir, cpuinfo=bf16) == "litert"
    assert resolve_runtime("auto", tiny_export, cpuinfo=bf16) != "litert"  # model.onnx, whatever else


def test_auto_keeps_an_int8_model_and_a_cpu_without_bf16_on_onnxruntime(tmp_path, tiny_export):
    int8, fp32 = contract.model_file(tiny_export, "int8"), contract.model_file(tiny_export)
    assert is_quantized(int8) and not is_quantized(fp32)
    bf16, plain = fake_cpuinfo(tmp_path, "amx_bf16", "avx512_bf16"), fake_cpuinfo(tmp_path)
    assert resolve_runtime("auto", int8, cpuinfo=bf16) == "onnx"
    assert resolve_runtime("auto", tiny_export, cpuinfo=plain) == "onnx"
    assert resolve_runtime("auto", tiny_export, device="cuda", cpuinfo=bf16) == "onnx"
    assert resolve_runtime("auto", tmp_path / "absent.onnx", cpuinfo=bf16) == "onnx"  # whose error names it
    for runtime in contract.RUNTIMES[:-1]:  # a runtime named is that runtime
        assert resolve_runtime(runtime, int8, cpuinfo=bf16) == runtime


def test_auto_is_onnx_without_openvino(tmp_path, tiny_export, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    assert resolve_runtime("auto", tiny_export, cpuinfo=fake_cpuinfo(tmp_path, "amx_bf16")) == "onnx"


def test_auto_is_openvino_for_an_fp32_model_on_bf16_matrix_units(tmp_path, tiny_export):
    pytest.importorskip("openvino")
    bf16 = fake_cpuinfo(tmp_path, "amx_bf16")
    assert resolve_runtime("auto", tiny_export, cpuinfo=bf16) == "openvino"
    assert resolve_runtime("auto", contract.model_file(tiny_export), cpuinfo=bf16) == "openvino"


def test_load_runtime_resolves_auto_on_this_machine(tiny_export):
    expected = resolve_runtime("auto", tiny_export)
    assert load_runtime(tiny_export, "auto", threads=1).name == expected
    assert load_runtime(contract.model_file(tiny_export, "int8"), "auto", threads=1).name == "onnx"


@pytest.mark.parametrize("precision", ["f32", "default"])
def test_a_batch_in_lanes_gives_each_rows_text_alone(tiny_export, onnx_runtime, precision):
    """The host sampler's lanes on OpenVINO (one-thread copies of the compiled model, each its
    own rows): row i of a 64-row batch is generate() with seed + i, for OpenVINO's f32 (then also
    onnxruntime's text) and its default precision (bf16 where the CPU has bf16 matrix units)."""
    pytest.importorskip("openvino")
    from charrnn_export.generate import Generator
    from charrnn_export.runtimes.openvino import OpenVinoRuntime

    runtime = OpenVinoRuntime(tiny_export / "model.onnx", threads=2, precision=precision)
    generator = Generator(runtime)
    starts = [contract.TUTORIAL_START, "\n", contract.TUTORIAL_START[:2]] * 22
    texts = generator.generate_batch(starts[:64], 60, temperature=0.9, seed=11)
    backend = generator.backend(64)
    assert backend._lanes[0] == (64, 2) and len(runtime._lanes) == 2  # the batch ran in two lanes
    assert all(lane.precision == runtime.precision for lane in runtime._lanes)
    for row in (0, 1, 40, 63):
        assert texts[row] == generator.generate(starts[row], 60, temperature=0.9, seed=11 + row), row
    if precision == "f32":
        assert texts == Generator(onnx_runtime).generate_batch(starts[:64], 60, temperature=0.9, seed=11)
