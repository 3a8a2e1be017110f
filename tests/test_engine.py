"""The decode engine: decode models (sampling in the graph) against the host sampler, the
sampling rule's distribution, slots and continuous batching, and Generator on top of them."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import onnx
import pytest

from charrnn_export import Generator, contract, host_sampler
from charrnn_export.engine import (CANCELLED, LENGTH, DecodeBackend, Engine, HostSampler, OneRowBackend,
                                   backend_factory, drive_tokens)
from charrnn_export.errors import ModelError
from charrnn_export.rng import Stream, uniforms
from charrnn_export.runtimes.onnx import OnnxRuntime
from charrnn_export.runtimes.onnx_decode import BlockDecoder, OnnxDecoder
from charrnn_export.sampling import SamplingConfig, Settings, choose, softmax_reference

MIXED = [SamplingConfig(), SamplingConfig(0.6), SamplingConfig(1.4, top_k=3), SamplingConfig(top_p=0.8),
         SamplingConfig(0.9, top_k=10, top_p=0.95), SamplingConfig(greedy=True), SamplingConfig(0.3, top_k=1)]


# ---------------------------------------------------------------- the decode model


@pytest.mark.parametrize("step_name", ["model.onnx", "model.int8.onnx"])
def test_decode_model_picks_the_numpy_samplers_ids_over_thousands_of_characters(tiny_export, step_name):
    import onnxruntime as ort

    decode_path = tiny_export / contract.DECODE_FILES[step_name]
    step = ort.InferenceSession(str(tiny_export / step_name), providers=["CPUExecutionProvider"])
    decode = ort.InferenceSession(str(decode_path), providers=["CPUExecutionProvider"])
    rows = 48
    settings = Settings.of([MIXED[row % len(MIXED)] for row in range(rows)])
    tokens = np.arange(rows, dtype=np.int32) % 20
    state = np.zeros((rows, 32), np.float32)
    agree = 0
    for t in range(120):  # 5,760 characters
        u = uniforms(np.arange(rows), np.full((rows, 1), t))[:, 0]
        ids, new_state = decode.run([contract.NEXT_TOKEN, contract.STATE_OUT], {
            "token": tokens, "state": state, "temperature": settings.temperature, "top_k": settings.top_k,
            "top_p": settings.top_p, "greedy": settings.greedy, "uniform": u, "reset": np.zeros(rows, bool)})
        logits, ref_state = step.run(["logits", "state_out"], {"token": tokens, "state": state})
        agree += int(np.sum(choose(logits, settings, u) == ids))
        np.testing.assert_array_equal(new_state, ref_state)
        tokens, state = ids, new_state
    assert agree == rows * 120


def test_export_reports_decode_parity(tiny_export):
    import json

    report = json.loads((tiny_export / "export_report.json").read_text())
    for name in ("decode.onnx", "decode.int8.onnx"):
        assert report["decode"][name]["mismatched_ids"] == 0
        assert report["decode"][name]["chars"] >= 1000


def test_reset_input_starts_a_row_from_a_zero_state(tiny_export):
    import onnxruntime as ort

    decode = ort.InferenceSession(str(tiny_export / "decode.onnx"), providers=["CPUExecutionProvider"])
    settings = Settings.of([SamplingConfig(greedy=True)] * 2)
    feeds = {"token": np.array([3, 3], np.int32), "state": np.ones((2, 32), np.float32),
             "temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p,
             "greedy": settings.greedy, "uniform": np.zeros(2), "reset": np.array([True, False])}
    state = decode.run(["state_out"], feeds)[0]
    zero = decode.run(["state_out"], {**feeds, "state": np.zeros((2, 32), np.float32)})[0]
    np.testing.assert_array_equal(state[0], zero[0])
    assert not np.array_equal(state[1], zero[1])


# ---------------------------------------------------------------- the rule's distribution


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic over the ids with expected count >= 5, pooling the rest."""
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    return float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep])), int(keep.sum() - 1)


CHI2_999 = {k: v for k, v in [(1, 10.8), (2, 13.8), (3, 16.3), (4, 18.5), (5, 20.5), (6, 22.5), (7, 24.3),
                              (8, 26.1), (9, 27.9), (10, 29.6)]}


def critical(dof: int) -> float:
    """chi-square 99.9% point (Wilson-Hilferty beyond the table)."""
    if dof in CHI2_999:
        return CHI2_999[dof]
    z = 3.09
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("config", [SamplingConfig(), SamplingConfig(0.5), SamplingConfig(2.0, top_k=4),
                                    SamplingConfig(top_p=0.7), SamplingConfig(0.8, top_k=6, top_p=0.9)])
