"""The shared sampler (charrnn_export.sampling) and the Generator API over the tiny ONNX model."""

from __future__ import annotations

import contextlib
import math
import shutil

import numpy as np
import pytest

from charrnn_export import Generator, SamplingConfig
from charrnn_export.errors import ConfigError, DataError, ModelError
from charrnn_export.rng import Blocks, Stream, splitmix64, uniforms
from charrnn_export import sampling
from charrnn_export.sampling import Settings, choose

VOCAB = 65


def random_logits(rng, batch, vocab=VOCAB, spread=4.0):
    return (rng.standard_normal((batch, vocab)) * spread).astype(np.float32)


# ---------------------------------------------------------------- SamplingConfig


@pytest.mark.parametrize("config, name", [
    (SamplingConfig(temperature=0.0), "temperature"),
    (SamplingConfig(temperature=-1.0), "temperature"),
    (SamplingConfig(temperature=math.nan), "temperature"),
    (SamplingConfig(temperature=math.inf), "temperature"),
    (SamplingConfig(top_k=0), "top_k"),
    (SamplingConfig(top_p=0.0), "top_p"),
    (SamplingConfig(top_p=1.5), "top_p"),
    (SamplingConfig(temperature=1e-38), "temperature"),
    (SamplingConfig(top_k=10**20), "top_k"),
])
def test_invalid_sampling_settings_are_refused(config, name):
    with pytest.raises(ConfigError, match=name):
        config.validate()


def test_extreme_but_valid_settings_are_accepted():
    SamplingConfig(temperature=1e-3, top_k=1, top_p=1.0).validate()
    SamplingConfig(temperature=1e-6, top_k=2**31 - 1, top_p=1e-46).validate()
    SamplingConfig(temperature=1e30, top_p=1 - 1e-16).validate()


# ---------------------------------------------------------------- choose


def pick(logits, config, u):
    rows = len(logits)
    return choose(logits, Settings.of([config] * rows), np.broadcast_to(np.asarray(u, np.float64), (rows,)).copy())


def test_greedy_ignores_temperature_top_k_and_the_uniforms():
    logits = random_logits(np.random.default_rng(0), 5)
    ids = pick(logits, SamplingConfig(greedy=True, temperature=5.0, top_k=3), 0.99)
    np.testing.assert_array_equal(ids, np.argmax(logits, axis=1))


@pytest.mark.parametrize("top_p", [1e-46, 1e-300, 5e-324])
def test_a_top_p_below_the_smallest_float32_is_greedy(top_p):
    """It rounds to 0 in float32, where the rule would keep nothing: greedy instead (rule 1)."""
    logits = random_logits(np.random.default_rng(2), 8)
    ids = pick(logits, SamplingConfig(top_p=top_p), 0.999)
    np.testing.assert_array_equal(ids, np.argmax(logits, axis=1))


def test_the_smallest_temperature_is_near_greedy_and_never_nan():
    """(logits - max) / 1e-6 sends every other id to -inf or near it: no overflow warning, no NaN."""
    logits = random_logits(np.random.default_rng(3), 8, spread=1e30)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # numpy warns of these by default
        ids = pick(logits, SamplingConfig(temperature=1e-6), 0.999)
    np.testing.assert_array_equal(ids, np.argmax(logits, axis=1))


def test_each_row_follows_its_own_settings():
    """Rows with different settings in one call pick what each would pick alone."""
    rng = np.random.default_rng(1)
    logits = random_logits(rng, 6)
    configs = [SamplingConfig(), SamplingConfig(0.5, top_k=10), SamplingConfig(top_p=0.8), SamplingConfig(greedy=True),
               SamplingConfig(2.0, top_k=2, top_p=0.5), SamplingConfig(0.7, top_k=65)]
    u = rng.random(6)
    together = choose(logits, Settings.of(configs), u)
    alone = [int(choose(logits[i:i + 1], Settings.of([c]), u[i:i + 1])[0]) for i, c in enumerate(configs)]
    assert together.tolist() == alone


