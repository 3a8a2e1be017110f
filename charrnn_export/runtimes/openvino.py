"""The ONNX step through OpenVINO's CPU plugin: numpy and openvino only, never TensorFlow.

    OpenVinoRuntime(path, threads=None, precision="default"|"f32"): .step(tokens, state) -> (logits, state)
        .precision: the arithmetic the compiled model really uses ("bf16", "f32")

It reads the same model.onnx as the onnx runtime, through OpenVINO's ONNX frontend (only that
one: read_model would also try its TensorFlow frontend on a file that is not ONNX, and that one
prints to stderr). The frontend keeps the file's metadata_props in the model's rt_info
["framework"], so the vocabulary and config are read, and checked, by onnx.py's parse_metadata
and metadata_state_size, from the one parse.

precision "default" is OpenVINO's own hint: bf16 matrix products on a CPU with bf16 matrix
units (AMX, AVX512-BF16), f32 elsewhere. bf16 keeps 8 bits of mantissa, so a sampled text can
part from onnxruntime's after a while; one warning line says so. "f32" gives onnxruntime's
logits within float32 rounding, and so its text.

threads -> INFERENCE_NUM_THREADS, with CPU pinning off: OpenVINO pins a compiled model's threads
to cores by default, and two one-thread models in one process would then share one core.
infer releases the GIL, so such runtimes stepped from two Python threads run side by side:
lane_sessions(count) makes such one-thread copies for the host sampler's lanes (host_sampler.py).
"""

from __future__ import annotations

import copy
import logging
import threading

import numpy as np

from .. import checks, contract
from ..errors import ModelError, RuntimeUnavailable
from .onnx import checked_widths, parse_metadata

PRECISIONS = ("default", "f32")  # OpenVINO's hint (bf16 on bf16 matrix units), or float32 throughout
INSTALL_HINT = 'pip install "charrnn-export[openvino]", or use --runtime onnx (in Python runtime="onnx")'

log = logging.getLogger("charrnn_export")


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise RuntimeUnavailable(f"the openvino runtime needs OpenVINO: {INSTALL_HINT}") from None
    return openvino


def first_words(error: Exception) -> str:
    """OpenVINO's messages are a stack of 'Check ... failed at src/...' lines; the last says what."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:200]


def read_onnx(path):
    """The ov.Model of an ONNX file, through the ONNX frontend alone, with the project's errors."""
    from openvino.frontend import FrontEndManager

    if not path.is_file():
        raise ModelError(f"model file not found: {path}; pass --model with an exported .onnx file")
    frontend = FrontEndManager().load_by_framework("onnx")
    try:
        return frontend.convert(frontend.load(str(path)))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises its own GeneralFailure/OpConversionFailure types
        raise ModelError(f"cannot load {path} as an ONNX model with OpenVINO ({first_words(e)})") from None


def model_metadata(model) -> dict[str, str]:
    """The ONNX file's metadata_props, as the frontend kept them in rt_info["framework"]."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    return {key: model.get_rt_info(["framework", key]).astype(str) for key in info["framework"].keys()}


def shape_of(port) -> list:
    """A port's shape as ints, None for a dimension left free."""
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        return []
    return [dim.get_length() if dim.is_static else None for dim in shape]


