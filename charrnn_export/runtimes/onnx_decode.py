"""A decode model (decode.py: the step plus sampling in the graph) run by onnxruntime for the engine.

    OnnxDecoder(path, capacity, device="cpu"|"cuda", threads=None, cuda_graph=True)
        .decode(rows, tokens, settings, uniforms, reset) -> (next ids (rows,), logit check (rows,))

The hidden state never leaves the decoder: on the CPU it is a numpy array of `capacity` rows; on
CUDA it lives in two device buffers that the steps write alternately (A -> B, then B -> A), and
only token ids, settings and random numbers go to the GPU and ids come back. On CUDA the step is
captured as a CUDA graph per batch bucket (1, 2, 4, ... capacity) and per buffer direction, then
replayed (onnxruntime's enable_cuda_graph with a gpu_graph_id per capture); where capture fails,
it runs the same bindings without graphs and logs one warning saying so. numpy and onnxruntime only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import contract
from ..errors import ModelError, RuntimeUnavailable
from .onnx import load_session, read_metadata

log = logging.getLogger("charrnn_export")
INPUTS = contract.DECODE_INPUTS
OUTPUTS = [contract.NEXT_TOKEN, contract.STATE_OUT, contract.LOGIT_CHECK]


def is_decode_model(session) -> bool:
    return {i.name for i in session.get_inputs()} == set(INPUTS)


def find_decode_model(path) -> Path | None:
    """The decode model for a step model path or export directory, if one was written beside it."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    sibling = contract.DECODE_FILES.get(path.name)
    if sibling and (path.parent / sibling).is_file():
        return path.parent / sibling
    return None


class OnnxDecoder:
    name = "onnx decode model"

    def __init__(self, path, capacity: int, device: str = "cpu", threads: int | None = None,
                 cuda_graph: bool = True, io_binding: bool | None = None):
        self.path, self.capacity, self.device = Path(path), capacity, device
        self.session = load_session(self.path, threads, device, cuda_graph=cuda_graph and device == "cuda")
        if not is_decode_model(self.session):
            raise ModelError(f"{path} is not a charrnn-export decode model; write one with `charrnn-export to-onnx`")
        self.vocab, self.config = read_metadata(self.session, path)
        self.rnn_units = int(self.config["rnn_units"])
        self.name = f"onnx decode model ({self.path.name}, {device})"
        self.graph_error = None
        # IO binding is what keeps the state on a GPU; on the CPU plain run() is as fast, and
        # io_binding=True there exists so that tests exercise the device path's bookkeeping.
        if io_binding or (io_binding is None and device == "cuda"):
            self._bound = self._bind_steps(path, threads, cuda_graph and device == "cuda")
        else:
            self._bound = None
            self.state = np.zeros((capacity, self.rnn_units), np.float32)

    def _bind_steps(self, path, threads, graphs: bool) -> "BoundSteps":
        """Bound steps, every bucket run (and so captured) now; without CUDA graphs if capture fails."""
        try:
            bound = BoundSteps(self.session, self.capacity, self.rnn_units, len(self.vocab), self.device, graphs)
            bound.warm_up()
            return bound
        except Exception as e:  # noqa: BLE001 - onnxruntime's capture errors have no common type
            if not graphs:
                raise
            self.graph_error = str(e).splitlines()[0][:200]
            log.warning("CUDA graph capture failed (%s); running the same steps without CUDA graphs", self.graph_error)
            self.session = load_session(self.path, threads, self.device, cuda_graph=False)
            bound = BoundSteps(self.session, self.capacity, self.rnn_units, len(self.vocab), self.device, False)
            bound.warm_up()
            return bound

    def decode(self, rows, tokens, settings, uniforms, reset):
        if self._bound is not None:
            return self._bound.run(rows, tokens, settings, uniforms, reset)
        feeds = {contract.TOKEN: tokens, contract.STATE: self.state[:rows], contract.TEMPERATURE: settings.temperature,
                 contract.TOP_K: settings.top_k, contract.TOP_P: settings.top_p, contract.GREEDY: settings.greedy,
                 contract.UNIFORM: uniforms, contract.RESET: reset}
        ids, new_state, check = self.session.run(OUTPUTS, feeds)
        self.state[:rows] = new_state
        return ids, check