def test_top_k_one_is_greedy_and_top_k_vocab_is_off():
    rng = np.random.default_rng(5)
    logits = random_logits(rng, 8)
    for u in (0.0, 0.3, 0.999):
        np.testing.assert_array_equal(pick(logits, SamplingConfig(2.0, top_k=1), u), np.argmax(logits, axis=1))
        np.testing.assert_array_equal(pick(logits, SamplingConfig(top_k=VOCAB), u), pick(logits, SamplingConfig(), u))


def test_top_p_keeps_the_most_probable_ids_until_the_mass_is_reached():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    seen = {int(pick(logits, SamplingConfig(top_p=0.7), u)[0]) for u in np.linspace(0, 0.999, 200)}
    assert seen == {0, 1}  # 0.5 < 0.7, then 0.8 >= 0.7: ids 0 and 1
    seen = {int(pick(logits, SamplingConfig(top_p=0.01), u)[0]) for u in np.linspace(0, 0.999, 50)}
    assert seen == {0}


@pytest.mark.parametrize("config", [SamplingConfig(), SamplingConfig(top_k=2), SamplingConfig(top_p=0.5)])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_uniform_near_one_never_picks_a_removed_or_impossible_id(config, batch):
    """The largest uniform must still land on an id with weight: u * total is computed in
    float64 (in float32 the uniform rounds to 1.0 and the draw runs onto ids with no weight)."""
    logits = np.tile(np.array([[3.0, 2.0, 1.0, -200.0, -200.0]], dtype=np.float32), (batch, 1))
    ids = pick(logits, config, math.nextafter(1.0, 0.0))
    assert (ids <= 2).all()
    if config.top_k == 2 or config.top_p == 0.5:
        assert (ids <= 1).all()


def test_a_row_without_top_p_is_not_changed_by_a_neighbour_with_top_p():
    """top_p = 1 keeps every id even when a float32 running sum reaches 1.0 early, so a row's
    draw never depends on which other rows share its batch."""
    logits = np.array([[10.0, 0.0, -30.0, -30.0]], dtype=np.float32)
    alone = pick(logits, SamplingConfig(), math.nextafter(1.0, 0.0))
    mixed = choose(np.repeat(logits, 2, axis=0), Settings.of([SamplingConfig(), SamplingConfig(top_p=0.5)]),
                   np.full(2, math.nextafter(1.0, 0.0)))
    assert mixed[0] == alone[0]


def test_streams_are_reproducible_and_differ_by_seed():
    assert Stream(11).random(50).tolist() == Stream(11).random(50).tolist()
    assert Stream(11).random(5).tolist() != Stream(12).random(5).tolist()
    s = Stream(3)
    assert np.concatenate([s.random(2), s.random(3)]).tolist() == Stream(3).random(5).tolist()


def reference_splitmix64(seed: int, count: int) -> list[int]:
    """SplitMix64 written out with Python integers, as its authors give it (state += golden; mix)."""
    out, state, mask = [], seed, 2**64 - 1
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_the_streams_are_splitmix64():
    assert reference_splitmix64(0, 1) == [0xE220A8397B1DCDAF]  # the published first output for seed 0
    for seed in (0, 1, 12345, 2**32 - 1):
        expected = reference_splitmix64(seed, 40)
        assert [int(z) for z in splitmix64(seed, np.arange(40))] == expected
        assert uniforms([seed], np.arange(40)[None])[0].tolist() == [(z >> 11) / 2**53 for z in expected]


