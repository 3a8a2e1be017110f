"""Runtimes compute one step, `step(tokens, state) -> (logits, state)`, and nothing else.

    load_runtime(path, runtime="onnx"|"savedmodel"|"keras"|"litert", ...) -> a Runtime (base.py):
        .name, .vocab (Vocab), .config, .rnn_units, .vocab_size, .zero_state(batch), .step(tokens, state)

Sampling lives in charrnn_export.sampling and is the same for every runtime. Only the onnx
runtime is imported by default: it needs numpy and onnxruntime, never TensorFlow. litert (a
.tflite file from `to-tflite`) needs ai-edge-litert, or TensorFlow's tf.lite; CPU only.
"""

from __future__ import annotations

from ..contract import DEVICES, RUNTIMES
from ..errors import ConfigError
from .base import Runtime

__all__ = ["DEVICES", "RUNTIMES", "Runtime", "load_runtime"]


def load_runtime(path, runtime: str = "onnx", threads: int | None = None, device: str = "cpu",
                 vocab_path=None) -> Runtime:
    if runtime == "onnx":
        from .onnx import OnnxRuntime

        return OnnxRuntime(path, threads=threads, device=device)
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