def test_sampled_frequencies_follow_the_restricted_softmax(config):
    logits = np.random.default_rng(1).normal(0, 1.5, (1, 12)).astype(np.float32)
    draws = 20_000
    ids = choose(np.repeat(logits, draws, axis=0), Settings.of([config] * draws), Stream(5).random(draws))
    counts = np.bincount(ids, minlength=12)
    right = softmax_reference(logits[0], config)
    assert counts[right == 0].sum() == 0  # nothing outside the top-k / top-p cut
    stat, dof = chi_square(counts, right)
    assert stat < critical(dof), (stat, dof)
    # The same test has the power to see a wrong temperature or a wrong cut.
    wrong = SamplingConfig(config.temperature * 1.5, config.top_k, config.top_p)
    if config.top_k:
        wrong = SamplingConfig(config.temperature, config.top_k + 1, config.top_p)
    stat_wrong, dof_wrong = chi_square(counts, softmax_reference(logits[0], wrong))
    assert stat_wrong > critical(dof_wrong) or counts[softmax_reference(logits[0], wrong) == 0].sum() > 0


# ---------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def backends(tiny_export):
    step = OnnxRuntime(tiny_export / "model.onnx")
    return {
        "host": lambda capacity: HostSampler(step, capacity),
        "graph": lambda capacity: OnnxDecoder(tiny_export / "decode.onnx", capacity),
        "block-1": lambda capacity: BlockDecoder(tiny_export / "decode.onnx", capacity, steps=1, device="cpu"),
        "block-4": lambda capacity: BlockDecoder(tiny_export / "decode.onnx", capacity, steps=4, device="cpu"),
    }


@pytest.mark.parametrize("kind", ["host", "graph", "block-1", "block-4"])
def test_every_backend_has_the_decode_backend_protocol(backends, kind):
    backend = backends[kind](4)
    assert isinstance(backend, DecodeBackend), kind
    assert backend.capacity >= 4 and backend.steps >= 1 and len(backend.vocab) == backend.config["vocab_size"]
    # The batch-1 fast path: the one-step backends that have it, never a K-step one.
    assert isinstance(backend, OneRowBackend) == (kind in ("host", "graph")), kind
    assert Engine(backend)._one_row == (kind in ("host", "graph")), kind


def test_a_backend_without_decode_is_not_one():
    class NoDecode:
        capacity, steps, vocab, config = 1, 1, None, {}

    assert not isinstance(NoDecode(), DecodeBackend)


@pytest.mark.parametrize("sampler, expected", [("host", HostSampler), ("auto", HostSampler), ("graph", OnnxDecoder)])
def test_backend_factory_is_where_the_backend_is_chosen(tiny_export, sampler, expected):
    step = OnnxRuntime(tiny_export / "model.onnx")
    assert type(backend_factory(step, "onnx", sampler, "cpu")(2)) is expected
    assert type(Generator.load(str(tiny_export), sampler=sampler).backend(2)) is expected
    assert type(Generator(step).backend(2)) is HostSampler  # no factory given: the host sampler


def test_backend_factory_without_a_decode_model_for_graph_is_a_model_error(tiny_export, tmp_path):
    shutil.copy(tiny_export / "model.onnx", tmp_path / "model.onnx")
    step = OnnxRuntime(tmp_path / "model.onnx")
    assert type(backend_factory(step, "onnx", "auto", "cpu")(1)) is HostSampler
    with pytest.raises(ModelError, match="no decode model beside"):
        backend_factory(step, "onnx", "graph", "cpu")


def run_all(engine: Engine) -> tuple[dict[int, list[int]], dict[int, str]]:
    texts: dict[int, list[int]] = {}
    reasons: dict[int, str] = {}
    while engine.has_work():
        for rid, token, reason in engine.step():
            if reason is None:
                texts.setdefault(rid, []).append(token)
            else:
                reasons[rid] = reason
    return texts, reasons


def alone(make_backend, start_ids, length, config, seed) -> list[int]:
    engine = Engine(make_backend(1))
    rid = engine.submit(start_ids, length, config, seed)
    return run_all(engine)[0].get(rid, [])