def test_blocks_give_each_row_its_own_stream_whatever_else_draws():
    blocks = Blocks(3, block=8)
    blocks.start(0, 7)
    blocks.start(2, 9)
    got0, got2 = [], []
    for step in range(12):
        rows = np.array([0, 2]) if step % 3 else np.array([0])
        counts = np.array([3, 1])[:len(rows)] if step % 2 else np.array([1, 2])[:len(rows)]
        values = blocks.take(rows, counts, 3)
        assert (values[np.arange(3) >= counts[:, None]] == 0).all()
        got0.extend(values[0, :counts[0]])
        if len(rows) == 2:
            got2.extend(values[1, :counts[1]])
    assert got0 == Stream(7).random(len(got0)).tolist()
    assert got2 == Stream(9).random(len(got2)).tolist()


# ---------------------------------------------------------------- Generator API (onnx)


@pytest.fixture(scope="module")
def generator(tiny_export):  # noqa: F811 - pytest fixture
    return Generator.load(str(tiny_export / "model.onnx"), runtime="onnx")


def test_load_accepts_an_export_directory(tiny_export):  # noqa: F811
    g = Generator.load(str(tiny_export), runtime="onnx")
    assert g.runtime.path.name == "model.onnx"


def test_generate_returns_only_the_new_characters(generator):
    text = generator.generate("ROMEO: ", 300, seed=1)
    assert len(text) == 300
    assert set(text) <= set(generator.vocab.chars)
    assert generator.generate("ROMEO: ", 0, seed=1) == ""


def test_same_seed_same_text_and_different_seed_different_text(generator):
    a = generator.generate("ROMEO: ", 300, temperature=1.0, seed=5)
    assert a == generator.generate("ROMEO: ", 300, temperature=1.0, seed=5)
    assert a != generator.generate("ROMEO: ", 300, temperature=1.0, seed=6)


def test_stream_yields_what_generate_returns(generator):
    stream = generator.stream("ROMEO: ", 200, temperature=0.8, top_k=10, seed=3)
    chars = list(stream)
    assert all(isinstance(c, str) and len(c) == 1 for c in chars)
    assert "".join(chars) == generator.generate("ROMEO: ", 200, temperature=0.8, top_k=10, seed=3)


def test_stream_checks_its_arguments_when_called_not_when_read(generator):
    with pytest.raises(ConfigError, match="length"):
        generator.stream("ROMEO: ", -1)
    with pytest.raises(ConfigError, match="temperature"):
        generator.stream("ROMEO: ", 5, temperature=0)


def test_a_prefix_of_a_seeded_text_is_the_shorter_text(generator):
    assert generator.generate("ROMEO: ", 400, seed=2)[:150] == generator.generate("ROMEO: ", 150, seed=2)


def test_generate_batch_of_one_is_generate(generator):
    assert generator.generate_batch(["ROMEO: "], 200, seed=4) == [generator.generate("ROMEO: ", 200, seed=4)]


def test_generate_batch_with_starts_of_different_lengths(generator):
    """Each row reads its own start in its own slot and continues it exactly as if alone."""
    starts = ["ROMEO: ", "JULIET:\n", "A", "MENENIUS:\nthe lord of"]
    batch = generator.generate_batch(starts, 200, greedy=True)
    alone = [generator.generate(s, 200, greedy=True) for s in starts]
    assert batch == alone


def test_generate_batch_rows_differ_and_repeat_with_the_seed(generator):
    a = generator.generate_batch(["ROMEO: "] * 3, 200, seed=8)
    assert len(set(a)) == 3
    assert a[1] == generator.generate("ROMEO: ", 200, seed=9)
    assert a == generator.generate_batch(["ROMEO: "] * 3, 200, seed=8)
    assert generator.generate_batch(["ROMEO: ", "JULIET: "], 0) == ["", ""]


def test_unknown_start_characters(generator):
    with pytest.raises(DataError, match="'€'"):
        generator.generate("ROMEO€: ", 10)
    assert generator.generate("ROMEO€: ", 50, seed=1, unknown="skip") == generator.generate("ROMEO: ", 50, seed=1)
    assert generator.clean_start("R€O", unknown="skip") == "RO"
    with pytest.raises(ConfigError, match="unknown"):
        generator.generate("ROMEO: ", 10, unknown="ignore")


