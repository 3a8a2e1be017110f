"""int8 matrix products for the flat step: each row of a batch quantised on its own.

    quantize_matmuls(model) -> the number of MatMuls made int8, in place (an onnx.ModelProto)

Every MatMul whose right operand is a float matrix initializer (K, N) becomes

    QuantizeLinear(x, 1/127, 128) -> uint8      the activation, on a fixed scale
    MatMulIntegerToFloat(x_q, W_q, 1/127, scale[N], 128, 0, bias)    (onnxruntime's fused op)

with W_q symmetric int8 and one scale per output column (per channel), and a following Add of
a constant bias (N,) folded into the op.

Why a fixed activation scale rather than onnxruntime's quantize_dynamic: DynamicQuantizeLinear
takes one scale from the minimum and maximum of the whole batch, so a row's logits, and in
time its text, depend on which other rows share its batch; the host sampler could then not
split a batch, and generate_batch's row i would not be generate() with row i's seed. Every
MatMul of the step reads a layer's h (a GRU's or SimpleRNN's tanh-bounded state, an LSTM's
o * tanh(c)) or r * h, all in [-1, 1], so a fixed scale of 1/127 with zero point 128 covers
them exactly; the export's int8 parity check (parity.compare_int8) would show any layer that
went outside. MatMulIntegerToFloat is a com.microsoft op: onnxruntime (CPU, and onnxruntime-web's
WASM build) runs it; onnxruntime would not fuse the standard QuantizeLinear -> MatMulInteger ->
Cast -> Mul -> Add chain itself, because constant folding merges the two scales its pattern
looks for. Needs the `onnx` package (export time only).
"""

from __future__ import annotations

import numpy as np

MS_DOMAIN = "com.microsoft"
ACTIVATION_SCALE = np.float32(1.0 / 127.0)  # [-1, 1] -> [1, 255] around the zero point 128
ACTIVATION_ZERO = np.uint8(128)
WEIGHT_LIMIT = 127  # symmetric int8 weights: -127..127, zero point 0


def per_column_int8(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) float -> int8 (K, N) and float32 scales (N,): one symmetric scale per column."""
    scale = np.abs(matrix).max(axis=0) / WEIGHT_LIMIT
    scale[scale == 0] = 1.0  # an all-zero column stays zero at any scale
    quantized = np.clip(np.round(matrix / scale), -WEIGHT_LIMIT, WEIGHT_LIMIT).astype(np.int8)
    return quantized, scale.astype(np.float32)


def quantize_matmuls(model) -> int:
    """Make every MatMul by a float matrix initializer int8 (module docstring), in place."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    shared = {"int8_a_scale": ACTIVATION_SCALE, "int8_a_zero": ACTIVATION_ZERO, "int8_b_zero": np.int8(0)}
    new_inits, quantized_inputs, folded_adds, replaced = {}, {}, set(), set()
    nodes = []
    for node in graph.node:
        if id(node) in folded_adds:
            continue
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or weight.data_type != TensorProto.FLOAT or len(weight.dims) != 2:
            nodes.append(node)
            continue
        x, name = node.input[0], weight.name
        if x not in quantized_inputs:  # one QuantizeLinear per activation, however many MatMuls read it
            quantized_inputs[x] = f"{x}_uint8"
            nodes.append(helper.make_node("QuantizeLinear", [x, "int8_a_scale", "int8_a_zero"], [quantized_inputs[x]],
                                          name=f"{node.name}_quantize"))
        values, scale = per_column_int8(numpy_helper.to_array(weight).astype(np.float32))
        new_inits[f"{name}_int8"], new_inits[f"{name}_scale"] = values, scale
        inputs = [quantized_inputs[x], f"{name}_int8", "int8_a_scale", f"{name}_scale", "int8_a_zero", "int8_b_zero"]
        output = node.output[0]
        add = bias_add(consumers.get(output, []), output, initializers, values.shape[1])
        if add is not None:
            bias_name = next(i for i in add.input if i != output)
            inputs.append(bias_name)
            output = add.output[0]
            folded_adds.add(id(add))
        nodes.append(helper.make_node("MatMulIntegerToFloat", inputs, [output], name=f"{node.name}_int8",
                                      domain=MS_DOMAIN))
        replaced.add(name)
    if not replaced:
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    keep = [init for init in graph.initializer if init.name not in replaced or init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in {**shared, **new_inits}.items())
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(replaced)


def bias_add(consumers: list, output: str, initializers: dict, width: int):
    """The Add that is the MatMul output's only reader and adds a constant float (width,) bias."""
    from onnx import TensorProto

    if len(consumers) != 1 or consumers[0].op_type != "Add":
        return None
    add = consumers[0]
    other = [i for i in add.input if i != output]
    if len(other) != 1 or other[0] not in initializers:
        return None
    bias = initializers[other[0]]
    return add if bias.data_type == TensorProto.FLOAT and list(bias.dims) == [width] else None
