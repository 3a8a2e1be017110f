"""The exported step's weights in other runtimes: the peers that benchmarks/peers.py races.

    load_peer(name, model_dir, litert_dir, threads) -> a Peer
    Peer.step(tokens, state) -> (logits, state)   numpy in and out (the Runtime protocol's step): the checks
    Peer.begin(batch); Peer.advance(tokens) -> native logits; Peer.logits_numpy(native)   the timed loop

Every peer is built from an export's files, never from a checkpoint: bare onnxruntime runs
model.onnx / model.int8.onnx; OpenVINO reads model.onnx; LiteRT runs the .tflite files that
charrnn_export.litert_step converts from the export's SavedModel; PyTorch gets the flat step's
constants (step_variants.flat_constants: the embedding is already folded into the input table).
The ONNX, OpenVINO and LiteRT peers run any architecture; the PyTorch peers are nn.GRU, so they
take a single GRU with reset_after=True and refuse another architecture in one line.

PyTorch's nn.GRU is the same cell as Keras' GRU with reset_after=True, with its gates in the
order r, z, n where Keras has z, r, h; its input is the token's one-hot row and its input weights
the folded table, as in step_variants.native_gru_step (one-hot @ table picks the row exactly), and
its input bias zero (the table holds it). The timed loop keeps each peer's state in the peer's own
form (a torch tensor for PyTorch, bf16 for bf16) as a user of that library would; logits become
numpy only for host sampling.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from charrnn_export import contract
from charrnn_export.litert_step import LITERT_FILES

# peer -> (the package it needs, what it is)
PEERS = {
    "ort-fp32": ("onnxruntime", "model.onnx in a bare onnxruntime loop"),
    "ort-int8": ("onnxruntime", "model.int8.onnx in a bare onnxruntime loop"),
    "torch-fp32": ("torch", "PyTorch nn.GRU + nn.Linear, fp32"),
    "torch-int8": ("torch", "PyTorch nn.GRU + nn.Linear, torch.ao.quantization.quantize_dynamic qint8"),
    "torch-bf16": ("torch", "PyTorch nn.GRU + nn.Linear, bf16 weights, state and math"),
    "openvino-default": ("openvino", "OpenVINO on model.onnx, default hints"),
    "openvino-f32": ("openvino", "OpenVINO on model.onnx, INFERENCE_PRECISION_HINT f32"),
    "litert-fp32": ("litert", "LiteRT (TFLite) fp32"),
    "litert-int8": ("litert", "LiteRT (TFLite) dynamic-range int8"),
}
INSTALL = "pip install 'charrnn-export[peers]'"


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a half-removed package
        return False


def missing_package(package: str) -> str | None:
    """Why a peer's package cannot be used here, or None when it can (found, not imported)."""
    if package == "litert":
        if installed("ai_edge_litert") or installed("tensorflow"):
            return None
        return f"neither ai-edge-litert nor TensorFlow is installed ({INSTALL})"
    if not installed(package):
        return f"{package} is not installed ({INSTALL})"
    return None


def load_peer(name: str, model_dir: Path, litert_dir: Path | None = None, threads: int | None = None):
    model_dir = Path(model_dir)
    if name in ("ort-fp32", "ort-int8"):
        return OrtPeer(model_dir / ("model.onnx" if name == "ort-fp32" else "model.int8.onnx"), threads)
    if name.startswith("torch-"):
        return TorchPeer(step_arrays(model_dir / "model.onnx"), name.removeprefix("torch-"), threads)
    if name.startswith("openvino-"):
        return OpenVinoPeer(model_dir / "model.onnx", name.removeprefix("openvino-"), threads)
    if name.startswith("litert-"):
        return LiteRTPeer(Path(litert_dir) / LITERT_FILES[name.removeprefix("litert-")], model_dir, threads)
    raise KeyError(name)


def step_arrays(onnx_path: Path) -> dict[str, np.ndarray]:
    """The flat step's constants (cells.tf_step's names) of a single-GRU export's fp32 model.onnx."""
    import onnx

    from charrnn_export.cells import LayerSpec
    from charrnn_export.errors import ModelError
    from charrnn_export.step_variants import flat_constants

    architecture, constants = flat_constants(onnx.load(str(onnx_path)))
    if architecture.layers != (LayerSpec("gru", architecture.output_units),):
        raise ModelError(f"{onnx_path} is {architecture.describe()}: the PyTorch peers are nn.GRU, one GRU with "
                         "reset_after=True; leave the torch-* peers out for this model")
    return constants


class NumpyStatePeer:
    """A peer whose state is a numpy array: begin/advance is step with the state fed back."""

    def begin(self, batch: int) -> None:
        self.state = np.zeros((batch, self.rnn_units), np.float32)

    def advance(self, tokens: np.ndarray):
        logits, self.state = self.step(tokens, self.state)
        return logits

    def logits_numpy(self, logits) -> np.ndarray:
        return logits


