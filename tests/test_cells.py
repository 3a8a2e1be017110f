"""cells/: the model description and every cell kind, each implementation against the others.

For each kind (GRU with reset_after true and false, LSTM, SimpleRNN) and a mixed stack, with
random weights: Keras' own layers over a sequence == the numpy reference step by step == the flat
TensorFlow step == the graph of native ONNX ops on onnxruntime's CPU provider. Then the packed
state's layout, the description's JSON and its refusals, and the recognition of each kind in
checkpoints written by tf_keras (the original tutorial's TF checkpoints and .h5) and Keras 3.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from charrnn_export import contract
from charrnn_export.cells import Architecture, LayerSpec, LayerWeights, ModelWeights, get_kind, kind_names
from charrnn_export.cells.weights import random_weights as cells_random_weights
from charrnn_export.cells.keras_model import build_keras_model, layer_names, set_keras_weights, weights_from_keras_model
from charrnn_export.cells.reference import reference_step, zero_state
from charrnn_export.cells.tf_step import flat_step, step_constants
from charrnn_export.cells.variables import weights_from_variables
from charrnn_export.errors import ConfigError, ModelError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

VOCAB, EMBEDDING_DIM = 11, 8
ATOL = 1e-5

ARCHITECTURES = {
    "gru": (LayerSpec("gru", 12),),
    "gru-reset-before": (LayerSpec("gru", 12, {"reset_after": False}),),
    "lstm": (LayerSpec("lstm", 12),),
    "rnn": (LayerSpec("rnn", 12),),
    "mixed": (LayerSpec("lstm", 24), LayerSpec("gru", 16), LayerSpec("rnn", 8)),
}
NATIVE_OPS = {"gru": "GRU", "lstm": "LSTM", "rnn": "RNN"}


def architecture(name: str) -> Architecture:
    return Architecture(VOCAB, EMBEDDING_DIM, ARCHITECTURES[name])


def random_weights(arch: Architecture, seed: int = 0) -> ModelWeights:
    """Weights of every array's shape, biases included (Keras initialises them to zero)."""
    rng = np.random.default_rng(seed)
    return cells_random_weights(arch, lambda shape, role, fan_in: rng.normal(0, 0.5, shape))


