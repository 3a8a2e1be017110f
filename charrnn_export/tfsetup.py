"""The one place TensorFlow is imported and set up.

    import_tensorflow() -> tf                 once, quietly: its C++ start-up lines (absl, oneDNN,
                                              the CUDA probe) would otherwise surround every
                                              one-line error message the CLI prints
    set_threads(tf, threads) -> bool          intra-op threads (inter-op 1); False when TensorFlow
                                              was already initialised and the first setting stands
    tensorflow_for(threads, device) -> (tf, "/CPU:0" | "/GPU:0")   import, threads, device: the runtimes
"""

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


def set_threads(tf, threads: int | None) -> bool:
    if not threads:
        return True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        return False  # already initialised in this process
    return True


def tensorflow_for(threads: int | None, device: str):
    """TensorFlow set up for a runtime: its threads, and the device name to place the work on."""
    tf = import_tensorflow()
    set_threads(tf, threads)  # a second runtime in one process keeps the first one's threads
    if device == "cuda":
        if not tf.config.list_physical_devices("GPU"):
            raise RuntimeUnavailable("--device cuda: TensorFlow sees no GPU here; use --device cpu")
        return tf, "/GPU:0"
    if device != "cpu":
        raise RuntimeUnavailable(f"unknown --device {device!r}; choose cpu or cuda")
    return tf, "/CPU:0"
