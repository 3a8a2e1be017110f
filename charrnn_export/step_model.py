"""The exported step: the trained weights as a flat tf.function, saved, converted and made int8.

    build_step_module(weights, vocab, config, vocab_file) -> a tf.Module with the step signature
    save_saved_model(module, path); convert_to_onnx(module, state_size, opset) -> ModelProto
    name_initializers / set_metadata         the ONNX file names its weights and carries vocab + config
    quantize_int8(fp32_path, int8_path)      int8 MatMuls, rows quantised alone (int8.py); the table float32
    check_int8_graph(int8_model)             every float MatMul became int8; what was counted

The step is built as a flat tf.function from the trained weights (cells/tf_step.py, any stack
of the registered kinds) rather than from the Keras layers: tf2onnx turns a Keras 3 RNN layer
into an ONNX Loop that runs several times slower, while the flat graph (a Gather of the first
layer's folded [vocab, gates * units] input table, the MatMuls of each layer, the gates, one
Dense MatMul) converts to plain ops that onnxruntime fuses, and that can be made int8: every
MatMul by int8.quantize_matmuls (MatMulIntegerToFloat), while the input table stays float32 (a Gather does
no arithmetic, so int8 rows would only add kernels to dequantize them). The state is one float32
[batch, state_size], packed layer by layer (the metadata's config["architecture"] records each
layer's offset and width).
TensorFlow, tf2onnx and onnx are imported inside the functions (tfsetup.py imports TensorFlow).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import contract
from .cells import ModelWeights
from .cells.tf_step import flat_step, step_constants
from .vocab import Vocab

DEFAULT_OPSET = 18  # the newest opset tf2onnx 1.17 converts to; onnxruntime >= 1.15 runs it
MIN_OPSET = 13  # the oldest opset tried here (its Split takes `split` as an input); older ones are untested


# ---------------------------------------------------------------- the step as a TensorFlow function


def step_arrays(weights: ModelWeights) -> dict[str, np.ndarray]:
    """The flat step's constants, named as the ONNX file names them (cells.tf_step.step_constants)."""
    return step_constants(weights)


def step_signature(state_size: int):
    import tensorflow as tf

    return [
        tf.TensorSpec([None], tf.int32, name=contract.TOKEN),
        tf.TensorSpec([None, state_size], tf.float32, name=contract.STATE),
    ]


def build_step_module(weights: ModelWeights, vocab: Vocab, config: dict, vocab_file: Path | None = None):
    """A tf.Module whose `step` is one step of the whole stack (cells.tf_step.flat_step).

    The vocabulary travels inside the SavedModel twice: as the `vocab_json` variable (readable
    with TensorFlow alone) and, given `vocab_file`, as the tracked asset assets/vocab.json.
    """
    return step_module(weights.architecture(), step_constants(weights), vocab, config, vocab_file)


def step_module(architecture, constants: dict[str, np.ndarray], vocab: Vocab, config: dict,
                vocab_file: Path | None = None):
    """build_step_module from the flat step's constants themselves (step_constants' names), as an
    exported model.onnx holds them (step_variants.flat_constants)."""
    import tensorflow as tf

    class CharRNNStep(tf.Module):
        def __init__(self):
            super().__init__(name="charrnn_step")
            self.constants = {name: tf.Variable(array, trainable=False, name=name) for name, array in constants.items()}
            self.vocab_json = tf.Variable(vocab.to_json(), trainable=False, name="vocab_json")
            self.config_json = tf.Variable(json.dumps(config), trainable=False, name="config_json")
            if vocab_file is not None:
                self.vocab_file = tf.saved_model.Asset(str(vocab_file))  # copied to assets/vocab.json
            self.flat = flat_step(tf, architecture, self.constants)

        @tf.function(input_signature=step_signature(architecture.state_size))
        def step(self, token, state):
            logits, new_state = self.flat(token, state)  # (batch, vocab), (batch, state_size)
            return {contract.LOGITS: logits, contract.STATE_OUT: new_state}

    return CharRNNStep()


def save_saved_model(module, path: Path) -> None:
    import tensorflow as tf

    tf.saved_model.save(module, str(path), signatures={contract.SIGNATURE: module.step})