@pytest.mark.parametrize("kind", ["host", "graph", "block-1", "block-4"])
def test_a_seeded_request_gives_the_same_ids_alone_or_among_255_others(backends, kind):
    rng = np.random.default_rng(3)
    requests = [(rng.integers(1, 40, rng.integers(1, 12)).astype(np.int32), int(rng.integers(0, 40)),
                 MIXED[i % len(MIXED)], int(rng.integers(0, 2**32))) for i in range(256)]
    engine = Engine(backends[kind](256))
    rids = [engine.submit(*request) for request in requests]
    texts, reasons = run_all(engine)
    assert set(reasons.values()) == {LENGTH} and len(reasons) == 256
    for index in (0, 1, 5, 77, 255):
        assert texts.get(rids[index], []) == alone(backends[kind], *requests[index]), index
    assert [len(texts.get(rid, [])) for rid in rids] == [r[1] for r in requests]


PLAIN = [SamplingConfig(), SamplingConfig(0.6), SamplingConfig(1.7), SamplingConfig(top_k=10**6),
         SamplingConfig(top_p=1.0)]  # what the engine's blocks take: no greedy row, no cut


class NoShortPath:
    """A host sampler seen without decode_block: the engine takes its general path, one step a call."""

    def __init__(self, backend):
        self.backend = backend
        self.capacity, self.steps, self.vocab, self.config = backend.capacity, 1, backend.vocab, backend.config

    def decode(self, *args):
        return self.backend.decode(*args)


def test_the_blocks_for_plain_rows_give_the_general_paths_ids(backends):
    """All rows plain: the engine's blocks (HostSampler.decode_block, sampling.choose_plain) make
    the ids the general path and the decode graph make, with rows that end, rows that take the
    freed slots and holes in between."""
    rng = np.random.default_rng(8)
    requests = [(rng.integers(1, 40, rng.integers(1, 6)).astype(np.int32), int(rng.integers(1, 90)),
                 PLAIN[i % len(PLAIN)], int(rng.integers(0, 2**32))) for i in range(40)]
    results = []
    for make in (backends["host"], lambda capacity: NoShortPath(backends["host"](capacity)), backends["graph"]):
        engine = Engine(make(16))
        assert engine._blocks == (make is backends["host"])
        rids = [engine.submit(*request) for request in requests]
        texts, reasons = run_all(engine)
        assert set(reasons.values()) == {LENGTH}
        results.append([texts.get(rid, []) for rid in rids])
    assert results[0] == results[1] == results[2]
    assert [len(t) for t in results[0]] == [r[1] for r in requests]


class BreaksAt:
    """A host sampler's runtime whose logits for row `row` become NaN at step `step`."""

    def __init__(self, runtime, step: int, row: int):
        self.runtime, self.at, self.row, self.calls = runtime, step, row, 0
        self.name, self.vocab, self.config = runtime.name, runtime.vocab, runtime.config
        self.zero_state = runtime.zero_state

    def step(self, tokens, state):
        logits, state = self.runtime.step(tokens, state)
        self.calls += 1
        if self.calls == self.at:
            logits[self.row, 3] = np.nan
        return logits, state


def test_a_row_with_nan_logits_on_the_short_path_ends_alone(tiny_export):
    step = OnnxRuntime(tiny_export / "model.onnx")
    engine = Engine(HostSampler(BreaksAt(step, step=6, row=1), 3))
    rids = [engine.submit([5], 20, SamplingConfig(), seed) for seed in (1, 2, 3)]
    texts, reasons = run_all(engine)
    assert reasons == {rids[0]: LENGTH, rids[1]: "nonfinite", rids[2]: LENGTH}
    assert len(texts[rids[1]]) == 5 and len(texts[rids[0]]) == len(texts[rids[2]]) == 20
    assert texts[rids[0]] == alone(lambda c: HostSampler(step, c), [5], 20, SamplingConfig(), 1)


def run_tokens(engine: Engine, take: int | None = None, endings: list | None = None) -> dict[int, list[int]]:
    """drive_tokens (the Python API's driver, with Engine.run_alone) until done, or `take` ids."""
    texts: dict[int, list[int]] = {}
    for count, (rid, token) in enumerate(drive_tokens(engine, (endings if endings is not None else []).extend)):
        texts.setdefault(rid, []).append(token)
        if take is not None and count + 1 == take:
            break
    return texts