def reference_run(weights: ModelWeights, tokens: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The numpy reference over tokens (batch, time): logits and state after each step."""
    state, logits_seq, states = zero_state(weights.architecture(), tokens.shape[0]), [], []
    for t in range(tokens.shape[1]):
        logits, state = reference_step(weights, tokens[:, t], state)
        logits_seq.append(logits)
        states.append(state)
    return logits_seq, states


def run_steps(step, tokens: np.ndarray, state_size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    state, logits_seq, states = np.zeros((tokens.shape[0], state_size), np.float32), [], []
    for t in range(tokens.shape[1]):
        logits, state = step(tokens[:, t].astype(np.int32), state)
        logits_seq.append(np.asarray(logits))
        states.append(np.asarray(state))
    return logits_seq, states


def assert_runs_equal(got, expected, what):
    for t, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0, err_msg=f"{what}, step {t}")


# ---------------------------------------------------------------- every implementation agrees


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def case(request):
    arch = architecture(request.param)
    weights = random_weights(arch, seed=len(request.param))
    tokens = np.random.default_rng(1).integers(0, VOCAB, (3, 6))
    return {"name": request.param, "arch": arch, "weights": weights, "tokens": tokens,
            "reference": reference_run(weights, tokens)}


def test_keras_layers_compute_the_reference(case):
    model = build_keras_model(case["arch"])
    set_keras_weights(model, case["weights"])
    read_back = weights_from_keras_model(model)
    assert read_back.architecture() == case["arch"]
    for a, b in zip(read_back.named_arrays().values(), case["weights"].named_arrays().values()):
        np.testing.assert_array_equal(a, b)
    keras_logits = np.asarray(model(case["tokens"].astype(np.int32)))  # (batch, time, vocab)
    assert_runs_equal([keras_logits[:, t] for t in range(keras_logits.shape[1])], case["reference"][0],
                      f"Keras vs reference, {case['name']}")


def test_the_flat_tf_step_computes_the_reference(case):
    import tensorflow as tf

    tensors = {name: tf.constant(array) for name, array in step_constants(case["weights"]).items()}
    step = tf.function(flat_step(tf, case["arch"], tensors))
    logits, states = run_steps(step, case["tokens"], case["arch"].state_size)
    assert_runs_equal(logits, case["reference"][0], f"flat TF logits, {case['name']}")
    assert_runs_equal(states, case["reference"][1], f"flat TF state, {case['name']}")


def native_session(arch: Architecture, weights: ModelWeights):
    import onnxruntime as ort
    from charrnn_export.cells.onnx_step import native_step_model

    model = native_step_model(arch, step_constants(weights))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return model, session


def test_the_native_onnx_step_computes_the_reference(case):
    model, session = native_session(case["arch"], case["weights"])
    ops = [node.op_type for node in model.graph.node]
    assert [op for op in ops if op in NATIVE_OPS.values()] == [NATIVE_OPS[s.kind] for s in case["arch"].layers]
    assert not {"Loop", "Scan"} & set(ops)

    def step(token, state):
        return session.run([contract.LOGITS, contract.STATE_OUT], {contract.TOKEN: token, contract.STATE: state})

    logits, states = run_steps(step, case["tokens"], case["arch"].state_size)
    assert_runs_equal(logits, case["reference"][0], f"native ONNX logits, {case['name']}")
    assert_runs_equal(states, case["reference"][1], f"native ONNX state, {case['name']}")


def test_the_flat_step_of_a_mixed_stack_converts_to_plain_onnx_ops():
    """tf2onnx turns the flat step into plain ops (no Loop, no Scan, no native RNN op) that agree."""
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    arch = architecture("mixed")
    weights = random_weights(arch, seed=3)
    # Variables, as step_model.py's module holds them: tf2onnx freezes them into initializers.
    tensors = {name: tf.Variable(array, trainable=False, name=name) for name, array in step_constants(weights).items()}
    signature = [tf.TensorSpec([None], tf.int32, name=contract.TOKEN),
                 tf.TensorSpec([None, arch.state_size], tf.float32, name=contract.STATE)]
    step = tf.function(flat_step(tf, arch, tensors), input_signature=signature)
    proto, _ = tf2onnx.convert.from_function(step, input_signature=signature, opset=18)
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & {"Loop", "Scan", "GRU", "LSTM", "RNN"}, ops
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    tokens = np.random.default_rng(2).integers(0, VOCAB, (2, 4))
    expected = reference_run(weights, tokens)
    logits, states = run_steps(lambda token, state: session.run(None, {contract.TOKEN: token, contract.STATE: state}),
                               tokens, arch.state_size)
    assert_runs_equal(logits, expected[0], "tf2onnx logits")
    assert_runs_equal(states, expected[1], "tf2onnx state")


# ---------------------------------------------------------------- the description


def test_the_state_is_packed_layer_by_layer():
    arch = architecture("mixed")
    assert [(s.kind, s.units, s.offset, s.width) for s in arch.state_layout()] == [
        ("lstm", 24, 0, 48), ("gru", 16, 48, 16), ("rnn", 8, 64, 8)]
    assert arch.state_size == 72
    recorded = arch.to_json()
    assert recorded["state_size"] == 72
    assert [(entry["state_offset"], entry["state_width"]) for entry in recorded["layers"]] == [(0, 48), (48, 16),
                                                                                               (64, 8)]
    assert architecture("lstm").state_size == 24 and architecture("gru").state_size == 12


def test_describe_says_the_stack_in_one_line():
    gru = LayerSpec("gru", 512)
    assert Architecture(65, 256, (gru,)).describe() == "gru(512) x1"
    assert Architecture(65, 256, (gru, gru)).describe() == "gru(512) x2"
    assert Architecture(65, 256, (LayerSpec("lstm", 256), LayerSpec("gru", 256))).describe() == "lstm(256) -> gru(256)"
    reset_before = LayerSpec("gru", 8, {"reset_after": False})
    assert Architecture(65, 8, (reset_before,)).describe() == "gru(8, reset_after=False) x1"


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_the_description_round_trips_through_json(name):
    arch = architecture(name)
    text = json.dumps(arch.to_json())
    assert Architecture.from_json(text) == arch
    assert Architecture.from_json(json.loads(text)) == arch
    bare = {"vocab_size": VOCAB, "embedding_dim": EMBEDDING_DIM,
            "layers": [{"kind": s.kind, "units": s.units, **s.options} for s in arch.layers]}
    assert Architecture.from_json(bare) == arch  # the layout fields are optional


def mixed_json() -> dict:
    return architecture("mixed").to_json()


def edited(edit) -> dict:
    data = mixed_json()
    edit(data)
    return data


REFUSALS = [
    ("{not json", "not valid JSON"),
    ([1, 2], "must be a JSON object, not list"),
    (edited(lambda d: d.pop("layers")), "layers must be a non-empty list"),
    (edited(lambda d: d.update(layers=[])), "layers must be a non-empty list"),
    (edited(lambda d: d.update(vocab_size=0)), "vocab_size must be a positive integer"),
    (edited(lambda d: d.update(embedding_dim="8")), "embedding_dim must be a positive integer, not '8'"),
    (edited(lambda d: d.update(rnn_units=3)), "unknown architecture field 'rnn_units'"),
    (edited(lambda d: d["layers"][1].update(kind="transformer")), "layer 1: unknown cell kind 'transformer'"),
    (edited(lambda d: d["layers"][0].update(units="24")), "layer 0: units must be a positive integer, not '24'"),
    (edited(lambda d: d["layers"][0].update(units=True)), "layer 0: units must be a positive integer, not True"),
    (edited(lambda d: d["layers"][1].update(reset_after="yes")), "gru option reset_after must be bool, not 'yes'"),
    (edited(lambda d: d["layers"][0].update(reset_after=True)), "lstm has no option 'reset_after' (it has none)"),
    (edited(lambda d: d["layers"][2].update(state_offset=3)), "layer 2 state_offset is 3, expected 64"),
    (edited(lambda d: d.update(state_size=71)), "state_size is 71 but the layers need 72"),
    (edited(lambda d: d["layers"].__setitem__(1, "gru")), "layer 1 must be a JSON object"),
]


@pytest.mark.parametrize("data, fragment", REFUSALS, ids=[fragment for _, fragment in REFUSALS])
def test_a_wrong_description_is_refused_naming_what_is_wrong(data, fragment):
    with pytest.raises(ModelError) as raised:
        Architecture.from_json(data, source="run/config.json")
    message = str(raised.value)
    assert fragment in message and message.startswith("run/config.json: ") and "\n" not in message


def test_a_layer_given_wrong_in_code_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown cell kind 'transformer'; choose one of gru, lstm, rnn"):
        LayerSpec("transformer", 8)
    with pytest.raises(ConfigError, match="gru has no option 'peepholes'"):
        LayerSpec("gru", 8, {"peepholes": True})
    with pytest.raises(ConfigError, match="needs one or more recurrent layers"):
        Architecture(11, 8, ())
    assert LayerSpec("gru", 8).options == {"reset_after": True}  # defaults filled in
    assert LayerSpec("gru", 8) == LayerSpec("gru", 8, {"reset_after": True})
    assert LayerSpec("gru", 8) != LayerSpec("gru", 8, {"reset_after": False})


# ---------------------------------------------------------------- the weights


def test_weights_with_a_wrong_shape_are_refused_in_one_line():
    weights = random_weights(architecture("mixed"))
    gru = weights.layers[1]
    weights.layers = (weights.layers[0], LayerWeights(gru.spec, gru.kernel, gru.recurrent_kernel[:, :-1], gru.bias),
                      weights.layers[2])
    with pytest.raises(ModelError, match=r"^ckpt: layer 1 \(gru\(16\)\) recurrent_kernel has shape \(16, 47\), "
                                         r"expected \(16, 48\)$"):
        weights.check("ckpt")
    wrong_dense = random_weights(architecture("mixed"))
    wrong_dense.dense_kernel = wrong_dense.dense_kernel[:-1]
    with pytest.raises(ModelError, match=r"dense_kernel has shape \(7, 11\), expected \(8, 11\)"):
        wrong_dense.check("ckpt")


def test_named_arrays_round_trip_and_must_fit_their_description():
    weights = random_weights(architecture("mixed"))
    again = ModelWeights.from_named_arrays(architecture("mixed"), weights.named_arrays())
    assert again.architecture() == weights.architecture()
    for a, b in zip(again.named_arrays().values(), weights.named_arrays().values()):
        np.testing.assert_array_equal(a, b)
    other = Architecture(VOCAB, EMBEDDING_DIM, (LayerSpec("gru", 24), LayerSpec("gru", 16), LayerSpec("rnn", 8)))
    with pytest.raises(ModelError, match=r"layer 0 \(gru\(24\)\) kernel has shape \(8, 96\), expected \(8, 72\)"):
        ModelWeights.from_named_arrays(other, weights.named_arrays())
    arrays = weights.named_arrays()
    del arrays["layers/2/bias"]
    with pytest.raises(ModelError, match="weight layers/2/bias is missing"):
        ModelWeights.from_named_arrays(architecture("mixed"), arrays)


# ---------------------------------------------------------------- recognising checkpoints


def test_each_kind_recognises_its_own_arrays_and_only_those():
    input_dim = 5
    for name in ("gru", "gru-reset-before", "lstm", "rnn"):
        spec, = ARCHITECTURES[name]
        layer = random_weights(Architecture(VOCAB, input_dim, (spec,))).layers[0]
        for leaves in (("kernel", "recurrent_kernel", "bias"), ("kernel:0", "recurrent_kernel:0", "bias:0"),
                       ("0", "1", "2")):
            items = list(zip(leaves, layer.arrays()))[::-1]  # the order a reader lists them must not matter
            for kind in kind_names():
                found = get_kind(kind).recognise(items)
                if kind == spec.kind:
                    assert found is not None and found.spec == spec, (name, kind, leaves)
                    np.testing.assert_array_equal(found.recurrent_kernel, layer.recurrent_kernel)
                else:
                    assert found is None, (name, kind)
        assert get_kind(spec.kind).recognise(list(zip(("kernel", "bias"), layer.arrays()))) is None


def tf_checkpoint_variables(prefix: str) -> list[tuple[str, np.ndarray]]:
    """(path, array) of a TF checkpoint's model variables, as checkpoints.py reads them."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    return [(name[: -len(suffix)], reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()
            if name.endswith(suffix) and not name.startswith(("optimizer/", "save_counter/"))
            and "/.OPTIMIZER_SLOT/" not in name]


