"""The ONNX step through onnxruntime: numpy and onnxruntime only, never TensorFlow.

An exported model.onnx carries its vocabulary and config in metadata_props, so the file alone
is enough to sample from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import contract
from ..data import Vocab
from ..errors import ModelError, RuntimeUnavailable


def read_metadata(session, path) -> tuple[Vocab, dict]:
    meta = session.get_modelmeta().custom_metadata_map
    if contract.META_VOCAB not in meta:
        raise ModelError(f"{path} has no vocabulary in its metadata; export it with `charrnn-export to-onnx`")
    try:
        vocab = Vocab.from_json(meta[contract.META_VOCAB])
        config = json.loads(meta.get(contract.META_CONFIG, "{}"))
    except ValueError as e:
        raise ModelError(f"{path} has corrupt vocabulary/config metadata ({e}); export it again") from None
    return vocab, config


def session_options(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception:  # noqa: BLE001 - missing CUDA libraries surface below as no provider
                pass
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeUnavailable(
                "--device cuda: onnxruntime has no CUDA provider here (install onnxruntime-gpu on a machine "
                "with an NVIDIA GPU), or use --device cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise RuntimeUnavailable(f"unknown --device {device!r}; choose cpu or cuda")


class OnnxRuntime:
    name = "onnx"

    def __init__(self, path, threads: int | None = None, device: str = "cpu"):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}; pass --model with an exported .onnx file")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=providers_for(device))
        except RuntimeUnavailable:
            raise
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise ModelError(f"cannot load {path} as an ONNX model ({str(e).splitlines()[0][:200]})") from None
        names = {i.name for i in self.session.get_inputs()}, {o.name for o in self.session.get_outputs()}
        if names != ({contract.TOKEN, contract.STATE}, {contract.LOGITS, contract.STATE_OUT}):
            raise ModelError(f"{path} is not a charrnn-export step model (inputs/outputs {names}); export it again")
        self.path = path
        self.vocab, self.config = read_metadata(self.session, path)
        self.rnn_units = int(self.session.get_inputs()[[i.name for i in self.session.get_inputs()]
                                                      .index(contract.STATE)].shape[1])
        self.vocab_size = len(self.vocab)
        self.output_names = [contract.LOGITS, contract.STATE_OUT]

    def zero_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.rnn_units), dtype=np.float32)

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, new_state = self.session.run(
            self.output_names, {contract.TOKEN: tokens.astype(np.int32, copy=False), contract.STATE: state}
        )
        return logits, new_state