@pytest.mark.parametrize("kind", ["host", "graph"])
@pytest.mark.parametrize("config", MIXED)
def test_a_request_running_alone_gives_the_steps_ids(backends, kind, config):
    """Engine.run_alone (batch 1, no arrays per step) makes the ids that step() makes, over runs
    longer than its chunk of numbers and the random blocks, and ends with "length"."""
    for start, length in (([5], 1), ([5, 6, 7], 2), ([9], 600)):
        engine = Engine(backends[kind](1))
        rid = engine.submit(start, length, config, 21)
        steps, step_arrays = [], engine.step_arrays
        engine.step_arrays = lambda: steps.append(1) or step_arrays()
        endings = []
        assert run_tokens(engine, endings=endings).get(rid, []) == alone(backends[kind], start, length, config, 21)
        assert [(e.rid, e.finish) for e in endings] == [(rid, "length")] and not engine.has_work()
        assert len(steps) <= len(start) + 1  # reading the start, then run_alone to the end


def test_requests_that_join_or_leave_a_running_alone_request_change_none_of_the_ids(backends):
    """A request submitted or cancelled while another runs alone, and a driver dropped half way and
    taken up again: each request's ids are still its own (unread numbers are given back)."""
    make, first, second = backends["host"], ([5], 500, SamplingConfig(0.8), 4), ([6, 7], 120, SamplingConfig(), 9)
    engine = Engine(make(2))
    a = engine.submit(*first)
    texts = run_tokens(engine, take=70)  # then the driver is dropped mid-chunk
    texts[a] += run_tokens(engine, take=30)[a]
    b = engine.submit(*second)
    for rid, ids in run_tokens(engine).items():
        texts.setdefault(rid, []).extend(ids)
    assert texts[a] == alone(make, *first) and texts[b] == alone(make, *second)
    engine = Engine(make(1))
    a = engine.submit(*first)
    made = run_tokens(engine, take=40)[a]
    engine.cancel(a)
    endings = []
    assert run_tokens(engine, endings=endings) == {} and [(e.rid, e.finish) for e in endings] == [(a, "abort")]
    assert made == alone(make, *first)[:40]


class WithoutBoundStep:
    """An onnx runtime seen without bound_step: the host sampler takes PlainStep (runtime.step)."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.name, self.vocab, self.config = runtime.name, runtime.vocab, runtime.config
        self.zero_state = runtime.zero_state

    def step(self, tokens, state):
        return self.runtime.step(tokens, state)


def test_the_bound_step_computes_what_step_computes_as_the_rows_change(tiny_export):
    """runtimes.onnx.BoundStep (IO binding, two state buffers taking turns, bound again when the
    rows change) against plain step() calls on the same tokens and states. Rows that come back
    after a step without them start from zero, as the engine's new requests do (reset)."""
    step = OnnxRuntime(tiny_export / "model.int8.onnx")
    bound = step.bound_step(6)
    rng = np.random.default_rng(2)
    state = step.zero_state(6)
    before = 6
    for rows in (6, 6, 3, 3, 1, 6, 2, 2):
        if rows > before:  # the rows a step left out hold nothing in use: a new request resets them
            state[before:rows] = bound.state[before:rows] = 0.0
        before = rows
        tokens = rng.integers(0, len(step.vocab), rows).astype(np.int32)
        bound.tokens[:rows] = tokens
        logits = bound.run(rows).copy()
        expected_logits, expected_state = step.step(tokens, state[:rows].copy())
        state[:rows] = expected_state
        np.testing.assert_array_equal(logits, expected_logits)
        np.testing.assert_array_equal(bound.state[:rows], expected_state)


def test_the_host_sampler_gives_the_same_ids_with_the_bound_step_or_plain_steps(tiny_export):
    step = OnnxRuntime(tiny_export / "model.onnx")
    rng = np.random.default_rng(12)
    requests = [(rng.integers(1, 40, rng.integers(1, 5)).astype(np.int32), int(rng.integers(1, 60)),
                 MIXED[i % len(MIXED)], int(rng.integers(0, 2**32))) for i in range(30)]
    results = []
    for runtime in (step, WithoutBoundStep(step)):
        engine = Engine(HostSampler(runtime, 8))
        assert (type(engine.backend.stepper).__name__ == "BoundStep") == (runtime is step)
        rids = [engine.submit(*request) for request in requests]
        texts, reasons = run_all(engine)
        assert set(reasons.values()) == {LENGTH}
        results.append([texts.get(rid, []) for rid in rids])
    assert results[0] == results[1]


def test_nan_logits_while_running_alone_end_the_request_as_an_error(tiny_export):
    step = OnnxRuntime(tiny_export / "model.onnx")
    engine = Engine(HostSampler(BreaksAt(step, step=12, row=0), 1))
    rid = engine.submit([5, 6], 50, SamplingConfig(), 3)
    endings = []
    texts = run_tokens(engine, endings=endings)
    assert [(e.rid, e.finish) for e in endings] == [(rid, "error")] and "NaN" in endings[0].cause
    assert texts[rid] == alone(lambda c: HostSampler(step, c), [5, 6], 50, SamplingConfig(), 3)[:10]
    assert not engine.has_work()