def h5_variables(path) -> list[tuple[str, np.ndarray]]:
    import h5py

    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.append((name, np.asarray(obj[()])))
                     if isinstance(obj, h5py.Dataset) and name.split("/")[0] != "optimizer" else None)
    return found


def assert_same_weights(got: ModelWeights, expected: ModelWeights):
    assert got.architecture() == expected.architecture(), (got.architecture(), expected.architecture())
    for (name, a), b in zip(got.named_arrays().items(), expected.named_arrays().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)


# Every kind and option in one stack, in an order that is not alphabetical by Keras name.
TUTORIAL_STACK = (LayerSpec("lstm", 10), LayerSpec("gru", 8, {"reset_after": False}), LayerSpec("rnn", 6),
                  LayerSpec("gru", 8))


def tutorial_tf_keras_model(layers, batch_size=1):
    """The original tutorial's build_model (tf_keras, stateful) with `layers` for its one GRU."""
    import tf_keras

    return tf_keras.Sequential(
        [tf_keras.layers.Embedding(VOCAB, EMBEDDING_DIM, batch_input_shape=[batch_size, None])]
        + [spec.cell.keras_layer(spec, tf_keras, stateful=True, recurrent_initializer="glorot_uniform")
           for spec in layers]
        + [tf_keras.layers.Dense(VOCAB)])


