"""Import TensorFlow once, quietly: its C++ start-up lines (absl, oneDNN, the CUDA probe) would
otherwise surround every one-line error message the CLI prints."""

from __future__ import annotations

import os
import sys
import tempfile

from .errors import RuntimeUnavailable


def import_tensorflow():
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA probe logs here, while stderr is captured
        except ImportError:
            raise RuntimeUnavailable(
                "TensorFlow is not installed: pip install 'charrnn-export[train]' (sampling with the onnx runtime "
                "needs only onnxruntime)"
            ) from None
        except BaseException:
            os.dup2(saved_stderr, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
    return tf
