"""TensorFlow set-up shared by the savedmodel and keras runtimes: threads and device."""

from __future__ import annotations

from ..errors import RuntimeUnavailable


def import_tensorflow(threads: int | None, device: str):
    from ..tfsetup import import_tensorflow as quiet_import

    tf = quiet_import()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # already initialised in this process; the first setting stands
    if device == "cuda":
        if not tf.config.list_physical_devices("GPU"):
            raise RuntimeUnavailable("--device cuda: TensorFlow sees no GPU here; use --device cpu")
        return tf, "/GPU:0"
    if device != "cpu":
        raise RuntimeUnavailable(f"unknown --device {device!r}; choose cpu or cuda")
    return tf, "/CPU:0"