def test_a_tutorial_tf_checkpoint_of_any_stack_is_recognised(tmp_path):
    """tf_keras' save_weights, as the tutorial's ModelCheckpoint writes it, and its legacy .h5."""
    import tensorflow as tf

    model = tutorial_tf_keras_model(TUTORIAL_STACK)
    model(tf.zeros([1, 3], tf.int32))
    expected = weights_from_keras_model(model)
    assert expected.architecture().layers == TUTORIAL_STACK
    model.save_weights(str(tmp_path / "training_checkpoints" / "ckpt_1"))
    from_ckpt = weights_from_variables(tf_checkpoint_variables(str(tmp_path / "training_checkpoints" / "ckpt_1")),
                                       "ckpt_1")
    assert_same_weights(from_ckpt, expected)
    model.save_weights(str(tmp_path / "tutorial.h5"))
    assert_same_weights(weights_from_variables(h5_variables(tmp_path / "tutorial.h5"), "tutorial.h5"), expected)


def test_a_keras3_weights_h5_of_any_stack_is_recognised(tmp_path):
    arch = Architecture(VOCAB, EMBEDDING_DIM, TUTORIAL_STACK)
    model = build_keras_model(arch)
    set_keras_weights(model, random_weights(arch, seed=5))
    assert layer_names(arch) == ["lstm", "gru", "simple_rnn", "gru_1"]
    model.save_weights(str(tmp_path / "stack.weights.h5"))
    got = weights_from_variables(h5_variables(tmp_path / "stack.weights.h5"), "stack.weights.h5")
    assert_same_weights(got, weights_from_keras_model(model))


