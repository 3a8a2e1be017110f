"""The single-step model contract that the exporter, runtimes, tests and benchmarks all share.

One step for a batch of sequences:
    token     int32   [batch]         the current character id per sequence
    state     float32 [batch, S]      every recurrent layer's state, packed layer by layer
                                      (zeros start a sequence; S and the layout: the metadata's
                                      config, cells.architecture.state_size_of)
 -> logits    float32 [batch, vocab]  unnormalised next-character scores
    state_out float32 [batch, S]      the state after this character
"""

from pathlib import Path

TOKEN = "token"
STATE = "state"
LOGITS = "logits"
STATE_OUT = "state_out"

# The runtimes that compute the step (runtimes/), and the devices they run on. "auto" is one of
# them for a given model and machine (runtimes.resolve_runtime: litert, openvino or onnx).
RUNTIMES = ("onnx", "savedmodel", "keras", "litert", "openvino", "auto")
DEVICES = ("cpu", "cuda")

# The package version, recorded in every export (charrnn_export.__version__ is this).
VERSION = "0.1.0"

# The SavedModel serving signature that exposes the step.
SIGNATURE = "serving_default"

# Keys of the ONNX model's metadata_props.
META_VOCAB = "vocab"
META_CONFIG = "config"
META_DATA_SHA256 = "data_sha256"
META_VAL_LOSS = "val_loss"
META_PRODUCER = "charrnn_export"

# Export parity tolerance (max abs difference of logits and state).
DEFAULT_ATOL = 1e-4

# The int8 quality gate of `to-tflite` (the figure tests/test_export.py holds model.int8.onnx to):
# the int8 step's most probable character is fp32's on at least this share of the positions
# stepped through (random sequences with the state carried, and a greedy run).
INT8_MIN_TOP1_AGREEMENT = 0.95

# The TensorFlow text-generation tutorial's dataset.
TUTORIAL_URL = "https://storage.googleapis.com/download.tensorflow.org/data/shakespeare.txt"
TUTORIAL_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TUTORIAL_CHARS = 1_115_394
KNOWN_SHA256 = {TUTORIAL_URL: TUTORIAL_SHA256}
TUTORIAL_START = "ROMEO: "  # the tutorial's start string: the default start of sample and bench

# The decode model: the step model plus the sampling rule (sampling.py) in the graph.
#   token, state as above; per row: temperature float32, top_k int64 (0 = off), top_p float32
#   (1 = off), greedy bool, uniform float64 in [0, 1) (from rng.py), reset bool (start the row
#   from a zero state: lets a fixed-size batch on a device take a new request without a copy)
#   -> next_token int32 [batch], state_out, logits (unmasked), logit_check float32 [batch]
#   (0 when every logit of the row is finite, NaN otherwise).
TEMPERATURE = "temperature"
TOP_K = "top_k"
TOP_P = "top_p"
GREEDY = "greedy"
UNIFORM = "uniform"
RESET = "reset"
NEXT_TOKEN = "next_token"
LOGIT_CHECK = "logit_check"
DECODE_INPUTS = (TOKEN, STATE, TEMPERATURE, TOP_K, TOP_P, GREEDY, UNIFORM, RESET)
DECODE_OUTPUTS = (NEXT_TOKEN, STATE_OUT, LOGITS, LOGIT_CHECK)
# File names in an export directory (and artifacts/): step models by precision, and their decode models.
MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
DECODE_FILES = {MODEL_FILES["fp32"]: "decode.onnx", MODEL_FILES["int8"]: "decode.int8.onnx"}


def model_file(folder, precision: str = "fp32") -> Path:
    """The step model file of an export directory (or artifacts/) for `precision` (fp32, int8)."""
    return Path(folder) / MODEL_FILES[precision]


def step_model_path(path) -> Path:
    """A model path as given: an export directory means its fp32 step model; a file is itself."""
    path = Path(path)
    return model_file(path) if path.is_dir() else path
