"""charrnn-export: train the TensorFlow char-RNN tutorial's GRU, export it as a single-step
SavedModel/ONNX model with explicit state, and sample it fast.

Importing the package is light (numpy only); TensorFlow is imported only by training, export
and the savedmodel/keras runtimes.
"""

from .contract import VERSION as __version__
__all__ = ["Generator", "SamplingConfig", "__version__"]


def __getattr__(name):
    if name == "Generator":
        from .generate import Generator

        return Generator
    if name == "SamplingConfig":
        from .sampling import SamplingConfig

        return SamplingConfig
    raise AttributeError(f"module 'charrnn_export' has no attribute {name!r}")
