"""The ONNX step through onnxruntime: numpy and onnxruntime only, never TensorFlow.

An exported model.onnx carries its vocabulary and config in metadata_props, so the file alone
is enough to sample from it. The state's width S comes from the graph's `state` input, checked
against the metadata's (cells.architecture.state_size_of: state_size, or rnn_units for an
export older than architectures), and proven by one step at load. OnnxRuntime.step is the
Runtime protocol's step; bound_step(capacity) is the same step with its buffers bound once
(BoundStep), which the decode engine's host sampler runs once per character.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from .. import contract
from ..checkpoints import json_type
from ..checks import available_cpus
from ..vocab import Vocab
from ..errors import ModelError, RuntimeUnavailable


def read_metadata(session, path) -> tuple[Vocab, dict]:
    return parse_metadata(session.get_modelmeta().custom_metadata_map, path)


def parse_metadata(meta: dict, path) -> tuple[Vocab, dict]:
    """The vocabulary and config an exported model carries in its metadata_props."""
    if contract.META_VOCAB not in meta:
        raise ModelError(f"{path} has no vocabulary in its metadata; export it with `charrnn-export to-onnx`")
    try:
        vocab = Vocab.from_json(meta[contract.META_VOCAB])
        config = json.loads(meta.get(contract.META_CONFIG, "{}"))
        if not isinstance(config, dict):
            raise ValueError(f"`{contract.META_CONFIG}` is a JSON {json_type(config)}, not an object")
        for name in ("rnn_units", "state_size"):
            units = config.get(name)
            if units is not None and (isinstance(units, bool) or not isinstance(units, int) or units <= 0):
                raise ValueError(f"`{contract.META_CONFIG}` gives {name} {units!r}, not a positive whole number")
    except ValueError as e:
        raise ModelError(f"{path} has corrupt vocabulary/config metadata ({e}); export it again") from None
    return vocab, config


def metadata_state_size(config: dict, path) -> int | None:
    """The state width the metadata gives (cells.architecture.state_size_of, checked against its
    architecture when it records one), or None when it gives none (a model written by hand)."""
    from ..cells.architecture import state_size_of

    if not any(key in config for key in ("state_size", "rnn_units", "architecture")):
        return None
    try:
        return state_size_of(config, f"{path}: its metadata")
    except ModelError as e:
        raise ModelError(f"{e}; export it again") from None


def session_options(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def providers_for(device: str, cuda_graph: bool = False) -> list:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()  # the CUDA/cuDNN libraries already on the machine
            except Exception:  # noqa: BLE001 - missing CUDA libraries surface below as no provider
                pass
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeUnavailable(
                "device 'cuda': onnxruntime has no CUDA provider here (install onnxruntime-gpu on a machine "
                "with an NVIDIA GPU), or use device 'cpu'"
            )
        # TF32 off: its 10-bit mantissa would make the GPU's logits differ from the CPU's.
        options = {"use_tf32": "0"}
        if cuda_graph:
            options["enable_cuda_graph"] = "1"
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    raise RuntimeUnavailable(f"unknown device {device!r}; choose cpu or cuda")


def load_session(path: Path | bytes, threads: int | None, device: str, cuda_graph: bool = False):
    """An onnxruntime session for a model file (or a model's bytes), with the project's errors."""
    import onnxruntime as ort

    if not isinstance(path, bytes) and not path.is_file():
        raise ModelError(f"model file not found: {path}; pass --model with an exported .onnx file")
    source = path if isinstance(path, bytes) else str(path)
    try:
        return ort.InferenceSession(source, session_options(threads), providers=providers_for(device, cuda_graph))
    except RuntimeUnavailable:
        raise
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        what = "the model" if isinstance(path, bytes) else path
        raise ModelError(f"cannot load {what} as an ONNX model ({str(e).splitlines()[0][:200]})") from None


class OnnxRuntime:
    name = "onnx"

    def __init__(self, path, threads: int | None = None, device: str = "cpu"):
        path = contract.step_model_path(path)  # an export directory means its model.onnx
        self.session = load_session(path, threads, device)
        self.threads, self.device = threads, device
        self._lane_sessions: list = []
        self._lane_lock = threading.Lock()
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if (set(inputs), set(outputs)) != ({contract.TOKEN, contract.STATE}, {contract.LOGITS, contract.STATE_OUT}):
            raise ModelError(f"{path} is not a charrnn-export step model (inputs {sorted(inputs)}, outputs "
                             f"{sorted(outputs)}); export it again")
        for name, wanted in ((contract.TOKEN, "tensor(int32)"), (contract.STATE, "tensor(float)")):
            if inputs[name].type != wanted:  # a float token would be cast silently, or fail mid-generation
                raise ModelError(f"{path}: input `{name}` is {inputs[name].type}, a charrnn-export step model takes "
                                 f"{wanted}; export it again with `charrnn-export to-onnx`")
        self.path = path
        self.vocab, self.config = read_metadata(self.session, path)
        self.vocab_size = len(self.vocab)
        state_shape = inputs[contract.STATE].shape
        self.state_width_from_metadata = not (len(state_shape) > 1 and isinstance(state_shape[1], int))
        # rnn_units is the Runtime protocol's name for the packed state's width S (state_size).
        self.rnn_units = self.state_size = checked_widths(self.config, self.vocab_size, state_shape,
                                                          outputs[contract.LOGITS].shape, path)
        self.output_names = [contract.LOGITS, contract.STATE_OUT]
        self.check_one_step()

    def check_one_step(self) -> None:
        """One step from the zero state: the state width (from the graph, or from the metadata when
        the graph leaves it free) and the logits' width must be what the model really takes and
        gives, or every later step would fail mid-generation."""
        import onnxruntime as ort

        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # a refused shape is reported below, not also as onnxruntime's log line
        try:
            logits, state = self.session.run(self.output_names, {contract.TOKEN: np.zeros(1, dtype=np.int32),
                                                                 contract.STATE: self.zero_state(1)}, quiet)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own types: a shape the graph refuses
            raise ModelError(f"{self.path}: one step with a state of width {self.rnn_units} (from its "
                             f"{'metadata' if self.state_width_from_metadata else 'graph'}) fails "
                             f"({str(e).splitlines()[0][:160]}); export it again") from None
        if tuple(logits.shape) != (1, self.vocab_size) or tuple(state.shape) != (1, self.rnn_units):
            raise ModelError(f"{self.path}: one step gives logits {tuple(logits.shape)} and state {tuple(state.shape)}, "
                             f"not (1, {self.vocab_size}) and (1, {self.rnn_units}) as its metadata says; "
                             "export it again")

    def zero_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.rnn_units), dtype=np.float32)

    def bound_step(self, capacity: int) -> BoundStep:
        """The step with its buffers bound once, for a caller that runs it over and over (the
        decode engine's host sampler): the same numbers as step()."""
        return BoundStep(self.session, capacity, self.rnn_units, self.vocab_size)

    def lane_count(self) -> int:
        """How many threads may each step their own rows of a batch (lane_sessions): the threads
        given at load, else the CPUs this process may run on; 1 on a GPU."""
        if self.device != "cpu":
            return 1
        return self.threads or available_cpus()

    def lane_sessions(self, count: int) -> list:
        """`count` sessions of this model with one thread each, made on first use and kept: at
        large batches a thread stepping its own rows through its own session beats one session's
        threads sharing every kernel, which meet after each one (host_sampler.Lanes)."""
        with self._lane_lock:
            while len(self._lane_sessions) < count:
                self._lane_sessions.append(load_session(self.path, 1, "cpu"))
            return self._lane_sessions[:count]

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Plain session.run with numpy in and out, for any caller; bound_step() is the faster
        # way for one that steps over and over with the same buffers.
        if tokens.dtype != np.int32:
            tokens = tokens.astype(np.int32)
        logits, new_state = self.session.run(self.output_names, {contract.TOKEN: tokens, contract.STATE: state})
        return logits, new_state


class BoundStep:
    """The step for up to `capacity` rows with its buffers bound to the session once (onnxruntime's
    IO binding): the decode engine calls it once per character, and a plain session.run allocates
    and copies every output each time. Fill `tokens[:rows]`; run(rows) -> the logits of rows
    [0, rows), in a buffer the next run writes again; `state` (capacity, S) is then the new state
    (two buffers take turns: rows from `rows` on are left as they were in the other one, which is
    what free slots may hold). Binding again is needed only when `rows` changes.

    lane(session, start, stop): the same step for rows [start, stop) of these very buffers, run
    by another session, so that several threads can each step their own rows of one batch
    (host_sampler.Lanes); `turn` says which state buffer is current, and a lane starts from its
    parent's and leaves it where the parent must take it up (follow)."""

    def __init__(self, session, capacity: int, state_size: int, vocab_size: int):
        self._use(session, np.zeros(capacity, np.int32),
                  [np.zeros((capacity, state_size), np.float32) for _ in range(2)],
                  np.zeros((capacity, vocab_size), np.float32))

    def _use(self, session, tokens: np.ndarray, states: list[np.ndarray], logits: np.ndarray) -> None:
        self.session = session
        self.tokens, self._states, self._logits = tokens, states, logits
        self._bindings = [session.io_binding() for _ in range(2)]
        self._rows = [0, 0]  # the rows each binding was made for
        self.turn = 0  # which state buffer is the current one

    def lane(self, session, start: int, stop: int) -> "BoundStep":
        """The step of rows [start, stop) on `session`, over views of this step's buffers."""
        lane = object.__new__(BoundStep)
        lane._use(session, self.tokens[start:stop], [s[start:stop] for s in self._states],
                  self._logits[start:stop])
        lane.turn = self.turn
        return lane

    def follow(self, other: "BoundStep") -> None:
        """Take up the current state buffer where `other` (a lane of this step, or its parent) left it."""
        self.turn = other.turn

    @property
    def state(self) -> np.ndarray:
        return self._states[self.turn]

    def run(self, rows: int) -> np.ndarray:
        turn = self.turn
        binding = self._bindings[turn]
        if self._rows[turn] != rows:
            self._bind(binding, rows, self._states[turn], self._states[1 - turn])
            self._rows[turn] = rows
        self.session.run_with_iobinding(binding)
        self.turn = 1 - turn
        return self._logits[:rows]

    def _bind(self, binding, rows: int, state_in: np.ndarray, state_out: np.ndarray) -> None:
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input(contract.TOKEN, self.tokens[:rows])
        binding.bind_cpu_input(contract.STATE, state_in[:rows])
        outputs = ((contract.LOGITS, self._logits[:rows]), (contract.STATE_OUT, state_out[:rows]))
        for name, array in outputs:
            binding.bind_output(name, "cpu", 0, np.float32, array.shape, array.ctypes.data)


def checked_widths(config: dict, vocab_size: int, state_shape, logits_shape, path) -> int:
    """The state's width S from a step model's graph (or its metadata where the graph leaves it
    free), after checking that the graph and the metadata agree on it and on the logits' width."""
    from_metadata = metadata_state_size(config, path)
    state_size = fixed_dim(state_shape, 1, from_metadata, path, "state")
    if from_metadata is not None and from_metadata != state_size:
        name = "state_size" if "state_size" in config else "rnn_units"
        raise ModelError(f"{path}: its graph's state is {state_size} wide but its metadata says {name} "
                         f"{from_metadata}; export it again")
    logits_width = fixed_dim(logits_shape, 1, vocab_size, path, "logits")
    if logits_width != vocab_size:
        raise ModelError(f"{path} has {logits_width} logits but {vocab_size} characters in its "
                         "vocabulary metadata; export it again")
    return state_size


def fixed_dim(shape, axis: int, fallback, path, name: str) -> int:
    """A fixed dimension of an input/output shape; exporters may leave it symbolic."""
    dim = shape[axis] if len(shape) > axis else None
    if isinstance(dim, int) and dim > 0:
        return dim
    if fallback is None:
        raise ModelError(f"{path}: the width of `{name}` is not fixed and the metadata does not give it; "
                         "export it again")
    return int(fallback)
