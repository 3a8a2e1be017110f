"""Other graphs for the same step, built from an exported flat step model's weights, for GPUs.

    native_gru_step(flat_model) -> a step model that uses the ONNX `GRU` op (cuDNN on CUDA)
    float16_step(model)         -> the same graph with fp16 weights and math, fp32 in and out

The flat cell (export.py) is fastest on a CPU; on onnxruntime's CUDA provider the native GRU op
runs cuDNN's fused kernel and, with a CUDA graph, beats it (benchmarks/gpu_engine.py measures
both). Both keep the step contract (token, state -> logits, state_out) and the metadata, so
decode.add_sampling and every runtime take them as they take the flat model.

The flat model stores a folded input table [vocab, 3*units] (embedding times input kernel plus
bias), not the embedding; the GRU op's input is therefore the token's one-hot row (a Gather from an identity matrix) and its input
weights W the table itself: one-hot @ table picks the row exactly (1 * x + 0 * ... is exact).
Keras' GRU (reset_after=True, gates z, r, h) is the ONNX GRU with linear_before_reset=1 and the
same gate order. Needs the `onnx` package.
"""

from __future__ import annotations

import numpy as np

from . import contract
from .errors import ModelError

WEIGHTS = ("input_table", "recurrent_kernel", "recurrent_bias", "dense_kernel", "dense_bias")


def flat_weights(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    found = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in WEIGHTS}
    missing = sorted(set(WEIGHTS) - set(found))
    if missing:
        raise ModelError(f"not an fp32 flat step model from `to-onnx` (missing weights {', '.join(missing)})")
    return found


def native_gru_step(flat_model):
    """The flat step model's weights in a graph built around the ONNX GRU op."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = flat_weights(flat_model)
    vocab_size, gates = w["input_table"].shape  # (vocab, 3 * units)
    units = gates // 3
    arrays = {
        "gru_W": w["input_table"].T[None].astype(np.float32),  # (1, 3u, vocab): one-hot in
        "gru_R": w["recurrent_kernel"].T[None].astype(np.float32),  # (1, 3u, u)
        # B = [Wb, Rb]: the input bias is already folded into the table, so Wb is zero.
        "gru_B": np.concatenate([np.zeros(gates, np.float32), w["recurrent_bias"]])[None].astype(np.float32),
        "dense_kernel": w["dense_kernel"], "dense_bias": w["dense_bias"],
        "identity": np.eye(vocab_size, dtype=np.float32),  # row t is token t's one-hot vector
        "axis0": np.array([0], np.int64),
    }
    nodes = [
        helper.make_node("Gather", ["identity", contract.TOKEN], ["onehot"]),  # Gather: every EP and dtype
        helper.make_node("Unsqueeze", ["onehot", "axis0"], ["x"]),  # (1, batch, vocab): one time step
        helper.make_node("Unsqueeze", [contract.STATE, "axis0"], ["h0"]),  # (1, batch, units)
        helper.make_node("GRU", ["x", "gru_W", "gru_R", "gru_B", "", "h0"], ["", "h1"], hidden_size=units,
                         linear_before_reset=1),
        helper.make_node("Squeeze", ["h1", "axis0"], [contract.STATE_OUT]),
        helper.make_node("MatMul", [contract.STATE_OUT, "dense_kernel"], ["dense"]),
        helper.make_node("Add", ["dense", "dense_bias"], [contract.LOGITS]),
    ]
    batch = "batch"
    graph = helper.make_graph(
        nodes, "charrnn_native_gru_step",
        [helper.make_tensor_value_info(contract.TOKEN, TensorProto.INT32, [batch]),
         helper.make_tensor_value_info(contract.STATE, TensorProto.FLOAT, [batch, units])],
        [helper.make_tensor_value_info(contract.LOGITS, TensorProto.FLOAT, [batch, vocab_size]),
         helper.make_tensor_value_info(contract.STATE_OUT, TensorProto.FLOAT, [batch, units])],
        [numpy_helper.from_array(np.ascontiguousarray(a), name) for name, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = flat_model.ir_version
    _copy_metadata(flat_model, model, "native-gru")
    onnx.checker.check_model(model)
    return model


def float16_step(model):
    """fp16 weights and arithmetic inside, fp32 `state`, `logits`, `state_out` outside."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in graph.node:
        for attr in node.attribute:  # Constant nodes and OneHot-style value attributes
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
    rename = {contract.STATE: "state_fp16"}
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [{contract.STATE_OUT: "state_out_fp16", contract.LOGITS: "logits_fp16"}.get(n, n)
                          for n in node.output]
        node.input[:] = [{contract.STATE_OUT: "state_out_fp16", contract.LOGITS: "logits_fp16"}.get(n, n)
                         for n in node.input]
    graph.node.insert(0, helper.make_node("Cast", [contract.STATE], ["state_fp16"], to=TensorProto.FLOAT16))
    graph.node.append(helper.make_node("Cast", ["state_out_fp16"], [contract.STATE_OUT], to=TensorProto.FLOAT))
    graph.node.append(helper.make_node("Cast", ["logits_fp16"], [contract.LOGITS], to=TensorProto.FLOAT))
    del graph.value_info[:]
    _copy_metadata(model, out, "fp16")
    onnx.checker.check_model(out)
    return out


def _copy_metadata(source, target, variant: str) -> None:
    kept = [(p.key, p.value) for p in source.metadata_props if p.key != "step_graph"]
    previous = {p.key: p.value for p in source.metadata_props}.get("step_graph")
    del target.metadata_props[:]
    for key, value in kept:
        target.metadata_props.add(key=key, value=value)
    target.metadata_props.add(key="step_graph", value=f"{previous}+{variant}" if previous else variant)
