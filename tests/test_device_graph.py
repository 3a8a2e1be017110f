"""The device graph (step_variants.native_step: one native ONNX op per layer, and its fp16 form)
for every architecture, built from a flat step model as `to-onnx` writes it, against that flat
step on onnxruntime's CPU provider; and BlockDecoder.for_gpu (K steps per call) against the CPU
engine's host sampler, id for id.

The flat step models are built here as the exporter builds them: random weights through cells'
flat TF step, tf2onnx, the initializers named after step_constants, the vocabulary and config
(with the architecture and state_size) in the metadata. On CUDA (when onnxruntime has it) the
fp16 graph is also run against the fp32 one.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from charrnn_export import contract
from charrnn_export.cells import Architecture, LayerSpec, ModelWeights
from charrnn_export.cells.weights import random_weights as cells_random_weights
from charrnn_export.engine import Engine, HostSampler
from charrnn_export.errors import ModelError
from charrnn_export.runtimes.onnx import OnnxRuntime
from charrnn_export.runtimes.onnx_decode import BlockDecoder
from charrnn_export.sampling import SamplingConfig
from charrnn_export.step_variants import constant_names, flat_constants, float16_step, native_step

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CHARS = tuple("\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
EMBEDDING_DIM = 8
# The contract's specs (tests/conftest.py's arch_export), at test sizes.
SPECS = {
    "gru": (LayerSpec("gru", 16),),
    "gru_reset_before": (LayerSpec("gru", 16, {"reset_after": False}),),
    "lstm": (LayerSpec("lstm", 16),),
    "rnn": (LayerSpec("rnn", 16),),
    "lstm2": (LayerSpec("lstm", 16), LayerSpec("lstm", 16)),
    "mixed": (LayerSpec("lstm", 24), LayerSpec("gru", 16), LayerSpec("rnn", 16)),
}
NATIVE_OPS = {"gru": "GRU", "lstm": "LSTM", "rnn": "RNN"}
RECURRENT_OPS = {"GRU", "LSTM", "RNN", "Loop", "Scan"}
MIXED = [SamplingConfig(), SamplingConfig(0.6), SamplingConfig(1.4, top_k=3), SamplingConfig(top_p=0.8),
         SamplingConfig(0.9, top_k=10, top_p=0.95), SamplingConfig(greedy=True)]
PLAIN = [SamplingConfig(), SamplingConfig(0.7), SamplingConfig(greedy=True)]


def random_weights(arch: Architecture, seed: int) -> ModelWeights:
    rng = np.random.default_rng(seed)
    return cells_random_weights(arch, lambda shape, role, fan_in: rng.normal(0, 0.4, shape))


def flat_step_model(weights: ModelWeights):
    """The flat step as to-onnx writes it: plain ops, named weights, vocabulary and config."""
    import tensorflow as tf
    import tf2onnx

    from charrnn_export.cells.tf_step import flat_step, step_constants
    from charrnn_export.step_model import drop_initializer_inputs, name_initializers, set_metadata

    arch = weights.architecture()
    constants = step_constants(weights)
    tensors = {name: tf.Variable(array, trainable=False, name=name) for name, array in constants.items()}
    signature = [tf.TensorSpec([None], tf.int32, name=contract.TOKEN),
                 tf.TensorSpec([None, arch.state_size], tf.float32, name=contract.STATE)]
    step = flat_step(tf, arch, tensors)

    @tf.function(input_signature=signature)
    def named_step(token, state):
        logits, new_state = step(token, state)
        return {contract.LOGITS: logits, contract.STATE_OUT: new_state}

    proto, _ = tf2onnx.convert.from_function(named_step, input_signature=signature, opset=18)
    drop_initializer_inputs(proto)
    name_initializers(proto, constants)
    config = {"vocab_size": arch.vocab_size, "embedding_dim": arch.embedding_dim, "unk_id": None,
              "architecture": arch.to_json(), "state_size": arch.state_size}
    if len(arch.layers) == 1:
        config["rnn_units"] = arch.layers[0].units
    set_metadata(proto, {contract.META_VOCAB: json.dumps(list(CHARS)), contract.META_CONFIG: json.dumps(config)})
    return proto


@pytest.fixture(scope="module", params=list(SPECS))
def case(request, tmp_path_factory):
    arch = Architecture(len(CHARS), EMBEDDING_DIM, SPECS[request.param])
    weights = random_weights(arch, seed=sorted(SPECS).index(request.param))
    flat = flat_step_model(weights)
    path = tmp_path_factory.mktemp(request.param) / contract.MODEL_FILES["fp32"]
    onnx.save(flat, str(path))
    return {"name": request.param, "arch": arch, "flat": flat, "path": path}


def session(model):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_steps(sess, tokens: np.ndarray, state_size: int) -> tuple[list, list]:
    state, logits_seq, states = np.zeros((tokens.shape[0], state_size), np.float32), [], []
    for t in range(tokens.shape[1]):
        logits, state = sess.run([contract.LOGITS, contract.STATE_OUT],
                                 {contract.TOKEN: tokens[:, t].astype(np.int32), contract.STATE: state})
        logits_seq.append(logits)
        states.append(state)
    return logits_seq, states


def assert_close_runs(got, expected, atol, what):
    for t, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=f"{what}, step {t}")


# ---------------------------------------------------------------- the graph


def test_the_device_graph_has_one_native_op_per_layer_and_keeps_the_contract(case):
    native = native_step(case["flat"])
    ops = [node.op_type for node in native.graph.node]
    assert [op for op in ops if op in RECURRENT_OPS] == [NATIVE_OPS[s.kind] for s in case["arch"].layers]
    assert not {op for node in case["flat"].graph.node for op in [node.op_type]} & RECURRENT_OPS  # flat stays flat
    state_size = case["arch"].state_size
    dims = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in [*native.graph.input, *native.graph.output]}
    assert dims == {contract.TOKEN: ["batch"], contract.STATE: ["batch", state_size],
                    contract.LOGITS: ["batch", len(CHARS)], contract.STATE_OUT: ["batch", state_size]}
    meta = {p.key: p.value for p in native.metadata_props}
    assert json.loads(meta[contract.META_CONFIG])["architecture"] == case["arch"].to_json()
    assert meta["step_graph"] == "native"


def test_the_device_graph_computes_the_flat_step_on_the_cpu_provider(case):
    tokens = np.random.default_rng(4).integers(0, len(CHARS), (5, 12))
    state_size = case["arch"].state_size
    expected = run_steps(session(case["flat"]), tokens, state_size)
    got = run_steps(session(native_step(case["flat"])), tokens, state_size)
    assert_close_runs(got[0], expected[0], 1e-5, f"{case['name']} logits")
    assert_close_runs(got[1], expected[1], 1e-5, f"{case['name']} state")


def test_the_fp16_graph_keeps_fp32_at_its_edges_halves_its_weights_and_follows_the_step(case):
    from onnx import TensorProto

    half = float16_step(native_step(case["flat"]))
    edges = {v.name: v.type.tensor_type.elem_type for v in [*half.graph.input, *half.graph.output]}
    assert edges == {contract.TOKEN: TensorProto.INT32, contract.STATE: TensorProto.FLOAT,
                     contract.LOGITS: TensorProto.FLOAT, contract.STATE_OUT: TensorProto.FLOAT}
    assert not [i.name for i in half.graph.initializer if i.data_type == TensorProto.FLOAT]
    assert {p.key: p.value for p in half.metadata_props}["step_graph"] == "native+fp16"
    tokens = np.random.default_rng(7).integers(0, len(CHARS), (3, 8))
    state_size = case["arch"].state_size
    expected = run_steps(session(case["flat"]), tokens, state_size)
    got = run_steps(session(half), tokens, state_size)  # fp16 rounding: about 1e-3 of each value
    assert_close_runs(got[1], expected[1], 2e-2, f"{case['name']} fp16 state")
    assert_close_runs(got[0], expected[0], 1e-1, f"{case['name']} fp16 logits")


def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(not cuda_available(), reason="onnxruntime has no CUDA provider here")
def test_on_cuda_the_fp16_and_fp32_device_graphs_follow_the_flat_step(case):
    import onnxruntime as ort

    tokens = np.random.default_rng(5).integers(0, len(CHARS), (4, 10))
    state_size = case["arch"].state_size
    expected = run_steps(session(case["flat"]), tokens, state_size)
    native = native_step(case["flat"])
    for model, atol in ((native, 1e-4), (float16_step(native), 5e-2)):
        cuda = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
        got = run_steps(cuda, tokens, state_size)
        assert_close_runs(got[0], expected[0], atol, f"{case['name']} CUDA logits")


# ---------------------------------------------------------------- K steps per call


def engine_ids(backend, requests) -> list[list[int]]:
    engine = Engine(backend)
    rids = [engine.submit(*request) for request in requests]
    made: dict[int, list[int]] = {}
    while engine.has_work():
        for rid, token, reason in engine.step():
            if reason is None:
                made.setdefault(rid, []).append(token)
    return [made.get(rid, []) for rid in rids]


def test_k_steps_per_call_give_the_cpu_engines_ids(case):
    """BlockDecoder.for_gpu (native ops, fp32, 3 steps per call), on the CPU, against the host
    sampler over the flat step: the same ids for the same seeded requests, with and without cuts."""
    host = OnnxRuntime(case["path"])
    for configs in (MIXED, PLAIN):  # the full graph, then the one without top-k/top-p
        requests = [(np.array([5, 6, 7, 8], np.int32), 25, config, 31 + i) for i, config in enumerate(configs)]
        expected = engine_ids(HostSampler(host, len(requests)), requests)
        block = BlockDecoder.for_gpu(case["path"], len(requests), steps=3, precision="fp32", device="cpu")
        assert engine_ids(block, requests) == expected
        assert all(len(ids) == 25 for ids in expected)


# ---------------------------------------------------------------- old exports and wrong files


def legacy_single_gru(flat):
    """A flat model as exports before the architecture was recorded wrote it: unprefixed names,
    config with rnn_units alone."""
    old = onnx.ModelProto()
    old.CopyFrom(flat)
    renames = {"layer0_recurrent_kernel": "recurrent_kernel", "layer0_recurrent_bias": "recurrent_bias"}
    for init in old.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in old.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
    for prop in old.metadata_props:
        if prop.key == contract.META_CONFIG:
            config = json.loads(prop.value)
            prop.value = json.dumps({k: config[k] for k in ("vocab_size", "embedding_dim", "unk_id", "rnn_units")})
    return old


def test_an_export_older_than_the_architecture_builds_as_one_gru(tmp_path):
    arch = Architecture(len(CHARS), EMBEDDING_DIM, SPECS["gru"])
    flat = flat_step_model(random_weights(arch, seed=9))
    old = legacy_single_gru(flat)
    architecture, constants = flat_constants(old)
    assert architecture == arch
    # The old names (no layer prefix) are read under the current ones, so every reader sees one set.
    assert sorted(constants) == sorted(constant_names(arch))
    assert not {"recurrent_kernel", "recurrent_bias"} & set(constants)
    tokens = np.random.default_rng(6).integers(0, len(CHARS), (2, 6))
    expected = run_steps(session(flat), tokens, arch.state_size)
    got = run_steps(session(native_step(old)), tokens, arch.state_size)
    assert_close_runs(got[0], expected[0], 1e-5, "legacy logits")


def test_a_flat_model_without_a_layers_weight_is_refused_naming_it(case):
    broken = onnx.ModelProto()
    broken.CopyFrom(case["flat"])
    last = len(case["arch"].layers) - 1
    victim = next(i for i in broken.graph.initializer if i.name.startswith(f"layer{last}_"))
    name, victim.name = victim.name, "renamed"
    with pytest.raises(ModelError, match=f"missing weights {name}"):
        native_step(broken)
