"""The whole model's step with each layer as its kind's native ONNX op (GRU, LSTM, RNN): the
device graph (cuDNN's fused kernels on CUDA), from the same constants as the flat step.

    native_step_model(architecture, constants, opset=18) -> onnx.ModelProto
        token int32 [batch], state float32 [batch, state_size] -> logits, state_out

The first layer's input is the token's one-hot row (a Gather from an identity matrix) and its
input weights the folded input_table (bias included, so the op's input bias is zero): one-hot @
table picks the row exactly. Later layers read the previous layer's h. The packed state is Split
into the layers' slices and their new slices Concatenated back. Needs the `onnx` package.
"""

from __future__ import annotations

import numpy as np

from .. import contract
from .architecture import Architecture
from .tf_step import layer_constants

NATIVE_OPSET = 18


def native_step_model(architecture: Architecture, constants: dict[str, np.ndarray], opset: int = NATIVE_OPSET):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    vocab_size = architecture.vocab_size
    initializers = {"identity": np.eye(vocab_size, dtype=np.float32), "axis0": np.array([0], np.int64)}
    nodes = [helper.make_node("Gather", ["identity", contract.TOKEN], ["onehot"])]  # (batch, vocab)
    slots = architecture.state_layout()
    if len(slots) > 1:
        initializers["state_split"] = np.array([slot.width for slot in slots], np.int64)
        slices = [f"layer{i}_state_in" for i in range(len(slots))]
        nodes.append(helper.make_node("Split", [contract.STATE, "state_split"], slices, axis=1))
    else:
        slices = [contract.STATE]
    x, new_slices = "onehot", []
    for i, (spec, state_slice) in enumerate(zip(architecture.layers, slices)):
        arrays = layer_constants(constants, i)
        if i == 0:
            table = constants["input_table"]
            input_kernel, input_bias = table, np.zeros(table.shape[1], np.float32)
        else:
            input_kernel, input_bias = arrays.pop("kernel"), arrays.pop("input_bias")
        cell = spec.cell.onnx_cell(spec, f"layer{i}_", x, state_slice, input_kernel, input_bias, arrays)
        nodes.extend(cell.nodes)
        initializers.update(cell.initializers)
        x = cell.h
        new_slices.append(cell.state_out)
    nodes.append(helper.make_node("Concat", new_slices, [contract.STATE_OUT], axis=1) if len(new_slices) > 1
                 else helper.make_node("Identity", new_slices, [contract.STATE_OUT]))
    initializers.update(dense_kernel=constants["dense_kernel"], dense_bias=constants["dense_bias"])
    nodes += [helper.make_node("MatMul", [x, "dense_kernel"], ["dense"]),
              helper.make_node("Add", ["dense", "dense_bias"], [contract.LOGITS])]
    state_size = architecture.state_size
    graph = helper.make_graph(
        nodes, "charrnn_native_step",
        [helper.make_tensor_value_info(contract.TOKEN, TensorProto.INT32, ["batch"]),
         helper.make_tensor_value_info(contract.STATE, TensorProto.FLOAT, ["batch", state_size])],
        [helper.make_tensor_value_info(contract.LOGITS, TensorProto.FLOAT, ["batch", vocab_size]),
         helper.make_tensor_value_info(contract.STATE_OUT, TensorProto.FLOAT, ["batch", state_size])],
        [numpy_helper.from_array(np.ascontiguousarray(a), name) for name, a in initializers.items()],
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    return model
