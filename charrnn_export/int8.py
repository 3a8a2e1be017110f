"""int8 matrix products for the flat step: each row of a batch quantised on its own.

    quantize_matmuls(model, ranges) -> the number of MatMuls made int8, in place (an onnx.ModelProto)
    activation_ranges(model) -> {activation: largest |value|}, stepping the fp32 model on random tokens
    split_at_consumers(model) -> the number of products and gathers cut up, in place (run first)

Every MatMul whose right operand is a float matrix initializer (K, N) becomes

    QuantizeLinear(x, s, 128) -> uint8      the activation, on a fixed scale s (at most 1/127)
    MatMulIntegerToFloat(x_q, W_q, s, scale[N], 128, 0, bias)    (onnxruntime's fused op)

with W_q symmetric int8 and one scale per output column (per channel), the activation's scale
fitted at export to the range it reaches (activation_ranges; at most [-1, 1]), and a following Add of
a constant bias (N,) folded into the op.

Before that, split_at_consumers cuts each matrix product (and each Gather from a table) whose
only reader is a Split along its columns into one product (one Gather) per piece, reading the
matching columns of the weights: the same numbers, without the Split's copy of the whole output
and with each piece's bias fused into its own product. (A GRU's recurrent product is split into
its z-r and h parts, an LSTM's into its four gates.) At large batches that copy costs as much as
a kernel of the gates, and the int8 model is the one whose step is fast enough for it to show.

Why a fixed activation scale rather than onnxruntime's quantize_dynamic: DynamicQuantizeLinear
takes one scale from the minimum and maximum of the whole batch, so a row's logits, and in
time its text, depend on which other rows share its batch, and generate_batch's row i would
not be generate() with row i's seed. Every MatMul of the step reads a layer's h (a GRU's or
SimpleRNN's tanh-bounded state, an LSTM's o * tanh(c)) or r * h, all in [-1, 1], so a fixed
scale of 1/127 with zero point 128 covers them; the export narrows each activation's scale to
CALIBRATION_MARGIN times what it reaches on random sequences (activation_ranges), because a
little-trained model's states stay near 0, where 1/127 would leave them few levels. The export's
int8 parity check (parity.compare_int8) would show a layer that went outside its range. MatMulIntegerToFloat is a com.microsoft op: onnxruntime (CPU, and onnxruntime-web's
WASM build) runs it; onnxruntime would not fuse the standard QuantizeLinear -> MatMulInteger ->
Cast -> Mul -> Add chain itself, because constant folding merges the two scales its pattern
looks for. Needs the `onnx` package (export time only).
"""

from __future__ import annotations

import numpy as np

MS_DOMAIN = "com.microsoft"
ACTIVATION_SCALE = np.float32(1.0 / 127.0)  # [-1, 1] -> [1, 255] around the zero point 128
# A calibrated activation's scale covers this many times the largest |value| seen (capped at
# [-1, 1]): a sequence the calibration did not see may go further, and past the range it clips.
CALIBRATION_MARGIN = 1.5
CALIBRATION_ROWS, CALIBRATION_STEPS = 32, 200
ACTIVATION_ZERO = np.uint8(128)
WEIGHT_LIMIT = 127  # symmetric int8 weights: -127..127, zero point 0


def activation_scale(peak: float | None) -> np.float32:
    """The fixed scale of an activation whose |values| reached `peak` in calibration (None: all of [-1, 1])."""
    if peak is None or not np.isfinite(peak) or peak <= 0:
        return ACTIVATION_SCALE
    return np.float32(min(1.0, CALIBRATION_MARGIN * float(peak)) / 127.0)


def activation_ranges(model, seed: int = 0) -> dict[str, float]:
    """The largest |value| each MatMul's activation takes while the step model runs random token
    sequences from the zero state, its state fed back ({} for a graph that is not a step model).
    A trained model's states fill [-1, 1]; a little-trained or small one's may stay near 0, where
    one fixed 1/127 step would leave few levels: its scale is fitted to what it reaches."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from . import contract

    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    if set(inputs) != {contract.TOKEN, contract.STATE}:
        return {}
    initializers = {init.name for init in graph.initializer}
    names = sorted({n.input[0] for n in graph.node if n.op_type == "MatMul" and n.input[1] in initializers})
    probed = [n for n in names if n not in inputs]
    probe = type(model)()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in probed)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = next(o for o in graph.output if o.name == contract.LOGITS)
    vocab = int(logits.type.tensor_type.shape.dim[1].dim_value or 1)
    width = int(inputs[contract.STATE].type.tensor_type.shape.dim[1].dim_value)
    tokens = np.random.default_rng(seed).integers(0, vocab, (CALIBRATION_STEPS, CALIBRATION_ROWS)).astype(np.int32)
    state = np.zeros((CALIBRATION_ROWS, width), np.float32)
    peaks = dict.fromkeys(names, 0.0)
    for step_tokens in tokens:
        if contract.STATE in peaks:
            peaks[contract.STATE] = max(peaks[contract.STATE], float(np.abs(state).max()))
        outputs = session.run([contract.STATE_OUT, *probed], {contract.TOKEN: step_tokens, contract.STATE: state})
        state = outputs[0]
        for name, value in zip(probed, outputs[1:]):
            peaks[name] = max(peaks[name], float(np.abs(value).max()))
    return peaks


def per_column_int8(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) float -> int8 (K, N) and float32 scales (N,): one symmetric scale per column."""
    scale = np.abs(matrix).max(axis=0) / WEIGHT_LIMIT
    scale[scale == 0] = 1.0  # an all-zero column stays zero at any scale
    quantized = np.clip(np.round(matrix / scale), -WEIGHT_LIMIT, WEIGHT_LIMIT).astype(np.int8)
    return quantized, scale.astype(np.float32)