class OrtPeer(NumpyStatePeer):
    def __init__(self, path: Path, threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.rnn_units = int(next(i.shape[1] for i in self.session.get_inputs() if i.name == contract.STATE))
        self.outputs = [contract.LOGITS, contract.STATE_OUT]

    def step(self, tokens, state):
        logits, state = self.session.run(self.outputs, {contract.TOKEN: tokens, contract.STATE: state})
        return logits, state


class OpenVinoPeer(NumpyStatePeer):
    def __init__(self, path: Path, hints: str, threads: int | None):
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32"} if hints == "f32" else {}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        model = core.read_model(str(path))
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "bf16", "f32"
        self.rnn_units = int(model.input(contract.STATE).get_partial_shape()[1].get_length())

    def step(self, tokens, state):
        # share_inputs: no copy in; outputs are copied (the default), so the state fed back is
        # never the buffer the next inference writes into.
        result = self.request.infer({contract.TOKEN: tokens, contract.STATE: state}, share_inputs=True)
        return result[contract.LOGITS], result[contract.STATE_OUT]


class LiteRTPeer(NumpyStatePeer):
    def __init__(self, path: Path, model_dir: Path, threads: int | None):
        from charrnn_export.runtimes.litert import LiteRTRuntime

        vocab = Path(model_dir) / "vocab.json"
        self.runtime = LiteRTRuntime(path, threads=threads, vocab_path=vocab if vocab.is_file() else None)
        self.rnn_units = self.runtime.rnn_units
        self.step = self.runtime.step


# ---------------------------------------------------------------- PyTorch


def keras_to_torch_gates(matrix: np.ndarray) -> np.ndarray:
    """(3u, ...) rows in Keras' gate order z, r, h -> PyTorch's r, z, n."""
    z, r, h = np.split(matrix, 3, axis=0)
    return np.ascontiguousarray(np.concatenate([r, z, h], axis=0))


def torch_gru_step(arrays: dict[str, np.ndarray]):
    """An nn.Module: (tokens int64 (batch,), state (batch, units)) -> (logits, new state)."""
    import torch
    from torch import nn

    table = arrays["input_table"]  # (vocab, 3u)
    vocab_size = table.shape[0]
    units = arrays["layer0_recurrent_kernel"].shape[0]

    class GRUStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.onehot = nn.Embedding.from_pretrained(torch.eye(vocab_size), freeze=True)  # row t: token t
            self.gru = nn.GRU(vocab_size, units)
            self.dense = nn.Linear(units, vocab_size)

        def forward(self, tokens, state):
            x = self.onehot(tokens).to(state.dtype)[None]  # (1, batch, vocab): one time step
            _, h = self.gru(x, state[None])  # h (1, batch, units)
            new_state = h[0]
            return self.dense(new_state), new_state

    def tensor(array):  # a writable float32 copy: onnx's arrays are read-only
        return torch.from_numpy(np.array(array, dtype=np.float32))

    module = GRUStep()
    with torch.no_grad():
        module.gru.weight_ih_l0.copy_(tensor(keras_to_torch_gates(table.T)))  # (3u, vocab)
        module.gru.weight_hh_l0.copy_(tensor(keras_to_torch_gates(arrays["layer0_recurrent_kernel"].T)))  # (3u, u)
        module.gru.bias_ih_l0.zero_()  # the input bias is folded into the table
        module.gru.bias_hh_l0.copy_(tensor(keras_to_torch_gates(arrays["layer0_recurrent_bias"])))
        module.dense.weight.copy_(tensor(arrays["dense_kernel"].T))  # (vocab, u)
        module.dense.bias.copy_(tensor(arrays["dense_bias"]))
    return module.eval()


class TorchPeer:
    def __init__(self, arrays: dict[str, np.ndarray], precision: str, threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        module = torch_gru_step(arrays)
        if precision == "int8":
            module = torch.ao.quantization.quantize_dynamic(module, {torch.nn.GRU, torch.nn.Linear},
                                                            dtype=torch.qint8)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.module = module.to(self.dtype) if precision == "bf16" else module
        self.rnn_units = arrays["layer0_recurrent_kernel"].shape[0]

    def step(self, tokens, state):
        torch = self.torch
        with torch.inference_mode():
            logits, new_state = self.module(torch.from_numpy(tokens.astype(np.int64)),
                                            torch.from_numpy(state).to(self.dtype))
            return logits.float().numpy(), new_state.float().numpy()

    def begin(self, batch: int) -> None:
        self.state = self.torch.zeros((batch, self.rnn_units), dtype=self.dtype)

    def advance(self, tokens: np.ndarray):
        with self.torch.inference_mode():
            logits, self.state = self.module(self.torch.from_numpy(tokens.astype(np.int64)), self.state)
        return logits

    def logits_numpy(self, logits) -> np.ndarray:
        return logits.float().numpy()
