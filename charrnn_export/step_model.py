"""The exported step: the trained weights as a flat tf.function, saved, converted and made int8.

    build_step_module(weights, vocab, config, vocab_file) -> a tf.Module with the step signature
    save_saved_model(module, path); convert_to_onnx(module, state_size, opset) -> ModelProto
    name_initializers / set_metadata         the ONNX file names its weights and carries vocab + config
    quantize_int8(fp32_path, int8_path)      dynamic int8 MatMuls and int8 input-table rows
    check_int8_graph(int8_model)             every float MatMul became int8; what was counted

The step is built as a flat tf.function from the trained weights (cells/tf_step.py, any stack
of the registered kinds) rather than from the Keras layers: tf2onnx turns a Keras 3 RNN layer
into an ONNX Loop that runs several times slower, while the flat graph (a Gather of the first
layer's folded [vocab, gates * units] input table, the MatMuls of each layer, the gates, one
Dense MatMul) converts to plain ops that onnxruntime fuses, and that can be made int8: every
MatMul by quantize_dynamic (MatMulInteger), the input table by quantize_gather_tables (int8
rows). The state is one float32 [batch, state_size], packed layer by layer (the metadata's
config["architecture"] records each layer's offset and width).
TensorFlow, tf2onnx and onnx are imported inside the functions (tfsetup.py imports TensorFlow).
"""

from __future__ import annotations

import json
import logging
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
    constant-fold them and quantize_dynamic will not touch them; keep only the real inputs."""
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
    """Dynamic int8: int8 weights for every MatMul, each layer's recurrent ones, a later layer's
    input kernel and the Dense (MatMulInteger, the activations quantised per step), and for the
    first layer's input table (int8 rows, one scale per row)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs advice to pre-process through the root logger; it does not apply here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)
    model = onnx.load(str(int8_path))
    if quantize_gather_tables(model):
        onnx.save(model, str(int8_path))


def quantize_gather_tables(model) -> int:
    """Replace each Gather from a float matrix initializer by Gather from int8 rows times the row's scale.

    quantize_dynamic would store the table as uint8 with one scale for all of it (it treats a
    Gather's input as an activation); symmetric int8 with a scale per row is as small and
    keeps rows with small values precise. Returns how many tables were replaced.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes, replaced = [], []
    for node in graph.node:
        init = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (init is None or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2 or axis != 0
                or uses[init.name] != 1):
            nodes.append(node)
            continue
        table = numpy_helper.to_array(init).astype(np.float32)  # (rows, width)
        scale = np.abs(table).max(axis=1, keepdims=True) / 127.0  # (rows, 1)
        scale[scale == 0] = 1.0
        quantized = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
        name, out = init.name, node.output[0]
        graph.initializer.extend([numpy_helper.from_array(quantized, f"{name}_int8"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale")])
        nodes.extend([
            helper.make_node("Gather", [f"{name}_int8", node.input[1]], [f"{out}_int8"], name=f"{node.name}_int8"),
            helper.make_node("Gather", [f"{name}_scale", node.input[1]], [f"{out}_scale"], name=f"{node.name}_scale"),
            helper.make_node("Cast", [f"{out}_int8"], [f"{out}_cast"], to=onnx.TensorProto.FLOAT,
                             name=f"{node.name}_cast"),
            helper.make_node("Mul", [f"{out}_cast", f"{out}_scale"], [out], name=f"{node.name}_dequantize"),
        ])
        replaced.append(name)
    if replaced:
        del graph.node[:]
        graph.node.extend(nodes)
        keep = [init for init in graph.initializer if init.name not in replaced]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return len(replaced)


def check_int8_graph(int8_model) -> dict:
    """Every float MatMul of the fp32 step must have become an int8 one (MatMulInteger, or
    DynamicQuantizeMatMul once onnxruntime fuses it), and the input table int8 rows: a float
    matrix left over means quantize_dynamic skipped a layer. Returns the counts; raises
    ModelError naming what stayed float."""
    import onnx

    from .errors import ModelError

    ops = [node.op_type for node in int8_model.graph.node]
    float_matrices = [i.name for i in int8_model.graph.initializer  # (rows, 1) scales aside
                      if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and min(i.dims) > 1]
    counts = {"MatMul": ops.count("MatMul"), "MatMulInteger": ops.count("MatMulInteger"),
              "DynamicQuantizeMatMul": ops.count("DynamicQuantizeMatMul"), "float_matrices": float_matrices}
    if counts["MatMul"] or float_matrices:
        raise ModelError(f"the int8 model keeps {counts['MatMul']} float MatMul(s) and float weight matrices "
                         f"{float_matrices}: quantize_dynamic left part of the model in float32")
    return counts
