"""Decode models (decode.py: the step plus sampling in the graph) run by onnxruntime for the engine.

    OnnxDecoder(path, capacity, device="cpu", threads=None)          one step per call, numpy in/out
    BlockDecoder(path, capacity, steps=8, device="cuda", ...)        `steps` steps per call, on the device

OnnxDecoder runs the decode model as it is written: on a CPU that is as fast as anything else
(onnxruntime's copies of numpy arrays cost little there). BlockDecoder is for a GPU, where
each host round trip costs more than the step itself: it builds decode.block_model in memory
(the `onnx` package: `pip install "charrnn-export[gpu]"`), so one call runs `steps` steps with
the sampled ids fed back on the device, and binds every input and output to fixed device
buffers (IO binding): the hidden state and the fed-back ids never leave the GPU, one small
float64 `control` array goes in and the ids come out. The state and ids live in two buffer sets
that the calls write alternately (A -> B, then B -> A). On CUDA each batch bucket (1, 2, 4, ...
capacity) and direction is captured once as a CUDA graph (onnxruntime's enable_cuda_graph with a
gpu_graph_id per capture) and replayed; where capture fails, the same bindings run without graphs
and one warning says so. numpy and onnxruntime only, besides `onnx` for BlockDecoder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import contract
from ..cells.architecture import state_size_of
from ..decode import CONTROL_COLUMNS, control_width, decode_feeds, forced_column, tokens_to_feed, uniform_column
from ..errors import ModelError
from ..sampling import Settings
from .onnx import load_session, parse_metadata, read_metadata

log = logging.getLogger("charrnn_export")
OUTPUTS = [contract.NEXT_TOKEN, contract.STATE_OUT, contract.LOGIT_CHECK]


# ---------------------------------------------------------------- the block graph's `control` input
# Its layout (CONTROL_COLUMNS, control_width, uniform_column, forced_column) is decode.py's, beside
# block_model that reads it; here the rows are filled.


def control_block(settings: Settings, reset: np.ndarray, uniforms: np.ndarray, forced: np.ndarray) -> np.ndarray:
    """The `control` rows for these settings, resets (rows,), uniforms and forced tokens (rows, steps)."""
    rows, steps = uniforms.shape
    control = np.empty((rows, control_width(steps)), np.float64)
    values = {**settings._asdict(), contract.RESET: reset}
    for column, name in enumerate(CONTROL_COLUMNS):
        control[:, column] = values[name]
    control[:, uniform_column(0):uniform_column(steps)] = uniforms
    control[:, forced_column(0, steps):forced_column(steps, steps)] = forced
    return control


def idle_control(rows: int, steps: int, reset: bool = False) -> np.ndarray:
    """`control` rows whose results nobody reads (bucket padding, warm-up): default settings
    (temperature 1, no cuts), token 0 fed."""
    return control_block(Settings.empty(rows), np.full(rows, reset), np.zeros((rows, steps)),
                         np.zeros((rows, steps), np.int32))


def is_decode_model(session) -> bool:
    return {i.name for i in session.get_inputs()} == set(contract.DECODE_INPUTS)


def find_decode_model(path) -> Path | None:
    """The decode model for a step model path or export directory, if one was written beside it."""
    path = contract.step_model_path(path)
    sibling = contract.DECODE_FILES.get(path.name)
    if sibling and (path.parent / sibling).is_file():
        return path.parent / sibling
    return None


class OnnxDecoder:
    """The decode model, one step per call, state in a numpy array of `capacity` rows."""

    steps = 1

    def __init__(self, path, capacity: int, device: str = "cpu", threads: int | None = None):
        self.path, self.capacity = Path(path), capacity
        self.session = load_session(self.path, threads, device)
        if not is_decode_model(self.session):
            raise ModelError(f"{path} is not a charrnn-export decode model; write one with `charrnn-export to-onnx`")
        self.vocab, self.config = read_metadata(self.session, path)
        self.state = np.zeros((capacity, state_size_of(self.config)), np.float32)
        self.name = f"onnx decode model ({self.path.name}, {device})"
        self._one = None  # decode_one's inputs, kept while the settings stay the same

    def decode(self, rows, forced, last, settings, uniforms, reset):
        self._sync_state()
        feeds = decode_feeds(tokens_to_feed(forced, last), self.state[:rows], settings, uniforms[:, 0], reset)
        ids, new_state, check = self.session.run(OUTPUTS, feeds)
        self.state[:rows] = new_state
        ids[np.isnan(check)] = -1
        return ids[:, None]

    def decode_one(self, token: int, settings, uniform: float, fresh: bool) -> int:
        """decode() for row 0 alone, generating: the batch-1 path. Its inputs are built when
        `fresh` (a new request in row 0) and then reused, the state fed back without a copy."""
        if fresh or self._one is None:
            self._sync_state()
            self._one = decode_feeds(np.zeros(1, np.int32), self.state[:1].copy(),
                                     Settings(*(a[:1].copy() for a in settings)), np.zeros(1))
        feeds = self._one
        feeds[contract.TOKEN][0] = token
        feeds[contract.UNIFORM][0] = uniform
        ids, feeds[contract.STATE], check = self.session.run(OUTPUTS, feeds)
        return -1 if check[0] != check[0] else int(ids[0])  # NaN != NaN: the logits were not finite

    def _sync_state(self) -> None:
        """Row 0's state back from decode_one's inputs, before the batch path reads it."""
        if self._one is not None:
            self.state[:1] = self._one[contract.STATE]
            self._one = None


def buckets(capacity: int) -> list[int]:
    sizes, b = [], 1
    while b < capacity:
        sizes.append(b)
        b *= 2
    return sizes + [capacity]


class BlockDecoder:
    """`steps` decode steps per call with IO binding; see the module docstring.

    path: a decode model file. BlockDecoder.for_gpu builds the graph that measured fastest on an
    H200 (benchmarks/gpu_engine.py) from a flat step model instead, in two variants sharing the
    device buffers: the full rule, and one without top-k/top-p (half the kernels) that a call
    uses when no busy row asks for either."""

    def __init__(self, path, capacity: int, steps: int = 8, device: str = "cuda", threads: int | None = None,
                 cuda_graph: bool = True, decode_model=None, plain_decode_model=None, label: str | None = None):
        import onnx

        from ..decode import block_model

        self.path, self.capacity, self.steps, self.device = Path(path), capacity, steps, device
        if decode_model is None:
            if not self.path.is_file():
                raise ModelError(f"model file not found: {path}; write a decode model with `charrnn-export to-onnx`")
            decode_model = onnx.load(str(self.path))
        self.variants = {"full": block_model(decode_model, steps).SerializeToString()}
        if plain_decode_model is not None:
            self.variants["plain"] = block_model(plain_decode_model, steps).SerializeToString()
        self.vocab, self.config = parse_metadata({p.key: p.value for p in decode_model.metadata_props}, self.path)
        self.state_size = state_size_of(self.config)
        self.graph_error = None
        graphs = cuda_graph and device == "cuda"
        try:
            self._open(threads, graphs)
        except Exception as e:  # noqa: BLE001 - onnxruntime's capture errors have no common type
            if not graphs:
                raise
            self.graph_error = str(e).splitlines()[0][:200]
            log.warning("CUDA graph capture failed (%s); running the same steps without CUDA graphs", self.graph_error)
            self._open(threads, False)
        self.name = f"onnx decode graph ({label or self.path.name}, {device}, {steps} steps per call" + \
                    (", CUDA graphs)" if graphs and not self.graph_error else ")")

    @classmethod
    def for_gpu(cls, step_path, capacity: int, steps: int = 16, precision: str = "fp16", device: str = "cuda",
                cuda_graph: bool = True) -> "BlockDecoder":
        """The native ONNX recurrent ops (cuDNN; one per layer) in fp16 or fp32, with sampling,
        from a flat fp32 step model (model.onnx) of any architecture: on an H200 the fastest graph
        (benchmarks/gpu_engine.py)."""
        import onnx

        from ..decode import decode_model_for
        from ..step_variants import float16_step, native_step

        step = native_step(onnx.load(str(step_path)))
        if precision == "fp16":
            step = float16_step(step)
        return cls(step_path, capacity, steps, device, cuda_graph=cuda_graph, decode_model=decode_model_for(step),
                   plain_decode_model=decode_model_for(step, cuts=False),
                   label=f"native ops {precision} from {Path(step_path).name}")

    def _open(self, threads, graphs: bool) -> None:
        sessions = {name: load_session(data, threads, self.device, cuda_graph=graphs)
                    for name, data in self.variants.items()}
        self.buffers = _Buffers(sessions, self.capacity, self.state_size, self.steps, self.device, graphs)
        self.buffers.warm_up()

    def decode(self, rows, forced, last, settings, uniforms, reset):
        control = control_block(settings, reset, uniforms, forced)
        cuts = bool(((settings.top_k > 0) & (settings.top_k < len(self.vocab))).any() or (settings.top_p < 1).any())
        return self.buffers.run(rows, control, "full" if cuts or "plain" not in self.variants else "plain")


class _Buffers:
    """Fixed device buffers per bucket; state and fed-back ids ping-ponged between two sets, which
    every variant's bindings share (a call may use either variant)."""

    def __init__(self, sessions: dict, capacity: int, state_size: int, steps: int, device: str, graphs: bool):
        import onnxruntime as ort

        from ..decode import CONTROL, LAST_TOKEN, TOKENS

        self.sessions, self.sizes, self.steps = sessions, buckets(capacity), steps
        on_device = lambda array: ort.OrtValue.ortvalue_from_numpy(array, device, 0)  # noqa: E731
        # Kept on self: the bindings hold raw addresses into these buffers, not references.
        self.state = state = [on_device(np.zeros((capacity, state_size), np.float32)) for _ in range(2)]  # A, B
        self.token = token = [on_device(np.zeros(capacity, np.int32)) for _ in range(2)]
        self.control, self.tokens, self.bindings, self.options = {}, {}, {}, {}
        self.current = 0  # which set holds the live state and ids
        for size in self.sizes:
            self.control[size] = on_device(np.zeros((size, control_width(steps)), np.float64))
            self.tokens[size] = on_device(np.zeros((size, steps), np.int32))
        for variant, session in sessions.items():
            graph_id = 0
            for size in self.sizes:
                for direction in (0, 1):
                    b = session.io_binding()
                    b.bind_ortvalue_input(CONTROL, self.control[size])
                    _bind_rows(b.bind_input, contract.STATE, state[direction], device, np.float32, [size, state_size])
                    _bind_rows(b.bind_input, contract.TOKEN, token[direction], device, np.int32, [size])
                    _bind_rows(b.bind_output, contract.STATE_OUT, state[1 - direction], device, np.float32,
                               [size, state_size])
                    _bind_rows(b.bind_output, LAST_TOKEN, token[1 - direction], device, np.int32, [size])
                    b.bind_ortvalue_output(TOKENS, self.tokens[size])
                    graph_id += 1
                    options = ort.RunOptions()
                    if graphs:
                        options.add_run_config_entry("gpu_graph_id", str(graph_id))
                    self.bindings[variant, size, direction] = b
                    self.options[variant, size, direction] = options

    def warm_up(self) -> None:
        """Run every variant and bucket in both directions a few times: onnxruntime captures a
        CUDA graph after its first runs, and a server should not pay for that on a request."""
        for variant in self.sessions:
            for size in self.sizes:
                control = idle_control(size, self.steps, reset=True)
                for _ in range(6):  # three runs per direction
                    self.run(size, control, variant)

    def run(self, rows: int, control: np.ndarray, variant: str = "full") -> np.ndarray:
        size = next(s for s in self.sizes if s >= rows)
        if rows < size:  # pad: rows past the busy ones compute unused results
            control = np.concatenate([control, idle_control(size - rows, self.steps)])
        self.control[size].update_inplace(control)
        key = (variant, size, self.current)
        self.sessions[variant].run_with_iobinding(self.bindings[key], self.options[key])
        self.current = 1 - self.current
        return self.tokens[size].numpy()[:rows]


def _bind_rows(bind, name, value, device, dtype, shape) -> None:
    """Bind the first shape[0] rows of a device buffer (a prefix shares the buffer's address)."""
    bind(name, device, 0, dtype, shape, value.data_ptr())
