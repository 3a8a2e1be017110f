"""The shared sampler (charrnn_export.sampling) and the Generator API over the tiny ONNX model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charrnn_export import Generator, SamplingConfig
from charrnn_export.errors import ConfigError, DataError, ModelError
from charrnn_export.sampling import choose, choose_rows

VOCAB = 65


def random_logits(rng, batch, vocab=VOCAB, spread=4.0):
    return (rng.standard_normal((batch, vocab)) * spread).astype(np.float32)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


# ---------------------------------------------------------------- SamplingConfig


@pytest.mark.parametrize("config, flag", [
    (SamplingConfig(temperature=0.0), "--temperature"),
    (SamplingConfig(temperature=-1.0), "--temperature"),
    (SamplingConfig(temperature=math.nan), "--temperature"),
    (SamplingConfig(temperature=math.inf), "--temperature"),
    (SamplingConfig(top_k=0), "--top-k"),
    (SamplingConfig(top_p=0.0), "--top-p"),
    (SamplingConfig(top_p=1.5), "--top-p"),
])
def test_invalid_configs_raise_config_error_naming_the_flag(config, flag):
    with pytest.raises(ConfigError, match=flag):
        config.validate()


def test_valid_edges_pass():
    SamplingConfig(temperature=1e-3, top_k=1, top_p=1.0).validate()


# ---------------------------------------------------------------- choose


def test_greedy_is_argmax_and_draws_nothing():
    rng = np.random.default_rng(0)
    logits = random_logits(rng, 8)
    before = rng.bit_generator.state
    ids = choose(logits, SamplingConfig(greedy=True, temperature=5.0, top_k=3), rng)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, logits.argmax(axis=1))
    assert rng.bit_generator.state == before


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("config", [SamplingConfig(), SamplingConfig(0.5, top_k=10), SamplingConfig(top_p=0.8)])
def test_one_uniform_number_per_row(batch, config):
    """The contract that makes texts line up: the rng advances by exactly `batch` draws."""
    logits = random_logits(np.random.default_rng(1), batch)
    rng, reference = np.random.default_rng(7), np.random.default_rng(7)
    ids = choose(logits, config, rng)
    reference.random(batch)
    assert ids.shape == (batch,) and ids.dtype == np.int32
    assert rng.random() == reference.random()


def test_batch1_path_picks_what_the_general_path_picks():
    """choose() has a short path for one row; it must agree with the general path id for id, or
    seeded texts would depend on which path ran."""
    rng = np.random.default_rng(2)
    mismatches = []
    for i in range(4000):
        vocab = int(rng.integers(2, 200))
        config = SamplingConfig(
            temperature=float(rng.choice([0.2, 0.7, 1.0, 1.3])),
            top_k=[None, 1, 5, 40, 500][i % 5],
            top_p=[None, 0.3, 0.9, 1.0][i % 4],
        )
        logits = random_logits(rng, 1, vocab, spread=float(rng.uniform(0.1, 30.0)))
        fast = choose(logits, config, np.random.default_rng(i))
        general = choose_rows(logits, config, np.random.default_rng(i))
        if fast[0] != general[0]:
            mismatches.append((i, config))
    assert not mismatches


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_plain_sampling_follows_the_softmax(batch, temperature):
    rng = np.random.default_rng(3)
    logits = random_logits(np.random.default_rng(4), 1, vocab=8, spread=1.5)
    expected = softmax(logits[0].astype(np.float64) / temperature)
    draws = 20000 // batch
    counts = np.zeros(8)
    for _ in range(draws):
        ids = choose(np.repeat(logits, batch, axis=0), SamplingConfig(temperature), rng)
        np.add.at(counts, ids, 1)
    observed = counts / counts.sum()
    # 20000 draws: the standard error of each frequency is below 0.004.
    np.testing.assert_allclose(observed, expected, atol=0.015)


def test_top_k_keeps_only_the_k_most_probable():
    rng = np.random.default_rng(5)
    logits = random_logits(rng, 3)
    allowed = np.argsort(-logits, axis=1)[:, :4]
    for _ in range(500):
        ids = choose(logits, SamplingConfig(2.0, top_k=4), rng)
        assert all(ids[row] in allowed[row] for row in range(3))
    one = choose(logits, SamplingConfig(top_k=1), rng)
    np.testing.assert_array_equal(one, logits.argmax(axis=1))


def test_top_k_at_least_the_vocabulary_is_plain_sampling():
    logits = random_logits(np.random.default_rng(6), 1)
    for seed in range(200):
        a = choose(logits, SamplingConfig(top_k=VOCAB), np.random.default_rng(seed))
        b = choose(logits, SamplingConfig(), np.random.default_rng(seed))
        assert a[0] == b[0]


def test_top_p_keeps_the_nucleus():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    rng = np.random.default_rng(8)
    seen = {int(choose(logits, SamplingConfig(top_p=0.7), rng)[0]) for _ in range(500)}
    assert seen == {0, 1}  # 0.5 < 0.7, so the second is needed; 0.8 >= 0.7, so no third
    seen = {int(choose(logits, SamplingConfig(top_p=0.01), rng)[0]) for _ in range(100)}
    assert seen == {0}


class AlmostOne:
    """A generator whose uniform numbers are the largest doubles below 1."""

    def random(self, size=None):
        value = math.nextafter(1.0, 0.0)
        return value if size is None else np.full(size, value)


@pytest.mark.parametrize("config", [SamplingConfig(), SamplingConfig(top_k=2), SamplingConfig(top_p=0.5)])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_uniform_near_one_never_picks_a_removed_or_impossible_id(config, batch):
    """The largest uniform must still land on an id with weight: u = uniform * total has to be
    computed in float64 (in float32 the uniform rounds to 1.0, u == total, and the draw runs
    past the end onto the trailing ids that have no weight)."""
    # The last two ids are far less probable than the others: impossible (weight 0 in float32)
    # for plain sampling, and cut by top-k and top-p.
    logits = np.tile(np.array([[3.0, 2.0, 1.0, -200.0, -200.0]], dtype=np.float32), (batch, 1))
    ids = choose(logits, config, AlmostOne())
    assert (ids <= 2).all()
    if config.top_k == 2 or config.top_p == 0.5:
        assert (ids <= 1).all()


def test_same_seed_same_ids():
    logits = random_logits(np.random.default_rng(9), 4)
    config = SamplingConfig(0.8, top_k=20, top_p=0.95)
    a = [choose(logits, config, r) for r in [np.random.default_rng(11)] * 50]
    b = [choose(logits, config, r) for r in [np.random.default_rng(11)] * 50]
    np.testing.assert_array_equal(a, b)


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
    with pytest.raises(ConfigError, match="--length"):
        generator.stream("ROMEO: ", -1)
    with pytest.raises(ConfigError, match="--temperature"):
        generator.stream("ROMEO: ", 5, temperature=0)


def test_a_prefix_of_a_seeded_text_is_the_shorter_text(generator):
    assert generator.generate("ROMEO: ", 400, seed=2)[:150] == generator.generate("ROMEO: ", 150, seed=2)


def test_generate_batch_of_one_is_generate(generator):
    assert generator.generate_batch(["ROMEO: "], 200, seed=4) == [generator.generate("ROMEO: ", 200, seed=4)]


def test_generate_batch_with_starts_of_different_lengths(generator):
    """Rows are primed together, right-aligned; each must continue its own start exactly as if
    it were generated alone (greedy, so there is no random stream to share)."""
    starts = ["ROMEO: ", "JULIET:\n", "A", "MENENIUS:\nthe lord of"]
    batch = generator.generate_batch(starts, 200, greedy=True)
    alone = [generator.generate(s, 200, greedy=True) for s in starts]
    assert batch == alone
    states = generator.prime([generator.vocab.encode(s) for s in starts])[1]
    for row, start in enumerate(starts):
        single = generator.prime([generator.vocab.encode(start)])[1]
        np.testing.assert_allclose(states[row], single[0], atol=1e-5)


def test_generate_batch_rows_differ_and_repeat_with_the_seed(generator):
    a = generator.generate_batch(["ROMEO: "] * 3, 200, seed=8)
    assert len(set(a)) == 3
    assert a == generator.generate_batch(["ROMEO: "] * 3, 200, seed=8)
    assert generator.generate_batch(["ROMEO: ", "JULIET: "], 0) == ["", ""]


def test_unknown_start_characters(generator):
    with pytest.raises(DataError, match="'€'"):
        generator.generate("ROMEO€: ", 10)
    assert generator.generate("ROMEO€: ", 50, seed=1, unknown="skip") == generator.generate("ROMEO: ", 50, seed=1)
    assert generator.clean_start("R€O", unknown="skip") == "RO"
    with pytest.raises(ConfigError, match="--unknown"):
        generator.generate("ROMEO: ", 10, unknown="ignore")


def test_empty_start_and_bad_arguments(generator):
    with pytest.raises(DataError, match="empty"):
        generator.generate("", 10)
    with pytest.raises(DataError, match="empty"):
        generator.generate("€€", 10, unknown="skip")
    with pytest.raises(ConfigError, match="--length"):
        generator.generate("ROMEO: ", -1)
    with pytest.raises(ConfigError, match="--top-p"):
        generator.generate_batch(["ROMEO: "], 10, top_p=2.0)
    with pytest.raises(ConfigError, match="start strings"):
        generator.generate_batch([], 10)


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Generator.load(str(tmp_path / "missing.onnx"))
    with pytest.raises(ConfigError, match="unknown runtime"):
        Generator.load(str(tmp_path / "missing.onnx"), runtime="torch")
    with pytest.raises(ConfigError, match="needs --model"):
        Generator.load(None, runtime="savedmodel")
