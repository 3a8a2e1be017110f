"""Decode models: a step model with the sampling rule appended to its graph.

    add_sampling(step_model, vocab_size, unk_id=None) -> decode model (onnx.ModelProto)
    write_decode_model(step_path, decode_path)          reads the step model's metadata itself

The decode model takes the step's inputs plus per-row sampling settings, one uniform number per
row and a reset flag, and returns the next token id and the new state (contract.DECODE_*), so a
generation loop exchanges only ids and a few numbers with the model: on a GPU the state never
leaves the device. The appended nodes compute sampling.choose's rule step for step (see its
docstring for why each step is what it is); parity.validate checks the two agree id for id.

Works on any step model whose graph has inputs `token`, `state` and outputs `logits`,
`state_out` (fp32, int8, the GPU variants in step_variants.py). Needs the `onnx` package
(the train extra); running a decode model needs only onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import contract
from .errors import ModelError

PREFIX = "sampling/"  # every appended node and tensor is named under this, to avoid clashes


class _Graph:
    """Appends nodes to a graph with unique names under PREFIX."""

    def __init__(self, graph, opset: int):
        from onnx import helper

        self.graph, self.opset, self.helper, self.count = graph, opset, helper, 0

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        self.count += 1
        outputs = [f"{PREFIX}{op}_{self.count}_{i}" for i in range(n_out)]
        self.graph.node.append(self.helper.make_node(op, inputs, outputs, name=f"{PREFIX}{op}_{self.count}", **attrs))
        return outputs

    def one(self, op: str, *inputs: str, **attrs) -> str:
        return self.node(op, list(inputs), **attrs)[0]

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        full = f"{PREFIX}{name}"
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), full))
        return full

    def reduce(self, op: str, x: str, axes: str) -> str:
        """ReduceMax/ReduceSum over axis 1 keeping it; axes became an input in opset 18 (Max)/13 (Sum)."""
        axes_as_input = self.opset >= 18 or op == "ReduceSum"
        if axes_as_input:
            return self.one(op, x, axes, keepdims=1)
        return self.one(op, x, axes=[1], keepdims=1)


def main_opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def add_sampling(step_model, vocab_size: int, unk_id: int | None = None, cuts: bool = True):
    """A copy of `step_model` that also samples: see the module docstring and contract.py.

    cuts=False leaves out top-k and top-p (about half the nodes): the same ids for rows that use
    neither, for a GPU where each node is a kernel launch (BlockDecoder picks it per call)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto()
    model.CopyFrom(step_model)
    graph = model.graph
    names = {i.name for i in graph.input}, {o.name for o in graph.output}
    if not ({contract.TOKEN, contract.STATE} <= names[0] and {contract.LOGITS, contract.STATE_OUT} <= names[1]):
        raise ModelError("not a charrnn-export step model (needs inputs token, state and outputs logits, state_out)")
    opset = main_opset(model)
    if opset < 13:
        raise ModelError(f"the step model's opset {opset} is too old for a decode model; export with --opset 13 or newer")
    g = _Graph(graph, opset)
    axis1 = g.const("axis1", np.array([1], np.int64))

    # reset: rows starting a new request read a zero state. Rewire every reader of `state`.
    reset_state = f"{PREFIX}state_after_reset"
    for node in graph.node:
        node.input[:] = [reset_state if name == contract.STATE else name for name in node.input]
    reset_column = f"{PREFIX}reset_column"
    graph.node.insert(0, helper.make_node("Unsqueeze", [contract.RESET, axis1], [reset_column], name=f"{PREFIX}reset_column"))
    graph.node.insert(1, helper.make_node(
        "Where", [reset_column, g.const("zero", np.zeros((1, 1), np.float32)), contract.STATE], [reset_state],
        name=f"{PREFIX}reset"))

    def column(name: str) -> str:  # (batch,) -> (batch, 1)
        return g.one("Unsqueeze", name, axis1)

    logits = contract.LOGITS
    if unk_id is not None:  # never sample the [UNK] row of a current-tutorial model
        mask = np.zeros((1, vocab_size), np.float32)
        mask[0, unk_id] = -np.inf
        logits = g.one("Add", logits, g.const("unk_mask", mask))
    greedy_ids = g.one("Cast", g.one("ArgMax", logits, axis=1, keepdims=0, select_last_index=0), to=TensorProto.INT32)

    # 2-3: (logits - max) / temperature (at most 0: never +inf or NaN), then the top-k cut
    # (k = 0 or >= vocab: the k-th largest is the smallest).
    scaled = g.one("Div", g.one("Sub", logits, g.reduce("ReduceMax", logits, axis1)),
                   column(contract.TEMPERATURE))  # (batch, vocab) float32
    last = g.const("last", np.array([vocab_size - 1], np.int64))
    if cuts:
        vocab_k = g.const("vocab", np.array([vocab_size], np.int64))
        descending = g.node("TopK", [scaled, vocab_k], 2, axis=1, largest=1, sorted=1)[0]
        k = contract.TOP_K
        k_on = g.one("And", g.one("Greater", k, g.const("k0", np.array(0, np.int64))),
                     g.one("Less", k, g.const("kv", np.array(vocab_size, np.int64))))
        k_eff = g.one("Where", k_on, k, g.const("kvocab", np.array(vocab_size, np.int64)))
        kth = g.one("GatherElements", descending, column(g.one("Sub", k_eff, g.const("k1", np.array(1, np.int64)))),
                    axis=1)
        scaled = g.one("Where", g.one("Less", scaled, kth), g.const("ninf", np.array(-np.inf, np.float32)), scaled)

    # 4: exp in float64, rounded to float32.
    shifted = g.one("Sub", scaled, g.reduce("ReduceMax", scaled, axis1))
    weights = g.one("Cast", g.one("Exp", g.one("Cast", shifted, to=TensorProto.DOUBLE)), to=TensorProto.FLOAT)

    # 5: top-p (1 = off) over probabilities sorted descending (TopK puts ties' lower index first).
    if cuts:
        total = g.one("Gather", g.one("CumSum", weights, axis1), last, axis=1)  # (batch, 1) sequential sum
        probs = g.one("Div", weights, total)
        sorted_probs, order = g.node("TopK", [probs, vocab_k], 2, axis=1, largest=1, sorted=1)
        before = g.one("Sub", g.one("CumSum", sorted_probs, axis1), sorted_probs)
        top_p = column(contract.TOP_P)
        keep_sorted = g.one("Or", g.one("Less", before, top_p),
                            g.one("GreaterOrEqual", top_p, g.const("one", np.array(1.0, np.float32))))
        zeros = g.one("Mul", probs, g.const("fzero", np.array(0.0, np.float32)))
        keep = g.one("ScatterElements", zeros, order, g.one("Cast", keep_sorted, to=TensorProto.FLOAT), axis=1)
        weights = g.one("Mul", weights, keep)  # x * 1 is exact, x * 0 is 0

    # 6: inverse-CDF draw, compared in float64.
    cdf = g.one("CumSum", weights, axis1)
    threshold = g.one("Mul", column(contract.UNIFORM),
                      g.one("Cast", g.one("Gather", cdf, last, axis=1), to=TensorProto.DOUBLE))
    below = g.one("Cast", g.one("LessOrEqual", g.one("Cast", cdf, to=TensorProto.DOUBLE), threshold), to=TensorProto.FLOAT)
    sampled = g.one("Cast", g.one("ReduceSum", below, g.const("axis1_sum", np.array([1], np.int64)), keepdims=0),
                    to=TensorProto.INT32)
    # 1: greedy rows, and rows whose top_p is not above 0 (a top_p below float32's smallest rounds to 0).
    as_greedy = g.one("Or", contract.GREEDY,
                      g.one("Not", g.one("Greater", contract.TOP_P, g.const("p0", np.array(0.0, np.float32)))))
    graph.node.append(helper.make_node("Where", [as_greedy, greedy_ids, sampled], [contract.NEXT_TOKEN],
                                       name=f"{PREFIX}choose"))
    # 0 for a row whose logits are all finite; inf - inf and NaN - NaN are NaN.
    graph.node.append(helper.make_node(
        "ReduceSum", [g.one("Sub", contract.LOGITS, contract.LOGITS), g.const("axis1_check", np.array([1], np.int64))],
        [contract.LOGIT_CHECK], keepdims=0, name=f"{PREFIX}check"))

    batch = "batch"
    graph.input.extend([
        helper.make_tensor_value_info(contract.TEMPERATURE, TensorProto.FLOAT, [batch]),
        helper.make_tensor_value_info(contract.TOP_K, TensorProto.INT64, [batch]),
        helper.make_tensor_value_info(contract.TOP_P, TensorProto.FLOAT, [batch]),
        helper.make_tensor_value_info(contract.GREEDY, TensorProto.BOOL, [batch]),
        helper.make_tensor_value_info(contract.UNIFORM, TensorProto.DOUBLE, [batch]),
        helper.make_tensor_value_info(contract.RESET, TensorProto.BOOL, [batch]),
    ])
    graph.output.insert(0, helper.make_tensor_value_info(contract.NEXT_TOKEN, TensorProto.INT32, [batch]))
    graph.output.append(helper.make_tensor_value_info(contract.LOGIT_CHECK, TensorProto.FLOAT, [batch]))
    onnx.checker.check_model(model)
    return model