def test_empty_start_and_bad_arguments(generator):
    with pytest.raises(DataError, match="empty"):
        generator.generate("", 10)
    with pytest.raises(DataError, match="empty"):
        generator.generate("€€", 10, unknown="skip")
    with pytest.raises(ConfigError, match="length"):
        generator.generate("ROMEO: ", -1)
    with pytest.raises(ConfigError, match="top_p"):
        generator.generate_batch(["ROMEO: "], 10, top_p=2.0)
    with pytest.raises(ConfigError, match="starts"):
        generator.generate_batch([], 10)


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Generator.load(str(tmp_path / "missing.onnx"))
    with pytest.raises(ConfigError, match="runtime"):
        Generator.load(str(tmp_path / "missing.onnx"), runtime="torch")
    with pytest.raises(ConfigError, match="needs a model path"):
        Generator.load(None, runtime="savedmodel")


def test_take_one_reads_the_same_stream_as_take():
    blocks = Blocks(2, block=4)
    blocks.start(1, 5)
    got = [blocks.take_one(1) if i % 2 else float(blocks.take(np.array([1]), np.array([1]), 1)[0, 0]) for i in range(11)]
    assert got == Stream(5).random(11).tolist()


# ---------------------------------------------------------------- the one-row sampler (batch 1)

from hypothesis import given, settings as hyp_settings, strategies as st  # noqa: E402

from charrnn_export.sampling import OneRow, broken_rows, mask_unknown  # noqa: E402

_LOGIT = st.one_of(st.floats(-80, 80, width=32), st.sampled_from([0.0, 1e-40, -1e-40, 3e38, -3e38]),
                   st.sampled_from([float("nan"), float("inf"), -float("inf")]))


@hyp_settings(max_examples=300, deadline=None)
@given(logits=st.lists(_LOGIT, min_size=2, max_size=12), unk=st.one_of(st.none(), st.integers(0, 1)),
       temperature=st.sampled_from([1e-6, 0.05, 0.7, 1.0, 3.0, 1e30]),
       top_k=st.sampled_from([0, 1, 3, 100]), top_p=st.sampled_from([1.0, 0.9, 0.3, 1e-46]),
       greedy=st.booleans(), uniform=st.floats(0, 1, exclude_max=True))
def test_one_row_picks_what_choose_and_broken_rows_pick(logits, unk, temperature, top_k, top_p, greedy, uniform):
    """OneRow (the batch-1 path) is choose() and broken_rows() for one row, id for id, on any
    logits (NaN and infinities included) and any settings, the cuts included; compiled
    (_plain.c, where built) and in numpy, and on a strided view (which the compiled rule declines)."""
    row = np.array(logits, np.float32)
    settings = Settings(np.array([temperature], np.float32), np.array([top_k], np.int64),
                        np.array([top_p], np.float32), np.array([greedy]))
    broken = broken_rows(row[None].copy(), unk)[0]
    expected = -1 if broken else int(choose(mask_unknown(row[None].copy(), unk), settings, np.array([uniform]))[0])
    one = OneRow(row.size, unk).set(settings)
    assert one.pick(row.copy(), uniform) == expected
    assert one.pick(np.repeat(row, 2)[::2], uniform) == expected
    with numpy_only():
        assert one.pick(row.copy(), uniform) == expected


@contextlib.contextmanager
def numpy_only():
    """The sampler as an install without a C compiler has it (sampling._plain absent)."""
    built, sampling._plain = sampling._plain, None
    try:
        yield
    finally:
        sampling._plain = built