def test_every_backend_makes_the_same_text(backends):
    requests = [(np.array([5, 6, 7], np.int32), 60, config, 11 + i) for i, config in enumerate(MIXED)]
    results = []
    for make in backends.values():
        engine = Engine(make(len(requests)))
        rids = [engine.submit(*r) for r in requests]
        texts = run_all(engine)[0]
        results.append([texts[rid] for rid in rids])
    assert all(r == results[0] for r in results[1:])


@pytest.mark.parametrize("kind, freed, first", [("graph", 4, 5), ("host", 1, 2)])
def test_a_finished_request_frees_its_slot_for_a_waiting_one_at_the_next_step(backends, kind, freed, first):
    """One step per call (the decode graph), or the host sampler's blocks: the short request is
    done in the first block (of 16 sub-steps), and the waiting one joins at the next call."""
    engine = Engine(backends[kind](2))
    short = engine.submit([1, 2], 3, SamplingConfig(), 1)  # busy for 2 + 3 - 1 = 4 steps
    long_ = engine.submit([1], 20, SamplingConfig(), 2)
    waiting = engine.submit([4], 5, SamplingConfig(), 3)
    first_token_step = None
    for step in range(1, 12):
        events = engine.step()
        assert engine.busy_count <= 2
        if any(rid == short and reason == LENGTH for rid, _, reason in events):
            assert engine.busy_count == 1 and engine.waiting_count == 1
            freed_at = step
        if first_token_step is None and any(rid == waiting and reason is None for rid, _, reason in events):
            first_token_step = step
    assert freed_at == freed
    assert first_token_step == first  # admitted at the next call with a one-character start: its first character then
    assert long_ is not None


def test_cancel_frees_the_slot_at_once(backends):
    engine = Engine(backends["graph"](1))
    running = engine.submit([1, 2, 3], 1000, SamplingConfig(), 1)
    queued = engine.submit([1], 4, SamplingConfig(greedy=True), 2)
    engine.step()
    engine.cancel(running)
    events = engine.step()
    assert (running, -1, CANCELLED) in events
    assert engine.busy_count == 1  # the queued request took the slot in the same step
    texts, reasons = run_all(engine)
    assert reasons[queued] == LENGTH and len(texts[queued]) + sum(1 for e in events if e[0] == queued) == 4


def test_zero_length_requests_end_without_a_slot(backends):
    engine = Engine(backends["host"](1))
    rid = engine.submit([1], 0, SamplingConfig(), 1)
    assert engine.step() == [(rid, -1, LENGTH)]
    assert not engine.has_work()


# ---------------------------------------------------------------- Generator over the engine


def test_generator_text_is_the_same_with_the_sampler_in_the_graph_or_on_the_host(tiny_export):
    host = Generator.load(str(tiny_export), sampler="host")
    graph = Generator.load(str(tiny_export), sampler="graph")
    for kwargs in [dict(seed=1), dict(temperature=0.7, top_k=5, seed=2), dict(top_p=0.85, seed=3), dict(greedy=True)]:
        assert host.generate("ROMEO: ", 300, **kwargs) == graph.generate("ROMEO: ", 300, **kwargs)
    assert host.generate_batch(["A", "BB", "ROMEO: "], 100, seed=9) == graph.generate_batch(["A", "BB", "ROMEO: "], 100, seed=9)


def test_an_int8_rows_logits_do_not_depend_on_the_rest_of_its_batch(tiny_export):
    """int8.py quantises each row's activations on its own (a fixed scale), so a row computed in
    a batch of 64 gives bit for bit what it gives alone: with one scale per batch (onnxruntime's
    DynamicQuantizeLinear) it would not, and a row's text would depend on its neighbours."""
    step = OnnxRuntime(tiny_export / "model.int8.onnx")
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, step.vocab_size, 64).astype(np.int32)
    state = np.tanh(rng.standard_normal((64, step.rnn_units))).astype(np.float32)
    state[7] *= 0.01  # a row with a far narrower range than the others
    logits, new_state = step.step(tokens, state)
    for row in (0, 7, 63):
        alone_logits, alone_state = step.step(tokens[row:row + 1], state[row:row + 1])
        assert np.array_equal(alone_logits[0], logits[row]) and np.array_equal(alone_state[0], new_state[row]), row


