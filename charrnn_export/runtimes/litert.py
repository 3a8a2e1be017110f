"""The LiteRT (TFLite) step (litert_step.py writes it) through the LiteRT interpreter.

    LiteRTRuntime(path, threads=None, vocab_path=None): .step(tokens, state) -> (logits, state)
    read_metadata(path) -> {name: text}: the named buffers a .tflite file carries (vocab, config)

The interpreter is ai_edge_litert's when that package is installed (it is small and needs no
TensorFlow), else TensorFlow's tf.lite.Interpreter: the same kernels (XNNPACK for float and
dynamic-range int8). The model's batch is dynamic: the inputs are resized, and the tensors
allocated again, only when the batch changes, so a steady loop pays for it once.

The vocabulary: vocab_path when given; else the one `to-tflite` writes into the file's metadata
(contract.META_VOCAB, beside META_CONFIG: litert_step.with_metadata); else vocab.json beside the
file (a .tflite converted without metadata). The state's width S is the signature's
(state float32 [batch, S]), whatever the layers; the config, when the file carries one, is the
export's. Both are checked against the signature, as onnx.py checks its metadata.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import contract
from ..cells.architecture import state_size_of
from ..checks import available_cpus
from ..errors import ModelError, RuntimeUnavailable
from ..vocab import Vocab

DEFAULT_FILE = "model.tflite"
TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer's file identifier (bytes 4..8 of every .tflite file)


def schema_module():
    """The TFLite flatbuffer schema's generated Python: ai_edge_litert's, else TensorFlow's."""
    try:
        from ai_edge_litert import schema_py_generated

        return schema_py_generated
    except ImportError:
        pass
    try:
        from ..tfsetup import import_tensorflow

        import_tensorflow()  # quietly, before tensorflow.lite's modules load it
        from tensorflow.lite.python import schema_py_generated

        return schema_py_generated
    except (ImportError, RuntimeUnavailable):
        raise RuntimeUnavailable("reading a .tflite file needs ai-edge-litert (pip install ai-edge-litert) or "
                                 "TensorFlow") from None


def read_metadata(path) -> dict[str, str]:
    """The Model.metadata buffers of a .tflite file that hold UTF-8 text, by name (the weights are
    not read: the flatbuffer's accessors are lazy)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read {path} ({e.strerror or e})") from None
    if data[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(f"{path} is not a LiteRT (.tflite) model; pass a file written by `charrnn-export to-tflite`")
    schema = schema_module()
    found = {}
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            buffer = model.Buffers(entry.Buffer())
            if entry.Name() is None or buffer is None or buffer.DataLength() == 0:
                continue
            try:
                found[entry.Name().decode("utf-8")] = buffer.DataAsNumpy().tobytes().decode("utf-8")
            except UnicodeDecodeError:
                continue  # a binary entry of the converter's (CONVERSION_METADATA): not ours
    except (IndexError, ValueError, TypeError, AttributeError) as e:  # flatbuffers' errors on a damaged file
        raise ModelError(f"{path} is a damaged LiteRT model ({type(e).__name__}); convert it again") from None
    return found


def interpreter_class():
    """ai_edge_litert's Interpreter, else TensorFlow's (imported here, never at package import)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from ..tfsetup import import_tensorflow

        return quiet_tf_lite_interpreter(import_tensorflow())
    except RuntimeUnavailable:
        raise RuntimeUnavailable("the litert runtime needs the LiteRT interpreter: pip install ai-edge-litert "
                                 "(or TensorFlow, whose tf.lite has the same one)") from None


