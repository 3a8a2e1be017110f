"""The single-step model contract that the exporter, runtimes, tests and benchmarks all share.

One step for a batch of sequences:
    token     int32   [batch]         the current character id per sequence
    state     float32 [batch, units]  the GRU hidden state (zeros start a sequence)
 -> logits    float32 [batch, vocab]  unnormalised next-character scores
    state_out float32 [batch, units]  the hidden state after this character
"""

TOKEN = "token"
STATE = "state"
LOGITS = "logits"
STATE_OUT = "state_out"

TOKEN_DTYPE = "int32"
STATE_DTYPE = "float32"

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

RNN_TYPE = "gru"

# The TensorFlow text-generation tutorial's dataset.
TUTORIAL_URL = "https://storage.googleapis.com/download.tensorflow.org/data/shakespeare.txt"
TUTORIAL_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TUTORIAL_CHARS = 1_115_394
KNOWN_SHA256 = {TUTORIAL_URL: TUTORIAL_SHA256}