def step_metadata(model) -> tuple[int, int | None]:
    """(vocab_size, unk_id) from a step model's metadata."""
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        vocab = json.loads(meta[contract.META_VOCAB])
        config = json.loads(meta.get(contract.META_CONFIG, "{}"))
    except (KeyError, ValueError) as e:
        raise ModelError(f"the step model has no readable vocabulary metadata ({e}); export it again") from None
    from .sampling import unknown_id

    return len(vocab), unknown_id(config)


def decode_model_for(step_model, cuts: bool = True):
    vocab_size, unk_id = step_metadata(step_model)
    return add_sampling(step_model, vocab_size, unk_id, cuts=cuts)


def write_decode_model(step_path: Path, decode_path: Path) -> None:
    """Read a step model file and write its decode model beside it (atomically)."""
    import onnx

    decode = decode_model_for(onnx.load(str(step_path)))
    tmp = decode_path.with_name(decode_path.name + ".tmp")
    onnx.save(decode, str(tmp))
    tmp.replace(decode_path)


def write_decode_models(folder: Path) -> list[str]:
    """Write the decode model of each step model in an export folder; the decode files written.
    Their parity (id for id with step model + sampling.choose) is parity.validate's to check."""
    written = []
    for step_name, decode_name in contract.DECODE_FILES.items():
        if (folder / step_name).is_file():
            write_decode_model(folder / step_name, folder / decode_name)
            written.append(decode_name)
    return written


