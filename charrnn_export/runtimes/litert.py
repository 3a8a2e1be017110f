"""The LiteRT (TFLite) step (litert_step.py writes it) through the LiteRT interpreter.

    LiteRTRuntime(path, threads=None, vocab_path=None): .step(tokens, state) -> (logits, state)

The interpreter is ai_edge_litert's when that package is installed (it is small and needs no
TensorFlow), else TensorFlow's tf.lite.Interpreter: the same kernels (XNNPACK for float and
dynamic-range int8). The model's batch is dynamic: the inputs are resized, and the tensors
allocated again, only when the batch changes, so a steady loop pays for it once.

A .tflite file holds no vocabulary: it is read from vocab.json beside the file (an export
directory has one), or from vocab_path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import contract
from ..errors import ModelError, RuntimeUnavailable
from ..vocab import Vocab

DEFAULT_FILE = "model.tflite"


def interpreter_class():
    """ai_edge_litert's Interpreter, else TensorFlow's (imported here, never at package import)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from ..tfsetup import import_tensorflow

        return import_tensorflow().lite.Interpreter
    except RuntimeUnavailable:
        raise RuntimeUnavailable("the litert runtime needs the LiteRT interpreter: pip install ai-edge-litert "
                                 "(or TensorFlow, whose tf.lite has the same one)") from None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class LiteRTRuntime:
    name = "litert"

    def __init__(self, path, threads: int | None = None, vocab_path=None):
        path = Path(path)
        if path.is_dir():
            path = path / DEFAULT_FILE  # an export directory
        if not path.is_file():
            raise ModelError(f"LiteRT model not found: {path}; pass a .tflite file written by the LiteRT conversion")
        interpreter_type = interpreter_class()
        # The interpreter's own default is one thread; onnxruntime's is every core: give it the cores.
        try:
            self.interpreter = interpreter_type(model_path=str(path), num_threads=threads or usable_cores())
        except ValueError as e:  # the interpreter's error for a file that is not a TFLite model
            raise ModelError(f"cannot load {path} as a LiteRT model ({str(e).splitlines()[0][:200]})") from None
        self.path = path
        self.input_index, self.output_index, state_shape = self.read_signature(path)
        self.rnn_units = int(state_shape[1])
        vocab_file = Path(vocab_path) if vocab_path else path.parent / "vocab.json"
        if not vocab_file.is_file():
            raise ModelError(f"no vocabulary for {path}: put the export's vocab.json beside it, or pass vocab_path")
        self.vocab = Vocab.load(vocab_file)
        self.vocab_size = len(self.vocab)
        self.config = {"vocab_size": self.vocab_size, "rnn_units": self.rnn_units}
        self.batch = None  # the batch the tensors are allocated for

    def read_signature(self, path: Path) -> tuple[dict, dict, tuple]:
        """Tensor indices of the step contract's inputs and outputs, checked as onnx.py checks them."""
        signatures = self.interpreter.get_signature_list()
        if contract.SIGNATURE not in signatures:
            raise ModelError(f"{path} has no `{contract.SIGNATURE}` signature; convert the export's SavedModel again")
        runner = self.interpreter.get_signature_runner(contract.SIGNATURE)
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        if (set(inputs), set(outputs)) != ({contract.TOKEN, contract.STATE}, {contract.LOGITS, contract.STATE_OUT}):
            raise ModelError(f"{path} is not a charrnn-export step model (inputs {sorted(inputs)}, outputs "
                             f"{sorted(outputs)}); convert the export's SavedModel again")
        for name, wanted in ((contract.TOKEN, np.int32), (contract.STATE, np.float32)):
            if inputs[name]["dtype"] != wanted:
                raise ModelError(f"{path}: input `{name}` is {np.dtype(inputs[name]['dtype']).name}, a charrnn-export "
                                 f"step model takes {np.dtype(wanted).name}; convert it again")
        state_shape = tuple(inputs[contract.STATE]["shape_signature"])
        return ({name: d["index"] for name, d in inputs.items()}, {name: d["index"] for name, d in outputs.items()},
                state_shape)

    def zero_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.rnn_units), dtype=np.float32)

    def resize(self, batch: int) -> None:
        interpreter = self.interpreter
        interpreter.resize_tensor_input(self.input_index[contract.TOKEN], [batch])
        interpreter.resize_tensor_input(self.input_index[contract.STATE], [batch, self.rnn_units])
        interpreter.allocate_tensors()
        self.batch = batch

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = len(tokens)
        if batch != self.batch:
            self.resize(batch)
        interpreter = self.interpreter
        interpreter.set_tensor(self.input_index[contract.TOKEN], np.ascontiguousarray(tokens, dtype=np.int32))
        interpreter.set_tensor(self.input_index[contract.STATE], np.ascontiguousarray(state, dtype=np.float32))
        interpreter.invoke()
        # get_tensor copies, so the state handed back stays valid after the next invoke.
        return (interpreter.get_tensor(self.output_index[contract.LOGITS]),
                interpreter.get_tensor(self.output_index[contract.STATE_OUT]))