class OpenVinoRuntime:
    name = "openvino"

    def __init__(self, path, threads: int | None = None, precision: str = "default"):
        precision = checks.check_choice(precision, "precision", PRECISIONS)
        threads = checks.check_threads(threads)
        ov = import_openvino()
        path = contract.step_model_path(path)  # an export directory means its model.onnx
        model = read_onnx(path)
        self.path = path
        self.check_ports(model, ov)
        self.vocab, self.config = parse_metadata(model_metadata(model), path)
        self.vocab_size = len(self.vocab)
        # rnn_units is the Runtime protocol's name for the packed state's width S (state_size).
        self.rnn_units = self.state_size = checked_widths(self.config, self.vocab_size,
                                                          shape_of(model.input(contract.STATE)),
                                                          shape_of(model.output(contract.LOGITS)), path)
        self.compiled = self.compile(ov, model, threads, precision)
        self.threads, self._ov, self._model, self._precision_choice = threads, ov, model, precision
        self._lanes: list = []
        self._lane_lock = threading.Lock()
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "bf16", "f32"
        names = [port.get_any_name() for port in self.compiled.outputs]
        self.logits_index, self.state_index = names.index(contract.LOGITS), names.index(contract.STATE_OUT)
        self.local = threading.local()  # one infer request per thread: a request runs one inference at a time
        self.check_one_step()
        if self.precision != "f32":
            log.warning("openvino computes in %s on this CPU (OpenVINO's default on its bf16 matrix units): the "
                        "text can part from onnxruntime's after a while; --runtime onnx (in Python runtime=\"onnx\", "
                        "or OpenVinoRuntime(precision=\"f32\")) keeps it", self.precision)

    def check_ports(self, model, ov) -> None:
        """The step contract's names and dtypes, as onnx.py checks them."""
        inputs = {port.get_any_name(): port for port in model.inputs}
        outputs = {port.get_any_name(): port for port in model.outputs}
        if (set(inputs), set(outputs)) != ({contract.TOKEN, contract.STATE}, {contract.LOGITS, contract.STATE_OUT}):
            raise ModelError(f"{self.path} is not a charrnn-export step model (inputs {sorted(inputs)}, outputs "
                             f"{sorted(outputs)}); export it again")
        for name, wanted in ((contract.TOKEN, ov.Type.i32), (contract.STATE, ov.Type.f32)):
            found = inputs[name].get_element_type()
            if found != wanted:  # a float token would be cast silently, or fail mid-generation
                raise ModelError(f"{self.path}: input `{name}` is {found.to_string()}, a charrnn-export step model "
                                 f"takes {wanted.to_string()}; export it again with `charrnn-export to-onnx`")

    def compile(self, ov, model, threads: int | None, precision: str):
        config = {"INFERENCE_PRECISION_HINT": "f32"} if precision == "f32" else {}
        if threads:
            config.update(INFERENCE_NUM_THREADS=threads, ENABLE_CPU_PINNING=False)
        try:
            return ov.Core().compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO's own types: an op its CPU plugin cannot run
            raise ModelError(f"{self.path}: OpenVINO's CPU plugin cannot compile it ({first_words(e)}); "
                             "use --runtime onnx") from None

    def check_one_step(self) -> None:
        """One step from the zero state: the widths must be what the compiled model really gives
        (an int8 model runs if OpenVINO's plugin takes it; this is where it would not)."""
        try:
            logits, state = self.step(np.zeros(1, dtype=np.int32), self.zero_state(1))
        except Exception as e:  # noqa: BLE001 - OpenVINO's own types: a shape the graph refuses
            raise ModelError(f"{self.path}: one OpenVINO step with a state of width {self.rnn_units} fails "
                             f"({first_words(e)}); use --runtime onnx") from None
        if logits.shape != (1, self.vocab_size) or state.shape != (1, self.rnn_units):
            raise ModelError(f"{self.path}: one step gives logits {logits.shape} and state {state.shape}, "
                             f"not (1, {self.vocab_size}) and (1, {self.rnn_units}) as its metadata says; "
                             "export it again")

    def lane_count(self) -> int:
        """How many threads may each step their own rows of a batch (lane_sessions): the threads
        given at load, else the CPUs this process may run on."""
        return self.threads or checks.available_cpus()

    def lane_sessions(self, count: int) -> list:
        """`count` copies of this runtime compiled for one thread each (pinning off), made on first
        use and kept, for host_sampler's lanes: the same arithmetic (precision), so the same logits."""
        with self._lane_lock:
            while len(self._lanes) < count:
                lane = copy.copy(self)
                lane.compiled = self.compile(self._ov, self._model, 1, self._precision_choice)
                lane.precision = lane.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
                lane.local = threading.local()
                lane._lanes = []
                self._lanes.append(lane)
            return self._lanes[:count]

    def request(self):
        request = self.local.request = self.compiled.create_infer_request()
        return request

    def zero_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.rnn_units), dtype=np.float32)

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The hot path. share_inputs: the arrays are read in place, not copied in. The outputs
        # are copied out (share_outputs off, the default), so the state handed back is never the
        # buffer the next infer writes into.
        if tokens.dtype != np.int32:
            tokens = tokens.astype(np.int32)
        try:
            request = self.local.request
        except AttributeError:  # this thread's first step
            request = self.request()
        outputs = request.infer({contract.TOKEN: tokens, contract.STATE: state}, share_inputs=True).to_tuple()
        return outputs[self.logits_index], outputs[self.state_index]