def quiet_tf_lite_interpreter(tf):
    """tf.lite.Interpreter without its deprecation warning: it is the fallback we chose when
    ai_edge_litert is not installed (the same kernels), and the warning would break `sample
    --quiet` and the one-line errors."""

    def make(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated", category=UserWarning)
            return tf.lite.Interpreter(*args, **kwargs)

    return make


@contextmanager
def native_stderr_silenced():
    """File descriptor 2 to /dev/null meanwhile: the interpreter's C++ code prints one INFO line
    ("Created TensorFlow Lite XNNPACK delegate for CPU") there at its first allocation, which
    would break `sample --quiet` and the one-line errors. Python's own sys.stderr is flushed first."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)



class LiteRTRuntime:
    name = "litert"

    def __init__(self, path, threads: int | None = None, vocab_path=None):
        path = Path(path)
        if path.is_dir():
            path = path / DEFAULT_FILE  # an export directory
        if not path.is_file():
            raise ModelError(f"LiteRT model not found: {path}; pass a .tflite file or a folder written by "
                             "`charrnn-export to-tflite`")
        interpreter_type = interpreter_class()
        # The interpreter's own default is one thread; onnxruntime's is every core: give it the cores.
        try:
            self.interpreter = interpreter_type(model_path=str(path), num_threads=threads or available_cpus())
        except ValueError as e:  # the interpreter's error for a file that is not a TFLite model
            raise ModelError(f"cannot load {path} as a LiteRT model ({str(e).splitlines()[0][:200]})") from None
        self.path = path
        self.input_index, self.output_index, state_shape, logits_shape = self.read_signature(path)
        self.rnn_units = int(state_shape[1])  # S, the packed state's width (the Runtime protocol's name)
        metadata = read_metadata(path)
        self.vocab = self.read_vocab(path, metadata, vocab_path)
        self.vocab_size = len(self.vocab)
        if logits_shape[-1] > 0 and logits_shape[-1] != self.vocab_size:
            raise ModelError(f"{path} has {logits_shape[-1]} logits but {self.vocab_size} characters in its "
                             "vocabulary; pass the vocab.json of the export it was converted from")
        self.config = self.read_config(path, metadata)
        self.batch = None  # the batch the tensors are allocated for

    @staticmethod
    def read_vocab(path: Path, metadata: dict, vocab_path) -> Vocab:
        if vocab_path is not None:
            return Vocab.load(vocab_path)
        if contract.META_VOCAB in metadata:
            try:
                return Vocab.from_json(metadata[contract.META_VOCAB])
            except ValueError as e:
                raise ModelError(f"{path} has a corrupt vocabulary in its metadata ({e}); convert it again") from None
        vocab_file = path.parent / "vocab.json"
        if not vocab_file.is_file():
            raise ModelError(f"no vocabulary for {path}: it carries none; put the export's vocab.json beside it, "
                             "or pass vocab_path")
        return Vocab.load(vocab_file)

    def read_config(self, path: Path, metadata: dict) -> dict:
        """The export's config from the metadata (vocab_size and the state width checked), else the
        two figures the signature gives."""
        config = {"vocab_size": self.vocab_size, "rnn_units": self.rnn_units}
        if contract.META_CONFIG not in metadata:
            return config
        try:
            stored = json.loads(metadata[contract.META_CONFIG])
        except ValueError as e:
            raise ModelError(f"{path} has a corrupt config in its metadata ({e}); convert it again") from None
        if not isinstance(stored, dict):
            raise ModelError(f"{path}: its metadata's config is not a JSON object; convert it again")
        state_size = None
        if "state_size" in stored or "rnn_units" in stored:
            state_size = state_size_of(stored, f"{path}: its metadata's config")
        if state_size is not None and state_size != self.rnn_units:
            raise ModelError(f"{path}: its config gives a state {state_size} wide, its signature {self.rnn_units}; "
                             "convert it again")
        return {**stored, "vocab_size": self.vocab_size}

    def read_signature(self, path: Path) -> tuple[dict, dict, tuple, tuple]:
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
        state_shape = tuple(int(n) for n in inputs[contract.STATE]["shape_signature"])
        if len(state_shape) != 2 or state_shape[1] <= 0:
            raise ModelError(f"{path}: input `{contract.STATE}` has shape {list(state_shape)}, a charrnn-export step "
                             "model takes [batch, S] with a fixed S; convert the export's SavedModel again")
        logits_shape = tuple(int(n) for n in outputs[contract.LOGITS]["shape_signature"])
        return ({name: d["index"] for name, d in inputs.items()}, {name: d["index"] for name, d in outputs.items()},
                state_shape, logits_shape)

    def zero_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.rnn_units), dtype=np.float32)

    def resize(self, batch: int) -> None:
        interpreter = self.interpreter
        interpreter.resize_tensor_input(self.input_index[contract.TOKEN], [batch])
        interpreter.resize_tensor_input(self.input_index[contract.STATE], [batch, self.rnn_units])
        if self.batch is None:
            with native_stderr_silenced():  # the first allocation applies the XNNPACK delegate, and says so
                interpreter.allocate_tensors()
        else:
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