def buckets(capacity: int) -> list[int]:
    sizes, b = [], 1
    while b < capacity:
        sizes.append(b)
        b *= 2
    return sizes + [capacity]


class BoundSteps:
    """IO-bound steps: fixed device buffers per bucket, state ping-ponged between A and B."""

    def __init__(self, session, capacity: int, units: int, vocab_size: int, device: str, cuda_graph: bool):
        import onnxruntime as ort

        self.session, self.sizes, self.device = session, buckets(capacity), device
        self.graphs = cuda_graph
        new = lambda shape, dtype: ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0)  # noqa: E731
        zeros = np.zeros((capacity, units), np.float32)
        self.state = [ort.OrtValue.ortvalue_from_numpy(zeros, device, 0) for _ in range(2)]  # A, B
        self.current = 0  # which of A/B holds the state
        self.small: dict[int, dict[str, object]] = {}
        self.bindings: dict[tuple[int, int], object] = {}
        dtypes = {contract.TOKEN: np.int32, contract.TEMPERATURE: np.float32, contract.TOP_K: np.int64,
                  contract.TOP_P: np.float32, contract.GREEDY: np.bool_, contract.UNIFORM: np.float64,
                  contract.RESET: np.bool_}
        for size in self.sizes:
            values = {name: ort.OrtValue.ortvalue_from_numpy(np.zeros(size, dtype), device, 0)
                      for name, dtype in dtypes.items()}
            values[contract.NEXT_TOKEN] = new([size], np.int32)
            values[contract.LOGIT_CHECK] = new([size], np.float32)
            values[contract.LOGITS] = new([size, vocab_size], np.float32)
            self.small[size] = values
            for direction in (0, 1):
                self.bindings[size, direction] = self._bind(size, direction, units, values)
        self.run_options = {}
        for index, key in enumerate(self.bindings):
            options = ort.RunOptions()
            if cuda_graph:
                options.add_run_config_entry("gpu_graph_id", str(index + 1))  # 0 would be the default graph
            self.run_options[key] = options

    def _bind(self, size, direction, units, values):
        binding = self.session.io_binding()
        for name in INPUTS:
            if name != contract.STATE:
                binding.bind_ortvalue_input(name, values[name])
        source, target = self.state[direction], self.state[1 - direction]
        binding.bind_input(contract.STATE, self.device, 0, np.float32, [size, units], source.data_ptr())
        binding.bind_output(contract.STATE_OUT, self.device, 0, np.float32, [size, units], target.data_ptr())
        for name in (contract.NEXT_TOKEN, contract.LOGITS, contract.LOGIT_CHECK):
            binding.bind_ortvalue_output(name, values[name])
        return binding

    def warm_up(self) -> None:
        """Run every bucket in both directions a few times: onnxruntime captures a CUDA graph
        after its first runs, and a server should not pay for that on a user's request."""
        from ..sampling import Settings

        for size in self.sizes:
            settings = Settings.empty(size)
            for _ in range(6):  # three runs per direction
                self.run(size, np.zeros(size, np.int32), settings, np.zeros(size), np.ones(size, bool))

    def run(self, rows, tokens, settings, uniforms, reset):
        size = next(s for s in self.sizes if s >= rows)
        values = self.small[size]
        for name, host in ((contract.TOKEN, tokens), (contract.TEMPERATURE, settings.temperature),
                           (contract.TOP_K, settings.top_k), (contract.TOP_P, settings.top_p),
                           (contract.GREEDY, settings.greedy), (contract.UNIFORM, uniforms),
                           (contract.RESET, reset)):
            values[name].update_inplace(_padded(host, size))
        key = (size, self.current)
        self.session.run_with_iobinding(self.bindings[key], self.run_options[key])
        self.current = 1 - self.current
        return values[contract.NEXT_TOKEN].numpy()[:rows], values[contract.LOGIT_CHECK].numpy()[:rows]


def _padded(host: np.ndarray, size: int) -> np.ndarray:
    """The host rows as a contiguous array of the bucket's size (rows past the busy ones: zeros)."""
    if len(host) == size and host.flags.c_contiguous:
        return host
    out = np.zeros(size, host.dtype)
    out[:len(host)] = host
    return out


def check_cuda_available():
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeUnavailable("device 'cuda' needs onnxruntime-gpu on a machine with an NVIDIA GPU; use device 'cpu'")