@pytest.mark.parametrize("model", ["model.onnx", "model.int8.onnx"])
def test_generate_batch_row_i_is_generate_with_seed_plus_i(tiny_export, model):
    g = Generator.load(str(tiny_export / model))
    batch = g.generate_batch(["ROMEO: ", "JULIET: ", "A"], 150, temperature=0.9, seed=2**32 - 2)
    assert batch == [g.generate("ROMEO: ", 150, temperature=0.9, seed=2**32 - 2),
                     g.generate("JULIET: ", 150, temperature=0.9, seed=2**32 - 1),
                     g.generate("A", 150, temperature=0.9, seed=0)]


def test_an_export_without_decode_models_samples_on_the_host(tiny_export, tmp_path):
    for name in ("model.onnx", "vocab.json"):
        shutil.copy(tiny_export / name, tmp_path / name)
    g = Generator.load(str(tmp_path))
    assert g.generate("ROMEO: ", 50, seed=4) == Generator.load(str(tiny_export), sampler="graph").generate("ROMEO: ", 50, seed=4)
    with pytest.raises(ModelError, match="no decode model"):
        Generator.load(str(tmp_path), sampler="graph")


@pytest.mark.parametrize("sampler", ["host", "graph"])
@pytest.mark.parametrize("greedy", [False, True])
def test_nan_logits_stop_generation_with_a_message(tiny_export, tmp_path, sampler, greedy):
    from onnx import numpy_helper

    from charrnn_export.decode import write_decode_model

    model = onnx.load(str(tiny_export / "model.onnx"))
    for init in model.graph.initializer:
        if init.name == "dense_bias":
            init.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(init).shape, np.nan, np.float32),
                                                  init.name))
    onnx.save(model, str(tmp_path / "model.onnx"))

    write_decode_model(tmp_path / "model.onnx", tmp_path / "decode.onnx")
    g = Generator.load(str(tmp_path), sampler=sampler)
    with pytest.raises(ModelError, match="NaN or infinite"):
        g.generate("ROMEO: ", 20, greedy=greedy, seed=1)


def test_the_gpu_graph_built_from_the_step_model_gives_the_host_samplers_text(tiny_export, backends):
    """BlockDecoder.for_gpu (native GRU op, fp32, several steps per call), run here on the CPU."""
    gpu_graph = lambda capacity: BlockDecoder.for_gpu(tiny_export / "model.onnx", capacity, steps=3,  # noqa: E731
                                                      precision="fp32", device="cpu")
    plain = [SamplingConfig(), SamplingConfig(0.6), SamplingConfig(greedy=True), SamplingConfig(1.7)]
    for configs in (MIXED, plain):  # the full graph, then the one without top-k/top-p
        requests = [(np.array([5, 6, 7, 8], np.int32), 40, config, 21 + i) for i, config in enumerate(configs)]
        texts = []
        for make in (backends["host"], gpu_graph):
            engine = Engine(make(len(requests)))
            rids = [engine.submit(*r) for r in requests]
            made = run_all(engine)[0]
            texts.append([made[rid] for rid in rids])
        assert texts[0] == texts[1]


def test_generate_from_several_threads_at_once_gives_each_its_own_text(tiny_export):
    from concurrent.futures import ThreadPoolExecutor

    g = Generator.load(str(tiny_export))
    jobs = [("ROMEO: ", 200, dict(temperature=0.9, seed=s)) for s in range(12)]
    expected = [g.generate(start, n, **kw) for start, n, kw in jobs]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda job: g.generate(job[0], job[1], **job[2]), jobs))
    assert got == expected


# ---------------------------------------------------------------- blocks of steps and lanes


def lanes_of(tiny_export, name="model.int8.onnx", threads=3):
    """A host sampler whose blocks split 64 rows into `threads` lanes (threads given at load, so
    the split does not depend on this machine's CPUs)."""
    return lambda capacity: HostSampler(OnnxRuntime(tiny_export / name, threads=threads), capacity)


def plain_requests(seed: int, count: int) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.integers(1, 40, rng.integers(1, 4)).astype(np.int32), int(rng.integers(1, 70)),
             PLAIN[i % len(PLAIN)], int(rng.integers(0, 2**32))) for i in range(count)]


