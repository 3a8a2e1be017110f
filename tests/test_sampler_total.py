"""The sampling rule is total (issue 18): on extreme floats (subnormal and huge logits, a top_p of
1e-46 or 1 - 1e-16, temperatures from 1e-6 to 1e30, top_k 1 or 2**31 - 1) numpy's choose, the
decode graph in onnxruntime and the web page's sampling.js (in Chromium) pick the same ids, in
range and never an exception, a warning or NaN.

The graph for arbitrary logits is decode.add_sampling over a step whose logits are its state
(so any logits can be fed); the tiny export's own decode.onnx is checked on its own logits with
the same extreme settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import chromium_browser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn_export import contract, rng, sampling
from charrnn_export.decode import decode_feeds

VOCAB = 65
F32 = np.finfo(np.float32)
LOGIT_VALUES = [0.0, -0.0, 1e-45, -1e-45, 1e-38, 1.0, -1.0, 88.0, -88.0, 1e30, -1e30, float(F32.max), -float(F32.max)]
TEMPERATURES = [1e-6, 1.0000001e-6, 1e-3, 0.7, 1.0, 3.0, 1e6, 1e29, 1e30]
TOP_PS = [None, 1e-46, 5e-324, 1e-45, 1.5e-45, 1e-30, 0.1, 0.5, 0.9, 1 - 1e-7, 1 - 1e-16, 1.0]
TOP_KS = [None, 1, 2, 3, VOCAB - 1, VOCAB, VOCAB + 1, 2**31 - 1]


@st.composite
def logits_rows(draw):
    """(VOCAB,) float32 logits: normal, tied, extreme and subnormal values, some -inf (masked)."""
    kind = draw(st.sampled_from(["normal", "extreme", "ties", "mixed"]))
    seed = draw(st.integers(0, 2**32 - 1))
    gen = np.random.default_rng(seed)
    if kind == "normal":
        row = gen.standard_normal(VOCAB) * draw(st.sampled_from([1e-6, 1.0, 10.0, 1e6]))
    elif kind == "extreme":
        row = gen.choice(LOGIT_VALUES, VOCAB)
    elif kind == "ties":
        row = np.full(VOCAB, draw(st.sampled_from(LOGIT_VALUES)))
        row[gen.integers(0, VOCAB, 3)] = draw(st.sampled_from(LOGIT_VALUES))
    else:
        row = np.where(gen.random(VOCAB) < 0.5, gen.choice(LOGIT_VALUES, VOCAB), gen.standard_normal(VOCAB))
    row = row.astype(np.float32)
    masked = gen.random(VOCAB) < draw(st.sampled_from([0.0, 0.1, 0.9]))
    masked[gen.integers(0, VOCAB)] = False  # at least one id stays possible
    row[masked] = -np.inf
    return row


@st.composite
def cases(draw):
    temperature = draw(st.one_of(st.sampled_from(TEMPERATURES), st.floats(1e-6, 1e30)))
    config = sampling.SamplingConfig(temperature, draw(st.sampled_from(TOP_KS)), draw(st.sampled_from(TOP_PS)),
                                     draw(st.booleans()) and draw(st.booleans()))
    return draw(logits_rows()), config.validate(), draw(st.integers(0, 2**32 - 1))


def host_ids(logits, config, seed, steps=3) -> list[int]:
    """numpy's choice, `steps` times from one stream, with numpy's warnings raised as errors."""
    stream, settings_ = rng.Stream(seed), sampling.Settings.of([config])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        return [int(sampling.choose(logits[None], settings_, stream.random(1))[0]) for _ in range(steps)]


def logits_step_model():
    """A step model whose logits are its state: add_sampling over it samples any logits fed in."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [contract.STATE], [contract.LOGITS]),
         helper.make_node("Identity", [contract.STATE], [contract.STATE_OUT]),
         helper.make_node("Cast", [contract.TOKEN], ["unused"], to=TensorProto.FLOAT)],
        "logits_as_state",
        [helper.make_tensor_value_info(contract.TOKEN, TensorProto.INT32, ["batch"]),
         helper.make_tensor_value_info(contract.STATE, TensorProto.FLOAT, ["batch", VOCAB])],
        [helper.make_tensor_value_info(contract.LOGITS, TensorProto.FLOAT, ["batch", VOCAB]),
         helper.make_tensor_value_info(contract.STATE_OUT, TensorProto.FLOAT, ["batch", VOCAB]),
         helper.make_tensor_value_info("unused", TensorProto.FLOAT, ["batch"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def graph():
    import onnxruntime as ort

    from charrnn_export.decode import add_sampling

    decode = add_sampling(logits_step_model(), VOCAB)
    return ort.InferenceSession(decode.SerializeToString(), providers=["CPUExecutionProvider"])


def graph_ids(session, batch) -> list[list[int]]:
    """All cases in one call per step: each row its own logits, settings and stream."""
    logits = np.stack([c[0] for c in batch])
    settings_ = sampling.Settings.of([c[1] for c in batch])
    streams = [rng.Stream(c[2]) for c in batch]
    out = []
    for _ in range(3):
        uniforms = np.array([s.random(1)[0] for s in streams])
        ids, = session.run([contract.NEXT_TOKEN], decode_feeds(np.zeros(len(batch), np.int32), logits, settings_, uniforms))
        out.append(ids.tolist())
    return [list(row) for row in zip(*out)]


SAMPLING_JS = Path(__file__).resolve().parent.parent / "charrnn_export" / "web" / "static" / "sampling.js"


@pytest.fixture(scope="module")
def js_page():
    """One Chromium for the module; sampling.js's functions evaluated in a blank page."""
    with chromium_browser() as browser:
        page = browser.new_page()
        page.goto("about:blank")
        source = SAMPLING_JS.read_text(encoding="utf-8").replace("export ", "")
        page.evaluate(f"() => {{ {source}\n window.sampling = {{ choose, Stream }}; }}")
        yield page
        page.close()


def js_ids(page, batch) -> list[list[int]]:
    payload = [{"logits": [float(x) if np.isfinite(x) else None for x in c[0]], "seed": c[2],
                "settings": {"temperature": c[1].temperature, "topK": c[1].top_k or 0,
                             "topP": 1.0 if c[1].top_p is None else c[1].top_p, "greedy": c[1].greedy}}
               for c in batch]
    return page.evaluate("""(cases) => cases.map((c) => {
        const logits = Float32Array.from(c.logits, (x) => (x === null ? -Infinity : x));
        const stream = new window.sampling.Stream(c.seed);
        return [0, 1, 2].map(() => window.sampling.choose(logits, c.settings, stream));
    })""", payload)


def assert_possible(ids, logits):
    for token in ids:
        assert 0 <= token < VOCAB and np.isfinite(logits[token]) or np.all(~np.isfinite(logits)), (token, logits)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(batch=st.lists(cases(), min_size=1, max_size=40))
def test_numpy_the_decode_graph_and_the_page_pick_the_same_ids(batch, graph, js_page):
    host = [host_ids(*case) for case in batch]
    for ids, case in zip(host, batch):
        assert_possible(ids, case[0])
        if case[1].greedy or (case[1].top_p is not None and np.float32(case[1].top_p) == 0):
            assert ids == [int(np.argmax(case[0]))] * 3  # greedy, and a top_p that rounds to 0 is greedy
    assert graph_ids(graph, batch) == host
    assert js_ids(js_page, batch) == host


def test_the_named_extremes_pick_the_same_ids(graph, js_page):
    """The issue's cases by name, so that they are always run, not only when hypothesis draws them."""
    gen = np.random.default_rng(7)
    logits = (gen.standard_normal(VOCAB) * 3).astype(np.float32)
    batch = [(logits, sampling.SamplingConfig(t, k, p).validate(), seed)
             for seed, (t, k, p) in enumerate([(1.0, None, 1e-46), (1e-6, None, None), (1e30, None, None),
                                               (1.0, 1, None), (1.0, 2**31 - 1, 1 - 1e-16), (1.0, None, 5e-324),
                                               (1e-6, 2**31 - 1, 1e-46), (1e30, 1, 1 - 1e-16)])]
    host = [host_ids(*case) for case in batch]
    greedy = int(np.argmax(logits))
    assert host[0] == host[1] == host[3] == host[5] == [greedy] * 3
    assert graph_ids(graph, batch) == host
    assert js_ids(js_page, batch) == host


@pytest.mark.parametrize("top_p,temperature,top_k", [(1e-46, 1.0, None), (1 - 1e-16, 1e30, None),
                                                     (1e-45, 1e-6, 1), (0.9, 1e-6, 2**31 - 1)])
def test_the_tiny_exports_decode_model_agrees_on_extreme_settings(tiny_export, top_p, temperature, top_k):
    """decode.onnx of a real export (its own logits) against its step model + numpy's choose."""
    import onnxruntime as ort

    decode = ort.InferenceSession(str(tiny_export / "decode.onnx"), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
    units, vocab = step.get_inputs()[1].shape[1], step.get_outputs()[0].shape[1]
    batch = 16
    gen = np.random.default_rng(0)
    settings_ = sampling.Settings.of([sampling.SamplingConfig(temperature, top_k, top_p).validate()] * batch)
    tokens = gen.integers(0, vocab, batch).astype(np.int32)
    state = gen.uniform(-1, 1, (batch, units)).astype(np.float32)
    for _ in range(20):
        uniforms = gen.random(batch)
        ids, new_state = decode.run([contract.NEXT_TOKEN, contract.STATE_OUT],
                                    decode_feeds(tokens, state, settings_, uniforms))
        logits, _ = step.run([contract.LOGITS, contract.STATE_OUT], {contract.TOKEN: tokens, contract.STATE: state})
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            expected = sampling.choose(logits, settings_, uniforms)
        np.testing.assert_array_equal(ids, expected)
        assert ((0 <= ids) & (ids < vocab)).all()
        tokens, state = ids, new_state
