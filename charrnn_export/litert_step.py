"""The exported step as a LiteRT (TFLite) model: the same contract, fp32 or dynamic-range int8.

    convert_saved_model(saved_model_dir, precision="fp32"|"int8") -> the .tflite flatbuffer (bytes)
    with_metadata(flatbuffer, {name: text})                         the same model carrying named texts
    write_litert_model(saved_model_dir, path, precision, metadata=None, root=None)   written atomically
    saved_model_from_onnx(onnx_path, out_dir)                       a step SavedModel from a flat model.onnx

The source is the SavedModel that `to-onnx` writes (saved_model/, signature `serving_default`:
token int32 [batch], state float32 [batch, S] -> logits, state_out). The batch stays dynamic
(shape signature -1): the interpreter resizes its inputs per batch (runtimes/litert.py).
int8 is TFLiteConverter's dynamic-range quantization (Optimize.DEFAULT with no representative
data): int8 weights with a scale per output channel, the activations quantized per step inside
the kernels; inputs and outputs stay float32 and int32, so both files run the same loop.

An export that has no SavedModel (the shipped artifacts/ hold the ONNX files only) gets one from
its model.onnx: the flat step's constants (step_variants.flat_constants, by the names
cells.tf_step.step_constants gives them, any architecture) are exactly what the step's
tf.function reads, so step_model.step_module rebuilds the same function from them.
TensorFlow is imported inside the functions (tfsetup.py), onnx inside saved_model_from_onnx.

Metadata: a .tflite flatbuffer has a list of named byte buffers (Model.metadata) that the
interpreter ignores; the conversion puts the vocabulary and config there under the ONNX
metadata's names (contract.META_VOCAB, META_CONFIG, META_PRODUCER), so one .tflite file is as
self-describing as model.onnx (runtimes/litert.read_metadata reads them back).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import contract
from .errors import ConfigError, ModelError
from .files import atomic_write_bytes

PRECISIONS = ("fp32", "int8")
# File names beside model.onnx / model.int8.onnx in an export directory.
LITERT_FILES = {"fp32": "model.tflite", "int8": "model.int8.tflite"}


def convert_saved_model(saved_model_dir, precision: str = "fp32") -> bytes:
    """The step SavedModel's `serving_default` signature as a .tflite flatbuffer."""
    from .tfsetup import import_tensorflow

    if precision not in PRECISIONS:
        raise ConfigError(f"unknown LiteRT precision {precision!r}; choose {' or '.join(PRECISIONS)}")
    saved_model_dir = Path(saved_model_dir)
    if not (saved_model_dir / "saved_model.pb").is_file():
        raise ModelError(f"no SavedModel at {saved_model_dir}; pass an export's saved_model/ directory")
    tf = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[contract.SIGNATURE])
    if precision == "int8":
        # No representative dataset: dynamic-range quantization (int8 weights, float in and out).
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return converter.convert()
    except Exception as e:  # the converter raises ConverterError and others for graphs it cannot lower
        raise ModelError(f"cannot convert {saved_model_dir} to LiteRT ({str(e).splitlines()[0][:200]})") from None


def with_metadata(flatbuffer: bytes, entries: dict[str, str]) -> bytes:
    """`flatbuffer` with each (name, UTF-8 text) of `entries` as a Model.metadata buffer (a name
    already there is replaced); operators, tensors and weights are packed back unchanged."""
    import flatbuffers

    from .runtimes.litert import TFLITE_IDENTIFIER, schema_module

    schema = schema_module()
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    if any(buffer.offset for buffer in model.buffers or []):
        raise ModelError("the converted model keeps its weights outside the flatbuffer (over 2 GB); "
                         "it cannot carry its vocabulary: use vocab.json beside it")
    model.metadata = [m for m in (model.metadata or []) if m.name.decode("utf-8", "replace") not in entries]
    model.buffers = [AlignedBuffer(schema, b.data) for b in model.buffers or []]
    for name, text in entries.items():
        model.buffers.append(AlignedBuffer(schema, np.frombuffer(text.encode("utf-8"), dtype=np.uint8)))
        entry = schema.MetadataT()
        entry.name, entry.buffer = name.encode("utf-8"), len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


BUFFER_ALIGNMENT = 16  # the schema's `force_align: 16` on Buffer.data, which the Python object API drops


class AlignedBuffer:
    """A Buffer table packed with its bytes on a 16-byte boundary, as the converter writes them:
    weights read in place by the kernels stay aligned after the model is packed again."""

    def __init__(self, schema, data):
        self.schema = schema
        self.data = None if data is None else np.asarray(data, dtype=np.uint8).tobytes()

    def Pack(self, builder):  # noqa: N802 - the flatbuffers object API's name
        data = None
        if self.data:
            builder.StartVector(1, len(self.data), BUFFER_ALIGNMENT)
            builder.head -= len(self.data)  # what Builder.CreateNumpyVector does, with the alignment kept
            builder.Bytes[builder.head:builder.head + len(self.data)] = self.data
            builder.vectorNumElems = len(self.data)
            data = builder.EndVector()
        self.schema.BufferStart(builder)
        if data is not None:
            self.schema.BufferAddData(builder, data)
        return self.schema.BufferEnd(builder)


def write_litert_model(saved_model_dir, path, precision: str = "fp32", metadata: dict[str, str] | None = None,
                       root=None) -> Path:
    """The converted model (with `metadata`, see with_metadata) written atomically to `path`;
    with `root`, a link on the way out of that folder is refused (files.py)."""
    path = Path(path)
    data = convert_saved_model(saved_model_dir, precision)
    if metadata:
        data = with_metadata(data, metadata)
    atomic_write_bytes(path, data, root)
    return path


def saved_model_from_onnx(onnx_path, out_dir) -> Path:
    """A step SavedModel (the `to-onnx` signature, vocabulary and config) from a flat fp32 model.onnx."""
    import onnx

    from .runtimes.onnx import parse_metadata
    from .step_model import save_saved_model, step_module
    from .step_variants import flat_constants

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise ModelError(f"model file not found: {onnx_path}; pass an exported fp32 model.onnx")
    model = onnx.load(str(onnx_path))
    vocab, config = parse_metadata({p.key: p.value for p in model.metadata_props}, onnx_path)
    architecture, constants = flat_constants(model)
    module = step_module(architecture, constants, vocab, config)
    save_saved_model(module, out_dir)
    return out_dir