def convert_to_onnx(module, state_size: int, opset: int):
    """tf2onnx conversion of the step function; returns an onnx.ModelProto."""
    import tf2onnx

    model_proto, _ = tf2onnx.convert.from_function(
        module.step, input_signature=step_signature(state_size), opset=opset
    )
    drop_initializer_inputs(model_proto)
    return model_proto


def drop_initializer_inputs(model_proto) -> None:
    """Weights listed as graph inputs could be overridden at run time, so onnxruntime will not
    constant-fold them and the int8 pass would not touch them; keep only the real inputs."""
    initializers = {init.name for init in model_proto.graph.initializer}
    keep = [i for i in model_proto.graph.input if i.name not in initializers]
    del model_proto.graph.input[:]
    model_proto.graph.input.extend(keep)


def set_metadata(model_proto, metadata: dict[str, str]) -> None:
    del model_proto.metadata_props[:]
    for key, value in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def name_initializers(model_proto, arrays: dict[str, np.ndarray]) -> None:
    """Give the weights the names of step_arrays ("layer0_recurrent_kernel", ...) instead of tf2onnx's
    "MatMul/ReadVariableOp:0": matched by value, so a wrong match is impossible."""
    from onnx import numpy_helper

    renames = {}
    for init in model_proto.graph.initializer:
        value = numpy_helper.to_array(init)
        for name, array in arrays.items():
            if name not in renames.values() and value.shape == array.shape and np.array_equal(value, array):
                renames[init.name] = name
                init.name = name
                break
    for node in model_proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]


def quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """int8 weights for every MatMul (each layer's recurrent ones, a later layer's input kernel and
    the Dense), one scale per output column, each row's activations on a fixed scale (int8.py:
    why a row's logits must not depend on the rest of its batch), written atomically.

    The first layer's input table stays float32, exactly the fp32 model's: it is read by a Gather,
    which does no arithmetic, so int8 rows would save nothing per step and cost three kernels
    (Gather of the row scales, Cast, Mul) to turn them back into floats, for a file smaller by
    only vocab * gates * units * 3 bytes."""
    import onnx

    from .files import atomic_write_bytes
    from .int8 import activation_ranges, quantize_matmuls, split_at_consumers

    model = onnx.load(str(fp32_path))
    ranges = activation_ranges(model)  # each activation's scale fitted to what the fp32 step reaches
    split_at_consumers(model)  # no Split copying a whole product: a product per piece
    quantize_matmuls(model, ranges)
    atomic_write_bytes(int8_path, model.SerializeToString())


def check_int8_graph(int8_model) -> dict:
    """Every float MatMul of the fp32 step must have become an int8 one (MatMulIntegerToFloat,
    int8.py): no MatMul op is left, and no float weight matrix is read by anything but a Gather
    (the first layer's input table, float32 on purpose, see quantize_int8). A float matrix read
    elsewhere means a layer was skipped.
    Returns the counts and the float tables; raises ModelError naming what stayed float."""
    import onnx

    from .errors import ModelError

    ops = [node.op_type for node in int8_model.graph.node]
    float_matrices = {i.name for i in int8_model.graph.initializer  # (rows, 1) scales aside
                      if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and min(i.dims) > 1}
    gathered = {node.input[0] for node in int8_model.graph.node if node.op_type == "Gather"}
    read_elsewhere = {name for node in int8_model.graph.node if node.op_type != "Gather"
                      for name in node.input if name in float_matrices}
    float_tables = sorted(float_matrices & gathered - read_elsewhere)
    left_float = sorted(float_matrices - set(float_tables))
    counts = {"MatMul": ops.count("MatMul"), "MatMulIntegerToFloat": ops.count("MatMulIntegerToFloat"),
              "float_tables": float_tables,
              "float_matrices": left_float}
    if counts["MatMul"] or left_float:
        raise ModelError(f"the int8 model keeps {counts['MatMul']} float MatMul(s) and float weight matrices "
                         f"{left_float}: the int8 pass left part of the model in float32")
    return counts
