"""Other graphs for the same step, built from an exported flat step model's weights, for GPUs.

    flat_constants(flat_model) -> (Architecture, {name: array})   the flat step's weights, by name
    native_step(flat_model)    -> the step with one native ONNX op per layer (GRU, LSTM, RNN: cuDNN
                                  on CUDA), for any architecture the model's metadata describes
    float16_step(model)        -> the same graph with fp16 weights and math, fp32 in and out

The flat cell (export.py) is fastest on a CPU; on onnxruntime's CUDA provider the native ops run
cuDNN's fused kernels and, with a CUDA graph, beat it (benchmarks/gpu_engine.py measures both).
Both keep the step contract (token, state -> logits, state_out) and the metadata, so
decode.add_sampling and every runtime take them as they take the flat model.

The architecture comes from the model's metadata (config["architecture"]; an export older than
it is one GRU of rnn_units), and each layer's constants from the initializers the exporter named
after cells.tf_step.step_constants: "input_table" (the embedding folded into the first layer's
input projection), "layer{i}_<name>", "dense_kernel", "dense_bias". cells/onnx_step.py turns them
into the graph; this module knows no gate count. Needs the `onnx` package.
"""

from __future__ import annotations

import json

import numpy as np

from . import contract
from .cells import Architecture, LayerWeights
from .errors import ModelError

# An export written before the architecture was recorded names its single GRU's arrays without
# the layer prefix.
LEGACY_NAMES = {"layer0_recurrent_kernel": "recurrent_kernel", "layer0_recurrent_bias": "recurrent_bias"}


def model_config(model) -> dict:
    """The config an exported model carries in its metadata ({} when it has none)."""
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        config = json.loads(meta.get(contract.META_CONFIG, "{}"))
    except ValueError as e:
        raise ModelError(f"the step model's config metadata is not JSON ({e}); export it again") from None
    if not isinstance(config, dict):
        raise ModelError("the step model's config metadata is not an object; export it again")
    return config


def constant_names(architecture: Architecture) -> list[str]:
    """The names of the flat step's constants for this architecture, in step_constants' order.
    Each kind says which arrays its step reads (step_arrays over zero weights of its shapes)."""
    names, input_dim = ["input_table"], architecture.embedding_dim
    for i, spec in enumerate(architecture.layers):
        shapes = spec.cell.weight_shapes(spec, input_dim)
        zeros = LayerWeights(spec, *(np.zeros(shapes[n], np.float32) for n in ("kernel", "recurrent_kernel", "bias")))
        for name in spec.cell.step_arrays(spec, zeros):
            if i > 0 or name not in ("kernel", "input_bias"):  # layer 0's are folded into input_table
                names.append(f"layer{i}_{name}")
        input_dim = spec.units
    return names + ["dense_kernel", "dense_bias"]


def flat_constants(flat_model) -> tuple[Architecture, dict[str, np.ndarray]]:
    """The architecture (from the metadata) and the flat step's constants (by name) of an fp32
    flat step model from `to-onnx`; ModelError naming what is missing."""
    from onnx import numpy_helper

    architecture = Architecture.from_config(model_config(flat_model))
    found = {init.name: init for init in flat_model.graph.initializer}
    constants, missing = {}, []
    for name in constant_names(architecture):
        init = found.get(name) or found.get(LEGACY_NAMES.get(name, ""))
        if init is None:
            missing.append(name)
        else:
            constants[name] = numpy_helper.to_array(init)
    if missing:
        raise ModelError(f"not an fp32 flat step model of {architecture.describe()} from `to-onnx` "
                         f"(missing weights {', '.join(missing)}); pass the export's model.onnx")
    return architecture, constants


def native_step(flat_model):
    """The flat step model's weights in a graph of native ONNX recurrent ops, one per layer."""
    from .cells.onnx_step import native_step_model

    architecture, constants = flat_constants(flat_model)
    model = native_step_model(architecture, constants)
    _copy_metadata(flat_model, model, "native")
    return model


# The name the GPU benchmarks import (the graph was a single GRU op before there were others).
native_gru_step = native_step


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
    outputs = {contract.STATE_OUT: "state_out_fp16", contract.LOGITS: "logits_fp16"}
    for node in graph.node:
        node.input[:] = [{contract.STATE: "state_fp16", **outputs}.get(n, n) for n in node.input]
        node.output[:] = [outputs.get(n, n) for n in node.output]
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