def test_the_compiled_rule_is_built_where_there_is_a_c_compiler():
    """setup.py builds _plain.c as an optional extension: an install that found a compiler has it."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the install uses numpy's rule")
    assert sampling._plain is not None, "_charrnn_export_plain was not built: `pip install .` again"


def test_the_compiled_rule_refuses_arrays_it_cannot_read():
    if sampling._plain is None:
        pytest.skip("_charrnn_export_plain is not built here")
    logits = np.zeros((2, 5), np.float32)
    with pytest.raises(TypeError, match="format 'f'"):
        sampling._plain.plain_ids(logits.astype(np.float64), None, np.zeros(2), -1, np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="a value per row"):
        sampling._plain.plain_ids(logits, None, np.zeros(1), -1, np.zeros(2, np.int32))
    assert sampling._plain.plain_id(np.array([0, np.nan], np.float32), 0.5, 1.0, -1) == -1


from charrnn_export.sampling import choose_plain, choose_plain_numpy, plain  # noqa: E402


@hyp_settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(_LOGIT, min_size=6, max_size=6), min_size=1, max_size=5),
       unk=st.one_of(st.none(), st.integers(0, 5)), data=st.data())
def test_choose_plain_picks_what_choose_and_broken_rows_pick(rows, unk, data):
    """choose_plain (the engine's blocks) is choose() and broken_rows() for rows with plain
    settings, id for id, or declines (None) and leaves them to those two; on huge and non-finite
    logits too, with per-row temperatures or all of them 1."""
    logits = np.array(rows, np.float32)
    n = len(rows)
    temperature = np.array(data.draw(st.lists(st.sampled_from([1e-6, 0.05, 0.7, 1.0, 3.0, 1e30]), min_size=n,
                                              max_size=n)), np.float32)
    uniforms = np.array(data.draw(st.lists(st.floats(0, 1, exclude_max=True), min_size=n, max_size=n)))
    all_one = data.draw(st.booleans())
    if all_one:
        temperature[:] = 1.0
    settings = Settings(temperature, np.zeros(n, np.int64), np.ones(n, np.float32), np.zeros(n, bool))
    with np.errstate(invalid="ignore"):  # inf - inf in a broken row: its id is replaced below
        expected = choose(mask_unknown(logits.copy(), unk), settings, uniforms)
    expected[broken_rows(logits, unk)] = -1
    for rule in (choose_plain, choose_plain_numpy):  # compiled where built, and numpy's
        got = rule(logits.copy(), None if all_one else temperature, uniforms, unk)
        if got is None:  # declined: only where a logit is huge or not finite
            assert not (np.abs(logits) < 1e38).all()
        else:
            assert got.tolist() == expected.tolist()
        if np.isfinite(logits).all() and (np.abs(logits) < 1e30).all():
            assert got is not None


def test_plain_is_what_choose_plain_may_take():
    assert plain(SamplingConfig(), 65) and plain(SamplingConfig(0.2), 65) and plain(SamplingConfig(top_k=65), 65)
    assert plain(SamplingConfig(top_p=1.0), 65) and plain(SamplingConfig(top_k=0), 65)
    assert not plain(SamplingConfig(greedy=True), 65) and not plain(SamplingConfig(top_k=64), 65)
    assert not plain(SamplingConfig(top_p=0.99), 65)
    assert plain(SamplingConfig(top_p=1 - 1e-9), 65)  # 1 in float32, as choose() compares it


def test_a_vocabulary_of_thousands_picks_what_choose_picks():
    """A text in a script with thousands of characters (the compiled rule's buffer is then taken
    from the heap, not the stack)."""
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((3, 5000)) * 3).astype(np.float32)
    uniforms = rng.random(3)
    settings = Settings.empty(3)
    settings.temperature[:] = [1.0, 0.5, 2.0]
    expected = choose(logits.copy(), settings, uniforms).tolist()
    assert choose_plain(logits.copy(), settings.temperature, uniforms, None).tolist() == expected
    picks = [OneRow(5000, None).set(settings, row).pick(logits[row].copy(), uniforms[row]) for row in range(3)]
    assert picks == expected
