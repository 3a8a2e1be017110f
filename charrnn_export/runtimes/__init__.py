"""Runtimes compute one step, `step(tokens, state) -> (logits, state)`, and nothing else.

    load_runtime(path, runtime="onnx"|"openvino"|"savedmodel"|"keras"|"litert", ...) -> a Runtime (base.py):
        .name, .vocab (Vocab), .config, .rnn_units, .vocab_size, .zero_state(batch), .step(tokens, state)
    resolve_runtime(runtime, path, device="cpu") -> the runtime "auto" means for that model here
        (any other runtime is itself); load_runtime resolves "auto" with it too

Sampling lives in charrnn_export.sampling and is the same for every runtime. Only the onnx
runtime is imported by default: it needs numpy and onnxruntime, never TensorFlow. litert (a
.tflite file from `to-tflite`) needs ai-edge-litert, or TensorFlow's tf.lite; CPU only.
openvino (the same model.onnx through OpenVINO's CPU plugin) needs the openvino package; CPU only.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .. import contract
from ..contract import DEVICES, RUNTIMES
from ..errors import ConfigError
from .base import Runtime

__all__ = ["DEVICES", "RUNTIMES", "Runtime", "load_runtime", "resolve_runtime"]

CPUINFO = Path("/proc/cpuinfo")
BF16_MATRIX_FLAGS = {"amx_bf16", "avx512_bf16"}  # Linux's names for AMX-BF16 tiles and AVX512-BF16 dot products
# The ONNX ops of an integer-quantized model (int8.py writes MatMulIntegerToFloat, which holds the
# bytes MatMulInteger; the others are the static and QDQ forms): such a model stays on onnxruntime, whose int8 kernels it was
# measured with.
QUANTIZED_OPS = (b"MatMulInteger", b"ConvInteger", b"QLinearMatMul")


def load_runtime(path, runtime: str = "onnx", threads: int | None = None, device: str = "cpu",
                 vocab_path=None) -> Runtime:
    runtime = resolve_runtime(runtime, path, device)  # "auto" -> the runtime it means here; the others as named
    if runtime == "onnx":
        from .onnx import OnnxRuntime

        return OnnxRuntime(path, threads=threads, device=device)
    if runtime == "openvino":
        if device != "cpu":
            raise ConfigError(f"the openvino runtime runs on the CPU only, not {device!r}; use device cpu "
                              "(or the onnx runtime on the GPU)")
        from .openvino import OpenVinoRuntime

        return OpenVinoRuntime(path, threads=threads)
    if runtime == "savedmodel":
        from .savedmodel import SavedModelRuntime

        return SavedModelRuntime(path, threads=threads, device=device)
    if runtime == "keras":
        from .keras import KerasRuntime

        return KerasRuntime(path, threads=threads, device=device, vocab_path=vocab_path)
    if runtime == "litert":
        if device != "cpu":
            raise ConfigError(f"the litert runtime runs on the CPU only, not {device!r}; use device cpu "
                              "(or the onnx runtime on the GPU)")
        from .litert import LiteRTRuntime

        return LiteRTRuntime(path, threads=threads, vocab_path=vocab_path)
    raise ConfigError(f"unknown runtime {runtime!r}; valid runtimes: {', '.join(RUNTIMES)}")


def resolve_runtime(runtime: str, path, device: str = "cpu", cpuinfo=CPUINFO) -> str:
    """The runtime to load `path` with: `runtime` itself unless it is "auto". The one place auto
    is decided, for a model path as given (a file, or an export directory):

    - litert for a .tflite file, or a directory that holds model.tflite and no model.onnx;
    - openvino, on device cpu, for an ONNX step model that is not integer-quantized (no MatMulInteger: the file's
      bytes are searched for the op's name, which needs neither onnx nor TensorFlow) when the CPU
      has bf16 matrix units (the `amx_bf16` or `avx512_bf16` flag of Linux's /proc/cpuinfo) and
      the openvino package imports: OpenVINO's default bf16 matrix products are faster there, and
      say so in one warning line, as they can make the text part from onnxruntime's;
    - onnx otherwise (an int8 model, another CPU, no openvino, device cuda, or a path that is
      neither: the onnx runtime then names what is wrong with it).
    """
    if runtime != "auto":
        return runtime
    path = Path(path)
    onnx_file = contract.step_model_path(path)
    if path.suffix == ".tflite" or (path.is_dir() and not onnx_file.is_file() and (path / "model.tflite").is_file()):
        return "litert"
    if device == "cpu" and onnx_file.is_file() and bf16_matrix_units(cpuinfo) and not is_quantized(onnx_file) and openvino_imports():
        return "openvino"
    return "onnx"


def cpu_flags(cpuinfo=CPUINFO) -> set[str]:
    """The feature flags of a Linux /proc/cpuinfo-style file; none where there is no such file."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") and ":" in line
            for flag in line.split(":", 1)[1].split()}


def bf16_matrix_units(cpuinfo=CPUINFO) -> bool:
    return bool(cpu_flags(cpuinfo) & BF16_MATRIX_FLAGS)


def is_quantized(onnx_file: Path) -> bool:
    """Whether an ONNX file uses an integer-quantized op. An op type is stored as its plain name in
    the protobuf, so a byte search finds it without parsing the model (or importing onnx)."""
    try:
        data = onnx_file.read_bytes()
    except OSError:
        return False  # unreadable: the onnx runtime it falls to names the problem
    return any(op in data for op in QUANTIZED_OPS)


def openvino_imports() -> bool:
    try:
        importlib.import_module("openvino")
    except (ImportError, OSError):  # not installed, or installed without its shared libraries
        return False
    return True