def test_equal_shapes_are_ordered_by_their_names(tmp_path):
    """gru(8) x2 on an 8-wide embedding: either order fits the shapes; Keras' names settle it."""
    arch = Architecture(VOCAB, 8, (LayerSpec("gru", 8), LayerSpec("gru", 8)))
    model = build_keras_model(arch)
    set_keras_weights(model, random_weights(arch, seed=6))
    model.save_weights(str(tmp_path / "two.weights.h5"))
    got = weights_from_variables(h5_variables(tmp_path / "two.weights.h5"), "two.weights.h5")
    assert_same_weights(got, weights_from_keras_model(model))


def test_a_bidirectional_layer_is_refused_naming_it(tmp_path):
    import keras
    import tensorflow as tf
    import tf_keras

    old = tf_keras.Sequential([tf_keras.layers.Embedding(VOCAB, EMBEDDING_DIM, batch_input_shape=[1, None]),
                               tf_keras.layers.Bidirectional(tf_keras.layers.GRU(6, return_sequences=True)),
                               tf_keras.layers.Dense(VOCAB)])
    old(tf.zeros([1, 2], tf.int32))
    old.save_weights(str(tmp_path / "bi" / "ckpt_1"))
    with pytest.raises(ModelError, match=r"^ckpt_1: the layer at 'layer_with_weights-1' is Bidirectional"):
        weights_from_variables(tf_checkpoint_variables(str(tmp_path / "bi" / "ckpt_1")), "ckpt_1")
    new = keras.Sequential([keras.layers.Input((None,), dtype="int32"), keras.layers.Embedding(VOCAB, EMBEDDING_DIM),
                            keras.layers.Bidirectional(keras.layers.LSTM(6, return_sequences=True)),
                            keras.layers.Dense(VOCAB)])
    new.save_weights(str(tmp_path / "bi.weights.h5"))
    with pytest.raises(ModelError, match=r"the layer at 'layers/bidirectional' is Bidirectional"):
        weights_from_variables(h5_variables(tmp_path / "bi.weights.h5"), "bi.weights.h5")
    with pytest.raises(ModelError, match=r"layer 'bidirectional' is a Bidirectional, not one of GRU, LSTM, SimpleRNN"):
        weights_from_keras_model(new)