# ---------------------------------------------------------------- several steps per call

CONTROL = "control"  # float64 [batch, control_width(steps)], see block_model
TOKENS = "tokens"  # int32 [batch, steps]
LAST_TOKEN = "last_token"  # int32 [batch]
# The `control` input's layout, written here only: these per-row settings (each in the decode
# model's own input type once cast), then one uniform per step, then one forced token per step.
CONTROL_COLUMNS = (contract.TEMPERATURE, contract.TOP_K, contract.TOP_P, contract.GREEDY, contract.RESET)


def control_width(steps: int) -> int:
    """Columns of `control` for a block of `steps` steps."""
    return len(CONTROL_COLUMNS) + 2 * steps


def uniform_column(step: int) -> int:
    """The column of step `step`'s uniform number."""
    return len(CONTROL_COLUMNS) + step


def forced_column(step: int, steps: int) -> int:
    """The column of step `step`'s forced token (-1: feed back the id sampled before)."""
    return len(CONTROL_COLUMNS) + steps + step


def decode_feeds(tokens: np.ndarray, state: np.ndarray, settings, uniforms: np.ndarray,
                 reset: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A decode model's inputs by name: tokens (rows,) int32, state (rows, S), settings (a
    sampling.Settings of rows), uniforms (rows,) float64, reset (rows,) bool (default none)."""
    return {contract.TOKEN: tokens, contract.STATE: state, contract.TEMPERATURE: settings.temperature,
            contract.TOP_K: settings.top_k, contract.TOP_P: settings.top_p, contract.GREEDY: settings.greedy,
            contract.UNIFORM: uniforms, contract.RESET: np.zeros(len(tokens), bool) if reset is None else reset}


def tokens_to_feed(forced: np.ndarray, last: np.ndarray) -> np.ndarray:
    """A one-step backend's input ids, the rule block_model applies on the device: the forced
    start character (>= 0), else (-1) the id sampled last."""
    return np.where(forced[:, 0] >= 0, forced[:, 0], last).astype(np.int32)


def block_model(decode_model, steps: int):
    """`steps` decode steps in one graph, each feeding the next its sampled id and state, for a
    device that should hear from the host once per `steps` characters (benchmarks/gpu_engine.py).

    inputs   token int32 [batch]    the id each row fed back last (on the device between calls)
             state [batch, units]
             control float64 [batch, control_width(steps)]: the CONTROL_COLUMNS settings
                     (temperature, top_k, top_p, greedy, reset), then one uniform per step
                     (uniform_column), then one forced token per step (forced_column; -1: feed back
                     the id sampled at the step before; >= 0: feed this id, a start string's character)
    outputs  tokens int32 [batch, steps]   the id sampled at each step; the whole row -1 where the
                     last step's logits were not finite (NaN spreads through the state, so the
                     last step sees a broken model; one check per call saves a kernel per step)
             last_token int32 [batch]      the id sampled at the last step (the next call's token)
             state_out [batch, units]
    The weights are shared by every step: the file is the size of the decode model."""
    import onnx
    from onnx import TensorProto, helper

    body = decode_model.graph
    model = onnx.ModelProto()
    model.CopyFrom(decode_model)
    graph = model.graph
    for field in (graph.node, graph.input, graph.output, graph.value_info):
        del field[:]
    g = _Graph(graph, main_opset(model))
    axis1 = g.const("block_axis1", np.array([1], np.int64))
    width = control_width(steps)
    columns = [g.one("Squeeze", c, axis1) for c in  # (batch,) each; one Split kernel for all
               g.node("Split", [CONTROL, g.const("split", np.ones(width, np.int64))], width, axis=1)]
    input_types = {i.name: i.type.tensor_type.elem_type for i in body.input}
    settings = {name: g.one("Cast", columns[column], to=input_types[name])  # the decode model's own types
                for column, name in enumerate(CONTROL_COLUMNS)}
    reset = settings.pop(contract.RESET)
    shared = settings
    no_reset = g.one("And", reset, g.const("false", np.array(False)))
    initializers = {i.name for i in body.initializer}
    zero_id = g.const("zero_id", np.array(0, np.int32))
    token, state, outputs, renamed = contract.TOKEN, contract.STATE, [], {}
    for step in range(steps):
        forced = g.one("Cast", columns[forced_column(step, steps)], to=TensorProto.INT32)
        token = g.one("Where", g.one("GreaterOrEqual", forced, zero_id), forced, token)
        inputs = {**shared, contract.TOKEN: token, contract.STATE: state,
                  contract.UNIFORM: columns[uniform_column(step)],
                  contract.RESET: reset if step == 0 else no_reset}
        renamed = _copy_step(graph, body, f"step{step}/", inputs, initializers)
        outputs.append(g.one("Unsqueeze", renamed[contract.NEXT_TOKEN], axis1))
        token, state = renamed[contract.NEXT_TOKEN], renamed[contract.STATE_OUT]
    broken = g.one("Unsqueeze", g.one("IsNaN", renamed[contract.LOGIT_CHECK]), axis1)  # (batch, 1)
    graph.node.append(helper.make_node("Where", [broken, g.const("minus_one", np.array(-1, np.int32)),
                                                 g.one("Concat", *outputs, axis=1)], [TOKENS], name=f"{PREFIX}tokens"))
    graph.node.append(helper.make_node("Identity", [token], [LAST_TOKEN], name=f"{PREFIX}last_token"))
    graph.node.append(helper.make_node("Identity", [state], [contract.STATE_OUT], name=f"{PREFIX}state_out"))
    units = [d for d in body.input if d.name == contract.STATE][0].type.tensor_type.shape.dim[1]
    batch = "batch"
    graph.input.extend([
        helper.make_tensor_value_info(contract.TOKEN, TensorProto.INT32, [batch]),
        helper.make_tensor_value_info(contract.STATE, TensorProto.FLOAT, [batch, units.dim_value or "units"]),
        helper.make_tensor_value_info(CONTROL, TensorProto.DOUBLE, [batch, width]),
    ])
    graph.output.extend([
        helper.make_tensor_value_info(TOKENS, TensorProto.INT32, [batch, steps]),
        helper.make_tensor_value_info(LAST_TOKEN, TensorProto.INT32, [batch]),
        helper.make_tensor_value_info(contract.STATE_OUT, TensorProto.FLOAT, [batch, units.dim_value or "units"]),
    ])
    _prune(graph)
    onnx.checker.check_model(model)
    return model


def _prune(graph) -> None:
    """Drop nodes whose outputs nothing reads (the per-step logits checks but the last, logits)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))


def _copy_step(graph, body, prefix: str, inputs: dict[str, str], initializers: set[str]) -> dict[str, str]:
    """Append a copy of `body`'s nodes to `graph`, its graph inputs replaced by `inputs` and every
    other tensor but the initializers renamed under `prefix`; returns body output -> new name."""
    from onnx import NodeProto

    def name(tensor: str) -> str:
        if not tensor or tensor in initializers:
            return tensor
        return inputs.get(tensor, prefix + tensor)

    for index, node in enumerate(body.node):
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{prefix}{node.name or node.op_type}#{index}"  # names must be unique, and may be empty
        copy.input[:] = [name(t) for t in node.input]
        copy.output[:] = [name(t) for t in node.output]
        graph.node.append(copy)
    return {o.name: name(o.name) for o in body.output}