def test_lane_bounds_cover_the_rows_in_even_runs():
    from charrnn_export.host_sampler import lane_bounds

    assert lane_bounds(64, 3) == [(0, 21), (21, 42), (42, 64)]
    assert lane_bounds(32, 2) == [(0, 16), (16, 32)]
    for rows, lanes in ((33, 2), (256, 16), (100, 7)):
        bounds = lane_bounds(rows, lanes)
        assert bounds[0][0] == 0 and bounds[-1][1] == rows and len(bounds) == lanes
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_pieces_hand_rows_to_a_lane_that_asks_and_end_when_no_lane_steps_rows():
    from charrnn_export.host_sampler import At, Pieces

    pieces = Pieces(2)
    assert not pieces.wanted()
    taken = []
    asker = threading.Thread(target=lambda: taken.append(pieces.take()))  # lane 1: its own rows are done
    asker.start()
    while not pieces.wanted():
        time.sleep(0.001)
    pieces.give((32, 64, 5, At(1)))  # lane 0 gives the back half of its rows from sub-step 5
    asker.join(5)
    assert taken == [(32, 64, 5, At(1))] and not pieces.wanted()
    done = []
    asker = threading.Thread(target=lambda: done.append(pieces.take()))  # lane 1 done again
    asker.start()
    while not pieces.wanted():
        time.sleep(0.001)
    assert pieces.take() is None  # lane 0 done: nobody steps rows, so nobody gets more
    asker.join(5)
    assert done == [None]
    failing = Pieces(2)
    failing.fail()  # lane 0 raised: lane 1, done, waits for nothing
    assert failing.take() is None


@pytest.mark.parametrize("name,slow", [("model.onnx", False), ("model.int8.onnx", False),
                                       ("model.int8.onnx", True)])
def test_a_block_in_lanes_computes_what_one_step_at_a_time_computes(tiny_export, name, slow, monkeypatch):
    """decode_block over 64 rows in 3 lanes (each its own session and thread) against decode (the
    general rule, sampling.choose) step by step on the runtime's own session: the same ids and the
    same state; also with lane 0 slowed, so that the other lanes take rows from it mid-block."""
    make = lanes_of(tiny_export, name)
    rows, steps = 64, 9
    blocked, stepped = make(rows), make(rows)
    if slow:
        monkeypatch.setattr(host_sampler, "STEAL_ROWS", 4)
        blocked._lanes_for(rows)
        first = blocked._lanes[1][0][0]
        run = first.run
        monkeypatch.setattr(first, "run", lambda count: time.sleep(0.02) or run(count))
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, len(blocked.vocab), rows).astype(np.int32)
    temperature = rng.uniform(0.5, 1.5, rows).astype(np.float32)
    numbers = rng.random((rows, steps))
    for backend in (blocked, stepped):
        backend.state[:rows] = rng.standard_normal((rows, backend.state.shape[1])).astype(np.float32) * 0.1
        stepped.state[:rows] = blocked.state[:rows]
    forced = np.full((rows, steps), -1, np.int32)
    ids = blocked.decode_block(rows, forced, tokens, temperature, numbers, np.zeros(rows, bool))
    assert blocked._lanes[0] == (rows, 3) and len(blocked._lanes[1]) == 3  # the block ran in 3 lanes
    assert (len(blocked._piece_steps) > 3) == slow  # rows changed lanes (each piece has its step)
    settings = Settings.empty(rows)
    settings.temperature[:] = temperature
    no_reset, feed_back = np.zeros(rows, bool), np.full((rows, 1), -1, np.int32)

    def one_step(backend, last, column):
        return backend.decode(rows, feed_back, last, settings, numbers[:, column:column + 1], no_reset)[:, 0]

    feed, expected = tokens, []
    for j in range(steps):
        feed = one_step(stepped, feed, j)
        expected.append(feed)
    np.testing.assert_array_equal(ids, np.stack(expected, axis=1))
    np.testing.assert_array_equal(blocked.state[:rows], stepped.state[:rows])
    # And after the block, one step on the runtime's own session goes on from the lanes' state.
    np.testing.assert_array_equal(one_step(blocked, ids[:, -1], 0), one_step(stepped, feed, 0))