def test_weights_of_no_char_model_are_refused_naming_what_was_found():
    rng = np.random.default_rng(0)
    attention = [("embedding/vars/0", rng.normal(size=(VOCAB, 8))),
                 ("attention/vars/0", rng.normal(size=(8, 8, 2))), ("dense/vars/0", rng.normal(size=(8, VOCAB))),
                 ("dense/vars/1", rng.normal(size=(VOCAB,)))]
    with pytest.raises(ModelError, match=r"weights of no known layer: attention \[\(8, 8, 2\)\]; "
                                         r"no recurrent layer"):
        weights_from_variables(attention, "x.weights.h5")
    arch = architecture("gru")
    weights = random_weights(arch)
    variables = [("embedding/vars/0", weights.embedding), ("dense/vars/0", weights.dense_kernel),
                 ("dense/vars/1", weights.dense_bias)]
    variables += [(f"gru/cell/vars/{i}", a) for i, a in enumerate(weights.layers[0].arrays())]
    assert_same_weights(weights_from_variables(variables, "x"), weights)
    unchained = [(n, a if n != "dense/vars/0" else a[:-1]) for n, a in variables]
    with pytest.raises(ModelError, match="do not chain from the embedding's 8 columns to the dense layer's 11 rows"):
        weights_from_variables(unchained, "x")
    two_denses = variables + [("dense_1/vars/0", weights.dense_kernel), ("dense_1/vars/1", weights.dense_bias)]
    with pytest.raises(ModelError, match=r"2 dense layers \(dense, dense_1\)"):
        weights_from_variables(two_denses, "x")


def test_the_current_tutorials_subclassed_model_with_two_layers_is_recognised(tmp_path):
    """The current tutorial's MyModel (Keras 3) with an LSTM and a GRU, saved as .weights.h5: its
    paths are attribute names (lstm/cell/vars/0, gru/cell/vars/0), alphabetical, not model order."""
    import keras

    class MyModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.embedding = keras.layers.Embedding(VOCAB, EMBEDDING_DIM)
            self.lstm = keras.layers.LSTM(10, return_sequences=True)
            self.gru = keras.layers.GRU(6, return_sequences=True)
            self.dense = keras.layers.Dense(VOCAB)

        def call(self, inputs):
            return self.dense(self.gru(self.lstm(self.embedding(inputs))))

    model = MyModel()
    model(np.zeros((1, 2), np.int32))
    expected = weights_from_keras_model(model)
    assert expected.architecture().describe() == "lstm(10) -> gru(6)"
    model.save_weights(str(tmp_path / "tutorial.weights.h5"))
    assert_same_weights(weights_from_variables(h5_variables(tmp_path / "tutorial.weights.h5"), "h5"), expected)


def test_a_keras_layer_the_step_does_not_compute_is_refused():
    import keras

    model = keras.Sequential([keras.layers.Input((None,), dtype="int32"), keras.layers.Embedding(VOCAB, 4),
                              keras.layers.GRU(6, activation="relu", return_sequences=True), keras.layers.Dense(VOCAB)])
    with pytest.raises(ModelError, match=r"the GRU layer 'gru\w*' has activation='relu'; only activation='tanh'"):
        weights_from_keras_model(model)


def test_every_registered_kind_is_tested_here():
    """A new kind's file registers it; this file's cases must then cover it."""
    assert sorted({spec.kind for layers in ARCHITECTURES.values() for spec in layers}) == kind_names()