def quantize_matmuls(model, ranges: dict[str, float] | None = None) -> int:
    """Make every MatMul by a float matrix initializer int8 (module docstring), in place.
    ranges: the largest |value| of each MatMul's activation (activation_ranges); an activation's
    fixed scale then covers CALIBRATION_MARGIN times it (at most [-1, 1]) instead of all of [-1, 1]."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    shared = {"int8_a_zero": ACTIVATION_ZERO, "int8_b_zero": np.int8(0)}
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
            new_inits[f"{x}_a_scale"] = activation_scale((ranges or {}).get(x))
            nodes.append(helper.make_node("QuantizeLinear", [x, f"{x}_a_scale", "int8_a_zero"], [quantized_inputs[x]],
                                          name=f"{x}_quantize"))
        values, scale = per_column_int8(numpy_helper.to_array(weight).astype(np.float32))
        new_inits[f"{name}_int8"], new_inits[f"{name}_scale"] = values, scale
        inputs = [quantized_inputs[x], f"{name}_int8", f"{x}_a_scale", f"{name}_scale", "int8_a_zero", "int8_b_zero"]
        output = node.output[0]
        add = bias_add(consumers.get(output, []), output, initializers, values.shape[1])
        if add is not None:
            bias_name = next(i for i in add.input if i != output)
            inputs.append(bias_name)
            output = add.output[0]
            folded_adds.add(id(add))
        nodes.append(helper.make_node("MatMulIntegerToFloat", inputs, [output], name=f"{name}_int8",  # unique: its weight
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


def split_at_consumers(model) -> int:
    """Cut MatMul(x, W) [+ Add(b)] and Gather(T, ids) whose one reader is a Split of the last axis
    into one MatMul [+ Add] / Gather per piece (module docstring), in place; returns how many."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replace: dict[int, list] = {}  # id(node) -> the nodes in its place ([] drops it)
    new_inits = []
    for split in graph.node:
        if split.op_type != "Split" or split_axis(split) not in (1, -1):
            continue
        source = producers.get(split.input[0])
        if source is None or len(consumers.get(split.input[0], [])) != 1:
            continue
        chain = cut_chain(source, producers, consumers, initializers)
        sizes = split_sizes(split, initializers, chain)
        if chain is None or sizes is None:
            continue
        pieces = np.cumsum([0, *sizes])
        nodes = []
        for j, (c0, c1) in enumerate(zip(pieces[:-1], pieces[1:])):
            out = split.output[j]
            for k, node in enumerate(chain):  # Gather, or MatMul then Add
                weight = node.input[0] if node.op_type == "Gather" else node.input[1]
                name = f"{weight}_cols{c0}_{c1}"
                array = numpy_helper.to_array(initializers[weight])
                new_inits.append(numpy_helper.from_array(np.ascontiguousarray(array[..., c0:c1]), name))
                inputs = [name, node.input[1]] if node.op_type == "Gather" else [node.input[0], name]
                last = k == len(chain) - 1
                piece = type(node)()
                piece.CopyFrom(node)
                piece.name = f"{node.name or weight}_cols{c0}_{c1}"
                del piece.input[:]
                piece.input.extend(inputs if k == 0 else [nodes[-1].output[0], name])
                del piece.output[:]
                piece.output.append(out if last else f"{node.output[0]}_cols{c0}_{c1}")
                nodes.append(piece)
        replace[id(chain[0])] = nodes
        for node in chain[1:] + [split]:
            replace[id(node)] = []
    if not replace:
        return 0
    kept = []
    for node in graph.node:
        kept.extend(replace.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    used = {name for node in kept for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return sum(1 for nodes in replace.values() if nodes)


def split_axis(split) -> int:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in split.attribute if a.name == "axis"), 0)


def split_sizes(split, initializers: dict, chain: list | None) -> list[int] | None:
    """The widths a Split of the last axis cuts the chain's output into: its constant sizes, or
    equal pieces of the chain's matrix's width (None when neither is known)."""
    from onnx import numpy_helper

    if chain is None:
        return None
    if len(split.input) > 1 and split.input[1]:
        sizes = initializers.get(split.input[1])
        return [int(v) for v in numpy_helper.to_array(sizes)] if sizes is not None else None
    weight = chain[0].input[0] if chain[0].op_type == "Gather" else chain[0].input[1]
    width, pieces = int(initializers[weight].dims[-1]), len(split.output)
    return [width // pieces] * pieces if width % pieces == 0 else None


def cut_chain(source, producers: dict, consumers: dict, initializers: dict) -> list | None:
    """[Gather] or [MatMul] or [MatMul, Add]: the nodes to cut before a Split, each reading a
    constant matrix (and bias) by its columns, each read by nothing else."""
    def constant(name, rank):
        init = initializers.get(name)
        return init is not None and len(init.dims) == rank

    if source.op_type == "Gather" and constant(source.input[0], 2):
        axis = next((a.i for a in source.attribute if a.name == "axis"), 0)
        return [source] if axis == 0 else None
    if source.op_type == "MatMul" and constant(source.input[1], 2):
        return [source]
    if source.op_type == "Add":
        bias = [i for i in source.input if constant(i, 1)]
        other = [i for i in source.input if i not in bias]
        matmul = producers.get(other[0]) if len(bias) == 1 and len(other) == 1 else None
        if (matmul is not None and matmul.op_type == "MatMul" and constant(matmul.input[1], 2)
                and len(consumers.get(matmul.output[0], [])) == 1):
            if list(source.input).index(bias[0]) != 1:  # the pieces read (product, bias) in that order
                source.input[:] = [other[0], bias[0]]
            return [matmul, source]
    return None


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