@pytest.mark.parametrize("threads", [1, 3])
def test_blocks_give_the_ids_of_one_step_per_call_as_requests_come_and_go(tiny_export, threads):
    """The engine's blocks (Engine._step_block, HostSampler.decode_block), in lanes or not, make
    every request's ids that one character per call makes: with rows that end at different
    lengths, requests that arrive while others run, cancels, and holes left by freed slots."""
    requests = plain_requests(6, 120)
    cancelled = max(range(80), key=lambda i: requests[i][1])  # long enough to be running when cancelled
    results, blocks = [], []
    for wrap in (lambda b: b, NoShortPath):
        engine = Engine(wrap(lanes_of(tiny_export, threads=threads)(64)))
        assert engine._blocks == (wrap is not NoShortPath)
        planned = engine._step_planned
        engine._step_planned = lambda ended, k, block=False: (block and blocks.append(k)) or planned(ended, k, block)
        rids = [engine.submit(*request) for request in requests[:80]]
        texts, reasons, count = {}, {}, 0
        while engine.has_work():
            count += 1
            if count == 2:
                rids += [engine.submit(*request) for request in requests[80:]]
                engine.cancel(rids[cancelled])
            for rid, token, reason in engine.step():
                if reason is None:
                    texts.setdefault(rid, []).append(token)
                else:
                    reasons[rid] = reason
        assert reasons.pop(rids[cancelled]) == CANCELLED and set(reasons.values()) == {LENGTH}
        if wrap is not NoShortPath:
            assert bool(engine.backend._lanes[1]) == (threads > 1)  # the last block's lanes
        results.append([texts.get(rid, []) for rid in rids])
    # A block makes up to 16 characters a call, one step one: the cancel, a call later, cuts the
    # cancelled request at another length, and each other request's ids are the same.
    cut = [results[0].pop(cancelled), results[1].pop(cancelled)]
    assert cut[0][:len(cut[1])] == cut[1] and len(cut[1]) <= 1 < len(cut[0]) <= 16
    assert results[0] == results[1]
    assert [len(t) for t in results[0]] == [r[1] for i, r in enumerate(requests) if i != cancelled]
    assert blocks and max(blocks) == 16 and min(blocks) >= 1  # blocks ran, none longer than block_steps


def test_a_row_whose_state_turns_nan_in_a_lane_ends_alone_with_the_ids_before_it(tiny_export):
    """NaN logits in the middle of a block: that request ends "nonfinite" after the characters
    made before them; the others in its lane and in the other lanes go on unchanged. (fp32: the
    int8 model's QuantizeLinear would turn a NaN state into numbers.)"""
    make = lanes_of(tiny_export, "model.onnx")
    requests = [([5], 60, SamplingConfig(), seed) for seed in range(64)]
    engine = Engine(make(64))
    rids = [engine.submit(*request) for request in requests]
    texts, reasons, count = {}, {}, 0
    while engine.has_work():
        count += 1
        if count == 3:  # after two blocks
            engine.backend.state[40] = np.nan
        for rid, token, reason in engine.step():
            if reason is None:
                texts.setdefault(rid, []).append(token)
            else:
                reasons[rid] = reason
    assert reasons[rids[40]] == "nonfinite" and len(texts[rids[40]]) == 2 * 16  # two blocks made
    assert all(reasons[rid] == LENGTH for i, rid in enumerate(rids) if i != 40)
    assert texts[rids[39]] == alone(make, *requests[39]) and texts[rids[63]] == alone(make, *requests[63])


def test_a_lane_that_raises_ends_the_blocks_requests_and_the_engine_runs_on(tiny_export):
    """An error in another lane's thread reaches the engine once every lane has stopped: with
    isolate_failures (the server's engine) the requests in that block end "failed" with the
    cause, and the next requests generate as usual."""
    make = lanes_of(tiny_export)
    engine = Engine(make(64), isolate_failures=True)
    rids = [engine.submit([5], 40, SamplingConfig(), seed) for seed in range(64)]
    engine.step()  # the start characters; the next step is a block, in lanes
    backend = engine.backend
    lane = backend._lanes_for(64)[2][0]

    def broken(rows):
        raise RuntimeError("lane 2 broke")

    lane.run = broken
    reasons = {rid: reason for rid, _, reason in engine.step() if reason is not None}
    assert reasons == {rid: "failed" for rid in rids}
    assert all("lane 2 broke" in engine.causes[rid] for rid in rids)
    del lane.run  # the lane's own run again
    again = [engine.submit([5], 30, SamplingConfig(), seed) for seed in range(64)]
    texts, reasons = run_all(engine)
    assert set(reasons.values()) == {LENGTH} and texts[again[7]] == alone(make, [5], 30, SamplingConfig(), 7)


def test_one_thread_given_at_load_means_no_lanes(tiny_export):
    backend = lanes_of(tiny_export, threads=1)(64)
    assert backend.runtime.lane_count() == 1 and backend._lanes_for(64) == []
    assert lanes_of(tiny_export, threads=2)(64)._lanes_for(31) == []  # 15 rows a lane: one session is faster
